"""torchvision's fcn_resnet* / deeplabv3_resnet*: counts, parity with torchvision, aux convention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  assert_every_gradient_nonzero,
  n_params,
  randomize_torch,
  rel_err,
  to_nchw,
  to_nhwc,
  torch_state_dict,
)

import jaxseg

# torchvision's counts with weights=None, weights_backbone=None, num_classes=21 (aux_loss default: no aux head).
COUNTS = {
  ('fcn_resnet50', False): 32_957_013,
  ('fcn_resnet50', True): 35_322_218,
  ('fcn_resnet101', False): 51_949_141,
  ('deeplabv3_resnet50', False): 39_638_869,
  ('deeplabv3_resnet50', True): 42_004_074,
  ('deeplabv3_resnet101', False): 58_630_997,
  ('deeplabv3_resnet101', True): 60_996_202,
}


@pytest.mark.parametrize('name,aux', sorted(COUNTS))
def test_param_count_and_shapes(name, aux):
  model = jaxseg.create_model(name, num_classes=21, aux=aux)
  for size in ((65, 71), (97, 64)):
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert n_params(variables['params']) == COUNTS[name, aux]
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32
    if aux:
      out, _ = jax.eval_shape(
        functools.partial(
          model.apply, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)}
        ),
        variables,
        x,
      )
      assert set(out) == {'out', 'aux'}
      assert out['out'].shape == out['aux'].shape == (2, *size, 21)


def _torchvision(name, torch_module, seed):
  import torchvision

  ref = getattr(torchvision.models.segmentation, name)(
    weights=None, weights_backbone=None, num_classes=5, aux_loss=True
  )
  return randomize_torch(ref, seed=seed)


def test_parity_fcn_resnet50(torch_module):
  torch = torch_module
  ref = _torchvision('fcn_resnet50', torch, 3).eval()
  # Including aux_classifier.*.
  variables = jaxseg.weights.from_torch('fcn_resnet50', ref.state_dict(), aux=True)
  model = jaxseg.create_model('fcn_resnet50', num_classes=5, aux=True)
  x = np.random.default_rng(0).standard_normal((1, 65, 71, 3)).astype(np.float32)
  with torch.no_grad():
    expected = to_nhwc(ref(torch.from_numpy(to_nchw(x)))['out'].numpy())
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert got.shape == expected.shape == (1, 65, 71, 5)
  assert rel_err(got, expected) < 1e-4
  exported = jaxseg.weights.to_torch('fcn_resnet50', variables)
  assert set(exported) == set(ref.state_dict())


def test_parity_deeplabv3_resnet50_eval_and_train(torch_module):
  torch = torch_module
  ref = _torchvision('deeplabv3_resnet50', torch, 4)
  sd = torch_state_dict(ref)
  variables = jaxseg.weights.from_torch('deeplabv3_resnet50', sd, aux=True)
  model = jaxseg.create_model('deeplabv3_resnet50', num_classes=5, aux=True)
  x = np.random.default_rng(1).standard_normal((2, 65, 71, 3)).astype(np.float32)
  xt = torch.from_numpy(to_nchw(x))

  ref.eval()
  with torch.no_grad():
    expected = to_nhwc(ref(xt)['out'].numpy())
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert isinstance(got, jax.Array) and got.shape == (2, 65, 71, 5)
  assert rel_err(got, expected) < 1e-4

  # One train-mode forward: running statistics of every BN not downstream of a dropout.
  ref.train()
  with torch.no_grad():
    ref(xt)
  step = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  out, updated = step(variables, x, rngs={'dropout': jax.random.key(0)})
  assert set(out) == {'out', 'aux'} and out['aux'].shape == (2, 65, 71, 5)
  new_sd = jaxseg.weights.to_torch('deeplabv3_resnet50', {'params': variables['params'], **updated})
  assert_running_stats_close(
    new_sd, ref.state_dict(), skip=('classifier.2.',), expected_layers=53 + 6 + 1
  )


def assert_running_stats_close(got_sd, torch_sd, skip=(), expected_layers=None):
  """Running mean and var of each BN within 1e-4 of the layer's statistics scale (max |mean|, |var|).

  A running mean near zero is a cancellation of large activations: its error is
  judged on the scale of that layer's statistics, not on its own tiny magnitude.
  """
  errs = {}
  for k in torch_sd:
    if k.endswith('running_mean') and not k.startswith(skip):
      layer = k[: -len('running_mean')]
      ref_mean, ref_var = torch_sd[k].numpy(), torch_sd[layer + 'running_var'].numpy()
      scale = max(np.abs(ref_mean).max(), np.abs(ref_var).max())
      diff = max(
        np.abs(got_sd[k] - ref_mean).max(), np.abs(got_sd[layer + 'running_var'] - ref_var).max()
      )
      errs[layer] = diff / scale
  if expected_layers is not None:
    assert len(errs) == expected_layers
  worst = max(errs, key=errs.get)
  assert errs[worst] < 1e-4, (worst, errs[worst])


def test_gradients_reach_every_parameter():
  model = jaxseg.create_model('deeplabv3_resnet50', num_classes=3, aux=True, base_width=4)
  x = jax.random.normal(jax.random.key(0), (2, 17, 15, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)

  def loss(params):
    out, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(2)},
    )
    return jnp.mean(jnp.tanh(out['out']) ** 2) + jnp.mean(jnp.tanh(out['aux']) ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert_every_gradient_nonzero(grads)


def test_bad_inputs():
  model = jaxseg.create_model('deeplabv3_resnet50', num_classes=2)
  with pytest.raises(ValueError, match=r'deeplabv3_resnet50 needs H and W >= 8, got \(7, 64\)'):
    jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 7, 64, 3))
    )
  with pytest.raises(ValueError, match='3 input channels'):
    jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 64, 64, 4))
    )
