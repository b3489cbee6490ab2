"""Which form a convolution takes on XLA:CPU: pure functions of shapes.

`plan_conv` is the whole decision for `Conv2d`; `plan_conv_transpose` for
`ConvTranspose2d`. Nothing here touches arrays, so the rules are unit-tested
directly. The thresholds come from per-op and per-model measurements on a
2-core x86 CPU (benchmarks/README.md, "CPU convolution forms"):

- `plain`: XLA's own convolution (also for grouped convolutions and
  degenerate shapes).
- `padded_kernel_grad`: XLA's convolution; its kernel gradient is taken on the
  explicitly padded input (stride 1 with padding: 1.2-3x faster gradient).
- `im2col`: 1x1 convolutions as one GEMM (fast `a . b^T` input gradient).
- `small_map`: fewer output pixels than output channels (fc6 as a
  convolution, the deepest stages at small inputs): GEMM gradients that read
  the kernel as stored (fc6's input gradient ~150x faster).
- `narrow`: outputs much narrower than inputs (FC-DenseNet's growth layers,
  3x3 classifiers): one GEMM into per-tap outputs and a shifted sum.
- `im2col_grad`: XLA's forward with im2col GEMM gradients, for wide inputs
  when XLA:CPU runs convolutions through YNNPACK (its default).
"""

from __future__ import annotations

import dataclasses

from jaxseg.cpu_conv import geometry

# Patch matrices above this size keep XLA's convolution (memory).
MAX_PATCH_BYTES = 1 << 30
# With YNNPACK convolutions, below this many input channels the im2col GEMM
# gradients do not beat XLA:CPU's own 3x3 gradients.
MIN_IM2COL_CHANNELS = 256
# Narrow convolutions: at most this many GEMM columns (kh*kw*cout) and an input
# at least NARROW_MIN_RATIO times wider than the output (24-32 outputs measured slower).
NARROW_MAX_COLS = 144
NARROW_MIN_RATIO = 4
# Small-map convolutions with kernels of at least this area also take a GEMM forward.
LARGE_KERNEL_AREA = 25
# Small-map gradients from shifted g where the input has this many times the
# output's values per tap (PSPNet's 4096 -> 512 head: 8x, 1.05-1.13x faster
# steps; 4x and 2x measured 0.95-0.98x and keep the patch GEMMs).
SHIFTED_MIN_RATIO = 8

FORMS = ('plain', 'padded_kernel_grad', 'im2col', 'small_map', 'narrow', 'im2col_grad')


@dataclasses.dataclass(frozen=True)
class ConvPlan:
  """How to run one convolution.

  Attributes:
    form: one of FORMS.
    taps: kernel tap range kept per axis ((i0, i1), (j0, j1)), inclusive.
    crop: input rows/columns kept per axis ((h0, h1), (w0, w1)), half-open.
    pre_pad: padding applied to the input explicitly before the form runs.
    pads: the padding the form itself is given.
  """

  form: str
  taps: tuple
  crop: tuple
  pre_pad: tuple
  pads: tuple


def plan_conv(
  x_shape, kernel_shape, strides, pads, dilation, groups: int = 1, itemsize: int = 4,
  *, ynn_convolutions: bool = False,
) -> ConvPlan:  # fmt: skip
  """The form of `conv_general_dilated(x, kernel)` (NHWC/HWIO, explicit `pads`) on XLA:CPU.

  Kernel taps that only read padding are dropped first (exact), and padding
  beyond the kernel's reach is applied to the input explicitly (XLA:CPU's
  kernel gradient is 3-8x slower with it: FCN's conv1_1, padded by 100).
  """
  n, h, w, _ = x_shape
  kh, kw, cin, cout = kernel_shape
  pads = tuple(tuple(int(v) for v in p) for p in pads)
  out_hw = tuple(
    geometry.conv_out_size((h, w)[a], pads[a], (kh, kw)[a], dilation[a], strides[a]) for a in (0, 1)
  )
  taps, crop = ((0, kh - 1), (0, kw - 1)), ((0, h), (0, w))
  if min(out_hw) >= 1:
    taps, crop, pads = geometry.trim_padding_taps((h, w), (kh, kw), strides, pads, dilation, out_hw)
    kh, kw = taps[0][1] - taps[0][0] + 1, taps[1][1] - taps[1][0] + 1
  reach = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
  pre_pad = ((0, 0), (0, 0))
  if any(p > reach[a] for a in (0, 1) for p in pads[a]):
    pre_pad, pads = pads, ((0, 0), (0, 0))

  def plan(form):
    return ConvPlan(form, taps, crop, pre_pad, pads)

  if any(p < 0 for pair in pads for p in pair) or min(out_hw) < 1:
    return plan('plain')
  xla = 'padded_kernel_grad' if tuple(strides) == (1, 1) and any(map(any, pads)) else 'plain'
  if groups != 1:
    return plan(xla)
  area, pixels = kh * kw, n * out_hw[0] * out_hw[1]
  if pixels * area * cin * itemsize > MAX_PATCH_BYTES:
    return plan(xla)
  if area == 1:
    return plan('im2col')
  if pixels <= cout:
    return plan('small_map')
  if area * cout <= NARROW_MAX_COLS and cin >= NARROW_MIN_RATIO * cout:
    return plan('narrow')
  if cin >= MIN_IM2COL_CHANNELS and ynn_convolutions:
    return plan('im2col_grad')
  return plan(xla)


def small_map_gemm_forward(kernel_hw) -> bool:
  """Whether a small-map convolution's forward is a GEMM (large kernels: fc6's 7x7)."""
  return kernel_hw[0] * kernel_hw[1] >= LARGE_KERNEL_AREA


def shifted_gradients(x_hw, out_hw, cin: int, cout: int) -> bool:
  """Whether a small-map convolution takes both gradients from shifted g (`forms.grads_shifted`)."""
  return SHIFTED_MIN_RATIO * x_hw[0] * x_hw[1] * cout <= out_hw[0] * out_hw[1] * cin


def plan_conv_transpose(x_shape, kernel_shape, strides, padding, itemsize: int = 4) -> str:
  """'overlap_add' (one GEMM plus shifted sums) or 'plain' for a PyTorch-style transposed conv.

  `kernel_shape` is (kh, kw, out, in); the GEMM's output must fit MAX_PATCH_BYTES.
  """
  kh, kw, cout, _ = kernel_shape
  sh, sw = strides
  if sh < 1 or sw < 1 or min(padding) < 0:
    return 'plain'
  n, h, w = x_shape[:3]
  cols = n * h * w * (-(-kh // sh) * sh) * (-(-kw // sw) * sw) * cout
  return 'overlap_add' if cols * itemsize <= MAX_PATCH_BYTES else 'plain'
