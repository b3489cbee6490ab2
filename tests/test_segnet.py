"""SegNet and SegNet-Basic: counts, parity with the CBR-layout PyTorch reference (eval and train), ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  abstract_init,
  assert_gradients_everywhere,
  n_params,
  randomize_torch,
  rel_err,
  to_nchw,
  to_nhwc,
  train_grads,
)

import jaxseg


@pytest.mark.parametrize(
  'name,classes,count',
  [('segnet', 11, 29_449_355), ('segnet', 21, 29_455_125), ('segnet_basic', 11, 1_416_075)],
)
def test_param_count_and_shapes(name, classes, count):
  model = jaxseg.create_model(name, num_classes=classes)
  for size in ((32, 32), (35, 29), (1, 1)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == count
    assert out.shape == (2, *size, classes) and out.dtype == jnp.float32


def test_backbone_matches_vgg16_bn():
  """The encoder's variables are exactly those of the registered vgg16_bn backbone."""
  model = jaxseg.create_model('segnet', num_classes=3, width=0.25)
  name, kwargs = model.backbone_spec()
  backbone = jaxseg.create_backbone(name, **kwargs)
  shapes = lambda m: jax.eval_shape(
    lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  ours, theirs = shapes(model), shapes(backbone)
  for col in ('params', 'batch_stats'):
    assert jax.tree_util.tree_map(
      lambda a: a.shape, ours[col]['backbone']
    ) == jax.tree_util.tree_map(lambda a: a.shape, theirs[col])


def _apply_fns(model):
  eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))
  train_fn = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats', 'intermediates'])
  )
  return eval_fn, train_fn


def _expected(torch, ref, x, state, name):
  """The reference's output; for SegNet it replays our pooling decisions where
  two window values are closer than float32 rounding (near ties, about one in
  50k random windows; `forward_with_indices` checks that only those differ)."""
  from torch_ref.segnet import forward_with_indices

  xt = torch.from_numpy(to_nchw(x))
  if name == 'segnet_basic':
    with torch.no_grad():
      return to_nhwc(ref(xt).numpy())
  saved = state['intermediates']['backbone']
  indices = [to_nchw(np.asarray(saved[f'pool{s}_indices'][0])) for s in range(1, 6)]
  out, _ = forward_with_indices(ref, xt, indices)
  return to_nhwc(out.numpy())


def _parity(torch, ref, name, x, **model_kwargs):
  """eval-mode forward, then one train-mode forward: outputs and updated BN statistics."""
  # Copies: the train-mode forward below updates the reference's BN statistics in place.
  sd = {k: v.clone() for k, v in ref.state_dict().items()}
  variables = jaxseg.weights.from_torch(name, sd, **model_kwargs)
  classes = variables['params'][_score_name(name)]['bias'].shape[0]
  model = jaxseg.create_model(name, num_classes=classes, **model_kwargs)
  eval_fn, train_fn = _apply_fns(model)
  ref.eval()
  got, state = eval_fn(variables, x)
  assert got.shape == (*x.shape[:3], classes)
  assert rel_err(got, _expected(torch, ref, x, state, name)) < 1e-4

  ref.train()
  got, state = train_fn(variables, x)
  assert rel_err(got, _expected(torch, ref, x, state, name)) < 1e-4
  exported = jaxseg.weights.to_torch(
    name, {'params': variables['params'], 'batch_stats': state['batch_stats']}
  )
  stats = [k for k in ref.state_dict() if 'running' in k]
  assert stats
  for k in stats:
    assert rel_err(exported[k], ref.state_dict()[k].numpy()) < 1e-4, k


def _score_name(name):
  return 'conv_classifier' if name == 'segnet_basic' else 'score_fr'


def test_segnet_parity(torch_module):
  """The paper's network (full width), eval mode and one train-mode forward."""
  from torch_ref.segnet import SegNet as TorchSegNet

  ref = randomize_torch(TorchSegNet(num_classes=5), seed=1)
  # Big enough that train-mode BatchNorm of the deepest layers (3x2 maps) is
  # well conditioned; smaller maps amplify float32 rounding beyond 1e-4.
  x = np.random.default_rng(0).standard_normal((2, 33, 31, 3)).astype(np.float32)
  _parity(torch_module, ref, 'segnet', x)


def test_segnet_basic_parity(torch_module):
  from torch_ref.segnet import SegNetBasic

  ref = randomize_torch(SegNetBasic(num_classes=4), seed=2)
  x = np.random.default_rng(1).standard_normal((2, 19, 21, 3)).astype(np.float32)
  _parity(torch_module, ref, 'segnet_basic', x)


@pytest.fixture(scope='module')
def tiny():
  pytest.importorskip('torch')
  from torch_ref.segnet import SegNet as TorchSegNet

  ref = randomize_torch(TorchSegNet(num_classes=3, width=1 / 16), seed=3).eval()
  variables = jaxseg.weights.from_torch('segnet', ref.state_dict(), width=1 / 16)
  model = jaxseg.create_model('segnet', num_classes=3, width=1 / 16)
  return ref, model, variables


def test_pooling_ties_match_torch(torch_module, tiny):
  """Constant image regions give whole pooling windows of equal values (exact
  ties, e.g. all zeros after ReLU): both implementations must take the first
  maximum in row-major order, so the outputs match without any replay."""
  torch = torch_module
  ref, model, variables = tiny
  x = np.zeros((1, 33, 30, 3), np.float32)
  x[:, 20:, 18:] = np.random.default_rng(2).standard_normal((1, 13, 12, 3))
  xt = torch.from_numpy(to_nchw(x))
  with torch.no_grad():
    h = ref.conv1_2(ref.conv1_1(xt))
    expected = to_nhwc(ref(xt).numpy())
  windows = (
    h[:, :, :32, :30].reshape(1, h.shape[1], 16, 2, 15, 2).permute(0, 1, 2, 4, 3, 5).reshape(-1, 4)
  )
  n_tied = int(((windows == windows.max(-1, keepdim=True).values).sum(-1) > 1).sum())
  assert n_tied > 100  # the test really exercises ties
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize('name', ['segnet', 'segnet_basic'])
def test_gradients_reach_every_parameter(name, tiny):
  if name == 'segnet':
    _, model, variables = tiny
  else:
    model = jaxseg.create_model(name, num_classes=3, features=4, kernel_size=3)
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(
      jnp.zeros((1, 8, 8, 3))
    )
  x = jax.random.normal(jax.random.key(0), (2, 19, 22, 3))

  grads, out = train_grads(model, variables, x)
  assert out.shape == (2, 19, 22, 3)
  assert_gradients_everywhere(grads, out)


def test_bad_inputs():
  model = jaxseg.create_model('segnet', num_classes=2, width=1 / 16)
  with pytest.raises(ValueError, match='rank 4'):
    model.init(jax.random.key(0), jnp.zeros((8, 8, 3)), train=False)
  with pytest.raises(ValueError, match='expects 3 input channels'):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  with pytest.raises(TypeError, match='floating-point'):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.int32), train=False)
