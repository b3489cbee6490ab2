"""Cityscapes fine annotations (19 training classes) as a TFDS builder read without TensorFlow.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding",
CVPR 2016. https://www.cityscapes-dataset.com/

Splits: train (2,975 images) and val (500), 1024x2048. The test split's labels
are not public, so it is not prepared.

Labels: the `*_gtFine_labelIds.png` masks hold the 34 label ids 0..33 of
cityscapesScripts' `helpers/labels.py` (`LABELS` below is that table). They
are mapped to its 19 training ids (road 0 ... bicycle 18); every other label
(void, parking, rail track, guard rail, ...) and 'license plate' (id -1,
written as 255 in a uint8 PNG) become 255 = ignore. Any other value (34..254)
refuses the preparation (`builder.LabelError`). Example ids are the file stems
without the suffix, `<city>_<seq>_<frame>` (e.g. 'aachen_000000_000019'), in
the order of the sorted city folders and file names.

The data is never downloaded (it needs a login at the homepage); prepare it
from a `manual_dir` holding the extracted official folders:

  DIR/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  DIR/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

or the official archives `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` (their train/val images and labelIds masks are
extracted to a temporary folder first):

  jaxseg prepare --dataset cityscapes --manual_dir DIR --data_dir OUT

An image without its labelIds mask (or a mask without its image) and
unreadable files are skipped and reported (`builder.skipped_files`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import zipfile
from collections import namedtuple

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import builder as builder_lib

IMAGE_ARCHIVE = 'leftImg8bit_trainvaltest.zip'
LABEL_ARCHIVE = 'gtFine_trainvaltest.zip'
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelIds.png'
SPLIT_NAMES = ('train', 'val')
LAYOUT = (
  'leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and '
  'gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png '
  f'(or the official {IMAGE_ARCHIVE} and {LABEL_ARCHIVE})'
)

log = logging.getLogger(__name__)

Label = namedtuple('Label', ['name', 'id', 'trainId', 'category', 'color'])

# cityscapesScripts, cityscapesscripts/helpers/labels.py (name, id, trainId, category, color).
LABELS = (
  Label('unlabeled', 0, 255, 'void', (0, 0, 0)),
  Label('ego vehicle', 1, 255, 'void', (0, 0, 0)),
  Label('rectification border', 2, 255, 'void', (0, 0, 0)),
  Label('out of roi', 3, 255, 'void', (0, 0, 0)),
  Label('static', 4, 255, 'void', (0, 0, 0)),
  Label('dynamic', 5, 255, 'void', (111, 74, 0)),
  Label('ground', 6, 255, 'void', (81, 0, 81)),
  Label('road', 7, 0, 'flat', (128, 64, 128)),
  Label('sidewalk', 8, 1, 'flat', (244, 35, 232)),
  Label('parking', 9, 255, 'flat', (250, 170, 160)),
  Label('rail track', 10, 255, 'flat', (230, 150, 140)),
  Label('building', 11, 2, 'construction', (70, 70, 70)),
  Label('wall', 12, 3, 'construction', (102, 102, 156)),
  Label('fence', 13, 4, 'construction', (190, 153, 153)),
  Label('guard rail', 14, 255, 'construction', (180, 165, 180)),
  Label('bridge', 15, 255, 'construction', (150, 100, 100)),
  Label('tunnel', 16, 255, 'construction', (150, 120, 90)),
  Label('pole', 17, 5, 'object', (153, 153, 153)),
  Label('polegroup', 18, 255, 'object', (153, 153, 153)),
  Label('traffic light', 19, 6, 'object', (250, 170, 30)),
  Label('traffic sign', 20, 7, 'object', (220, 220, 0)),
  Label('vegetation', 21, 8, 'nature', (107, 142, 35)),
  Label('terrain', 22, 9, 'nature', (152, 251, 152)),
  Label('sky', 23, 10, 'sky', (70, 130, 180)),
  Label('person', 24, 11, 'human', (220, 20, 60)),
  Label('rider', 25, 12, 'human', (255, 0, 0)),
  Label('car', 26, 13, 'vehicle', (0, 0, 142)),
  Label('truck', 27, 14, 'vehicle', (0, 0, 70)),
  Label('bus', 28, 15, 'vehicle', (0, 60, 100)),
  Label('caravan', 29, 255, 'vehicle', (0, 0, 90)),
  Label('trailer', 30, 255, 'vehicle', (0, 0, 110)),
  Label('train', 31, 16, 'vehicle', (0, 80, 100)),
  Label('motorcycle', 32, 17, 'vehicle', (0, 0, 230)),
  Label('bicycle', 33, 18, 'vehicle', (119, 11, 32)),
  Label('license plate', -1, -1, 'vehicle', (0, 0, 142)),
)

# The 19 training classes in trainId order, with their official colours.
_TRAIN_LABELS = sorted((lb for lb in LABELS if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)
CLASS_NAMES = tuple(lb.name for lb in _TRAIN_LABELS)
COLORS = tuple(lb.color for lb in _TRAIN_LABELS)
assert [lb.trainId for lb in _TRAIN_LABELS] == list(range(19)), 'trainIds must be 0..18, each once'


def _id_tables() -> tuple[np.ndarray, np.ndarray]:
  """(256-entry labelId -> training id lookup, 256-entry 'is a label id' mask)."""
  train_ids = np.full(256, builder_lib.IGNORE, np.uint8)
  known = np.zeros(256, bool)
  for lb in LABELS:
    # A uint8 mask cannot hold id -1 (license plate): it would be written as 255.
    pixel = lb.id % 256
    known[pixel] = True
    train_ids[pixel] = lb.trainId if 0 <= lb.trainId < 255 else builder_lib.IGNORE
  return train_ids, known


TRAIN_ID_TABLE, KNOWN_IDS = _id_tables()


def label_ids_to_train_ids(ids: np.ndarray, path: str) -> np.ndarray:
  """labelIds (H, W) -> uint8 training ids (255 = ignore); LabelError for values of no label."""
  ids = np.asarray(ids)
  bad = (ids < 0) | (ids > 255)
  bad[~bad] = ~KNOWN_IDS[ids[~bad]]
  if bad.any():
    values = np.unique(ids[bad])
    raise builder_lib.LabelError(
      f'{path}: values {values[:10].tolist()} are not Cityscapes label ids '
      '(expected 0..33, or 255 for license plate -1)'
    )
  return TRAIN_ID_TABLE[ids]


def _has_folders(root: str) -> bool:
  return all(
    os.path.isdir(os.path.join(root, top, split))
    for top in ('leftImg8bit', 'gtFine')
    for split in SPLIT_NAMES
  )


def _has_archives(manual_dir: str) -> bool:
  return all(os.path.isfile(os.path.join(manual_dir, a)) for a in (IMAGE_ARCHIVE, LABEL_ARCHIVE))


def _layout_error(manual_dir: str) -> FileNotFoundError:
  missing = [
    f'{top}/{split}'
    for top in ('leftImg8bit', 'gtFine')
    for split in SPLIT_NAMES
    if not os.path.isdir(os.path.join(manual_dir, top, split))
  ]
  message = (
    f'manual_dir {manual_dir!r} does not hold Cityscapes: expected {LAYOUT}; '
    f'missing folders: {", ".join(missing)}'
  )
  archives = [
    a for a in (IMAGE_ARCHIVE, LABEL_ARCHIVE) if os.path.isfile(os.path.join(manual_dir, a))
  ]
  if archives:  # one archive of the two: name the other
    other = IMAGE_ARCHIVE if archives == [LABEL_ARCHIVE] else LABEL_ARCHIVE
    message += f'; found {archives[0]} but not {other}'
  return FileNotFoundError(message + '.')


def _extract(manual_dir: str) -> str:
  """Extracts the train/val images and labelIds masks of the official archives to a temp folder."""
  dest = tempfile.mkdtemp(prefix='jaxseg_cityscapes_')
  atexit.register(shutil.rmtree, dest, ignore_errors=True)
  wanted = {
    IMAGE_ARCHIVE: ('leftImg8bit', IMAGE_SUFFIX),
    LABEL_ARCHIVE: ('gtFine', LABEL_SUFFIX),
  }
  for archive, (top, suffix) in wanted.items():
    path = os.path.join(manual_dir, archive)
    log.warning('Extracting %s to %s (temporary) ...', path, dest)
    with zipfile.ZipFile(path) as zf:
      # Only what is prepared: the test split and the colour/instance/polygon files are left out.
      members = [
        n
        for n in zf.namelist()
        if n.endswith(suffix) and any(n.startswith(f'{top}/{s}/') for s in SPLIT_NAMES)
      ]
      zf.extractall(dest, members=members)
  return dest


def find_root(manual_dir: str) -> str:
  """The folder holding leftImg8bit/ and gtFine/, extracting the official archives if needed."""
  if _has_folders(manual_dir):
    return manual_dir
  if _has_archives(manual_dir):
    return _extract(manual_dir)
  raise _layout_error(manual_dir)


def _city(key: str) -> str:
  return key.rsplit('_', 2)[0]  # keys are '<city>_<seq>_<frame>'


def _list_stems(folder: str, suffix: str) -> dict[str, str]:
  """{'<city>_<seq>_<frame>': path} of the files ending in `suffix` in every city folder."""
  out = {}
  for city in sorted(os.listdir(folder)):
    city_dir = os.path.join(folder, city)
    if not os.path.isdir(city_dir):
      continue
    for name in sorted(os.listdir(city_dir)):
      if name.endswith(suffix):
        out[name[: -len(suffix)]] = os.path.join(city_dir, name)
  return out


class CityscapesSegmentation(builder_lib.SegmentationBuilder):
  """Cityscapes gtFine semantic segmentation: 19 training classes, train and val."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'gtFine train/val, labelIds mapped to the 19 training ids of cityscapesScripts.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from '
    'https://www.cityscapes-dataset.com/downloads/ and place them, or the extracted '
    'leftImg8bit/ and gtFine/ folders, in manual_dir.'
  )
  DATASET = 'cityscapes'
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  SPLITS = {'': SPLIT_NAMES}
  LAYOUT = LAYOUT
  HOMEPAGE = 'https://www.cityscapes-dataset.com/'
  MAX_IMAGE_SIZE = (1024, 2048)

  @classmethod
  def check_manual_dir(cls, manual_dir: str, config_name: str) -> None:
    del config_name
    if not (_has_folders(manual_dir) or _has_archives(manual_dir)):
      raise _layout_error(manual_dir)

  def split_items(self, manual_dir: str) -> dict[str, list[builder_lib.Item]]:
    root = find_root(manual_dir)
    items = {}
    for split in SPLIT_NAMES:
      images = _list_stems(os.path.join(root, 'leftImg8bit', split), IMAGE_SUFFIX)
      labels = _list_stems(os.path.join(root, 'gtFine', split), LABEL_SUFFIX)
      items[split] = self.pair(
        split,
        images,
        labels,
        image_for=lambda k, s=split: f'leftImg8bit/{s}/{_city(k)}/{k}{IMAGE_SUFFIX}',
        label_for=lambda k, s=split: f'gtFine/{s}/{_city(k)}/{k}{LABEL_SUFFIX}',
      )
    return items

  def read_label(self, path: str) -> np.ndarray:
    return label_ids_to_train_ids(builder_lib.read_index_png(path), path)
