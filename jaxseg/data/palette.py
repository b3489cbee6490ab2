"""PASCAL VOC class names and colour palette; mask colouring and overlays.

The palette is the one of the VOC devkit's indexed PNG annotations
(Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010):
colour i takes the bits of i, interleaved over R, G and B from the most
significant bit down. Index 255 ('void') is (224, 224, 192).
"""

from __future__ import annotations

import numpy as np

VOC_CLASSES = (
  'background',
  'aeroplane',
  'bicycle',
  'bird',
  'boat',
  'bottle',
  'bus',
  'car',
  'cat',
  'chair',
  'cow',
  'diningtable',
  'dog',
  'horse',
  'motorbike',
  'person',
  'pottedplant',
  'sheep',
  'sofa',
  'train',
  'tvmonitor',
)


def voc_palette(n: int = 256) -> np.ndarray:
  """(n, 3) uint8 VOC colour map."""
  pal = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = (r, g, b)
  return pal


_PALETTE = voc_palette()


def full_palette(colors) -> np.ndarray:
  """(256, 3) uint8: the given class colours first, black for the other indices (255 = ignore)."""
  colors = np.asarray(colors, np.uint8).reshape(-1, 3)
  if len(colors) > 256:
    raise ValueError(f'a palette holds at most 256 colours, got {len(colors)}.')
  pal = np.zeros((256, 3), np.uint8)
  pal[: len(colors)] = colors
  return pal


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
  """Integer mask (..., H, W) with values in [0, 255] -> uint8 RGB (..., H, W, 3)."""
  mask = np.asarray(mask)
  if not np.issubdtype(mask.dtype, np.integer):
    raise ValueError(f'colorize expects an integer mask, got dtype {mask.dtype}.')
  pal = _PALETTE if palette is None else np.asarray(palette, np.uint8)
  if mask.size and (mask.min() < 0 or mask.max() >= len(pal)):
    raise ValueError(f'mask values must be in [0, {len(pal)}), got [{mask.min()}, {mask.max()}].')
  return pal[mask]


def overlay(
  image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None
) -> np.ndarray:
  """Blends the coloured mask over a uint8 RGB image; background (0) and void (255) stay as is."""
  image = np.asarray(image)
  mask = np.asarray(mask)
  if image.shape[:-1] != mask.shape or image.shape[-1] != 3:
    raise ValueError(
      f'overlay needs image (H, W, 3) and mask (H, W); got {image.shape} and {mask.shape}.'
    )
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}.')
  color = colorize(mask, palette).astype(np.float32)
  out = image.astype(np.float32)
  fg = ((mask != 0) & (mask != 255))[..., None]
  out = np.where(fg, (1 - alpha) * out + alpha * color, out)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)
