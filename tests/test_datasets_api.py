"""The dataset interface as the trainer and users see it: names, class information, the class
count and class weights a config leaves to the dataset, the dataset recipes, eval-time model kwargs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import data, losses
from jaxseg.configs import common, deeplab_v3, fc_densenet103, pspnet, quickstart, segnet
from jaxseg.data import datasets
from jaxseg.train import checkpointing, optim, steps


def test_list_and_info_without_data():
  assert datasets.list_datasets() == [
    'ade20k',
    'camvid',
    'cityscapes',
    'folder',
    'synthetic',
    'voc',
  ]
  expected = {'voc': 21, 'cityscapes': 19, 'ade20k': 150, 'camvid': 11, 'synthetic': 21}
  for name, n in expected.items():
    info = data.dataset_info(name)
    assert info.num_classes == n == len(info.class_names)
    assert info.ignore_index == 255 and info.palette.shape == (256, 3)
    assert info.palette.dtype == np.uint8
  assert data.dataset_info('voc').class_names[15] == 'person'
  assert data.dataset_info('voc').config == '2012_aug'
  assert data.dataset_info('synthetic', '5').num_classes == 5
  with pytest.raises(ValueError, match="unknown dataset 'cityscape'. Did you mean 'cityscapes'"):
    data.dataset_info('cityscape')
  with pytest.raises(ValueError, match='VOC config must be one of'):
    data.dataset_info('voc', '2007')


def test_unprepared_datasets_name_the_prepare_command(tmp_path):
  for name in ('cityscapes', 'ade20k', 'camvid'):
    with pytest.raises(
      FileNotFoundError, match=f'jaxseg prepare --dataset {name} --manual_dir DIR'
    ):
      data.load_source(name, 'train', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='jaxseg prepare --dataset folder --config mine'):
    data.dataset_info('folder', 'mine', data_dir=str(tmp_path))
  with pytest.raises(
    ValueError, match=r"cityscapes has no split 'test' \(its splits: train, val\)"
  ):
    data.load_source('cityscapes', 'test', data_dir=str(tmp_path))


def test_num_classes_comes_from_the_dataset_and_a_disagreeing_config_is_refused():
  c = common.voc_aug(common.base_config(), (32, 32))
  assert c.dataset.num_classes == 0
  assert data.resolve_config(c).num_classes == 21 and c.dataset.num_classes == 21
  c.dataset.name, c.dataset.config, c.dataset.num_classes = 'cityscapes', '', 21
  with pytest.raises(ValueError, match=r'num_classes=21 but cityscapes has 19 classes'):
    data.resolve_config(c)
  c = common.base_config()  # the generated set: 21 unless the config says otherwise
  assert data.resolve_config(c).num_classes == 21
  # A model built from a config that leaves the count open gets the dataset's.
  c = common.voc_aug(common.base_config(), (32, 32))
  c.model.name, c.model.kwargs = 'unet_padded', {'features': 4, 'depth': 1}
  variables, out = _abstract(steps.build_model(c), (1, 16, 16, 3))
  assert out.shape == (1, 16, 16, 21)


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  return variables, jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)


def test_median_frequency_weighting_from_the_training_split():
  c = segnet.get_config('camvid_smoke')
  assert c.train.class_weighting == 'median_frequency' and not tuple(c.train.class_weights)
  data.resolve_config(c)
  source = data.get_source(c, 'train')
  expected = losses.median_frequency_from_masks(
    [source[i]['label'] for i in range(len(source))], c.dataset.num_classes
  )
  np.testing.assert_allclose(c.train.class_weights, expected, rtol=1e-6)
  assert steps.step_config(c).class_weights == tuple(c.train.class_weights)
  # NumPy reference of SegNet's definition on the same masks.
  labels = [np.asarray(source[i]['label']) for i in range(len(source))]
  freq = []
  for k in range(c.dataset.num_classes):
    pix = sum(int((m == k).sum()) for m in labels)
    img = sum(int((m != 255).sum()) for m in labels if (m == k).any())
    freq.append(pix / img)
  np.testing.assert_allclose(c.train.class_weights, np.median(freq) / np.array(freq), rtol=1e-5)


DATASET_RECIPES = {
  # recipe: (dataset, classes, crop, eval split)
  (pspnet, 'cityscapes'): ('cityscapes', 19, (713, 713), 'val'),
  (pspnet, 'ade20k'): ('ade20k', 150, (473, 473), 'val'),
  (deeplab_v3, 'cityscapes'): ('cityscapes', 19, (769, 769), 'val'),
  (segnet, 'camvid'): ('camvid', 11, (360, 480), 'test'),
  (fc_densenet103, 'camvid'): ('camvid', 11, (224, 224), 'test'),
}


@pytest.mark.parametrize('recipe', DATASET_RECIPES, ids=lambda r: f'{r[0].__name__}:{r[1]}')
def test_dataset_recipes(recipe):
  module, variant = recipe
  name, classes, crop, eval_split = DATASET_RECIPES[recipe]
  c = module.get_config(variant)
  assert f'--config {module.__name__.rsplit(".", 1)[1]}:{variant}' in module.__doc__
  assert (c.dataset.name, tuple(c.dataset.crop_size), c.dataset.eval_split) == (
    name,
    crop,
    eval_split,
  )
  assert data.dataset_info(c).num_classes == classes
  assert c.dataset.num_classes == 0  # taken from the prepared data


def test_deeplab_v3_cityscapes_evaluates_at_output_stride_8():
  c = deeplab_v3.get_config('cityscapes')
  c.model.kwargs.backbone = 'resnet50'  # same geometry, cheaper to trace
  assert c.model.kwargs.output_stride == 16 and c.eval.model_kwargs.output_stride == 8
  train_model, eval_model = steps.build_model(c), steps.build_model(c, evaluation=True)
  assert (train_model.output_stride, eval_model.output_stride) == (16, 8)
  v_train, out = _abstract(train_model, (1, 65, 97, 3))
  v_eval, out8 = _abstract(eval_model, (1, 65, 97, 3))
  # The same parameters run at another stride: identical trees, logits at the input size.
  assert jax.tree.map(lambda a: a.shape, v_train) == jax.tree.map(lambda a: a.shape, v_eval)
  assert out.shape == out8.shape == (1, 65, 97, 19)


def test_rmsprop_and_exponential_schedule():
  c = fc_densenet103.get_config('camvid')
  assert (c.optim.name, c.optim.schedule, c.optim.decay_steps) == ('rmsprop', 'exponential', 123)
  schedule = optim.make_schedule(c)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(122)) == pytest.approx(1e-3)
  assert float(schedule(123)) == pytest.approx(1e-3 * 0.995)
  assert float(schedule(1230)) == pytest.approx(1e-3 * 0.995**10, rel=1e-5)
  params = {'w': jnp.ones(3)}
  c.optim.weight_decay = 0.0
  tx = optim.make_optimizer(c, params)
  updates, _ = tx.update({'w': jnp.full(3, 2.0)}, tx.init(params), params)
  ref = optax.rmsprop(1e-3, decay=0.9, eps=1e-6)
  expected, _ = ref.update({'w': jnp.full(3, 2.0)}, ref.init(params), params)
  np.testing.assert_allclose(updates['w'], expected['w'], rtol=1e-6)


def test_checkpoint_meta_records_the_classes():
  c = quickstart.get_config('smoke')
  info = data.resolve_config(c)
  meta = checkpointing.checkpoint_meta(c, info)
  assert meta['class_names'] == list(info.class_names) and len(meta['colors']) == 4
  np.testing.assert_array_equal(data.full_palette(meta['colors'])[:4], info.palette[:4])


def test_a_relative_data_dir_is_stored_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  c = common.voc_aug(common.base_config(), (32, 32))
  c.dataset.data_dir = 'tfds'
  data.resolve_config(c)
  assert c.dataset.data_dir == str(tmp_path / 'tfds')
  monkeypatch.setenv('HOME', str(tmp_path))
  c.dataset.data_dir = '~/data'
  data.resolve_config(c)
  assert c.dataset.data_dir == str(tmp_path / 'data')
