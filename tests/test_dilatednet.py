"""DilatedNet (Yu & Koltun): parameter counts, identity-initialised context module, shapes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg.models.dilatednet import ContextModule, identity_init
from jaxseg.weights.core import flat_key_map, get_layout

VGG_CONVS = 14_714_688
FRONT = VGG_CONVS + (7 * 7 * 512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 21 + 21)
LARGE = [21, 42, 42, 84, 168, 336, 672, 672, 21]
COUNTS = {
  None: FRONT,
  'basic': FRONT + 7 * (9 * 21 * 21 + 21) + (21 * 21 + 21),
  'large': FRONT
  + sum(
    (9 if i < 7 else 1) * cin * cout + cout
    for i, (cin, cout) in enumerate(zip(LARGE[:-1], LARGE[1:], strict=True))
  ),
}


def n_params(tree) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


@pytest.mark.parametrize('context', [None, 'basic', 'large'])
def test_param_count_and_shapes(context):
  assert COUNTS == {None: 134_346_581, 'basic': 134_374_973, 'large': 141_149_720}
  model = jaxseg.create_model('dilatednet', num_classes=21, context=context)
  for size in ((65, 97), (64, 64)):
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert n_params(variables['params']) == COUNTS[context]
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32


def test_layout_uses_the_caffe_names():
  model = jaxseg.create_model('dilatednet', num_classes=21)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  keys = set(flat_key_map(variables, get_layout('dilatednet').key_fn).values())
  want = {
    f'conv{s}_{i}' for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
  }
  want |= {'fc6', 'fc7', 'final', 'ctx_conv1_1', 'ctx_conv1_2', 'ctx_conv2_1', 'ctx_conv3_1'}
  want |= {'ctx_conv4_1', 'ctx_conv5_1', 'ctx_fc1', 'ctx_final'}
  assert keys == {f'{m}.{leaf}' for m in want for leaf in ('weight', 'bias')}


def numpy_init(model, x, seed=0):
  """He-scaled random variables shaped by eval_shape (compiling flax's init costs seconds on CPU)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(seed)

  def draw(a):
    fan_in = max(1, int(np.prod(a.shape[:-1])))
    return jnp.asarray(rng.standard_normal(a.shape) * (2.0 / fan_in) ** 0.5, a.dtype)

  return jax.tree_util.tree_map(draw, shapes)


def test_context_module_starts_as_identity():
  """Identity initialisation (Eqs. 4, 5): non-negative score maps pass through."""
  basic = np.asarray(identity_init(5, 0.0)(jax.random.key(0), (3, 3, 5, 5)))
  want = np.zeros((3, 3, 5, 5), np.float32)
  want[1, 1] = np.eye(5)
  np.testing.assert_array_equal(basic, want)
  large = np.asarray(identity_init(5, 1e-3)(jax.random.key(0), (3, 3, 5, 10)))
  assert np.allclose(large[1, 1][np.arange(10) // 2, np.arange(10)], 0.5)
  assert np.allclose(large[1, 1].sum(0), 0.5, atol=0.01) and 0 < np.std(large[0]) < 2e-3
  # The whole 'large' module is the identity up to its small noise.
  module = ContextModule(num_classes=3, size='large')
  x = jnp.abs(jax.random.normal(jax.random.key(0), (1, 12, 13, 3)))
  # (rbg keys: threefry's random kernels take seconds to compile on CPU)
  y, _ = jax.jit(lambda x: module.init_with_output(jax.random.key(1, impl='rbg'), x))(x)
  assert np.max(np.abs(np.asarray(y) - np.asarray(x))) < 0.1


def test_tiny_forward_backward():
  model = jaxseg.create_model('dilatednet', num_classes=3, width=1 / 32)
  x = jax.random.normal(jax.random.key(1), (2, 21, 26, 3))
  variables = numpy_init(model, x)

  def loss(params):
    y = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)})
    return jnp.mean(jax.nn.logsumexp(y, axis=-1) - y[..., 0]), y

  grads, y = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  assert y.shape == (2, 21, 26, 3) and bool(jnp.all(jnp.isfinite(y)))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.any(g != 0)), f'no gradient reaches {jax.tree_util.keystr(path)}'


def test_bad_inputs():
  with pytest.raises(ValueError, match="context must be 'large', 'basic' or None"):
    jaxseg.create_model('dilatednet', num_classes=2, context='huge').init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False
    )
  model = jaxseg.create_model('dilatednet', num_classes=2, width=1 / 32)
  with pytest.raises(ValueError, match='H and W >= 8'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 5, 3)), train=False)
