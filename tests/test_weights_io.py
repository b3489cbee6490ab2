"""jaxseg.weights file handling: unpickling safety, torch-free formats, strict errors, layout round trips."""

import importlib
import os
import subprocess
import sys
import textwrap
import traceback

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


def assert_no_unsafe_advice(error):
  """Neither the message nor the printed traceback (chained causes included) advise unpickling."""
  printed = ''.join(traceback.format_exception(error))
  assert 'weights_only=False' not in printed and '`weights_only` set to `False`' not in printed
  assert 'add_safe_globals' not in printed, printed


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
  ) as e:
    load_state_dict(path)
  assert "names the Python object 'io.open'" in str(e.value) or 'builtins.open' in str(e.value)
  assert_no_unsafe_advice(e.value)
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
  omitted = jaxseg.weights.get_layout(name).omitted_layers({})
  ignored = [k for k in sd if k.rpartition('.')[0] in omitted]
  assert sorted(back) == sorted(k for k in sd if k not in ignored)
  for k, v in back.items():
    if not k.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_random_bytes_pth_is_not_a_state_dict_and_no_unsafe_advice(torch_module, tmp_path):
  convert = importlib.import_module('jaxseg.weights.convert')

  path = tmp_path / 'random.pth'
  data = np.random.default_rng(0).bytes(1000)
  path.write_bytes(data)
  with pytest.raises(WeightsError) as e:
    load_state_dict(path)
  assert str(e.value) == (
    f'{path} is not a PyTorch state dict: torch.load(weights_only=True) cannot read it '
    f'(1,000 bytes, starting with {data[:16]!r}).'
  )
  assert_no_unsafe_advice(e.value)
  # The command line and the backbone loader relay the same message.
  with pytest.raises(WeightsError) as e:
    convert.main(['--model', 'vgg16', '--input', str(path), '--output', str(tmp_path / 'out')])
  assert 'is not a PyTorch state dict' in str(e.value)
  assert_no_unsafe_advice(e.value)
  assert not (tmp_path / 'out').exists()
  model = jaxseg.create_model('fcn32s', num_classes=2, width=0.125)
  variables = random_variables('fcn32s', num_classes=2, width=0.125)
  with pytest.raises(WeightsError, match='is not a PyTorch state dict') as e:
    jaxseg.weights.init_backbone(model, variables, path)
  assert_no_unsafe_advice(e.value)

  (tmp_path / 'empty.pt').write_bytes(b'')
  with pytest.raises(WeightsError, match=r'cannot read it \(an empty file \(0 bytes\)\)\.$'):
    load_state_dict(tmp_path / 'empty.pt')


def test_pth_holding_something_else_than_a_state_dict(torch_module, tmp_path):
  torch = torch_module
  torch.save(torch.zeros(3, 2), tmp_path / 'tensor.pth')
  with pytest.raises(WeightsError) as e:
    load_state_dict(tmp_path / 'tensor.pth')
  assert str(e.value) == (
    f'{tmp_path / "tensor.pth"} is not a PyTorch state dict: it holds a torch.Tensor of shape '
    '(3, 2), not a mapping from parameter names to tensors.'
  )
  torch.save([torch.zeros(1)], tmp_path / 'list.pth')
  with pytest.raises(WeightsError, match=r'it holds a list, not a mapping'):
    load_state_dict(tmp_path / 'list.pth')
  # A training checkpoint whose weights sit under an unknown name: say which entry is not a tensor.
  torch.save({'net': {'w': torch.zeros(1)}, 'epoch': 3}, tmp_path / 'nested.pth')
  with pytest.raises(WeightsError, match=r"not a state dict of tensors: 'net' holds a dict\.$"):
    load_state_dict(tmp_path / 'nested.pth')


def test_reading_pth_without_torch_names_the_extra(tmp_path, monkeypatch):
  path = tmp_path / 'w.pth'
  path.write_bytes(b'PK\x03\x04')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  with pytest.raises(ImportError) as e:
    load_state_dict(path)
  msg = str(e.value)
  assert "pip install 'jaxseg[torch]'" in msg and str(path) in msg
  assert '.safetensors and .npz files need no PyTorch' in msg


def test_broken_safetensors_and_npz_files_say_what_was_read(tmp_path):
  data = b'\xff' * 40
  (tmp_path / 'w.safetensors').write_bytes(data)
  with pytest.raises(WeightsError) as e:
    load_state_dict(tmp_path / 'w.safetensors')
  assert str(e.value) == (
    f'{tmp_path / "w.safetensors"} is not a safetensors file: it cannot be read as one '
    f'(40 bytes, starting with {data[:16]!r}).'
  )
  (tmp_path / 'w.npz').write_bytes(data)
  with pytest.raises(WeightsError, match=r'is not an \.npz archive of arrays \(40 bytes') as e:
    load_state_dict(tmp_path / 'w.npz')
  np.save(tmp_path / 'single.npy', np.zeros(3))
  os.replace(tmp_path / 'single.npy', tmp_path / 'single.npz')
  with pytest.raises(WeightsError, match=r'holds a single array of shape \(3,\), not named arrays'):
    load_state_dict(tmp_path / 'single.npz')


def test_a_directory_is_not_a_weights_file(tmp_path):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'model.safetensors').write_bytes(b'')
  with pytest.raises(ValueError) as e:
    load_state_dict(tmp_path / 'run')
  msg = str(e.value)
  assert msg == (
    f'{tmp_path / "run"} is a directory, but a weights file (.pth/.pt, .safetensors or .npz) is '
    'expected; it holds model.safetensors.'
  )
  assert 'not found' not in msg
  # A converted checkpoint given where a PyTorch file is expected (jaxseg convert --input): say so.
  (tmp_path / 'ckpt').mkdir()
  (tmp_path / 'ckpt' / 'jaxseg.json').write_text('{}')
  convert = importlib.import_module('jaxseg.weights.convert')
  with pytest.raises(ValueError, match=r'is a directory, but a weights file') as e:
    convert.main(['--model', 'vgg16', '--input', str(tmp_path / 'ckpt'), '--output', 'unused'])
  assert 'it is a jaxseg converted checkpoint (jaxseg.json), which' in str(e.value)
  # And the reverse: a weights file where a converted checkpoint directory is expected (export).
  export = importlib.import_module('jaxseg.weights.export')
  (tmp_path / 'w.pth').write_bytes(b'')
  with pytest.raises(ValueError, match=r'w\.pth is a file, but a converted checkpoint directory'):
    export.main(['--checkpoint', str(tmp_path / 'w.pth'), '--output', str(tmp_path / 'o.npz')])
  (tmp_path / 'ckpt' / 'jaxseg.json').write_bytes(b'\x80\x81')
  with pytest.raises(ValueError, match=r'is not a jaxseg checkpoint sidecar: it is not valid JSON'):
    export.main(['--checkpoint', str(tmp_path / 'ckpt'), '--output', str(tmp_path / 'o.npz')])
