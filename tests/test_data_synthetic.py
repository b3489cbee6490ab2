"""The generated dataset: determinism, label conventions, image/label agreement, learnability."""

import numpy as np
import pytest

from jaxseg.data import synthetic


def test_deterministic_per_seed_split_index():
  a = synthetic.generate_example(0, 'train', 5, size=32, num_classes=6)
  b = synthetic.generate_example(0, 'train', 5, size=32, num_classes=6)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  for other in (
    synthetic.generate_example(0, 'train', 6, size=32, num_classes=6),
    synthetic.generate_example(0, 'val', 5, size=32, num_classes=6),
    synthetic.generate_example(1, 'train', 5, size=32, num_classes=6),
  ):
    assert not np.array_equal(a['image'], other['image'])


def test_source_shapes_dtypes_and_rectangular_size():
  src = synthetic.SyntheticSegmentation('val', 3, size=(24, 40), num_classes=4)
  assert len(src) == 3
  ex = src[2]
  assert ex['image'].shape == (24, 40, 3) and ex['image'].dtype == np.uint8
  assert ex['label'].shape == (24, 40) and ex['label'].dtype == np.uint8
  assert 'num_examples=3' in repr(src) and '0x' not in repr(src)
  with pytest.raises(IndexError, match='out of range'):
    src[3]


def _examples(n, size=48, num_classes=9, split='train'):
  return [
    synthetic.generate_example(0, split, i, size=size, num_classes=num_classes) for i in range(n)
  ]


def test_label_values_and_one_pixel_void_boundary():
  num_classes = 9
  seen = set()
  for ex in _examples(40, num_classes=num_classes):
    lab = ex['label'].astype(np.int32)
    values = set(np.unique(lab).tolist())
    assert values <= set(range(num_classes)) | {255}
    seen |= values
    # Void separates every pair of different classes: no two 4-adjacent
    # labelled pixels carry different classes.
    for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
      both = (a != 255) & (b != 255)
      assert np.all(a[both] == b[both])
    # The band is one pixel wide: every void pixel touches a labelled pixel.
    void = lab == 255
    p = np.pad(lab, 1, constant_values=255)
    touches = np.zeros_like(void)
    for sy, sx in ((0, 1), (2, 1), (1, 0), (1, 2)):
      touches |= p[sy : sy + lab.shape[0], sx : sx + lab.shape[1]] != 255
    assert np.all(touches[void])
    assert void.mean() < 0.2
  assert seen == set(range(num_classes)) | {255}  # every class appears in 40 images


def test_image_agrees_with_label():
  # Shape pixels carry their class colour (within jitter, texture and noise);
  # background pixels are muted.
  per_class = {}
  for ex in _examples(30, num_classes=5):
    for k in range(1, 5):
      sel = ex['label'] == k
      if sel.sum() > 20:
        per_class.setdefault(k, []).append(ex['image'][sel].astype(np.float32).mean(0))
  for k, means in per_class.items():
    err = np.abs(np.median(means, 0) - synthetic.class_color(k))
    assert err.max() < 35, (k, err)


def test_learnable_by_a_per_pixel_colour_classifier():
  """Colour alone already separates the classes far above chance (a conv net also sees shape)."""
  num_classes = 9
  train, val = (
    _examples(48, num_classes=num_classes),
    _examples(16, num_classes=num_classes, split='val'),
  )
  x = np.concatenate([e['image'].reshape(-1, 3) for e in train]).astype(np.float32)
  y = np.concatenate([e['label'].ravel() for e in train])
  centroids = np.stack([x[y == k].mean(0) for k in range(num_classes)])
  conf = np.zeros((num_classes, num_classes), np.int64)
  for e in val:
    px = e['image'].reshape(-1, 3).astype(np.float32)
    pred = np.argmin(((px[:, None] - centroids[None]) ** 2).sum(-1), -1)
    lab = e['label'].ravel()
    keep = lab != 255
    np.add.at(conf, (lab[keep], pred[keep]), 1)
  iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
  assert np.nanmean(iou) > 0.45, iou  # chance is ~1/9


def test_class_names():
  assert synthetic.class_names(3) == ('background', 'disc', 'square')
  names = synthetic.class_names(21)
  assert len(set(names)) == 21 and names[9] == 'disc_2'


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(split='training'), 'split must be one of'),
    (dict(num_classes=1), 'num_classes'),
    (dict(num_examples=0), 'num_examples'),
  ],
)
def test_bad_arguments(kwargs, match):
  args = dict(split='train', num_examples=4, size=16, num_classes=4) | kwargs
  with pytest.raises(ValueError, match=match):
    synthetic.SyntheticSegmentation(args.pop('split'), args.pop('num_examples'), **args)
