"""NumPy augmentation and normalisation for (image, label) pairs.

The training recipe of the classic papers (FCN, DeepLab, PSPNet): rescale the
image by a random factor (image bilinear, label nearest so no new class ids
appear), pad to at least the crop size (image with the mean colour, which is 0
after normalisation; label with the ignore index 255 so padding never counts in
the loss), take a random crop and flip horizontally half of the time.

Every op takes the image and the label together so they stay pixel-aligned.
Images are HWC (uint8 before `normalize`, float32 after), labels HW integers.

Normalisation modes:
  * 'imagenet': RGB in [0, 1] minus the ImageNet mean over the ImageNet std
    (torchvision weights).
  * 'caffe': BGR in [0, 255] minus the Caffe mean [104.008, 116.669, 122.675]
    (weights converted from Caffe: FCN, DeconvNet, DeepLab v1/v2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([104.008, 116.669, 122.675], np.float32)
NORMALIZE_MODES = ('imagenet', 'caffe')


def check_mode(mode: str) -> None:
  if mode not in NORMALIZE_MODES:
    raise ValueError(f'normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}.')


def normalize(image: np.ndarray, mode: str = 'imagenet') -> np.ndarray:
  """uint8 RGB (..., H, W, 3) -> float32 network input for `mode`.

  Args:
    image: uint8 RGB image or batch of images, channels last.
    mode: 'imagenet' (RGB, [0, 1], mean/std) or 'caffe' (BGR, [0, 255], minus
      the Caffe mean).

  Returns:
    float32 array of the same shape.
  """
  check_mode(mode)
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'normalize expects a uint8 image, got dtype {image.dtype}.')
  if image.shape[-1] != 3:
    raise ValueError(f'normalize expects 3 RGB channels last, got shape {image.shape}.')
  x = image.astype(np.float32)
  if mode == 'imagenet':
    return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  return x[..., ::-1] - CAFFE_MEAN_BGR


def denormalize(image: np.ndarray, mode: str = 'imagenet') -> np.ndarray:
  """Inverse of `normalize`: float32 network input -> uint8 RGB (rounded, clipped)."""
  check_mode(mode)
  x = np.asarray(image, np.float32)
  if mode == 'imagenet':
    x = (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  else:
    x = (x + CAFFE_MEAN_BGR)[..., ::-1]
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def denormalize_jax(image, mode: str = 'imagenet'):
  """`denormalize` in jax.numpy (jit-able): network input -> uint8 RGB."""
  import jax.numpy as jnp

  check_mode(mode)
  x = jnp.asarray(image, jnp.float32)
  if mode == 'imagenet':
    x = (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  else:
    x = (x + CAFFE_MEAN_BGR)[..., ::-1]
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
  if image.ndim != 3 or label.ndim != 2 or image.shape[:2] != label.shape:
    raise ValueError(
      f'expected image (H, W, C) and label (H, W) of the same size, got image {image.shape} '
      f'and label {label.shape}.'
    )


def _resize_channels(image: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
  h, w = size
  if image.dtype == np.uint8 and image.shape[-1] == 3:
    return np.asarray(Image.fromarray(image).resize((w, h), resample))
  # Other channel counts / dtypes: resize each channel as a float image.
  chans = [
    np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((w, h), resample))
    for c in range(image.shape[-1])
  ]
  out = np.stack(chans, -1)
  if image.dtype == np.uint8:
    out = np.clip(np.rint(out), 0, 255)
  return out.astype(image.dtype)


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
  """Resizes the image bilinearly and the label by nearest neighbour to `size` (H, W)."""
  image = np.asarray(image)
  out_image = _resize_channels(image, size, Image.BILINEAR)
  if label is None:
    return out_image, None
  label = np.asarray(label)
  if label.max(initial=0) > 255 or label.min(initial=0) < 0:
    raise ValueError('labels must lie in [0, 255] to be resized.')
  out_label = np.asarray(
    Image.fromarray(label.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST)
  )
  return out_image, out_label.astype(label.dtype)


def random_scale(
  image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale_range: Sequence[float]
):
  """Rescales the pair by a factor drawn uniformly from `scale_range` (lo, hi)."""
  _check_pair(image, label)
  lo, hi = (float(s) for s in scale_range)
  if not 0 < lo <= hi:
    raise ValueError(f'scale_range must be (lo, hi) with 0 < lo <= hi, got {tuple(scale_range)}.')
  s = rng.uniform(lo, hi) if hi > lo else lo
  h, w = label.shape
  size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
  if size == (h, w):
    return image, label
  return resize(image, label, size)


def pad_to_size(
  image: np.ndarray,
  label: np.ndarray | None,
  size: tuple[int, int],
  *,
  image_fill: float = 0.0,
  label_fill: int = 255,
):
  """Pads bottom/right so the pair is at least `size` (H, W); never crops."""
  h, w = image.shape[:2]
  ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
  if ph == 0 and pw == 0:
    return image, label
  image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=image_fill)
  if label is not None:
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=label_fill)
  return image, label


def random_crop(
  image: np.ndarray,
  label: np.ndarray,
  rng: np.random.Generator,
  crop_size: Sequence[int],
  *,
  image_fill: float = 0.0,
  label_fill: int = 255,
):
  """Pads (image `image_fill`, label `label_fill`) to at least `crop_size`, then crops at random."""
  _check_pair(image, label)
  ch, cw = (int(c) for c in crop_size)
  image, label = pad_to_size(image, label, (ch, cw), image_fill=image_fill, label_fill=label_fill)
  y, x = _crop_origin(label.shape, (ch, cw), rng)
  return image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def _crop_origin(padded: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator):
  """Top-left corner of a uniformly drawn `crop` window in an image padded to `padded`."""
  y = int(rng.integers(0, padded[0] - crop[0] + 1))
  x = int(rng.integers(0, padded[1] - crop[1] + 1))
  return y, x


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
  """Horizontal flip with probability 1/2."""
  if rng.random() < 0.5:
    return image[:, ::-1], label[:, ::-1]
  return image, label


def train_augment(
  image: np.ndarray,
  label: np.ndarray,
  rng: np.random.Generator,
  *,
  crop_size: Sequence[int],
  scale_range: Sequence[float] = (1.0, 1.0),
  flip: bool = True,
  normalize_mode: str = 'imagenet',
  ignore_index: int = 255,
):
  """uint8 image + label -> normalised float32 crop and int32 label crop.

  The same as `random_scale`, `normalize`, `random_crop` (image padding 0, the
  mean after normalisation) and `random_flip` in turn, with the same random
  draws, but only the crop is normalised: on a 1024x2048 image scaled by up to
  2 that is a small part of the pixels.
  """
  _check_pair(image, label)
  check_mode(normalize_mode)
  image, label = random_scale(image, label, rng, scale_range)
  h, w = label.shape
  ch, cw = (int(c) for c in crop_size)
  label = np.pad(label, ((0, max(ch - h, 0)), (0, max(cw - w, 0))), constant_values=ignore_index)
  y, x = _crop_origin(label.shape, (ch, cw), rng)
  label = label[y : y + ch, x : x + cw]
  crop = normalize(image[y : y + ch, x : x + cw], normalize_mode)
  image = np.zeros((ch, cw, crop.shape[-1]), np.float32)  # padding: 0, the mean
  image[: crop.shape[0], : crop.shape[1]] = crop
  if flip:
    image, label = random_flip(image, label, rng)
  return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label, np.int32)
