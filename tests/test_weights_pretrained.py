"""init_backbone (ImageNet checkpoints into a model's backbone) and load_pretrained (class-count changes)."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize_torch, rel_err, to_nchw

import jaxseg
from jaxseg import layers
from jaxseg.backbones.vgg import VGG16
from jaxseg.weights import (
  WeightsError,
  init_backbone,
  load_pretrained,
  save_checkpoint,
  to_torch,
)
from jaxseg.weights.core import target_shapes


def fake_variables(model, input_shape, seed=0):
  """Distinct random values per leaf without running model.init (no forward pass, no big RNG)."""
  shapes = target_shapes(model, input_shape)
  rng = np.random.default_rng(seed)

  def fill(s):
    if s.size > 10_000_000:  # only fc6/fc7, which the tests overwrite: lazily allocated zeros
      return np.zeros(s.shape, s.dtype)
    return rng.standard_normal(s.shape, dtype=np.float32)

  return {
    k: v for k, v in jax.tree_util.tree_map(fill, shapes).items() if k in ('params', 'batch_stats')
  }


def leaves_with_paths(tree):
  return {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


class TinySegBN(nn.Module):
  """A model on the VGG16-BN backbone with a 1x1 head: exercises batch_stats in init_backbone."""

  num_classes: int = 2

  def backbone_spec(self):
    return 'vgg16_bn', {}

  @nn.compact
  def __call__(self, x, *, train):
    feats = VGG16(batch_norm=True, name='backbone')(x, train=train)
    return layers.Conv2d(self.num_classes, 1, name='head')(feats['pool5'])


def test_imagenet_vgg16_into_fcn_backbone_fc6_equals_linear(torch_module):
  """torchvision VGG-16 -> FCN's backbone; its fc6 conv equals classifier[0] on the flattened pool5.

  FCN's backbone differs from torchvision's only in conv1_1's padding (100) and ceil-mode pooling.
  Applying the same variables with padding 1 at 224x224 (where ceil and floor pooling agree and
  pool5 is exactly 7x7, so torchvision's adaptive avgpool is the identity), the 7x7 VALID fc6 sees
  the whole pool5: its single output position must equal the Linear applied to the (C, H, W)
  flattened pool5. A wrong reshape order (e.g. HWC) or a transposed kernel would not.
  """
  torch = torch_module
  import torchvision

  torch.manual_seed(0)
  tv = torchvision.models.vgg16(weights=None).eval()
  with torch.no_grad():  # torchvision initialises biases to 0: make them matter
    g = torch.Generator().manual_seed(1)
    for name, p in tv.named_parameters():
      if name.endswith('bias'):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))

  model = jaxseg.create_model('fcn8s', num_classes=3)
  variables = fake_variables(model, (1, 1, 1, 3))
  head_before = leaves_with_paths({k: v for k, v in variables['params'].items() if k != 'backbone'})
  new, report = init_backbone(model, variables, tv.state_dict())
  assert report.ignored == ('classifier.6.bias', 'classifier.6.weight')
  assert len(report.loaded) == 2 * 15  # 13 convs + fc6 + fc7, weight and bias
  assert (
    leaves_with_paths({k: v for k, v in new['params'].items() if k != 'backbone'}).keys()
    == head_before.keys()
  )
  for k, v in leaves_with_paths(
    {k: v for k, v in new['params'].items() if k != 'backbone'}
  ).items():
    np.testing.assert_array_equal(v, head_before[k], err_msg=f'head changed: {k}')

  name, kwargs = model.backbone_spec()
  assert (name, kwargs) == ('vgg16', dict(first_padding=100, ceil_mode=True, fc='conv', width=1.0))
  backbone = jaxseg.create_backbone(name, **dict(kwargs, first_padding=1))
  x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
  feats = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(
    {'params': new['params']['backbone']}, x
  )
  with torch.no_grad():
    pool5 = tv.avgpool(tv.features(torch.from_numpy(to_nchw(x))))
    fc6 = torch.relu(tv.classifier[0](torch.flatten(pool5, 1))).numpy()
    fc7 = tv.classifier[:5](torch.flatten(pool5, 1)).numpy()
  assert feats['fc6'].shape == (1, 1, 1, 4096)
  assert np.mean(fc6 > 0) > 0.2  # the ReLU leaves plenty to compare
  assert rel_err(np.asarray(feats['fc6']).reshape(1, -1), fc6) < 1e-4
  assert rel_err(np.asarray(feats['fc7']).reshape(1, -1), fc7) < 1e-4

  # Export goes back to torchvision's Linear layout: strict load into a VGG-16 whose 1000-way
  # classifier is dropped reproduces fc7.
  exported = to_torch('vgg16', {'params': new['params']['backbone']})
  assert exported['classifier.0.weight'].shape == (4096, 25088)
  np.testing.assert_array_equal(
    exported['classifier.0.weight'], tv.classifier[0].weight.detach().numpy()
  )
  tv.classifier[6] = torch.nn.Identity()
  # Wipe, then load the export: the module must come back to the same fc7 (this also fails if the
  # converted variables alias the torch tensors' memory, as jnp.asarray of a numpy view can on CPU).
  with torch.no_grad():
    for p in tv.parameters():
      p.zero_()
  tv.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=True)
  with torch.no_grad():
    out = tv(torch.from_numpy(to_nchw(x))).numpy()
  assert rel_err(out, fc7) == 0.0


@pytest.fixture(scope='module')
def vgg16_bn_features(torch_module):
  """torchvision's VGG16-BN feature extractor with random weights and BN statistics."""
  from torchvision.models.vgg import cfgs, make_layers

  torch_module.manual_seed(0)
  ref = torch_module.nn.Module()
  ref.features = make_layers(cfgs['D'], batch_norm=True)
  return randomize_torch(ref, seed=3).eval()


def imagenet_state_dict(features_module):
  """A torchvision vgg16_bn ImageNet-checkpoint-shaped state dict (classifier as lazy zeros)."""
  sd = {k: v.numpy() for k, v in features_module.state_dict().items()}
  for i, shape in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
    sd[f'classifier.{i}.weight'] = np.zeros(shape, np.float32)
    sd[f'classifier.{i}.bias'] = np.zeros(shape[:1], np.float32)
  return sd


def test_init_backbone_with_batchnorm_and_export_round_trip(torch_module, vgg16_bn_features):
  torch = torch_module
  model = TinySegBN()
  variables = fake_variables(model, (1, 32, 32, 3), seed=1)
  head = leaves_with_paths(variables['params']['head'])
  new, report = init_backbone(model, variables, imagenet_state_dict(vgg16_bn_features))
  assert len(report.loaded) == 13 * 6  # conv weight/bias, bn weight/bias/running_mean/running_var
  assert [k for k in report.ignored if not k.endswith('num_batches_tracked')] == [
    f'classifier.{i}.{p}' for i in (0, 3, 6) for p in ('bias', 'weight')
  ]
  for k, v in leaves_with_paths(new['params']['head']).items():
    np.testing.assert_array_equal(v, head[k])
  sd = vgg16_bn_features.state_dict()
  bn = new['batch_stats']['backbone']['conv3_2'][
    'bn'
  ]  # features.18 is conv3_2's BatchNorm (conv 17)
  np.testing.assert_array_equal(bn['mean'], sd['features.18.running_mean'].numpy())
  np.testing.assert_array_equal(bn['var'], sd['features.18.running_var'].numpy())
  np.testing.assert_array_equal(
    new['params']['backbone']['conv3_2']['conv']['kernel'],
    sd['features.17.weight'].numpy().transpose(2, 3, 1, 0),
  )

  # Export -> strict load into a fresh torchvision VGG16-BN feature extractor -> same features.
  from torchvision.models.vgg import cfgs, make_layers

  backbone_vars = {
    'params': new['params']['backbone'],
    'batch_stats': new['batch_stats']['backbone'],
  }
  exported = to_torch('vgg16_bn', backbone_vars)
  fresh = torch.nn.Module()
  fresh.features = make_layers(cfgs['D'], batch_norm=True)
  fresh.load_state_dict(
    {k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()}, strict=True
  )
  fresh.eval()
  x = np.random.default_rng(1).standard_normal((2, 35, 33, 3)).astype(np.float32)
  backbone = jaxseg.create_backbone('vgg16_bn')
  got = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(backbone_vars, x)['pool5']
  with torch.no_grad():
    expected = fresh.features(torch.from_numpy(to_nchw(x))).numpy()
  assert rel_err(to_nchw(got), expected) < 1e-4


def test_init_backbone_errors(vgg16_bn_features):
  model = TinySegBN()
  variables = fake_variables(model, (1, 32, 32, 3))
  sd = imagenet_state_dict(vgg16_bn_features)
  sd['features.18.running_var'] = sd['features.18.running_var'][:5]
  with pytest.raises(
    WeightsError, match=r'features\.18\.running_var: checkpoint has \(5,\), model expects \(256,\)'
  ):
    init_backbone(model, variables, sd)
  # A plain VGG-16 checkpoint is not a VGG16-BN one: every BN tensor is reported missing.
  plain = to_torch('vgg16', fake_variables(jaxseg.create_backbone('vgg16'), (1, 32, 32, 3)))
  with pytest.raises(WeightsError, match=r'(?s)missing keys \(.*features\.1\.running_mean'):
    init_backbone(model, variables, plain)

  class NoSpec(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      return x

  with pytest.raises(ValueError, match='has no backbone_spec'):
    init_backbone(NoSpec(), variables, sd)

  class WrongSpec(TinySegBN):
    def backbone_spec(self):
      return 'vgg16', {}

  with pytest.raises(
    ValueError, match=r"backbone_spec\(\) = \('vgg16', \{\}\) does not build the variables"
  ):
    init_backbone(WrongSpec(), variables, sd)


FCN8S_CLASS_KEYS = [
  'score_fr.bias',
  'score_fr.weight',
  'score_pool3.bias',
  'score_pool3.weight',
  'score_pool4.bias',
  'score_pool4.weight',
  'upscore2.weight',
  'upscore8.weight',
  'upscore_pool4.weight',
]


@pytest.fixture(scope='module')
def fcn8s_voc_checkpoint():
  """A 21-class FCN-8s state dict (tiny width) in the pytorch-fcn layout."""
  model = jaxseg.create_model('fcn8s', num_classes=21, width=0.125)
  return to_torch('fcn8s', fake_variables(model, (1, 32, 32, 3), seed=5))


def test_load_pretrained_reinitialises_exactly_the_classifier(fcn8s_voc_checkpoint, caplog):
  sd = fcn8s_voc_checkpoint
  model = jaxseg.create_model('fcn8s', num_classes=5, width=0.125)
  fresh = fake_variables(model, (1, 32, 32, 3), seed=6)
  with caplog.at_level(logging.WARNING, logger='jaxseg.weights.pretrained'):
    new, report = load_pretrained('fcn8s', fresh, sd, 5, width=0.125)
  assert [r.split(':')[0] for r in report.reinitialized] == FCN8S_CLASS_KEYS
  assert (
    'score_fr.weight: checkpoint (21, 512, 1, 1) -> model (5, 512, 1, 1)' in report.reinitialized
  )
  assert (
    'upscore8.weight: checkpoint (21, 21, 16, 16) -> model (5, 5, 16, 16)' in report.reinitialized
  )
  assert 'score_fr.weight' in caplog.text and '21 classes, model 5' in caplog.text
  assert 're-initialised' in str(report) and 'score_pool3.bias' in str(report)
  assert len(report.loaded) == 2 * 15  # the VGG layers; none of the class-dependent ones
  for name in ('score_fr', 'score_pool4', 'score_pool3', 'upscore8'):
    for leaf, v in new['params'][name].items():
      np.testing.assert_array_equal(v, fresh['params'][name][leaf])  # fresh init kept
  np.testing.assert_array_equal(new['params']['backbone']['fc7']['bias'], sd['fc7.bias'])
  np.testing.assert_array_equal(
    new['params']['backbone']['conv2_1']['kernel'], sd['conv2_1.weight'].transpose(2, 3, 1, 0)
  )
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 20, 20, 3)), train=False), new)
  assert out.shape == (1, 20, 20, 5)


def test_load_pretrained_same_class_count_and_other_mismatches(fcn8s_voc_checkpoint):
  sd = fcn8s_voc_checkpoint
  model = jaxseg.create_model('fcn8s', num_classes=21, width=0.125)
  fresh = fake_variables(model, (1, 32, 32, 3), seed=8)
  new, report = load_pretrained('fcn8s', fresh, sd, 21, width=0.125)
  assert report.reinitialized == () and len(report.loaded) == 2 * 15 + len(FCN8S_CLASS_KEYS)
  np.testing.assert_array_equal(new['params']['score_fr']['bias'], sd['score_fr.bias'])

  small = jaxseg.create_model('fcn8s', num_classes=5, width=0.125)
  small_vars = fake_variables(small, (1, 32, 32, 3))
  bad = dict(sd, **{'fc6.bias': sd['fc6.bias'][:7], 'extra.weight': np.zeros(3, np.float32)})
  with pytest.raises(WeightsError) as e:
    load_pretrained('fcn8s', small_vars, bad, 5, width=0.125)
  msg = str(e.value)
  assert 'fc6.bias: checkpoint has (7,), model expects (512,)' in msg and 'extra.weight' in msg
  assert 'score_fr' not in msg  # the class-count change itself is not an error
  with pytest.raises(ValueError, match=r"variables do not belong to 'fcn8s' with num_classes=5"):
    load_pretrained('fcn8s', fresh, sd, 5, width=0.125)
  with pytest.raises(ValueError, match='is a backbone; use init_backbone'):
    load_pretrained('vgg16', fresh, sd, 5)


def test_converted_checkpoint_directories_as_backbone_weights(tmp_path):
  """`jaxseg convert` output of a backbone, or of a model built on it, initialises a backbone."""
  # A MobileNetV2 backbone checkpoint (with features.18) into DeepLabv3+, which leaves it out.
  mnv2 = jaxseg.create_backbone('mobilenet_v2', width_mult=0.25)
  saved = fake_variables(mnv2, (1, 32, 32, 3), seed=2)
  save_checkpoint(tmp_path / 'mnv2', 'mobilenet_v2', saved, model_kwargs={'width_mult': 0.25})
  model = jaxseg.create_model(
    'deeplab_v3plus', num_classes=3, backbone='mobilenet_v2', backbone_kwargs={'width_mult': 0.25}
  )
  variables = fake_variables(model, (1, 32, 32, 3))
  new, report = init_backbone(model, variables, tmp_path / 'mnv2')
  assert report.omitted == ('features.18.0', 'features.18.1')
  assert report.source == f'{tmp_path / "mnv2"} (converted mobilenet_v2 backbone)'
  got = leaves_with_paths(
    {'params': new['params']['backbone'], 'batch_stats': new['batch_stats']['backbone']}
  )
  want = leaves_with_paths(saved)
  assert set(want) - set(got) == {k for k in want if "['features_18']" in k}
  for k, v in got.items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)

  # The backbone of a converted full model (torchvision FCN-ResNet50) into DeepLab v2.
  fcn = jaxseg.create_model('fcn_resnet50', num_classes=3, base_width=8)
  fcn_vars = fake_variables(fcn, (1, 32, 32, 3), seed=3)
  save_checkpoint(
    tmp_path / 'fcn', 'fcn_resnet50', fcn_vars, num_classes=3, model_kwargs={'base_width': 8}
  )
  v2 = jaxseg.create_model('deeplab_v2', num_classes=5, backbone='resnet50', base_width=8)
  new, report = init_backbone(v2, fake_variables(v2, (1, 32, 32, 3)), str(tmp_path / 'fcn'))
  assert report.omitted == () and report.source.endswith('(backbone of converted fcn_resnet50)')
  got = leaves_with_paths(
    {'params': new['params']['backbone'], 'batch_stats': new['batch_stats']['backbone']}
  )
  want = leaves_with_paths(
    {'params': fcn_vars['params']['backbone'], 'batch_stats': fcn_vars['batch_stats']['backbone']}
  )
  assert got.keys() == want.keys()
  for k, v in got.items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)

  # Any other directory: a file or a converted checkpoint is expected; never "not found".
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'notes.txt').write_text('')
  with pytest.raises(ValueError) as e:
    init_backbone(model, variables, tmp_path / 'run')
  assert str(e.value) == (
    f'{tmp_path / "run"} is a directory, but a weights file (.pth/.pt, .safetensors or .npz) or a '
    'converted checkpoint directory (with jaxseg.json, written by `jaxseg convert`) is expected; '
    'it holds notes.txt.'
  )
  assert 'not found' not in str(e.value)


def test_load_pretrained_from_a_converted_checkpoint_directory(fcn8s_voc_checkpoint, tmp_path):
  saved = jaxseg.weights.from_torch('fcn8s', fcn8s_voc_checkpoint, width=0.125)
  save_checkpoint(tmp_path / 'voc', 'fcn8s', saved, num_classes=21, model_kwargs={'width': 0.125})
  model = jaxseg.create_model('fcn8s', num_classes=5, width=0.125)
  fresh = fake_variables(model, (1, 32, 32, 3), seed=6)
  new, report = load_pretrained('fcn8s', fresh, tmp_path / 'voc', 5, width=0.125)
  assert [r.split(':')[0] for r in report.reinitialized] == FCN8S_CLASS_KEYS
  np.testing.assert_array_equal(
    new['params']['backbone']['conv2_1']['kernel'], saved['params']['backbone']['conv2_1']['kernel']
  )
  np.testing.assert_array_equal(
    new['params']['score_fr']['bias'], fresh['params']['score_fr']['bias']
  )

  vgg = jaxseg.create_backbone('vgg16', width=0.125)
  save_checkpoint(tmp_path / 'vgg', 'vgg16', fake_variables(vgg, (1, 32, 32, 3)))
  with pytest.raises(ValueError) as e:
    load_pretrained('fcn8s', fresh, tmp_path / 'vgg', 5, width=0.125)
  assert str(e.value) == (
    f"{tmp_path / 'vgg'} is a converted checkpoint of backbone 'vgg16', not of model 'fcn8s' "
    '(use it as backbone weights: init_backbone).'
  )
