"""ResNet-50 / ResNet-101 (He et al., CVPR 2016) with an output stride, as a feature extractor.

Layout and numerics are torchvision's `torchvision.models.resnet50/101` (v1.5:
the stride of a downsampling Bottleneck sits on its 3x3 conv), so torchvision
ImageNet checkpoints and its `fcn_resnet*` / `deeplabv3_resnet*` backbones
load 1:1 (`jaxseg.weights.layouts_resnet.resnet_key_fn`).

`output_stride` 16 or 8 replaces the stride of layer4 (and layer3) by dilation
exactly as torchvision's `replace_stride_with_dilation` does: the first block
of a dilated stage still uses the *previous* dilation for its 3x3 conv and
only the following blocks use the new one (torchvision, and therefore its
segmentation models, do this). `dilate_first_block=True` gives the other
common rule, where every block of a dilated stage, the first included, uses
the stage's dilation: PSPNet's reference code (hszhao/semseg sets dilation 2
on every layer3 3x3 conv and 4 on every layer4 one) and
jfzhang95/pytorch-deeplab-xception's ResNet (`_make_layer(..., dilation)`)
build it that way. The two rules differ only in the first block of each
dilated stage (layer4 at output stride 16; layer3 and layer4 at 8); the
parameters are the same, so weights load under either rule.

`multi_grid` (DeepLabv3, Sec. 3.2) gives layer4's unit rates: block i uses
dilation `stage_dilation * multi_grid[i]` (every block, the first included, as
DeepLabv3's reference and jfzhang95/pytorch-deeplab-xception's `_make_MG_unit`
do), e.g. (1, 2, 4) at output stride 16 gives rates 2, 4, 8.

`deep_stem` is PSPNet's stem (Zhao et al., CVPR 2017; its "ResNet-D-like"
deep base): three 3x3 convs (64 stride 2, 64, 128), each BN-ReLU, then the 3x3
max pool; layer1 then starts from 128 channels. Flax and PyTorch names are
`conv1`/`bn1`, `conv2`/`bn2`, `conv3`/`bn3` (the key names of PSPNet's
reference code, hszhao/semseg `resnet.py` with `deep_base=True`).

Returned features: {'stem' (stride 4, after the max pool), 'layer1' (4),
'layer2' (8), 'layer3' (16, or 8 at output stride 8), 'layer4' (32 / 16 / 8)}.
The ImageNet classifier (avgpool + fc) is not part of the backbone.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax

from jaxseg import layers
from jaxseg.registry import register_backbone

Array = jax.Array

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', nonlinearity='relu').
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# output_stride -> replace_stride_with_dilation for (layer2, layer3, layer4), as torchvision.
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


def _conv(features, kernel, strides=1, padding=0, dilation=1, dtype=None, name=None):
  return layers.Conv2d(
    features,
    kernel,
    strides,
    padding,
    dilation,
    use_bias=False,
    dtype=dtype,
    kernel_init=kaiming_fan_out,
    name=name,
  )


class Bottleneck(nn.Module):
  """torchvision's Bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (4x), residual, ReLU.

  Attributes:
    planes: inner width (output is 4 * planes).
    strides: stride of the 3x3 conv and of the projection shortcut.
    dilation: dilation (and padding) of the 3x3 conv.
    downsample: whether the shortcut is a 1x1 conv + BN projection.
    dtype: computation dtype.
  """

  planes: int
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    bn = functools.partial(layers.BatchNorm, dtype=self.dtype)
    d, dt = self.dilation, self.dtype
    y = nn.relu(bn(name='bn1')(_conv(self.planes, 1, dtype=dt, name='conv1')(x), train=train))
    y = _conv(self.planes, 3, self.strides, padding=d, dilation=d, dtype=dt, name='conv2')(y)
    y = nn.relu(bn(name='bn2')(y, train=train))
    y = bn(name='bn3')(_conv(self.planes * 4, 1, dtype=dt, name='conv3')(y), train=train)
    if self.downsample:
      # Named downsample_conv / downsample_bn; torchvision's keys are downsample.0 / downsample.1.
      x = _conv(self.planes * 4, 1, self.strides, dtype=dt, name='downsample_conv')(x)
      x = bn(name='downsample_bn')(x, train=train)
    return nn.relu(y + x)


class ResLayer(nn.Module):
  """One stage (`layer1` ... `layer4`): blocks named '0', '1', ... as torchvision's Sequential.

  Attributes:
    planes: Bottleneck inner width.
    strides: stride of the first block.
    dilations: 3x3 dilation of each block.
    in_features: input channels (decides whether block 0 needs a projection).
    dtype: computation dtype.
  """

  planes: int
  strides: int
  dilations: Sequence[int]
  in_features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i, d in enumerate(self.dilations):
      first = i == 0
      x = Bottleneck(
        self.planes,
        strides=self.strides if first else 1,
        dilation=d,
        downsample=first and (self.strides != 1 or self.in_features != 4 * self.planes),
        dtype=self.dtype,
        name=str(i),
      )(x, train=train)
    return x


class ResNet(nn.Module):
  """Bottleneck ResNet feature extractor with an output stride.

  Attributes:
    stage_sizes: blocks per stage ((3, 4, 6, 3) ResNet-50, (3, 4, 23, 3) ResNet-101).
    output_stride: 32, 16 or 8 (dilation replaces stride in layer4, layer3 + layer4).
    deep_stem: PSPNet's three-conv stem instead of the 7x7 conv.
    multi_grid: layer4 unit rates (one per layer4 block), e.g. (1, 2, 4); None = torchvision's rule.
    dilate_first_block: the first block of a dilated stage uses the stage's dilation too
      (PSPNet / jfzhang95 rule) instead of the previous one (torchvision's rule).
    base_width: channels of the stem and of layer1's inner width (64; smaller gives tiny variants).
    dtype: computation dtype (e.g. jnp.bfloat16).
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  output_stride: int = 32
  deep_stem: bool = False
  multi_grid: Sequence[int] | None = None
  dilate_first_block: bool = False
  base_width: int = 64
  dtype: Any = None

  def _dilations(self) -> list[list[int]]:
    """3x3 dilation of every block of layer1..layer4 (torchvision's _make_layer bookkeeping)."""
    if self.output_stride not in _DILATE:
      raise ValueError(f'ResNet output_stride must be 32, 16 or 8, got {self.output_stride!r}.')
    if len(self.stage_sizes) != 4:
      raise ValueError(f'ResNet stage_sizes needs 4 stages, got {tuple(self.stage_sizes)}.')
    dilation, out = 1, [[1] * self.stage_sizes[0]]
    for n, dilate in zip(self.stage_sizes[1:], _DILATE[self.output_stride], strict=True):
      previous = dilation
      if dilate:
        dilation *= 2
      first = dilation if self.dilate_first_block else previous
      out.append([first] + [dilation] * (n - 1))
    if self.multi_grid is not None:
      grid = tuple(int(g) for g in self.multi_grid)
      if len(grid) != self.stage_sizes[3] or min(grid) < 1:
        raise ValueError(
          f'ResNet multi_grid needs {self.stage_sizes[3]} positive unit rates (one per layer4 block), '
          f'got {tuple(self.multi_grid)}.'
        )
      out[3] = [dilation * g for g in grid]
    return out

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
    layers.check_image_batch(x, 'ResNet', channels=3, min_size=self.output_stride)
    dilations = self._dilations()
    bn = functools.partial(layers.BatchNorm, dtype=self.dtype)
    w, dt = self.base_width, self.dtype
    if self.deep_stem:
      x = nn.relu(bn(name='bn1')(_conv(w, 3, 2, 1, dtype=dt, name='conv1')(x), train=train))
      x = nn.relu(bn(name='bn2')(_conv(w, 3, 1, 1, dtype=dt, name='conv2')(x), train=train))
      x = nn.relu(bn(name='bn3')(_conv(2 * w, 3, 1, 1, dtype=dt, name='conv3')(x), train=train))
      in_features = 2 * w
    else:
      x = nn.relu(bn(name='bn1')(_conv(w, 7, 2, 3, dtype=dt, name='conv1')(x), train=train))
      in_features = w
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    feats = {'stem': x}
    for i, dil in enumerate(dilations):
      planes = w * 2**i
      # A dilated stage keeps stride 1 (torchvision: `if dilate: stride = 1`).
      strides = 1 if i == 0 or _DILATE[self.output_stride][i - 1] else 2
      x = ResLayer(planes, strides, dil, in_features, dt, name=f'layer{i + 1}')(x, train=train)
      in_features = 4 * planes
      feats[f'layer{i + 1}'] = x
    return feats


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3))


@register_backbone('resnet50')
def resnet50(**kwargs) -> ResNet:
  return ResNet50(**kwargs)


@register_backbone('resnet101')
def resnet101(**kwargs) -> ResNet:
  return ResNet101(**kwargs)
