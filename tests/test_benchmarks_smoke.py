"""Smoke run of `python -m jaxseg.benchmarks.run` on a tiny FCN (the script, its JSON and table)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_script_tiny_model(tmp_path):
  out = tmp_path / 'bench.json'
  cmd = [
    sys.executable, '-m', 'jaxseg.benchmarks.run', '--models', 'fcn32s', '--model-kwargs', '{"width": 0.0625}',
    '--batch', '1', '--size', '20x27', '--reps', '2', '--gemm-size', '64', '--json', str(out),
  ]  # fmt: skip
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train img/s' in proc.stdout and 'fcn32s' in proc.stdout
  report = json.loads(out.read_text())
  assert report['gemm_flops'] > 0 and report['environment']['jax']
  (row,) = report['models']
  assert 'error' not in row, row
  j = row['jax']
  assert j['input_shape'] == [1, 20, 27, 3] and j['output_shape'] == [1, 20, 27, 21]
  assert j['train_img_s'] > 0 and j['infer_img_s'] > 0 and len(j['train_times']) == 2
  assert j['train_compile_s'] > 0 and j['train_flops'] > j['infer_flops'] > 0
  assert 0 < row['train_gemm_frac'] and j['peak_rss_bytes'] > 0
  # Static shapes and a reused AOT executable: exactly one compile per function.
  assert j['train_executables'] == 1 and j['infer_executables'] == 1
  assert 'torch' not in row  # constructor kwargs change the architecture: no counterpart


def test_unknown_model_is_rejected():
  from jaxseg.benchmarks import run

  with pytest.raises(SystemExit, match='unknown model'):
    run.main(['--models', 'no_such_model', '--no-torch'])


def test_conv_census_records_every_convolution(torch_module):
  """The census sees each Conv2d call of a tiny FCN-32s once, with its real shapes, and times both sides."""
  from jaxseg.benchmarks import conv_census

  rows = conv_census.census(
    'fcn32s', 1, (20, 27), 21, train=True, reps=1, model_kwargs={'width': 0.0625}
  )
  # 13 VGG convolutions + fc6 + fc7 + score_fr; the upsampling is a ConvTranspose2d.
  assert sum(r['count'] for r in rows) == 16
  conv1_1 = [r for r in rows if r['x'] == [1, 20, 27, 3]]
  assert len(conv1_1) == 1 and conv1_1[0]['kernel'] == [3, 3, 3, 4]
  assert conv1_1[0]['pads'] == [[100, 100], [100, 100]]
  fc6 = [r for r in rows if r['kernel'][:2] == [7, 7]]
  assert len(fc6) == 1 and fc6[0]['kernel'][2:] == [32, 256] and fc6[0]['pads'] == [[0, 0], [0, 0]]
  assert all(r['jax_s'] > 0 and r['torch_s'] > 0 for r in rows)
  lost = [r['lost_s'] for r in rows]
  assert lost == sorted(lost, reverse=True)


def test_pipeline_benchmark_on_generated_prepared_data(capsys):
  from jaxseg.benchmarks import run

  report = run.main(
    ['--pipeline', '--pipeline-dataset', 'folder', '--pipeline-generate', '3', '--batch', '2']
    + ['--reps', '1', '--size', '32']
  )
  out = capsys.readouterr().out
  assert 'prepared 3 generated folder examples' in out and 'pipeline folder (2, 32, 32, 3)' in out
  assert report['prepare_examples'] == 3 and report['prepare_examples_per_s'] > 0
  assert report['batch_shape'] == [2, 32, 32, 3] and report['images'] == 24
  assert report['images_per_s'] > 0
