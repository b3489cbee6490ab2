"""Depthwise-separable convolution (Chollet, CVPR 2017; Howard et al., 2017).

`SeparableConv2d` is the building block of the modified aligned Xception and of
DeepLabv3+'s separable ASPP and decoder (Chen et al., ECCV 2018): a 3x3
depthwise convolution (`layers.Conv2d` with groups == channels, optional
stride and dilation), BatchNorm, optional ReLU ("extra batch normalization
and ReLU after each 3x3 depthwise convolution", DeepLabv3+ Sec. 3.2), a 1x1
pointwise convolution, BatchNorm and optional ReLU. Submodule names:
`depthwise`, `depthwise_bn`, `pointwise`, `pointwise_bn`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from jaxseg import layers

Array = jax.Array


class SeparableConv2d(nn.Module):
  """Depthwise k x k conv -> BN (-> ReLU) -> pointwise 1x1 conv -> BN (-> ReLU).

  Padding is `dilation * (kernel_size - 1) // 2` on each side, which for odd
  kernels equals TF's explicit "fixed padding" of strided separable convs.

  Attributes:
    features: output channels.
    kernel_size: depthwise kernel size (odd).
    strides: stride of the depthwise conv.
    dilation: dilation of the depthwise conv.
    depthwise_relu: ReLU after the depthwise BN.
    relu: ReLU after the pointwise BN.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  depthwise_relu: bool = True
  relu: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    bn = functools.partial(layers.BatchNorm, dtype=self.dtype)
    c, d = x.shape[-1], self.dilation
    pad = d * (self.kernel_size - 1) // 2
    x = layers.Conv2d(
      c,
      self.kernel_size,
      self.strides,
      pad,
      d,
      groups=c,
      use_bias=False,
      dtype=self.dtype,
      name='depthwise',
    )(x)
    x = bn(name='depthwise_bn')(x, train=train)
    if self.depthwise_relu:
      x = nn.relu(x)
    x = layers.Conv2d(self.features, 1, use_bias=False, dtype=self.dtype, name='pointwise')(x)
    x = bn(name='pointwise_bn')(x, train=train)
    return nn.relu(x) if self.relu else x
