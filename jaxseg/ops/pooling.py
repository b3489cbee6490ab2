"""Max pooling that remembers where the maxima were, and max-unpooling.

JAX has neither op built in. DeconvNet and SegNet need both: the decoder puts
each value back at the position its encoder stage took the maximum from.
Semantics follow PyTorch `MaxPool2d(k, k, ceil_mode=True, return_indices=True)`
and `MaxUnpool2d(k, k)` exactly, in NHWC:

* windows are non-overlapping (kernel == stride); ceil mode keeps a partial
  window at the bottom/right border of odd-sized inputs;
* an index is the flat position `row * W + col` inside its (H, W) channel plane
  of the *input*, as PyTorch returns it;
* ties inside a window go to the first maximum in row-major order (PyTorch's
  rule; whole windows of zeros after ReLU are common, so this matters for
  parity);
* both ops are differentiable: pooled values are taken with a gather, and the
  unpool is a scatter whose transpose is a gather.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_nhwc(x: Array, what: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'{what} expects an NHWC array of rank 4, got shape {tuple(x.shape)}.')


def pooled_size(size: int, window: int) -> int:
  """Output length of ceil-mode pooling with kernel == stride == window."""
  return -(-size // window)


def max_pool_with_argmax(x: Array, window: int = 2) -> tuple[Array, Array]:
  """Ceil-mode max pooling (kernel == stride == `window`) returning values and argmax.

  Args:
    x: (N, H, W, C) array.
    window: pooling window and stride.

  Returns:
    `(values, indices)`, both (N, ceil(H/window), ceil(W/window), C); indices
    are int32 flat positions `row * W + col` in the input plane.
  """
  _check_nhwc(x, 'max_pool_with_argmax')
  n, h, w, c = x.shape
  if h < 1 or w < 1:
    raise ValueError(f'max_pool_with_argmax needs H, W >= 1, got {(h, w)}.')
  ho, wo = pooled_size(h, window), pooled_size(w, window)
  pad_h, pad_w = ho * window - h, wo * window - w
  neg = jnp.array(-jnp.inf, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
  xp = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=neg)
  # (N, Ho, k, Wo, k, C) -> (N, Ho, Wo, C, k*k): the last axis walks a window row-major.
  win = xp.reshape(n, ho, window, wo, window, c).transpose(0, 1, 3, 5, 2, 4)
  win = win.reshape(n, ho, wo, c, window * window)
  local = jnp.argmax(jax.lax.stop_gradient(win), axis=-1)  # first maximum on ties
  values = jnp.take_along_axis(win, local[..., None], axis=-1)[..., 0]
  di, dj = local // window, local % window
  rows = jnp.arange(ho, dtype=jnp.int32)[None, :, None, None] * window + di
  cols = jnp.arange(wo, dtype=jnp.int32)[None, None, :, None] * window + dj
  indices = (rows * w + cols).astype(jnp.int32)
  return values, indices


def max_unpool(values: Array, indices: Array, output_size: tuple[int, int]) -> Array:
  """Inverse of `max_pool_with_argmax`: scatters values to their indices, zeros elsewhere.

  Args:
    values: (N, h, w, C) pooled (and possibly processed) features.
    indices: (N, h, w, C) int flat positions from `max_pool_with_argmax`.
    output_size: (H, W) of the tensor that was pooled (the saved size, so odd
      sizes round-trip exactly).

  Returns:
    (N, H, W, C) array.
  """
  _check_nhwc(values, 'max_unpool')
  if indices.shape != values.shape:
    raise ValueError(
      f'max_unpool: indices shape {tuple(indices.shape)} must equal values shape {tuple(values.shape)}.'
    )
  height, width = (int(s) for s in output_size)
  n, _, _, c = values.shape
  flat_vals = values.reshape(n, -1, c)
  flat_idx = indices.reshape(n, -1, c)
  batch = jnp.arange(n)[:, None, None]
  chan = jnp.arange(c)[None, None, :]
  out = jnp.zeros((n, height * width, c), values.dtype)
  out = out.at[batch, flat_idx, chan].set(flat_vals, unique_indices=True, mode='drop')
  return out.reshape(n, height, width, c)
