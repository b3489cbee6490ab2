"""FCN-32s/16s/8s: exact parameter counts, parity with pytorch-fcn, any input size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import abstract_init, assert_torch_parity, n_params, randomize_torch

import jaxseg
from jaxseg.models.fcn import FCN

COUNTS = {'fcn32s': 136_152_917, 'fcn16s': 134_815_994, 'fcn8s': 134_489_759}


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_param_count_and_shapes(name):
  model = jaxseg.create_model(name, num_classes=21)
  for size in ((1, 1), (37, 45), (224, 224)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == COUNTS[name]
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32


def test_init_follows_reference():
  """score layers start at zero, upsampling deconvs at the bilinear filter, no bias."""
  # The head does not depend on the width.
  model = jaxseg.create_model('fcn8s', num_classes=3, width=0.125)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)['params']
  for name in ('score_fr', 'score_pool4', 'score_pool3'):
    assert not np.any(params[name]['kernel']) and not np.any(params[name]['bias'])
  up = params['upscore8']
  assert set(up) == {'kernel'}
  k = np.asarray(up['kernel'])
  assert k.shape == (16, 16, 3, 3)
  assert np.allclose(k[:, :, 0, 1], 0) and np.isclose(k[:, :, 0, 0].max(), k[:, :, 2, 2].max())
  # The bilinear filter upsamples a constant map to a constant interior.
  assert np.isclose(k[:, :, 1, 1].sum(), 64.0)


@pytest.mark.parametrize('name,stride', [('fcn32s', 32), ('fcn16s', 16), ('fcn8s', 8)])
def test_parity_with_pytorch_fcn(torch_module, name, stride):
  from torch_ref.fcn import FCN as TorchFCN

  torch_module.manual_seed(0)
  ref = randomize_torch(TorchFCN(n_class=5, stride=stride), seed=stride).eval()
  variables = jaxseg.weights.from_torch(name, ref.state_dict())  # num_classes read from score_fr
  model = jaxseg.create_model(name, num_classes=5)
  x = np.random.default_rng(0).standard_normal((2, 35, 29, 3)).astype(np.float32)
  assert assert_torch_parity(name, model, variables, ref, x).shape == (2, 35, 29, 5)
  # and back: export gives the same state dict
  exported = jaxseg.weights.to_torch(name, variables)
  for k, v in ref.state_dict().items():
    np.testing.assert_array_equal(exported[k], v.numpy())


def test_bad_inputs():
  # Bad images and class counts are checked for every FCN in test_validation.
  with pytest.raises(ValueError, match='Known models: .*fcn8s'):
    jaxseg.create_model('fcn9s', num_classes=2)
  with pytest.raises(ValueError, match='FCN stride must be 8, 16 or 32, got 4'):
    FCN(num_classes=2, stride=4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


def test_from_torch_reports_every_problem(torch_module):
  from torch_ref.fcn import FCN as TorchFCN

  sd = TorchFCN(n_class=4, stride=32).state_dict()
  sd['extra.weight'] = sd.pop('fc7.weight')
  sd['fc6.bias'] = sd['fc6.bias'][:10]
  with pytest.raises(jaxseg.weights.WeightsError) as e:
    jaxseg.weights.from_torch('fcn32s', sd)
  msg = str(e.value)
  assert (
    'fc7.weight' in msg
    and 'extra.weight' in msg
    and 'fc6.bias' in msg
    and '(10,)' in msg
    and '(4096,)' in msg
  )
