"""Input validation at the public entries: wrong inputs fail early with a message naming what was
expected and what came, instead of a shape error deep inside XLA or a silently wrong number.

Models are checked with `jax.eval_shape` (tracing only, nothing allocated or compiled).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg import data, losses, metrics, ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- models ------------------------------------------------------------------------------------

# (registry name, constructor kwargs, expected input channels): tiny where a width knob exists.
MODELS = [
  ('fcn8s', {'width': 0.125}, 3),
  ('fcn32s', {'width': 0.125}, 3),
  ('segnet', {}, 3),
  ('segnet_basic', {'features': 4, 'kernel_size': 3}, 3),
  ('unet_padded', {'features': 4, 'depth': 2}, 3),
]


def _init_shape(model, x):
  return jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)


@pytest.mark.parametrize('name,kwargs,channels', MODELS, ids=[m[0] for m in MODELS])
def test_models_reject_bad_images(name, kwargs, channels):
  model = jaxseg.create_model(name, num_classes=5, **kwargs)
  good = jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32)
  _init_shape(model, good)  # the valid input traces
  with pytest.raises(
    ValueError,
    match=rf'rank 4 \(N, H, W, {channels}\), got shape \(32, 32, 3\); .*add a batch axis',
  ):
    _init_shape(model, jax.ShapeDtypeStruct((32, 32, 3), jnp.float32))
  with pytest.raises(
    ValueError, match=rf'expects {channels} input channels .*got shape \(1, 32, 32, 1\)\.'
  ):
    _init_shape(model, jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
  with pytest.raises(
    ValueError,
    match=rf'expects {channels} input channels .*got shape \(1, 3, 32, 32\); it looks like NCHW',
  ):
    _init_shape(model, jax.ShapeDtypeStruct((1, 3, 32, 32), jnp.float32))  # NCHW by mistake
  with pytest.raises(TypeError, match='floating-point input .*got dtype uint8; normalise first'):
    _init_shape(model, jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.uint8))


def _refuses_bad_layouts(module, channels, **call_kwargs):
  """`module` refuses an NCHW batch, a rank-3 batch and uint8 pixels, at init and at apply.

  The check runs before any layer is built, so each refusal costs a trace of one call.
  """
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  init = lambda x: jax.eval_shape(lambda v: module.init(jax.random.key(0), v, **call_kwargs), x)
  apply = lambda x: jax.eval_shape(lambda v: module.apply({}, v, **call_kwargs), x)
  nchw = (
    rf'NHWC batch \(N, H, W, {channels}\), got shape \(1, {channels}, 64, 64\); '
    r'it looks like NCHW: transpose with x\.transpose\(0, 2, 3, 1\)'
  )
  for run in (init, apply):
    with pytest.raises(ValueError, match=nchw):
      run(f32(1, channels, 64, 64))
    with pytest.raises(
      ValueError, match=rf'rank 4 \(N, H, W, {channels}\), got shape \(64, 64, {channels}\)'
    ):
      run(f32(64, 64, channels))
  with pytest.raises(TypeError, match='got dtype uint8; normalise first'):
    init(jax.ShapeDtypeStruct((1, 64, 64, channels), jnp.uint8))


@pytest.mark.parametrize('name', jaxseg.list_models())
def test_every_model_validates_its_input(name):
  model = jaxseg.create_model(name, num_classes=2)
  _refuses_bad_layouts(model, getattr(model, 'in_channels', 3), train=False)


@pytest.mark.parametrize('name', jaxseg.list_backbones())
def test_every_backbone_validates_its_input(name):
  _refuses_bad_layouts(jaxseg.create_backbone(name), 3, train=False)


def test_unknown_model_and_bad_num_classes():
  with pytest.raises((KeyError, ValueError), match='fcn9s'):
    jaxseg.create_model('fcn9s', num_classes=21)
  with pytest.raises(ValueError, match=r'num_classes must be an integer >= 1, got 0'):
    jaxseg.create_model('fcn8s', num_classes=0)


# --- losses ------------------------------------------------------------------------------------


def test_cross_entropy_rejects_bad_inputs():
  logits = jnp.zeros((2, 4, 4, 3))
  labels = jnp.zeros((2, 4, 4), jnp.int32)
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(np.log(3.0))
  with pytest.raises(ValueError, match=r'logits must be \(N, H, W, C\), got shape \(4, 4, 3\)'):
    losses.cross_entropy(logits[0], labels)
  with pytest.raises(
    ValueError, match=r'labels must be \(N, H, W\) = \(2, 4, 4\) .*got \(2, 4, 5\)'
  ):
    losses.cross_entropy(logits, jnp.zeros((2, 4, 5), jnp.int32))
  with pytest.raises(ValueError, match=r'labels must be \(N, H, W\)'):
    losses.cross_entropy(logits, jnp.zeros((2, 4, 4, 1), jnp.int32))  # a trailing channel axis
  with pytest.raises(TypeError, match='labels must be integer class ids, got dtype float32'):
    losses.cross_entropy(logits, labels.astype(jnp.float32))
  with pytest.raises(ValueError, match=r'class_weights must have shape \(3,\), got \(2,\)'):
    losses.cross_entropy(logits, labels, class_weights=jnp.ones(2))


@pytest.mark.parametrize('bad', [3, 7, -1, 254, 256])
def test_labels_out_of_range_are_named(bad):
  logits = jnp.zeros((1, 2, 2, 3))
  labels = np.array([[[0, 255], [2, bad]]], np.int32)  # 255 (ignore) is fine; `bad` is not
  with pytest.raises(
    ValueError, match=rf'must be in \[0, 3\) or the ignore index 255; found \[{bad}\] \(1 pixels\)'
  ):
    losses.cross_entropy(logits, labels)
  with pytest.raises(ValueError, match=rf'found \[{bad}\]'):
    metrics.confusion_matrix(labels, np.zeros_like(labels), 3)


def test_median_frequency_rejects_bad_masks():
  with pytest.raises(ValueError, match=r'mask must be in \[0, 2\) .*found \[5\]'):
    losses.median_frequency_from_masks([np.array([[0, 5]])], num_classes=2)
  with pytest.raises(ValueError, match='no class has any pixel'):
    losses.median_frequency_from_masks([np.full((2, 2), 255)], num_classes=2)


# --- metrics -----------------------------------------------------------------------------------


def test_confusion_matrix_and_scores_reject_bad_inputs():
  labels = np.zeros((2, 3), np.int32)
  with pytest.raises(ValueError, match=r'labels shape \(2, 3\) != preds shape \(3, 2\)'):
    metrics.confusion_matrix(labels, np.zeros((3, 2), np.int32), 4)
  with pytest.raises(TypeError, match='preds must be integers .*got dtype float32'):
    metrics.confusion_matrix(labels, np.zeros((2, 3), np.float32), 4)
  with pytest.raises(TypeError, match='labels must be integers'):
    metrics.confusion_matrix(labels.astype(np.float64), labels, 4)
  for n in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match='num_classes must be an integer >= 1'):
      metrics.confusion_matrix(labels, labels, n)
  with pytest.raises(ValueError, match=r'preds must be in \[0, 4\) .*found \[4\]'):
    metrics.confusion_matrix(labels, np.full((2, 3), 4, np.int32), 4)
  with pytest.raises(ValueError, match=r'confusion must be a square matrix, got shape \(2, 3\)'):
    metrics.scores(np.zeros((2, 3)))


# --- ops ---------------------------------------------------------------------------------------


def test_ops_reject_bad_inputs():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(
    ValueError, match=r'max_pool_with_argmax expects an NHWC array of rank 4, got shape \(4, 4, 2\)'
  ):
    ops.max_pool_with_argmax(x[0])
  v, i = ops.max_pool_with_argmax(x)
  with pytest.raises(
    ValueError, match=r'indices shape \(1, 2, 2, 1\) must equal values shape \(1, 2, 2, 2\)'
  ):
    ops.max_unpool(v, i[..., :1], (4, 4))
  with pytest.raises(ValueError, match=r'resize_bilinear expects an NHWC array of rank 4'):
    ops.resize_bilinear(x[0], (2, 2))
  with pytest.raises(ValueError, match=r'target size must be >= 1, got \(0, 2\)'):
    ops.resize_bilinear(x, (0, 2))
  with pytest.raises(
    ValueError, match=r'crop of size \(5, 4\) at offset \(-1, 0\) does not fit in a \(4, 4\) map'
  ):
    ops.center_crop(x, (5, 4))


# --- data --------------------------------------------------------------------------------------


def test_transforms_reject_bad_images_and_masks():
  rng = np.random.default_rng(0)
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=r'same size, got image \(8, 8, 3\) and label \(8, 7\)'):
    data.transforms.train_augment(image, np.zeros((8, 7), np.uint8), rng, crop_size=(4, 4))
  with pytest.raises(ValueError, match=r'label \(8, 8, 3\)'):
    data.transforms.train_augment(image, np.zeros((8, 8, 3), np.uint8), rng, crop_size=(4, 4))
  with pytest.raises(ValueError, match='normalize expects a uint8 image, got dtype float32'):
    data.normalize(image.astype(np.float32))
  with pytest.raises(ValueError, match=r'3 RGB channels last, got shape \(8, 8, 4\)'):
    data.normalize(np.zeros((8, 8, 4), np.uint8))
  with pytest.raises(ValueError, match='normalize mode must be one of'):
    data.normalize(image, 'bgr')
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 255\]'):
    data.transforms.resize(image, np.full((8, 8), 300, np.int32), (4, 4))


def _smoke_config():
  from jaxseg.configs import quickstart

  return quickstart.get_config('smoke')


def test_pipeline_rejects_empty_splits_and_bad_configs():
  config = _smoke_config()
  config.dataset.synthetic_train_examples = 0
  with pytest.raises(ValueError, match='num_examples must be >= 1, got 0'):
    data.create_train_iterator(config, seed=0)
  config = _smoke_config()
  config.dataset.name = 'kitti'
  with pytest.raises(ValueError, match=r"unknown dataset 'kitti'. Datasets: ade20k, camvid, "):
    data.get_source(config, 'train')
  config = _smoke_config()
  with pytest.raises(ValueError, match='synthetic split must be one of'):
    data.get_source(config, 'test/../../x')
  config = _smoke_config()
  config.dataset.crop_size = (64,)
  with pytest.raises(ValueError, match=r'crop_size must be \(H, W\)'):
    data.create_train_iterator(config, seed=0)
  config = _smoke_config()
  config.dataset.num_classes = 1
  with pytest.raises(ValueError, match='needs 2 <= num_classes <= 255, got 1'):
    data.get_source(config, 'train')


def test_evaluating_an_empty_split_is_an_error():
  from jaxseg.train import train_lib

  with pytest.raises(ValueError, match='the evaluation split is empty'):
    train_lib.evaluate(parallel=None, state=None, eval_iter=iter(()), num_classes=3, progress=False)


def test_prediction_inputs_skip_non_images_and_name_unreadable_files(tmp_path):
  from PIL import Image

  from jaxseg.train import predict

  folder = tmp_path / 'images'
  folder.mkdir()
  (folder / 'README.txt').write_text('not an image')
  (folder / 'labels.npy').write_bytes(b'\x93NUMPY')
  Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(folder / 'ok.png')
  (folder / 'broken.jpg').write_bytes(b'this is text with a .jpg name')
  files = predict.list_images(str(folder))
  assert [os.path.basename(f) for f in files] == [
    'broken.jpg',
    'ok.png',
  ]  # non-image extensions skipped
  assert predict.read_image(str(folder / 'ok.png')).shape == (5, 6, 3)
  with pytest.raises(ValueError, match=r"broken\.jpg' is not a readable image"):
    predict.read_image(str(folder / 'broken.jpg'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'notes.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match=r'no images \(.*\) in directory'):
    predict.list_images(str(empty))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    predict.list_images(str(tmp_path / 'missing.png'))


# --- command lines -----------------------------------------------------------------------------


def test_convert_cli_rejects_bad_arguments(tmp_path):
  convert = importlib.import_module('jaxseg.weights.convert')

  with pytest.raises(SystemExit, match='--model_kwargs is not valid JSON'):
    convert.main(
      [
        '--model',
        'fcn8s',
        '--input',
        'x.pth',
        '--output',
        str(tmp_path / 'o'),
        '--model_kwargs',
        '{width',
      ]
    )
  with pytest.raises(SystemExit, match='--model_kwargs must be a JSON object'):
    convert.main(
      [
        '--model',
        'fcn8s',
        '--input',
        'x.pth',
        '--output',
        str(tmp_path / 'o'),
        '--model_kwargs',
        '[1]',
      ]
    )
  with pytest.raises(FileNotFoundError, match='weights file not found'):
    convert.main(
      ['--model', 'fcn8s', '--input', str(tmp_path / 'x.pth'), '--output', str(tmp_path / 'o')]
    )
  assert not (tmp_path / 'o').exists()


def test_predict_with_a_missing_checkpoint_names_the_directory(tmp_path):
  from jaxseg.train import checkpointing

  with pytest.raises(
    FileNotFoundError, match=r'no complete checkpoint found in .*nowhere.*train first'
  ):
    checkpointing.restore_for_inference(str(tmp_path / 'nowhere'), abstract_state=None)


def test_train_cli_reports_a_bad_config_before_training(tmp_path):
  cmd = [
    sys.executable,
    '-m',
    'train.main',
    '--config=configs/quickstart.py:smoke',
    f'--workdir={tmp_path / "work"}',
    '--config.model.name=fcn9s',
  ]
  p = subprocess.run(
    cmd,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )
  assert p.returncode != 0
  assert 'fcn9s' in p.stderr and 'fcn8s' in p.stderr, p.stderr[
    -2000:
  ]  # names the bad and the known models
  assert not os.path.exists(tmp_path / 'work' / 'checkpoints')
