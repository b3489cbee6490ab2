"""ADE20K SceneParsing (SceneParse150) as a TFDS builder read without TensorFlow.

Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017.
http://sceneparsing.csail.mit.edu/

The MIT Scene Parsing Benchmark's `ADEChallengeData2016`: 150 classes, splits
train (20,210 images, the benchmark's 'training') and val (2,000,
'validation'); its test images have no public labels. Annotations hold 0
('other': pixels of none of the 150 classes) and 1..150, the classes of
`objectInfo150` in order; 0 becomes 255 = ignore and k becomes training id
k - 1 (wall 0 ... flag 149). Values above 150 refuse the preparation
(`builder.LabelError`). Example ids are the file stems ('ADE_train_00000001'),
in sorted order.

The palette is the benchmark's `color150` (CSAILVision/semantic-segmentation-pytorch,
data/color150.mat; also mmsegmentation's ADE20KDataset palette): row i colours
training id i.

The data is never downloaded; prepare it from a `manual_dir` that is, or
holds, the extracted `ADEChallengeData2016` folder:

  ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
  ADEChallengeData2016/annotations/{training,validation}/<same stem>.png

or holds the official `ADEChallengeData2016.zip` (extracted to a temporary
folder first):

  jaxseg prepare --dataset ade20k --manual_dir DIR --data_dir OUT

An image without its annotation (or an annotation without its image) and
unreadable files are skipped and reported (`builder.skipped_files`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import builder as builder_lib

ARCHIVE = 'ADEChallengeData2016.zip'
ROOT = 'ADEChallengeData2016'
SPLIT_FOLDERS = {'train': 'training', 'val': 'validation'}  # jaxseg split -> benchmark folder
LAYOUT = (
  f'{ROOT}/images/{{training,validation}}/ADE_{{train,val}}_<8 digits>.jpg and '
  f'{ROOT}/annotations/{{training,validation}}/<same stem>.png (manual_dir may be {ROOT} '
  f'itself), or the official {ARCHIVE}'
)

log = logging.getLogger(__name__)

# objectInfo150 of the benchmark, in annotation order 1..150 (training ids 0..149).
# fmt: off
CLASS_NAMES = (
  'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
  'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
  'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
  'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing',
  'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink',
  'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
  'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
  'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
  'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
  'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
  'television receiver', 'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister',
  'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain',
  'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket',
  'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
  'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen',
  'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan',
  'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
  'clock', 'flag',
)

# color150 of CSAILVision/semantic-segmentation-pytorch (data/color150.mat), one per training id;
# rows 6 (road) and 48 (skyscraper) are both (140, 140, 140) there too.
COLORS = (
  (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
  (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
  (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
  (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
  (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
  (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
  (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
  (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
  (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
  (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
  (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
  (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
  (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
  (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
  (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
  (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
  (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
  (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
  (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
  (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
  (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
  (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
  (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
  (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
  (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
# fmt: on
assert len(CLASS_NAMES) == 150, len(CLASS_NAMES)
assert len(COLORS) == 150, len(COLORS)

# Annotation value -> training id: 0 ('other') is ignored, k is class k - 1.
_TRAIN_IDS = np.array([builder_lib.IGNORE, *range(150)], np.uint8)


def _is_root(folder: str) -> bool:
  return all(
    os.path.isdir(os.path.join(folder, kind, sub))
    for kind in ('images', 'annotations')
    for sub in SPLIT_FOLDERS.values()
  )


def _layout_error(manual_dir: str) -> FileNotFoundError:
  root = next(
    (r for r in (os.path.join(manual_dir, ROOT), manual_dir) if os.path.isdir(r)), manual_dir
  )
  missing = [
    f'{kind}/{sub}'
    for kind in ('images', 'annotations')
    for sub in SPLIT_FOLDERS.values()
    if not os.path.isdir(os.path.join(root, kind, sub))
  ]
  return FileNotFoundError(
    f'manual_dir {manual_dir!r} does not hold ADE20K: expected {LAYOUT}; '
    f'missing in {root}: {", ".join(missing)}.'
  )


def _extract(archive: str) -> str:
  dest = tempfile.mkdtemp(prefix='jaxseg_ade20k_')
  atexit.register(shutil.rmtree, dest, ignore_errors=True)
  log.warning('Extracting %s to %s (temporary) ...', archive, dest)
  with zipfile.ZipFile(archive) as zf:
    zf.extractall(dest)
  return os.path.join(dest, ROOT)


def find_root(manual_dir: str) -> str:
  """The ADEChallengeData2016 folder in (or at) `manual_dir`, extracting the archive if needed."""
  for root in (os.path.join(manual_dir, ROOT), manual_dir):
    if _is_root(root):
      return root
  archive = os.path.join(manual_dir, ARCHIVE)
  if os.path.isfile(archive):
    return _extract(archive)
  raise _layout_error(manual_dir)


def _stems(folder: str, ext: str) -> dict[str, str]:
  return {
    name[: -len(ext)]: os.path.join(folder, name)
    for name in os.listdir(folder)
    if name.endswith(ext)
  }


class Ade20kSegmentation(builder_lib.SegmentationBuilder):
  """ADE20K SceneParse150: 150 classes, train and val."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'ADEChallengeData2016 training/validation as train/val; 0 (other) ignored.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ and place it, '
    'or the extracted ADEChallengeData2016/ folder, in manual_dir.'
  )
  DATASET = 'ade20k'
  CLASS_NAMES = CLASS_NAMES
  COLORS = COLORS
  SPLITS = {'': tuple(SPLIT_FOLDERS)}
  LAYOUT = LAYOUT
  HOMEPAGE = 'http://sceneparsing.csail.mit.edu/'

  @classmethod
  def check_manual_dir(cls, manual_dir: str, config_name: str) -> None:
    del config_name
    has_folder = _is_root(os.path.join(manual_dir, ROOT)) or _is_root(manual_dir)
    if not has_folder and not os.path.isfile(os.path.join(manual_dir, ARCHIVE)):
      raise _layout_error(manual_dir)

  def split_items(self, manual_dir: str) -> dict[str, list[builder_lib.Item]]:
    root = find_root(manual_dir)
    items = {}
    for split, folder in SPLIT_FOLDERS.items():
      image_dir = os.path.join(root, 'images', folder)
      label_dir = os.path.join(root, 'annotations', folder)
      items[split] = self.pair(
        split,
        _stems(image_dir, '.jpg'),
        _stems(label_dir, '.png'),
        image_for=lambda key, d=image_dir: f'{d}/{key}.jpg',
        label_for=lambda key, d=label_dir: f'{d}/{key}.png',
      )
    return items

  def read_label(self, path: str) -> np.ndarray:
    return builder_lib.map_ids(
      builder_lib.read_index_png(path), _TRAIN_IDS, path, '0 (other) and the classes 1..150'
    )
