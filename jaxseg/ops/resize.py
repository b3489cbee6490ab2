"""Bilinear resizing with both `align_corners` conventions, and crops.

Resizing is written as two small interpolation matrices applied with einsum:
the shapes are static, the result matches PyTorch's `F.interpolate(...,
mode='bilinear', align_corners=...)` (no antialiasing), and on accelerators it
is a pair of matmuls instead of a gather.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=256)
def _interp_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """(out_size, in_size) matrix M with y = M @ x doing 1-D linear interpolation."""
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = dst * scale
  else:
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = src - i0
  m = np.zeros((out_size, in_size), np.float64)
  m[np.arange(out_size), i0] += 1.0 - lam
  m[np.arange(out_size), i1] += lam
  return m.astype(np.float32)


def resize_bilinear(x: Array, size: tuple[int, int], *, align_corners: bool = False) -> Array:
  """Bilinearly resizes an NHWC array to `size` = (H, W), PyTorch-compatible."""
  if x.ndim != 4:
    raise ValueError(
      f'resize_bilinear expects an NHWC array of rank 4, got shape {tuple(x.shape)}.'
    )
  out_h, out_w = (int(s) for s in size)
  if out_h < 1 or out_w < 1:
    raise ValueError(f'resize_bilinear: target size must be >= 1, got {(out_h, out_w)}.')
  _, in_h, in_w, _ = x.shape
  if (in_h, in_w) == (out_h, out_w):
    return x
  dtype = x.dtype
  mh = jnp.asarray(_interp_matrix(in_h, out_h, align_corners), dtype)
  mw = jnp.asarray(_interp_matrix(in_w, out_w, align_corners), dtype)
  y = jnp.einsum('oh,nhwc->nowc', mh, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('pw,nowc->nopc', mw, y, precision=jax.lax.Precision.HIGHEST)


def crop(x: Array, offset: tuple[int, int], size: tuple[int, int]) -> Array:
  """Crops x[:, oy:oy+h, ox:ox+w, :], refusing crops that leave the array."""
  (oy, ox), (h, w) = offset, size
  _, height, width, _ = x.shape
  if oy < 0 or ox < 0 or oy + h > height or ox + w > width:
    raise ValueError(
      f'crop of size {(h, w)} at offset {(oy, ox)} does not fit in a {(height, width)} map.'
    )
  return x[:, oy : oy + h, ox : ox + w, :]


def center_crop(x: Array, size: tuple[int, int]) -> Array:
  """Crops the central `size` = (h, w) window (extra pixel goes to the bottom/right)."""
  _, height, width, _ = x.shape
  h, w = size
  return crop(x, ((height - h) // 2, (width - w) // 2), (h, w))
