"""ResNet-50/101 backbones: parity with torchvision (eval and one train step), output strides, counts."""

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
  torchvision_resnet_multigrid,
)

import jaxseg
from jaxseg.backbones.resnet import ResNet

FC = 2048 * 1000 + 1000  # torchvision's ImageNet classifier, not part of the backbone
# torchvision counts with the classifier: resnet50 25,557,032, resnet101 44,549,160.
COUNTS = {'resnet50': 25_557_032 - FC, 'resnet101': 44_549_160 - FC}
# PSPNet's deep stem: 3x3 convs 3->64 (s2), 64->64, 64->128 with BN instead of the 7x7 3->64 conv + BN,
# and layer1.0's conv1 and downsample now read 128 instead of 64 channels.
DEEP_STEM_DELTA = (
  (27 * 64 + 128 + 576 * 64 + 128 + 576 * 128 + 256) - (147 * 64 + 128) + 64 * 64 + 64 * 256
)
STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')


def torch_features(ref, x):
  x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
  out = {'stem': x}
  for name in STAGES[1:]:
    x = getattr(ref, name)(x)
    out[name] = x
  return out


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_param_count(name):
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  for kwargs, count in (({}, COUNTS[name]), ({'deep_stem': True}, COUNTS[name] + DEEP_STEM_DELTA)):
    model = jaxseg.create_backbone(name, **kwargs)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert n_params(variables['params']) == count


@pytest.mark.parametrize(
  'output_stride,size,expected',
  [
    (32, (65, 71), {'stem': 17, 'layer1': 17, 'layer2': 9, 'layer3': 5, 'layer4': 3}),
    (16, (97, 64), {'stem': 25, 'layer1': 25, 'layer2': 13, 'layer3': 7, 'layer4': 7}),
    (8, (65, 71), {'stem': 17, 'layer1': 17, 'layer2': 9, 'layer3': 9, 'layer4': 9}),
  ],
)
def test_output_strides(output_stride, size, expected):
  model = jaxseg.create_backbone('resnet101', output_stride=output_stride, multi_grid=(1, 2, 4))
  x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  feats = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], x)
  channels = {'stem': 64, 'layer1': 256, 'layer2': 512, 'layer3': 1024, 'layer4': 2048}
  for k, h in expected.items():
    assert feats[k].shape[:3] == (2, h, feats[k].shape[2]) and feats[k].shape[3] == channels[k]
  assert feats['layer4'].shape[1] == expected['layer4']


def test_dilation_schedule_matches_torchvision(torch_module):
  import torchvision

  for os_, dilate in ((16, [False, False, True]), (8, [False, True, True])):
    ref = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=dilate)
    ours = ResNet(stage_sizes=(3, 4, 23, 3), output_stride=os_)._dilations()
    for i in range(4):
      layer = getattr(ref, f'layer{i + 1}')
      assert [blk.conv2.dilation[0] for blk in layer] == ours[i]
      assert [blk.conv2.padding[0] for blk in layer] == ours[i]
  grid = ResNet(stage_sizes=(3, 4, 23, 3), output_stride=16, multi_grid=(1, 2, 4))._dilations()
  assert grid[3] == [2, 4, 8]
  assert ResNet(output_stride=8, multi_grid=(1, 2, 1))._dilations()[3] == [4, 8, 4]
  # PSPNet / jfzhang95 rule: the first block of a dilated stage is dilated too.
  assert ResNet(output_stride=8, dilate_first_block=True)._dilations() == [
    [1] * 3,
    [1] * 4,
    [2] * 6,
    [4] * 3,
  ]
  assert ResNet(output_stride=16, dilate_first_block=True)._dilations()[2:] == [[1] * 6, [2] * 3]
  assert ResNet(output_stride=32, dilate_first_block=True)._dilations() == ResNet()._dilations()


@pytest.fixture(scope='module')
def torch_resnet50_os8(torch_module):
  import torchvision

  ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
  return randomize_torch(ref, seed=1)


def test_parity_resnet50_os8_eval_and_train(torch_module, torch_resnet50_os8):
  torch = torch_module
  ref = torch_resnet50_os8
  sd = torch_state_dict(ref)
  variables = jaxseg.weights.from_torch('resnet50', sd, output_stride=8)
  model = jaxseg.create_backbone('resnet50', output_stride=8)
  x = np.random.default_rng(0).standard_normal((2, 65, 71, 3)).astype(np.float32)
  xt = torch.from_numpy(to_nchw(x))

  ref.eval()
  with torch.no_grad():
    expected = {k: to_nhwc(v.numpy()) for k, v in torch_features(ref, xt).items()}
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  for k in STAGES:
    assert got[k].shape == expected[k].shape, k
    assert rel_err(got[k], expected[k]) < 1e-4, k
  assert got['layer4'].shape == (2, 9, 9, 2048)

  # One train-mode forward: batch statistics and the updated running stats.
  ref.train()
  with torch.no_grad():
    expected = {k: to_nhwc(v.numpy()) for k, v in torch_features(ref, xt).items()}
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  got, updated = step(variables, x)
  assert rel_err(got['layer4'], expected['layer4']) < 1e-4
  assert rel_err(got['layer2'], expected['layer2']) < 1e-4
  new_sd = jaxseg.weights.to_torch('resnet50', {'params': variables['params'], **updated})
  for k, v in ref.state_dict().items():
    if k.endswith(('running_mean', 'running_var')):
      assert rel_err(new_sd[k], v.numpy()) < 1e-4, k
  # and the export round trip gives torchvision's keys back (minus fc)
  assert set(new_sd) == {k for k in ref.state_dict() if not k.startswith('fc.')}


def test_parity_resnet101_os16_multigrid(torch_module):
  """ResNet-101 at output stride 16 with multi-grid (1, 2, 4), against torchvision with layer4 re-dilated."""
  torch = torch_module
  ref = randomize_torch(torchvision_resnet_multigrid(101), seed=2).eval()
  variables = jaxseg.weights.from_torch(
    'resnet101', ref.state_dict(), output_stride=16, multi_grid=(1, 2, 4)
  )
  model = jaxseg.create_backbone('resnet101', output_stride=16, multi_grid=(1, 2, 4))
  x = np.random.default_rng(1).standard_normal((1, 49, 39, 3)).astype(np.float32)
  with torch.no_grad():
    expected = to_nhwc(torch_features(ref, torch.from_numpy(to_nchw(x)))['layer4'].numpy())
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)['layer4']
  assert got.shape == expected.shape == (1, 4, 3, 2048)
  assert rel_err(got, expected) < 1e-4


def test_gradients_reach_every_parameter():
  model = ResNet(
    stage_sizes=(1, 1, 2, 2), base_width=4, output_stride=8, deep_stem=True, multi_grid=(1, 2)
  )
  x = jax.random.normal(jax.random.key(0), (2, 24, 20, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)

  def loss(params):
    feats, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    return sum(jnp.mean(jnp.tanh(f) ** 2) for f in feats.values())

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert_every_gradient_nonzero(grads)


def test_bad_inputs():
  x = jnp.zeros((1, 64, 64, 3))
  with pytest.raises(ValueError, match='output_stride must be 32, 16 or 8, got 4'):
    jaxseg.create_backbone('resnet50', output_stride=4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r'needs H and W >= 16, got \(64, 12\)'):
    jaxseg.create_backbone('resnet50', output_stride=16).init(
      jax.random.key(0), jnp.zeros((1, 64, 12, 3))
    )
  with pytest.raises(ValueError, match='multi_grid needs 3 positive unit rates'):
    jaxseg.create_backbone('resnet50', multi_grid=(1, 2)).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='3 input channels'):
    jaxseg.create_backbone('resnet50').init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))


def test_bfloat16_features():
  model = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), base_width=4)(
    dtype=jnp.bfloat16, output_stride=16
  )
  x = jnp.ones((1, 33, 33, 3))
  feats, _ = jax.eval_shape(
    functools.partial(model.init_with_output, train=False), jax.random.key(0), x
  )
  assert feats['layer4'].dtype == jnp.bfloat16 and feats['layer4'].shape == (1, 3, 3, 128)
