"""U-Net (valid, original) and unet_padded: counts, valid sizes, parity with the milesial-layout reference."""

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
  torch_state_dict,
)

import jaxseg
from jaxseg.models.unet import valid_input_sizes, valid_output_size


def test_valid_unet_count_and_paper_sizes():
  model = jaxseg.create_model('unet', num_classes=2)  # 1 input channel, as in the paper
  variables, out = abstract_init(model, (1, 572, 572, 1))
  assert n_params(variables['params']) == 31_030_658
  assert out.shape == (1, 388, 388, 2)  # Fig. 1 of the paper
  _, out = abstract_init(model, (2, 188, 204, 1))
  assert out.shape == (2, 4, 20, 2)
  assert valid_output_size(572) == 388 and model.valid_output_size(572) == 388
  assert model.output_size((188, 204)) == (4, 20)
  assert valid_input_sizes(240) == [188, 204, 220, 236]
  assert model.valid_input_sizes(600)[-1] == 588


@pytest.mark.parametrize('in_channels,count', [(1, 31_036_546), (3, 31_037_698)])
def test_padded_unet_count_and_any_size(in_channels, count):
  model = jaxseg.create_model('unet_padded', num_classes=2, in_channels=in_channels)
  for size in ((64, 64), (35, 29), (1, 1)):
    variables, out = abstract_init(model, (2, *size, in_channels))
    assert n_params(variables['params']) == count
    assert out.shape == (2, *size, 2) and out.dtype == jnp.float32
  assert model.output_size((35, 29)) == (35, 29)


def test_valid_parity_full_width(torch_module):
  from torch_ref.unet import UNet as TorchUNet

  ref = randomize_torch(TorchUNet(1, 2, valid=True), seed=7).eval()
  variables = jaxseg.weights.from_torch('unet', ref.state_dict())
  model = jaxseg.create_model('unet', num_classes=2)
  x = np.random.default_rng(7).standard_normal((1, 188, 204, 1)).astype(np.float32)
  got = assert_torch_parity('unet', model, variables, ref, x)
  assert got.shape == (1, 4, 20, 2)
  exported = jaxseg.weights.to_torch('unet', variables)
  for k, v in ref.state_dict().items():
    np.testing.assert_array_equal(exported[k], v.numpy())


def test_padded_parity_eval_and_train(torch_module):
  from torch_ref.unet import UNet as TorchUNet

  ref = randomize_torch(TorchUNet(3, 4, valid=False, base=8), seed=8)
  assert len([k for k in ref.state_dict() if 'running' in k]) == 2 * 18
  variables = jaxseg.weights.from_torch('unet_padded', torch_state_dict(ref), features=8)
  model = jaxseg.create_model('unet_padded', num_classes=4, features=8)
  x = np.random.default_rng(8).standard_normal((2, 37, 29, 3)).astype(np.float32)
  got = assert_torch_parity('unet_padded', model, variables, ref, x, train=True)
  assert got.shape == (2, 37, 29, 4)


# Depth 2 keeps the backward compile short; every kind of layer is still there.
@pytest.mark.parametrize('name,size', [('unet', (44, 60)), ('unet_padded', (21, 19))])
def test_gradients_reach_every_parameter(name, size):
  model = jaxseg.create_model(name, num_classes=3, in_channels=1, features=4, depth=2)
  x = jax.random.normal(jax.random.key(0), (2, *size, 1))
  assert_train_gradients(model, x, (2, *model.output_size(size), 3))


def test_bad_inputs():
  model = jaxseg.create_model('unet', num_classes=2)
  init = lambda m, shape: jax.eval_shape(
    lambda: m.init(jax.random.key(0), jnp.zeros(shape), train=False)
  )
  with pytest.raises(ValueError, match=r'cannot take size 200.*minimum 188\); nearest: 188, 204'):
    init(model, (1, 200, 188, 1))
  with pytest.raises(ValueError, match=r'cannot take size 189'):
    init(model, (1, 188, 189, 1))
  with pytest.raises(ValueError, match=r'cannot take size 172.*minimum 188'):
    init(model, (1, 172, 172, 1))
  with pytest.raises(ValueError, match='expects 1 input channels'):
    init(model, (1, 188, 188, 3))
  with pytest.raises(ValueError, match='rank 4'):
    init(jaxseg.create_model('unet_padded', num_classes=2), (188, 188, 3))
