"""DeepLab-LargeFOV: exact parameter count, parity with the Caffe-layout PyTorch model, odd sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  abstract_init,
  assert_every_gradient_nonzero,
  assert_torch_parity,
  n_params,
  numpy_init,
  randomize_torch,
)

import jaxseg


def test_param_count_and_shapes():
  model = jaxseg.create_model('deeplab_v1', num_classes=21)
  for size in ((65, 97), (321, 321), (8, 9)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == 20_505_429
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32
  # The backbone contract: backbone_spec rebuilds exactly variables['params']['backbone'].
  name, kwargs = model.backbone_spec()
  backbone = jaxseg.create_backbone(name, **kwargs)
  x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
  bvars = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), x)
  full = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert jax.tree_util.tree_structure(bvars['params']) == jax.tree_util.tree_structure(
    full['params']['backbone']
  )


def test_stride_8_score_map():
  """Caffe pooling arithmetic: 321 -> 161 -> 81 -> 41 (and odd 65 -> 33 -> 17 -> 9)."""
  backbone = jaxseg.create_backbone('vgg16_deeplab', width=0.125)
  for size, want in ((321, 41), (65, 9), (64, 9)):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), x)
    out = jax.eval_shape(lambda v, x: backbone.apply(v, x), v, x)['out']
    assert out.shape[1:3] == (want, want)


def test_parity_with_pytorch_largefov(torch_module):
  from torch_ref.deeplab_v1 import DeepLabLargeFOV as TorchLargeFOV

  ref = randomize_torch(TorchLargeFOV(n_class=5), seed=1).eval()
  variables = jaxseg.weights.from_torch('deeplab_v1', ref.state_dict())  # num_classes from fc8
  model = jaxseg.create_model('deeplab_v1', num_classes=5)
  x = np.random.default_rng(0).standard_normal((2, 37, 45, 3)).astype(np.float32)
  got = assert_torch_parity('deeplab_v1', model, variables, ref, x)
  assert got.shape == (2, 37, 45, 5)
  exported = jaxseg.weights.to_torch('deeplab_v1', variables)
  assert sorted(exported) == sorted(ref.state_dict())
  for k, v in ref.state_dict().items():
    np.testing.assert_array_equal(exported[k], v.numpy())


def test_tiny_forward_backward():
  model = jaxseg.create_model('deeplab_v1', num_classes=3, width=0.0625)
  x = jax.random.normal(jax.random.key(1), (2, 19, 23, 3))
  variables = numpy_init(model, x)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert out.shape == (2, 19, 23, 3) and bool(jnp.all(jnp.isfinite(out)))

  def loss(params):
    y = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)})
    return jnp.mean(jax.nn.logsumexp(y, axis=-1) - y[..., 0])

  assert_every_gradient_nonzero(jax.jit(jax.grad(loss))(variables['params']))


def test_bad_inputs():
  model = jaxseg.create_model('deeplab_v1', num_classes=2, width=0.0625)
  with pytest.raises(ValueError, match='H and W >= 8'):
    model.init(jax.random.key(0), jnp.zeros((1, 7, 32, 3)), train=False)
  with pytest.raises(ValueError, match='3 input channels'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 4)), train=False)
  with pytest.raises(ValueError, match='rank 4'):
    model.init(jax.random.key(0), jnp.zeros((16, 16, 3)), train=False)
