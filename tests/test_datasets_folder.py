"""The folder dataset (jaxseg.data.folder) on small generated image/mask trees.

Every mask encoding and classes-file form is prepared and read back through
`datasets.load_source`, pixel for pixel; then the splits, the skips, the
errors (nothing prepared after one), the CLI, and one short training run with
evaluation on a prepared folder.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxseg import data
from jaxseg.data import datasets, prepare
from jaxseg.data.builder import PrepareError
from jaxseg.data.palette import voc_palette

RNG = np.random.default_rng(0)
# Colour-coded classes: (128, 128, 128) looks gray but is a colour like any other.
COLORS = {'background': (0, 0, 0), 'road': (128, 64, 128), 'gray': (128, 128, 128)}


def _blocks(shape, values, rng):
  """A mask of 4x4 blocks drawn from `values` (every value appears at least once)."""
  h, w = shape
  ids = rng.choice(np.asarray(values), size=(h // 4, w // 4))
  ids.flat[: len(values)] = values
  return ids.repeat(4, 0).repeat(4, 1)


def _image(shape, rng):
  return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def _save(path, array, mode=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path, **kwargs)


def _save_p(path, ids):
  im = Image.fromarray(ids.astype(np.uint8), 'P')
  # A palette unrelated to the classes: the indices are the ids, the PNG's colours are not read.
  im.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tolist())
  im.save(path)


def _decoded(path):
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def _write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _prepare(manual, out, name, **options):
  return datasets.prepare_dataset(
    'folder', config=name, manual_dir=str(manual), data_dir=str(out), **options
  )


def _records(out, name, split):
  source = datasets.load_source('folder', split, config=name, data_dir=str(out))
  return {source.example_id(i): source[i] for i in range(len(source))}


def _keys(out, name, split):
  source = datasets.load_source('folder', split, config=name, data_dir=str(out))
  return [source.example_id(i) for i in range(len(source))]


def _metadata(out, name):
  with open(os.path.join(out, 'folder_segmentation', name, '1.0.0', 'metadata.json')) as f:
    return json.load(f)


def _not_prepared(out, name):
  assert not os.path.exists(os.path.join(out, 'folder_segmentation', name, '1.0.0'))
  with pytest.raises(FileNotFoundError, match=f'jaxseg prepare --dataset folder --config {name}'):
    datasets.load_source('folder', 'train', config=name, data_dir=str(out))


# -- index masks (L, P, I;16, TIFF), every image format, splits from files ---------------------


@pytest.fixture(scope='module')
def index_tree(tmp_path_factory):
  """3 classes in a text file without colours; one mask encoding and image format per stem."""
  root = tmp_path_factory.mktemp('index')
  rng = np.random.default_rng(1)
  images, masks = root / 'images', root / 'masks'
  expected = {}

  def pair(stem, image_name, shape, save_mask, values=(0, 1, 2, 255), **image_kwargs):
    ids = _blocks(shape, values, rng)
    _save(str(images / image_name), _image(shape, rng), **image_kwargs)
    save_mask(ids)
    expected[stem] = (str(images / image_name), ids)

  pair('a_l', 'a_l.png', (16, 20), lambda m: _save(str(masks / 'a_l.png'), m.astype(np.uint8)))
  pair('b_p', 'b_p.JPG', (20, 24), lambda m: _save_p(str(masks / 'b_p.png'), m), quality=90)
  pair('c_16', 'c_16.bmp', (24, 16), lambda m: _save(str(masks / 'c_16.png'), m.astype(np.uint16)))
  pair(
    'd_tif', 'd_tif.tiff', (16, 16), lambda m: _save(str(masks / 'd_tif.tif'), m.astype(np.uint8))
  )
  pair(
    'e_webp',
    'e_webp.webp',
    (12, 16),
    lambda m: _save(str(masks / 'e_webp.bmp'), m.astype(np.uint8)),
    lossless=True,
  )
  # Not images: ignored without a word.
  (images / 'Thumbs.db').write_bytes(b'\0' * 64)
  (images / 'notes.txt').write_text('not an image')
  (images / '._a_l.png').write_bytes(b'AppleDouble')
  _write_lines(str(root / 'classes.txt'), ['# pets', 'background', '', 'cat  # a comment', 'dog'])
  _write_lines(str(root / 'splits' / 'train.txt'), ['c_16', 'a_l', '# comment', 'e_webp.webp'])
  _write_lines(str(root / 'splits' / 'val.txt'), ['d_tif', 'b_p', ''])
  return root, expected


@pytest.fixture(scope='module')
def index_prepared(index_tree, tmp_path_factory):
  root, expected = index_tree
  out = tmp_path_factory.mktemp('index_out')
  builder = _prepare(root, out, 'pets')
  return builder, out, expected


def test_index_masks_and_split_files(index_prepared):
  builder, out, expected = index_prepared
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {'train': 3, 'val': 2}
  assert not builder.skipped_files.get('train') and not builder.skipped_files.get('val')
  # Sorted by stem within a split; the stem is the example id.
  assert _keys(out, 'pets', 'train') == ['a_l', 'c_16', 'e_webp']
  assert _keys(out, 'pets', 'val') == ['b_p', 'd_tif']
  for split in ('train', 'val'):
    for key, rec in _records(out, 'pets', split).items():
      image_path, ids = expected[key]
      np.testing.assert_array_equal(rec['label'], ids, err_msg=key)
      np.testing.assert_array_equal(rec['image'], _decoded(image_path), err_msg=key)
  info = datasets.dataset_info('folder', 'pets', data_dir=str(out))
  assert info.class_names == ('background', 'cat', 'dog') and info.num_classes == 3
  assert info.splits == {'train': 3, 'val': 2}
  # No colours in the file: VOC's palette, the same on every run.
  np.testing.assert_array_equal(info.palette[:3], voc_palette()[:3])
  meta = _metadata(out, 'pets')
  assert meta['classes']['names'] == ['background', 'cat', 'dog']
  assert meta['classes']['colors'] is None
  assert meta['classes']['file'].endswith('classes.txt')
  assert meta['split_source'] == 'splits/*.txt' and meta['unlisted'] == 0
  assert meta['reduce_zero_label'] is False and meta['unknown_color'] == 'error'


def test_reduce_zero_label(index_tree, tmp_path):
  root, expected = index_tree
  _prepare(root, tmp_path, 'pets_rzl', reduce_zero_label=True)
  table = np.r_[255, np.arange(254), 255]  # 0 -> 255, k -> k - 1, 255 stays
  for split in ('train', 'val'):
    for key, rec in _records(tmp_path, 'pets_rzl', split).items():
      np.testing.assert_array_equal(rec['label'], table[expected[key][1]], err_msg=key)
  assert _metadata(tmp_path, 'pets_rzl')['reduce_zero_label'] is True


# -- binary masks, JSON list, seeded split -----------------------------------------------------


@pytest.fixture(scope='module')
def binary_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('binary')
  rng = np.random.default_rng(2)
  expected = {}
  values = {
    'm0': ((0, 255), (0, 1)),  # 0/255: 255 is the foreground with 2 classes
    'm1': ((0, 1), (0, 1)),  # already ids
    'm2': ((0, 1, 255), (0, 1, 255)),  # 1 is the foreground, so 255 is ignore here
    'm3': ((0, 255), (0, 1)),  # a palette PNG with 0/255 indices is binary too
  }
  for i in range(8):
    stem = f'm{i}'
    raw_values, ids_values = values.get(stem, ((0, 255), (0, 1)))
    raw = _blocks((16, 16), raw_values, rng)
    ids = np.asarray(ids_values)[np.searchsorted(raw_values, raw)]
    _save(str(root / 'images' / f'{stem}.png'), _image((16, 16), rng))
    if stem == 'm3':
      _save_p(str(root / 'masks' / f'{stem}.png'), raw)
    else:
      _save(str(root / 'masks' / f'{stem}.png'), raw.astype(np.uint8))
    expected[stem] = ids
  (root / 'classes.json').write_text('["background", "object"]')
  return root, expected


def _seeded_val(stems, fraction, seed):
  stems = sorted(stems)
  n_val = min(max(int(np.floor(fraction * len(stems) + 0.5)), 1), len(stems) - 1)
  return sorted(stems[i] for i in np.random.default_rng(seed).permutation(len(stems))[:n_val])


def test_binary_masks_and_seeded_split(binary_tree, tmp_path):
  root, expected = binary_tree
  _prepare(root, tmp_path / 'a', 'fg', val_fraction=0.25, seed=3)
  val = _keys(tmp_path / 'a', 'fg', 'val')
  train = _keys(tmp_path / 'a', 'fg', 'train')
  assert val == _seeded_val(expected, 0.25, 3) and len(val) == 2
  assert train == sorted(set(expected) - set(val))
  for split in ('train', 'val'):
    for key, rec in _records(tmp_path / 'a', 'fg', split).items():
      np.testing.assert_array_equal(rec['label'], expected[key], err_msg=key)
  assert _metadata(tmp_path / 'a', 'fg')['split_source'] == 'seeded: val_fraction=0.25, seed=3'
  # The same seed draws the same split; the default (0.1 of 8, rounded, at least 1) draws one.
  _prepare(root, tmp_path / 'b', 'fg', val_fraction=0.25, seed=3)
  assert _keys(tmp_path / 'b', 'fg', 'val') == val
  # Prepared data is kept as it is; from other options that is an error, not stale data.
  _prepare(root, tmp_path / 'b', 'fg', val_fraction=0.25, seed=3)
  with pytest.raises(ValueError, match=r"'fg' is already prepared .* seed=3 then, .* seed=4 now"):
    _prepare(root, tmp_path / 'b', 'fg', val_fraction=0.25, seed=4)
  # --overwrite replaces it with the new split.
  _prepare(root, tmp_path / 'b', 'fg', val_fraction=0.25, seed=4, overwrite=True)
  assert _keys(tmp_path / 'b', 'fg', 'val') == _seeded_val(expected, 0.25, 4)
  _prepare(root, tmp_path / 'c', 'fg')
  assert _keys(tmp_path / 'c', 'fg', 'val') == _seeded_val(expected, 0.1, 0)
  assert len(_keys(tmp_path / 'c', 'fg', 'train')) == 7


# -- colour masks (RGB, RGBA, gray-looking RGB) and the coloured classes-file forms -------------


def _color_tree(root, classes_file, classes_text, extra=None):
  rng = np.random.default_rng(3)
  palette = np.asarray(list(COLORS.values()), np.uint8)
  expected = {}
  for stem, shape, values in (
    ('r0', (16, 20), (0, 1, 2)),
    ('r1', (20, 16), (0, 1, 2)),
    ('r2', (16, 16), (0, 2)),
    ('r3', (24, 24), (1, 2)),
  ):
    ids = _blocks(shape, values, rng)
    rgb = palette[ids]
    _save(str(root / 'images' / f'{stem}.jpg'), _image(shape, rng))
    if stem == 'r1':  # RGBA: the alpha channel is not read
      alpha = rng.integers(0, 256, shape, dtype=np.uint8)
      _save(str(root / 'masks' / f'{stem}.png'), np.dstack([rgb, alpha]), 'RGBA')
    else:
      _save(str(root / 'masks' / f'{stem}.png'), rgb)
    expected[stem] = ids
  (root / classes_file).write_text(classes_text)
  return expected


CLASS_FILE_FORMS = {
  'json_objects': (
    'classes.json',
    json.dumps([{'name': n, 'color': list(c)} for n, c in COLORS.items()], indent=1),
  ),
  'json_dict': ('classes.json', json.dumps({n: list(c) for n, c in COLORS.items()})),
  'text': (
    'classes.txt',
    'background 0 0 0\nroad: 128, 64, 128\n\ngray 128,128,128  # looks gray\n',
  ),
}


@pytest.fixture(scope='module')
def color_prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('color')
  expected = _color_tree(root, *CLASS_FILE_FORMS['json_objects'])
  out = tmp_path_factory.mktemp('color_out')
  _prepare(root, out, 'roads')
  return root, out, expected


@pytest.mark.parametrize('form', sorted(CLASS_FILE_FORMS))
def test_color_masks_and_class_file_forms(form, tmp_path, color_prepared):
  if form == 'json_objects':
    _, out, expected = color_prepared
  else:
    expected = _color_tree(tmp_path / 'manual', *CLASS_FILE_FORMS[form])
    out = tmp_path / 'out'
    _prepare(tmp_path / 'manual', out, 'roads')
  for split in ('train', 'val'):
    for key, rec in _records(out, 'roads', split).items():
      np.testing.assert_array_equal(rec['label'], expected[key], err_msg=key)
  info = datasets.dataset_info('folder', 'roads', data_dir=str(out))
  assert info.class_names == tuple(COLORS) and info.num_classes == 3
  np.testing.assert_array_equal(info.palette[:3], list(COLORS.values()))
  assert not info.palette[3:].any()
  assert _metadata(out, 'roads')['classes']['colors'] == [list(c) for c in COLORS.values()]


def test_unknown_color(tmp_path):
  manual = tmp_path / 'manual'
  expected = _color_tree(manual, *CLASS_FILE_FORMS['json_dict'])
  mask_path = manual / 'masks' / 'r0.png'
  rgb = np.asarray(Image.open(mask_path)).copy()
  rgb[:2, :5] = (1, 2, 3)  # 10 pixels of a colour the classes file does not have
  rgb[-1, :3] = (250, 0, 0)  # 3 more of another
  Image.fromarray(rgb).save(mask_path)
  with pytest.raises(PrepareError) as e:
    _prepare(manual, tmp_path / 'out', 'roads')
  message = str(e.value)
  assert str(mask_path) in message and '2 colour(s) not in the classes file' in message
  assert '(1, 2, 3): 10 px' in message and '(250, 0, 0): 3 px' in message
  assert '--unknown_color ignore' in message
  _not_prepared(tmp_path / 'out', 'roads')
  # Ignored: those pixels become 255, the rest maps as before.
  _prepare(manual, tmp_path / 'out', 'roads', unknown_color='ignore')
  label = {
    **_records(tmp_path / 'out', 'roads', 'train'),
    **_records(tmp_path / 'out', 'roads', 'val'),
  }
  want = expected['r0'].copy()
  want[:2, :5] = 255
  want[-1, :3] = 255
  np.testing.assert_array_equal(label['r0']['label'], want)
  assert _metadata(tmp_path / 'out', 'roads')['unknown_color'] == 'ignore'


def test_rgb_masks_need_colors(tmp_path):
  manual = tmp_path / 'manual'
  _color_tree(manual, 'classes.json', json.dumps(list(COLORS)))
  with pytest.raises(PrepareError, match='an RGB colour mask, but the classes file .* no colours'):
    _prepare(manual, tmp_path / 'out', 'roads')
  _not_prepared(tmp_path / 'out', 'roads')


# -- label values, classes files, layout: errors -----------------------------------------------


def _simple_tree(root, n=3, values=(0, 1, 2), classes=('a', 'b', 'c')):
  rng = np.random.default_rng(4)
  for i in range(n):
    _save(str(root / 'images' / f'p{i}.png'), _image((8, 8), rng))
    _save(str(root / 'masks' / f'p{i}.png'), _blocks((8, 8), values, rng).astype(np.uint8))
  _write_lines(str(root / 'classes.txt'), list(classes))


def test_label_values_beyond_the_classes(tmp_path):
  manual = tmp_path / 'manual'
  _simple_tree(manual, n=4)
  bad = np.zeros((8, 8), np.uint8)
  bad[0, 0], bad[0, 1] = 7, 3
  for stem in ('p1', 'p2'):
    Image.fromarray(bad).save(manual / 'masks' / f'{stem}.png')
  with pytest.raises(PrepareError) as e:
    _prepare(manual, tmp_path / 'out', 'abc', val_fraction=0.5)
  message = str(e.value)
  in_split = [s for s in ('p1', 'p2') if str(manual / 'masks' / f'{s}.png') in message]
  assert in_split, message  # both are named, the split holding either fails first
  assert 'values 3, 7 are not class ids' in message and 'has 3 classes' in message
  assert 'nothing was prepared' in message
  _not_prepared(tmp_path / 'out', 'abc')
  assert not os.path.exists(tmp_path / 'out')  # nor the empty folders TFDS made for it


def test_classes_file_errors(tmp_path):
  manual = tmp_path / 'manual'
  _simple_tree(manual)
  cases = {
    'a\nb\na\n': r'classes.txt:3: class name .a. is already the name of the class on line 1',
    '["a", "b", "a"]': r'classes.json:1: class name .a. is already',
    '{"a": [0, 0, 0],\n "a": [1, 1, 1]}': r'classes.json:2: class name .a. is already',
    'a 0 0 0\nb\n': r"colours are given for 1 of 2 classes.*'b' \(line 2\)",
    'a 0 0 0\nb 0 0 0\n': r'classes.txt:2: class .b. has the colour \(0, 0, 0\) of class .a.',
    'a\n': r'1 class\(es\); a dataset needs 2 to 255',
    'a: 1, 2\nb\n': r'classes.txt:1: expected NAME, NAME R G B or NAME: R, G, B',
    'a 0 0 300\nb 1 1 1\n': r'classes.txt:1: colour values must be 0..255',
    '[\n "a",\n 3\n]': r'classes.json:3: expected a class name',
    '[{"name": "a", "colour": [1, 2, 3]}, "b"]': r'classes.json:1: a class object needs',
    '["a", "b",]': r'classes.json:1: not valid JSON',
  }
  for text, pattern in cases.items():
    for f in ('classes.txt', 'classes.json'):
      if os.path.exists(manual / f):
        os.remove(manual / f)
    name = 'classes.json' if text.lstrip()[0] in '[{' else 'classes.txt'
    (manual / name).write_text(text)
    with pytest.raises(PrepareError, match=pattern):
      _prepare(manual, tmp_path / 'out', 'abc')
  assert not os.path.exists(tmp_path / 'out' / 'folder_segmentation')  # refused before TFDS ran
  # Both default files: ambiguous. An explicit --classes path settles it.
  (manual / 'classes.txt').write_text('x\ny\nz\n')
  with pytest.raises(PrepareError, match='has both classes.json and classes.txt'):
    _prepare(manual, tmp_path / 'out', 'abc')
  other = tmp_path / 'my_classes.txt'
  other.write_text('one\ntwo\nthree\n')
  _prepare(manual, tmp_path / 'out', 'abc', classes=str(other))
  assert datasets.dataset_info('folder', 'abc', data_dir=str(tmp_path / 'out')).class_names == (
    'one',
    'two',
    'three',
  )


def test_layout_and_option_errors(tmp_path):
  manual = tmp_path / 'manual'
  (manual / 'images').mkdir(parents=True)
  with pytest.raises(FileNotFoundError) as e:
    _prepare(manual, tmp_path / 'out', 'x')
  assert 'has no masks/ and classes file (classes.json or classes.txt' in str(e.value)
  assert 'DIR/images/STEM.jpg' in str(e.value)
  _simple_tree(manual)
  os.remove(manual / 'classes.txt')
  with pytest.raises(FileNotFoundError, match=r'has no classes file \(classes.json or classes.txt'):
    _prepare(manual, tmp_path / 'out', 'x')
  with pytest.raises(FileNotFoundError, match=r"classes file 'nope.txt' \(given with --classes\)"):
    _prepare(manual, tmp_path / 'out', 'x', classes='nope.txt')
  _write_lines(str(manual / 'classes.txt'), ['a', 'b', 'c'])
  for bad in ('', 'my set', 'a/b', '.hidden', 'x:1'):
    with pytest.raises(ValueError, match='folder dataset'):
      _prepare(manual, tmp_path / 'out', bad)
  with pytest.raises(TypeError, match='takes the prepare options classes, val_fraction'):
    _prepare(manual, tmp_path / 'out', 'x', val_fractoin=0.2)
  for fraction in (0, 1, 1.5, -0.1):
    with pytest.raises(ValueError, match=r'val_fraction must be in \(0, 1\)'):
      _prepare(manual, tmp_path / 'out', 'x', val_fraction=fraction)
  with pytest.raises(ValueError, match="unknown_color must be 'error' or 'ignore'"):
    _prepare(manual, tmp_path / 'out', 'x', unknown_color='drop')
  # The training side names the prepare command when the data is not there.
  with pytest.raises(FileNotFoundError, match='jaxseg prepare --dataset folder --config x'):
    datasets.dataset_info('folder', 'x', data_dir=str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='needs a name'):
    datasets.dataset_info('folder', data_dir=str(tmp_path / 'out'))


def test_split_list_errors(tmp_path):
  manual = tmp_path / 'manual'
  _simple_tree(manual, n=4)
  splits = manual / 'splits'
  _write_lines(str(splits / 'train.txt'), ['p0', 'p1'])
  with pytest.raises(FileNotFoundError, match='val.txt is not'):
    _prepare(manual, tmp_path / 'out', 'x')
  _write_lines(str(splits / 'val.txt'), ['p2', 'p1'])
  with pytest.raises(
    PrepareError, match=r"val.txt:2: 'p1' is listed also in .*train.txt \(line 2\)"
  ):
    _prepare(manual, tmp_path / 'out', 'x')
  _write_lines(str(splits / 'val.txt'), ['p2', 'p9'])
  with pytest.raises(PrepareError, match=r"val.txt:2: 'p9' has no image in .* and no mask"):
    _prepare(manual, tmp_path / 'out', 'x')
  _write_lines(str(splits / 'val.txt'), ['p2'])
  with pytest.raises(ValueError, match='seed draw a split, but .* has splits/train.txt'):
    _prepare(manual, tmp_path / 'out', 'x', seed=1)
  builder = _prepare(manual, tmp_path / 'out', 'x')  # p3 is in neither list: not used
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {'train': 2, 'val': 1}
  assert _metadata(tmp_path / 'out', 'x')['unlisted'] == 1
  _write_lines(str(splits / 'val.txt'), ['p2', 'p3'])
  with pytest.raises(ValueError, match='val: 1 image/mask pairs then, 2 now'):
    _prepare(manual, tmp_path / 'out', 'x')


# -- skipped files, and the CLI ------------------------------------------------------------------


@pytest.fixture(scope='module')
def skips_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('skips')
  _simple_tree(root, n=4)
  rng = np.random.default_rng(5)
  _save(str(root / 'images' / 'size.png'), _image((8, 12), rng))
  _save(str(root / 'masks' / 'size.png'), np.zeros((8, 8), np.uint8))
  _save(str(root / 'images' / 'nomask.png'), _image((8, 8), rng))
  _save(str(root / 'masks' / 'nomask.jpg'), np.zeros((8, 8, 3), np.uint8))  # lossy: not a mask
  _save(str(root / 'masks' / 'noimage.png'), np.zeros((8, 8), np.uint8))
  (root / 'images' / 'broken.jpg').write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
  _save(str(root / 'masks' / 'broken.png'), np.zeros((8, 8), np.uint8))
  _write_lines(str(root / 'splits' / 'train.txt'), ['p0', 'p1', 'nomask', 'broken'])
  _write_lines(str(root / 'splits' / 'val.txt'), ['p2', 'p3', 'size', 'noimage'])
  return root


def test_skipped_files(skips_tree, tmp_path):
  builder = _prepare(skips_tree, tmp_path, 'skips')
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {'train': 2, 'val': 2}
  train = dict(builder.skipped_files['train'])
  val = dict(builder.skipped_files['val'])
  assert sorted(train) == ['broken', 'nomask'] and sorted(val) == ['noimage', 'size']
  assert train['broken'].startswith('unreadable: ') and 'broken.jpg' in train['broken']
  assert train['nomask'].startswith('no_mask: ') and 'nomask.jpg is lossy' in train['nomask']
  assert val['noimage'].startswith('no_image: ')
  assert val['size'] == 'size_mismatch: image 8x12 but label 8x8'
  assert dict(builder.skipped['train']) == {'no_mask': 1, 'unreadable': 1}
  meta = _metadata(tmp_path, 'skips')
  assert sorted(k for k, _ in meta['splits']['val']['skipped']) == ['noimage', 'size']


def test_split_without_a_usable_pair(tmp_path):
  manual = tmp_path / 'manual'
  _simple_tree(manual, n=2)
  (manual / 'images' / 'p0.png').write_bytes(b'not a png')  # p0 is the val pair
  with pytest.raises(
    PrepareError, match=r"split 'val' of folder 'x' has no usable .*\n  p0: unreadable: "
  ):
    _prepare(manual, tmp_path / 'out', 'x', val_fraction=0.5, seed=1)
  _not_prepared(tmp_path / 'out', 'x')


def test_cli(skips_tree, tmp_path, capsys):
  argv = ['--dataset', 'folder', '--config', 'skips', '--manual_dir', str(skips_tree)]
  argv += ['--data_dir', str(tmp_path), '--classes', str(skips_tree / 'classes.txt')]
  assert prepare.main(argv) == 0
  printed = capsys.readouterr().out
  assert 'Preparing folder_segmentation/skips from local files' in printed
  assert 'train: 2 examples, skipped 2:' in printed and 'val: 2 examples, skipped 2:' in printed
  assert '  broken: unreadable: ' in printed and '  size: size_mismatch: image 8x12' in printed
  assert '  nomask: no_mask: ' in printed and '  noimage: no_image: ' in printed
  assert '--config.dataset.name=folder --config.dataset.config=skips' in printed


# -- training on a prepared folder ---------------------------------------------------------------


def _train_config(out, name, num_classes=0):
  from jaxseg.configs import quickstart

  c = quickstart.get_config('smoke')
  c.dataset.update(
    dict(
      name='folder',
      config=name,
      data_dir=str(out),
      num_classes=num_classes,
      crop_size=(16, 16),
      eval_size=(),
    )
  )
  c.model.kwargs = {'features': 4, 'depth': 2}
  c.train.num_steps = 2
  c.predict.num_images = 0
  return c


def test_train_iterator_is_deterministic_and_resumable(color_prepared):
  _, out, _ = color_prepared
  c = _train_config(out, 'roads')

  def take(it, n):
    return [next(it) for _ in range(n)]

  a, b = (
    take(data.create_train_iterator(c, seed=0), 4),
    take(data.create_train_iterator(c, seed=0), 4),
  )
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  it = data.create_train_iterator(c, seed=0)
  take(it, 2)
  state = it.get_state()
  fresh = data.create_train_iterator(c, seed=0)
  fresh.set_state(state)
  for x, y in zip(take(fresh, 2), a[2:], strict=True):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert a[0]['label'].shape == (2, 16, 16)
  assert set(np.unique(np.concatenate([x['label'] for x in a])).tolist()) <= {0, 1, 2, 255}


def test_train_and_evaluate(color_prepared, tmp_path):
  from jaxseg.train import eval as eval_lib
  from jaxseg.train import train_lib

  _, out, _ = color_prepared
  c = _train_config(out, 'roads')
  summary = train_lib.train_and_evaluate(c, str(tmp_path / 'run'), progress=False)
  assert summary['step'] == 2
  assert c.dataset.num_classes == 3  # from the prepared dataset, not the config
  result = eval_lib.evaluate_checkpoint(str(tmp_path / 'run'), progress=False)
  assert list(result['per_class_iou']) == list(COLORS)
  assert np.asarray(result['confusion']).shape == (3, 3)
  assert result['invalid_labels'] == 0
  wrong = _train_config(out, 'roads', num_classes=5)
  with pytest.raises(ValueError, match=r"num_classes=5 but folder 'roads' has 3 classes"):
    train_lib.train_and_evaluate(wrong, str(tmp_path / 'wrong'), progress=False)
  # The workdir resumes: the checkpoint's data-iterator state restores into the folder source.
  more = _train_config(out, 'roads')
  more.train.num_steps = 3
  resumed = train_lib.train_and_evaluate(more, str(tmp_path / 'run'), progress=False)
  assert resumed['step'] == 3


def test_a_failed_overwrite_keeps_the_prepared_data(tmp_path):
  manual, out = tmp_path / 'manual', tmp_path / 'out'
  _simple_tree(manual, n=4)
  _prepare(manual, out, 'keep', val_fraction=0.5)
  before = {s: _keys(out, 'keep', s) for s in ('train', 'val')}
  labels = _records(out, 'keep', 'train')
  bad = np.zeros((8, 8), np.uint8)
  bad[0, 0] = 9
  Image.fromarray(bad).save(manual / 'masks' / 'p0.png')
  with pytest.raises(PrepareError, match='p0.png: value 9 is not a class id'):
    _prepare(manual, out, 'keep', val_fraction=0.5, overwrite=True)
  assert {s: _keys(out, 'keep', s) for s in ('train', 'val')} == before
  for key, rec in _records(out, 'keep', 'train').items():
    np.testing.assert_array_equal(rec['label'], labels[key]['label'])
  assert sorted(os.listdir(out)) == ['downloads', 'folder_segmentation']  # no staging left
  # A complete one replaces it.
  Image.fromarray(np.full((8, 8), 2, np.uint8)).save(manual / 'masks' / 'p0.png')
  builder = _prepare(manual, out, 'keep', val_fraction=0.5, overwrite=True)
  assert builder.was_prepared
  records = {**_records(out, 'keep', 'train'), **_records(out, 'keep', 'val')}
  np.testing.assert_array_equal(records['p0']['label'], np.full((8, 8), 2))
  assert sorted(os.listdir(out / 'folder_segmentation' / 'keep')) == ['1.0.0']
