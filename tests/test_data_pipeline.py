"""grain pipelines on the generated set: shapes, determinism, resumption, sharding, eval coverage."""

import numpy as np
import pytest

from jaxseg import data
from jaxseg.configs.common import base_config
from jaxseg.data import synthetic

SIZE = 16
N_TRAIN = 8


def _config(**dataset):
  c = base_config()
  c.dataset.num_classes = 5
  c.dataset.synthetic_size = SIZE
  c.dataset.synthetic_train_examples = N_TRAIN
  c.dataset.synthetic_eval_examples = 5
  c.dataset.crop_size = (12, 10)
  c.train.batch_size = 4
  c.eval.batch_size = 2
  for k, v in dataset.items():
    c.dataset[k] = v
  return c


def _identity_config():
  # No augmentation: each batch element is exactly a normalised source image,
  # so it can be traced back to its index.
  return _config(crop_size=(SIZE, SIZE), scale_range=(1.0, 1.0), flip=False)


def _index_of(image, refs):
  hits = [i for i, r in enumerate(refs) if np.array_equal(image, r)]
  assert len(hits) == 1
  return hits[0]


@pytest.fixture(scope='module')
def normalised_train_images():
  return [
    data.normalize(synthetic.generate_example(0, 'train', i, size=SIZE, num_classes=5)['image'])
    for i in range(N_TRAIN)
  ]


def test_train_batch_shapes_and_values():
  it = data.create_train_iterator(_config(), seed=0)
  for _ in range(3):
    b = next(it)
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (4, 12, 10, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (4, 12, 10) and b['label'].dtype == np.int32
    assert set(np.unique(b['label']).tolist()) <= set(range(5)) | {255}
    assert np.isfinite(b['image']).all()


def test_train_deterministic_given_seed():
  a, b, c = (data.create_train_iterator(_config(), seed=s) for s in (3, 3, 4))
  for _ in range(2):
    x, y, z = next(a), next(b), next(c)
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(x['image'], z['image'])


def test_train_iterator_state_roundtrip():
  it = data.create_train_iterator(_config(), seed=7)
  for _ in range(3):  # crosses an epoch boundary (8 examples, batch 4)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  restored = data.create_train_iterator(_config(), seed=7)
  restored.set_state(state)
  for e in expected:
    got = next(restored)
    np.testing.assert_array_equal(got['image'], e['image'])
    np.testing.assert_array_equal(got['label'], e['label'])


def test_train_iterator_orbax_checkpoint(tmp_path):
  import grain
  import orbax.checkpoint as ocp

  it = data.create_train_iterator(_config(), seed=1)
  next(it)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = next(it)
  restored = data.create_train_iterator(_config(), seed=1)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  np.testing.assert_array_equal(next(restored)['image'], expected['image'])


def test_train_epochs_cover_every_example(normalised_train_images):
  it = data.create_train_iterator(_identity_config(), seed=0)
  for _ in range(2):
    seen = [_index_of(im, normalised_train_images) for _ in range(2) for im in next(it)['image']]
    assert sorted(seen) == list(range(N_TRAIN))


def test_train_sharding_per_process(normalised_train_images):
  config = _identity_config()
  config.train.batch_size = 4
  per_process = []
  for p in range(2):
    it = data.create_train_iterator(config, seed=0, process_index=p, process_count=2)
    batches = [next(it) for _ in range(2)]  # one epoch of this process's 4 examples
    assert batches[0]['image'].shape[0] == 2
    per_process.append(
      {_index_of(im, normalised_train_images) for b in batches for im in b['image']}
    )
  assert len(per_process[0]) == len(per_process[1]) == 4
  assert per_process[0] | per_process[1] == set(range(N_TRAIN))


def test_train_augmentation_changes_views():
  it = data.create_train_iterator(_config(scale_range=(0.5, 2.0)), seed=0)
  labels = np.concatenate([next(it)['label'] for _ in range(4)])
  assert (labels == 255).any()  # void boundaries, and padding whenever scale < 12/16


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_covers_each_example_once(process_count):
  config = _config()
  refs = [synthetic.generate_example(0, 'val', i, size=SIZE, num_classes=5) for i in range(5)]
  ref_images = [data.normalize(r['image']) for r in refs]
  counts = np.zeros(5, int)
  num_batches = set()
  for p in range(process_count):
    ev = data.create_eval_iterator(
      config, batch_size=2 * process_count, process_index=p, process_count=process_count
    )
    batches = list(ev)
    assert len(batches) == len(ev)
    num_batches.add(len(batches))
    for b in batches:
      assert b['image'].shape == (2, SIZE, SIZE, 3) and b['label'].shape == (2, SIZE, SIZE)
      assert b['mask'].shape == (2,) and b['mask'].dtype == bool
      for img, lab, m in zip(b['image'], b['label'], b['mask'], strict=True):
        if m:
          i = _index_of(img, ref_images)
          np.testing.assert_array_equal(lab, refs[i]['label'])
          counts[i] += 1
        else:
          assert (img == 0).all() and (lab == 255).all()
  assert len(num_batches) == 1  # every process runs the same number of steps
  np.testing.assert_array_equal(counts, 1)
  assert data.num_examples(config, 'val') == 5


def test_eval_padding_to_eval_size():
  config = _config(eval_size=(20, 18))
  b = next(iter(data.create_eval_iterator(config, split='val')))
  assert b['image'].shape == (2, 20, 18, 3)
  assert (b['label'][:, SIZE:] == 255).all() and (b['label'][:, :, SIZE:] == 255).all()
  assert (b['image'][:, SIZE:] == 0).all()
  with pytest.raises(
    ValueError,
    match=r"eval example 'val_00000' is 16x16, larger than config.dataset.eval_size 8x8: "
    r'set --config.dataset.eval_size="\(16, 16\)"',
  ):
    next(iter(data.create_eval_iterator(_config(eval_size=(8, 8)))))


def test_dataset_info_and_counts():
  config = _config()
  info = data.dataset_info(config)
  assert info['num_classes'] == 5 and info['ignore_index'] == 255
  assert info['class_names'][0] == 'background' and len(info['class_names']) == 5
  assert info['palette'].shape == (256, 3) and info['palette'].dtype == np.uint8
  assert data.num_examples(config, 'train') == N_TRAIN
  assert data.num_examples(config) == 5


def test_bad_configs():
  with pytest.raises(ValueError, match=r'config.train.batch_size \d+ must be a positive multiple'):
    data.create_train_iterator(_config(), seed=0, process_count=3)
  with pytest.raises(ValueError, match='process_index'):
    data.create_eval_iterator(_config(), process_index=2, process_count=2)
  with pytest.raises(ValueError, match="unknown dataset 'citiscapes'. Did you mean 'cityscapes'"):
    data.create_train_iterator(_config(name='citiscapes'), seed=0)
  with pytest.raises(ValueError, match='normalize mode'):
    data.create_train_iterator(_config(normalize='torch'), seed=0)


def test_examples_are_named_by_split_and_index():
  source = data.get_source(_config(), 'val')
  assert [source.example_id(i) for i in range(len(source))] == [f'val_0000{i}' for i in range(5)]
  assert synthetic.example_id('train', 12345) == 'train_12345'
  with pytest.raises(IndexError, match='out of range'):
    source.example_id(5)
