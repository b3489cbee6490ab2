"""DeconvNet: count, 224x224 contract, parity with the CBR/DCB-layout PyTorch reference, gradients."""

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
from test_segnet import apply_with_pool_indices

import jaxseg


def test_param_count_and_shapes():
  model = jaxseg.create_model('deconvnet', num_classes=21)
  variables, out = abstract_init(model, (1, 224, 224, 3))
  assert n_params(variables['params']) == 251_805_653
  assert out.shape == (1, 224, 224, 21) and out.dtype == jnp.float32
  spec = ('vgg16_bn', {'width': 1.0, 'ceil_mode': True, 'return_indices': True})
  assert model.backbone_spec() == spec
  # Fully convolutional use: any size >= 193, odd ones included, same count.
  model = jaxseg.create_model('deconvnet', num_classes=21, fully_convolutional=True)
  for size in ((193, 193), (225, 257)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == 251_805_653
    assert out.shape == (2, *size, 21)


def test_parity_full_size(torch_module):
  """The paper's network at its 224x224 input, batch of one, eval mode.

  At this size some of the ~1.5M pooling windows hold two values closer than
  float32 rounding, where two correct implementations may pick different
  maxima (a few per image). The reference therefore replays our pooling
  indices, after checking that every window where they differ is such a near
  tie; the outputs must then agree to 1e-4.
  """
  torch = torch_module
  from torch_ref.deconvnet import DeconvNet as TorchDeconvNet
  from torch_ref.segnet import forward_with_indices

  ref = randomize_torch(TorchDeconvNet(num_classes=21), seed=5).eval()
  variables = jaxseg.weights.from_torch('deconvnet', ref.state_dict())
  model = jaxseg.create_model('deconvnet', num_classes=21)
  x = np.random.default_rng(5).standard_normal((1, 224, 224, 3)).astype(np.float32)
  got, indices, _ = apply_with_pool_indices(model, variables, x, train=False)
  del variables
  expected, n_near_ties = forward_with_indices(ref, torch.from_numpy(to_nchw(x)), indices)
  assert n_near_ties < 100
  assert got.shape == (1, 224, 224, 21)
  assert rel_err(got, to_nhwc(expected.numpy())) < 1e-4


@pytest.fixture(scope='module')
def tiny():
  """A 1/16-width DeconvNet, fully convolutional, with its PyTorch twin."""
  pytest.importorskip('torch')
  from torch_ref.deconvnet import DeconvNet as TorchDeconvNet

  ref = randomize_torch(TorchDeconvNet(num_classes=4, width=1 / 16), seed=6)
  kwargs = dict(width=1 / 16, fully_convolutional=True)
  variables = jaxseg.weights.from_torch('deconvnet', torch_state_dict(ref), **kwargs)
  model = jaxseg.create_model('deconvnet', num_classes=4, **kwargs)
  return ref, model, variables


def test_parity_train_mode_and_other_size(tiny):
  ref, model, variables = tiny
  assert any(k.startswith('fc6_deconv') and 'running' in k for k in ref.state_dict())
  # Odd sizes whose fc6/fc7 maps are 3x2: in train mode their BatchNorms normalise 12 values per
  # channel. At 225x203 (2x1 maps, 4 values) that amplified float32 rounding in either framework
  # to ~1e-4 of the output, varying with the CPU's kernels.
  x = np.random.default_rng(6).standard_normal((2, 257, 241, 3)).astype(np.float32)
  got = assert_torch_parity('deconvnet', model, variables, ref, x, train=True)
  assert got.shape == (2, 257, 241, 4)


def test_gradients_reach_every_parameter(tiny):
  _, model, variables = tiny
  x = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
  assert_train_gradients(model, x, (2, 224, 224, 4), variables)


def test_bad_inputs():
  model = jaxseg.create_model('deconvnet', num_classes=2, width=1 / 16)
  init = lambda m, shape: jax.eval_shape(
    lambda: m.init(jax.random.key(0), jnp.zeros(shape), train=False)
  )
  with pytest.raises(
    ValueError, match=r'expects 224x224 inputs .* got 200x224.*fully_convolutional=True'
  ):
    init(model, (1, 200, 224, 3))
  fcn = jaxseg.create_model('deconvnet', num_classes=2, width=1 / 16, fully_convolutional=True)
  with pytest.raises(ValueError, match=r'H and W >= 193, got \(192, 300\)'):
    init(fcn, (1, 192, 300, 3))
  with pytest.raises(ValueError, match='expects 3 input channels'):
    init(model, (1, 224, 224, 1))
  variables = init(model, (2, 224, 224, 3))
  with pytest.raises(ValueError, match='batch of at least 2'):
    jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3)), train=True, mutable=['batch_stats']),
      variables,
    )
