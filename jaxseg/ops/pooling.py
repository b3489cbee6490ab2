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
* both ops are differentiable: pooled values (here and in `max_pool2d`) have
  a custom gradient that routes each output gradient to the first maximum of
  its window with elementwise masks. XLA's own gradient of `reduce_window` max
  (select-and-scatter, expanded on CPU into index iotas and a scatter) and the
  transpose of a gather both cost about twice as much on CPU (benchmarks/README.md);
  the gradients are identical, ties included.

`max_pool_with_argmax` finds each window's maximum and the slot of its first
maximum with one compare chain over the k*k window taps, and its gradient
selects by that slot. `max_unpool(..., window=k)` uses that the indices of a
k x k / stride-k pool lie inside their own window: each output pixel is its
window's value if the window's index equals the pixel's own flat position,
else zero; a broadcast compare-and-select instead of a scatter. Its gradient
is a select chain over the window's taps instead of a gather (autodiff of the
select would sum each window with a reduction, about twice as slow). Measured
on 2 cores at SegNet's shapes (batch 2, 128x128 input, all five stages, one
process): pool + unpool forward 12.7 -> 3-4.6 ms, forward + gradient 18.2 ->
5.1 ms (PyTorch: 25 and 31 ms). These ops are ~1% of a SegNet train step on
CPU, so whole steps gain little (inference ~5-15%, training within the noise).
Without `window` the unpool is the general scatter (any indices).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def _window_taps(xp: Array, window: int) -> list[Array]:
  """The k*k strided (N, Ho, Wo, C) taps of a padded (N, Ho*k, Wo*k, C) array, row-major in the window."""
  win = _windows(xp, window)
  return [win[:, :, i, :, j, :] for i in range(window) for j in range(window)]


def _slot_dtype(window: int):
  return jnp.int8 if window * window <= 127 else jnp.int32


def _max_and_slot(xp: Array, window: int) -> tuple[Array, Array]:
  """Window maxima and the row-major slot (0 .. k*k-1) of each window's first maximum.

  A compare chain over the k*k taps (one fused elementwise loop on CPU)
  instead of `argmax` over a transposed copy. A NaN counts as the maximum and
  the first NaN wins, as with `jnp.argmax`.
  """
  taps = _window_taps(xp, window)
  m = functools.reduce(jnp.maximum, taps)
  dtype = _slot_dtype(window)
  slot = jnp.full(m.shape, len(taps) - 1, dtype)
  for t in range(len(taps) - 2, -1, -1):
    hit = taps[t] == m
    if jnp.issubdtype(xp.dtype, jnp.floating):
      hit = hit | jnp.isnan(taps[t])
    slot = jnp.where(hit, jnp.asarray(t, dtype), slot)
  return m, slot


def _scatter_slots(g: Array, slot: Array, window: int) -> Array:
  """(N, Ho, Wo, C) values put at their window slot of a (N, Ho*k, Wo*k, C) array, zeros elsewhere."""
  n, ho, wo, c = g.shape
  k = window
  target = jnp.arange(k * k, dtype=slot.dtype).reshape(1, 1, k, 1, k, 1)
  out = jnp.where(slot[:, :, None, :, None, :] == target, g[:, :, None, :, None, :], 0)
  return out.astype(g.dtype).reshape(n, ho * k, wo * k, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_argmax(xp: Array, window: int) -> tuple[Array, Array]:
  """(window maxima, first-maximum slots) of a padded (N, Ho*k, Wo*k, C) array."""
  return _max_and_slot(xp, window)


def _pool_argmax_fwd(xp, window):
  m, slot = _max_and_slot(xp, window)
  return (m, slot), slot


def _pool_argmax_bwd(window, slot, cts):
  """The gradient of each window maximum goes to its first maximum (the slot), as in PyTorch."""
  g, _ = cts  # the slots are integers: no cotangent
  return (_scatter_slots(g, slot, window),)


_pool_argmax.defvjp(_pool_argmax_fwd, _pool_argmax_bwd)


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
  window = int(window)
  if window < 1:
    raise ValueError(f'max_pool_with_argmax window must be >= 1, got {window}.')
  n, h, w, c = x.shape
  if h < 1 or w < 1:
    raise ValueError(f'max_pool_with_argmax needs H, W >= 1, got {(h, w)}.')
  ho, wo = pooled_size(h, window), pooled_size(w, window)
  values, slot = _pool_argmax(_pad_to_windows(x, window), window)
  slot = slot.astype(jnp.int32)
  rows = jnp.arange(ho, dtype=jnp.int32)[None, :, None, None] * window + slot // window
  cols = jnp.arange(wo, dtype=jnp.int32)[None, None, :, None] * window + slot % window
  return values, rows * w + cols


def _window_targets(ho: int, wo: int, window: int, size: tuple[int, int]) -> Array:
  """Flat position `row * W + col` of every pixel of the padded output, as (1, ho, k, wo, k, 1).

  Padding pixels (row >= H or col >= W) get -1, which no index equals (their
  `row * W + col` would alias a real pixel of the next row).
  """
  k = window
  height, width = size
  rows = jnp.arange(ho * k, dtype=jnp.int32).reshape(1, ho, k, 1, 1, 1)
  cols = jnp.arange(wo * k, dtype=jnp.int32).reshape(1, 1, 1, wo, k, 1)
  return jnp.where((rows < height) & (cols < width), rows * width + cols, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _unpool_windows(values: Array, indices: Array, window: int, size: tuple[int, int]) -> Array:
  """Max-unpooling as a dense select: output pixel p of window (i, j) is values[i, j] if indices[i, j] == p.

  Exact for indices that lie inside their own k x k window (those of
  `max_pool_with_argmax(x, k)`): every output pixel is then its window's
  maximum or zero, so no scatter is needed.
  """
  n, ho, wo, c = values.shape
  height, width = size
  hit = indices[:, :, None, :, None, :] == _window_targets(ho, wo, window, size)
  out = jnp.where(hit, values[:, :, None, :, None, :], jnp.zeros((), values.dtype))
  return out.reshape(n, ho * window, wo * window, c)[:, :height, :width]


def _unpool_windows_fwd(values, indices, window, size):
  return _unpool_windows(values, indices, window, size), indices


def _unpool_windows_bwd(window, size, indices, g):
  """Each value's gradient is the output gradient at its index: a select chain over the window taps.

  (Autodiff of the forward select would sum each window with a reduction; the
  chain is one elementwise loop and gives the scatter's gather bit for bit.)
  """
  height, width = size
  n, ho, wo, c = indices.shape
  gp = jnp.pad(g, ((0, 0), (0, ho * window - height), (0, wo * window - width), (0, 0)))
  targets = _window_targets(ho, wo, window, size)
  target_taps = _window_taps(targets.reshape(1, ho * window, wo * window, 1), window)
  dv = jnp.zeros(indices.shape, g.dtype)
  for tap, target in reversed(list(zip(_window_taps(gp, window), target_taps, strict=True))):
    dv = jnp.where(indices == target, tap, dv)
  return dv, None


_unpool_windows.defvjp(_unpool_windows_fwd, _unpool_windows_bwd)


def _indices_outside_windows(indices: Array, window: int, width: int) -> int:
  """How many indices do not lie in their own window (host-side check of concrete indices)."""
  idx = np.asarray(indices).astype(np.int64)
  _, ho, wo, _ = idx.shape
  row, col = idx // width, idx % width
  wrow = np.arange(ho).reshape(1, ho, 1, 1) * window
  wcol = np.arange(wo).reshape(1, 1, wo, 1) * window
  ok = (row >= wrow) & (row < wrow + window) & (col >= wcol) & (col < wcol + window)
  return int((~ok).sum())


def max_unpool(
  values: Array, indices: Array, output_size: tuple[int, int], window: int | None = None
) -> Array:
  """Inverse of `max_pool_with_argmax`: puts values at their indices, zeros elsewhere.

  Args:
    values: (N, h, w, C) pooled (and possibly processed) features.
    indices: (N, h, w, C) int flat positions from `max_pool_with_argmax`.
    output_size: (H, W) of the tensor that was pooled (the saved size, so odd
      sizes round-trip exactly).
    window: the window (== stride) the indices were pooled with, if known
      (PyTorch `MaxUnpool2d(k, k)`). Then every index lies in its own k x k
      window and the unpool is a dense compare-and-select (several times
      faster on CPU than the scatter, and so is its gradient); under `jit` an
      index outside its window would be dropped, so eager calls check the
      indices and raise. None: a general scatter (any indices).

  Returns:
    (N, H, W, C) array.
  """
  _check_nhwc(values, 'max_unpool')
  if indices.shape != values.shape:
    raise ValueError(
      f'max_unpool: indices shape {tuple(indices.shape)} must equal values shape {tuple(values.shape)}.'
    )
  height, width = (int(s) for s in output_size)
  n, h, w, c = values.shape
  if window is not None:
    window = int(window)
    expected = (pooled_size(height, window), pooled_size(width, window)) if window >= 1 else None
    if expected != (h, w):
      raise ValueError(
        f'max_unpool: window {window} pools output_size {(height, width)} to {expected}, '
        f'but values are {(h, w)}.'
      )
    if not isinstance(indices, jax.core.Tracer):
      bad = _indices_outside_windows(indices, window, width)
      if bad:
        raise ValueError(
          f'max_unpool: with window={window} every index must lie in its own {window}x{window} '
          f'window (as from max_pool_with_argmax(x, {window})); {bad} do not. Pass window=None '
          'for arbitrary indices.'
        )
    return _unpool_windows(values, indices, window, (height, width))
  flat_vals = values.reshape(n, -1, c)
  flat_idx = indices.reshape(n, -1, c)
  batch = jnp.arange(n)[:, None, None]
  chan = jnp.arange(c)[None, None, :]
  out = jnp.zeros((n, height * width, c), values.dtype)
  out = out.at[batch, flat_idx, chan].set(flat_vals, unique_indices=True, mode='drop')
  return out.reshape(n, height, width, c)
