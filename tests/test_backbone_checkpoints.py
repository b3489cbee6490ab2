"""torchvision ImageNet checkpoints load into every model built on that backbone.

The pairs come from the registry: every registered model with a `backbone_spec()`, and for
models with a `backbone` argument every registered backbone it accepts. Each load goes through
the trainer's path (`init_backbone` on the model's initialised variables, as
`jaxseg.train.train_lib.initial_variables` calls it) with a state dict holding exactly
torchvision's keys, ImageNet classifier included. The report must list exactly the layers the
model's backbone variant leaves out by design; every other checkpoint key must be loaded with
its value, and a foreign key, a missing key or a shape mismatch must still be an error.

Xception-65 (deeplab_v3plus's default encoder) is left out on purpose: torchvision has no
Xception, and its layout is jfzhang95/pytorch-deeplab-xception's `AlignedXception`
(tests/test_xception.py checks that one).
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

import jaxseg
from jaxseg.registry import MODELS
from jaxseg.weights import WeightsError, get_layout, init_backbone

# Registered backbone -> the torchvision ImageNet model whose state dict initialises it.
TORCHVISION = {
  'vgg16': 'vgg16',
  'vgg16_bn': 'vgg16_bn',
  'vgg16_deeplab': 'vgg16',
  'vgg16_dilated': 'vgg16',
  'resnet50': 'resnet50',
  'resnet101': 'resnet101',
  'mobilenet_v2': 'mobilenet_v2',
}
NO_TORCHVISION_LAYOUT = {'xception65'}

_VGG_CLASSIFIER = ('classifier.0', 'classifier.3', 'classifier.6')
# (model, model kwargs) -> the torchvision layers its backbone leaves out by design.
EXPECTED_OMITTED = {
  ('fcn32s', ()): ('classifier.6',),  # fc6 / fc7 become convolutions
  ('fcn16s', ()): ('classifier.6',),
  ('fcn8s', ()): ('classifier.6',),
  ('hypercolumn', ()): ('classifier.6',),  # reads fc7 by default
  ('segnet', ()): _VGG_CLASSIFIER,
  ('deconvnet', ()): _VGG_CLASSIFIER,  # its fc6 / fc7 carry BatchNorm: not torchvision's
  ('deeplab_v1', ()): _VGG_CLASSIFIER,
  ('dilatednet', ()): _VGG_CLASSIFIER,
  ('deeplab_v3plus', (('backbone', 'mobilenet_v2'),)): (
    'classifier.1',
    'features.18.0',  # the encoder stops at the 320-channel features.17
    'features.18.1',
  ),
}
for _model in ('deeplab_v2', 'deeplab_v3', 'deeplab_v3plus', 'pspnet'):
  for _backbone in ('resnet50', 'resnet101'):
    EXPECTED_OMITTED[(_model, (('backbone', _backbone),))] = ('fc',)
for _model in ('fcn_resnet50', 'fcn_resnet101', 'deeplabv3_resnet50', 'deeplabv3_resnet101'):
  EXPECTED_OMITTED[(_model, ())] = ('fc',)

# Variants besides the defaults whose backbone leaves out other layers.
EXTRA_VARIANTS = {
  ('hypercolumn', (('layers', ('pool2', 'conv4_3')),)): _VGG_CLASSIFIER,  # no fc6 / fc7
}

# Input sizes that the models accept; only traced (jax.eval_shape), never computed.
INPUT_SIZE = {'deconvnet': 224, 'hypercolumn': 224}


def registry_pairs():
  """(model, kwargs items, backbone) for every model x backbone choice of the registry."""
  pairs = []
  for name in jaxseg.list_models():
    model = jaxseg.create_model(name, num_classes=3)
    if not hasattr(model, 'backbone_spec'):
      continue
    fields = {f.name for f in dataclasses.fields(model)}
    choices = [()]
    if 'backbone' in fields:
      choices = [(('backbone', b),) for b in jaxseg.list_backbones()]
    for kwargs in choices:
      try:
        backbone, _ = jaxseg.create_model(name, num_classes=3, **dict(kwargs)).backbone_spec()
      except ValueError:  # not a backbone this model accepts
        continue
      pairs.append((name, kwargs, backbone))
  return pairs


PAIRS = registry_pairs()
TORCHVISION_PAIRS = [(m, kw) for m, kw, b in PAIRS if b not in NO_TORCHVISION_LAYOUT]


def test_every_registry_pair_is_covered():
  assert {b for _, _, b in PAIRS} == set(TORCHVISION) | NO_TORCHVISION_LAYOUT
  assert [(m, kw) for m, kw, b in PAIRS if b in NO_TORCHVISION_LAYOUT] == [
    ('deeplab_v3plus', (('backbone', 'xception65'),))
  ]
  assert set(TORCHVISION_PAIRS) == set(EXPECTED_OMITTED)
  assert set(MODELS) >= {m for m, _ in EXPECTED_OMITTED}


@functools.cache
def torchvision_state_dict(name):
  """Random weights under torchvision's exact keys and shapes, classifier included.

  The module is instantiated on the meta device (keys, shapes and dtypes without running
  torchvision's initialisers, ~3 s for VGG-16) and filled with seeded random values.
  """
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  with torch.device('meta'):
    module = getattr(torchvision.models, name)(weights=None)
  rng = np.random.default_rng(sum(map(ord, name)))
  sd = {}
  for k, v in module.state_dict().items():
    shape = tuple(v.shape)
    if not v.dtype.is_floating_point:  # num_batches_tracked
      sd[k] = np.full(shape, 7, np.int64)
    elif v.numel() > 10_000_000:  # VGG's fully connected layers: uniform draws are ~4x faster
      sd[k] = rng.random(shape, dtype=np.float32)
    else:
      sd[k] = rng.standard_normal(shape, dtype=np.float32)
  return sd


def initialised_variables(model, size):
  """Variables of `model` shaped as `model.init` makes them (zeros; init_backbone replaces them)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  return {
    k: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), v)
    for k, v in shapes.items()
    if k in ('params', 'batch_stats')
  }


def _leaf(variables, collection, *path):
  """The backbone variable at `path`; a trailing tuple indexes into it."""
  tree = variables[collection]['backbone']
  for p in path:
    tree = tree[p]
  return np.asarray(tree)


def _hwio(w):
  return w.transpose(2, 3, 1, 0)


# torchvision key -> (Flax variable under the backbone, torch -> Flax transform), a few per family.
_VGG_CONVS = {
  'features.0.weight': (('params', 'conv1_1', 'kernel'), _hwio),
  'features.28.bias': (('params', 'conv5_3', 'bias'), None),
}
SPOT_CHECKS = {
  'vgg16': _VGG_CONVS,
  'vgg16_fc': {
    **_VGG_CONVS,
    # torchvision flattens pool5 as (C, H, W); the first 16 of fc6's 4096 filters.
    'classifier.0.weight': (
      ('params', 'fc6', 'kernel', (..., slice(16))),
      lambda w: w[:16].reshape(16, 512, 7, 7).transpose(2, 3, 1, 0),
    ),
    'classifier.3.bias': (('params', 'fc7', 'bias'), None),
  },
  'vgg16_bn': {
    'features.0.weight': (('params', 'conv1_1', 'conv', 'kernel'), _hwio),
    'features.1.running_var': (('batch_stats', 'conv1_1', 'bn', 'var'), None),
    'features.41.weight': (('params', 'conv5_3', 'bn', 'scale'), None),
  },
  'resnet': {
    'conv1.weight': (('params', 'conv1', 'kernel'), _hwio),
    'bn1.running_mean': (('batch_stats', 'bn1', 'mean'), None),
    'layer3.0.downsample.1.running_var': (
      ('batch_stats', 'layer3', '0', 'downsample_bn', 'var'),
      None,
    ),
    'layer4.2.conv2.weight': (('params', 'layer4', '2', 'conv2', 'kernel'), _hwio),
  },
  'mobilenet_v2': {
    'features.0.0.weight': (('params', 'features_0', 'conv', 'kernel'), _hwio),
    'features.17.conv.1.0.weight': (
      ('params', 'features_17', 'depthwise', 'conv', 'kernel'),
      _hwio,
    ),
    'features.17.conv.3.running_var': (('batch_stats', 'features_17', 'project_bn', 'var'), None),
  },
}


def _spot_checks(backbone, kwargs):
  if backbone.startswith('vgg16') and backbone != 'vgg16_bn':
    return SPOT_CHECKS['vgg16_fc' if kwargs.get('fc') == 'conv' else 'vgg16']
  return SPOT_CHECKS['resnet' if backbone.startswith('resnet') else backbone]


def _check_load(name, kwargs, expected_omitted):
  model = jaxseg.create_model(name, num_classes=3, **dict(kwargs))
  backbone, backbone_kwargs = model.backbone_spec()
  sd = torchvision_state_dict(TORCHVISION[backbone])
  variables = initialised_variables(model, INPUT_SIZE.get(name, 64))

  new, report = init_backbone(model, variables, sd)
  assert report.omitted == expected_omitted
  assert 'left out by this variant (not loaded): ' + ', '.join(expected_omitted) in str(report)
  assert get_layout(backbone).omitted_layers(backbone_kwargs) == expected_omitted
  weights = [k for k in sd if not k.endswith('num_batches_tracked')]
  left_out = {k for k in weights if k.rpartition('.')[0] in expected_omitted}
  assert left_out, 'every torchvision checkpoint has a classifier'
  assert {k for k in report.ignored if not k.endswith('num_batches_tracked')} == left_out
  assert set(report.loaded) == set(weights) - left_out
  assert set(report.loaded) | set(report.ignored) == set(sd)
  for key, (path, transform) in _spot_checks(backbone, backbone_kwargs).items():
    want = sd[key] if transform is None else transform(sd[key])
    got = _leaf(new, *path)
    # np.array_equal: assert_array_equal's NaN bookkeeping takes seconds on fc6's 102M values.
    assert got.shape == want.shape and np.array_equal(got, want), key
  # The head keeps its initialisation.
  assert all(
    not np.any(leaf)
    for k, v in new['params'].items()
    if k != 'backbone'
    for leaf in jax.tree_util.tree_leaves(v)
  )


def _ids(pairs):
  return [name + ''.join(f'-{v}' for _, v in kwargs) for name, kwargs in pairs]


@pytest.mark.parametrize(
  'name,kwargs', sorted(TORCHVISION_PAIRS), ids=_ids(sorted(TORCHVISION_PAIRS))
)
def test_torchvision_checkpoint_loads_into_every_model(torch_module, name, kwargs):
  _check_load(name, kwargs, EXPECTED_OMITTED[(name, kwargs)])


@pytest.mark.parametrize('name,kwargs', sorted(EXTRA_VARIANTS), ids=['hypercolumn-no_fc'])
def test_variants_leave_out_their_layers(torch_module, name, kwargs):
  _check_load(name, kwargs, EXTRA_VARIANTS[(name, kwargs)])


@pytest.mark.parametrize(
  'name,kwargs',
  [
    ('fcn8s', ()),
    ('segnet', ()),
    ('pspnet', (('backbone', 'resnet50'),)),
    ('deeplab_v3plus', (('backbone', 'mobilenet_v2'),)),
  ],
)
def test_foreign_missing_and_mismatched_keys_stay_errors(torch_module, name, kwargs):
  """One model per torchvision family: omission never hides a key that fits nothing."""
  model = jaxseg.create_model(name, num_classes=3, **dict(kwargs))
  backbone, _ = model.backbone_spec()
  sd = dict(torchvision_state_dict(TORCHVISION[backbone]))
  variables = initialised_variables(model, INPUT_SIZE.get(name, 64))
  omitted = EXPECTED_OMITTED[(name, kwargs)]
  first, *_, last = [k for k in sd if k.rpartition('.')[0] not in omitted and k.endswith('weight')]
  del sd[first]
  sd[last] = sd[last][..., :1]
  sd['decoder.conv.weight'] = np.zeros((3, 3), np.float32)
  # Not a parameter of the omitted layer, so not covered by its omission.
  sd[f'{omitted[-1]}.extra'] = np.zeros((3,), np.float32)
  with pytest.raises(WeightsError) as e:
    init_backbone(model, variables, sd)
  msg = str(e.value)
  assert f'missing keys (1):\n    {first} (for params/' in msg
  assert f'shape mismatches (1):\n    {last}: checkpoint has {sd[last].shape}, model expects' in msg
  assert 'unused keys (2):' in msg
  assert 'decoder.conv.weight' in msg and f'{omitted[-1]}.extra' in msg
  for layer in omitted:  # the layers left out by design are no error
    assert f'{layer}.weight' not in msg
