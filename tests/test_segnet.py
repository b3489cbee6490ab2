"""SegNet and SegNet-Basic: counts, parity with the CBR-layout PyTorch reference (eval and train), ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  abstract_init,
  assert_torch_parity,
  assert_train_gradients,
  n_params,
  randomize_torch,
  rel_err,
  to_nchw,
  to_nhwc,
  torch_state_dict,
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
  assert (name, kwargs) == ('vgg16_bn', {'width': 0.25, 'ceil_mode': True, 'return_indices': True})
  backbone = jaxseg.create_backbone(name, **kwargs)
  shapes = lambda m: jax.eval_shape(
    lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  ours, theirs = shapes(model), shapes(backbone)
  for col in ('params', 'batch_stats'):
    assert jax.tree_util.tree_map(
      lambda a: a.shape, ours[col]['backbone']
    ) == jax.tree_util.tree_map(lambda a: a.shape, theirs[col])


def apply_with_pool_indices(model, variables, x, *, train):
  """(output, [NCHW pooling indices of stages 1-5], updated batch_stats or None) of one forward.

  The indices are the encoder's returned features, read with flax's capture_intermediates.
  """
  is_backbone = lambda module, method: module.name == 'backbone' and method == '__call__'
  mutable = ['intermediates', 'batch_stats'] if train else ['intermediates']
  apply = lambda v, x: model.apply(
    v, x, train=train, mutable=mutable, capture_intermediates=is_backbone
  )
  out, state = jax.jit(apply)(variables, x)
  (feats,) = state['intermediates']['backbone']['__call__']
  indices = [to_nchw(np.asarray(feats[f'pool{s}_indices'])) for s in range(1, 6)]
  return out, indices, state.get('batch_stats')


def test_segnet_parity(torch_module):
  """The paper's network (full width), eval mode and one train-mode forward: outputs and updated
  BN statistics. The reference replays our pooling decisions where two window values are closer
  than float32 rounding (near ties, about one in 50k random windows; `forward_with_indices`
  checks that only those differ)."""
  from torch_ref.segnet import SegNet as TorchSegNet
  from torch_ref.segnet import forward_with_indices

  ref = randomize_torch(TorchSegNet(num_classes=5), seed=1)
  sd = torch_state_dict(ref)
  variables = jaxseg.weights.from_torch('segnet', sd)
  model = jaxseg.create_model('segnet', num_classes=5)
  # Big enough that train-mode BatchNorm of the deepest layers (3x2 maps) is
  # well conditioned; smaller maps amplify float32 rounding beyond 1e-4.
  x = np.random.default_rng(0).standard_normal((2, 33, 31, 3)).astype(np.float32)
  xt = torch_module.from_numpy(to_nchw(x))
  for train in (False, True):
    got, indices, batch_stats = apply_with_pool_indices(model, variables, x, train=train)
    assert got.shape == (2, 33, 31, 5)
    expected, _ = forward_with_indices(ref.train(train), xt, indices)
    assert rel_err(got, to_nhwc(expected.numpy())) < 1e-4
  exported = jaxseg.weights.to_torch(
    'segnet', {'params': variables['params'], 'batch_stats': batch_stats}
  )
  stats = [k for k in sd if 'running' in k]
  assert stats
  for k in stats:
    assert rel_err(exported[k], ref.state_dict()[k].numpy()) < 1e-4, k


def test_segnet_basic_parity(torch_module):
  from torch_ref.segnet import SegNetBasic

  ref = randomize_torch(SegNetBasic(num_classes=4), seed=2)
  variables = jaxseg.weights.from_torch('segnet_basic', torch_state_dict(ref))
  model = jaxseg.create_model('segnet_basic', num_classes=4)
  x = np.random.default_rng(1).standard_normal((2, 19, 21, 3)).astype(np.float32)
  assert_torch_parity('segnet_basic', model, variables, ref, x, train=True)


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
  x = jax.random.normal(jax.random.key(0), (2, 19, 22, 3))
  if name == 'segnet':
    _, model, variables = tiny
    assert_train_gradients(model, x, (2, 19, 22, 3), variables)
  else:
    model = jaxseg.create_model(name, num_classes=3, features=4, kernel_size=3)
    assert_train_gradients(model, x, (2, 19, 22, 3))
