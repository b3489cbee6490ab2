"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015).

`unet` is the original network: a contracting path of two unpadded 3x3
convolutions (with bias, ReLU) per level and 2x2 max pooling, channels 64 ->
1024 over 4 poolings; dropout at the end of the contracting path; an expansive
path of 2x2 stride-2 up-convolutions that halve the channels, concatenation
with the center-cropped feature map of the same level, and two unpadded 3x3
convolutions; a 1x1 convolution to the classes. No BatchNorm. 31,030,658
parameters with 1 input channel and 2 classes.

Because every convolution is unpadded, the output is smaller than the input,
exactly as in the paper (572x572 -> 388x388): the one documented exception to
"logits at input resolution". Only sizes that pool evenly at every level are
valid (H, W = 16k + 60 with k >= 8, i.e. 188, 204, ..., 572, ...; the output
is input - 184). `valid_output_size(s)` and `valid_input_sizes(max_size)` (also
methods of the model) give the sizes; other sizes are refused with the nearest
valid ones. The paper tiles large images with mirrored borders so that each
tile's output covers the image; training on labelled crops compares the logits
with the center crop of the labels of the same size.

`unet_padded` keeps the layout but pads every 3x3 convolution by 1, drops the
biases and adds BatchNorm after each convolution (the widely used variant),
so the logits come out at input resolution. Any input size works: the input is
zero-padded at the bottom/right to a multiple of 16 and the logits are cropped
back.

Layout: milesial/Pytorch-UNet (the most widely copied PyTorch U-Net), keys
`inc.double_conv.{0,2}` (valid) / `inc.double_conv.{0,1,3,4}` (padded: conv,
BN, conv, BN), `down{1..4}.maxpool_conv.1.double_conv.*`, `up{1..4}.up` (the
ConvTranspose2d), `up{1..4}.conv.double_conv.*`, `outc.conv`; the skip comes
first in the concatenation.

Paper results: ISBI 2012 EM segmentation challenge, warping error 0.000353
(rand error 0.0382); ISBI 2015 cell tracking challenge, mean IoU 0.9203 on
PhC-U373 and 0.7756 on DIC-HeLa.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.ops import center_crop, max_pool2d
from jaxseg.registry import register_model

Array = jax.Array


def _output_or_none(size: int, depth: int) -> int | None:
  s = int(size)
  for _ in range(depth):
    s -= 4  # two unpadded 3x3 convolutions
    if s <= 0 or s % 2:  # 2x2 pooling needs an even size
      return None
    s //= 2
  s -= 4
  for _ in range(depth):
    if s <= 0:
      return None
    s = 2 * s - 4  # up-convolution, then two unpadded 3x3 convolutions
  return s if s > 0 else None


def valid_input_sizes(max_size: int, depth: int = 4) -> list[int]:
  """All input sides <= max_size that the valid U-Net accepts, ascending."""
  return [s for s in range(1, int(max_size) + 1) if _output_or_none(s, depth)]


def valid_output_size(input_size: int, depth: int = 4) -> int:
  """Output side of the valid (unpadded) U-Net for an input side; ValueError naming valid sizes."""
  out = _output_or_none(input_size, depth)
  if out is not None:
    return out
  sizes = valid_input_sizes(max(2 * int(input_size), 64 * 2**depth), depth)
  below = [v for v in sizes if v < input_size][-1:]
  above = [v for v in sizes if v > input_size][:1]
  raise ValueError(
    f'the valid U-Net (depth {depth}) cannot take size {input_size}: every level must have an even '
    f'size before pooling and the output must be >= 1. Valid sizes are {sizes[0]}, {sizes[1]}, '
    f'{sizes[2]}, ... (minimum {sizes[0]}); nearest: {", ".join(map(str, below + above))}.'
  )


class DoubleConv(nn.Module):
  """Two 3x3 convolutions with ReLU: unpadded with bias, or padded with BatchNorm.

  Attributes:
    features: output channels.
    padded: padding 1, no bias, BatchNorm (unet_padded) instead of unpadded with bias.
    dtype: computation dtype.
  """

  features: int
  padded: bool
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i in range(2):
      x = layers.Conv2d(
        self.features,
        3,
        padding=1 if self.padded else 0,
        use_bias=not self.padded,
        dtype=self.dtype,
        name=f'conv_{i}',
      )(x)
      if self.padded:
        x = layers.BatchNorm(dtype=self.dtype, name=f'bn_{i}')(x, train=train)
      x = nn.relu(x)
    return x


class Up(nn.Module):
  """2x2 stride-2 up-convolution, concatenation [cropped skip, up], DoubleConv.

  Attributes:
    features: output channels (the up-convolution also halves to this).
    padded: as in `DoubleConv`.
    dtype: computation dtype.
  """

  features: int
  padded: bool
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, skip: Array, *, train: bool) -> Array:
    x = layers.ConvTranspose2d(self.features, 2, 2, dtype=self.dtype, name='up')(x)
    x = jnp.concatenate([center_crop(skip, x.shape[1:3]), x], axis=-1)
    return DoubleConv(self.features, self.padded, self.dtype, name='conv')(x, train=train)


class UNet(nn.Module):
  """U-Net, valid (original) or padded with BatchNorm.

  Attributes:
    num_classes: output channels.
    in_channels: input channels (1 for the paper's grayscale microscopy).
    padded: `unet_padded` (same-size output, BatchNorm) instead of the original valid network.
    features: channels of the first level (64 in the paper; doubled per level).
    depth: number of poolings (4 in the paper).
    dropout: dropout rate at the end of the contracting path (training only).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  in_channels: int = 1
  padded: bool = False
  features: int = 64
  depth: int = 4
  dropout: float = 0.0
  dtype: Any = None

  def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the logits for an input of (H, W)."""
    if self.padded:
      return tuple(int(s) for s in input_size)
    return tuple(valid_output_size(s, self.depth) for s in input_size)

  def valid_output_size(self, input_size: int) -> int:
    return self.output_size((input_size, input_size))[0]

  def valid_input_sizes(self, max_size: int) -> list[int]:
    if self.padded:
      return list(range(1, int(max_size) + 1))
    return valid_input_sizes(max_size, self.depth)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    name = 'U-Net (padded)' if self.padded else 'U-Net'
    layers.check_image_batch(x, name, channels=self.in_channels)
    height, width = x.shape[1:3]
    if self.padded:
      multiple = 2**self.depth
      x = jnp.pad(x, ((0, 0), (0, -height % multiple), (0, -width % multiple), (0, 0)))
    else:
      self.output_size((height, width))  # refuses sizes that do not pool evenly
    conv = dict(padded=self.padded, dtype=self.dtype)
    skips = [DoubleConv(self.features, name='inc', **conv)(x, train=train)]
    for i in range(1, self.depth + 1):
      y = max_pool2d(skips[-1], 2)
      skips.append(DoubleConv(self.features * 2**i, name=f'down{i}', **conv)(y, train=train))
    x = skips.pop()
    # "Drop-out layers at the end of the contracting path" (Sec. 3.1).
    x = nn.Dropout(self.dropout)(x, deterministic=not train or self.dropout == 0)
    for i in range(1, self.depth + 1):
      ch = self.features * 2 ** (self.depth - i)
      x = Up(ch, name=f'up{i}', **conv)(x, skips.pop(), train=train)
    x = layers.Conv2d(self.num_classes, 1, dtype=self.dtype, name='outc')(x)
    if self.padded:
      x = x[:, :height, :width]
    return x.astype(jnp.float32)


@register_model('unet')
def unet(*, num_classes: int, **kwargs) -> UNet:
  kwargs.setdefault('dropout', 0.5)
  return UNet(num_classes=num_classes, padded=False, **kwargs)


@register_model('unet_padded')
def unet_padded(*, num_classes: int, **kwargs) -> UNet:
  kwargs.setdefault('in_channels', 3)
  return UNet(num_classes=num_classes, padded=True, **kwargs)
