"""Adaptive average pooling with PyTorch's bin rule (AdaptiveAvgPool2d), as a pure function.

Bin i of n over a length-L axis averages [floor(i L / n), ceil((i + 1) L / n)):
bins overlap when L is not a multiple of n and repeat when L < n, exactly as
`torch.nn.functional.adaptive_avg_pool2d`. Written as two small averaging
matrices applied with einsum (static shapes; matmuls on accelerators).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) matrix whose row i averages PyTorch's i-th adaptive bin."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f'adaptive pooling needs sizes >= 1, got in={in_size}, out={out_size}.')
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m.astype(np.float32)


def adaptive_avg_pool(x: Array, output_size: int | tuple[int, int]) -> Array:
  """Adaptive average pooling of an NHWC array to `output_size` (int or (h, w))."""
  if x.ndim != 4:
    raise ValueError(
      f'adaptive_avg_pool expects an NHWC array of rank 4, got shape {tuple(x.shape)}.'
    )
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], int(oh)), x.dtype)
  mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], int(ow)), x.dtype)
  y = jnp.einsum('oh,nhwc->nowc', mh, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('pw,nowc->nopc', mw, y, precision=jax.lax.Precision.HIGHEST)
