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

  jaxseg prepare --dataset voc --config 2012_aug \
      --manual_dir DIR --data_dir OUT

Unreadable or corrupt images/masks and image/mask size mismatches are skipped,
counted (`VocSegmentation.skipped`) and reported with a warning; they never
stop the build half-way.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections import Counter

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

VOC_ARCHIVE = 'VOCtrainval_11-May-2012.tar'
SBD_ARCHIVE = 'benchmark.tgz'
MAX_IMAGE_SIZE = (500, 500)  # VOC images are at most 500 pixels on each side
SPLITS = {'2012': ('train', 'val'), '2012_aug': ('train_aug', 'val')}
# (config, a split it lacks) -> (the config that has that split, this config's split in the same
# role, what the split holds).
_SPLIT_ELSEWHERE = {
  ('2012', 'train_aug'): ('2012_aug', 'train', 'VOC train + SBD'),
  ('2012_aug', 'train'): ('2012', 'train_aug', 'VOC train only'),
}

log = logging.getLogger(__name__)


def prepare_command(config_name: str, data_dir: str | None) -> str:
  out = f' --data_dir {data_dir}' if data_dir else ''
  return f'jaxseg prepare --dataset voc --config {config_name} --manual_dir DIR{out}'


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


def _read_ids(path: str) -> list[str]:
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


def _load_image(path: str) -> tuple[bytes, tuple[int, int]]:
  """Decodes fully (catching truncated files); returns (bytes TFDS stores, (width, height))."""
  with open(path, 'rb') as f:
    raw = f.read()
  with Image.open(io.BytesIO(raw)) as im:
    im.load()
    if im.format == 'JPEG' and im.mode == 'RGB':
      return raw, im.size
    buf = io.BytesIO()
    im.convert('RGB').save(buf, format='PNG')
    return buf.getvalue(), im.size


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


def _encode_mask(mask: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(mask, mode='L').save(buf, format='PNG')
  return buf.getvalue()


class VocSegmentationConfig(tfds.core.BuilderConfig):
  """'2012' (VOC only) or '2012_aug' (VOC + SBD)."""


class VocSegmentation(tfds.core.GeneratorBasedBuilder):
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

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.skipped: dict[str, Counter] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
          'file_name': tfds.features.Text(),
        }
      ),
      homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
      # Example i of a split is the i-th id of its image list, so predictions of the first N
      # examples are the first N images of the list.
      disable_shuffling=True,
    )

  def _log_download_bytes(self) -> None:
    # TFDS announces 'Downloading and preparing dataset ...' here; nothing is downloaded.
    print(
      f'Preparing {self.name}/{self.builder_config.name} from local files into {self.data_dir} ...',
      flush=True,
    )

  def _log_download_done(self) -> None:
    pass  # `jaxseg prepare` prints the split sizes and the folder when it is done

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    voc = find_voc_root(manual_dir)
    seg_sets = os.path.join(voc, 'ImageSets', 'Segmentation')
    voc_train, voc_val = (_read_ids(os.path.join(seg_sets, f'{s}.txt')) for s in ('train', 'val'))

    def voc_item(i):
      return (
        i,
        os.path.join(voc, 'JPEGImages', f'{i}.jpg'),
        os.path.join(voc, 'SegmentationClass', f'{i}.png'),
      )

    val = [voc_item(i) for i in voc_val]
    train_split, val_split = SPLITS[self.builder_config.name]
    if self.builder_config.name == '2012':
      return {
        train_split: self._generate_examples([voc_item(i) for i in voc_train], train_split),
        val_split: self._generate_examples(val, val_split),
      }
    sbd = find_sbd_root(manual_dir)
    sbd_ids = _read_ids(os.path.join(sbd, 'train.txt')) + _read_ids(os.path.join(sbd, 'val.txt'))
    exclude = set(voc_val)
    train, seen = [], set()
    for i in voc_train + sbd_ids:
      if i in seen or i in exclude:
        continue
      seen.add(i)
      image, mask = voc_item(i)[1:]
      if not os.path.exists(mask):  # SBD-only image: SBD mask (and SBD image if VOC lacks it)
        mask = os.path.join(sbd, 'cls', f'{i}.mat')
        if not os.path.exists(image):
          image = os.path.join(sbd, 'img', f'{i}.jpg')
      train.append((i, image, mask))
    return {
      train_split: self._generate_examples(train, train_split),
      val_split: self._generate_examples(val, val_split),
    }

  def _generate_examples(self, items, split):
    skipped = self.skipped.setdefault(split, Counter())
    for key, image_path, mask_path in items:
      try:
        image, (w, h) = _load_image(image_path)
        mask = (
          _load_sbd_mask(mask_path) if mask_path.endswith('.mat') else _load_voc_mask(mask_path)
        )
      except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal
        skipped['unreadable'] += 1
        log.warning('skipping %s (%s): %s: %s', key, split, type(e).__name__, e)
        continue
      if mask.shape != (h, w):
        skipped['size_mismatch'] += 1
        log.warning('skipping %s (%s): image %dx%d but mask %s', key, split, h, w, mask.shape)
        continue
      yield key, {'image': image, 'label': _encode_mask(mask), 'file_name': key}
    if skipped:
      log.warning('%s: skipped %s', split, dict(skipped))


class VocSource:
  """grain RandomAccessDataSource view of a prepared split: {'image' HWC uint8, 'label' HW uint8}."""

  def __init__(self, data_source, config_name: str, split: str):
    self._ds = data_source
    self.config_name = config_name
    self.split = split
    self.max_image_size = MAX_IMAGE_SIZE

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index):
    rec = self._ds[int(index)]
    return {'image': rec['image'], 'label': rec['label'][..., 0]}

  def example_id(self, index: int) -> str:
    """The VOC image id of example `index`, e.g. '2007_000033'."""
    name = self._ds[int(index)]['file_name']
    return name.decode() if isinstance(name, bytes) else str(name)

  def __repr__(self) -> str:
    # grain validates restored iterator state against repr(data_source).
    return f'VocSource(config={self.config_name!r}, split={self.split!r}, n={len(self)})'


def load_source(
  config_name: str, split: str, data_dir: str | None = None, *, field: str | None = None
) -> VocSource:
  """The prepared split as a random-access source; a clear error if it was never prepared.

  `field` names the config field the split came from, for the message when the
  split does not exist (see `check_split`).
  """
  data_dir = data_dir or None
  check_split(config_name, split, field)
  builder = VocSegmentation(config=config_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f'VOC {config_name!r} is not prepared in {builder.data_dir_root}. Prepare it once with:\n  '
      + prepare_command(config_name, data_dir)
    )
  return VocSource(builder.as_data_source(split=split), config_name, split)
