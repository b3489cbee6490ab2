"""One interface to every dataset jaxseg trains on: names, class information, sources, preparation.

  list_datasets()                       -> ['ade20k', 'camvid', 'cityscapes', 'folder', 'synthetic', 'voc']
  dataset_info(name, config='')         -> DatasetInfo (class names, num_classes, ignore index, palette)
  load_source(name, split, config=...)  -> random-access {'image': uint8 (H, W, 3), 'label': uint8 (H, W)}
  prepare_dataset(name, manual_dir=...) -> prepares the files in manual_dir once (no download)
  class_weights(name, split, ...)       -> median-frequency class weights of a prepared split

Labels are training ids with 255 = ignore. Every dataset but the generated one
is prepared once from local files (`jaxseg prepare --dataset NAME ...`) into
ArrayRecord files that TFDS reads back without TensorFlow; the trainer, eval,
predict and `jaxseg prepare` go through these functions only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import io
import logging
import os
from typing import Any

import numpy as np
from PIL import Image

from jaxseg.data import palette as palette_lib
from jaxseg.data import synthetic

IGNORE_INDEX = 255

# name -> (module, builder class). Modules import TFDS, so they load only when a dataset is used.
_BUILDERS = {
  'ade20k': ('jaxseg.data.ade20k', 'Ade20kSegmentation'),
  'camvid': ('jaxseg.data.camvid', 'CamvidSegmentation'),
  'cityscapes': ('jaxseg.data.cityscapes', 'CityscapesSegmentation'),
  'folder': ('jaxseg.data.folder', 'FolderSegmentation'),
  'voc': ('jaxseg.data.voc', 'VocSegmentation'),
}
SYNTHETIC_NUM_CLASSES = 21  # the generated set's class count when the config does not give one


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model trained on a dataset needs to know about its labels.

  Attributes:
    name: the dataset ('cityscapes', 'folder', ...).
    config: its configuration ('2012_aug' for VOC, the name given at prepare time for a folder).
    class_names: one name per training id.
    num_classes: len(class_names).
    ignore_index: the label value that the loss and the metrics ignore (255).
    palette: (256, 3) uint8 colours, row i for training id i.
    splits: {split: number of examples} when prepared, else {}.
  """

  name: str
  config: str
  class_names: tuple[str, ...]
  num_classes: int
  ignore_index: int
  palette: np.ndarray
  splits: dict[str, int]

  def __getitem__(self, key: str) -> Any:
    return getattr(self, key)

  def get(self, key: str, default=None) -> Any:
    return getattr(self, key, default)


def list_datasets() -> list[str]:
  """Names accepted by `dataset_info`, `load_source`, `jaxseg prepare` and config.dataset.name."""
  return sorted([*_BUILDERS, 'synthetic'])


def _check_name(name: str) -> None:
  if name not in list_datasets():
    close = difflib.get_close_matches(str(name), list_datasets(), n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'unknown dataset {name!r}.{hint} Datasets: {", ".join(list_datasets())}.')


def builder_class(name: str):
  """The TFDS builder class of a prepared dataset (not 'synthetic')."""
  _check_name(name)
  if name == 'synthetic':
    raise ValueError(
      "the 'synthetic' dataset is generated on the fly; there is nothing to prepare."
    )
  module, cls = _BUILDERS[name]
  return getattr(importlib.import_module(module), cls)


def default_config(name: str) -> str:
  if name == 'synthetic':
    return ''
  return builder_class(name).default_config_name()


def prepare_command(name: str, config: str = '', data_dir: str | None = None) -> str:
  """The `jaxseg prepare` command line that prepares `name`/`config` into `data_dir`."""
  parts = ['jaxseg prepare', f'--dataset {name}']
  if config:
    parts.append(f'--config {config}')
  parts.append('--manual_dir DIR')
  if data_dir:
    parts.append(f'--data_dir {data_dir}')
  return ' '.join(parts)


class _NotPreparedNote(logging.Filter):
  # TFDS warns that an unprepared dataset's folder 'has no dataset_info.json'; jaxseg's own
  # error names the prepare command instead.
  def filter(self, record: logging.LogRecord) -> bool:
    return 'has no dataset_info.json' not in record.getMessage()


def make_builder(name: str, config: str = '', data_dir: str | None = None, **options):
  """A builder of `name`/`config` over `data_dir` (options: the folder dataset's prepare options)."""
  cls = builder_class(name)
  with _quiet_tfds():
    return cls.create(config or cls.default_config_name(), data_dir or None, **options)


@contextlib.contextmanager
def _quiet_tfds():
  logger, note = logging.getLogger('absl'), _NotPreparedNote()
  logger.addFilter(note)
  try:
    yield
  finally:
    logger.removeFilter(note)


def is_prepared(builder) -> bool:
  with _quiet_tfds():
    return builder.is_prepared()


def _prepared_builder(name: str, config: str, data_dir: str | None):
  builder = make_builder(name, config, data_dir)
  if not is_prepared(builder):
    label = f'{name} {config!r}' if config else name
    raise FileNotFoundError(
      f'{label} is not prepared in {builder.data_dir_root}. Prepare it once with:\n  '
      + prepare_command(name, config, data_dir)
    )
  return builder


def _synthetic_classes(config: str) -> int:
  if not config:
    return SYNTHETIC_NUM_CLASSES
  try:
    return int(config)
  except ValueError:
    raise ValueError(
      f"the 'synthetic' dataset's config is its number of classes, got {config!r}."
    ) from None


def dataset_info(name: str, config: str = '', *, data_dir: str | None = None) -> DatasetInfo:
  """Class names, num_classes, ignore index and palette of `name`/`config`.

  Fixed-class datasets answer without their data; the folder dataset reads the
  classes its preparation stored (its data must be prepared in `data_dir`).
  For 'synthetic' the config is the number of classes (default 21).
  """
  _check_name(name)
  if name == 'synthetic':
    n = _synthetic_classes(config)
    names = synthetic.class_names(n)
    return DatasetInfo(name, config, names, n, IGNORE_INDEX, palette_lib.voc_palette(), {})
  cls = builder_class(name)
  config = config or cls.default_config_name()
  builder = make_builder(name, config, data_dir)
  prepared = is_prepared(builder)
  splits = {s: int(v.num_examples) for s, v in builder.info.splits.items()} if prepared else {}
  meta = dict(builder.info.metadata or {}) if prepared else {}
  if cls.CLASSES_FROM_DATA:
    if not prepared:
      raise FileNotFoundError(
        f'{name} {config!r} is not prepared in {builder.data_dir_root}, and its classes are '
        'defined at prepare time. Prepare it once with:\n  '
        + prepare_command(name, config, data_dir)
      )
    names = tuple(meta['class_names'])
    palette = np.asarray(meta['palette'], np.uint8)
  else:
    names = tuple(cls.CLASS_NAMES)
    palette = builder.palette()
  return DatasetInfo(name, config, names, len(names), IGNORE_INDEX, palette, splits)


def _decode(data: bytes, mode: str) -> np.ndarray:
  # The stored JPEG/PNG bytes decoded with Pillow (TFDS would do the same, after a warning).
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im if im.mode == mode else im.convert(mode))


class SegmentationSource:
  """grain RandomAccessDataSource over a prepared split: {'image' (H, W, 3), 'label' (H, W)} uint8.

  Attributes:
    name, config, split: what it reads.
    max_image_size: (H, W) of the split's largest image (the static eval size).
  """

  def __init__(self, data_source, name: str, config: str, split: str, max_image_size):
    self._ds = data_source
    self.name = name
    self.config = config
    self.split = split
    self.max_image_size = tuple(int(s) for s in max_image_size)

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index):
    rec = self._ds[int(index)]
    return {'image': _decode(rec['image'], 'RGB'), 'label': _decode(rec['label'], 'L')}

  def example_id(self, index: int) -> str:
    """The id of example `index`: the file stem ('aachen_000000_000019'), VOC's image id, ..."""
    name = self._ds[int(index)]['file_name']
    return name.decode() if isinstance(name, bytes) else str(name)

  def __repr__(self) -> str:
    # grain validates a restored iterator state against repr(data_source).
    return (
      f'SegmentationSource(name={self.name!r}, config={self.config!r}, split={self.split!r}, '
      f'n={len(self)})'
    )


def load_source(
  name: str,
  split: str,
  *,
  config: str = '',
  data_dir: str | None = None,
  field: str | None = None,
):
  """The prepared `split` of `name`/`config` as a random-access source of training-id labels.

  Raises FileNotFoundError with the exact `jaxseg prepare` command when the
  data is not prepared, and ValueError naming the splits for an unknown split
  (`field`, the config field the split came from, makes it name the override).
  """
  _check_name(name)
  if name == 'synthetic':
    count = synthetic_count(split)
    return synthetic.SyntheticSegmentation(
      split, count, size=64, num_classes=_synthetic_classes(config)
    )
  cls = builder_class(name)
  config = config or cls.default_config_name()
  cls.check_config(config)
  cls.check_split(config, split, field)
  builder = _prepared_builder(name, config, data_dir)
  meta = dict(builder.info.metadata or {})
  size = (meta.get('splits') or {}).get(split, {}).get('max_image_size') or cls.MAX_IMAGE_SIZE
  if not size:
    raise ValueError(
      f'{name} {config!r}: the prepared data does not record its image sizes; prepare it again '
      f'with --overwrite ({prepare_command(name, config, data_dir)} --overwrite).'
    )
  import tensorflow_datasets as tfds

  skip = tfds.decode.SkipDecoding()
  records = builder.as_data_source(split=split, decoders={'image': skip, 'label': skip})
  return SegmentationSource(records, name, config, split, size)


def synthetic_count(split: str) -> int:
  return 512 if split == 'train' else 64


def prepare_dataset(
  name: str,
  *,
  manual_dir: str,
  config: str = '',
  data_dir: str | None = None,
  progress: bool = False,
  overwrite: bool = False,
  **options,
):
  """Prepares `name`/`config` from the files in `manual_dir` into `data_dir` (once; no download).

  Returns the builder: `builder.info.splits` has the split sizes and
  `builder.skipped_files[split]` the skipped files with their reasons. A
  dataset that is already prepared is left as it is (`builder.was_prepared`
  is then True) unless `overwrite`: the new preparation is then written next
  to it and replaces it only once complete, so a failed one keeps the old
  data. Raises FileNotFoundError when manual_dir does not hold the expected
  layout, and PrepareError when labels do not fit the classes (then nothing
  is written).
  """
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'manual_dir {manual_dir!r} is not a directory.')
  builder = make_builder(name, config, data_dir, **options)
  builder.check_config(builder.config_name)
  builder.was_prepared = is_prepared(builder)
  if builder.was_prepared and overwrite:
    return _replace_prepared(builder, name, manual_dir, data_dir, progress, options)
  _build(builder, manual_dir, progress)
  return builder


def _build(builder, manual_dir: str, progress: bool) -> None:
  """Checks manual_dir and writes the dataset (a prepared one is left as it is)."""
  import tensorflow_datasets as tfds

  with _quiet_tfds():
    builder.check_manual_dir(manual_dir, builder.config_name)  # before TFDS writes anything
  tfds.disable_progress_bar()  # jaxseg's own bar (progress=True) shows one line per split
  builder.progress = progress
  root = os.fspath(builder.data_dir_root)
  # Folders this preparation may create: its own and TFDS's downloads/ (unused here).
  created = [
    d
    for d in (os.path.dirname(os.fspath(builder.data_dir)), os.path.join(root, 'downloads'))
    for d in _missing_dirs(d)
  ]
  # Prepared data keeps the format its info records (TFDS refuses to be told it again).
  file_format = {} if builder.was_prepared else {'file_format': 'array_record'}
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir,
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
      ),
      **file_format,
    )
  except BaseException:
    # TFDS removes its temporary folder; the folders made for it (and TFDS's notes in them,
    # such as <name>/.config/) go too. They did not exist before, so nothing else is in them.
    import shutil

    for path in sorted(set(created), key=len):
      shutil.rmtree(path, ignore_errors=True)
    raise


def _replace_prepared(old, name: str, manual_dir: str, data_dir, progress: bool, options: dict):
  """Prepares again into a staging folder beside the data, then swaps it in."""
  import shutil
  import tempfile

  root = os.fspath(old.data_dir_root)
  staging = tempfile.mkdtemp(prefix='.jaxseg_prepare_', dir=root)  # same file system: renames
  try:
    new = make_builder(name, old.config_name, staging, **options)
    new.was_prepared = False
    new.overwrite = True  # what is prepared under this name is being replaced
    _build(new, manual_dir, progress)
    final, backup = os.fspath(old.data_dir), os.fspath(old.data_dir) + '.replaced'
    os.rename(final, backup)
    os.rename(os.fspath(new.data_dir), final)
    shutil.rmtree(backup)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  builder = make_builder(name, old.config_name, data_dir, **options)
  builder.was_prepared = True
  builder.skipped, builder.skipped_files = new.skipped, new.skipped_files
  return builder


def _missing_dirs(path: str) -> list[str]:
  """`path` and its parents that do not exist yet, deepest first."""
  out = []
  path = os.path.abspath(path)
  while path and not os.path.exists(path):
    out.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return out


def class_statistics(name: str, split: str, *, config: str = '', data_dir: str | None = None):
  """(class_pixels, image_pixels) int64 arrays of a split, for median-frequency balancing.

  class_pixels[c]: pixels of class c; image_pixels[c]: the labelled pixels
  (ignore excluded) of the images where class c appears. Read from what preparation recorded, or
  counted over the split's labels when the metadata has no per-split statistics.
  """
  info = dataset_info(name, config, data_dir=data_dir)
  n = info.num_classes
  if name != 'synthetic':
    builder = _prepared_builder(name, info.config, data_dir)
    stats = (dict(builder.info.metadata or {}).get('splits') or {}).get(split)
    if stats:
      return np.asarray(stats['class_pixels'], np.int64), np.asarray(
        stats['image_pixels'], np.int64
      )
  source = load_source(name, split, config=info.config, data_dir=data_dir)
  class_pixels = np.zeros(n, np.int64)
  image_pixels = np.zeros(n, np.int64)
  from jaxseg.data.builder import add_label_statistics

  for i in range(len(source)):
    add_label_statistics(source[i]['label'], class_pixels, image_pixels)
  return class_pixels, image_pixels


def class_weights(
  name: str,
  split: str = 'train',
  *,
  config: str = '',
  data_dir: str | None = None,
  method: str = 'median_frequency',
) -> tuple[float, ...]:
  """Per-class loss weights from a prepared split's label statistics.

  'median_frequency' (Eigen & Fergus, ICCV 2015; SegNet, TPAMI 2017): weight_c
  = median(freq) / freq_c with freq_c = class_pixels[c] / image_pixels[c], the
  pixel frequency of class c over the labelled pixels of the images it appears in. A class absent
  from the split gets weight 0.
  """
  from jaxseg.losses import median_frequency_weights

  if method != 'median_frequency':
    raise ValueError(f"class weighting must be 'median_frequency', got {method!r}.")
  class_pixels, image_pixels = class_statistics(name, split, config=config, data_dir=data_dir)
  return tuple(float(w) for w in median_frequency_weights(class_pixels, image_pixels))
