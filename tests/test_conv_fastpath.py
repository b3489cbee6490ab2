"""CPU fast paths of layers.Conv2d / ConvTranspose2d / ops.max_pool2d equal the plain lowering.

The fast paths (im2col GEMM for convolutions, explicit padding for paddings
beyond the kernel, GEMM + overlap-add for transposed convolutions, masked
max-pool gradients; see jaxseg/layers.py and jaxseg/ops/pooling.py) exist
only for speed on XLA:CPU. Every model's numerics go through them, so outputs
AND gradients (w.r.t. input, kernel and bias) must equal
`lax.conv_general_dilated` / `nn.max_pool` to float32 rounding, for the
shapes that trigger them and for odd shapes, strides, dilations, paddings;
and they must be taken where intended (and only on CPU). jaxseg's XLA:CPU
flag (YNNPACK fusions off) must reach the compiler.
"""

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg import layers, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _compare(module, x_shape, seed=0):
  """Max relative difference (fast vs plain) over outputs and all gradients."""
  x = jax.random.normal(jax.random.key(seed), x_shape, jnp.float32)
  variables = module.init(jax.random.key(seed + 1), x)
  # Random kernels scaled by fan-in (outputs O(1), so the loss below is well
  # conditioned) and a random non-zero bias, so its gradient is exercised too.
  keys = iter(jax.random.split(jax.random.key(seed + 2), 8))
  variables = jax.tree.map(
    lambda a: (
      jax.random.normal(next(keys), a.shape) / np.sqrt(np.prod(a.shape[:-1]) if a.ndim > 1 else 4.0)
    ),
    variables,
  )

  def outputs_and_grads(v, x):
    # Gradient of the nonlinear sum(sin(y)): no part of the graph can be simplified away.
    y, vjp = jax.vjp(module.apply, v, x)
    return y, vjp(jnp.cos(y))

  results = []
  for fast in (True, False):
    with layers.conv_fastpath(fast):
      # A fresh function per setting: the flag is read at trace time and is no jit cache key.
      results.append(jax.jit(lambda v, x: outputs_and_grads(v, x))(variables, x))
  (y_fast, g_fast), (y_plain, g_plain) = results
  assert y_fast.shape == y_plain.shape
  errs = {'out': _rel(y_fast, y_plain), 'dx': _rel(g_fast[1], g_plain[1])}
  for name in g_plain[0]['params']:
    errs[f'd{name}'] = _rel(g_fast[0]['params'][name], g_plain[0]['params'][name])
  return errs


def _conv_count(fn, *args) -> int:
  return str(jax.make_jaxpr(fn)(*args)).count('conv_general_dilated')


def _fast(fn, *args) -> bool:
  """Whether a GEMM fast path is taken: no XLA conv at all, or one of the GEMM-gradient VJPs."""
  jaxpr = str(jax.make_jaxpr(fn)(*args))
  gemm_vjps = ('name=_conv_im2col_grad\n', 'name=_conv_gemm_grads\n')
  return 'conv_general_dilated' not in jaxpr or any(n in jaxpr for n in gemm_vjps)


def _apply_jaxpr(module, shape) -> str:
  """The jaxpr (as text) of `module.apply` on zeros of `shape`: which lowering it takes."""
  x = jnp.zeros(shape)
  v = module.init(jax.random.key(0), x)
  return str(jax.make_jaxpr(lambda v, x: module.apply(v, x))(v, x))


@pytest.fixture
def low_threshold(monkeypatch):
  """Routes every 3x3 conv through im2col (as with YNNPACK convolutions), so odd cases run on tiny channel counts."""
  monkeypatch.setattr(layers, '_MIN_IM2COL_CHANNELS', 1)
  monkeypatch.setattr(layers, 'ynn_convolutions', lambda: True)


CONV_CASES = [
  # (kwargs, input shape)
  (dict(features=8, kernel_size=3, strides=2, padding=1), (2, 9, 12, 5)),  # odd/even sizes, stride
  (dict(features=6, kernel_size=3, padding=2, dilation=2), (1, 13, 10, 4)),  # atrous
  (dict(features=6, kernel_size=(3, 5), padding='SAME', dilation=(2, 3)), (2, 12, 15, 3)),
  (
    dict(features=6, kernel_size=(2, 3), strides=(1, 2), padding=((0, 1), (2, 0))),
    (2, 7, 9, 3),
  ),  # asymmetric
  (dict(features=7, kernel_size=1, strides=2), (2, 5, 6, 9)),  # 1x1 = plain GEMM
]


@pytest.mark.parametrize('kwargs,shape', CONV_CASES)
def test_conv_im2col_equals_plain(low_threshold, kwargs, shape):
  module = layers.Conv2d(**kwargs)
  x = jnp.zeros(shape)
  v = module.init(jax.random.key(0), x)
  assert _fast(lambda v, x: module.apply(v, x), v, x)  # the fast path is what we compare
  errs = _compare(module, shape)
  assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize('ynn', [True, False])
def test_conv_real_thresholds(monkeypatch, ynn):
  """The shapes that trigger the fast path at the default thresholds: fc6-like and wide 3x3.

  Wide 3x3 convolutions take the im2col-gradient custom VJP only where XLA:CPU
  runs convolutions through YNNPACK (its default); with jaxseg's flag (Eigen)
  XLA's own gradients are faster.
  """
  monkeypatch.setattr(layers, 'ynn_convolutions', lambda: ynn)
  fc6 = layers.Conv2d(16, 7, padding='VALID')  # the fc6 cliff: 7x7 VALID on a small map
  wide = layers.Conv2d(20, 3, padding=1)  # >= _MIN_IM2COL_CHANNELS inputs, 9 * 20 columns
  narrow = layers.Conv2d(8, 3, padding=1)
  big_map = layers.Conv2d(4, 7, padding=3)  # SegNet-Basic-like: more output pixels than channels
  for module, shape, fast in (
    (fc6, (2, 8, 7, 8), True),  # 2 x 2 x 1 output pixels <= 16 channels
    (big_map, (1, 9, 8, 3), False),
    (wide, (1, 6, 5, layers._MIN_IM2COL_CHANNELS), ynn),
    (narrow, (1, 6, 5, 16), False),
  ):
    x = jnp.zeros(shape)
    v = module.init(jax.random.key(0), x)
    assert _fast(lambda v, x, m=module: m.apply(v, x), v, x) == fast, (shape, fast)
    errs = _compare(module, shape, seed=3)
    assert max(errs.values()) < 1e-5, (shape, errs)


SMALL_MAP_CASES = [
  # (kwargs, input shape): output pixels (n * ho * wo) <= features, so the GEMM-gradient VJP.
  (dict(features=40, kernel_size=3, padding=1), (1, 5, 6, 7)),  # U-Net's bottom, odd sizes
  (dict(features=24, kernel_size=3, strides=2, padding=1), (2, 7, 6, 5)),  # stride 2, odd input
  (dict(features=48, kernel_size=3, padding=4, dilation=4), (2, 5, 4, 6)),  # rate > map size
  (dict(features=30, kernel_size=(3, 5), padding=((2, 0), (1, 3)), dilation=(2, 1)), (1, 6, 5, 4)),
  (dict(features=20, kernel_size=7, padding='VALID'), (2, 9, 8, 3)),  # fc6: slices + GEMM forward
  (dict(features=16, kernel_size=(2, 3), strides=(2, 1), padding='VALID'), (1, 5, 7, 3)),
  # cin >> cout (PSPNet's 3x3 4096 -> 512 head): both gradients from g shifted per tap.
  (dict(features=8, kernel_size=3, padding=1), (1, 2, 3, 64)),
  (dict(features=10, kernel_size=3, strides=2, padding=1), (1, 5, 4, 272)),  # stride: interior pad
  (dict(features=18, kernel_size=3, padding=2, dilation=2), (2, 3, 3, 144)),  # taps past the map
  (dict(features=8, kernel_size=3, padding=1), (1, 2, 3, 48)),  # input 6x the output: patches
]
SHIFTED_KERNEL_GRAD = {6, 7, 8}  # indices of the cases above that take `_shifted_grads`


@pytest.mark.parametrize('case', range(len(SMALL_MAP_CASES)))
def test_conv_small_map_gemm_gradients(case, monkeypatch):
  """Small maps: XLA's forward (or im2col for large kernels) with GEMM gradients that read
  the kernel as stored; outputs and gradients equal the plain lowering's."""
  kwargs, shape = SMALL_MAP_CASES[case]
  shifted = []
  real = layers._shifted_grads
  monkeypatch.setattr(layers, '_shifted_grads', lambda *a: shifted.append(1) or real(*a))
  module = layers.Conv2d(**kwargs)
  x = jnp.zeros(shape)
  v = module.init(jax.random.key(0), x)
  y = jax.eval_shape(lambda v, x: module.apply(v, x), v, x)
  assert y.shape[0] * y.shape[1] * y.shape[2] <= kwargs['features']
  assert 'custom_vjp_call' in str(jax.make_jaxpr(lambda v, x: module.apply(v, x))(v, x))
  errs = _compare(module, shape, seed=5)
  assert max(errs.values()) < 1e-5, errs
  assert bool(shifted) == (case in SHIFTED_KERNEL_GRAD)


NARROW_CASES = [
  # (kwargs, input shape): output >= 4x narrower than the input, kh*kw*cout <= 144 columns.
  (dict(features=12, kernel_size=3, padding=1), (2, 9, 7, 48)),  # FC-DenseNet growth layer
  (dict(features=16, kernel_size=3, padding=1), (1, 6, 5, 64)),  # growth 16: 144 columns
  (dict(features=11, kernel_size=3, padding=1), (1, 7, 8, 64)),  # SegNet's 11-class classifier
  (dict(features=5, kernel_size=3, strides=2, padding=1), (2, 9, 8, 24)),  # stride, odd input
  (dict(features=6, kernel_size=3, padding=2, dilation=2), (1, 7, 6, 30)),  # atrous
  (dict(features=4, kernel_size=(3, 5), padding=((2, 0), (1, 3))), (1, 6, 7, 20)),  # asymmetric
  (dict(features=7, kernel_size=3, padding='VALID'), (1, 8, 9, 28)),
]


@pytest.mark.parametrize('kwargs,shape', NARROW_CASES)
def test_conv_narrow_equals_plain(kwargs, shape):
  """Narrow outputs: one GEMM into per-tap outputs and a shifted sum, gradients from shifted g."""
  module = layers.Conv2d(**kwargs)
  assert 'name=_conv_narrow' in _apply_jaxpr(module, shape)
  errs = _compare(module, shape, seed=9)
  assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize(
  'features,cin',
  [(17, 96), (12, 47)],  # 9 * 17 > 144 columns; input less than 4x the output
)
def test_conv_narrow_only_where_intended(features, cin):
  module = layers.Conv2d(features, 3, padding=1)
  assert 'name=_conv_narrow' not in _apply_jaxpr(module, (1, 12, 12, cin))


def test_materialize_is_exact_and_differentiable():
  """The fusion boundary returns its input bit for bit (signed zeros, inf, NaN, and a NaN
  first element, which makes its loop run zero times) and has an identity derivative."""
  v = np.array([[-0.0, 1.5, np.inf], [np.nan, -2.25, 3e-39]], np.float32)
  bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731
  for arr in (v, v[::-1, ::-1].copy(), v[:0]):  # first element finite / NaN; empty
    assert np.array_equal(bits(jax.jit(layers._materialize)(arr)), bits(arr))
  w = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
  f = lambda a: jnp.sum(jnp.sin(layers._materialize(a)) ** 2)  # noqa: E731
  np.testing.assert_allclose(jax.grad(f)(w), jnp.sin(2 * w), rtol=1e-6)
  np.testing.assert_allclose(jax.jvp(layers._materialize, (w,), (2 * w,))[1], 2 * w)
  np.testing.assert_allclose(
    jnp.diag(jax.hessian(f)(w.ravel()[:4])), 2 * jnp.cos(2 * w.ravel()[:4]), rtol=1e-5
  )


def test_narrow_backward_reads_forward_once_per_use():
  """The output gradient of a narrow convolution is computed once (`_materialize`): without it
  XLA:CPU fuses the whole forward shifted sum into each of the kh*kw shifted gradients, reading
  the forward GEMM's output once per tap (FC-DenseNet56's train step 7-17% slower)."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 48))
  k = jax.random.normal(jax.random.key(1), (3, 3, 48, 12)) * 0.05
  pads = ((1, 1), (1, 1))

  def loss(k, x):
    return jnp.sum(jnp.sin(layers._conv_narrow(x, k, (1, 1), pads, (1, 1))))

  readers = {}
  for on in (True, False):
    layers._MATERIALIZE.append(on)
    try:
      entry = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(k, x).compile().as_text()
    finally:
      layers._MATERIALIZE.pop()
    entry = entry.split('ENTRY')[1]
    (dot,) = re.findall(r'%(\S+) = f32\[126,108\]\S* dot\(', entry)  # x . kernel(48, 9 * 12)
    readers[on] = len(re.findall(r'[(, ]%' + re.escape(dot) + r'[,)]', entry))
    assert len(re.findall(r' while\(', entry)) == (1 if on else 0)
  assert readers[True] < 9 <= readers[False], readers


def test_conv_narrow_second_order_equals_plain():
  """Hessian-vector products (reverse over reverse) through the narrow path's custom VJP,
  whose backward holds the fusion boundary, equal those of the plain lowering."""
  module = layers.Conv2d(11, 3, padding=1)
  x = jax.random.normal(jax.random.key(0), (1, 7, 8, 64))
  v = module.init(jax.random.key(1), x)
  t = jax.tree.map(lambda a: jnp.ones_like(a) * 0.1, v)
  results = []
  for fast in (True, False):
    with layers.conv_fastpath(fast):
      grad = jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(v, x))))

      def along_t(v, grad=grad):
        return sum(jax.tree.leaves(jax.tree.map(jnp.vdot, grad(v), t)))

      results.append(jax.jit(jax.grad(along_t))(v))  # reverse over reverse
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    assert _rel(a, b) < 1e-5


def test_taps_reading_only_padding_are_dropped():
  """ASPP's large rates on a small map: a 3x3 kernel at rate >= the map size is a 1x1 conv
  (its other taps only read zeros), partially so for smaller rates; exact, gradients too."""
  aspp = layers.Conv2d(5, 3, padding=6, dilation=6)  # DeepLabv3's rate 36 on a 16x16 map, scaled
  x = jnp.zeros((2, 5, 6, 4))
  v = aspp.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(lambda v, x: aspp.apply(v, x))(v, x))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr  # the center tap only
  errs = _compare(aspp, (2, 5, 6, 4), seed=7)
  assert max(errs.values()) < 1e-5, errs
  # Rows cut, columns kept: 3 rows of a 3x3 at rate 4 on a 3-row map read only padding but one.
  partial = layers.Conv2d(6, 3, strides=(1, 2), padding=((4, 3), (1, 2)), dilation=(4, 1))
  x = jnp.zeros((1, 3, 9, 2))
  v = partial.init(jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(lambda v, x: partial.apply(v, x))(v, x)
  (conv,) = [e for e in jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
  assert conv.invars[1].aval.shape[:2] == (1, 3)
  errs = _compare(partial, (1, 3, 9, 2), seed=8)
  assert max(errs.values()) < 1e-5, errs


def test_drop_padding_taps_brute_force():
  """Random sizes, kernels, rates, strides and asymmetric paddings: same convolution."""
  rng = np.random.default_rng(0)
  dropped = 0
  for _ in range(120):
    h, w = (int(v) for v in rng.integers(1, 9, 2))
    kh, kw, dh, dw, sh, sw = (int(v) for v in rng.integers(1, [4, 4, 12, 12, 4, 4]))
    pads = [tuple(int(v) for v in rng.integers(0, 14, 2)) for _ in range(2)]
    out_hw = tuple(
      layers._conv_out_size((h, w)[a], pads[a], (kh, kw)[a], (dh, dw)[a], (sh, sw)[a])
      for a in (0, 1)
    )
    if min(out_hw) < 1:
      continue
    x = jnp.asarray(rng.standard_normal((1, h, w, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((kh, kw, 2, 3)), jnp.float32)
    ref = layers._conv_plain(x, k, (sh, sw), pads, (dh, dw))
    x2, k2, p2 = layers._drop_padding_taps(x, k, (sh, sw), pads, (dh, dw), out_hw)
    dropped += k2.shape[:2] != k.shape[:2]
    got = layers._conv_plain(x2, k2, (sh, sw), p2, (dh, dw))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  assert dropped >= 20  # the cut is exercised, not just the no-op


@pytest.mark.parametrize('groups', [1, 2])
def test_padding_beyond_kernel_is_explicit(groups):
  """FCN's conv1_1 (3x3, padding 100): explicit pad + VALID conv, same outputs and gradients."""
  module = layers.Conv2d(6, 3, padding=((5, 1), (0, 4)), groups=groups)
  shape = (2, 6, 5, 4)
  x = jnp.zeros(shape)
  v = module.init(jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x))(v, x)
  (conv,) = [e for e in jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
  assert tuple(map(tuple, conv.params['padding'])) == ((0, 0), (0, 0))
  assert 'pad[' in str(jaxpr)
  errs = _compare(module, shape, seed=5)
  assert max(errs.values()) < 1e-5, errs
  within = layers.Conv2d(6, 3, padding=2)  # padding within the kernel's reach stays implicit
  assert 'pad[' not in str(
    jax.make_jaxpr(lambda v, x: within.apply(v, x))(within.init(jax.random.key(0), x), x)
  )


def test_grouped_conv_keeps_xla_convolution():
  module = layers.Conv2d(8, 3, padding=1, groups=4)
  x = jnp.zeros((1, 6, 7, 8))
  v = module.init(jax.random.key(0), x)
  assert _conv_count(lambda v, x: module.apply(v, x), v, x) == 1
  assert not _fast(lambda v, x: module.apply(v, x), v, x)
  errs = _compare(module, (1, 6, 7, 8))
  assert max(errs.values()) < 1e-5, errs


PADDED_KGRAD_CASES = [
  # (kwargs, input shape): stride-1 padded convolutions on maps with more output
  # pixels than channels, which keep XLA's convolution but take its kernel
  # gradient on the explicitly padded input.
  (dict(features=6, kernel_size=3, padding=1), (2, 9, 12, 5)),  # odd / even sizes
  (dict(features=4, kernel_size=7, padding=3), (1, 11, 10, 3)),  # SegNet-Basic's 7x7
  (dict(features=5, kernel_size=3, padding=2, dilation=2), (2, 13, 10, 4)),  # atrous
  (dict(features=3, kernel_size=(3, 5), padding=((2, 0), (1, 3))), (1, 8, 9, 4)),  # asymmetric
  (dict(features=8, kernel_size=3, padding=1, groups=8), (2, 7, 6, 8)),  # depthwise
  (dict(features=2, kernel_size=3, padding=(1, 0)), (1, 10, 7, 3)),  # padded on one axis only
]


@pytest.mark.parametrize('kwargs,shape', PADDED_KGRAD_CASES)
def test_conv_padded_kernel_gradient(kwargs, shape):
  """Outputs and input gradients are XLA's own; the kernel and bias gradients of
  the explicitly padded VALID convolution equal those of the padded one."""
  module = layers.Conv2d(**kwargs)
  assert 'name=_conv_padded_kernel_grad\n' in _apply_jaxpr(module, shape)
  errs = _compare(module, shape, seed=7)
  assert max(errs.values()) < 1e-6, errs


def test_padded_kernel_gradient_only_for_stride_1_with_padding():
  x = jnp.zeros((1, 9, 8, 3))
  for module, used in (
    (layers.Conv2d(4, 3, strides=2, padding=1), False),  # strided: XLA's gradients measured faster
    (layers.Conv2d(4, 3, padding='VALID'), False),  # nothing to pad
    (layers.Conv2d(4, 3, padding='SAME'), True),
  ):
    v = module.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(lambda v, x, m=module: m.apply(v, x))(v, x))
    assert ('_conv_padded_kernel_grad' in jaxpr) == used, module


TRANSPOSE_CASES = [
  # (kernel, stride, padding, output_padding, use_bias): FCN's upscore8/upscore2, U-Net's 2x2,
  # FC-DenseNet's 3x3 s2, and kernels that are not multiples of the stride.
  (16, 8, 0, 0, False),
  (4, 2, 0, 0, False),
  (2, 2, 0, 0, True),
  (3, 2, 1, 1, True),
  (7, 1, 0, 0, True),  # DeconvNet's fc6_deconv shape class (stride 1)
  ((4, 3), (2, 3), (1, 0), (0, 2), True),
]


@pytest.mark.parametrize('kernel,stride,padding,output_padding,use_bias', TRANSPOSE_CASES)
def test_conv_transpose_overlap_add_equals_plain(kernel, stride, padding, output_padding, use_bias):
  module = layers.ConvTranspose2d(6, kernel, stride, padding, output_padding, use_bias=use_bias)
  shape = (2, 5, 7, 3)
  x = jnp.zeros(shape)
  v = module.init(jax.random.key(0), x)
  assert _conv_count(lambda v, x: module.apply(v, x), v, x) == 0
  errs = _compare(module, shape, seed=7)
  assert max(errs.values()) < 1e-5, errs


def test_conv_transpose_on_one_pixel_map():
  """DeconvNet's fc6_deconv class: a 7x7 transposed conv of a 1x1 map (2 pixels: matrix-vector form)."""
  module = layers.ConvTranspose2d(6, 7, 1)
  assert _apply_jaxpr(module, (2, 1, 1, 8)).count('dot_general') == 2
  errs = _compare(module, (2, 1, 1, 8), seed=3)
  assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize(
  'm,k,n,form',
  [
    (3, 5, 7, 'gemv'),  # few rows of a: one matrix-vector product per row
    (10, 3, 2050, 'transposed'),  # b with >= 2048 rows: transposed once, plain GEMM
    (12, 6, 40, 'nt'),  # otherwise XLA's own a . b^T
  ],
)
def test_dot_nt_forms(m, k, n, form):
  """`_dot_nt` computes a . b^T in each of its forms, and `_matmul` / `_matmul_nt` have the plain gradients."""
  ka, kb, kg = jax.random.split(jax.random.key(m), 3)
  a, b = jax.random.normal(ka, (m, k)), jax.random.normal(kb, (n, k))
  jaxpr = str(jax.make_jaxpr(layers._dot_nt)(a, b))
  taken = {
    'gemv': jaxpr.count('dot_general') == m,
    'transposed': 'optimization_barrier' in jaxpr,
    'nt': jaxpr.count('dot_general') == 1 and 'optimization_barrier' not in jaxpr,
  }
  assert [f for f, t in taken.items() if t] == [form], jaxpr
  ref = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
  assert _rel(jax.jit(layers._dot_nt)(a, b), ref) < 1e-6
  g = jax.random.normal(kg, (m, n))
  got = jax.jit(jax.vjp(layers._matmul_nt, a, b)[1])(g)
  want = jax.vjp(lambda a, b: a @ b.T, a, b)[1](g)
  assert max(_rel(x, y) for x, y in zip(got, want, strict=True)) < 1e-6
  # _matmul(x, w) = x . w with w = b^T (k, n): its input gradient g . w^T is the a . b^T form.
  w = b.T
  got = jax.jit(jax.vjp(layers._matmul, a, w)[1])(g)
  want = jax.vjp(lambda x, w: x @ w, a, w)[1](g)
  assert max(_rel(x, y) for x, y in zip(got, want, strict=True)) < 1e-6


def test_wide_1x1_conv_gradients():
  """A 1x1 conv with 2048 input channels: its input gradient takes `_dot_nt`'s transposed form."""
  module = layers.Conv2d(4, 1)
  x = jnp.zeros((1, 3, 3, 2048))
  v = module.init(jax.random.key(0), x)
  grad = jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=1)
  assert 'optimization_barrier' in str(jax.make_jaxpr(grad)(v, x))
  errs = _compare(module, (1, 3, 3, 2048), seed=5)
  assert max(errs.values()) < 1e-5, errs


def test_conv_transpose_output_size_matches_pytorch_rule():
  for k, s, p, op in ((16, 8, 0, 0), (3, 2, 1, 1), (5, 3, 2, 2)):
    module = layers.ConvTranspose2d(2, k, s, p, op)
    for fast in (True, False):
      with layers.conv_fastpath(fast):
        out = jax.eval_shape(
          lambda x, m=module: m.init_with_output(jax.random.key(0), x)[0], jnp.zeros((1, 5, 6, 3))
        )
      assert out.shape == (1, (5 - 1) * s - 2 * p + k + op, (6 - 1) * s - 2 * p + k + op, 2)


def test_fastpath_only_on_cpu(monkeypatch):
  """GPU/TPU keep lax.conv_general_dilated: the decision is made at trace time by backend."""
  fc6 = layers.Conv2d(16, 7, padding='VALID')
  up = layers.ConvTranspose2d(4, 16, 8, use_bias=False)
  x1, x2 = jnp.zeros((1, 9, 9, 8)), jnp.zeros((1, 3, 3, 4))
  v1, v2 = fc6.init(jax.random.key(0), x1), up.init(jax.random.key(0), x2)
  # Fresh lambdas per check: the flag is read at trace time, and traces are cached per function.
  count1 = lambda: _conv_count(lambda v, x: fc6.apply(v, x), v1, x1)  # noqa: E731
  count2 = lambda: _conv_count(lambda v, x: up.apply(v, x), v2, x2)  # noqa: E731
  assert count1() == 0 and count2() == 0
  with layers.conv_fastpath(False):
    assert count1() == 1 and count2() == 1
  for backend in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert count1() == 1 and count2() == 1


def test_bfloat16_compute():
  """dtype=bfloat16 computes in bf16 (params stay float32) through the fast paths."""
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 8))
  narrow = layers.Conv2d(2, 3, padding=1)  # _conv_narrow
  for module in (layers.Conv2d(16, 7, padding='VALID'), layers.ConvTranspose2d(4, 4, 2), narrow):
    v = module.init(jax.random.key(1), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
    lp = module.clone(dtype=jnp.bfloat16)

    def run(v, x, m=module, lp=lp):
      g = jax.grad(lambda v: jnp.sum(jnp.sin(lp.apply(v, x).astype(jnp.float32))))(v)
      return m.apply(v, x), lp.apply(v, x), g

    y32, y16, g = jax.jit(run)(v, x)
    assert y16.dtype == jnp.bfloat16
    assert _rel(y16.astype(jnp.float32), y32) < 3e-2
    assert all(
      bool(jnp.all(jnp.isfinite(a))) and a.dtype == jnp.float32 for a in jax.tree.leaves(g)
    )


POOL_CASES = [
  # (shape, window, ceil_mode): odd sizes (partial windows kept or dropped), 3x3 windows
  ((2, 7, 9, 3), 2, True),
  ((2, 7, 9, 3), 2, False),
  ((1, 8, 6, 2), 2, False),
  ((1, 10, 11, 4), 3, True),
  ((1, 1, 1, 2), 2, True),
]


@pytest.mark.parametrize('shape,window,ceil_mode', POOL_CASES)
def test_max_pool2d_equals_flax(shape, window, ceil_mode):
  """Values and gradients equal nn.max_pool's (reduce_window / select-and-scatter), ties included."""
  rng = np.random.default_rng(sum(shape))
  # ReLU-like input: whole windows of zeros and repeated maxima, where the
  # gradient must go to the first maximum only.
  x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
  x[0, 0, : min(2, shape[2])] = 1.0
  x = jnp.asarray(x)

  def ref(x):
    if not ceil_mode:
      return nn.max_pool(x, (window, window), (window, window))
    pad = ((0, -x.shape[1] % window), (0, -x.shape[2] % window))
    return nn.max_pool(x, (window, window), (window, window), padding=pad)

  def fast(x):
    return ops.max_pool2d(x, window, ceil_mode=ceil_mode)

  def loss(f):
    # A different weight per output, so a gradient sent to the wrong element is seen.
    return lambda x: jnp.sum(jnp.sin(f(x)) * (1.0 + jnp.arange(f(x).size).reshape(f(x).shape)))

  y, y_ref = jax.jit(fast)(x), jax.jit(ref)(x)
  assert y.shape == y_ref.shape
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  g, g_ref = jax.jit(jax.grad(loss(fast)))(x), jax.jit(jax.grad(loss(ref)))(x)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))
  # The fast path has no select-and-scatter (XLA's reduce_window gradient).
  jaxpr = str(jax.make_jaxpr(jax.grad(loss(fast)))(x))
  assert 'select_and_scatter' not in jaxpr and 'reduce_window' not in jaxpr


def test_max_pool2d_rejects_bad_input():
  with pytest.raises(ValueError, match='rank 4'):
    ops.max_pool2d(jnp.ones((4, 4)))
  with pytest.raises(ValueError, match='window'):
    ops.max_pool2d(jnp.ones((1, 4, 4, 1)), 0)
  with pytest.raises(ValueError, match='floor mode'):
    ops.max_pool2d(jnp.ones((1, 1, 4, 1)), 2)


def test_configure_xla_cpu(monkeypatch):
  """The YNNPACK flag is added once, never over the user's own setting, and not after JAX started."""
  from jax._src import xla_bridge

  flag = f'--{layers._YNN_FLAG}={layers._YNN_VALUE}'
  monkeypatch.delenv(layers._OPT_OUT_ENV, raising=False)
  monkeypatch.setattr(xla_bridge, 'backends_are_initialized', lambda: False)
  monkeypatch.setattr(layers, '_jaxlib_version', lambda: (0, 10))
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert layers.configure_xla_cpu()
  assert os.environ['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=2', flag]
  assert not layers.ynn_convolutions()
  assert not layers.configure_xla_cpu()  # already there
  assert os.environ['XLA_FLAGS'].count(layers._YNN_FLAG) == 1
  user = f'--{layers._YNN_FLAG}=individual_dot,individual_convolution'
  monkeypatch.setenv('XLA_FLAGS', user)
  assert not layers.configure_xla_cpu() and os.environ['XLA_FLAGS'] == user
  assert layers.ynn_convolutions()
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv(layers._OPT_OUT_ENV, '1')
  assert not layers.configure_xla_cpu() and layers.ynn_convolutions()
  monkeypatch.delenv(layers._OPT_OUT_ENV)
  monkeypatch.setattr(
    layers, '_jaxlib_version', lambda: (0, 99)
  )  # unverified jaxlib: XLA dies on unknown flags
  assert not layers.configure_xla_cpu()
  monkeypatch.setattr(layers, '_jaxlib_version', lambda: (0, 10))
  monkeypatch.setattr(xla_bridge, 'backends_are_initialized', lambda: True)
  assert not layers.configure_xla_cpu() and os.environ['XLA_FLAGS'] == ''


def test_cpu_compiler_options(monkeypatch):
  """A model's `xla_cpu_compiler_options` apply on CPU only, never over XLA_FLAGS or the opt-out."""
  fc_densenet = jaxseg.create_model('fc_densenet103', num_classes=3)
  wanted = {'xla_cpu_use_fusion_emitters': False}
  monkeypatch.delenv(layers._OPT_OUT_ENV, raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setattr(layers, '_jaxlib_version', lambda: (0, 10))
  assert layers.cpu_compiler_options(fc_densenet) == wanted
  for shallow in ('fc_densenet56', 'fc_densenet67', 'fcn8s'):  # XLA's defaults
    assert layers.cpu_compiler_options(jaxseg.create_model(shallow, num_classes=3)) is None
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_fusion_emitters=true')  # the user's choice wins
  assert layers.cpu_compiler_options(fc_densenet) is None
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv(layers._OPT_OUT_ENV, '1')
  assert layers.cpu_compiler_options(fc_densenet) is None
  monkeypatch.delenv(layers._OPT_OUT_ENV)
  # An unverified jaxlib: XLA rejects unknown options.
  monkeypatch.setattr(layers, '_jaxlib_version', lambda: (0, 99))
  assert layers.cpu_compiler_options(fc_densenet) is None
  monkeypatch.setattr(layers, '_jaxlib_version', lambda: (0, 10))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert layers.cpu_compiler_options(fc_densenet) is None


def test_import_sets_flag_that_reaches_xla():
  """`import jaxseg` in a fresh process: XLA:CPU compiles convolutions without YNNPACK fusions."""
  code = (
    'import jaxseg, jax, jax.numpy as jnp\n'
    'f = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")\n'
    'hlo = jax.jit(f).lower(jnp.ones((1, 4, 8, 8)), jnp.ones((4, 4, 3, 3))).compile().as_text()\n'
    'print(jaxseg.layers.ynn_convolutions(), "ynn_fusion" in hlo, "convolution(" in hlo)\n'
  )
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', layers._OPT_OUT_ENV)}
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  if layers._jaxlib_version() >= layers._YNN_FLAG_JAXLIB[0]:
    assert out.stdout.split() == ['False', 'False', 'True'], out.stdout
