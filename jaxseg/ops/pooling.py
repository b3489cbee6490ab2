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
* both ops are differentiable: the unpool is a scatter whose transpose is a
  gather; pooled values (here and in `max_pool2d`) have a custom gradient that
  routes each output gradient to the first maximum of its window with
  elementwise masks. XLA's own gradient of `reduce_window` max
  (select-and-scatter, expanded on CPU into index iotas and a scatter) and the
  transpose of a gather both cost about twice as much on CPU (benchmarks/README.md);
  the gradients are identical, ties included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_nhwc(x: Array, what: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'{what} expects an NHWC array of rank 4, got shape {tuple(x.shape)}.')


def pooled_size(size: int, window: int) -> int:
  """Output length of ceil-mode pooling with kernel == stride == window."""
  return -(-size // window)


def _lowest(dtype):
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.array(-jnp.inf, dtype)
  return jnp.array(jnp.iinfo(dtype).min, dtype)


def _pad_to_windows(x: Array, window: int) -> Array:
  """Pads the bottom/right of (N, H, W, C) with the dtype's lowest value to multiples of `window`."""
  _, h, w, _ = x.shape
  pad_h, pad_w = pooled_size(h, window) * window - h, pooled_size(w, window) * window - w
  if not (pad_h or pad_w):
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=_lowest(x.dtype))


def _windows(xp: Array, window: int) -> Array:
  """(N, Ho*k, Wo*k, C) -> (N, Ho, k, Wo, k, C)."""
  n, h, w, c = xp.shape
  return xp.reshape(n, h // window, window, w // window, window, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(xp: Array, window: int) -> Array:
  """Max over non-overlapping k x k windows of a padded (N, Ho*k, Wo*k, C) array."""
  return jnp.max(_windows(xp, window), axis=(2, 4))


def _window_max_fwd(xp, window):
  y = jnp.max(_windows(xp, window), axis=(2, 4))
  return y, (xp, y)


def _window_max_bwd(window, res, g):
  """Each window's gradient goes to its first maximum in row-major order (PyTorch's and XLA's rule)."""
  xp, y = res
  win = _windows(xp, window)
  zero = jnp.zeros((), g.dtype)
  taken = None
  rows = []
  for i in range(window):
    cols = []
    for j in range(window):
      hit = win[:, :, i, :, j, :] == y
      first = hit if taken is None else hit & ~taken
      taken = hit if taken is None else taken | hit
      cols.append(jnp.where(first, g, zero))
    rows.append(jnp.stack(cols, axis=3))  # (N, Ho, Wo, k, C)
  dx = jnp.stack(rows, axis=2)  # (N, Ho, k, Wo, k, C)
  return (dx.reshape(xp.shape),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool2d(x: Array, window: int = 2, *, ceil_mode: bool = False) -> Array:
  """Max pooling with kernel == stride == `window` (PyTorch `MaxPool2d(k, k, ceil_mode=...)`).

  The same values as `flax.linen.max_pool(x, (k, k), (k, k))` (floor mode) or
  with the partial bottom/right windows kept (ceil mode), and the same
  gradient (to each window's first maximum), computed with masks instead of
  XLA's select-and-scatter: about 2x faster on CPU.

  Args:
    x: (N, H, W, C) array.
    window: pooling window and stride.
    ceil_mode: keep partial windows at the bottom/right border (Caffe/FCN);
      otherwise they are dropped (PyTorch's default).

  Returns:
    (N, ceil(H/k), ceil(W/k), C) in ceil mode, (N, H//k, W//k, C) otherwise.
  """
  _check_nhwc(x, 'max_pool2d')
  window = int(window)
  if window < 1:
    raise ValueError(f'max_pool2d window must be >= 1, got {window}.')
  n, h, w, c = x.shape
  if ceil_mode:
    if h < 1 or w < 1:
      raise ValueError(f'max_pool2d needs H, W >= 1, got {(h, w)}.')
    xp = _pad_to_windows(x, window)
  else:
    if h < window or w < window:
      raise ValueError(f'max_pool2d (floor mode) needs H, W >= window {window}, got {(h, w)}.')
    xp = x[:, : h // window * window, : w // window * window]
  return _window_max(xp, window)


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
  xp = _pad_to_windows(x, window)
  # Values (and their gradient) from the window max; the argmax only gives indices.
  values = _window_max(xp, window)
  # (N, Ho, k, Wo, k, C) -> (N, Ho, Wo, C, k*k): the last axis walks a window row-major.
  win = _windows(jax.lax.stop_gradient(xp), window).transpose(0, 1, 3, 5, 2, 4)
  win = win.reshape(n, ho, wo, c, window * window)
  local = jnp.argmax(win, axis=-1)  # first maximum on ties
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
