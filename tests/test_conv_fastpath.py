"""CPU fast paths of layers.Conv2d / ConvTranspose2d equal the plain lax lowering.

The fast paths (im2col GEMM for convolutions, GEMM + overlap-add for
transposed convolutions; see jaxseg/layers.py) exist only for speed on
XLA:CPU. Every model's numerics go through them, so outputs AND gradients
(w.r.t. input, kernel and bias) must equal `lax.conv_general_dilated` to
float32 rounding, for the shapes that trigger them and for odd shapes,
strides, dilations, paddings; and they must be taken where intended (and
only on CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import layers


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
  """Whether a fast path is taken: no XLA conv at all, or the custom-VJP one (3x3)."""
  jaxpr = str(jax.make_jaxpr(fn)(*args))
  return 'conv_general_dilated' not in jaxpr or 'custom_vjp_call' in jaxpr


@pytest.fixture
def low_threshold(monkeypatch):
  """Routes every 3x3 conv through im2col, so odd cases run on tiny channel counts."""
  monkeypatch.setattr(layers, '_MIN_IM2COL_CHANNELS', 1)


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


def test_conv_real_thresholds():
  """The shapes that trigger the fast path at the default thresholds: fc6-like and wide 3x3."""
  fc6 = layers.Conv2d(16, 7, padding='VALID')  # the fc6 cliff: 7x7 VALID on a small map
  wide = layers.Conv2d(8, 3, padding=1)  # >= _MIN_IM2COL_CHANNELS inputs
  narrow = layers.Conv2d(8, 3, padding=1)
  for module, shape, fast in (
    (fc6, (2, 11, 10, 8), True),
    (wide, (1, 6, 5, layers._MIN_IM2COL_CHANNELS), True),
    (narrow, (1, 6, 5, 16), False),
  ):
    x = jnp.zeros(shape)
    v = module.init(jax.random.key(0), x)
    assert _fast(lambda v, x, m=module: m.apply(v, x), v, x) == fast, (shape, fast)
    errs = _compare(module, shape, seed=3)
    assert max(errs.values()) < 1e-5, (shape, errs)


def test_grouped_conv_keeps_plain_lowering():
  module = layers.Conv2d(8, 3, padding=1, groups=4)
  x = jnp.zeros((1, 6, 7, 8))
  v = module.init(jax.random.key(0), x)
  assert _conv_count(lambda v, x: module.apply(v, x), v, x) == 1
  errs = _compare(module, (1, 6, 7, 8))
  assert max(errs.values()) < 1e-5, errs


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
  for module in (layers.Conv2d(16, 7, padding='VALID'), layers.ConvTranspose2d(4, 4, 2)):
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
