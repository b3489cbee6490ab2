"""Two JAX processes on loopback (CPU collectives via gloo) train together through train.main."""

import os
import re
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_one_model(tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  procs = []
  for pid in range(2):
    cmd = [
      sys.executable,
      '-m',
      'train.main',
      '--config',
      'configs/quickstart.py:smoke',
      '--workdir',
      str(tmp_path),
      '--config.dataset.synthetic_size=32',
      '--config.dataset.crop_size=(32, 32)',
      '--config.predict.num_images=1',
      '--config.train.distributed=True',
      f'--config.train.coordinator_address=127.0.0.1:{port}',
      '--config.train.num_processes=2',
      f'--config.train.process_id={pid}',
    ]
    procs.append(
      subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
    )
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=300)
      outs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for rc, _, err in outs:
    assert rc == 0, err[-3000:]
    assert 'process ' in err and 'of 2' in err
  sums = [re.search(r'params checksum: (\S+)', out).group(1) for _, out, _ in outs]
  mious = [re.search(r'final mIoU: (\S+)', out).group(1) for _, out, _ in outs]
  assert sums[0] == sums[1]  # one model, replicated on both processes
  assert mious[0] == mious[1]  # one confusion matrix over the whole split
  assert os.listdir(tmp_path / 'checkpoints') == ['2']
  # train.main's prediction PNGs: written once, by process 0, as colour-palette images
  assert sum('wrote ' in out for _, out, _ in outs) == 1
  assert sorted(os.listdir(tmp_path / 'predictions')) == ['val_00000.png', 'val_00000_overlay.png']
  from PIL import Image

  with Image.open(tmp_path / 'predictions' / 'val_00000.png') as im:
    assert im.mode == 'P' and im.size == (32, 32)
