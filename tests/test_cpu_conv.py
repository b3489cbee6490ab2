"""The XLA:CPU convolution engine (jaxseg.cpu_conv) computes what plain XLA computes.

What the engine promises, checked here: for every form it picks (`plan`),
outputs and first- and second-order gradients equal `layers.XLA`'s (plain
`lax.conv_general_dilated`) to float32 rounding, across strides, dilations,
padding beyond the kernel, one-pixel maps, narrow and wide channels and
bfloat16; the decision function picks the form its thresholds say; the seam
(`layers.Apply`, a module's `lowering`) uses the engine only where asked;
and the XLA flag / compile-option helpers touch the environment only when
an entry point calls them (importing jaxseg changes nothing).
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg import cpu_conv, layers
from jaxseg.cpu_conv import gemm, geometry, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = cpu_conv.CpuLowering()
CPU_YNN = cpu_conv.CpuLowering(ynn_convolutions=True)
ZERO = ((0, 0), (0, 0))
ONE = ((1, 1), (1, 1))


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _inputs(x_shape, k_shape, seed, dtype=jnp.float32):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, x_shape, jnp.float32)
  # Scaled by fan-in so outputs are O(1) and the sin/cos loss below is well conditioned.
  k = jax.random.normal(kk, k_shape, jnp.float32) / np.sqrt(np.prod(k_shape[:-1]))
  return x.astype(dtype), k.astype(dtype)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _first_order(lowering, kw, x, k):
  """Output and the VJP of sum(sin(y)) (nonlinear: nothing can be simplified away)."""
  f = functools.partial(lowering.conv, **dict(kw))
  y, vjp = jax.vjp(f, x, k)
  return y, vjp(jnp.cos(y).astype(y.dtype))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _second_order(lowering, kw, x, k, tx, tk):
  """Hessian-vector product of sum(sin(y)) along (tx, tk), reverse over reverse."""
  f = functools.partial(lowering.conv, **dict(kw))
  grad = jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1))
  along = lambda x, k: sum(jnp.vdot(g, t) for g, t in zip(grad(x, k), (tx, tk), strict=True))  # noqa: E731
  return jax.grad(along, (0, 1))(x, k)


def _conv_kw(strides=(1, 1), pads=ZERO, dilation=(1, 1), groups=1):
  return (('strides', strides), ('padding', pads), ('dilation', dilation), ('groups', groups))


# (x shape, kernel shape HWIO, strides, pads, dilation, groups, YNNPACK convolutions, form)
CASES = [
  # 1x1: one GEMM; the 2048-wide one takes dot_nt's once-transposed input gradient.
  ((2, 5, 6, 9), (1, 1, 9, 7), (2, 2), ZERO, (1, 1), 1, False, 'im2col'),
  ((1, 3, 3, 2048), (1, 1, 2048, 4), (1, 1), ZERO, (1, 1), 1, False, 'im2col'),
  # Small maps (output pixels <= output channels): GEMM gradients with the kernel as stored.
  ((1, 5, 6, 7), (3, 3, 7, 40), (1, 1), ONE, (1, 1), 1, False, 'small_map'),
  ((2, 7, 6, 5), (3, 3, 5, 24), (2, 2), ONE, (1, 1), 1, False, 'small_map'),
  ((1, 6, 5, 4), (3, 5, 4, 30), (1, 1), ((2, 0), (1, 3)), (2, 1), 1, False, 'small_map'),
  ((2, 9, 8, 3), (7, 7, 3, 20), (1, 1), ZERO, (1, 1), 1, False, 'small_map'),  # fc6: GEMM forward
  ((1, 1, 1, 6), (3, 3, 6, 12), (1, 1), ONE, (1, 1), 1, False, 'im2col'),  # one pixel: center tap
  # ... where the input has >= 8x the output's values per tap: both gradients from shifted g.
  ((1, 2, 3, 64), (3, 3, 64, 8), (1, 1), ONE, (1, 1), 1, False, 'small_map'),
  ((1, 5, 4, 272), (3, 3, 272, 10), (2, 2), ONE, (1, 1), 1, False, 'small_map'),
  ((2, 3, 3, 144), (3, 3, 144, 18), (1, 1), ((2, 2), (2, 2)), (2, 2), 1, False, 'small_map'),
  # Narrow outputs (FC-DenseNet growth layers, a 3x3 classifier): per-tap GEMM + shifted sum.
  ((2, 9, 7, 48), (3, 3, 48, 12), (1, 1), ONE, (1, 1), 1, False, 'narrow'),
  ((1, 6, 5, 64), (3, 3, 64, 16), (1, 1), ONE, (1, 1), 1, False, 'narrow'),
  ((2, 9, 8, 24), (3, 3, 24, 5), (2, 2), ONE, (1, 1), 1, False, 'narrow'),
  ((1, 7, 6, 30), (3, 3, 30, 6), (1, 1), ((2, 2), (2, 2)), (2, 2), 1, False, 'narrow'),
  ((1, 6, 7, 20), (3, 5, 20, 4), (1, 1), ((2, 0), (1, 3)), (1, 1), 1, False, 'narrow'),
  ((1, 8, 9, 28), (3, 3, 28, 7), (1, 1), ZERO, (1, 1), 1, False, 'narrow'),
  # XLA's convolution, kernel gradient on the explicitly padded input (stride 1, padded).
  ((2, 9, 12, 5), (3, 3, 5, 6), (1, 1), ONE, (1, 1), 1, False, 'padded_kernel_grad'),
  ((1, 11, 10, 3), (7, 7, 3, 4), (1, 1), ((3, 3), (3, 3)), (1, 1), 1, False, 'padded_kernel_grad'),
  ((1, 10, 7, 3), (3, 3, 3, 2), (1, 1), ((1, 1), (0, 0)), (1, 1), 1, False, 'padded_kernel_grad'),
  ((2, 7, 6, 8), (3, 3, 1, 8), (1, 1), ONE, (1, 1), 8, False, 'padded_kernel_grad'),  # depthwise
  # XLA's own convolution: strided, grouped and strided, padding beyond the kernel (made explicit).
  ((2, 9, 12, 5), (3, 3, 5, 8), (2, 2), ONE, (1, 1), 1, False, 'plain'),
  ((1, 9, 8, 8), (3, 3, 2, 8), (2, 2), ONE, (1, 1), 4, False, 'plain'),
  ((2, 6, 5, 4), (3, 3, 4, 6), (1, 1), ((5, 1), (0, 4)), (1, 1), 1, False, 'plain'),
  ((2, 6, 5, 4), (3, 3, 2, 6), (1, 1), ((5, 1), (0, 4)), (1, 1), 2, False, 'plain'),
  # Wide inputs with YNNPACK convolutions: XLA's forward, im2col GEMM gradients.
  ((1, 8, 8, 256), (3, 3, 256, 40), (1, 1), ONE, (1, 1), 1, True, 'im2col_grad'),
  ((1, 8, 8, 256), (3, 3, 256, 40), (1, 1), ONE, (1, 1), 1, False, 'padded_kernel_grad'),
  # Taps that read only padding are dropped: ASPP-like rate >= map size leaves the center tap.
  ((2, 5, 6, 4), (3, 3, 4, 5), (1, 1), ((6, 6), (6, 6)), (6, 6), 1, False, 'im2col'),
  ((1, 3, 9, 2), (3, 3, 2, 6), (1, 2), ((4, 3), (1, 2)), (4, 1), 1, False, 'plain'),
]
IDS = [f'{c[-1]}-{"x".join(map(str, c[0]))}-{"x".join(map(str, c[1]))}' for c in CASES]


def _plan(case):
  x_shape, k_shape, strides, pads, dilation, groups, ynn, _ = case
  return plan.plan_conv(x_shape, k_shape, strides, pads, dilation, groups, ynn_convolutions=ynn)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_outputs_and_gradients_equal_xla(case):
  x_shape, k_shape, strides, pads, dilation, groups, ynn, form = case
  assert _plan(case).form == form  # the form under test is the one taken
  kw = _conv_kw(strides, pads, dilation, groups)
  x, k = _inputs(x_shape, k_shape, seed=len(IDS[CASES.index(case)]))
  lowering = CPU_YNN if ynn else CPU
  (y, (dx, dk)), (y0, (dx0, dk0)) = (_first_order(lw, kw, x, k) for lw in (lowering, layers.XLA))
  assert y.shape == y0.shape
  errs = {'out': _rel(y, y0), 'dx': _rel(dx, dx0), 'dk': _rel(dk, dk0)}
  assert max(errs.values()) < 1e-5, errs


SECOND_ORDER = ['im2col-2x5x6x9-1x1x9x7', 'small_map-2x7x6x5-3x3x5x24', 'small_map-1x2x3x64-3x3x64x8',
                'small_map-2x9x8x3-7x7x3x20', 'narrow-2x9x7x48-3x3x48x12',
                'padded_kernel_grad-2x9x12x5-3x3x5x6', 'im2col_grad-1x8x8x256-3x3x256x40']  # fmt: skip


@pytest.mark.parametrize('case_id', SECOND_ORDER)
def test_second_order_gradients_equal_xla(case_id):
  """Hessian-vector products through each form's custom gradients (the narrow and shifted
  backward hold a fusion boundary) equal the plain lowering's."""
  x_shape, k_shape, strides, pads, dilation, groups, ynn, _ = CASES[IDS.index(case_id)]
  kw = _conv_kw(strides, pads, dilation, groups)
  x, k = _inputs(x_shape, k_shape, seed=3)
  tx, tk = _inputs(x_shape, k_shape, seed=4)
  got = _second_order(CPU_YNN if ynn else CPU, kw, x, k, tx, tk)
  want = _second_order(layers.XLA, kw, x, k, tx, tk)
  for a, b in zip(got, want, strict=True):
    assert _rel(a, b) < 1e-5


@pytest.mark.parametrize('case_id', ['narrow-2x9x7x48-3x3x48x12', 'small_map-2x9x8x3-7x7x3x20',
                                     'im2col-2x5x6x9-1x1x9x7', 'padded_kernel_grad-2x9x12x5-3x3x5x6'])  # fmt: skip
def test_bfloat16(case_id):
  """bfloat16 in, bfloat16 out, close to the float32 result; gradients finite (the narrow
  form sums its per-tap products in float32)."""
  x_shape, k_shape, strides, pads, dilation, groups, _, _ = CASES[IDS.index(case_id)]
  kw = _conv_kw(strides, pads, dilation, groups)
  x, k = _inputs(x_shape, k_shape, seed=5)
  y16, (dx, dk) = _first_order(CPU, kw, x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  y32, _ = _first_order(layers.XLA, kw, x, k)
  assert y16.dtype == dx.dtype == dk.dtype == jnp.bfloat16
  assert _rel(y16.astype(jnp.float32), y32) < 3e-2
  assert bool(jnp.all(jnp.isfinite(dx.astype(jnp.float32)))) and bool(
    jnp.all(jnp.isfinite(dk.astype(jnp.float32)))
  )


# (x shape, kernel (kh, kw, out, in), strides, padding, output_padding): FCN's upscore8 and
# upscore2, U-Net's 2x2, FC-DenseNet's 3x3 s2, kernels not multiples of the stride, a 1x1 map.
TRANSPOSE_CASES = [
  ((2, 5, 7, 3), (16, 16, 6, 3), (8, 8), (0, 0), (0, 0)),
  ((2, 5, 7, 3), (4, 4, 6, 3), (2, 2), (0, 0), (0, 0)),
  ((2, 5, 7, 3), (2, 2, 6, 3), (2, 2), (0, 0), (0, 0)),
  ((2, 5, 7, 3), (3, 3, 6, 3), (2, 2), (1, 1), (1, 1)),
  ((2, 5, 7, 3), (4, 3, 6, 3), (2, 3), (1, 0), (0, 2)),
  ((2, 1, 1, 8), (7, 7, 6, 8), (1, 1), (0, 0), (0, 0)),  # DeconvNet's fc6_deconv class
]


@pytest.mark.parametrize('x_shape,k_shape,strides,padding,output_padding', TRANSPOSE_CASES)
def test_conv_transpose_equals_xla(x_shape, k_shape, strides, padding, output_padding):
  assert plan.plan_conv_transpose(x_shape, k_shape, strides, padding) == 'overlap_add'
  x, k = _inputs(x_shape, k_shape, seed=7)
  kw = dict(strides=strides, padding=padding, output_padding=output_padding)

  def run(lowering):
    f = jax.jit(lambda x, k: lowering.conv_transpose(x, k, **kw))
    y, vjp = jax.vjp(f, x, k)
    return y, vjp(jnp.cos(y))

  (y, (dx, dk)), (y0, (dx0, dk0)) = run(CPU), run(layers.XLA)
  (h, w), (kh, kw_) = x_shape[1:3], k_shape[:2]
  want_hw = tuple(
    (n - 1) * s - 2 * p + k + op
    for n, s, p, k, op in zip((h, w), strides, padding, (kh, kw_), output_padding, strict=True)
  )
  assert y.shape == y0.shape == (x_shape[0], *want_hw, k_shape[2])  # PyTorch's size rule
  assert max(_rel(y, y0), _rel(dx, dx0), _rel(dk, dk0)) < 1e-5


# ----------------------------------------------------------------------------- the decision


def test_plan_thresholds():
  """Each rule of `plan_conv` at its boundary."""

  def form(x, k, pads=ONE, strides=(1, 1), groups=1, ynn=False, itemsize=4):
    return plan.plan_conv(x, k, strides, pads, (1, 1), groups, itemsize, ynn_convolutions=ynn).form

  # Small map: output pixels <= output channels.
  assert form((1, 4, 4, 8), (3, 3, 8, 16)) == 'small_map'
  assert form((1, 4, 5, 8), (3, 3, 8, 16)) != 'small_map'
  # Narrow: kh*kw*cout <= 144 and cin >= 4 cout.
  assert form((1, 9, 9, 64), (3, 3, 64, 16)) == 'narrow'
  assert form((1, 12, 12, 96), (3, 3, 96, 17)) == 'padded_kernel_grad'  # 153 columns
  assert form((1, 12, 12, 47), (3, 3, 47, 12)) == 'padded_kernel_grad'  # input < 4x output
  # Wide inputs take im2col gradients only with YNNPACK convolutions.
  assert form((1, 9, 9, 256), (3, 3, 256, 64), ynn=True) == 'im2col_grad'
  assert form((1, 9, 9, 255), (3, 3, 255, 64), ynn=True) == 'padded_kernel_grad'
  # Stride-1 padded convolutions reroute their kernel gradient; strided or unpadded ones do not.
  assert form((1, 9, 9, 3), (3, 3, 3, 4), pads=ZERO) == 'plain'
  assert form((1, 9, 9, 3), (3, 3, 3, 4), strides=(2, 2)) == 'plain'
  # Patch matrices over 1 GiB keep XLA's convolution.
  big = (8, 128, 128, 256)
  assert form(big, (3, 3, 256, 8)) == 'padded_kernel_grad'  # 1.13 GiB: narrow below the limit
  assert form(big, (3, 3, 256, 8), itemsize=2) == 'narrow'  # bfloat16: 0.56 GiB
  assert form(big, (1, 1, 256, 8), pads=ZERO) == 'im2col'  # 128 MiB
  assert form((65, 128, 128, 256), (1, 1, 256, 8), pads=ZERO) == 'plain'  # 1 GiB + 16 MiB
  # Grouped convolutions are XLA's.
  assert form((1, 9, 9, 64), (3, 3, 16, 16), groups=4) == 'padded_kernel_grad'


def test_plan_trims_taps_and_makes_wide_padding_explicit():
  # DeepLabv3's rate 36 on a small map: only the center tap reads the input.
  p = plan.plan_conv((2, 5, 6, 4), (3, 3, 4, 5), (1, 1), ((6, 6), (6, 6)), (6, 6))
  assert (p.taps, p.crop, p.pads, p.pre_pad) == (((1, 1), (1, 1)), ((0, 5), (0, 6)), ZERO, ZERO)
  # Rows cut, columns kept.
  p = plan.plan_conv((1, 3, 9, 2), (3, 3, 2, 6), (1, 2), ((4, 3), (1, 2)), (4, 1))
  assert p.taps == ((1, 1), (0, 2))
  # FCN's conv1_1 (padding 100 >> the kernel's reach): explicit pad, then a VALID convolution.
  p = plan.plan_conv((1, 8, 8, 3), (3, 3, 3, 64), (1, 1), ((100, 100), (100, 100)), (1, 1))
  assert (p.pre_pad, p.pads) == (((100, 100), (100, 100)), ZERO)
  p = plan.plan_conv((1, 8, 8, 3), (3, 3, 3, 64), (1, 1), ((2, 2), (2, 2)), (1, 1))
  assert (p.pre_pad, p.pads) == (ZERO, ((2, 2), (2, 2)))  # within reach: stays implicit


def test_small_map_rules():
  assert plan.small_map_gemm_forward((7, 7)) and not plan.small_map_gemm_forward((3, 3))
  # Shifted gradients where the input has >= 8x the output's values per tap (PSPNet's head).
  assert plan.shifted_gradients((16, 16), (16, 16), 4096, 512)
  assert not plan.shifted_gradients((16, 16), (16, 16), 2048, 512)


def test_plan_conv_transpose():
  assert plan.plan_conv_transpose((1, 4, 4, 8), (4, 4, 8, 8), (2, 2), (1, 1)) == 'overlap_add'
  assert plan.plan_conv_transpose((1, 4, 4, 8), (4, 4, 8, 8), (2, 2), (-1, 0)) == 'plain'
  huge = (64, 256, 256, 8)  # 64 * 256 * 256 * 16 * 64 * 4 bytes of GEMM output > 1 GiB
  assert plan.plan_conv_transpose(huge, (4, 4, 64, 8), (2, 2), (1, 1)) == 'plain'


def test_trim_padding_taps_brute_force():
  """Random sizes, kernels, rates, strides and asymmetric paddings: the trimmed convolution
  (kept taps, cropped input, new padding) equals the original."""
  rng = np.random.default_rng(0)
  trimmed = 0
  for _ in range(120):
    h, w = (int(v) for v in rng.integers(1, 9, 2))
    kh, kw, dh, dw, sh, sw = (int(v) for v in rng.integers(1, [4, 4, 12, 12, 4, 4]))
    pads = tuple(tuple(int(v) for v in rng.integers(0, 14, 2)) for _ in range(2))
    k_hw, d, s = (kh, kw), (dh, dw), (sh, sw)
    out_hw = tuple(geometry.conv_out_size((h, w)[a], pads[a], k_hw[a], d[a], s[a]) for a in (0, 1))
    if min(out_hw) < 1:
      continue
    x = jnp.asarray(rng.standard_normal((1, h, w, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((kh, kw, 2, 3)), jnp.float32)
    ref = layers.XLA.conv(x, k, strides=s, padding=pads, dilation=d, groups=1)
    ((i0, i1), (j0, j1)), ((h0, h1), (w0, w1)), new = geometry.trim_padding_taps(
      (h, w), k_hw, s, pads, d, out_hw
    )
    trimmed += (i1 - i0 + 1, j1 - j0 + 1) != k_hw
    got = layers.XLA.conv(
      x[:, h0:h1, w0:w1], k[i0 : i1 + 1, j0 : j1 + 1], strides=s, padding=new, dilation=d, groups=1
    )
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  assert trimmed >= 20  # the cut is exercised, not just the no-op


# ----------------------------------------------------------------------------- GEMM helpers


@pytest.mark.parametrize('m,k,n', [(3, 5, 7), (10, 3, 2050), (12, 6, 40)])
def test_dot_nt_and_matmul_gradients(m, k, n):
  """`dot_nt` computes a . b^T in each regime (a few rows, many rows of b, neither) against a
  float64 reference; `matmul` / `matmul_nt` have the plain GEMM gradients."""
  ka, kb, kg = jax.random.split(jax.random.key(m), 3)
  a, b = jax.random.normal(ka, (m, k)), jax.random.normal(kb, (n, k))
  ref = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
  assert _rel(jax.jit(gemm.dot_nt)(a, b), ref) < 1e-6
  g = jax.random.normal(kg, (m, n))
  for fn, plain_fn, args in (
    (gemm.matmul_nt, lambda a, b: a @ b.T, (a, b)),
    (gemm.matmul, lambda x, w: x @ w, (a, b.T)),
  ):
    got = jax.jit(jax.vjp(fn, *args)[1])(g)
    want = jax.vjp(plain_fn, *args)[1](g)
    assert max(_rel(x, y) for x, y in zip(got, want, strict=True)) < 1e-6


def test_materialize_is_exact_and_differentiable():
  """The fusion boundary returns its input bit for bit (signed zeros, inf, NaN, and a NaN
  first element, which makes its loop run zero times) and has an identity derivative."""
  v = np.array([[-0.0, 1.5, np.inf], [np.nan, -2.25, 3e-39]], np.float32)
  bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731
  for arr in (v, v[::-1, ::-1].copy(), v[:0]):  # first element finite / NaN; empty
    assert np.array_equal(bits(jax.jit(gemm.materialize)(arr)), bits(arr))
  w = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
  f = lambda a: jnp.sum(jnp.sin(gemm.materialize(a)) ** 2)  # noqa: E731
  np.testing.assert_allclose(jax.grad(f)(w), jnp.sin(2 * w), rtol=1e-6)
  np.testing.assert_allclose(jax.jvp(gemm.materialize, (w,), (2 * w,))[1], 2 * w)
  np.testing.assert_allclose(
    jnp.diag(jax.hessian(f)(w.ravel()[:4])), 2 * jnp.cos(2 * w.ravel()[:4]), rtol=1e-5
  )


# ----------------------------------------------------------------------------- the seam


def _spy(monkeypatch, cls, name, calls):
  real = getattr(cls, name)

  def spy(self, *args, **kwargs):
    calls.append((type(self).__name__, name))
    return real(self, *args, **kwargs)

  monkeypatch.setattr(cls, name, spy)


def test_lowering_used_only_where_asked(monkeypatch):
  """`model.apply` computes with plain XLA convolutions; `layers.Apply` and a module's own
  `lowering` field route every Conv2d / ConvTranspose2d to the engine."""
  calls = []
  for cls in (layers.Lowering, cpu_conv.CpuLowering):
    for name in ('conv', 'conv_transpose'):
      _spy(monkeypatch, cls, name, calls)
  model = jaxseg.create_model('fcn8s', num_classes=3)
  x = jnp.zeros((1, 32, 32, 3))
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x)
  assert calls and {c[0] for c in calls} == {'Lowering'}
  assert {c[1] for c in calls} == {'conv', 'conv_transpose'}
  calls.clear()
  jax.eval_shape(lambda v, x: layers.Apply(model, CPU)(v, x, train=False), v, x)
  assert {c[0] for c in calls} == {'CpuLowering'}
  calls.clear()
  conv = layers.Conv2d(4, 3, lowering=CPU)
  jax.eval_shape(lambda x: conv.init_with_output(jax.random.key(0), x), jnp.zeros((1, 8, 8, 2)))
  assert {c[0] for c in calls} == {'CpuLowering'}


def test_apply_with_engine_equals_model_apply():
  """A whole network through the engine (the padded U-Net: 3x3 convs from 3 to 64 channels,
  small maps at the bottom, 2x2 transposed convs, 1x1 classifier, BatchNorm): outputs and
  every parameter gradient equal `model.apply`'s."""
  model = jaxseg.create_model('unet_padded', num_classes=3, in_channels=3, features=8, depth=3)
  x = jax.random.normal(jax.random.key(0), (1, 24, 40, 3))
  v = model.init(jax.random.key(1), x, train=False)
  rest = {k: c for k, c in v.items() if k != 'params'}

  @functools.partial(jax.jit, static_argnums=0)
  def run(apply, params, x):
    def loss(params):
      out = apply(
        {'params': params, **rest},
        x,
        train=True,
        mutable=list(rest),
        rngs={'dropout': jax.random.key(3)},
      )
      out = out[0] if rest else out
      return jnp.sum(jnp.sin(out)), out

    return jax.grad(loss, has_aux=True)(params)

  (g, y), (g0, y0) = run(layers.Apply(model, CPU), v['params'], x), run(model.apply, v['params'], x)
  assert _rel(y, y0) < 1e-5
  # Relative to the largest gradient: a bias followed by BatchNorm has an exactly-zero
  # gradient, which both lowerings give as rounding noise.
  scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g0))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0), strict=True):
    assert float(jnp.max(jnp.abs(a - b))) < 1e-5 * scale


def test_apply_is_a_value():
  """Equal `Apply`s are equal and hash alike (one jit cache entry); different lowerings differ."""
  model = jaxseg.create_model('fcn8s', num_classes=3)
  assert layers.Apply(model, CPU) == layers.Apply(model, cpu_conv.CpuLowering())
  assert hash(layers.Apply(model, CPU)) == hash(layers.Apply(model, cpu_conv.CpuLowering()))
  assert layers.Apply(model, CPU) != layers.Apply(model)
  assert layers.Apply(model, CPU) != layers.Apply(model, CPU_YNN)
  assert layers.Apply(model) != layers.Apply(model, batch_axis='batch')


def test_batch_axis_synchronises_batchnorm():
  """`Apply(..., batch_axis=...)` averages BatchNorm statistics over that axis: two halves of a
  batch mapped over an axis give the full batch's outputs and running statistics."""
  model = layers.ConvBNReLU(4)
  x = jax.random.normal(jax.random.key(0), (4, 6, 5, 3)) * 2 + 1
  v = model.init(jax.random.key(1), x, train=False)
  full, full_stats = model.apply(v, x, train=True, mutable=['batch_stats'])
  synced = layers.Apply(model, batch_axis='b')
  halves, stats = jax.vmap(
    lambda x: synced(v, x, train=True, mutable=['batch_stats']), axis_name='b'
  )(x.reshape(2, 2, 6, 5, 3))
  assert _rel(halves.reshape(full.shape), full) < 1e-5
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(full_stats), strict=True):
    np.testing.assert_allclose(a[0], b, rtol=1e-5)
  unsynced, _ = jax.vmap(lambda x: model.apply(v, x, train=True, mutable=['batch_stats']))(
    x.reshape(2, 2, 6, 5, 3)
  )
  assert _rel(unsynced.reshape(full.shape), full) > 1e-3  # per-half statistics differ


def test_select():
  assert cpu_conv.select('xla') == layers.XLA
  assert isinstance(cpu_conv.select('cpu'), cpu_conv.CpuLowering)
  assert isinstance(cpu_conv.select('auto'), cpu_conv.CpuLowering)  # this suite runs on CPU
  with pytest.raises(ValueError, match=r"one of \('auto', 'xla', 'cpu'\), got 'fast'"):
    cpu_conv.select('fast')


def test_select_auto_off_cpu(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert cpu_conv.select('auto') == layers.XLA


# ----------------------------------------------------------------------------- flags, options


YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_jaxseg_subcommands_set_the_flag_before_their_main(monkeypatch):
  """`jaxseg train|eval|predict` (cli.run_absl) add the flag before the program's main runs."""
  from jaxseg import cli

  monkeypatch.delenv(cpu_conv.OPT_OUT_ENV, raising=False)
  monkeypatch.setattr(cpu_conv, '_jaxlib_verified', lambda: True)
  monkeypatch.setenv('XLA_FLAGS', '')
  seen = []
  with pytest.raises(SystemExit) as exit_:
    cli.run_absl(
      __name__, lambda: None, lambda argv: seen.append(os.environ['XLA_FLAGS']), [], 'jaxseg test'
    )
  assert exit_.value.code is None and seen == [f'{YNN}=reduce']


def test_configure_xla_flags(monkeypatch):
  """The YNNPACK flag is added once, never over the user's own setting or the opt-out."""
  monkeypatch.delenv(cpu_conv.OPT_OUT_ENV, raising=False)
  monkeypatch.setattr(cpu_conv, '_jaxlib_verified', lambda: True)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert cpu_conv.configure_xla_flags()
  assert os.environ['XLA_FLAGS'].split() == [
    '--xla_force_host_platform_device_count=2',
    f'{YNN}=reduce',
  ]
  assert not cpu_conv.ynn_convolutions()
  assert not cpu_conv.configure_xla_flags()  # already there
  assert os.environ['XLA_FLAGS'].count(YNN) == 1
  user = f'{YNN}=individual_dot,individual_convolution'
  monkeypatch.setenv('XLA_FLAGS', user)
  assert not cpu_conv.configure_xla_flags() and os.environ['XLA_FLAGS'] == user
  assert cpu_conv.ynn_convolutions()
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv(cpu_conv.OPT_OUT_ENV, '1')
  assert not cpu_conv.configure_xla_flags() and os.environ['XLA_FLAGS'] == ''
  monkeypatch.delenv(cpu_conv.OPT_OUT_ENV)
  monkeypatch.setattr(cpu_conv, '_jaxlib_verified', lambda: False)  # XLA dies on unknown flags
  assert not cpu_conv.configure_xla_flags() and os.environ['XLA_FLAGS'] == ''


def test_compiler_options(monkeypatch):
  """A recipe's XLA:CPU compile options apply on CPU only, never over XLA_FLAGS or the opt-out."""
  wanted = {'xla_cpu_use_fusion_emitters': False}
  monkeypatch.delenv(cpu_conv.OPT_OUT_ENV, raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setattr(cpu_conv, '_jaxlib_verified', lambda: True)
  assert cpu_conv.compiler_options(wanted) == wanted
  assert cpu_conv.compiler_options({}) is None and cpu_conv.compiler_options(None) is None
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_fusion_emitters=true')  # the user's choice wins
  assert cpu_conv.compiler_options(wanted) is None
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv(cpu_conv.OPT_OUT_ENV, '1')
  assert cpu_conv.compiler_options(wanted) is None
  monkeypatch.delenv(cpu_conv.OPT_OUT_ENV)
  monkeypatch.setattr(cpu_conv, '_jaxlib_verified', lambda: False)
  assert cpu_conv.compiler_options(wanted) is None
  monkeypatch.setattr(cpu_conv, '_jaxlib_verified', lambda: True)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert cpu_conv.compiler_options(wanted) is None


def test_recipe_compile_options_compile_the_same_function():
  """FC-DenseNet-103's recipe option is accepted by this XLA and changes no result."""
  from jaxseg.configs import fc_densenet103

  options = dict(fc_densenet103.get_config().train.xla_cpu_compiler_options)
  assert options == {'xla_cpu_use_fusion_emitters': False}
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 48))
  k = jax.random.normal(jax.random.key(1), (3, 3, 48, 12)) * 0.05
  kw = _conv_kw(pads=ONE)
  f = lambda x, k: jax.grad(lambda x, k: jnp.sum(jnp.sin(CPU.conv(x, k, **dict(kw)))), (0, 1))(x, k)  # noqa: E731
  got = jax.jit(f, compiler_options=options)(x, k)
  want = jax.jit(f)(x, k)
  for a, b in zip(got, want, strict=True):
    assert _rel(a, b) < 1e-6


def test_import_changes_nothing_global():
  """`import jaxseg` in a fresh process leaves the environment and JAX's settings as they were."""
  code = (
    'import os, jax\n'
    'env, cfg = dict(os.environ), dict(jax.config.values)\n'
    'import jaxseg, jaxseg.cpu_conv, jaxseg.train.main, jaxseg.cli\n'
    'assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n'
    'assert dict(jax.config.values) == cfg\n'
    'print("unchanged")\n'
  )
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', cpu_conv.OPT_OUT_ENV)}
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['unchanged']
