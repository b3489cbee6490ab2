"""DeepLab v2: exact parameter count, parity (eval + one train step) with torchvision ResNet + ASPP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  abstract_init,
  assert_every_gradient_nonzero,
  n_params,
  randomize_torch,
  rel_err,
  to_nchw,
  to_nhwc,
  torch_state_dict,
)

import jaxseg


def test_param_count_and_shapes():
  model = jaxseg.create_model('deeplab_v2', num_classes=21)
  for size in ((65, 97), (321, 321)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == 44_048_532
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32
  assert model.backbone_spec() == ('resnet101', {'output_stride': 8, 'base_width': 64})


def torch_deeplab_v2(torch, classes, layers):
  """torchvision ResNet (dilated, OS 8) + ASPP with keys backbone.* and aspp.c0..c3."""
  from torch import nn
  from torchvision.models.resnet import Bottleneck, ResNet

  class ASPP(nn.Module):
    def __init__(self):
      super().__init__()
      for i, r in enumerate((6, 12, 18, 24)):
        self.add_module(f'c{i}', nn.Conv2d(2048, classes, 3, padding=r, dilation=r))

    def forward(self, x):
      return sum(getattr(self, f'c{i}')(x) for i in range(4))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = ResNet(
        Bottleneck, list(layers), replace_stride_with_dilation=[False, True, True]
      )
      del self.backbone.fc
      self.aspp = ASPP()

    def forward(self, x):
      b = self.backbone
      h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
      h = b.layer4(b.layer3(b.layer2(b.layer1(h))))
      return nn.functional.interpolate(
        self.aspp(h), x.shape[2:], mode='bilinear', align_corners=True
      )

  return Net()


def test_parity_eval_and_train_step(torch_module):
  torch = torch_module
  ref = randomize_torch(torch_deeplab_v2(torch, 4, (1, 1, 1, 1)), seed=5)
  sd = torch_state_dict(ref)
  kwargs = dict(stage_sizes=(1, 1, 1, 1))
  variables = jaxseg.weights.from_torch('deeplab_v2', sd, **kwargs)  # num_classes from aspp.c0
  model = jaxseg.create_model('deeplab_v2', num_classes=4, **kwargs)
  x = np.random.default_rng(0).standard_normal((2, 33, 27, 3)).astype(np.float32)

  def run(v, x):
    def loss(p):
      y, upd = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
      return jnp.mean(jnp.square(y)), (y, upd)

    grads, (y_train, upd) = jax.grad(loss, has_aux=True)(v['params'])
    return model.apply(v, x, train=False), y_train, upd, grads

  y_eval, y_train, updates, grads = jax.jit(run)(variables, x)
  with torch.no_grad():
    expected_eval = to_nhwc(ref.eval()(torch.from_numpy(to_nchw(x))).numpy())
    expected_train = to_nhwc(ref.train()(torch.from_numpy(to_nchw(x))).numpy())
  assert y_eval.shape == (2, 33, 27, 4)
  assert rel_err(y_eval, expected_eval) < 1e-4
  assert rel_err(y_train, expected_train) < 1e-4
  stats = jaxseg.weights.from_torch('deeplab_v2', ref.state_dict(), **kwargs)['batch_stats']
  flat_new = jax.tree_util.tree_leaves_with_path(updates['batch_stats'])
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(stats))
  assert len(flat_new) == len(flat_ref)
  for path, a in flat_new:
    assert rel_err(a, flat_ref[path]) < 1e-4, jax.tree_util.keystr(path)
  assert_every_gradient_nonzero(grads)
  exported = jaxseg.weights.to_torch('deeplab_v2', variables)
  assert set(exported) == set(sd)


def test_bad_inputs():
  model = jaxseg.create_model('deeplab_v2', num_classes=2)
  with pytest.raises(ValueError, match='H and W >= 8'):
    model.init(jax.random.key(0), jnp.zeros((1, 7, 64, 3)), train=False)
  with pytest.raises(ValueError, match="backbone must be 'resnet50' or 'resnet101'"):
    jaxseg.create_model('deeplab_v2', num_classes=2, backbone='vgg16').init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False
    )
