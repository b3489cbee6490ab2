"""MobileNetV2 backbone: parity with torchvision (eval, one train step, dilated), counts, strides."""

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
from test_torchvision_seg import assert_running_stats_close

import jaxseg
from jaxseg.backbones.mobilenet_v2 import MobileNetV2

# torchvision's mobilenet_v2 has 3,504,872 parameters, 1,281,000 of them in the ImageNet classifier.
COUNT = 3_504_872 - (1280 * 1000 + 1000)
RETURNED = (3, 6, 13, 17, 18)


def torch_features(ref, x):
  out = {}
  for i, layer in enumerate(ref.features):
    x = layer(x)
    if i in RETURNED:
      out[f'features{i}'] = to_nhwc(x.detach().numpy())
  return out


def test_param_count():
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  model = jaxseg.create_backbone('mobilenet_v2')
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert n_params(variables['params']) == COUNT
  no_last = jax.eval_shape(
    functools.partial(MobileNetV2(last_conv=False).init, train=False), jax.random.key(0), x
  )
  assert n_params(no_last['params']) == COUNT - (320 * 1280 + 2 * 1280)


@pytest.mark.parametrize(
  'output_stride,size,expected',
  [(32, (65, 71), (17, 9, 5, 3)), (16, (97, 64), (25, 13, 7, 7)), (8, (65, 71), (17, 9, 9, 9))],
)
def test_output_strides(output_stride, size, expected):
  model = jaxseg.create_backbone('mobilenet_v2', output_stride=output_stride)
  x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  feats, _ = jax.eval_shape(
    functools.partial(model.init_with_output, train=False), jax.random.key(0), x
  )
  for k, h, c in zip(
    ('features3', 'features6', 'features13', 'features17'), expected, (24, 32, 96, 320), strict=True
  ):
    assert feats[k].shape[0] == 2 and feats[k].shape[1] == h and feats[k].shape[3] == c
  assert (
    feats['low_level'].shape == feats['features3'].shape
    and feats['out'].shape == feats['features17'].shape
  )
  assert feats['features18'].shape == feats['features17'].shape[:3] + (1280,)


@pytest.mark.parametrize('output_stride', [32, 16])
def test_parity_with_torchvision(torch_module, output_stride):
  torch = torch_module
  import torchvision

  ref = torchvision.models.mobilenet_v2(weights=None)
  # Dilate torchvision's last stage by hand: features.14 unstrided, 15-17 at rate 2.
  if output_stride == 16:
    ref.features[14].conv[1][0].stride = (1, 1)
    for i in (15, 16, 17):
      dw = ref.features[i].conv[1][0]
      dw.dilation, dw.padding = (2, 2), (2, 2)
  ref = randomize_torch(ref, seed=output_stride)
  sd = torch_state_dict(ref)
  variables = jaxseg.weights.from_torch('mobilenet_v2', sd, output_stride=output_stride)
  model = jaxseg.create_backbone('mobilenet_v2', output_stride=output_stride)
  x = np.random.default_rng(0).standard_normal((2, 65, 71, 3)).astype(np.float32)
  xt = torch.from_numpy(to_nchw(x))

  ref.eval()
  with torch.no_grad():
    expected = torch_features(ref, xt)
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  for k, v in expected.items():
    assert got[k].shape == v.shape, k
    assert rel_err(got[k], v) < 1e-4, k
  assert got['features17'].shape[1:3] == ((3, 3) if output_stride == 32 else (5, 5))

  ref.train()
  with torch.no_grad():
    expected = torch_features(ref, xt)
  got, updated = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
    variables, x
  )
  for k, v in expected.items():
    assert rel_err(got[k], v) < 1e-4, k
  new_sd = jaxseg.weights.to_torch('mobilenet_v2', {'params': variables['params'], **updated})
  assert set(new_sd) == {k for k in ref.state_dict() if not k.startswith('classifier.')}
  assert_running_stats_close(new_sd, ref.state_dict(), skip=('classifier.',), expected_layers=52)


def test_gradients_reach_every_parameter():
  model = MobileNetV2(width_mult=0.25, output_stride=8)
  x = jax.random.normal(jax.random.key(0), (2, 19, 17, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)

  def loss(params):
    # Eval-mode BN keeps the traced graph small (fast compile); gradients still reach scale and bias.
    feats = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=False)
    return sum(
      jnp.mean(jnp.tanh(feats[k]) ** 2)
      for k in ('features3', 'features6', 'features13', 'features18')
    )

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert_every_gradient_nonzero(grads)


def test_bad_inputs():
  def init(model, x):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

  with pytest.raises(ValueError, match='output_stride must be 32, 16 or 8, got 4'):
    init(MobileNetV2(output_stride=4), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match=r'needs H and W >= 32, got \(31, 64\)'):
    init(MobileNetV2(), jnp.zeros((1, 31, 64, 3)))
