"""Atrous Spatial Pyramid Pooling: DeepLab v2's ASPP-L and DeepLabv3's ASPP with image pooling.

* `aspp_sum` (Chen et al., TPAMI 2017, Sec. 3.1, Fig. 7): parallel 3x3 atrous
  classifier branches (rates 6, 12, 18, 24 in ASPP-L), each producing the class
  scores, summed.
* `ASPP` (Chen et al., arXiv:1706.05587, Sec. 3.3): a 1x1 conv, 3x3 atrous
  convs and an image-pooling branch (global average pool, 1x1 conv, broadcast
  back), each conv + BN + ReLU, concatenated and projected by a 1x1 conv + BN +
  ReLU, then dropout; torchvision's `deeplabv3` ASPP, and with separable 3x3
  branches DeepLabv3+'s (Chen et al., ECCV 2018).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.layers_sep import SeparableConv2d

Array = jax.Array

# DeepLabv3's atrous rates for each output stride (rates double when the stride halves).
_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def default_rates(output_stride: int) -> tuple[int, ...]:
  """DeepLabv3's three ASPP rates at an output stride of 16 or 8."""
  if output_stride not in _RATES:
    raise ValueError(
      f'DeepLab output_stride must be 16 or 8 (ASPP rates 6/12/18 or 12/24/36), got {output_stride!r}.'
    )
  return _RATES[output_stride]


def aspp_sum(x: Array, num_classes: int, rates: Sequence[int], *, dtype: Any = None) -> Array:
  """DeepLab v2's ASPP: the sum of 3x3 atrous classifiers `aspp_c0`, `aspp_c1`, ... on `x`.

  Call it inside a model's compact method: the branches are that model's
  submodules (kazuto1011/deeplab-pytorch's `aspp.c{i}` naming). Kernels start
  from N(0, 0.01^2), as the reference prototxt's classifiers.
  """
  out = 0.0
  for i, r in enumerate(rates):
    branch = layers.Conv2d(
      num_classes,
      3,
      padding=r,
      dilation=r,
      kernel_init=nn.initializers.normal(0.01),
      dtype=dtype,
      name=f'aspp_c{i}',
    )
    out = out + branch(x)
  return out


class ASPP(nn.Module):
  """Atrous Spatial Pyramid Pooling with image pooling (DeepLabv3 Sec. 3.3).

  Submodules: `branch0` (1x1), `branch1..n` (3x3 atrous, ConvBNReLU or
  SeparableConv2d), `pooling` (1x1 on the global average), `project` (1x1).

  Attributes:
    rates: dilation of each 3x3 branch.
    features: channels of every branch and of the projection.
    separable: depthwise-separable 3x3 branches (DeepLabv3+).
    dropout: dropout rate after the projection (elementwise, as nn.Dropout).
    dtype: computation dtype.
  """

  rates: Sequence[int] = (6, 12, 18)
  features: int = 256
  separable: bool = False
  dropout: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    cbr = functools.partial(layers.ConvBNReLU, self.features, use_bias=False, dtype=self.dtype)
    outs = [cbr(kernel_size=1, padding=0, name='branch0')(x, train=train)]
    for i, r in enumerate(self.rates, 1):
      if self.separable:
        branch = SeparableConv2d(self.features, 3, dilation=r, dtype=self.dtype, name=f'branch{i}')
      else:
        branch = cbr(kernel_size=3, padding=r, dilation=r, name=f'branch{i}')
      outs.append(branch(x, train=train))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = cbr(kernel_size=1, padding=0, name='pooling')(pooled, train=train)
    # Bilinear upsampling of a 1x1 map (either align_corners) is a broadcast.
    outs.append(jnp.broadcast_to(pooled, outs[0].shape[:3] + pooled.shape[3:]))
    y = cbr(kernel_size=1, padding=0, name='project')(jnp.concatenate(outs, axis=-1), train=train)
    return nn.Dropout(self.dropout)(y, deterministic=not train)
