"""PSPNet: exact counts, adaptive pooling vs torch, parity with a semseg-layout PyTorch PSPNet (eval + train)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  abstract_init,
  assert_torch_parity,
  n_params,
  randomize_torch,
  rel_err,
  to_nchw,
  to_nhwc,
  torch_state_dict,
)

import jaxseg
from jaxseg.ops.adaptive_pool import adaptive_avg_pool
from jaxseg.weights.core import flat_key_map, get_layout

COUNTS = {('resnet50', False): 46_592_597, ('resnet50', True): 46_592_597 + 2_365_205}
COUNTS[('resnet101', False)] = 46_592_597 + (44_549_160 - 25_557_032)


@pytest.mark.parametrize('backbone,aux', sorted(COUNTS))
def test_param_count_and_shapes(backbone, aux):
  model = jaxseg.create_model('pspnet', num_classes=21, backbone=backbone, aux=aux)
  sizes = ((65, 97), (473, 473)) if (backbone, aux) == ('resnet50', True) else ((41, 41),)
  for size in sizes:
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables, out = abstract_init(model, x.shape)
    assert n_params(variables['params']) == COUNTS[(backbone, aux)]
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32
    train_out, _ = jax.eval_shape(
      lambda v, x: model.apply(
        v, x, train=True, rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats']
      ),
      variables,
      x,
    )
    if aux:
      assert set(train_out) == {'out', 'aux'} and train_out['aux'].shape == (2, *size, 21)
    else:
      assert train_out.shape == (2, *size, 21)


def test_adaptive_avg_pool_matches_torch(torch_module):
  torch = torch_module
  x = np.random.default_rng(0).standard_normal((2, 9, 13, 4)).astype(np.float32)
  for bins in (1, 2, 3, 6, (4, 5), 20):
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(to_nchw(x)), bins).numpy()
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, bins)), to_nhwc(want), atol=1e-6)


def test_layout_matches_semseg_keys(torch_module):
  from torch_ref.pspnet import PSPNet as TorchPSPNet

  for deep in (False, True):
    model = jaxseg.create_model('pspnet', num_classes=21, deep_stem=deep)
    x = jax.ShapeDtypeStruct((1, 48, 48, 3), jnp.float32)
    variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x, train=False), x)
    keys = set(flat_key_map(variables, get_layout('pspnet').key_fn).values())
    want = {
      k for k in TorchPSPNet(deep_base=deep).state_dict() if not k.endswith('num_batches_tracked')
    }
    assert keys == want


@pytest.fixture(scope='module')
def parity_pair(torch_module):
  """A short (1, 1, 1, 1)-block PSPNet with the deep stem, random weights and BN statistics."""
  from torch_ref.pspnet import PSPNet as TorchPSPNet

  ref = randomize_torch(
    TorchPSPNet(classes=5, layers=(1, 1, 1, 1), deep_base=True, dropout=0.0), seed=3
  )
  kwargs = dict(num_classes=5, deep_stem=True, stage_sizes=(1, 1, 1, 1), dropout=0.0)
  variables = jaxseg.weights.from_torch('pspnet', torch_state_dict(ref), **kwargs)
  return ref, jaxseg.create_model('pspnet', **kwargs), variables


def test_parity_eval(parity_pair):
  ref, model, variables = parity_pair
  x = np.random.default_rng(0).standard_normal((2, 41, 53, 3)).astype(np.float32)
  assert assert_torch_parity('pspnet', model, variables, ref, x).shape == (2, 41, 53, 5)
  exported = jaxseg.weights.to_torch('pspnet', variables)
  for k, v in ref.state_dict().items():
    np.testing.assert_array_equal(exported[k], v.numpy())


def test_parity_train_step(torch_module, parity_pair):
  """One train-mode forward: outputs, aux outputs and updated running statistics agree."""
  torch = torch_module
  ref, model, variables = parity_pair
  x = np.random.default_rng(1).standard_normal((2, 45, 41, 3)).astype(np.float32)
  ref.train()
  with torch.no_grad():
    out, aux = ref(torch.from_numpy(to_nchw(x)))
  (got, updates), grads = jax.jit(
    lambda v, x: (
      model.apply(v, x, train=True, mutable=['batch_stats']),
      jax.grad(
        lambda p: jnp.mean(
          jnp.square(
            model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])[0]['out']
          )
        )
      )(v['params']),
    )
  )(variables, x)
  assert rel_err(got['out'], to_nhwc(out.numpy())) < 1e-4
  assert rel_err(got['aux'], to_nhwc(aux.numpy())) < 1e-4
  torch_stats = jaxseg.weights.from_torch('pspnet', ref.state_dict(), **model_kwargs(model))[
    'batch_stats'
  ]
  for path, a in jax.tree_util.tree_leaves_with_path(updates['batch_stats']):
    b = torch_stats
    for p in path:
      b = b[p.key]
    assert rel_err(a, b) < 1e-4, jax.tree_util.keystr(path)
  # Gradients of the main output reach every parameter except the auxiliary head.
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert bool(jnp.any(g != 0)) != ('aux' in name), name


def model_kwargs(model):
  return dict(
    num_classes=model.num_classes,
    deep_stem=model.deep_stem,
    stage_sizes=model.stage_sizes,
    dropout=0.0,
  )


def test_bad_inputs():
  model = jaxseg.create_model('pspnet', num_classes=2)
  with pytest.raises(ValueError, match=r'H and W >= 41 .*6x6 pyramid bins, got \(40, 64\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 40, 64, 3)), train=False)
  with pytest.raises(ValueError, match="backbone must be 'resnet50' or 'resnet101'"):
    jaxseg.create_model('pspnet', num_classes=2, backbone='vgg16').init(
      jax.random.key(0), jnp.zeros((1, 48, 48, 3)), train=False
    )
  with pytest.raises(ValueError, match='3 input channels'):
    model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False)
