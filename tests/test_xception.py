"""Modified aligned Xception-65: counts (arithmetic and torch reference), parity, layout, strides, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import n_params, randomize_torch, rel_err, to_nchw, to_nhwc

import jaxseg
from jaxseg.backbones.xception import Xception
from jaxseg.weights.layouts_deeplab import xception_key_fn


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


def test_param_count_equals_torch_reference(torch_module):
  from torch_ref.xception import AlignedXception

  for variant in ('paper', 'jfzhang95'):
    ref = AlignedXception(16, variant)
    assert sum(p.numel() for p in ref.parameters()) == xception65_count() == 37_867_312


# jfzhang95/pytorch-deeplab-xception's AlignedXception keys (checked against that repository's module).
JF_KEYS = (
  'conv1.weight',
  'bn2.running_var',
  'block1.rep.0.conv1.weight',  # entry blocks 1-2: no leading ReLU module in `rep`
  'block1.rep.0.bn.weight',
  'block1.rep.0.pointwise.weight',
  'block1.rep.1.running_mean',
  'block2.rep.7.bias',
  'block2.skip.weight',
  'block3.rep.1.conv1.weight',  # later blocks: rep = ReLU, sep, BN, ReLU, sep, BN, ReLU, sep, BN
  'block3.skipbn.running_var',
  'block4.rep.4.pointwise.weight',
  'block19.rep.8.weight',
  'block20.rep.7.conv1.weight',
  'block20.skip.weight',
  'conv3.conv1.weight',
  'conv5.pointwise.weight',
  'bn5.running_mean',
)


@pytest.mark.parametrize('output_stride', [16, 8])
def test_parity_with_torch_reference(torch_module, output_stride):
  """Paper variant: stride-4 and final features vs a PyTorch reference in jfzhang95's key layout.

  The jfzhang95 variant is checked with the full DeepLabv3+ (test_deeplab_v3), backbone features included.
  """
  torch = torch_module
  from torch_ref.xception import AlignedXception

  ref = randomize_torch(AlignedXception(output_stride, 'paper'), seed=11).eval()
  sd = ref.state_dict()
  assert set(JF_KEYS) <= set(sd) and len(sd) == 792
  variables = jaxseg.weights.from_torch('xception65', sd, output_stride=output_stride)
  model = jaxseg.create_backbone('xception65', output_stride=output_stride)
  x = np.random.default_rng(2).standard_normal((1, 65, 71, 3)).astype(np.float32)
  with torch.no_grad():
    out, low = (to_nhwc(t.numpy()) for t in ref(torch.from_numpy(to_nchw(x))))
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  side = {16: 5, 8: 9}[output_stride]
  assert got['low_level'].shape == low.shape == (1, 17, 18, 256)
  assert got['out'].shape == out.shape == (1, side, side, 2048)
  assert rel_err(got['low_level'], low) < 1e-4
  assert rel_err(got['out'], out) < 1e-4
  # The jfzhang95 computation on the same weights is a different function: the check can tell them apart.
  jf = AlignedXception(output_stride, 'jfzhang95').eval()
  jf.load_state_dict(sd)
  with torch.no_grad():
    assert rel_err(to_nhwc(jf(torch.from_numpy(to_nchw(x)))[0].numpy()), out) > 0.1

  exported = jaxseg.weights.to_torch('xception65', variables)
  assert set(exported) == set(sd)
  assert all(
    np.array_equal(exported[k], sd[k].numpy()) for k in sd if not k.endswith('num_batches_tracked')
  )


def test_key_fn():
  assert xception_key_fn(('entry_flow', 'conv1', 'bn')) == 'bn1'
  assert xception_key_fn(('entry_flow', 'block2', 'sepconv3', 'pointwise_bn')) == 'block2.rep.7'
  assert xception_key_fn(('middle_flow', 'block1', 'sepconv2', 'depthwise')) == 'block4.rep.4.conv1'
  assert (
    xception_key_fn(('middle_flow', 'block16', 'sepconv1', 'depthwise_bn')) == 'block19.rep.1.bn'
  )
  assert xception_key_fn(('exit_flow', 'block1', 'shortcut_bn')) == 'block20.skipbn'
  assert xception_key_fn(('exit_flow', 'block2', 'sepconv1', 'pointwise_bn')) == 'bn3'
  assert xception_key_fn(('exit_flow', 'block2', 'sepconv3', 'pointwise')) == 'conv5.pointwise'
  with pytest.raises(ValueError, match='16 middle-flow blocks, got middle_flow/block17'):
    xception_key_fn(('middle_flow', 'block17', 'sepconv1', 'depthwise'))


@pytest.mark.parametrize(
  'output_stride,size,low,out',
  [
    (16, (65, 71), (17, 18), (5, 5)),
    (8, (65, 71), (17, 18), (9, 9)),
    (16, (97, 64), (25, 16), (7, 4)),
  ],
)
def test_output_strides(output_stride, size, low, out):
  model = jaxseg.create_backbone('xception65', output_stride=output_stride)
  x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  feats, _ = jax.eval_shape(
    functools.partial(model.init_with_output, train=False), jax.random.key(0), x
  )
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
  assert not any(
    kw.get('shortcut_from_relu') or kw.get('last_dilation')
    for flow in specs.values()
    for _, kw in flow
  )


def test_jfzhang95_variant_specs():
  """Shortcuts read relu(input); the strided blocks' third conv keeps dilation 1 (exit block1 at OS 8)."""
  specs = Xception(output_stride=8, variant='jfzhang95').block_specs()
  blocks = [kw for flow in specs.values() for _, kw in flow]
  assert [kw['shortcut_from_relu'] for kw in blocks] == [True] * 20 + [False]
  exit1, exit2 = (kw for _, kw in specs['exit_flow'])
  assert (exit1['strides'], exit1['dilation'], exit1['last_dilation']) == (1, 2, 1)
  assert (exit2['dilation'], exit2['activation_in_separable']) == (4, False)
  assert [kw['last_dilation'] for _, kw in specs['entry_flow']] == [1, 1, 1]


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
  with pytest.raises(ValueError, match="variant must be 'paper' or 'jfzhang95', got 'tf'"):
    init(Xception(variant='tf'), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(
    ValueError, match=r'\(jfzhang95 variant\) output_stride must be 16 or 8, got 32'
  ):
    init(Xception(output_stride=32, variant='jfzhang95'), jnp.zeros((1, 64, 64, 3)))
