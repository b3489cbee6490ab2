"""Hypercolumn: count, shapes, features from the named VGG16 layers, gradients, bad inputs.

There is no reference PyTorch implementation to compare with; the head is
checked against its definition on the backbone's own feature maps instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import abstract_init, assert_train_gradients, n_params

import jaxseg
from jaxseg.backbones.vgg import VGG16
from jaxseg.ops import resize_bilinear

# VGG16 convolutions 14,714,688 + fc6 102,764,544 + fc7 16,781,312
# + 1x1 score layers on pool2 (128 ch), conv4_3 (512) and fc7 (4096), 21 classes each.
COUNT_21 = 14_714_688 + 102_764_544 + 16_781_312 + (128 + 512 + 4096) * 21 + 3 * 21


def test_param_count_and_shapes():
  model = jaxseg.create_model('hypercolumn', num_classes=21)
  for size in ((224, 224), (225, 201), (193, 193)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == COUNT_21 == 134_360_063
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32
  name, kwargs = model.backbone_spec()
  backbone = jaxseg.create_backbone(name, **kwargs)
  theirs = jax.eval_shape(
    lambda: backbone.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  ours = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  shapes = lambda t: jax.tree_util.tree_map(lambda a: a.shape, t)
  assert shapes(ours['params']['backbone']) == shapes(theirs['params'])


def test_features_come_from_the_named_layers():
  """logits == sum over layers of upsample(1x1 conv(VGG16 feature map of that layer))."""
  layer_names = ('conv1_2', 'pool2', 'conv4_3', 'pool5')
  model = jaxseg.create_model('hypercolumn', num_classes=3, layers=layer_names, width=1 / 8)
  x = jax.random.normal(jax.random.key(0), (2, 37, 29, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
  params = variables['params']
  assert set(params) == {'backbone'} | {f'score_{n}' for n in layer_names}
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  feats = VGG16(ceil_mode=True, width=1 / 8).apply({'params': params['backbone']}, x)
  expected = 0.0
  for n in layer_names:
    k, b = params[f'score_{n}']['kernel'], params[f'score_{n}']['bias']
    score = jnp.einsum('nhwc,cd->nhwd', feats[n], k[0, 0], precision='highest') + b
    expected = expected + resize_bilinear(score, (37, 29))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter():
  model = jaxseg.create_model('hypercolumn', num_classes=3, width=1 / 16)  # pool2, conv4_3, fc7
  x = jax.random.normal(jax.random.key(0), (2, 193, 195, 3))
  assert_train_gradients(model, x, (2, 193, 195, 3))


def test_bad_inputs():
  init = lambda m, shape: jax.eval_shape(
    lambda: m.init(jax.random.key(0), jnp.zeros(shape), train=False)
  )
  model = jaxseg.create_model('hypercolumn', num_classes=2)
  with pytest.raises(ValueError, match=r'needs H and W >= 193, got \(192, 224\)'):
    init(model, (1, 192, 224, 3))
  with pytest.raises(ValueError, match='expects 3 input channels'):
    init(model, (1, 224, 224, 1))
  bad = jaxseg.create_model('hypercolumn', num_classes=2, layers=('pool2', 'conv4'))
  with pytest.raises(ValueError, match=r"subset of .*conv4_3.*got \('pool2', 'conv4'\)"):
    init(bad, (1, 64, 64, 3))
