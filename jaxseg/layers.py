"""Small shared modules: the convolution layers every model goes through.

All convolutions of all models are `Conv2d` / `ConvTranspose2d` from this file,
so a faster lowering (see issue "Performance") is changed in one place and
every model gets it. Parameter names follow flax (`kernel`, `bias`, `scale`,
`mean`, `var`); layouts are HWIO for convolutions and (kh, kw, out, in) for
transposed convolutions (PyTorch's ConvTranspose2d weight permuted by
(2, 3, 1, 0), the same permutation as Conv2d's OIHW -> HWIO).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IntOr2 = int | Sequence[int]

# PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)) has variance 1/(3 fan_in).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _pair(v: IntOr2) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(i) for i in v)
  if len(v) != 2:
    raise ValueError(f'expected an int or a pair, got {v!r}')
  return v


def _padding(padding, kernel, dilation) -> str | list[tuple[int, int]]:
  if isinstance(padding, str):
    padding = padding.upper()
    if padding not in ('SAME', 'VALID'):
      raise ValueError(f"padding must be an int, pairs, 'SAME' or 'VALID', got {padding!r}")
    if padding == 'SAME':
      # PyTorch-style symmetric "same" for stride 1 (odd effective kernels).
      return [
        ((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2)
        for k, d in zip(kernel, dilation, strict=True)
      ]
    return 'VALID'
  if isinstance(padding, int):
    return [(padding, padding), (padding, padding)]
  pads = list(padding)
  if all(isinstance(p, int) for p in pads):
    return [(pads[0], pads[0]), (pads[1], pads[1])]
  return [tuple(p) for p in pads]


def bilinear_kernel(kernel_size: int) -> np.ndarray:
  """The 2-D bilinear upsampling filter FCN initialises its deconvolutions with."""
  factor = (kernel_size + 1) // 2
  center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
  og = np.ogrid[:kernel_size, :kernel_size]
  return ((1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)).astype(
    np.float32
  )


def bilinear_init(key, shape, dtype=jnp.float32):
  """Initialiser for a (kh, kw, out, in) transposed-conv kernel: bilinear on the diagonal."""
  del key
  kh, kw, out_ch, in_ch = shape
  if kh != kw:
    raise ValueError(f'bilinear_init needs a square kernel, got {(kh, kw)}')
  w = np.zeros(shape, np.float32)
  filt = bilinear_kernel(kh)
  for i in range(min(out_ch, in_ch)):
    w[:, :, i, i] = filt
  return jnp.asarray(w, dtype)


# ---------------------------------------------------------------------------
# XLA:CPU settings and convolution lowerings.
#
# jaxlib 0.10's XLA:CPU hands dots, convolutions and reductions to YNNPACK by
# default. Its convolution gradients are the training-step cliff on CPU: the
# kernel gradient of a 3x3 convolution runs at 25-70 GFLOP/s (2.5-5x slower
# than XLA's Eigen path for the same op), and a 2048^3 float32 GEMM is ~20%
# slower than Eigen's on this CPU. `configure_xla_cpu()` (run when jaxseg is
# imported, before JAX starts its backend) therefore sets
# `--xla_cpu_experimental_ynn_fusion_type=reduce` in XLA_FLAGS: dots and
# convolutions go to Eigen, reductions stay with YNNPACK, whose float32 sums
# are the more accurate (XLA's own loop reductions doubled the error of
# train-mode BatchNorm statistics against a float64 reference).
#
# Independently of that flag, XLA:CPU (Eigen and YNNPACK alike) has cliffs
# that a lowering avoids: the input gradient of FCN's fc6 (7x7 VALID,
# 512 -> 4096 on an 11x11 map) takes ~15-20 s where the same contraction as
# shifted slices feeding one matmul takes ~0.3 s; the kernel gradient of a
# convolution whose padding exceeds its kernel (FCN's conv1_1, padded by 100)
# is 3-8x slower than that of an explicitly padded VALID convolution; and
# transposed convolutions lowered as convolutions of a stride-dilated input
# multiply mostly zeros; and on small maps, where the kernel outweighs the
# activations, every gradient step transposes and flips a copy of the kernel
# (65 ms for a 3x3x1024x1024 one). On CPU, `Conv2d` and `ConvTranspose2d` therefore
# lower to slices + one GEMM (+ overlap-add for transposed convolutions),
# whose autodiff transposes are again slices, pads and GEMMs, where that is
# faster. The decision is taken at trace time from `jax.default_backend()`;
# GPU/TPU keep the plain `lax.conv_general_dilated` lowering, which their
# compilers handle well. benchmarks/README.md has the measurements behind
# each threshold.
# ---------------------------------------------------------------------------

_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
_YNN_VALUE = 'reduce'  # YNNPACK for reductions only
# jaxlib versions on which the flag was verified to exist (XLA aborts on unknown flags).
_YNN_FLAG_JAXLIB = ((0, 10), (0, 12))
_OPT_OUT_ENV = 'JAXSEG_KEEP_XLA_FLAGS'


def _xla_flag_value(name: str) -> str | None:
  """Value of the last `--name=value` in XLA_FLAGS (None if the flag is not given)."""
  value = None
  for token in os.environ.get('XLA_FLAGS', '').split():
    if token.startswith(f'--{name}='):
      value = token.split('=', 1)[1]
    elif token == f'--{name}':
      value = ''
  return value


def _jaxlib_version() -> tuple[int, ...]:
  try:
    import jaxlib.version

    return tuple(int(p) for p in jaxlib.version.__version__.split('.')[:2])
  except (ImportError, ValueError):
    return ()


def _jaxlib_verified() -> bool:
  """Whether this jaxlib is one the XLA flag/options jaxseg sets were verified on."""
  low, high = _YNN_FLAG_JAXLIB
  return low <= _jaxlib_version() < high


def configure_xla_cpu() -> bool:
  """Moves XLA:CPU's dots and convolutions from YNNPACK to Eigen (XLA_FLAGS).

  Called when jaxseg is imported. Only effective before JAX initialises its
  backends (XLA reads XLA_FLAGS once); it does nothing when the flag is
  already in XLA_FLAGS (the user's choice wins), when the environment
  variable JAXSEG_KEEP_XLA_FLAGS is set to a non-empty value, or on jaxlib
  versions where the flag was not verified to exist. Returns whether it set
  the flag. The flag only concerns the CPU backend; results change within
  float32 rounding (a different GEMM/convolution library).
  """
  if os.environ.get(_OPT_OUT_ENV) or _xla_flag_value(_YNN_FLAG) is not None:
    return False
  if not _jaxlib_verified():
    return False
  try:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      return False
  except (ImportError, AttributeError):
    return False
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --{_YNN_FLAG}={_YNN_VALUE}'.strip()
  return True


def ynn_convolutions() -> bool:
  """Whether XLA:CPU runs convolutions through YNNPACK (jaxlib's default) per XLA_FLAGS."""
  value = _xla_flag_value(_YNN_FLAG)
  return value is None or 'convolution' in value.lower()


_XLA_CPU_CONFIGURED = configure_xla_cpu()


def cpu_compiler_options(model) -> dict[str, Any] | None:
  """The XLA:CPU compile options `model` asks for, for `jax.jit(..., compiler_options=...)`.

  A model may list options in a `xla_cpu_compiler_options` attribute:
  trade-offs that pay for one architecture and not another, so they are per
  jitted function rather than process-wide XLA_FLAGS (FC-DenseNet103's ~1,400
  small kernels compile 20-40% faster without XLA:CPU's MLIR fusion emitters
  at an even step, while ResNet steps run 7-10% slower without them). The trainer and
  the benchmarks pass the result to their jits. Returns None (XLA's defaults)
  off CPU, when JAXSEG_KEEP_XLA_FLAGS is set, and on jaxlib versions where the
  options were not verified to exist (XLA rejects unknown options); an option
  the user sets in XLA_FLAGS is left to XLA_FLAGS.
  """
  options = dict(getattr(model, 'xla_cpu_compiler_options', None) or {})
  if not options or os.environ.get(_OPT_OUT_ENV) or jax.default_backend() != 'cpu':
    return None
  if not _jaxlib_verified():
    return None
  return {k: v for k, v in options.items() if _xla_flag_value(k) is None} or None


_FASTPATH: list[bool] = [True]

# Patch matrices above this size fall back to the plain lowering (memory).
_MAX_PATCH_BYTES = 1 << 30
# With YNNPACK convolutions (XLA's default), below this many input channels the
# im2col GEMM gradients do not beat XLA:CPU's own 3x3 convolution gradients
# (measured: 64 channels at 326x326 2.5x slower, 128 at 163x163 even, 256 at
# 82x82 1.5x and 512 at 41x41 2-3x faster). With Eigen convolutions
# (configure_xla_cpu) XLA's own gradients win at every width and the custom VJP
# is not used. On small maps (output pixels <= output channels) the GEMM
# gradients of `_conv_gemm_grads` win instead, measured per op on 2 cores: fc6
# (7x7, 512 -> 4096, 2x5x5 outputs) input gradient 116 ms vs 17.5 s, kernel
# gradient 254 vs 428 ms; U-Net's 3x3 1024 -> 1024 at 8x8 15 vs 86 ms and 29 vs
# 47 ms; 512 -> 512 at 2x16x16 (dilation 4) about even to 1.4x. Large kernels
# (area >= _LARGE_KERNEL_AREA) also take the slices + GEMM forward there.
_MIN_IM2COL_CHANNELS = 256
_NARROW_MAX_COLS = 144
_LARGE_KERNEL_AREA = 25


@contextlib.contextmanager
def conv_fastpath(enabled: bool):
  """Enables or disables the CPU convolution fast paths (at trace time).

  Used by the benchmarks and parity tests to compare against the plain
  `lax.conv_general_dilated` lowering; results agree to float32 rounding.
  """
  _FASTPATH.append(bool(enabled))
  try:
    yield
  finally:
    _FASTPATH.pop()


def _fastpath_on() -> bool:
  return _FASTPATH[-1] and jax.default_backend() == 'cpu'


def _conv_out_size(size: int, pad: tuple[int, int], k: int, d: int, s: int) -> int:
  return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _pad_hw(x: Array, pads) -> Array:
  """Zero-pads the H and W axes of an NHWC array by `pads` ((top, bottom), (left, right))."""
  return jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))


def _tap_slices(xp: Array, kernel_hw, dilation, strides, out_hw, spatial=(1, 2)) -> list[Array]:
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


def _live_taps(size: int, pad: tuple[int, int], k: int, d: int, s: int, out: int):
  """First and last kernel tap (one axis) that reads at least one input pixel.

  Tap i reads rows `i * d - pad[0] + o * s`, o < out. Taps that read only
  padding (a dilation rate at or beyond the map's size: DeepLabv3's ASPP rates
  24 and 36 on a 16x16 map) contribute exact zeros and can be dropped.
  """
  live = []
  for i in range(k):
    first = i * d - pad[0]
    o = max(0, -(first // s))  # the first o whose row is >= 0
    if o < out and first + o * s <= size - 1:
      live.append(i)
  return (live[0], live[-1]) if live else (0, k - 1)


def _drop_padding_taps(x: Array, kernel: Array, strides, pads, dilation, out_hw):
  """Drops kernel rows/columns that only ever read padding (exact: they add zeros).

  Returns (x, kernel, pads) for a convolution with the same output; a negative
  padding left by the cut becomes a crop of rows no remaining tap reads.
  """
  kh, kw = kernel.shape[:2]
  (i0, i1), (j0, j1) = (
    _live_taps(x.shape[1 + a], pads[a], (kh, kw)[a], dilation[a], strides[a], out_hw[a])
    for a in (0, 1)
  )
  if (i0, i1, j0, j1) == (0, kh - 1, 0, kw - 1):
    return x, kernel, pads
  kernel = kernel[i0 : i1 + 1, j0 : j1 + 1]
  new = []
  for a, (lo, hi) in ((0, (i0, i1)), (1, (j0, j1))):
    k, d = (kh, kw)[a], dilation[a]
    p_lo, p_hi = pads[a][0] - lo * d, pads[a][1] - (k - 1 - hi) * d
    size = x.shape[1 + a]
    start, stop = max(0, -p_lo), size + min(0, p_hi)
    if (start, stop) != (0, size):
      x = jax.lax.slice_in_dim(x, start, stop, axis=1 + a)
    new.append((max(0, p_lo), max(0, p_hi)))
  return x, kernel, new


def _conv_cpu(x: Array, kernel: Array, strides, pads, dilation, groups: int, out_hw) -> Array:
  """The CPU lowering of `Conv2d` (see the comment block above); same result as `_conv_plain`."""
  if min(out_hw) >= 1:
    x, kernel, pads = _drop_padding_taps(x, kernel, strides, pads, dilation, out_hw)
  kh, kw, cin, _ = kernel.shape
  reach = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
  if any(p > reach[a] for a in (0, 1) for p in pads[a]):
    # Padding beyond the kernel's reach (output pixels that see only padding):
    # XLA:CPU's kernel gradient is 3-8x slower with it than for the explicitly
    # padded VALID convolution (FCN's conv1_1, padded by 100).
    x = _pad_hw(x, pads)
    pads = [(0, 0), (0, 0)]
  pads = tuple(tuple(p) for p in pads)
  if any(p < 0 for pair in pads for p in pair) or min(out_hw) < 1:
    return _conv_plain(x, kernel, strides, pads, dilation, groups)
  if groups != 1:
    return _conv_xla(x, kernel, strides, pads, dilation, groups)
  area = kh * kw
  patch_bytes = x.shape[0] * out_hw[0] * out_hw[1] * area * cin * jnp.dtype(x.dtype).itemsize
  if patch_bytes > _MAX_PATCH_BYTES:
    return _conv_xla(x, kernel, strides, pads, dilation, groups)
  if area == 1:
    return _conv_im2col(x, kernel, strides, pads, dilation)
  if x.shape[0] * out_hw[0] * out_hw[1] <= kernel.shape[3]:
    # Small maps (fewer output pixels than output channels: fc6 as a convolution, the
    # deepest U-Net / ResNet stages at small inputs): the kernel is the large operand,
    # and XLA:CPU's gradients transpose and flip a copy of it for every step (65 ms for
    # U-Net's 3x3x1024x1024 at 8x8) or fall off its fast path entirely (fc6's input
    # gradient, ~150x). GEMMs with the kernel in its stored layout instead. On large
    # maps (SegNet-Basic's 7x7 convolutions at 128x128, 64 channels) XLA's own
    # convolution is 3-6x faster than materialising a 49x patch matrix.
    return _conv_gemm_grads(x, kernel, strides, pads, dilation)
  if area * kernel.shape[3] <= _NARROW_MAX_COLS and cin >= 4 * kernel.shape[3]:
    return _conv_narrow(x, kernel, strides, pads, dilation)
  if cin >= _MIN_IM2COL_CHANNELS and ynn_convolutions():
    return _conv_im2col_grad(x, kernel, strides, pads, dilation)
  return _conv_xla(x, kernel, strides, pads, dilation, groups)


def _conv_xla(x: Array, kernel: Array, strides, pads, dilation, groups: int) -> Array:
  """XLA's own convolution; stride-1 padded ones take their kernel gradient unpadded.

  XLA:CPU's kernel gradient of a padded stride-1 convolution is 1.2-3x slower
  than the same gradient of the VALID convolution of the explicitly padded
  input (bit-identical results): 3x3 at 128x128, 128 -> 64 channels, 175 -> 55
  ms forward + both gradients; SegNet-Basic's 7x7 at 128x128, 64 channels,
  2x. Padding the forward's input too would cost inference a copy, so only
  the kernel gradient is rerouted. Strided convolutions measured even or
  worse and keep XLA's gradients.
  """
  if tuple(strides) == (1, 1) and any(p > 0 for pair in pads for p in pair):
    return _conv_padded_kernel_grad(x, kernel, pads, tuple(dilation), groups)
  return _conv_plain(x, kernel, strides, pads, dilation, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_padded_kernel_grad(x: Array, kernel: Array, pads, dilation, groups: int) -> Array:
  """Stride-1 `_conv_plain`; the kernel gradient is that of the VALID convolution
  of the explicitly padded input (see `_conv_xla`), the input gradient XLA's."""
  return _conv_plain(x, kernel, (1, 1), pads, dilation, groups)


def _conv_padded_kernel_grad_fwd(x, kernel, pads, dilation, groups):
  return _conv_plain(x, kernel, (1, 1), pads, dilation, groups), (x, kernel)


def _conv_padded_kernel_grad_bwd(pads, dilation, groups, res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x: _conv_plain(x, kernel, (1, 1), pads, dilation, groups), x)
  xp = _pad_hw(x, pads)
  valid = ((0, 0), (0, 0))
  _, vjp_k = jax.vjp(lambda k: _conv_plain(xp, k, (1, 1), valid, dilation, groups), kernel)
  return vjp_x(g)[0], vjp_k(g)[0]


_conv_padded_kernel_grad.defvjp(_conv_padded_kernel_grad_fwd, _conv_padded_kernel_grad_bwd)


def _conv_im2col(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """`conv_general_dilated` (NHWC/HWIO, groups=1) as shifted slices feeding one GEMM."""
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ho = _conv_out_size(h, pads[0], kh, dilation[0], strides[0])
  wo = _conv_out_size(w, pads[1], kw, dilation[1], strides[1])
  xp = _pad_hw(x, pads)
  taps = _tap_slices(xp, (kh, kw), dilation, strides, (ho, wo))
  # Column order (tap_i, tap_j, cin) matches the row-major HWIO kernel reshape.
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  y = _matmul(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
  return y.reshape(n, ho, wo, cout)


# Eigen's GEMM (XLA:CPU's dot with jaxseg's flag) computes `a . b^T` (both operands
# contracting their minor axis, the input gradient of every 1x1 convolution and the
# forward of every transposed convolution) far below its `a . b` speed when `b` has
# many rows, and pathologically when `a` has only a few. Measured on 2 cores, a (m, k),
# b (n, k): DeconvNet's fc6_deconv (m=2, k=4096, n=25088) 632 ms, as m matrix-vector
# products 27.5 ms; FCN's fc7 input gradient shape (m=512, k=n=4096) 187 ms, with b
# transposed once into (k, n) and a plain GEMM 108 ms; ResNet's 2048 -> 512 1x1
# input gradient (m=512, k=512, n=2048) 9.5 vs 4.8 ms. For n <= 1024 the forms are
# even (512 -> 2048: n=512, 5.3 vs 6.3 ms), so `b` is only transposed from n = 2048.
_GEMV_MAX_ROWS = 8
_NT_TRANSPOSE_MIN_ROWS = 2048


def _dot_nt(a: Array, b: Array) -> Array:
  """`a (m, k) . b (n, k)^T` in the form XLA:CPU's GEMM runs fast (see above)."""
  m, n = a.shape[0], b.shape[0]
  if m <= _GEMV_MAX_ROWS:
    return jnp.stack([jax.lax.dot_general(b, a[i], (((1,), (0,)), ((), ()))) for i in range(m)])
  if n >= _NT_TRANSPOSE_MIN_ROWS:
    # The barrier keeps XLA from folding the transpose back into the dot.
    return jnp.matmul(a, jax.lax.optimization_barrier(b.T))
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))


@jax.custom_vjp
def _matmul(x: Array, w: Array) -> Array:
  """`x (m, k) . w (k, n)` whose input gradient `g . w^T` takes `_dot_nt`'s fast form."""
  return jnp.matmul(x, w)


def _matmul_fwd(x, w):
  return jnp.matmul(x, w), (x, w)


def _matmul_bwd(res, g):
  x, w = res
  return _dot_nt(g, w), jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())))


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def _matmul_nt(a: Array, b: Array) -> Array:
  """`_dot_nt(a, b)` (`a . b^T`) with the plain GEMM gradients `g . b` and `g^T . a`."""
  return _dot_nt(a, b)


def _matmul_nt_fwd(a, b):
  return _dot_nt(a, b), (a, b)


def _matmul_nt_bwd(res, g):
  a, b = res
  return jnp.matmul(g, b), jax.lax.dot_general(g, a, (((0,), (0,)), ((), ())))


_matmul_nt.defvjp(_matmul_nt_fwd, _matmul_nt_bwd)


def _conv_plain(x: Array, kernel: Array, strides, pads, dilation, groups: int = 1) -> Array:
  return jax.lax.conv_general_dilated(
    x, kernel, strides, [tuple(p) for p in pads], rhs_dilation=dilation,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
  )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_im2col_grad(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """XLA's own forward convolution, with the gradients of the im2col formulation.

  For small kernels XLA:CPU's forward convolution beats im2col (no 9x patch
  matrix), while its input and kernel gradients are the slow part; this keeps
  the fast half of each (inference is unaffected, training gets the GEMMs).
  """
  return _conv_plain(x, kernel, strides, pads, dilation)


def _conv_im2col_grad_fwd(x, kernel, strides, pads, dilation):
  return _conv_plain(x, kernel, strides, pads, dilation), (x, kernel)


def _conv_im2col_grad_bwd(strides, pads, dilation, res, g):
  x, kernel = res
  _, vjp = jax.vjp(lambda x, k: _conv_im2col(x, k, strides, pads, dilation), x, kernel)
  return vjp(g)


_conv_im2col_grad.defvjp(_conv_im2col_grad_fwd, _conv_im2col_grad_bwd)


def _conv_input_grad_gemm(g: Array, kernel: Array, x_hw, strides, pads, dilation) -> Array:
  """Input gradient of `_conv_plain` (groups=1) as one GEMM plus a col2im overlap-add.

  `kernel (kh*kw*cin, cout) . g (pixels, cout)^T` (`_dot_nt`): the kernel is used
  as stored (no transposed or flipped copy), and with few pixels (this path's
  maps) Eigen runs this form at full speed. Each tap's (cin, n, ho, wo)
  block is then moved onto the input pixels its tap reads (`_tap_placements`)
  and the blocks summed.
  """
  kh, kw, cin, cout = kernel.shape
  n, ho, wo, _ = g.shape
  cols = _dot_nt(kernel.reshape(kh * kw * cin, cout), g.reshape(n * ho * wo, cout))
  cols = cols.reshape(kh, kw, cin, n, ho, wo)
  zero = jnp.zeros((), cols.dtype)
  out = None
  for t, (ph, pw) in enumerate(_tap_placements(x_hw, (ho, wo), (kh, kw), strides, pads, dilation)):
    block = jax.lax.pad(cols[t // kw, t % kw], zero, ((0, 0, 0), (0, 0, 0), ph, pw))
    out = block if out is None else out + block
  return out.transpose(1, 2, 3, 0)


def _tap_placements(x_hw, out_hw, kernel_hw, strides, pads, dilation) -> list:
  """Per kernel tap (row-major), the `lax.pad` configs ((low, high, interior) for H, W)
  that move an output-grid array onto the input pixels the tap reads.

  Tap (i, j) of output pixel (p, q) reads input pixel (p*s + i*d - pad, ...): the
  stride becomes interior padding, the offset low padding, and input rows the tap
  never reads zeros (negative padding crops what falls outside the input).
  """
  (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_hw, strides, dilation, out_hw
  placements = []
  for i in range(kh):
    for j in range(kw):
      lo_h, lo_w = i * dh - pads[0][0], j * dw - pads[1][0]
      hi_h, hi_w = x_hw[0] - lo_h - (ho - 1) * sh - 1, x_hw[1] - lo_w - (wo - 1) * sw - 1
      placements.append(((lo_h, hi_h, sh - 1), (lo_w, hi_w, sw - 1)))
  return placements


def _shifted_grads(g: Array, x_hw, kernel_hw, strides, pads, dilation) -> list[Array]:
  """For each kernel tap (row-major), g (n, ho, wo, cout) moved onto the input
  pixels that tap reads (`_tap_placements`), zeros elsewhere: `x^T . shifted`
  is the tap's kernel gradient."""
  zero = jnp.zeros((), g.dtype)
  places = _tap_placements(x_hw, g.shape[1:3], kernel_hw, strides, pads, dilation)
  return [jax.lax.pad(g, zero, ((0, 0, 0), ph, pw, (0, 0, 0))) for ph, pw in places]


def _conv_kernel_grad_gemm(x: Array, g: Array, kernel_shape, strides, pads, dilation) -> Array:
  """Kernel gradient of `_conv_plain` (groups=1) as one GEMM over transposed patches.

  The small input is transposed once to (cin, n, h, w), its kh*kw strided tap
  windows stacked into a (kh*kw*cin, pixels) patch matrix, which multiplies
  g (pixels, cout) directly into the HWIO kernel layout.
  """
  kh, kw, cin, cout = kernel_shape
  n, ho, wo, _ = g.shape
  xt = _pad_hw(x, pads).transpose(3, 0, 1, 2)
  taps = _tap_slices(xt, (kh, kw), dilation, strides, (ho, wo), spatial=(2, 3))
  patches = jnp.stack(taps).reshape(kh * kw * cin, n * ho * wo)
  dk = jax.lax.dot_general(patches, g.reshape(n * ho * wo, cout), (((1,), (0,)), ((), ())))
  return dk.reshape(kernel_shape)


_MATERIALIZE: list[bool] = [True]


def _materialize(v: Array) -> Array:
  """`v`, computed once into its own buffer (a fusion boundary for XLA:CPU; CPU paths only).

  XLA:CPU duplicates cheap elementwise producers into every fusion that
  consumes them, and `lax.optimization_barrier` is gone before fusion runs.
  When one value feeds many fusions (an output gradient moved under each of
  the kh*kw kernel taps), each of them then recomputes the whole chain behind
  it: the output gradient of a narrow convolution (and with it the BatchNorm
  backward or the forward shifted sum it depends on) nine times over. A while
  loop is never fused through; its trip count is read from `v` (1, or 0 for a
  NaN first element), so no pass can remove it, and its body returns `v`
  unchanged. Costs one copy of `v`. Not for GPU/TPU programs, where the loop
  condition is a host round trip. Differentiable (identity tangent), also twice.
  """
  return _materialized(v) if _MATERIALIZE[-1] and v.size else v


@jax.custom_jvp
def _materialized(v: Array) -> Array:
  first = v.reshape(-1)[0]
  trips = (first == first).astype(jnp.int32)

  def body(carry):
    i, u = carry
    return i + 1, jnp.where(i < 0, jnp.zeros_like(u), u)

  return jax.lax.while_loop(lambda carry: carry[0] < trips, body, (jnp.int32(0), v))[1]


@_materialized.defjvp
def _materialized_jvp(primals, tangents):
  return _materialized(primals[0]), tangents[0]


def _conv_grads_shifted(x: Array, kernel: Array, g: Array, strides, pads, dilation):
  """Both gradients of `_conv_plain` (groups=1) from one matrix of per-tap shifted g.

  `cols` (pixels_in, kh*kw*cout) holds g moved under the input pixels each tap
  reads (`_shifted_grads`). Then the kernel gradient is `x (pixels_in, cin)^T .
  cols`, in (cin, kh, kw, cout) order, transposed once to HWIO, and the input
  gradient `cols . kernel^T` with the kernel as (kh*kw*cout, cin): no overlap-add
  and no channel-major copies of the input. Used where the input has at least
  8x as many values per tap as the output (PSPNet's 3x3 4096 -> 512 head at
  16x16), where replicating g costs far less than replicating the input. That
  head alone: kernel gradient 231 -> 158 ms. Train steps against the
  patch-based gradients (interleaved A/Bs of 5-7): PSPNet 1.126x and 1.053x;
  at 4x (torchvision fcn_resnet101's 2048 -> 512 head) 0.945x and at 2x (the
  padded U-Net's 1024 -> 512) 0.976x, so those keep the patches.
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  # g feeds kh*kw pad fusions: computed once (`_materialize`), not once per tap.
  g = _materialize(g)
  shifted = _shifted_grads(g, (h, w), (kh, kw), strides, pads, dilation)
  cols = jnp.concatenate(shifted, axis=-1).reshape(n * h * w, kh * kw * cout)
  kt = kernel.reshape(kh * kw, cin, cout).transpose(0, 2, 1).reshape(kh * kw * cout, cin)
  dx = jax.lax.dot_general(cols, kt, (((1,), (0,)), ((), ()))).reshape(n, h, w, cin)
  dk = jax.lax.dot_general(x.reshape(n * h * w, cin), cols, (((0,), (0,)), ((), ())))
  return dx, dk.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


def _conv_narrow_forward(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """`_conv_plain` (groups=1) as one GEMM into per-tap outputs, then a shifted sum.

  `z = x (pixels, cin) . kernel (cin, kh*kw*cout)` gives every tap's contribution
  at the input pixel it reads; output pixel p sums tap t's block of z at the input
  pixel tap t reads for p (`_tap_slices` of the padded z, one fused loop).
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ho = _conv_out_size(h, pads[0], kh, dilation[0], strides[0])
  wo = _conv_out_size(w, pads[1], kw, dilation[1], strides[1])
  kmat = kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
  # Per-tap products and their sum in float32 (one rounding at the end for bfloat16).
  z = jnp.matmul(x.reshape(n * h * w, cin), kmat, preferred_element_type=jnp.float32)
  z = z.reshape(n, h, w, kh * kw * cout)
  taps = _tap_slices(_pad_hw(z, pads), (kh, kw), dilation, strides, (ho, wo))
  y = sum(tap[..., t * cout : (t + 1) * cout] for t, tap in enumerate(taps))
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_narrow(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """A convolution whose output is much narrower than its input (FC-DenseNet's
  growth-rate layers, 3x3 48..324 -> 12; a 3x3 classifier 64 -> 11), as GEMMs.

  Eigen's convolution runs these far below its GEMM speed (few output channels).
  Forward `_conv_narrow_forward`, gradients `_conv_grads_shifted`: every GEMM
  then has kh*kw*cout columns.
  """
  return _conv_narrow_forward(x, kernel, strides, pads, dilation)


def _conv_narrow_fwd(x, kernel, strides, pads, dilation):
  return _conv_narrow_forward(x, kernel, strides, pads, dilation), (x, kernel)


def _conv_narrow_bwd(strides, pads, dilation, res, g):
  x, kernel = res
  dx, dk = _conv_grads_shifted(x, kernel, g, strides, pads, dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_narrow.defvjp(_conv_narrow_fwd, _conv_narrow_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_gemm_grads(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  """A convolution on a small map (pixels <= output channels) with GEMM gradients.

  Forward: XLA's convolution, or shifted slices feeding one GEMM for large
  kernels (fc6's 7x7). Backward: `_conv_input_grad_gemm` and
  `_conv_kernel_grad_gemm`, which read the kernel in its stored layout, or
  `_conv_grads_shifted` when the input is the larger side.
  """
  return _conv_small_map_fwd(x, kernel, strides, pads, dilation)


def _conv_small_map_fwd(x, kernel, strides, pads, dilation):
  if kernel.shape[0] * kernel.shape[1] >= _LARGE_KERNEL_AREA:
    return _conv_im2col(x, kernel, strides, pads, dilation)
  return _conv_plain(x, kernel, strides, pads, dilation)


def _conv_gemm_grads_fwd(x, kernel, strides, pads, dilation):
  return _conv_small_map_fwd(x, kernel, strides, pads, dilation), (x, kernel)


def _conv_gemm_grads_bwd(strides, pads, dilation, res, g):
  x, kernel = res
  (h, w), (ho, wo), cin, cout = x.shape[1:3], g.shape[1:3], kernel.shape[2], kernel.shape[3]
  if 8 * h * w * cout <= ho * wo * cin:
    dx, dk = _conv_grads_shifted(x, kernel, g, strides, pads, dilation)
  else:
    dx = _conv_input_grad_gemm(g, kernel, (h, w), strides, pads, dilation)
    dk = _conv_kernel_grad_gemm(x, g, kernel.shape, strides, pads, dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_gemm_grads.defvjp(_conv_gemm_grads_fwd, _conv_gemm_grads_bwd)


def _conv_transpose_overlap_add(x: Array, kernel: Array, strides, padding, output_padding) -> Array:
  """PyTorch ConvTranspose2d (kernel (kh, kw, out, in)) as one GEMM plus overlap-add.

  Every input pixel contributes `x[n, h, w] @ kernel[i, j].T` to output pixel
  `(h * s + i, w * s + j)`. With the kernel zero-padded to a multiple m * s
  of the stride, tap i = a * s + b lands in output row (h + a) * s + b: the
  m * m shifted sums of a (s, s) phase block, interleaved by a reshape.
  """
  kh, kw, cout, cin = kernel.shape
  (sh, sw), (ph, pw), (oph, opw) = strides, padding, output_padding
  n, h, w, _ = x.shape
  mh, mw = -(-kh // sh), -(-kw // sw)
  kp = kernel
  if mh * sh != kh or mw * sw != kw:
    kp = jnp.pad(kernel, ((0, mh * sh - kh), (0, mw * sw - kw), (0, 0), (0, 0)))
  # Contracting the kernel's last (in) axis: its (mh, sh, mw, sw, out) rows split
  # the GEMM output into taps. `_matmul_nt` picks the form XLA:CPU runs fast: for
  # DeconvNet's fc6_deconv (2 pixels) matrix-vector products that read the 411 MB
  # kernel as stored (632 -> 27.5 ms).
  kmat = kp.reshape(-1, cin)
  cols = _matmul_nt(x.reshape(n * h * w, cin), kmat)
  cols = cols.reshape(n, h, w, mh, sh, mw, sw, cout)
  hb, wb = h + mh - 1, w + mw - 1
  out = None
  for a in range(mh):
    for c in range(mw):
      block = jax.lax.pad(
        cols[:, :, :, a, :, c, :, :],
        jnp.zeros((), cols.dtype),
        ((0, 0, 0), (a, hb - h - a, 0), (c, wb - w - c, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)),
      )
      out = block if out is None else out + block
  # (n, hb, wb, sh, sw, cout) -> (n, hb, sh, wb, sw, cout): phase interleave.
  out = out.transpose(0, 1, 3, 2, 4, 5).reshape(n, hb * sh, wb * sw, cout)
  full_h, full_w = (h - 1) * sh + kh, (w - 1) * sw + kw
  out_h, out_w = full_h - 2 * ph + oph, full_w - 2 * pw + opw
  # output_padding extends past the last tap: zeros there, like PyTorch.
  need_h, need_w = ph + out_h, pw + out_w
  if need_h > out.shape[1] or need_w > out.shape[2]:
    out = jnp.pad(
      out, ((0, 0), (0, max(0, need_h - out.shape[1])), (0, max(0, need_w - out.shape[2])), (0, 0))
    )
  return out[:, ph : ph + out_h, pw : pw + out_w, :]


def _use_overlap_add(kernel_shape, strides, padding, x_shape, dtype) -> bool:
  kh, kw, cout, _ = kernel_shape
  sh, sw = strides
  if sh < 1 or sw < 1 or min(padding) < 0:
    return False
  cols_bytes = (
    x_shape[0] * x_shape[1] * x_shape[2] * (-(-kh // sh) * sh) * (-(-kw // sw) * sw) * cout
  )
  return cols_bytes * jnp.dtype(dtype).itemsize <= _MAX_PATCH_BYTES


class Conv2d(nn.Module):
  """2-D convolution on NHWC inputs (PyTorch Conv2d semantics).

  Attributes:
    features: output channels.
    kernel_size: int or (kh, kw).
    strides: int or pair.
    padding: int, pair of ints, explicit ((top, bottom), (left, right)), 'SAME' or 'VALID'.
    dilation: int or pair; lowers to `rhs_dilation` (atrous convolution).
    groups: feature groups (groups == in_channels is a depthwise convolution).
    use_bias: whether to add a bias.
    dtype: computation dtype (e.g. jnp.bfloat16); None keeps the input's.
    param_dtype: parameter dtype.
    kernel_init, bias_init: initialisers.
  """

  features: int
  kernel_size: IntOr2 = 3
  strides: IntOr2 = 1
  padding: Any = 0
  dilation: IntOr2 = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = torch_default_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pair(self.kernel_size)
    in_ch = x.shape[-1]
    if in_ch % self.groups:
      raise ValueError(
        f'{self.name}: {in_ch} input channels are not divisible by groups={self.groups}'
      )
    kernel = self.param(
      'kernel', self.kernel_init, (kh, kw, in_ch // self.groups, self.features), self.param_dtype
    )
    dtype = self.dtype or x.dtype
    dilation = _pair(self.dilation)
    strides = _pair(self.strides)
    padding = _padding(self.padding, (kh, kw), dilation)
    pads = [(0, 0), (0, 0)] if padding == 'VALID' else padding
    out_hw = tuple(
      _conv_out_size(x.shape[1 + a], pads[a], (kh, kw)[a], dilation[a], strides[a]) for a in (0, 1)
    )
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if _fastpath_on():
      y = _conv_cpu(x, kernel, strides, [tuple(p) for p in pads], dilation, self.groups, out_hw)
    else:
      y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.groups,
      )
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(dtype)
    return y


class ConvTranspose2d(nn.Module):
  """Transposed convolution with PyTorch ConvTranspose2d semantics (NHWC).

  Output size is `(in - 1) * stride - 2 * padding + kernel + output_padding`.
  The kernel is stored (kh, kw, out, in).

  Attributes:
    features: output channels.
    kernel_size: int or pair.
    strides: int or pair.
    padding: int or pair (PyTorch's `padding`: cropped from each side).
    output_padding: int or pair added to the bottom/right.
    use_bias: whether to add a bias (FCN's upsampling layers have none).
    dtype, param_dtype, kernel_init, bias_init: as in `Conv2d`.
  """

  features: int
  kernel_size: IntOr2 = 2
  strides: IntOr2 = 2
  padding: IntOr2 = 0
  output_padding: IntOr2 = 0
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = torch_default_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pair(self.kernel_size)
    sh, sw = _pair(self.strides)
    ph, pw = _pair(self.padding)
    oph, opw = _pair(self.output_padding)
    in_ch = x.shape[-1]
    kernel = self.param(
      'kernel', self.kernel_init, (kh, kw, self.features, in_ch), self.param_dtype
    )
    dtype = self.dtype or x.dtype
    if _fastpath_on() and _use_overlap_add(kernel.shape, (sh, sw), (ph, pw), x.shape, dtype):
      y = _conv_transpose_overlap_add(
        x.astype(dtype), kernel.astype(dtype), (sh, sw), (ph, pw), (oph, opw)
      )
      if self.use_bias:
        y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(dtype)
      return y
    # A transposed conv is a conv of the stride-dilated input with the spatially
    # flipped, in/out-swapped kernel, padded by k - 1 - p on each side.
    rhs = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(dtype)
    y = jax.lax.conv_general_dilated(
      x.astype(dtype),
      rhs,
      window_strides=(1, 1),
      padding=[(kh - 1 - ph, kh - 1 - ph + oph), (kw - 1 - pw, kw - 1 - pw + opw)],
      lhs_dilation=(sh, sw),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(dtype)
    return y


_SYNC_AXIS: list[str | None] = [None]


@contextlib.contextmanager
def sync_batch_stats(axis_name: str | None):
  """Within this context (at trace time) every `BatchNorm` without its own
  `axis_name` averages batch statistics over the pmap/shard_map axis
  `axis_name`, so the classic pmap training step computes the same global
  statistics as the jit + sharding path, without threading the axis name
  through every model constructor.
  """
  _SYNC_AXIS.append(axis_name)
  try:
    yield
  finally:
    _SYNC_AXIS.pop()


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
  def __call__(self, x: Array, *, train: bool) -> Array:
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
      axis_name = self.axis_name or _SYNC_AXIS[-1]
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
  """Conv2d -> BatchNorm -> ReLU (the seed notes' CBR block).

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
  bn_axis_name: str | None = None

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
    x = BatchNorm(axis_name=self.bn_axis_name, dtype=self.dtype, name='bn')(x, train=train)
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


def check_image_batch(
  x: Array, name: str, *, channels: int | None = None, min_size: int = 1
) -> None:
  """Validates a model input: NHWC float array with the expected channels and size."""
  if not hasattr(x, 'ndim') or x.ndim != 4:
    shape = getattr(x, 'shape', type(x).__name__)
    raise ValueError(f'{name} expects an NHWC batch of rank 4 (N, H, W, C), got shape {shape}.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f'{name} expects a floating-point input (normalised image), got dtype {x.dtype}.'
    )
  if channels is not None and x.shape[-1] != channels:
    raise ValueError(
      f'{name} expects {channels} input channels (NHWC, channels last), got {x.shape[-1]} (shape {tuple(x.shape)}).'
    )
  if min(x.shape[1], x.shape[2]) < min_size:
    raise ValueError(f'{name} needs H and W >= {min_size}, got {tuple(x.shape[1:3])}.')
