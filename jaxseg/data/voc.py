"""PASCAL VOC 2012 segmentation (+ SBD augmentation) as a TFDS builder read without TensorFlow.

Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010;
Hariharan et al., "Semantic Contours from Inverse Detectors" (SBD), ICCV 2011.

TFDS's own `voc/2012` holds detection boxes only, so jaxseg builds its own:
  * '2012': splits train (1,464) and val (1,449) from ImageSets/Segmentation.
  * '2012_aug': splits train_aug (10,582 with the full data) = VOC train + SBD
    train + SBD val minus VOC val, masks from VOC where it has one, else from
    SBD's `cls/<id>.mat` ('GTcls' -> 'Segmentation'); val = VOC val. The set
    used by FCN, DeepLab and PSPNet.

Masks keep VOC's indices, 255 included (the 'void' band around objects and
unlabelled regions). Records are written as ArrayRecord and read back with
`tfds.data_source` (random access, no TensorFlow): {'image': uint8 (H, W, 3),
'label': uint8 (H, W, 1), 'file_name': str (the VOC image id, e.g.
'2007_000033')}. A split keeps the order of its image lists (VOC's, then SBD's
for train_aug), so example i of val is the i-th id of `val.txt`.

The data is never downloaded; prepare it from a `manual_dir` holding the
extracted `VOCdevkit/VOC2012` and `benchmark_RELEASE` folders, or the official
archives `VOCtrainval_11-May-2012.tar` and `benchmark.tgz` (extracted to a
temporary folder first):

  jaxseg prepare --dataset voc --config 2012_aug \\
      --manual_dir DIR --data_dir OUT

Unreadable or corrupt images/masks and image/mask size mismatches are skipped
and reported with their reason (`builder.skipped_files`); they never stop the
build half-way (see `jaxseg.data.builder`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tarfile
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxseg.data import builder as builder_lib
from jaxseg.data.palette import VOC_CLASSES, voc_palette

VOC_ARCHIVE = 'VOCtrainval_11-May-2012.tar'
SBD_ARCHIVE = 'benchmark.tgz'
# What the splits are read from, besides the images.
VOC_FILES = (
  'SegmentationClass',
  'ImageSets/Segmentation/train.txt',
  'ImageSets/Segmentation/val.txt',
)
SBD_FILES = ('img', 'cls', 'train.txt', 'val.txt')
MAX_IMAGE_SIZE = (500, 500)  # VOC images are at most 500 pixels on each side
SPLITS = {'2012': ('train', 'val'), '2012_aug': ('train_aug', 'val')}
# (config, a split it lacks) -> (the config that has that split, this config's split in the same
# role, what the split holds).
_SPLIT_ELSEWHERE = {
  ('2012', 'train_aug'): ('2012_aug', 'train', 'VOC train + SBD'),
  ('2012_aug', 'train'): ('2012', 'train_aug', 'VOC train only'),
}

log = logging.getLogger(__name__)


def check_split(config_name: str, split: str, field: str | None = None) -> None:
  """Raises a ValueError naming the fix unless `split` is a split of VOC config `config_name`.

  `field` is the config field that named the split ('train_split', 'eval_split'),
  so the message can give the exact override to add.
  """
  if config_name not in SPLITS:
    raise ValueError(f'VOC config must be one of {list(SPLITS)}, got {config_name!r}.')
  splits = SPLITS[config_name]
  if split in splits:
    return
  message = f'VOC config {config_name!r} has no split {split!r} (its splits: {", ".join(splits)}).'
  if (config_name, split) in _SPLIT_ELSEWHERE:
    other, here, what = _SPLIT_ELSEWHERE[config_name, split]
    message += f' {split!r} ({what}) exists only in config {other!r}.'
    if field:
      message += (
        f' Add --config.dataset.{field}={here} to use {config_name!r}, or prepare {other!r} and '
        f'add --config.dataset.config={other}.'
      )
    else:
      message += f' Use split {here!r} with {config_name!r}, or config {other!r}.'
  elif field:
    message += f' Set --config.dataset.{field} to one of them.'
  raise ValueError(message)


def _extract(archive: str) -> str:
  dest = tempfile.mkdtemp(prefix='jaxseg_voc_')
  atexit.register(shutil.rmtree, dest, ignore_errors=True)
  log.warning('Extracting %s to %s (temporary) ...', archive, dest)
  with tarfile.open(archive) as tar:
    tar.extractall(dest, filter='data')
  return dest


def find_voc_root(manual_dir: str) -> str:
  """The VOC2012 folder (with JPEGImages/) inside `manual_dir`, extracting the archive if needed."""
  for cand in ('VOCdevkit/VOC2012', 'VOC2012', '.'):
    root = os.path.join(manual_dir, cand)
    if os.path.isdir(os.path.join(root, 'JPEGImages')):
      return root
  archive = os.path.join(manual_dir, VOC_ARCHIVE)
  if os.path.isfile(archive):
    return os.path.join(_extract(archive), 'VOCdevkit', 'VOC2012')
  raise FileNotFoundError(
    f'no VOCdevkit/VOC2012 folder (with JPEGImages/, SegmentationClass/, ImageSets/) or '
    f'{VOC_ARCHIVE} in manual_dir {manual_dir!r}.'
  )


def find_sbd_root(manual_dir: str) -> str:
  """The SBD `dataset` folder (with cls/, img/, train.txt, val.txt), extracting the archive if needed."""
  for cand in ('benchmark_RELEASE/dataset', 'dataset', '.'):
    root = os.path.join(manual_dir, cand)
    if os.path.isdir(os.path.join(root, 'cls')):
      return root
  archive = os.path.join(manual_dir, SBD_ARCHIVE)
  if os.path.isfile(archive):
    return os.path.join(_extract(archive), 'benchmark_RELEASE', 'dataset')
  raise FileNotFoundError(
    f"config '2012_aug' needs SBD: no benchmark_RELEASE/dataset folder (with cls/, img/) or "
    f'{SBD_ARCHIVE} in manual_dir {manual_dir!r}.'
  )


def check_manual_dir(manual_dir: str, config_name: str) -> None:
  """Raises a clear FileNotFoundError unless `manual_dir` holds the data (folders or archives)."""

  def has(folders, archive, marker):
    return os.path.isfile(os.path.join(manual_dir, archive)) or any(
      os.path.isdir(os.path.join(manual_dir, f, marker)) for f in folders
    )

  if not has(('VOCdevkit/VOC2012', 'VOC2012', '.'), VOC_ARCHIVE, 'JPEGImages'):
    raise FileNotFoundError(
      f'no VOCdevkit/VOC2012 folder (with JPEGImages/, SegmentationClass/, ImageSets/) or '
      f'{VOC_ARCHIVE} in manual_dir {manual_dir!r}.'
    )
  if config_name == '2012_aug' and not has(
    ('benchmark_RELEASE/dataset', 'dataset', '.'), SBD_ARCHIVE, 'cls'
  ):
    raise FileNotFoundError(
      f"config '2012_aug' needs SBD: no benchmark_RELEASE/dataset folder (with cls/, img/) or "
      f'{SBD_ARCHIVE} in manual_dir {manual_dir!r}.'
    )
  # Extracted folders: the files the splits are read from (an archive is checked once extracted).
  if not os.path.isfile(os.path.join(manual_dir, VOC_ARCHIVE)):
    _check_files(find_voc_root(manual_dir), VOC_FILES)
  if config_name == '2012_aug' and not os.path.isfile(os.path.join(manual_dir, SBD_ARCHIVE)):
    _check_files(find_sbd_root(manual_dir), SBD_FILES)


def _check_files(root: str, names: tuple[str, ...]) -> None:
  missing = [n for n in names if not os.path.exists(os.path.join(root, n))]
  if missing:
    raise FileNotFoundError(f'{root} has no {", ".join(missing)}.')


_VOC_IDS = np.zeros(256, bool)
_VOC_IDS[: len(VOC_CLASSES)] = True
_VOC_IDS[255] = True


def _read_ids(path: str) -> list[str]:
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


def _load_voc_mask(path: str) -> np.ndarray:
  with Image.open(path) as im:
    im.load()
    if im.mode not in ('P', 'L'):
      raise ValueError(f'mask {path} has mode {im.mode}, expected an indexed (P) or gray (L) PNG')
    return np.asarray(im, np.uint8)


def _load_sbd_mask(path: str) -> np.ndarray:
  import scipy.io

  mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
  return np.asarray(mat['GTcls'].Segmentation, np.uint8)


class VocSegmentationConfig(tfds.core.BuilderConfig):
  """'2012' (VOC only) or '2012_aug' (VOC + SBD)."""


class VocSegmentation(builder_lib.SegmentationBuilder):
  """PASCAL VOC 2012 semantic segmentation, optionally with the SBD masks."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'VOC 2012 segmentation and the SBD-augmented train set.',
    '1.1.0': "2012_aug's training split is named train_aug; splits keep the image-list order.",
  }
  BUILDER_CONFIGS = [
    VocSegmentationConfig(name='2012', description='VOC 2012 train (1,464) / val (1,449).'),
    VocSegmentationConfig(
      name='2012_aug', description='train_aug (VOC train + SBD train/val - VOC val) / VOC val.'
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Place VOCdevkit/VOC2012 (or VOCtrainval_11-May-2012.tar) and, for 2012_aug, '
    'benchmark_RELEASE (or benchmark.tgz) in manual_dir.'
  )
  DATASET = 'voc'
  CLASS_NAMES = VOC_CLASSES
  SPLITS = SPLITS
  MAX_IMAGE_SIZE = MAX_IMAGE_SIZE
  LAYOUT = 'VOCdevkit/VOC2012 (+ benchmark_RELEASE for 2012_aug), or the official archives'
  HOMEPAGE = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/'

  @classmethod
  def default_config_name(cls) -> str:
    return '2012_aug'

  @classmethod
  def check_config(cls, config_name: str) -> None:
    if config_name not in SPLITS:
      raise ValueError(f'VOC config must be one of {list(SPLITS)}, got {config_name!r}.')

  @classmethod
  def check_split(cls, config_name: str, split: str, field: str | None = None) -> None:
    check_split(config_name, split, field)

  @classmethod
  def check_manual_dir(cls, manual_dir: str, config_name: str) -> None:
    check_manual_dir(manual_dir, config_name)

  def palette(self) -> np.ndarray:
    return voc_palette()

  def split_items(self, manual_dir: str) -> dict[str, list[builder_lib.Item]]:
    voc = find_voc_root(manual_dir)
    _check_files(voc, VOC_FILES)
    seg_sets = os.path.join(voc, 'ImageSets', 'Segmentation')
    voc_train, voc_val = (_read_ids(os.path.join(seg_sets, f'{s}.txt')) for s in ('train', 'val'))

    def voc_item(i):
      return builder_lib.Item(
        i,
        os.path.join(voc, 'JPEGImages', f'{i}.jpg'),
        os.path.join(voc, 'SegmentationClass', f'{i}.png'),
      )

    val = [voc_item(i) for i in voc_val]
    train_split, val_split = SPLITS[self.config_name]
    if self.config_name == '2012':
      return {train_split: [voc_item(i) for i in voc_train], val_split: val}
    sbd = find_sbd_root(manual_dir)
    _check_files(sbd, SBD_FILES)
    sbd_ids = _read_ids(os.path.join(sbd, 'train.txt')) + _read_ids(os.path.join(sbd, 'val.txt'))
    exclude = set(voc_val)
    train, seen = [], set()
    for i in voc_train + sbd_ids:
      if i in seen or i in exclude:
        continue
      seen.add(i)
      _, image, mask = voc_item(i)
      if not os.path.exists(mask):  # SBD-only image: SBD mask (and SBD image if VOC lacks it)
        mask = os.path.join(sbd, 'cls', f'{i}.mat')
        if not os.path.exists(image):
          image = os.path.join(sbd, 'img', f'{i}.jpg')
      train.append(builder_lib.Item(i, image, mask))
    return {train_split: train, val_split: val}

  def read_label(self, path: str) -> np.ndarray:
    # VOC's indices as they are: 0-20 and 255 (void); anything else refuses the preparation.
    mask = _load_sbd_mask(path) if path.endswith('.mat') else _load_voc_mask(path)
    bad = ~_VOC_IDS[mask]
    if bad.any():
      values = np.unique(mask[bad])[:10].tolist()
      raise builder_lib.LabelError(
        f'{path}: values {values} are not VOC class ids (0..20, and 255 for void).'
      )
    return mask


def load_source(
  config_name: str, split: str, data_dir: str | None = None, *, field: str | None = None
):
  """The prepared split as a random-access source (`datasets.load_source` for 'voc')."""
  from jaxseg.data import datasets

  return datasets.load_source('voc', split, config=config_name, data_dir=data_dir, field=field)
