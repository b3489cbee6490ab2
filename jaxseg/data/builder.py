"""What every dataset jaxseg prepares from local files shares: a TFDS builder read without TensorFlow.

A dataset module subclasses `SegmentationBuilder` and says where its files are
(`split_items`) and how a label file becomes training ids (`read_label`). The
base class then:
  * decodes every image fully (truncated files are caught), reads its label,
    and skips (never stops on) unreadable files and image/label size
    mismatches, recording each with its reason in `builder.skipped`;
  * refuses the whole preparation when a label does not fit the classes
    (`LabelError`, raised by `read_label`): after the split's last file, one
    `PrepareError` lists every such file and its values. TFDS writes into a
    temporary folder and renames it only when every split is written, so a
    failed preparation leaves nothing that looks prepared;
  * stores per split, in the prepared dataset's `metadata.json`: the pixel
    count of every class, the pixels of the images each class appears in
    (labelled pixels, for median-frequency weights, `jaxseg.data.class_weights`), the largest
    image size (the static eval size) and the skipped files.

Records: {'image': uint8 (H, W, 3), 'label': uint8 (H, W, 1) training ids with
255 = ignore, 'file_name': the example's id}, written as ArrayRecord and read
back with `tfds.data_source` (random access, no TensorFlow). A split keeps the
order its files were listed in, so example i is always the same file.
"""

from __future__ import annotations

import abc
import io
import logging
import os
from collections import Counter
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxseg.data.palette import full_palette

IGNORE = 255

log = logging.getLogger(__name__)


class Item(NamedTuple):
  """One example to prepare: its id, its image file and its label file."""

  key: str
  image: str
  label: str


class LabelError(ValueError):
  """A label file whose values do not fit the dataset's classes (fatal for the preparation)."""


class PrepareError(ValueError):
  """The data in manual_dir cannot be prepared as it is; the message lists the files and why."""


def load_image(path: str) -> tuple[bytes, tuple[int, int]]:
  """Decodes fully (catching truncated files); returns (bytes to store, (height, width)).

  JPEG and PNG files in RGB are stored as they are (no re-encoding, no loss);
  anything else is converted to RGB and stored as PNG.
  """
  with open(path, 'rb') as f:
    raw = f.read()
  with Image.open(io.BytesIO(raw)) as im:
    im.load()
    if im.format in ('JPEG', 'PNG') and im.mode == 'RGB':
      return raw, (im.height, im.width)
    buf = io.BytesIO()
    im.convert('RGB').save(buf, format='PNG')
    return buf.getvalue(), (im.height, im.width)


def read_index_png(path: str) -> np.ndarray:
  """A single-channel label image (palette 'P', 8-bit 'L' or 16/32-bit 'I') as an int64 (H, W)."""
  with Image.open(path) as im:
    im.load()
    if im.mode not in ('P', 'L', 'I', 'I;16', 'I;16B', 'I;16L'):
      raise ValueError(f'label image has mode {im.mode}, expected a single-channel index PNG')
    return np.asarray(im).astype(np.int64)


def map_ids(ids: np.ndarray, table: np.ndarray, path: str, expected: str = '') -> np.ndarray:
  """Maps label ids through a lookup table; ids outside it raise LabelError.

  `expected` says what the file should hold, for the message.
  """
  if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
    bad = np.unique(ids[(ids < 0) | (ids >= len(table))])
    expected = expected or f'ids 0..{len(table) - 1}'
    raise LabelError(f'{path}: values {bad[:10].tolist()} found, expected {expected}')
  return table[ids].astype(np.uint8)


def add_label_statistics(label, class_pixels: np.ndarray, image_pixels: np.ndarray) -> None:
  """Adds one label map's pixels per class, and its labelled pixels (ignore excluded, as
  `losses.median_frequency_from_masks`) to each class it holds, in place."""
  counts = np.bincount(np.asarray(label).ravel(), minlength=256)
  n = len(class_pixels)
  class_pixels += counts[:n]
  image_pixels += np.where(counts[:n] > 0, counts.sum() - counts[IGNORE], 0)


def encode_label(label: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(label.astype(np.uint8), mode='L').save(buf, format='PNG')
  return buf.getvalue()


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """A semantic-segmentation dataset prepared from files in manual_dir (see the module docstring).

  Subclasses set:
    DATASET: the jaxseg name (`jaxseg prepare --dataset DATASET`).
    CLASS_NAMES, COLORS: one name and RGB colour per training id.
    SPLITS: {builder config name ('' when there are none): split names}.
    LAYOUT: the manual_dir layout, for messages.
  and implement `check_manual_dir`, `split_items` and `read_label`.
  """

  DATASET: str = ''
  CLASS_NAMES: tuple[str, ...] = ()
  COLORS: tuple[tuple[int, int, int], ...] = ()
  SPLITS: dict[str, tuple[str, ...]] = {}
  LAYOUT: str = ''
  HOMEPAGE: str = ''

  CLASSES_FROM_DATA = False  # True: class names are given at prepare time (the folder dataset)
  MAX_IMAGE_SIZE: tuple[int, int] | None = None  # when the prepared data does not record its sizes

  @classmethod
  def default_config_name(cls) -> str:
    return next(iter(cls.SPLITS))

  @classmethod
  def check_config(cls, config_name: str) -> None:
    if config_name not in cls.SPLITS:
      known = ', '.join(repr(c) for c in cls.SPLITS)
      raise ValueError(f'{cls.DATASET} has no config {config_name!r} (its configs: {known}).')

  @classmethod
  def create(cls, config_name: str, data_dir: str | None, **options) -> SegmentationBuilder:
    """The builder of `config_name` over `data_dir`; `options` are prepare-time settings."""
    if options:
      raise TypeError(f'{cls.DATASET} takes no prepare options, got {sorted(options)}.')
    cls.check_config(config_name)
    return cls(config=config_name or None, data_dir=data_dir)

  @classmethod
  def splits_of(cls, config_name: str) -> tuple[str, ...]:
    return tuple(cls.SPLITS[config_name])

  @classmethod
  def check_split(cls, config_name: str, split: str, field: str | None = None) -> None:
    """Raises a ValueError naming the splits (and the override to set) unless `split` exists."""
    splits = cls.splits_of(config_name)
    if split in splits:
      return
    label = f'{cls.DATASET} {config_name!r}' if config_name else cls.DATASET
    message = f'{label} has no split {split!r} (its splits: {", ".join(splits)}).'
    if field:
      message += f' Set --config.dataset.{field} to one of them.'
    raise ValueError(message)

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.skipped: dict[str, Counter] = {}  # split -> {reason kind: count}
    self.skipped_files: dict[str, list[tuple[str, str]]] = {}  # split -> [(file, reason)]
    self.progress = False  # a tqdm bar per split while preparing
    self.overwrite = False  # set by prepare_dataset: the preparation replaces a prepared one

  # -- what a dataset module provides -------------------------------------------------------

  @abc.abstractmethod
  def check_manual_dir(self, manual_dir: str, config_name: str) -> None:
    """Raises FileNotFoundError naming the expected layout unless manual_dir holds the data.

    Called on the builder (with its prepare options) before TFDS writes anything;
    datasets without options may define it as a classmethod."""

  @abc.abstractmethod
  def split_items(self, manual_dir: str) -> dict[str, list[Item]]:
    """The examples of every split, in order. May call `self.skip` for files without a pair."""

  @abc.abstractmethod
  def read_label(self, path: str) -> np.ndarray:
    """uint8 (H, W) training ids (255 = ignore). LabelError for values that do not fit."""

  # -- shared -----------------------------------------------------------------------------

  @property
  def config_name(self) -> str:
    return self.builder_config.name if self.builder_config else ''

  def class_names(self) -> tuple[str, ...]:
    return tuple(self.CLASS_NAMES)

  def palette(self) -> np.ndarray:
    return full_palette(self.COLORS)

  def extra_metadata(self) -> dict:
    """More entries for metadata.json (the folder dataset stores its classes there)."""
    return {}

  def skip(self, split: str, key: str, kind: str, detail: str) -> None:
    self.skipped.setdefault(split, Counter())[kind] += 1
    self.skipped_files.setdefault(split, []).append((key, f'{kind}: {detail}'))
    log.info('skipping %s (%s): %s: %s', key, split, kind, detail)

  def pair(self, split: str, images: dict, labels: dict, image_for, label_for) -> list[Item]:
    """Items of the keys that have both an image and a label file, in sorted key order.

    `images` and `labels` map keys to paths. A file without its pair is skipped
    ('no_label' / 'no_image'), naming the file that was expected:
    `label_for(key)` / `image_for(key)`.
    """
    items = []
    for key in sorted(images.keys() | labels.keys()):
      if key not in labels:
        self.skip(split, key, 'no_label', f'{images[key]} has no {label_for(key)}')
      elif key not in images:
        self.skip(split, key, 'no_image', f'{labels[key]} has no {image_for(key)}')
      else:
        items.append(Item(key, images[key], labels[key]))
    return items

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
          'file_name': tfds.features.Text(),
        }
      ),
      homepage=self.HOMEPAGE or None,
      metadata=tfds.core.MetadataDict(),
      # Example i of a split is the i-th file listed, so runs and predictions name the same files.
      disable_shuffling=True,
    )

  def _log_download_bytes(self) -> None:
    # TFDS announces 'Downloading and preparing dataset ...' here; nothing is downloaded.
    name = f'{self.name}/{self.config_name}' if self.config_name else self.name
    print(f'Preparing {name} from local files into {self.data_dir} ...', flush=True)

  def _log_download_done(self) -> None:
    pass  # `jaxseg prepare` prints the split sizes, the skipped files and the folder when done

  def _split_generators(self, dl_manager):
    items = self.split_items(os.fspath(dl_manager.manual_dir))
    meta = self.info.metadata
    meta.update(
      {
        'dataset': self.DATASET,
        'config': self.config_name,
        'class_names': list(self.class_names()),
        'palette': self.palette().tolist(),
        'splits': {},
        **self.extra_metadata(),
      }
    )
    return {
      split: self._generate_examples(split_items, split) for split, split_items in items.items()
    }

  def _generate_examples(self, items, split):
    from tqdm import tqdm

    num_classes = len(self.class_names())
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    max_size = [0, 0]
    written = 0
    bad_labels: list[str] = []
    for key, image_path, label_path in tqdm(
      items, desc=f'{self.DATASET}/{split}', unit='img', disable=not self.progress
    ):
      try:
        image, (h, w) = load_image(image_path)
      except Exception as e:  # noqa: BLE001 - an unreadable file is skipped, never fatal
        self.skip(split, key, 'unreadable', f'{image_path}: {type(e).__name__}: {e}')
        continue
      try:
        label = self.read_label(label_path)
      except LabelError as e:
        bad_labels.append(str(e))
        continue
      except Exception as e:  # noqa: BLE001
        self.skip(split, key, 'unreadable', f'{label_path}: {type(e).__name__}: {e}')
        continue
      if label.shape != (h, w):
        self.skip(
          split, key, 'size_mismatch', f'image {h}x{w} but label {label.shape[0]}x{label.shape[1]}'
        )
        continue
      add_label_statistics(label, class_pixels, image_pixels)
      max_size = [max(max_size[0], h), max(max_size[1], w)]
      if not bad_labels:  # once the preparation is refused, nothing more needs writing
        written += 1
        yield key, {'image': image, 'label': encode_label(label), 'file_name': key}
    label = f'{self.DATASET} {self.config_name!r}' if self.config_name else self.DATASET
    if bad_labels:
      shown = '\n  '.join(bad_labels[:20])
      more = f'\n  ... and {len(bad_labels) - 20} more' if len(bad_labels) > 20 else ''
      raise PrepareError(
        f'{len(bad_labels)} label file(s) of split {split!r} do not fit the {num_classes} classes '
        f'of {label} (nothing was prepared):\n  {shown}{more}'
      )
    if not written:  # TFDS would refuse the empty split with an error that names no file
      skipped = self.skipped_files.get(split, [])
      shown = ''.join(f'\n  {key}: {reason}' for key, reason in skipped[:20])
      raise PrepareError(
        f'split {split!r} of {label} has no usable example (nothing was prepared); '
        f'{len(skipped)} skipped:{shown}'
      )
    self.info.metadata['splits'][split] = {
      'class_pixels': class_pixels.tolist(),
      'image_pixels': image_pixels.tolist(),
      'max_image_size': max_size,
      'skipped': [list(s) for s in self.skipped_files.get(split, [])],
    }
    if self.skipped.get(split):
      log.info('%s: skipped %s', split, dict(self.skipped[split]))
