"""Tap geometry of a 2-D convolution: output sizes, per-tap windows and placements.

A k x k convolution is a sum over its kernel taps; tap (i, j) of output pixel
(p, q) reads input pixel (p * s + i * d - pad, q * s + j * d - pad). These
helpers express that map with slices and pads so that the engine's forms can
build patch matrices, drop taps that read only padding, and move output
gradients back onto the input pixels each tap read. Layouts are NHWC / HWIO.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def conv_out_size(size: int, pad: tuple[int, int], k: int, d: int, s: int) -> int:
  """Output length of one axis: `size` padded by `pad`, kernel `k`, dilation `d`, stride `s`."""
  return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def pad_hw(x: Array, pads) -> Array:
  """Zero-pads the H and W axes of an NHWC array by `pads` ((top, bottom), (left, right))."""
  return jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))


def tap_slices(xp: Array, kernel_hw, dilation, strides, out_hw, spatial=(1, 2)) -> list[Array]:
  """The kh*kw strided windows of the padded input, one per kernel tap (row-major).

  `spatial` names the (H, W) axes of `xp` (NHWC by default); the others are kept whole.
  """
  (kh, kw), (dh, dw), (sh, sw), (ho, wo) = kernel_hw, dilation, strides, out_hw
  ah, aw = spatial
  step = [1] * xp.ndim
  step[ah], step[aw] = sh, sw
  taps = []
  for i in range(kh):
    for j in range(kw):
      start, limit = [0] * xp.ndim, list(xp.shape)
      start[ah], limit[ah] = i * dh, i * dh + (ho - 1) * sh + 1
      start[aw], limit[aw] = j * dw, j * dw + (wo - 1) * sw + 1
      taps.append(jax.lax.slice(xp, start, limit, step))
  return taps


def live_taps(size: int, pad: tuple[int, int], k: int, d: int, s: int, out: int) -> tuple[int, int]:
  """First and last kernel tap (one axis) that reads at least one input pixel.

  Taps that read only padding (a dilation rate at or beyond the map's size,
  DeepLabv3's ASPP rates 24 and 36 on a 16x16 map) contribute exact zeros
  and can be dropped.
  """
  live = []
  for i in range(k):
    first = i * d - pad[0]
    o = max(0, -(first // s))  # the first o whose row is >= 0
    if o < out and first + o * s <= size - 1:
      live.append(i)
  return (live[0], live[-1]) if live else (0, k - 1)


def trim_padding_taps(x_hw, kernel_hw, strides, pads, dilation, out_hw):
  """The same convolution without the kernel rows/columns that only ever read padding.

  Returns `(taps, crop, pads)`: the kept tap range per axis ((i0, i1), (j0, j1)),
  the input rows/columns to keep ((h0, h1), (w0, w1)) where a cut would leave
  negative padding, and the new (non-negative) padding. Exact: dropped taps add zeros.
  """
  taps, crop, new_pads = [], [], []
  for a in (0, 1):
    k, d, size = kernel_hw[a], dilation[a], x_hw[a]
    lo, hi = live_taps(size, pads[a], k, d, strides[a], out_hw[a])
    p_lo, p_hi = pads[a][0] - lo * d, pads[a][1] - (k - 1 - hi) * d
    taps.append((lo, hi))
    crop.append((max(0, -p_lo), size + min(0, p_hi)))
    new_pads.append((max(0, p_lo), max(0, p_hi)))
  return tuple(taps), tuple(crop), tuple(new_pads)


def tap_placements(x_hw, out_hw, kernel_hw, strides, pads, dilation) -> list:
  """Per kernel tap (row-major), the `lax.pad` configs ((low, high, interior) for H, W)
  that move an output-grid array onto the input pixels the tap reads.

  The stride becomes interior padding, the tap's offset low padding, and input
  rows the tap never reads zeros (negative padding crops what falls outside).
  """
  (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_hw, strides, dilation, out_hw
  placements = []
  for i in range(kh):
    for j in range(kw):
      lo_h, lo_w = i * dh - pads[0][0], j * dw - pads[1][0]
      hi_h, hi_w = x_hw[0] - lo_h - (ho - 1) * sh - 1, x_hw[1] - lo_w - (wo - 1) * sw - 1
      placements.append(((lo_h, hi_h, sh - 1), (lo_w, hi_w, sw - 1)))
  return placements


def shifted_grads(g: Array, x_hw, kernel_hw, strides, pads, dilation) -> list[Array]:
  """For each kernel tap (row-major), g (n, ho, wo, cout) moved onto the input pixels
  that tap reads (`tap_placements`), zeros elsewhere: `x^T . shifted` is the tap's
  kernel gradient."""
  zero = jnp.zeros((), g.dtype)
  places = tap_placements(x_hw, g.shape[1:3], kernel_hw, strides, pads, dilation)
  return [jax.lax.pad(g, zero, ((0, 0, 0), ph, pw, (0, 0, 0))) for ph, pw in places]
