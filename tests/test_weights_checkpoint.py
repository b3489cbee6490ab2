"""Converted checkpoints: convert CLI -> load_checkpoint -> same outputs; export CLI -> strict PyTorch load."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import randomize_torch, rel_err, to_nchw, to_nhwc

import jaxseg
import jaxseg.weights.convert as convert_cli
import jaxseg.weights.export as export_cli
from jaxseg.weights import checkpoint_metadata, load_checkpoint, save_checkpoint, to_torch
from jaxseg.weights.core import target_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fcn8s_convert_load_export_round_trip(torch_module, tmp_path, capsys):
  """pytorch-fcn FCN-8s .pth -> convert -> load_checkpoint (outputs match) -> export -> strict torch load."""
  torch = torch_module
  from torch_ref.fcn import FCN as TorchFCN

  torch.manual_seed(0)
  ref = randomize_torch(TorchFCN(n_class=3, stride=8), seed=11).eval()
  torch.save(ref.state_dict(), tmp_path / 'fcn8s.pth')
  ckpt = tmp_path / 'ckpt'
  assert (
    convert_cli.main(
      ['--model', 'fcn8s', '--input', str(tmp_path / 'fcn8s.pth'), '--output', str(ckpt)]
    )
    == 0
  )
  # 134,489,759 at 21 classes minus the class-dependent score/upscore weights: 4,866C + 288C^2 + C
  assert 'fcn8s (3 classes), 134,277,737 parameters' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ['ckpt', 'fcn8s.pth']  # no temporary left behind
  meta = checkpoint_metadata(ckpt)
  assert (meta['name'], meta['kind'], meta['num_classes'], meta['normalize']) == (
    'fcn8s',
    'model',
    3,
    'imagenet',
  )

  model, variables = load_checkpoint(ckpt)
  assert type(model).__name__ == 'FCN' and model.num_classes == 3 and model.stride == 8
  x = np.random.default_rng(0).standard_normal((1, 35, 29, 3)).astype(np.float32)
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  with torch.no_grad():
    expected = to_nhwc(ref(torch.from_numpy(to_nchw(x))).numpy())
  assert got.shape == expected.shape == (1, 35, 29, 3)
  assert rel_err(got, expected) < 1e-4

  out = tmp_path / 'fcn8s.safetensors'
  assert export_cli.main(['--checkpoint', str(ckpt), '--output', str(out)]) == 0
  from safetensors.torch import load_file

  fresh = ref  # reused (constructing another 134M-parameter module is slow): wiped first
  with torch.no_grad():
    for p in fresh.parameters():
      p.zero_()
  fresh.load_state_dict(load_file(out), strict=True)
  with torch.no_grad():
    again = to_nhwc(fresh(torch.from_numpy(to_nchw(x))).numpy())
  np.testing.assert_array_equal(again, expected)
  # upscore* are ConvTranspose2d: their (in, out, kh, kw) weights come back untouched.
  np.testing.assert_array_equal(
    fresh.upscore8.weight.detach().numpy(),
    np.asarray(variables['params']['upscore8']['kernel']).transpose(3, 2, 0, 1),
  )


def tiny_vgg_variables(seed=0):
  shapes = target_shapes(jaxseg.create_backbone('vgg16_bn', width=0.0625), (1, 32, 32, 3))
  rng = np.random.default_rng(seed)
  return {
    k: jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), v)
    for k, v in shapes.items()
    if k in ('params', 'batch_stats')
  }


def test_save_checkpoint_is_atomic_and_refuses_to_overwrite(tmp_path, monkeypatch):
  variables = tiny_vgg_variables()
  ckpt = tmp_path / 'vgg'
  save_checkpoint(ckpt, 'vgg16_bn', variables, model_kwargs={'width': 0.0625}, normalize='caffe')
  model, restored = load_checkpoint(ckpt)
  assert model.batch_norm and model.width == 0.0625
  assert checkpoint_metadata(ckpt)['normalize'] == 'caffe'
  for a, b in zip(
    jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(restored), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileExistsError, match='exists; pass overwrite=True'):
    save_checkpoint(ckpt, 'vgg16_bn', variables, model_kwargs={'width': 0.0625})

  # A failure after the arrays are written leaves the old checkpoint intact and no temporaries.
  other = tiny_vgg_variables(seed=1)

  def boom(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(json, 'dump', boom)
  with pytest.raises(OSError, match='disk full'):
    save_checkpoint(ckpt, 'vgg16_bn', other, model_kwargs={'width': 0.0625}, overwrite=True)
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ['vgg']
  _, still = load_checkpoint(ckpt)
  np.testing.assert_array_equal(
    still['params']['conv1_1']['conv']['kernel'], variables['params']['conv1_1']['conv']['kernel']
  )

  save_checkpoint(ckpt, 'vgg16_bn', other, model_kwargs={'width': 0.0625}, overwrite=True)
  _, new = load_checkpoint(ckpt)
  np.testing.assert_array_equal(
    new['params']['conv1_1']['conv']['kernel'], other['params']['conv1_1']['conv']['kernel']
  )
  assert os.listdir(tmp_path) == ['vgg']

  with pytest.raises(ValueError, match='JSON-serialisable'):
    save_checkpoint(tmp_path / 'x', 'vgg16_bn', variables, model_kwargs={'dtype': np.float16})
  with pytest.raises(FileNotFoundError, match='not a jaxseg converted checkpoint'):
    load_checkpoint(tmp_path)


def test_convert_cli_kwargs_normalize_and_export_npz(tmp_path, capsys):
  model21 = jaxseg.create_model('fcn8s', num_classes=21, width=0.125)
  shapes = target_shapes(model21, (1, 32, 32, 3))
  rng = np.random.default_rng(2)
  sd = to_torch(
    'fcn8s',
    jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes),
  )
  np.savez(tmp_path / 'voc.npz', **sd)
  args = ['--model', 'fcn8s', '--input', str(tmp_path / 'voc.npz'), '--output', str(tmp_path / 'c')]
  convert_cli.main(
    args + ['--num_classes', '21', '--model_kwargs', '{"width": 0.125}', '--normalize', 'caffe']
  )
  assert 'fcn8s (21 classes)' in capsys.readouterr().out
  assert checkpoint_metadata(tmp_path / 'c')['normalize'] == 'caffe'
  model, variables = load_checkpoint(tmp_path / 'c')
  assert model.num_classes == 21 and model.width == 0.125
  np.testing.assert_array_equal(variables['params']['backbone']['fc7']['bias'], sd['fc7.bias'])
  np.testing.assert_array_equal(
    variables['params']['upscore8']['kernel'], sd['upscore8.weight'].transpose(2, 3, 1, 0)
  )

  # A different class count: only the class-dependent layers are re-initialised, and the summary names them.
  convert_cli.main(
    ['--model', 'fcn8s', '--input', str(tmp_path / 'voc.npz'), '--output', str(tmp_path / 'c5')]
    + ['--num_classes', '5', '--model_kwargs', '{"width": 0.125}']
  )
  out = capsys.readouterr().out
  assert 'fcn8s (5 classes)' in out and 'score_fr' in out
  model5, variables5 = load_checkpoint(tmp_path / 'c5')
  assert model5.num_classes == 5
  fresh = {'score_fr', 'score_pool3', 'score_pool4', 'upscore2', 'upscore8', 'upscore_pool4'}
  flat21 = dict(jax.tree_util.tree_leaves_with_path(variables['params']))
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables5['params']):
    if fresh & {getattr(p, 'key', None) for p in path}:
      assert 5 in leaf.shape, jax.tree_util.keystr(path)
    else:
      np.testing.assert_array_equal(leaf, flat21[path], err_msg=jax.tree_util.keystr(path))
  assert model5.apply(variables5, np.zeros((1, 32, 32, 3), np.float32), train=False).shape == (
    1,
    32,
    32,
    5,
  )

  export_cli.main(['--checkpoint', str(tmp_path / 'c'), '--output', str(tmp_path / 'c.npz')])
  with np.load(tmp_path / 'c.npz') as z:
    assert sorted(z.files) == sorted(sd)
    for k in sd:
      np.testing.assert_array_equal(z[k], sd[k], err_msg=k)
  with pytest.raises(SystemExit, match='must be a JSON object'):
    convert_cli.main(args + ['--model_kwargs', '[1]'])
  with pytest.raises(ValueError, match='is a backbone: it has no classifier'):
    convert_cli.main(
      ['--model', 'vgg16', '--input', 'x.npz', '--output', 'y', '--num_classes', '3']
    )
  with pytest.raises(ValueError, match=r'must end in \.safetensors or \.npz'):
    export_cli.main(['--checkpoint', str(tmp_path / 'c'), '--output', str(tmp_path / 'c.pth')])
  # The package's convert / export are the command-line modules; the conversions have their own names.
  assert jaxseg.weights.convert is convert_cli and jaxseg.weights.export is export_cli
  layout = jaxseg.weights.get_layout('fcn8s')
  assert sorted(jaxseg.weights.export_state_dict(variables, layout)) == sorted(sd)


@pytest.mark.parametrize('module', ['convert', 'export'])
def test_command_lines_run_as_modules(module):
  """`python -m jaxseg.weights.convert|export --help` prints the usage, without runpy's warning."""
  res = subprocess.run(
    [sys.executable, '-m', f'jaxseg.weights.{module}', '--help'],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.startswith(f'usage: python -m jaxseg.weights.{module} ')
  assert '--output' in res.stdout and 'RuntimeWarning' not in res.stderr
