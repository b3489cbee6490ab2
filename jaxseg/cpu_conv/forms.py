"""The convolution forms of the CPU engine (see `plan` for which one runs where).

Every form computes `lax.conv_general_dilated(x, kernel)` (NHWC/HWIO, explicit
padding, groups=1 unless stated) or PyTorch's ConvTranspose2d, to float32
rounding; custom VJPs give each the gradients XLA:CPU runs fastest for it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxseg.cpu_conv import gemm, plan
from jaxseg.cpu_conv.geometry import (
  conv_out_size,
  pad_hw,
  shifted_grads,
  tap_placements,
  tap_slices,
)

Array = jax.Array


def plain(x: Array, kernel: Array, strides, pads, dilation, groups: int = 1) -> Array:
  """XLA's own convolution."""
  return jax.lax.conv_general_dilated(
    x, kernel, tuple(strides), [tuple(p) for p in pads], rhs_dilation=tuple(dilation),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
  )  # fmt: skip


def _out_hw(x_hw, kernel_hw, strides, pads, dilation):
  return tuple(
    conv_out_size(x_hw[a], pads[a], kernel_hw[a], dilation[a], strides[a]) for a in (0, 1)
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def padded_kernel_grad(x: Array, kernel: Array, pads, dilation, groups: int = 1) -> Array:
  """Stride-1 `plain`; the kernel gradient is that of the VALID convolution of the
  explicitly padded input (1.2-3x faster on XLA:CPU, bit-identical), the input gradient XLA's.
  The forward keeps the implicit padding so inference pays no copy."""
  return plain(x, kernel, (1, 1), pads, dilation, groups)


def _padded_kernel_grad_fwd(x, kernel, pads, dilation, groups):
  return plain(x, kernel, (1, 1), pads, dilation, groups), (x, kernel)


def _padded_kernel_grad_bwd(pads, dilation, groups, res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x: plain(x, kernel, (1, 1), pads, dilation, groups), x)
  xp = pad_hw(x, pads)
  valid = ((0, 0), (0, 0))
  _, vjp_k = jax.vjp(lambda k: plain(xp, k, (1, 1), valid, dilation, groups), kernel)
  return vjp_x(g)[0], vjp_k(g)[0]


padded_kernel_grad.defvjp(_padded_kernel_grad_fwd, _padded_kernel_grad_bwd)


def im2col(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """Shifted slices of the padded input feeding one GEMM."""
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ho, wo = _out_hw((h, w), (kh, kw), strides, pads, dilation)
  taps = tap_slices(pad_hw(x, pads), (kh, kw), dilation, strides, (ho, wo))
  # Column order (tap_i, tap_j, cin) matches the row-major HWIO kernel reshape.
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  y = gemm.matmul(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(-1, cout))
  return y.reshape(n, ho, wo, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def im2col_grad(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """XLA's forward convolution (no 9x patch matrix) with the gradients of `im2col`."""
  return plain(x, kernel, strides, pads, dilation)


def _im2col_grad_fwd(x, kernel, strides, pads, dilation):
  return plain(x, kernel, strides, pads, dilation), (x, kernel)


def _im2col_grad_bwd(strides, pads, dilation, res, g):
  _, vjp = jax.vjp(lambda x, k: im2col(x, k, strides, pads, dilation), *res)
  return vjp(g)


im2col_grad.defvjp(_im2col_grad_fwd, _im2col_grad_bwd)


def input_grad_gemm(g: Array, kernel: Array, x_hw, strides, pads, dilation) -> Array:
  """Input gradient as `kernel (kh*kw*cin, cout) . g^T` (kernel as stored) plus col2im:
  each tap's (cin, n, ho, wo) block is moved onto the input pixels it read and summed."""
  kh, kw, cin, cout = kernel.shape
  n, ho, wo, _ = g.shape
  cols = gemm.dot_nt(kernel.reshape(kh * kw * cin, cout), g.reshape(n * ho * wo, cout))
  cols = cols.reshape(kh, kw, cin, n, ho, wo)
  zero = jnp.zeros((), cols.dtype)
  out = None
  for t, (ph, pw) in enumerate(tap_placements(x_hw, (ho, wo), (kh, kw), strides, pads, dilation)):
    block = jax.lax.pad(cols[t // kw, t % kw], zero, ((0, 0, 0), (0, 0, 0), ph, pw))
    out = block if out is None else out + block
  return out.transpose(1, 2, 3, 0)


def kernel_grad_gemm(x: Array, g: Array, kernel_shape, strides, pads, dilation) -> Array:
  """Kernel gradient as one GEMM of the (kh*kw*cin, pixels) patch matrix of the
  once-transposed input and g (pixels, cout), directly in HWIO order."""
  kh, kw, cin, cout = kernel_shape
  n, ho, wo, _ = g.shape
  xt = pad_hw(x, pads).transpose(3, 0, 1, 2)
  taps = tap_slices(xt, (kh, kw), dilation, strides, (ho, wo), spatial=(2, 3))
  patches = jnp.stack(taps).reshape(kh * kw * cin, n * ho * wo)
  return jnp.matmul(patches, g.reshape(n * ho * wo, cout)).reshape(kernel_shape)


def grads_shifted(x: Array, kernel: Array, g: Array, strides, pads, dilation):
  """Both gradients from one (pixels_in, kh*kw*cout) matrix of per-tap shifted g.

  Kernel gradient `x^T . cols` (one transpose to HWIO), input gradient
  `cols . kernel^T`: no overlap-add and no channel-major copies of the input.
  Pays where the input has many more values per tap than the output.
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  # g feeds kh*kw pad fusions: computed once, not once per tap.
  g = gemm.materialize(g)
  shifted = shifted_grads(g, (h, w), (kh, kw), strides, pads, dilation)
  cols = jnp.concatenate(shifted, axis=-1).reshape(n * h * w, kh * kw * cout)
  kt = kernel.reshape(kh * kw, cin, cout).transpose(0, 2, 1).reshape(kh * kw * cout, cin)
  dx = jnp.matmul(cols, kt).reshape(n, h, w, cin)
  dk = gemm.dot_tn(x.reshape(n * h * w, cin), cols)
  return dx, dk.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


def _narrow_forward(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ho, wo = _out_hw((h, w), (kh, kw), strides, pads, dilation)
  kmat = kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
  # Per-tap products and their sum in float32 (one rounding at the end for bfloat16).
  z = jnp.matmul(x.reshape(n * h * w, cin), kmat, preferred_element_type=jnp.float32)
  taps = tap_slices(pad_hw(z.reshape(n, h, w, -1), pads), (kh, kw), dilation, strides, (ho, wo))
  y = sum(tap[..., t * cout : (t + 1) * cout] for t, tap in enumerate(taps))
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def narrow(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """`x (pixels, cin) . kernel (cin, kh*kw*cout)` gives each tap's contribution at the
  input pixel it reads; output pixel p sums tap t's block where tap t reads for p.
  Gradients `grads_shifted`: every GEMM has kh*kw*cout columns."""
  return _narrow_forward(x, kernel, strides, pads, dilation)


def _narrow_fwd(x, kernel, strides, pads, dilation):
  return _narrow_forward(x, kernel, strides, pads, dilation), (x, kernel)


def _narrow_bwd(strides, pads, dilation, res, g):
  x, kernel = res
  dx, dk = grads_shifted(x, kernel, g, strides, pads, dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


narrow.defvjp(_narrow_fwd, _narrow_bwd)


def _small_map_forward(x, kernel, strides, pads, dilation):
  if plan.small_map_gemm_forward(kernel.shape[:2]):
    return im2col(x, kernel, strides, pads, dilation)
  return plain(x, kernel, strides, pads, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def small_map(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """A convolution with fewer output pixels than output channels, with GEMM gradients
  that read the kernel as stored (`input_grad_gemm`, `kernel_grad_gemm`), or
  `grads_shifted` where the input is the larger side."""
  return _small_map_forward(x, kernel, strides, pads, dilation)


def _small_map_fwd(x, kernel, strides, pads, dilation):
  return _small_map_forward(x, kernel, strides, pads, dilation), (x, kernel)


def _small_map_bwd(strides, pads, dilation, res, g):
  x, kernel = res
  x_hw, (cin, cout) = x.shape[1:3], kernel.shape[2:]
  if plan.shifted_gradients(x_hw, g.shape[1:3], cin, cout):
    dx, dk = grads_shifted(x, kernel, g, strides, pads, dilation)
  else:
    dx = input_grad_gemm(g, kernel, x_hw, strides, pads, dilation)
    dk = kernel_grad_gemm(x, g, kernel.shape, strides, pads, dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


small_map.defvjp(_small_map_fwd, _small_map_bwd)


def transpose_overlap_add(x: Array, kernel: Array, strides, padding, output_padding) -> Array:
  """PyTorch ConvTranspose2d (kernel (kh, kw, out, in)) as one GEMM plus overlap-add.

  Input pixel (h, w) adds `x[n, h, w] . kernel[i, j]^T` to output pixel
  (h * s + i, w * s + j). With the kernel zero-padded to a multiple m * s of
  the stride, tap i = a * s + b lands in output row (h + a) * s + b: m * m
  shifted sums of (s, s) phase blocks, interleaved by a reshape.
  """
  kh, kw, cout, cin = kernel.shape
  (sh, sw), (ph, pw), (oph, opw) = strides, padding, output_padding
  n, h, w, _ = x.shape
  mh, mw = -(-kh // sh), -(-kw // sw)
  kp = kernel
  if (mh * sh, mw * sw) != (kh, kw):
    kp = jnp.pad(kernel, ((0, mh * sh - kh), (0, mw * sw - kw), (0, 0), (0, 0)))
  # `matmul_nt` reads the kernel as stored: DeconvNet's fc6_deconv (2 pixels,
  # 411 MB kernel) as matrix-vector products, 632 -> 27.5 ms.
  cols = gemm.matmul_nt(x.reshape(n * h * w, cin), kp.reshape(-1, cin))
  cols = cols.reshape(n, h, w, mh, sh, mw, sw, cout)
  hb, wb = h + mh - 1, w + mw - 1
  zero = jnp.zeros((), cols.dtype)
  out = None
  for a in range(mh):
    for c in range(mw):
      config = ((0, 0, 0), (a, hb - h - a, 0), (c, wb - w - c, 0)) + ((0, 0, 0),) * 3
      block = jax.lax.pad(cols[:, :, :, a, :, c, :, :], zero, config)
      out = block if out is None else out + block
  # (n, hb, wb, sh, sw, cout) -> (n, hb, sh, wb, sw, cout): phase interleave.
  out = out.transpose(0, 1, 3, 2, 4, 5).reshape(n, hb * sh, wb * sw, cout)
  out_h, out_w = (h - 1) * sh + kh - 2 * ph + oph, (w - 1) * sw + kw - 2 * pw + opw
  # output_padding may extend past the last tap: zeros there, as in PyTorch.
  more_h, more_w = max(0, ph + out_h - out.shape[1]), max(0, pw + out_w - out.shape[2])
  if more_h or more_w:
    out = jnp.pad(out, ((0, 0), (0, more_h), (0, more_w), (0, 0)))
  return out[:, ph : ph + out_h, pw : pw + out_w, :]
