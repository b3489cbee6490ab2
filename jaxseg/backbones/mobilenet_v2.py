"""MobileNetV2 (Sandler et al., CVPR 2018) as a feature extractor with an output stride.

Layout and numerics are torchvision's `torchvision.models.mobilenet_v2`
(`features.0` stem conv 3x3/2 32, `features.1..17` inverted residuals with
ReLU6 and linear bottlenecks, `features.18` 1x1 conv 1280; the ImageNet
classifier is not part of the backbone), so torchvision checkpoints load 1:1
(`jaxseg.weights.layouts_mobilenet`).

`output_stride` 16 or 8 replaces the remaining strides by dilation of the
depthwise convs as DeepLab's reference (TF `mobilenet.py`) does: once the
target stride is reached, a strided block runs at stride 1 with the current
rate and every later block uses the rate multiplied by that stride.

Returned features: 'features3' (= 'low_level', stride 4, 24 ch, DeepLabv3+'s
decoder input), 'features6' (8, 32 ch), 'features13' (16, 96 ch),
'features17' (= 'out', 320 ch, stride output_stride: the encoder output
DeepLab uses) and, with `last_conv=True`, 'features18' (1280 ch).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxseg import layers
from jaxseg.registry import register_backbone

Array = jax.Array

# (expand ratio t, channels c, repeats n, stride s) as in the paper's Table 2 and torchvision.
SETTINGS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
_RETURNED = (3, 6, 13, 17)

kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's _make_divisible: round to a multiple of 8, never more than 10% down."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class ConvBNReLU6(nn.Module):
  """Conv (no bias) -> BN -> ReLU6 (torchvision's Conv2dNormActivation); submodules `conv`, `bn`.

  Attributes:
    features, kernel_size, strides, dilation, groups: of the convolution (padding keeps the size).
    dtype: computation dtype.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  groups: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    pad = (self.kernel_size - 1) // 2 * self.dilation
    x = layers.Conv2d(
      self.features,
      self.kernel_size,
      self.strides,
      pad,
      self.dilation,
      self.groups,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=kaiming_fan_out,
      name='conv',
    )(x)
    x = layers.BatchNorm(dtype=self.dtype, name='bn')(x, train=train)
    return nn.relu6(x)


class InvertedResidual(nn.Module):
  """Expand 1x1 (if t > 1) -> depthwise 3x3 -> linear 1x1 projection, residual when shapes allow.

  Attributes:
    features: output channels.
    expand_ratio: hidden width factor t.
    strides: depthwise stride.
    dilation: depthwise dilation.
    dtype: computation dtype.
  """

  features: int
  expand_ratio: int
  strides: int = 1
  dilation: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    in_ch = x.shape[-1]
    hidden = int(round(in_ch * self.expand_ratio))
    dt = self.dtype
    y = x
    if self.expand_ratio != 1:
      y = ConvBNReLU6(hidden, 1, dtype=dt, name='expand')(y, train=train)
    depthwise = ConvBNReLU6(
      hidden, 3, self.strides, self.dilation, groups=hidden, dtype=dt, name='depthwise'
    )
    y = depthwise(y, train=train)
    project = layers.Conv2d(
      self.features, 1, use_bias=False, dtype=dt, kernel_init=kaiming_fan_out, name='project'
    )
    y = layers.BatchNorm(dtype=dt, name='project_bn')(project(y), train=train)
    return x + y if self.strides == 1 and in_ch == self.features else y


class MobileNetV2(nn.Module):
  """MobileNetV2 feature extractor (torchvision layout) with an output stride.

  Attributes:
    output_stride: 32, 16 or 8.
    width_mult: channel multiplier (1.0; torchvision's rounding to multiples of 8).
    last_conv: include features.18 (1x1 conv 1280, + BN + ReLU6).
    dtype: computation dtype.
  """

  output_stride: int = 32
  width_mult: float = 1.0
  last_conv: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
    if self.output_stride not in (8, 16, 32):
      raise ValueError(
        f'MobileNetV2 output_stride must be 32, 16 or 8, got {self.output_stride!r}.'
      )
    layers.check_image_batch(x, 'MobileNetV2', channels=3, min_size=self.output_stride)
    dt = self.dtype
    x = ConvBNReLU6(make_divisible(32 * self.width_mult), 3, 2, dtype=dt, name='features_0')(
      x, train=train
    )
    current_stride, rate, index, feats = 2, 1, 1, {}
    for t, c, n, s in SETTINGS:
      for i in range(n):
        stride = s if i == 0 else 1
        dilation = rate
        if stride > 1 and current_stride == self.output_stride:
          rate *= stride  # later blocks see the dilated grid; this one keeps the previous rate
          stride = 1
        else:
          current_stride *= stride
        x = InvertedResidual(
          make_divisible(c * self.width_mult), t, stride, dilation, dt, name=f'features_{index}'
        )(x, train=train)
        if index in _RETURNED:
          feats[f'features{index}'] = x
        index += 1
    feats['low_level'], feats['out'] = feats['features3'], feats['features17']
    if self.last_conv:
      last = make_divisible(1280 * max(1.0, self.width_mult))
      feats['features18'] = ConvBNReLU6(last, 1, dtype=dt, name='features_18')(x, train=train)
    return feats


@register_backbone('mobilenet_v2')
def mobilenet_v2(**kwargs) -> MobileNetV2:
  return MobileNetV2(**kwargs)
