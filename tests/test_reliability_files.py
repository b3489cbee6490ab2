"""Untrusted files: weights files are never unpickled; configs never make training write outside --workdir.

A `.pth` file is a pickle: loading it with plain `torch.load` / `pickle.load`
runs whatever callables it names. The payload used here only creates a marker
file, which makes "was it executed?" observable; each test first checks that
the payload really fires when unpickled the unsafe way, so a refusal cannot
pass by accident.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from jaxseg.weights import WeightsError, load_state_dict


class _Payload:
  """Unpickling this calls open(marker, 'w'), i.e. creates the marker file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def _fires(paths, marker) -> list[bool]:
  """Unpickles each file the unsafe way in one child process; for each, whether the marker appeared."""
  code = (
    'import os, sys, torch\n'
    'marker = sys.argv[1]\n'
    'for path in sys.argv[2:]:\n'
    '  try:\n'
    '    torch.load(path, weights_only=False)\n'
    '  except Exception:\n'
    '    pass\n'
    '  print(os.path.exists(marker))\n'
    '  if os.path.exists(marker):\n'
    '    os.remove(marker)\n'
  )
  p = subprocess.run(
    [sys.executable, '-c', code, str(marker), *map(str, paths)],
    timeout=120,
    capture_output=True,
    text=True,
  )
  return [line == 'True' for line in p.stdout.split()]


@pytest.fixture
def evil_files(tmp_path, torch_module):
  torch = torch_module
  marker = tmp_path / 'PWNED'
  zipped = tmp_path / 'evil_zip.pth'  # torch.save's zip format, weights next to the payload
  torch.save({'conv1.weight': torch.zeros(2, 3, 3, 3), 'evil': _Payload(marker)}, zipped)
  legacy = tmp_path / 'evil_legacy.pt'  # a bare pickle with a .pt name
  with open(legacy, 'wb') as f:
    pickle.dump(
      {'conv1.weight': np.zeros((2, 3, 3, 3), np.float32), 'evil': _Payload(marker)}, f, protocol=2
    )
  wrapped = tmp_path / 'evil_wrapped.pth'  # payload hidden in a training checkpoint's extra fields
  torch.save({'state_dict': {'w': torch.ones(1)}, 'optimizer': _Payload(marker)}, wrapped)
  return marker, [zipped, legacy, wrapped]


def test_malicious_pickle_is_refused_and_never_executed(evil_files):
  marker, files = evil_files
  # The payloads are live: unpickled the unsafe way, each one creates the marker.
  assert _fires(files, marker) == [True] * len(files)
  for path in files:
    with pytest.raises(WeightsError, match=r'(?s)weights_only=True.*never unpickles'):
      load_state_dict(path)
    assert not marker.exists(), f'{path.name} executed code while being refused'
    with pytest.raises(WeightsError):
      load_state_dict(str(path))  # str paths too
    assert not marker.exists()


def test_malicious_pickle_is_refused_by_every_entry_point(evil_files, tmp_path):
  from jaxseg import weights

  convert = importlib.import_module('jaxseg.weights.convert')

  marker, files = evil_files
  path = files[0]
  with pytest.raises(WeightsError):
    weights.from_torch('fcn8s', path, width=0.125)
  with pytest.raises(WeightsError):
    convert.main(['--model', 'fcn8s', '--input', str(path), '--output', str(tmp_path / 'out')])
  assert not (tmp_path / 'out').exists()
  assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path):
  marker = tmp_path / 'PWNED'
  path = tmp_path / 'evil.npz'
  np.savez(path, w=np.zeros(3, np.float32), evil=np.array([_Payload(marker)], dtype=object))
  with np.load(path, allow_pickle=True) as z:
    z['evil']  # the unsafe way fires
  assert marker.exists()
  marker.unlink()
  with pytest.raises(ValueError, match='allow_pickle'):
    load_state_dict(path)
  assert not marker.exists()


def test_unknown_weights_format_is_refused(tmp_path):
  path = tmp_path / 'weights.pkl'
  with open(path, 'wb') as f:
    pickle.dump({'w': np.zeros(1)}, f)
  with pytest.raises(
    ValueError, match=r'unsupported weights file .*weights\.pkl.*\.pth/\.pt, \.safetensors or \.npz'
  ):
    load_state_dict(path)
  with pytest.raises(FileNotFoundError, match='weights file not found'):
    load_state_dict(tmp_path / 'missing.pth')


def test_config_split_names_cannot_steer_prediction_files_out_of_the_workdir(tmp_path):
  """After training, predictions are named after config.dataset.eval_split; a path in it must not escape."""
  from jaxseg.configs import quickstart
  from jaxseg.train import predict

  config = quickstart.get_config('smoke')
  workdir = tmp_path / 'work'
  workdir.mkdir()
  state = types.SimpleNamespace(params={}, batch_stats={})
  for split in ('../../escaped', '/tmp/escaped', 'val/../../escaped'):
    config.dataset.eval_split = split
    with pytest.raises(ValueError, match='split'):
      predict.predict_from_config(config, str(workdir), state, model=None)
  assert sorted(os.listdir(tmp_path)) == ['work'] and not os.listdir(workdir)


def test_prediction_names_cannot_leave_the_output_directory(tmp_path):
  from jaxseg.train import predict

  out = tmp_path / 'preds'
  image = np.zeros((4, 5, 3), np.uint8)
  probs = np.full((4, 5, 3), 1 / 3, np.float32)
  for name in ('../escaped', str(tmp_path / 'abs'), 'a/b', '..', ''):
    with pytest.raises(ValueError, match='must be a plain file name'):
      predict.write_prediction(str(out), name, image, probs)
  assert sorted(os.listdir(tmp_path)) == []
  paths = predict.write_prediction(str(out), 'ok', image, probs, save_probs=True)
  assert sorted(os.path.basename(p) for p in paths) == ['ok.png', 'ok_overlay.png', 'ok_probs.npy']
  assert sorted(os.listdir(out)) == [
    'ok.png',
    'ok_overlay.png',
    'ok_probs.npy',
  ]  # no .tmp files left
