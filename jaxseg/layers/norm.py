"""Normalisation and dropout layers with PyTorch semantics."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.layers.conv import Conv2d, IntOr2

Array = jax.Array


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch's running-statistics rule.

  Differs from `flax.linen.BatchNorm` in one way that matters for parity after
  a training step: the running variance is updated with the *unbiased* batch
  variance, as PyTorch does. `momentum` is the decay of the running average
  (PyTorch momentum 0.1 == 0.9 here). With `axis_name` set, batch statistics
  are averaged over that pmap/shard_map axis (synchronised BatchNorm).

  Attributes:
    momentum: running-average decay.
    epsilon: added to the variance.
    axis_name: collective axis to synchronise statistics over, or None.
    dtype: output dtype (statistics are always computed in float32).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, axis_name: str | None = None) -> Array:
    """`axis_name` (given by `Apply`) overrides the module's own."""
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones_init(), (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    xf = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      mean_sq = jnp.mean(jnp.square(xf), axes)
      count = np.prod([x.shape[a] for a in axes])
      axis_name = axis_name or self.axis_name
      if axis_name is not None and not self.is_initializing():
        mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
        count = count * jax.lax.psum(1, axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    y = (xf - mean) * inv + bias
    return y.astype(self.dtype or x.dtype)


class ConvBNReLU(nn.Module):
  """Conv2d -> BatchNorm -> ReLU (the "CBR" block of PyTorch SegNet reimplementations).

  Attributes mirror `Conv2d`; `relu=False` drops the activation.
  """

  features: int
  kernel_size: IntOr2 = 3
  strides: IntOr2 = 1
  padding: Any = 1
  dilation: IntOr2 = 1
  groups: int = 1
  use_bias: bool = True
  relu: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = Conv2d(
      self.features,
      self.kernel_size,
      self.strides,
      self.padding,
      self.dilation,
      self.groups,
      self.use_bias,
      dtype=self.dtype,
      name='conv',
    )(x)
    x = BatchNorm(dtype=self.dtype, name='bn')(x, train=train)
    return nn.relu(x) if self.relu else x


def apply_keep_mask(x: Array, keep: Array, rate: float) -> Array:
  """Inverted dropout with a given boolean keep-mask (what `nn.Dropout` computes
  from the mask it draws): kept values are scaled by 1 / (1 - rate)."""
  if rate >= 1.0:
    return jnp.zeros_like(x)
  return jax.lax.select(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


class Dropout2d(nn.Module):
  """Channel-wise dropout (PyTorch Dropout2d): whole feature maps are zeroed.

  Attributes:
    rate: drop probability.
  """

  rate: float = 0.5

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return nn.Dropout(self.rate, broadcast_dims=(1, 2))(x, deterministic=not train)
