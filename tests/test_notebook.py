"""The Colab TPU notebook's code cells run end to end on CPU with 4 fake devices and the generated dataset."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def notebook_code(path: str) -> str:
  """The code cells as one script; shell/magic lines (!pip, %env) are Colab set-up and are left out."""
  nb = json.load(open(path, encoding='utf-8'))
  lines = []
  for cell in nb['cells']:
    if cell['cell_type'] == 'code':
      lines += [
        line
        for line in ''.join(cell['source']).splitlines()
        if not line.lstrip().startswith(('!', '%'))
      ]
      lines.append('')
  return '\n'.join(lines)


def test_colab_notebook_runs_on_fake_devices(tmp_path):
  script = tmp_path / 'notebook.py'
  script.write_text(notebook_code(os.path.join(ROOT, 'notebooks', 'colab_tpu.ipynb')))
  env = dict(
    os.environ,
    PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
    XLA_FLAGS='--xla_force_host_platform_device_count=4',
    JAXSEG_NOTEBOOK_SMOKE='1',
    JAXSEG_NOTEBOOK_DIR=str(tmp_path),
  )
  out = subprocess.run(
    [sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=400
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'CpuDevice(id=3)' in out.stdout  # four devices
  assert 'VOC val mIoU' in out.stdout
  assert (tmp_path / 'jaxseg_runs' / 'fcn8s' / 'checkpoints' / '2').is_dir()
  assert (tmp_path / 'jaxseg_runs' / 'fcn8s' / 'predictions_grid.png').is_file()
