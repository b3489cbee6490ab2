"""VGG-16 modified for dense prediction at output stride 8 (DeepLab v1, DilatedNet front-end).

Two variants of the same 13 convolutions (names `conv1_1` ... `conv5_3`, as in
the Caffe prototxts and torchvision's `features.N` via `jaxseg.weights`):

* `vgg16_deeplab` -- DeepLab v1 (Chen et al., "Semantic Image Segmentation
  with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015), following
  the DeepLab-LargeFOV Caffe prototxt: every pooling layer is a 3x3 max pool
  with padding 1 (Caffe ceil rounding); pool1-pool3 have stride 2, pool4 and
  pool5 stride 1, so the output stride is 8; conv5_x use dilation ("hole") 2;
  pool5 is followed by a 3x3/1 average pool with padding 1 (`pool5a`, Caffe's
  AVE pooling, which counts the zero padding).
* `vgg16_dilated` -- the front-end of Yu & Koltun ("Multi-Scale Context
  Aggregation by Dilated Convolutions", ICLR 2016): VGG-16 with pool4 and pool5
  removed, conv5_x dilated by 2; pool1-pool3 stay 2x2/2 (ceil rounding as in
  Caffe). `padding='same'` zero-pads every convolution to keep its size;
  `padding='valid'` runs them unpadded as the reference front-end does (on an
  input that `jaxseg.models.dilatednet` reflection-pads by 186 pixels), which
  needs H, W >= 181.

Returned features: `conv1_2` ... `conv5_3` and `pool1` ... `pool3` (strides 2,
4, 8), and `out` (stride 8, what the heads read: `pool5a` for DeepLab, `conv5_3`
for DilatedNet).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from jaxseg import layers
from jaxseg.backbones.vgg import VGG16_STAGES, max_pool, scaled_channels
from jaxseg.registry import register_backbone

Array = jax.Array


def _pool_padding(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
  """(low, high) padding reproducing Caffe/PyTorch ceil-mode pooling output sizes."""
  out = -(-(size + 2 * pad - kernel) // stride) + 1
  # The last window must start inside the image or the left padding (Caffe / PyTorch rule).
  if (out - 1) * stride >= size + pad:
    out -= 1
  return pad, max(0, (out - 1) * stride + kernel - size - pad)


def caffe_max_pool(x: Array, kernel: int = 3, stride: int = 2, pad: int = 1) -> Array:
  """Max pooling with Caffe's ceil rounding (== torch MaxPool2d(..., ceil_mode=True))."""
  padding = (
    _pool_padding(x.shape[1], kernel, stride, pad),
    _pool_padding(x.shape[2], kernel, stride, pad),
  )
  return nn.max_pool(x, (kernel, kernel), (stride, stride), padding=padding)


def avg_pool_3x3_same(x: Array) -> Array:
  """3x3/1 average pool with zero padding 1 counted in the divisor (Caffe AVE, torch default)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


class VGG16Dense(nn.Module):
  """VGG-16 convolutions at output stride 8.

  Attributes:
    style: 'deeplab' (3x3 pools with padding, pool4/pool5 stride 1, pool5a) or
      'dilated' (Yu & Koltun front-end: 2x2 pools 1-3, no pool4/pool5).
    width: channel multiplier (1.0 = VGG-16; smaller values give tiny variants).
    padding: 'same' (zero-padded convolutions) or 'valid' (unpadded; 'dilated' style only).
    dtype: computation dtype.
  """

  style: str = 'deeplab'
  width: float = 1.0
  padding: str = 'same'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
    del train  # no BatchNorm / dropout in the convolutional part
    if self.style not in ('deeplab', 'dilated'):
      raise ValueError(f"VGG16Dense style must be 'deeplab' or 'dilated', got {self.style!r}.")
    valid = self.padding == 'valid'
    if self.padding not in ('same', 'valid') or (valid and self.style != 'dilated'):
      raise ValueError(
        f"VGG16Dense padding must be 'same', or 'valid' with style 'dilated', got "
        f'{self.padding!r} with style {self.style!r}.'
      )
    # Unpadded: 181 -> 177 -> 89 -> 85 -> 43 -> 37 -> 19 -> 13 -> 1 (conv1, pool1, ..., conv5).
    min_size = 181 if valid else 8
    layers.check_image_batch(x, f'VGG16 ({self.style})', channels=3, min_size=min_size)
    feats = {}
    for stage, n_convs, ch in VGG16_STAGES:
      ch = scaled_channels(ch, self.width)
      dilation = 2 if stage == 5 else 1
      pad = 0 if valid else dilation
      for i in range(1, n_convs + 1):
        conv = layers.Conv2d(
          ch, 3, padding=pad, dilation=dilation, dtype=self.dtype, name=f'conv{stage}_{i}'
        )
        x = nn.relu(conv(x))
      feats[f'conv{stage}_{n_convs}'] = x
      if self.style == 'deeplab':
        x = caffe_max_pool(x, 3, 2 if stage <= 3 else 1, 1)
      elif stage <= 3:
        x = max_pool(x, ceil_mode=True)
      if stage <= 3:
        feats[f'pool{stage}'] = x
    if self.style == 'deeplab':
      x = avg_pool_3x3_same(x)
    feats['out'] = x
    return feats


VGG16DeepLab = functools.partial(VGG16Dense, style='deeplab')
VGG16Dilated = functools.partial(VGG16Dense, style='dilated')


@register_backbone('vgg16_deeplab')
def vgg16_deeplab(**kwargs) -> VGG16Dense:
  return VGG16DeepLab(**kwargs)


@register_backbone('vgg16_dilated')
def vgg16_dilated(**kwargs) -> VGG16Dense:
  return VGG16Dilated(**kwargs)
