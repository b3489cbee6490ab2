"""jaxseg.weights file handling: unpickling safety, torch-free formats, strict errors, layout round trips."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxseg
from jaxseg.weights import WeightsError, from_torch, load_state_dict, to_torch
from jaxseg.weights.core import build, target_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_variables(name, seed=0, **kwargs):
  """Random variables for a registered layout's model/backbone (eval_shape, no forward pass)."""
  layout = jaxseg.weights.get_layout(name)
  if layout.kind == 'model':
    kwargs.setdefault('num_classes', 3)
  shapes = target_shapes(build(name, layout, **kwargs), layout.input_shape)
  rng = np.random.default_rng(seed)

  def fill(s):
    if s.size > 10_000_000:  # fc6-sized: distinct values without paying for a normal draw
      return (np.arange(s.size, dtype=np.float32) % 997).reshape(s.shape) / 997
    return rng.standard_normal(s.shape, dtype=np.float32)

  return {
    k: v for k, v in jax.tree_util.tree_map(fill, shapes).items() if k in ('params', 'batch_stats')
  }


@pytest.fixture(scope='module')
def vgg16_state_dict():
  """torchvision-layout VGG-16 feature weights (14.7M values), made without torch."""
  return to_torch('vgg16', random_variables('vgg16', seed=1))


class _Evil:
  """Unpickling calls open(marker, 'w'): creates the marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_pth_with_arbitrary_object_is_refused_and_never_executed(torch_module, tmp_path):
  torch = torch_module
  # Control: an unrestricted torch.load of such a file does run the payload.
  control, control_marker = tmp_path / 'control.pth', tmp_path / 'control_marker'
  torch.save({'w': torch.zeros(2), 'x': _Evil(str(control_marker))}, control)
  torch.load(control, weights_only=False)
  assert control_marker.exists()

  path, marker = tmp_path / 'evil.pth', tmp_path / 'marker'
  torch.save({'features.0.weight': torch.zeros(2), 'x': _Evil(str(marker))}, path)
  with pytest.raises(
    WeightsError, match=r'(?s)weights_only=True.*never unpickles arbitrary objects'
  ):
    load_state_dict(path)
  with pytest.raises(WeightsError, match='evil.pth'):
    from_torch('vgg16', str(path))
  assert not marker.exists()


def test_plain_pth_state_dict_loads(torch_module, tmp_path):
  torch = torch_module
  sd = {'a.weight': torch.arange(6.0).reshape(2, 3), 'a.bias': torch.ones(2, dtype=torch.bfloat16)}
  torch.save({'state_dict': {f'module.{k}': v for k, v in sd.items()}}, tmp_path / 'w.pth')
  out = load_state_dict(tmp_path / 'w.pth')  # unwraps 'state_dict' and DataParallel's 'module.'
  assert sorted(out) == ['a.bias', 'a.weight']
  np.testing.assert_array_equal(out['a.weight'], np.arange(6.0).reshape(2, 3))
  assert out['a.bias'].dtype == np.float32


def test_safetensors_and_npz_need_no_torch(vgg16_state_dict, tmp_path):
  """In a fresh interpreter where `import torch` fails: read, convert, save and reload a checkpoint."""
  from safetensors.numpy import save_file

  save_file(vgg16_state_dict, tmp_path / 'vgg16.safetensors')
  np.savez(tmp_path / 'vgg16.npz', **vgg16_state_dict)
  (tmp_path / 'vgg16.pth').write_bytes(b'not read')
  script = textwrap.dedent(
    f"""
    import sys
    sys.modules['torch'] = None  # any `import torch` now raises ImportError
    import numpy as np
    import jaxseg.weights as w
    import jaxseg.weights.convert as convert_cli

    d = {str(tmp_path)!r}
    a = w.from_torch('vgg16', d + '/vgg16.safetensors')
    b = w.from_torch('vgg16', d + '/vgg16.npz')
    sd = np.load(d + '/vgg16.npz')
    np.testing.assert_array_equal(a['params']['conv1_1']['kernel'], sd['features.0.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(a['params']['conv5_3']['bias'], sd['features.28.bias'])
    for x, y in zip(w.core.jax.tree_util.tree_leaves(a), w.core.jax.tree_util.tree_leaves(b)):
      np.testing.assert_array_equal(x, y)
    convert_cli.main(['--model', 'vgg16', '--input', d + '/vgg16.safetensors', '--output', d + '/ckpt'])
    model, c = w.load_checkpoint(d + '/ckpt')
    assert type(model).__name__ == 'VGG16'
    for x, y in zip(w.core.jax.tree_util.tree_leaves(a), w.core.jax.tree_util.tree_leaves(c['params'])):
      np.testing.assert_array_equal(x, y)
    try:
      w.load_state_dict(d + '/vgg16.pth')
    except ImportError as e:
      assert 'needs PyTorch' in str(e) and '.safetensors' in str(e), e
    else:
      raise AssertionError('.pth read without torch')
    assert sys.modules['torch'] is None, 'something imported torch'
    print('TORCH-FREE OK')
    """
  )
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  res = subprocess.run(
    [sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'TORCH-FREE OK' in res.stdout


def test_wrong_key_and_wrong_shape_name_the_key_and_both_shapes(vgg16_state_dict):
  sd = dict(vgg16_state_dict)
  sd['features.0.weights'] = sd.pop('features.0.weight')
  sd['features.2.weight'] = np.zeros((64, 64, 5, 5), np.float32)
  with pytest.raises(WeightsError) as e:
    from_torch('vgg16', sd)
  msg = str(e.value)
  assert 'missing keys (1)' in msg and 'features.0.weight (for params/conv1_1/kernel' in msg
  assert 'unused keys (1)' in msg and 'features.0.weights' in msg
  assert 'features.2.weight: checkpoint has (64, 64, 5, 5), model expects (64, 64, 3, 3)' in msg


def test_classifier_for_another_class_count_is_an_error_naming_both_shapes(tmp_path):
  sd = to_torch('fcn32s', random_variables('fcn32s', num_classes=21, width=0.125))
  with pytest.raises(WeightsError) as e:
    from_torch('fcn32s', sd, num_classes=5, width=0.125)
  msg = str(e.value)
  assert 'score_fr.weight: checkpoint has (21, 512, 1, 1), model expects (5, 512, 1, 1)' in msg
  assert 'upscore.weight: checkpoint has (21, 21, 64, 64), model expects (5, 5, 64, 64)' in msg
  assert 'load_pretrained' in msg

  (tmp_path / 'w.h5').write_bytes(b'')
  with pytest.raises(ValueError, match=r'unsupported weights file .*w\.h5.*expected \.pth'):
    load_state_dict(tmp_path / 'w.h5')
  with pytest.raises(FileNotFoundError, match='weights file not found'):
    load_state_dict(tmp_path / 'absent.safetensors')


# torchvision modules whose state dicts must survive from_torch -> to_torch unchanged (their
# parity tests belong to the families; this checks the key maps are one-to-one and complete).
TORCHVISION = {
  'resnet50': ('resnet50', {}),
  'resnet101': ('resnet101', {}),
  'mobilenet_v2': ('mobilenet_v2', {}),
  'fcn_resnet50': ('segmentation.fcn_resnet50', dict(weights_backbone=None, num_classes=5)),
  'deeplabv3_resnet50': (
    'segmentation.deeplabv3_resnet50',
    dict(weights_backbone=None, num_classes=5),
  ),
}


def _torchvision_module(name):
  import torchvision

  build, kwargs = TORCHVISION[name]
  fn = torchvision.models
  for part in build.split('.'):
    fn = getattr(fn, part)
  return fn(weights=None, **kwargs)


@pytest.mark.parametrize('name', sorted(TORCHVISION))
def test_torchvision_state_dicts_round_trip(torch_module, name):
  from conftest import randomize_torch

  ref = randomize_torch(_torchvision_module(name), seed=7)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  back = to_torch(name, from_torch(name, sd))
  layout = jaxseg.weights.get_layout(name)
  ignored = [k for k in sd if any(re.fullmatch(p, k) for p in layout.ignore)]
  assert sorted(back) == sorted(k for k in sd if k not in ignored)
  for k, v in back.items():
    if not k.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(v, sd[k], err_msg=k)
