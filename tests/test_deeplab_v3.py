"""DeepLabv3 / DeepLabv3+: counts, parity (torchvision parts; jfzhang95 layout), shapes, gradients, bad input."""

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
  torchvision_resnet_multigrid,
)
from test_xception import separable, xception65_count

import jaxseg


def count(name, **kwargs):
  model = jaxseg.create_model(name, **kwargs)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return n_params(
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)['params']
  )


def test_param_counts(torch_module):
  from torch_ref.deeplab_v3plus import DeepLabV3Plus as TorchDeepLabV3Plus

  # torchvision's deeplabv3_resnet101 (58,630,997) minus the 3x3 conv + BN of its head the paper's model lacks.
  assert count('deeplab_v3', num_classes=21) == 58_630_997 - (9 * 256 * 256 + 2 * 256)
  ref = TorchDeepLabV3Plus(21)
  jf = dict(backbone='resnet101', separable=False)
  assert (
    count('deeplab_v3plus', num_classes=21, **jf)
    == sum(p.numel() for p in ref.parameters())
    == 59_344_309
  )
  # Xception-65 + separable ASPP + 48-channel reduction + two separable 3x3 convs + classifier.
  # 1x1, three separable, pool, project, and the BNs of 1x1, pool and project.
  aspp = 2048 * 256 + 3 * separable(2048, 256) + 2048 * 256 + 1280 * 256 + 3 * 2 * 256
  decoder = 256 * 48 + 2 * 48 + separable(304, 256) + separable(256, 256) + 256 * 21 + 21
  assert (
    count('deeplab_v3plus', num_classes=21) == xception65_count() + aspp + decoder == 41_055_413
  )


@pytest.mark.parametrize(
  'name,kwargs',
  [
    ('deeplab_v3', {}),
    ('deeplab_v3', {'output_stride': 8, 'backbone': 'resnet50'}),
    ('deeplab_v3plus', {}),
    ('deeplab_v3plus', {'backbone': 'mobilenet_v2', 'output_stride': 8}),
  ],
)
def test_output_shapes(name, kwargs):
  model = jaxseg.create_model(name, num_classes=5, **kwargs)
  for size in ((65, 71), (97, 64)):
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    out, _ = jax.eval_shape(
      functools.partial(model.init_with_output, train=False), jax.random.key(0), x
    )
    assert out.shape == (2, *size, 5) and out.dtype == jnp.float32


def test_parity_deeplab_v3_with_torchvision_parts(torch_module):
  """ResNet-50 at OS 16 with multi-grid (1, 2, 4) + torchvision's ASPP(6, 12, 18) + 1x1 classifier."""
  torch = torch_module
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

  resnet = torchvision_resnet_multigrid(50)
  head = torch.nn.Sequential(ASPP(2048, [6, 12, 18]), torch.nn.Conv2d(256, 5, 1))
  ref = DeepLabV3(IntermediateLayerGetter(resnet, {'layer4': 'out'}), head)
  ref = randomize_torch(ref, seed=7).eval()
  kwargs = dict(backbone='resnet50')
  variables = jaxseg.weights.from_torch('deeplab_v3', ref.state_dict(), **kwargs)
  model = jaxseg.create_model('deeplab_v3', num_classes=5, **kwargs)
  x = np.random.default_rng(0).standard_normal((1, 65, 71, 3)).astype(np.float32)
  with torch.no_grad():
    expected = to_nhwc(ref(torch.from_numpy(to_nchw(x)))['out'].numpy())
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert got.shape == expected.shape == (1, 65, 71, 5)
  assert rel_err(got, expected) < 1e-4


JF = dict(backbone='resnet101', separable=False, aspp_dropout=0.5, decoder_dropout=(0.5, 0.1))


@pytest.mark.parametrize('depth,output_stride', [(101, 16), (50, 8)])
def test_parity_deeplab_v3plus_jfzhang95_layout(torch_module, depth, output_stride):
  """OS 16 with ResNet-101 (the paper's); OS 8 (every layer3 block at rate 2) with ResNet-50, cheaper."""
  torch = torch_module
  from torch_ref.deeplab_v3plus import DeepLabV3Plus as TorchDeepLabV3Plus

  ref = randomize_torch(TorchDeepLabV3Plus(4, depth=depth, output_stride=output_stride), seed=8)
  kwargs = {**JF, 'backbone': f'resnet{depth}', 'output_stride': output_stride}
  # num_classes read from the checkpoint
  variables = jaxseg.weights.from_torch('deeplab_v3plus', ref.state_dict(), **kwargs)
  model = jaxseg.create_model('deeplab_v3plus', num_classes=4, **kwargs)
  x = np.random.default_rng(1).standard_normal((1, 49, 43, 3)).astype(np.float32)
  ref.eval()
  with torch.no_grad():
    expected = to_nhwc(ref(torch.from_numpy(to_nchw(x))).numpy())
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert got.shape == expected.shape == (1, 49, 43, 4)
  assert rel_err(got, expected) < 1e-4

  exported = jaxseg.weights.to_torch('deeplab_v3plus', variables)
  assert set(exported) == set(ref.state_dict())
  # Train-mode BN parity of the same ResNet + ASPP is tested on deeplabv3_resnet50 (test_torchvision_seg);
  # ResNet-101 in train mode here would double this test's compile time.


def test_gradients_reach_every_parameter():
  """DeepLabv3+ with separable ASPP/decoder on a 1-middle-block Xception: covers every Xception leaf too."""
  tiny = {'middle_repeats': 1}
  model = jaxseg.create_model('deeplab_v3plus', num_classes=3, features=16, backbone_kwargs=tiny)
  x = jax.random.normal(jax.random.key(0), (2, 33, 31, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)

  def loss(params):
    # Eval-mode BN keeps the traced graph small (fast compile); gradients still reach scale and bias.
    out = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=False)
    return jnp.mean(jnp.tanh(out) ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert_every_gradient_nonzero(grads)


def test_backbone_spec_builds_the_embedded_backbone():
  model = jaxseg.create_model('deeplab_v3plus', num_classes=3, backbone='mobilenet_v2')
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)[
    'params'
  ]
  name, kwargs = model.backbone_spec()
  backbone = jaxseg.create_backbone(name, **kwargs)
  bparams = jax.eval_shape(functools.partial(backbone.init, train=False), jax.random.key(0), x)[
    'params'
  ]
  assert jax.tree_util.tree_structure(bparams) == jax.tree_util.tree_structure(params['backbone'])
  assert kwargs == {'output_stride': 16, 'last_conv': False}
  assert jaxseg.create_model('deeplab_v3', num_classes=3).backbone_spec() == (
    'resnet101',
    {'output_stride': 16, 'multi_grid': (1, 2, 4)},
  )


def test_bad_inputs():
  def init(model, shape=(1, 64, 64, 3)):
    return jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape)
    )

  with pytest.raises(ValueError, match='output_stride must be 16 or 8'):
    init(jaxseg.create_model('deeplab_v3', num_classes=2, output_stride=32))
  with pytest.raises(ValueError, match=r'DeepLabV3Plus needs H and W >= 16, got \(12, 64\)'):
    init(jaxseg.create_model('deeplab_v3plus', num_classes=2), (1, 12, 64, 3))
  with pytest.raises(ValueError, match="backbone must be one of .*got 'vgg16'"):
    init(jaxseg.create_model('deeplab_v3plus', num_classes=2, backbone='vgg16'))
  with pytest.raises(ValueError, match="DeepLabV3 backbone must be 'resnet50' or 'resnet101'"):
    init(jaxseg.create_model('deeplab_v3', num_classes=2, backbone='xception65'))


JF_XCEPTION = dict(
  backbone='xception65',
  backbone_kwargs={'variant': 'jfzhang95'},
  **{k: v for k, v in JF.items() if k != 'backbone'},
)


def test_param_counts_xception_jfzhang95_layout(torch_module):
  from torch_ref.xception import DeepLabV3PlusXception

  # Plain ASPP (1x1, three 3x3, pooling, projection + BNs) and decoder (two 3x3 + BNs); its decoder
  # reduces 128 stride-4 channels (relu(block1)), the paper variant's 256.
  plain_head = (
    2048 * 256
    + 3 * 9 * 2048 * 256
    + 2048 * 256
    + 1280 * 256
    + 6 * 2 * 256
    + 304 * 256 * 9
    + 256 * 256 * 9
    + 4 * 256
  )
  for variant, low, total in (('jfzhang95', 128, 54_705_317), ('paper', 256, 54_711_461)):
    ref = DeepLabV3PlusXception(21, variant=variant)
    kwargs = dict(JF_XCEPTION, backbone_kwargs={'variant': variant})
    expected = xception65_count() + plain_head + low * 48 + 2 * 48 + 256 * 21 + 21
    assert (
      count('deeplab_v3plus', num_classes=21, **kwargs)
      == sum(p.numel() for p in ref.parameters())
      == expected
      == total
    )


@pytest.mark.parametrize('output_stride', [16, 8])
def test_parity_deeplab_v3plus_xception_jfzhang95_layout(torch_module, output_stride):
  """jfzhang95's DeepLab(backbone='xception'): its keys and its computation (variant='jfzhang95')."""
  torch = torch_module
  from torch_ref.xception import DeepLabV3PlusXception

  ref = randomize_torch(DeepLabV3PlusXception(4, output_stride, 'jfzhang95'), seed=9).eval()
  kwargs = dict(JF_XCEPTION, output_stride=output_stride)
  variables = jaxseg.weights.from_torch('deeplab_v3plus', ref.state_dict(), **kwargs)
  model = jaxseg.create_model('deeplab_v3plus', num_classes=4, **kwargs)
  x = np.random.default_rng(3).standard_normal((1, 65, 71, 3)).astype(np.float32)
  with torch.no_grad():
    xt = torch.from_numpy(to_nchw(x))
    expected = to_nhwc(ref(xt).numpy())
    out, low = (to_nhwc(t.numpy()) for t in ref.backbone(xt))

  def apply(variables, x):
    is_backbone = lambda mdl, method: mdl.name == 'backbone' and method == '__call__'
    return model.apply(
      variables, x, train=False, capture_intermediates=is_backbone, mutable=['intermediates']
    )

  got, state = jax.jit(apply)(variables, x)
  (feats,) = state['intermediates']['backbone']['__call__']
  assert feats['low_level'].shape == low.shape == (1, 17, 18, 128)
  assert feats['out'].shape == out.shape == (1, *((5, 5) if output_stride == 16 else (9, 9)), 2048)
  assert rel_err(feats['low_level'], low) < 1e-4
  assert rel_err(feats['out'], out) < 1e-4
  assert got.shape == expected.shape == (1, 65, 71, 4)
  assert rel_err(got, expected) < 1e-4

  exported = jaxseg.weights.to_torch('deeplab_v3plus', variables)
  sd = ref.state_dict()
  assert set(exported) == set(sd)
  assert all(
    np.array_equal(exported[k], sd[k].numpy()) for k in sd if not k.endswith('num_batches_tracked')
  )
