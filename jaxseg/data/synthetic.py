"""The embedded generated segmentation dataset (no files, no download).

Each example is drawn on the fly from (seed, split, index) with NumPy, so the
set is deterministic, needs no storage and is identical on every host. An image
shows a textured, noisy background with 1 to 4 shapes that may occlude each
other. Class k (1 <= k < num_classes) is one shape type in one colour family:
the shape types cycle through disc, square, triangle, ring, bars, cross,
diamond and ellipse, and the hue is spread over the colour wheel, so every
class is recognisable from shape and colour while colour jitter, texture, noise,
rotation, size and occlusion keep the task from being trivial. Class 0 is the
background. As in PASCAL VOC, a 1-pixel band along the visible edge of every
shape is labelled 255 ('void') and ignored by the loss and the metrics.

A small conv net learns it to well above chance mIoU in minutes on a CPU
(configs/quickstart.py), which makes it the default for smoke runs and tests.
"""

from __future__ import annotations

import colorsys

import numpy as np

SHAPES = ('disc', 'square', 'triangle', 'ring', 'bars', 'cross', 'diamond', 'ellipse')
SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}
VOID = 255
_GOLDEN = 0.618033988749895


def class_names(num_classes: int) -> tuple[str, ...]:
  """'background' then one name per shape class ('disc', ..., 'disc_2' once shapes repeat)."""
  _check_num_classes(num_classes)
  names = ['background']
  for k in range(1, num_classes):
    shape = SHAPES[(k - 1) % len(SHAPES)]
    rep = (k - 1) // len(SHAPES)
    names.append(shape if rep == 0 else f'{shape}_{rep + 1}')
  return tuple(names)


def _check_num_classes(num_classes: int) -> None:
  if not isinstance(num_classes, (int, np.integer)) or not 2 <= num_classes <= 255:
    raise ValueError(f'synthetic dataset needs 2 <= num_classes <= 255, got {num_classes!r}.')


def class_color(k: int) -> np.ndarray:
  """Base RGB colour (float, 0-255) of shape class k >= 1: saturated, hues spread by the golden ratio."""
  hue = ((k - 1) * _GOLDEN) % 1.0
  value = 0.95 if (k - 1) // len(SHAPES) % 2 == 0 else 0.7
  return np.array(colorsys.hsv_to_rgb(hue, 0.85, value), np.float32) * 255.0


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-test in local coordinates scaled so the shape fits the unit disc."""
  if kind == 'disc':
    return u * u + v * v <= 1.0
  if kind == 'square':
    return np.maximum(np.abs(u), np.abs(v)) <= 0.75
  if kind == 'triangle':
    inside = np.ones(u.shape, bool)
    for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
      inside &= np.cos(a) * u + np.sin(a) * v <= 0.5
    return inside
  if kind == 'ring':
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.35)
  if kind == 'bars':
    # Three parallel bars with background showing in between.
    return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9) & (np.mod(u + 0.9, 0.66) < 0.4)
  if kind == 'cross':
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
  if kind == 'diamond':
    return np.abs(u) + np.abs(v) <= 1.0
  if kind == 'ellipse':
    return u * u + (v / 0.5) ** 2 <= 1.0
  raise ValueError(f'unknown shape {kind!r}')


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  yy /= max(h - 1, 1)
  xx /= max(w - 1, 1)
  # Muted colours so the saturated class colours stand out, plus a gradient,
  # a low-frequency pattern and pixel noise so the background is not flat.
  c0 = rng.uniform(40, 200, 3).astype(np.float32)
  c0 = 0.6 * c0 + 0.4 * c0.mean()
  grad = rng.uniform(-40, 40, (2, 3)).astype(np.float32)
  img = c0 + yy[..., None] * grad[0] + xx[..., None] * grad[1]
  fy, fx = rng.uniform(2, 8, 2)
  phase = rng.uniform(0, 2 * np.pi, 2)
  wave = np.sin(2 * np.pi * fy * yy + phase[0]) * np.sin(2 * np.pi * fx * xx + phase[1])
  img += rng.uniform(5, 20) * wave[..., None]
  img += rng.normal(0, 8, (h, w, 3)).astype(np.float32)
  return img


def generate_example(
  seed: int, split: str, index: int, *, size: int | tuple[int, int], num_classes: int
) -> dict[str, np.ndarray]:
  """One example: {'image': uint8 (H, W, 3), 'label': uint8 (H, W)} (255 = void)."""
  _check_num_classes(num_classes)
  if split not in SPLIT_IDS:
    raise ValueError(f'synthetic split must be one of {tuple(SPLIT_IDS)}, got {split!r}.')
  h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
  if h < 8 or w < 8:
    raise ValueError(f'synthetic image size must be at least 8x8, got {(h, w)}.')
  rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
  img = _background(rng, h, w)
  z = np.zeros((h, w), np.int32)  # paint order of the visible surface (0 = background)
  label = np.zeros((h, w), np.uint8)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  side = min(h, w)
  n_shapes = int(rng.integers(1, 5))
  for order in range(1, n_shapes + 1):
    k = int(rng.integers(1, num_classes))
    kind = SHAPES[(k - 1) % len(SHAPES)]
    r = rng.uniform(0.12, 0.3) * side
    cy, cx = rng.uniform(0.1, 0.9, 2) * (h, w)
    theta = rng.uniform(0, 2 * np.pi) if kind != 'disc' else 0.0
    dy, dx = (yy - cy) / r, (xx - cx) / r
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    inside = _shape_mask(kind, u, v)
    if not inside.any():
      continue
    color = np.clip(class_color(k) + rng.normal(0, 12, 3), 0, 255).astype(np.float32)
    # Stripes or speckle texture and shading keep colour from being constant.
    tex_f = rng.uniform(1.5, 4.0)
    texture = 1.0 + 0.12 * np.sin(tex_f * np.pi * (u + rng.uniform(-1, 1) * v))
    shade = 1.0 - 0.15 * (u * u + v * v).clip(0, 1)
    fill = color * (texture * shade)[..., None] + rng.normal(0, 6, (h, w, 3))
    img = np.where(inside[..., None], fill, img)
    label[inside] = k
    z[inside] = order
  # Void band: pixels of a shape that touch something painted below them, so
  # the band is 1 pixel wide and lies on the occluding side of every edge.
  lower = np.zeros((h, w), bool)
  zp = np.pad(z, 1, mode='edge')
  for sy, sx in ((0, 1), (2, 1), (1, 0), (1, 2)):
    lower |= zp[sy : sy + h, sx : sx + w] < z
  label[lower] = VOID
  return {'image': np.clip(np.rint(img), 0, 255).astype(np.uint8), 'label': label}


def example_id(split: str, index: int) -> str:
  """The name of example `index` of `split`, e.g. 'val_00003' (zero-padded so names sort in order)."""
  return f'{split}_{int(index):05d}'


class SyntheticSegmentation:
  """grain RandomAccessDataSource over the generated examples of one split.

  Attributes:
    split: 'train', 'val' or 'test' (each split draws different examples).
    num_examples: length of the split.
    size: image side (int) or (H, W).
    num_classes: classes including background.
    seed: dataset seed (the content, not the training order).
  """

  def __init__(self, split: str, num_examples: int, *, size, num_classes: int, seed: int = 0):
    if split not in SPLIT_IDS:
      raise ValueError(f'synthetic split must be one of {tuple(SPLIT_IDS)}, got {split!r}.')
    if int(num_examples) < 1:
      raise ValueError(f'num_examples must be >= 1, got {num_examples}.')
    _check_num_classes(num_classes)
    self.split = split
    self.num_examples = int(num_examples)
    self.size = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    self.num_classes = int(num_classes)
    self.seed = int(seed)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} out of range for {self.num_examples} examples.')
    return generate_example(
      self.seed, self.split, index, size=self.size, num_classes=self.num_classes
    )

  def example_id(self, index: int) -> str:
    """The name of example `index`, e.g. 'val_00003'."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} out of range for {self.num_examples} examples.')
    return example_id(self.split, index)

  @property
  def max_image_size(self) -> tuple[int, int]:
    return self.size

  def __repr__(self) -> str:
    # grain validates restored iterator state against repr(data_source).
    return (
      f'SyntheticSegmentation(split={self.split!r}, num_examples={self.num_examples}, '
      f'size={self.size}, num_classes={self.num_classes}, seed={self.seed})'
    )
