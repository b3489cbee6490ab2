"""Augmentation keeps image and label aligned; normalisation modes are exact and invertible."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxseg.data import palette, transforms

# Block colours far apart, so bilinear blending never turns one into another.
COLORS = np.array(
  [[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8
)


def _pair(h=40, w=56, block=8, seed=0):
  """A label of constant blocks and the image that paints each class in its colour."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, len(COLORS), (h // block + 1, w // block + 1))
  label = np.kron(coarse, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
  return COLORS[label], label


def _interior(label):
  """Pixels whose 3x3 neighbourhood has one class (bilinear is exact there)."""
  p = np.pad(label.astype(np.int32), 1, constant_values=-1)
  h, w = label.shape
  same = np.ones((h, w), bool)
  for dy in range(3):
    for dx in range(3):
      same &= p[dy : dy + h, dx : dx + w] == label
  return same


@pytest.mark.parametrize('mode', ['imagenet', 'caffe'])
def test_train_augment_keeps_image_and_label_aligned(mode):
  image, label = _pair()
  rng = np.random.default_rng(0)
  saw_pad = saw_flip_effect = False
  for _ in range(12):
    out_img, out_lab = transforms.train_augment(
      image, label, rng, crop_size=(48, 64), scale_range=(0.5, 2.0), normalize_mode=mode
    )
    assert out_img.shape == (48, 64, 3) and out_img.dtype == np.float32
    assert out_lab.shape == (48, 64) and out_lab.dtype == np.int32
    pad = out_lab == 255
    if pad.any():
      saw_pad = True
      # Padding: the mean colour in the image (0 after normalisation), void in the label.
      np.testing.assert_array_equal(out_img[pad], 0.0)
    rgb = transforms.denormalize(out_img, mode).astype(np.int32)
    inner = _interior(out_lab) & ~pad
    assert inner.sum() > 100
    err = np.abs(rgb[inner] - COLORS[out_lab[inner]].astype(np.int32))
    assert err.max() <= 2, err.max()
    # Everywhere (edges included) the nearest block colour is the label: a
    # one-pixel shift between image and label drops this to 0.8-0.95.
    nearest = np.argmin(((rgb[:, :, None] - COLORS[None, None].astype(np.int32)) ** 2).sum(-1), -1)
    assert (nearest == out_lab)[~pad].mean() > 0.97
    saw_flip_effect |= not np.array_equal(out_lab[:, :8], out_lab[:, ::-1][:, :8])
  assert saw_pad and saw_flip_effect


def test_random_scale_sizes_and_nearest_labels():
  image, label = _pair()
  rng = np.random.default_rng(1)
  for _ in range(5):
    img, lab = transforms.random_scale(image, label, rng, (0.5, 2.0))
    assert img.shape[:2] == lab.shape
    assert 20 <= lab.shape[0] <= 80 and lab.shape[0] / lab.shape[1] == pytest.approx(
      40 / 56, abs=0.03
    )
    assert set(np.unique(lab)) <= set(np.unique(label))  # nearest: no new class ids
  img, lab = transforms.random_scale(image, label, rng, (1.0, 1.0))
  assert img is image and lab is label


def test_crop_pads_with_fill_values():
  image = np.ones((5, 6, 3), np.float32)
  label = np.zeros((5, 6), np.int32)
  img, lab = transforms.random_crop(image, label, np.random.default_rng(0), (9, 7))
  assert img.shape == (9, 7, 3) and lab.shape == (9, 7)
  np.testing.assert_array_equal(img[:5, :6], 1.0)  # bottom/right padding: the image stays put
  assert (img[5:] == 0).all() and (lab[5:] == 255).all() and (lab[:, 6:] == 255).all()


def test_flip_flips_both():
  image, label = _pair()
  rng = np.random.default_rng(0)
  results = [transforms.random_flip(image, label, rng) for _ in range(16)]
  flipped = [r for r in results if not np.array_equal(r[1], label)]
  assert 0 < len(flipped) < 16
  for img, lab in flipped:
    np.testing.assert_array_equal(lab, label[:, ::-1])
    np.testing.assert_array_equal(img, image[:, ::-1])


def test_normalize_modes_exact():
  px = np.array([[[10, 20, 30]]], np.uint8)
  np.testing.assert_allclose(
    transforms.normalize(px, 'caffe')[0, 0], [30 - 104.008, 20 - 116.669, 10 - 122.675], rtol=1e-6
  )
  expected = (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(transforms.normalize(px, 'imagenet')[0, 0], expected, rtol=1e-5)
  image, _ = _pair()
  for mode in ('imagenet', 'caffe'):
    np.testing.assert_array_equal(
      transforms.denormalize(transforms.normalize(image, mode), mode), image
    )


def test_normalize_errors():
  with pytest.raises(ValueError, match='normalize mode must be one of'):
    transforms.normalize(np.zeros((2, 2, 3), np.uint8), 'torch')
  with pytest.raises(ValueError, match='expects a uint8 image, got dtype float32'):
    transforms.normalize(np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match='same size'):
    transforms.train_augment(
      np.zeros((4, 4, 3), np.uint8),
      np.zeros((4, 5), np.uint8),
      np.random.default_rng(0),
      crop_size=(4, 4),
    )
  with pytest.raises(ValueError, match='scale_range'):
    transforms.random_scale(
      np.zeros((4, 4, 3), np.uint8),
      np.zeros((4, 4), np.uint8),
      np.random.default_rng(0),
      (2.0, 1.0),
    )


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  h=st.integers(1, 40),
  w=st.integers(1, 40),
  ch=st.integers(1, 32),
  cw=st.integers(1, 32),
  lo=st.floats(0.25, 2.0),
  seed=st.integers(0, 2**16),
)
def test_train_augment_output_shape_always_crop(h, w, ch, cw, lo, seed):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  label = rng.integers(0, 5, (h, w), dtype=np.uint8)
  img, lab = transforms.train_augment(
    image, label, rng, crop_size=(ch, cw), scale_range=(lo, lo * 1.5)
  )
  assert img.shape == (ch, cw, 3) and lab.shape == (ch, cw)
  assert set(np.unique(lab).tolist()) <= set(range(5)) | {255}


def test_palette_colorize_overlay():
  pal = palette.voc_palette()
  assert pal.shape == (256, 3)
  assert (
    tuple(pal[1]) == (128, 0, 0)
    and tuple(pal[15]) == (192, 128, 128)
    and tuple(pal[255]) == (224, 224, 192)
  )
  assert len(palette.VOC_CLASSES) == 21 and palette.VOC_CLASSES[15] == 'person'
  mask = np.array([[0, 1], [255, 15]])
  np.testing.assert_array_equal(palette.colorize(mask), pal[mask])
  image = np.full((2, 2, 3), 100, np.uint8)
  out = palette.overlay(image, mask, alpha=0.5)
  np.testing.assert_array_equal(out[0, 0], 100)  # background untouched
  np.testing.assert_array_equal(out[1, 0], 100)  # void untouched
  np.testing.assert_array_equal(out[0, 1], [114, 50, 50])
  with pytest.raises(ValueError, match='overlay needs image'):
    palette.overlay(image, mask[:1])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
  h=st.integers(3, 80),
  w=st.integers(3, 80),
  ch=st.integers(2, 90),
  cw=st.integers(2, 90),
  mode=st.sampled_from(['imagenet', 'caffe']),
  seed=st.integers(0, 2**31),
)
def test_train_augment_equals_scale_normalize_crop_flip(h, w, ch, cw, mode, seed):
  # train_augment normalises only its crop; the result and the random draws are those of the
  # whole image normalised, then cropped with padding 0.
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  label = rng.integers(0, 21, (h, w)).astype(np.uint8)
  got = transforms.train_augment(
    image, label, np.random.default_rng(seed), crop_size=(ch, cw), scale_range=(0.5, 2.0),
    normalize_mode=mode,
  )  # fmt: skip
  r = np.random.default_rng(seed)
  i, lab = transforms.random_scale(image, label, r, (0.5, 2.0))
  i = transforms.normalize(i, mode)
  i, lab = transforms.random_crop(i, lab, r, (ch, cw), image_fill=0.0, label_fill=255)
  i, lab = transforms.random_flip(i, lab, r)
  np.testing.assert_array_equal(got[0], i)
  np.testing.assert_array_equal(got[1], lab)
