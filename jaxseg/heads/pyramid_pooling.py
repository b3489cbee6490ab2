"""PSPNet's pyramid pooling module (Zhao et al., CVPR 2017, Sec. 3.3; hszhao/semseg `PPM`)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.ops import resize_bilinear
from jaxseg.ops.adaptive_pool import adaptive_avg_pool

Array = jax.Array


def pyramid_pooling(
  x: Array, bins: Sequence[int], features: int, *, train: bool, dtype: Any = None
) -> Array:
  """[x, upsampled pyramid branches] concatenated on the channel axis.

  For each bin size b: an adaptive b x b average pool (PyTorch's bin rule), a
  bias-free 1x1 conv `ppm_{i}_conv` to `features` channels, BatchNorm
  `ppm_{i}_bn`, ReLU, and bilinear upsampling back to x's size
  (align_corners=True, as semseg). Call it inside a model's compact method: the
  layers are that model's submodules.
  """
  size = x.shape[1:3]
  pyramid = [x]
  for i, b in enumerate(bins):
    p = adaptive_avg_pool(x, b)
    p = layers.Conv2d(features, 1, use_bias=False, dtype=dtype, name=f'ppm_{i}_conv')(p)
    p = nn.relu(layers.BatchNorm(dtype=dtype, name=f'ppm_{i}_bn')(p, train=train))
    pyramid.append(resize_bilinear(p, size, align_corners=True))
  return jnp.concatenate(pyramid, axis=-1)
