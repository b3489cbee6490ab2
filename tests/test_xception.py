"""Modified aligned Xception-65: parameter count (independent arithmetic), strides, gradients, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg.backbones.xception import Xception


def n_params(tree) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


def separable(cin, cout):
  """Depthwise 3x3 (no bias) + BN + pointwise 1x1 (no bias) + BN."""
  return 9 * cin + 2 * cin + cin * cout + 2 * cout


def block(cin, depths, projection):
  n = separable(cin, depths[0]) + separable(depths[0], depths[1]) + separable(depths[1], depths[2])
  return n + (cin * depths[2] + 2 * depths[2] if projection else 0)


def xception65_count(middle=16):
  stem = 27 * 32 + 2 * 32 + 9 * 32 * 64 + 2 * 64
  entry = block(64, (128,) * 3, True) + block(128, (256,) * 3, True) + block(256, (728,) * 3, True)
  exit_ = block(728, (728, 1024, 1024), True) + block(1024, (1536, 1536, 2048), False)
  return stem + entry + middle * block(728, (728,) * 3, False) + exit_


def test_param_count():
  assert xception65_count() == 37_867_312
  model = jaxseg.create_backbone('xception65')
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert n_params(variables['params']) == 37_867_312


@pytest.mark.parametrize(
  'output_stride,size,low,out',
  [(16, (65, 71), (17, 18), (5, 5)), (8, (65, 71), (17, 18), (9, 9)), (16, (97, 64), (25, 16), (7, 4))],
)
def test_output_strides(output_stride, size, low, out):
  model = jaxseg.create_backbone('xception65', output_stride=output_stride)
  x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  feats, _ = jax.eval_shape(functools.partial(model.init_with_output, train=False), jax.random.key(0), x)
  assert feats['low_level'].shape == (2, *low, 256)
  assert feats['entry_flow'].shape == feats['middle_flow'].shape == (2, *out, 728)
  assert feats['out'].shape == (2, *out, 2048) and feats['out'].dtype == jnp.float32


def test_rates_follow_the_reference():
  """Output stride 8: entry block3 unstrided, middle flow at rate 2, exit at 2 then 4."""
  specs = Xception(output_stride=8).block_specs()
  assert specs['entry_flow'][2][1]['strides'] == 1 and specs['entry_flow'][2][1]['dilation'] == 1
  assert {kw['dilation'] for _, kw in specs['middle_flow']} == {2}
  assert [kw['dilation'] for _, kw in specs['exit_flow']] == [2, 4]
  specs = Xception(output_stride=16).block_specs()
  assert [kw['strides'] for _, kw in specs['entry_flow']] == [2, 2, 2]
  assert [(kw['strides'], kw['dilation']) for _, kw in specs['exit_flow']] == [(1, 1), (1, 2)]


def test_tiny_variant_count():
  """The 1-middle-block variant used by test_deeplab_v3's gradient test (which covers every Xception leaf)."""
  model = Xception(output_stride=8, middle_repeats=1)
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert n_params(variables['params']) == xception65_count(middle=1)


def test_bad_inputs():
  def init(model, x):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

  with pytest.raises(ValueError, match='output_stride must be 32, 16 or 8, got 4'):
    init(Xception(output_stride=4), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match=r'Xception needs H and W >= 16, got \(15, 64\)'):
    init(Xception(), jnp.zeros((1, 15, 64, 3)))
