"""Your own folder of images and masks as a dataset: `--dataset folder --config NAME`.

Layout of the folder given as --manual_dir:

  DIR/images/        STEM.jpg .jpeg .png .bmp .tif .tiff .webp (extension in any case)
  DIR/masks/         STEM.png .bmp .tif .tiff (the mask of images/STEM.*)
  DIR/classes.json   or DIR/classes.txt (or --classes PATH)
  DIR/splits/        optional: train.txt and val.txt, one STEM per line

An image and its mask share their file name without the extension (the stem,
which is also the example's id). Only the files directly in images/ and masks/
count; hidden files (names starting with '.', such as macOS's '._x.jpg') and
files with other extensions (Thumbs.db, notes.txt) are ignored without a
word. Two images or two masks with the same stem are an error. An image
without a mask ('no_mask'), a mask without an image ('no_image'), an
unreadable image or mask ('unreadable') and an image whose mask has another
size ('size_mismatch') are skipped and listed with their reason in
`builder.skipped_files[split]`, in the prepared metadata and by `jaxseg
prepare`. A JPEG/WebP mask is never used (lossy compression shifts label
values); its image is skipped as 'no_mask' with a note saying so.

Splits 'train' and 'val', each in the order of its stems (sorted):
  * from splits/train.txt and splits/val.txt when both exist: one stem per
    line (a file name with its extension is accepted too; blank lines and
    '#' comments are ignored). A stem with neither an image nor a mask, a
    stem listed twice, or in both files is an error. Pairs listed in neither
    file are not used (their number is stored in the metadata as
    'unlisted'). An image or mask listed without its pair is skipped in the
    split that lists it. --val_fraction and --seed do not apply then (giving
    them is an error);
  * else drawn from the sorted stems of the image/mask pairs:
    `numpy.random.default_rng(seed).permutation(n)`, the first
    round(val_fraction * n) to val (at least one, and at least one left for
    train; fewer than 2 pairs is an error). val_fraction (default 0.1) must
    be in (0, 1); seed defaults to 0. Files without a pair are listed with
    the train split's skips.
A split left without a usable pair (all skipped) fails the preparation.

The classes file. Class i is the i-th class of the file; 2 to 255 classes
(label 255 is 'ignore'); names must be unique. Either every class has an RGB
colour or none has; two classes cannot share one. Without colours the
palette is VOC's (distinct, the same on every run). The file is JSON when its
name ends in .json or its text starts with '[' or '{', in one of these forms:

  ["background", "cat", "dog"]
  [{"name": "background", "color": [0, 0, 0]}, {"name": "cat", "color": [255, 0, 0]}]
  {"background": [0, 0, 0], "cat": [255, 0, 0]}

otherwise plain text, one class per line:

  # comments and blank lines are ignored
  background
  road 128 64 128
  traffic light: 250, 170, 30

that is NAME, or NAME followed by its colour as the line's last three numbers
(separated by spaces or commas, after a ':' or a space). A name cannot
contain '#' in a text file, nor ':' unless a colour follows (use JSON for
such names). Errors name the file and the line.

Masks. The encoding is decided for each mask file:
  * single-channel (PNG modes L, I, I;16, 1, LA; BMP, TIFF) or palette PNG
    (mode P: the pixel indices are the class ids, the PNG's own palette is
    not read): the values are class ids, 255 is ignore;
  * binary masks: with exactly 2 classes, a single-channel mask whose values
    are all in {0, 255} has 255 mapped to 1, so 255 means the foreground (not
    ignore) in such masks; a mask with values in {0, 1} already holds ids,
    and in a mask with values 0, 1 and 255, 255 is ignore;
  * RGB or RGBA (alpha not read): colour-coded, mapped through the class
    colours, which the class file must then give. A grayscale-looking RGB
    mask is a colour mask too. A colour not in the class file is an error
    naming the file, the colour and its pixel count, unless
    --unknown_color ignore makes such pixels 255;
  * --reduce_zero_label (single-channel masks only): 0 means 'unlabelled':
    0 -> 255 and k -> k - 1, 255 stays 255 (the binary rule does not apply).
Any other value at or above the number of classes fails the preparation:
every such mask is listed with its values, and nothing is written.

Prepare (once), then train; num_classes then comes from the prepared data:

  jaxseg prepare --dataset folder --config NAME --manual_dir DIR --data_dir OUT
  jaxseg train --config fcn8s --config.dataset.name=folder \\
      --config.dataset.config=NAME --config.dataset.data_dir=OUT \\
      --config.dataset.train_split=train

The train_split flag is for recipes made for VOC (such as fcn8s), which train
on VOC's 'train_aug'. Recipes that evaluate on another split ('test' in the
':camvid' variants) need --config.dataset.eval_split=val, and those with a
fixed config.dataset.eval_size (deconvnet, unet, the ':camvid' variants) an
eval_size at least as large as the largest image (or eval_size='()').
`--config quickstart:folder` (a small U-Net) sets the dataset but NAME and OUT.

NAME (letters, digits, '_', '-', '.') is the folder OUT/folder_segmentation/NAME.
Preparing an already prepared NAME again leaves it as it is; when the files
or options differ from those it was prepared from (other classes, options
or number of pairs), that is an error naming the differences, and
--overwrite prepares it again (the old data stays until the new is complete). A relative
--classes PATH that does not exist is looked for in DIR.
The prepared metadata.json holds, besides the class names, palette and label
statistics of every split, the class file as read ('classes': its path,
names and colours or None), where the splits came from ('split_source'),
'reduce_zero_label' and 'unknown_color'.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxseg.data import builder as builder_lib
from jaxseg.data.builder import IGNORE, Item, LabelError, PrepareError
from jaxseg.data.palette import full_palette, voc_palette

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
MASK_EXTENSIONS = ('.png', '.bmp', '.tif', '.tiff')
LOSSY_MASK_EXTENSIONS = ('.jpg', '.jpeg', '.webp')  # found in masks/, named in 'no_mask' skips
CLASS_FILES = ('classes.json', 'classes.txt')
SPLITS = ('train', 'val')
OPTIONS = ('classes', 'val_fraction', 'seed', 'unknown_color', 'reduce_zero_label')
UNKNOWN_COLOR_MODES = ('error', 'ignore')
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 0
MIN_CLASSES, MAX_CLASSES = 2, 255  # 255 is the ignore label, so ids run 0..254 at most

_CONFIG_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*\Z')
_INDEX_MODES = ('P', 'L', '1', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N')
_WITH_ALPHA_INDEX_MODES = ('LA', 'La', 'PA')
_COLOR_MODES = ('RGB', 'RGBA', 'RGBX', 'RGBa')
_NUMBER_SEP = r'(?:\s*,\s*|\s+)'
_TEXT_COLOR_LINE = re.compile(
  rf'(?P<name>.*?)(?:\s*:\s*|\s+)'
  rf'(?P<r>[-+]?\d+){_NUMBER_SEP}(?P<g>[-+]?\d+){_NUMBER_SEP}(?P<b>[-+]?\d+)\s*,?\Z'
)
_JSON_SPACE = re.compile(r'\s*')

LAYOUT = (
  'DIR/images/STEM.jpg|.jpeg|.png|.bmp|.tif|.tiff|.webp, DIR/masks/STEM.png|.bmp|.tif|.tiff, '
  'DIR/classes.json or DIR/classes.txt (or --classes PATH), optionally DIR/splits/train.txt and '
  'DIR/splits/val.txt (see jaxseg.data.folder)'
)

log = logging.getLogger(__name__)


# -- the classes file -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassList:
  """A parsed classes file: class i is names[i], coloured colors[i] (None: the file has none)."""

  path: str
  names: tuple[str, ...]
  colors: tuple[tuple[int, int, int], ...] | None

  def palette(self) -> np.ndarray:
    """(256, 3) uint8: the file's colours, else VOC's palette for the classes; black after them."""
    colors = self.colors if self.colors is not None else voc_palette()[: len(self.names)]
    return full_palette(colors)

  def to_json(self) -> dict:
    colors = None if self.colors is None else [list(c) for c in self.colors]
    return {'file': self.path, 'names': list(self.names), 'colors': colors}


def read_classes(path: str) -> ClassList:
  """Parses a classes file (JSON or text, see the module docstring); PrepareError names the line."""
  with open(path, encoding='utf-8-sig') as f:
    text = f.read()
  is_json = path.lower().endswith('.json') or text.lstrip()[:1] in ('[', '{')
  entries = _json_entries(text, path) if is_json else _text_entries(text, path)
  return _check_classes(path, entries)


def _line_of(text: str, pos: int) -> int:
  return text.count('\n', 0, pos) + 1


def _json_entries(text: str, path: str) -> list[tuple[int, str, tuple | None]]:
  """(line, name, colour or None) of every top-level entry of a JSON classes file."""
  forms = (
    'a list of names ["a", "b"], a list of objects [{"name": "a", "color": [r, g, b]}, ...] '
    'or an object {"a": [r, g, b], ...}'
  )
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise PrepareError(f'{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}).') from None
  if not isinstance(data, (list, dict)):
    raise PrepareError(f'{path}: expected {forms}; got a JSON {type(data).__name__}.')
  # json.loads keeps no positions (and drops repeated keys), so walk the top level of the text,
  # valid JSON by now, entry by entry with raw_decode to know every entry's line.
  decoder = json.JSONDecoder()
  i = _JSON_SPACE.match(text, _JSON_SPACE.match(text).end() + 1).end()  # past '[' or '{'
  raw = []
  while text[i] not in ']}':
    line = _line_of(text, i)
    key = None
    if isinstance(data, dict):
      key, i = decoder.raw_decode(text, i)
      i = _JSON_SPACE.match(text, _JSON_SPACE.match(text, i).end() + 1).end()  # past ':'
    value, i = decoder.raw_decode(text, i)
    raw.append((line, key, value))
    i = _JSON_SPACE.match(text, i).end()
    if text[i] == ',':
      i = _JSON_SPACE.match(text, i + 1).end()
  entries = []
  for line, key, value in raw:
    where = f'{path}:{line}'
    if isinstance(data, dict):
      entries.append((line, key, _color(value, where, key)))
    elif isinstance(value, str):
      entries.append((line, value, None))
    elif isinstance(value, dict):
      extra = sorted(set(value) - {'name', 'color'})
      if extra or not isinstance(value.get('name'), str):
        raise PrepareError(
          f'{where}: a class object needs a string "name" and may have a "color" [r, g, b]; '
          f'got {json.dumps(value)}.'
        )
      color = value.get('color')
      entries.append((line, value['name'], None if color is None else _color(color, where)))
    else:
      raise PrepareError(
        f'{where}: expected a class name or a {{"name": ..., "color": [r, g, b]}} object, '
        f'got {json.dumps(value)}.'
      )
  return entries


def _color(value, where: str, name: str | None = None) -> tuple[int, int, int]:
  ok = (
    isinstance(value, (list, tuple))
    and len(value) == 3
    and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
  )
  if not ok:
    of = f' of {name!r}' if name is not None else ''
    raise PrepareError(
      f'{where}: the colour{of} must be [r, g, b] with integers 0..255, got {json.dumps(value)}.'
    )
  return tuple(int(v) for v in value)


def _text_entries(text: str, path: str) -> list[tuple[int, str, tuple | None]]:
  """(line, name, colour or None) of every class line of a text classes file."""
  entries = []
  for line, raw in enumerate(text.splitlines(), 1):
    body = raw.split('#', 1)[0].strip()
    if not body:
      continue
    m = _TEXT_COLOR_LINE.match(body)
    if m and m['name'].strip():
      rgb = tuple(int(m[c]) for c in 'rgb')
      if not all(0 <= v <= 255 for v in rgb):
        raise PrepareError(f'{path}:{line}: colour values must be 0..255, got {rgb} in {raw!r}.')
      entries.append((line, m['name'].strip(), rgb))
    elif ':' in body:
      raise PrepareError(
        f'{path}:{line}: expected NAME, NAME R G B or NAME: R, G, B (R, G, B 0..255), got {raw!r}.'
      )
    else:
      entries.append((line, body, None))
  return entries


def _check_classes(path: str, entries) -> ClassList:
  lines = {}
  for line, name, _ in entries:
    if not name.strip():
      raise PrepareError(f'{path}:{line}: a class name is empty.')
    if name in lines:
      raise PrepareError(
        f'{path}:{line}: class name {name!r} is already the name of the class on line '
        f'{lines[name]}; class names must be unique.'
      )
    lines[name] = line
  n = len(entries)
  if not MIN_CLASSES <= n <= MAX_CLASSES:
    raise PrepareError(
      f'{path}: {n} class(es); a dataset needs {MIN_CLASSES} to {MAX_CLASSES} (label 255 is '
      "'ignore'; with one object class, list the background too)."
    )
  colored = [e for e in entries if e[2] is not None]
  if colored and len(colored) < n:
    bare = [f'{name!r} (line {line})' for line, name, color in entries if color is None]
    shown = ', '.join(bare[:10]) + (f' and {len(bare) - 10} more' if len(bare) > 10 else '')
    raise PrepareError(
      f'{path}: colours are given for {len(colored)} of {n} classes; give one for every class '
      f'or for none. Without a colour: {shown}.'
    )
  owners = {}
  for line, name, color in colored:
    if color in owners:
      other, other_line = owners[color]
      raise PrepareError(
        f'{path}:{line}: class {name!r} has the colour {color} of class {other!r} '
        f'(line {other_line}); every class needs its own colour.'
      )
    owners[color] = (name, line)
  colors = tuple(e[2] for e in entries) if colored else None
  return ClassList(path, tuple(e[1] for e in entries), colors)


# -- prepare-time settings --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  """The prepare options of a folder dataset (None: not given, the default applies)."""

  classes: str | None = None
  val_fraction: float | None = None
  seed: int | None = None
  unknown_color: str = 'error'
  reduce_zero_label: bool = False

  @classmethod
  def from_options(cls, options: dict) -> Settings:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
      raise TypeError(
        f'the folder dataset takes the prepare options {", ".join(OPTIONS)}; got '
        f'{", ".join(unknown)}.'
      )
    s = cls(**{k: v for k, v in options.items() if v is not None})
    if s.classes is not None and not isinstance(s.classes, (str, os.PathLike)):
      raise TypeError(f'classes must be the path of a classes file, got {s.classes!r}.')
    if s.val_fraction is not None:
      if isinstance(s.val_fraction, bool) or not isinstance(s.val_fraction, (int, float)):
        raise TypeError(f'val_fraction must be a number in (0, 1), got {s.val_fraction!r}.')
      if not 0 < s.val_fraction < 1:
        raise ValueError(
          f'val_fraction must be in (0, 1) (the share of images for val), got {s.val_fraction}.'
        )
    if s.seed is not None and (isinstance(s.seed, bool) or not isinstance(s.seed, int)):
      raise TypeError(f'seed must be an integer, got {s.seed!r}.')
    if s.seed is not None and s.seed < 0:
      raise ValueError(f'--seed must be >= 0, got {s.seed}.')
    if s.unknown_color not in UNKNOWN_COLOR_MODES:
      raise ValueError(f"unknown_color must be 'error' or 'ignore', got {s.unknown_color!r}.")
    if not isinstance(s.reduce_zero_label, bool):
      raise TypeError(f'reduce_zero_label must be True or False, got {s.reduce_zero_label!r}.')
    if s.classes is not None:
      s = dataclasses.replace(s, classes=os.fspath(s.classes))
    return s


# -- the files in manual_dir ------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
  """What a preparation will read: classes, the items and the skips of each split."""

  classes: ClassList
  items: dict[str, list[Item]]
  skips: list[tuple[str, str, str, str]]  # (split, key, kind, detail)
  split_source: str
  unlisted: int


def _files_by_stem(folder: str, extensions) -> dict[str, str]:
  """{stem: path} of the files in `folder` with one of `extensions`; a shared stem is an error."""
  found: dict[str, list[str]] = {}
  with os.scandir(folder) as it:
    for entry in it:
      stem, ext = os.path.splitext(entry.name)
      if entry.name.startswith('.') or ext.lower() not in extensions or not entry.is_file():
        continue
      found.setdefault(stem, []).append(entry.path)
  shared = {stem: sorted(paths) for stem, paths in found.items() if len(paths) > 1}
  if shared:
    shown = '; '.join(' and '.join(paths) for paths in list(shared.values())[:10])
    raise PrepareError(
      f'{len(shared)} stem(s) in {folder} belong to several files, so the pairing is ambiguous: '
      f'{shown}. Keep one file per stem.'
    )
  return {stem: paths[0] for stem, paths in found.items()}


def _read_split_list(path: str, known: set[str]) -> list[tuple[int, str]]:
  """(line, stem) of a split list; a line may also be a file name with a known extension."""
  out = []
  with open(path, encoding='utf-8-sig') as f:
    for line, raw in enumerate(f, 1):
      name = raw.split('#', 1)[0].strip()
      if not name:
        continue
      stem, ext = os.path.splitext(name)
      if name not in known and stem in known and ext.lower() in IMAGE_EXTENSIONS + MASK_EXTENSIONS:
        name = stem
      out.append((line, name))
  return out


# -- the builder ------------------------------------------------------------------------------


class FolderConfig(tfds.core.BuilderConfig):
  """One folder dataset: its name (--config NAME) is the folder folder_segmentation/NAME."""


class FolderSegmentation(builder_lib.SegmentationBuilder):
  """Images and masks from a folder, classes from a classes file (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images and masks from a folder, classes from a classes file.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Place your data in manual_dir: {LAYOUT}.'
  DATASET = 'folder'
  SPLITS = {}  # any valid name is a config (see check_config); every config has SPLITS
  LAYOUT = LAYOUT
  CLASSES_FROM_DATA = True

  def __init__(self, *, config=None, settings: Settings | None = None, **kwargs):
    if not isinstance(config, tfds.core.BuilderConfig):
      self.check_config('' if config is None else config)
      config = FolderConfig(name=config, description=f'The folder dataset {config!r}.')
    super().__init__(config=config, **kwargs)
    self.settings = settings or Settings()
    self._plan: Plan | None = None
    self._plan_dir: str | None = None

  def _create_builder_config(self, builder_config, version):
    # Every name is a config here, not only those of BUILDER_CONFIGS: TFDS would log a warning
    # about a 'custom data configuration' each time the dataset is read.
    if isinstance(builder_config, FolderConfig):
      return builder_config
    return super()._create_builder_config(builder_config, version)

  @classmethod
  def create(cls, config_name: str, data_dir: str | None, **options) -> FolderSegmentation:
    """The builder of folder dataset `config_name`; `options` are the prepare options (OPTIONS)."""
    settings = Settings.from_options(options)
    cls.check_config(config_name)
    config = FolderConfig(name=config_name, description=f'The folder dataset {config_name!r}.')
    return cls(config=config, data_dir=data_dir, settings=settings)

  @classmethod
  def default_config_name(cls) -> str:
    return ''  # a folder dataset has no default name: check_config asks for one

  @classmethod
  def check_config(cls, config_name: str) -> None:
    if not config_name:
      raise ValueError(
        'the folder dataset needs a name: the one given at prepare time '
        '(jaxseg prepare --dataset folder --config NAME; --config.dataset.config=NAME to train).'
      )
    if not isinstance(config_name, str) or not _CONFIG_NAME.match(config_name):
      raise ValueError(
        f'folder dataset name {config_name!r} is not valid: use letters, digits, "_", "-" and '
        '".", starting with a letter or digit (it names the folder folder_segmentation/NAME).'
      )

  @classmethod
  def splits_of(cls, config_name: str) -> tuple[str, ...]:
    return SPLITS

  # -- manual_dir --------------------------------------------------------------------------

  def check_manual_dir(self, manual_dir: str, config_name: str) -> None:
    """Reads and checks manual_dir before TFDS creates any folder.

    Raises FileNotFoundError naming what is missing (and the layout),
    PrepareError for a bad classes file or split list, and, called on a
    builder whose name is already prepared, ValueError when that data came
    from other classes, options or a different number of pairs.
    """
    del config_name
    settings = self.settings
    missing = [f'{d}/' for d in ('images', 'masks') if not os.path.isdir(_join(manual_dir, d))]
    classes_path, classes_missing = _find_classes_file(manual_dir, settings.classes)
    if classes_missing:
      missing.append(classes_missing)
    if missing:
      raise FileNotFoundError(
        f'manual_dir {manual_dir!r} has no {_and(missing)}. Expected: {LAYOUT}.'
      )
    plan = _make_plan(manual_dir, classes_path, settings)
    self._plan, self._plan_dir = plan, os.path.abspath(manual_dir)
    if not self.overwrite and self.is_prepared():
      self._check_prepared_matches(plan)

  def _check_prepared_matches(self, plan: Plan) -> None:
    """ValueError unless the data prepared under this name came from these files and options.

    TFDS leaves a prepared dataset as it is, so preparing an edited folder or
    classes file under the same name would otherwise keep the old data silently.
    """
    meta = dict(self.info.metadata or {})
    now = {
      'class names': plan.classes.names,
      'class colours': plan.classes.to_json()['colors'],
      'split': plan.split_source,
      'reduce_zero_label': self.settings.reduce_zero_label,
      'unknown_color': self.settings.unknown_color,
    }
    before = {
      'class names': tuple(meta.get('class_names', ())),
      'class colours': (meta.get('classes') or {}).get('colors'),
      'split': meta.get('split_source'),
      'reduce_zero_label': meta.get('reduce_zero_label'),
      'unknown_color': meta.get('unknown_color'),
    }
    changed = [f'{k}: {before[k]} then, {now[k]} now' for k in now if now[k] != before[k]]
    for split, items in plan.items.items():
      stored = (meta.get('splits') or {}).get(split, {})
      # Every listed pair was written or skipped while reading it; pairing skips are not items.
      read = self.info.splits[split].num_examples if split in self.info.splits else 0
      read += sum(
        1
        for _, reason in stored.get('skipped', [])
        if not reason.startswith(('no_mask', 'no_image'))
      )
      if read != len(items):
        changed.append(f'{split}: {read} image/mask pairs then, {len(items)} now')
    if changed:
      raise ValueError(
        f'folder dataset {self.config_name!r} is already prepared in {self.data_dir} from other '
        f'files or options ({"; ".join(changed)}). Prepare under another --config NAME, or '
        'add --overwrite to replace it.'
      )

  def _get_plan(self, manual_dir: str) -> Plan:
    if self._plan is None or self._plan_dir != os.path.abspath(manual_dir):
      self.check_manual_dir(manual_dir, self.config_name)
    return self._plan

  def split_items(self, manual_dir: str) -> dict[str, list[Item]]:
    plan = self._get_plan(manual_dir)
    self._set_classes(plan.classes)
    for split, key, kind, detail in plan.skips:
      self.skip(split, key, kind, detail)
    return plan.items

  def _set_classes(self, classes: ClassList) -> None:
    """Precomputes what read_label needs for these classes."""
    self._classes = classes
    # Single-channel values -> ids, over all 256 byte values; ids >= n (but 255) are errors.
    table = np.arange(256, dtype=np.int64)
    if self.settings.reduce_zero_label:
      table = np.where(table == 0, IGNORE, np.where(table == IGNORE, IGNORE, table - 1))
    self._id_table = table
    self._binary_table = np.where(np.arange(256) == IGNORE, 1, np.arange(256))
    if classes.colors is not None:
      packed = np.array([(r << 16) | (g << 8) | b for r, g, b in classes.colors], np.uint32)
      order = np.argsort(packed)
      self._color_keys = packed[order]
      self._color_ids = order.astype(np.uint8)

  # -- classes and metadata ---------------------------------------------------------------

  def class_names(self) -> tuple[str, ...]:
    if getattr(self, '_classes', None) is not None:
      return self._classes.names
    return tuple(self._prepared_metadata('class_names'))

  def palette(self) -> np.ndarray:
    if getattr(self, '_classes', None) is not None:
      return self._classes.palette()
    return np.asarray(self._prepared_metadata('palette'), np.uint8)

  def _prepared_metadata(self, key: str):
    meta = dict(self.info.metadata or {}) if self.is_prepared() else {}
    if key not in meta:
      raise FileNotFoundError(
        f'folder dataset {self.config_name!r} is not prepared in {self.data_dir_root}; its '
        'classes come from its classes file at prepare time:\n  '
        f'jaxseg prepare --dataset folder --config {self.config_name} --manual_dir DIR '
        f'--data_dir {self.data_dir_root}'
      )
    return meta[key]

  def extra_metadata(self) -> dict:
    plan = self._plan
    meta = {
      'classes': plan.classes.to_json(),
      'split_source': plan.split_source,
      'reduce_zero_label': self.settings.reduce_zero_label,
      'unknown_color': self.settings.unknown_color,
    }
    if plan.split_source == 'splits/*.txt':
      meta['unlisted'] = plan.unlisted
    return meta

  # -- masks ----------------------------------------------------------------------------

  def read_label(self, path: str) -> np.ndarray:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode in _COLOR_MODES:
        return self._label_from_colors(np.asarray(im.convert('RGB') if mode != 'RGB' else im), path)
      if mode in _WITH_ALPHA_INDEX_MODES:
        ids = np.asarray(im)[..., 0]
      elif mode in _INDEX_MODES:
        ids = np.asarray(im)
      else:
        raise LabelError(
          f'{path}: mask mode {mode} is not supported: expected a single-channel index mask '
          '(L, P, I;16, I) or an RGB/RGBA colour mask.'
        )
    return self._label_from_ids(ids, path)

  def _label_from_ids(self, ids: np.ndarray, path: str) -> np.ndarray:
    n = len(self._classes.names)
    wide = np.empty(0, np.int64)  # values that no byte holds (16/32-bit masks)
    if ids.dtype == np.bool_:
      ids = ids.astype(np.uint8)
    elif ids.dtype != np.uint8:
      values = np.unique(ids)
      wide = values[(values < 0) | (values > 255)].astype(np.int64)
      ids = np.clip(ids, 0, 255).astype(np.uint8)
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
    binary = (
      n == 2
      and not self.settings.reduce_zero_label
      and wide.size == 0
      and IGNORE in present
      and set(present.tolist()) <= {0, IGNORE}
    )
    table = self._binary_table if binary else self._id_table
    mapped = table[present]
    bad = np.concatenate([present[(mapped >= n) & (mapped != IGNORE)], wide])
    if bad.size:
      raise LabelError(self._bad_values_message(path, np.sort(bad), n))
    return table[ids].astype(np.uint8)

  def _bad_values_message(self, path: str, bad: np.ndarray, n: int) -> str:
    shown = ', '.join(str(v) for v in bad[:10]) + (
      f' ... ({bad.size} values)' if bad.size > 10 else ''
    )
    if self.settings.reduce_zero_label:
      valid = f'with reduce_zero_label the mask values 1..{n} are the classes 0..{n - 1}'
    else:
      valid = f'ids 0..{n - 1}'
    what = 'values {} are not class ids' if bad.size > 1 else 'value {} is not a class id'
    hint = ''
    if n == 2 and not self.settings.reduce_zero_label:
      hint = ' (a binary mask must hold only 0 and 255, or only 0 and 1)'
    return (
      f'{path}: {what.format(shown)}: the classes file {self._classes.path} has {n} '
      f'classes ({valid}; 255 = ignore){hint}.'
    )

  def _label_from_colors(self, rgb: np.ndarray, path: str) -> np.ndarray:
    classes = self._classes
    if classes.colors is None:
      raise LabelError(
        f'{path}: an RGB colour mask, but the classes file {classes.path} gives no colours: add '
        'an RGB colour to every class, or save the masks as single-channel index PNGs.'
      )
    packed = rgb[..., 0].astype(np.uint32) << 16
    packed |= rgb[..., 1].astype(np.uint32) << 8
    packed |= rgb[..., 2]
    keys = self._color_keys
    pos = np.searchsorted(keys, packed)
    np.minimum(pos, len(keys) - 1, out=pos)
    known = keys[pos] == packed
    label = self._color_ids[pos]
    if not known.all():
      if self.settings.unknown_color == 'ignore':
        label[~known] = IGNORE
      else:
        colors, counts = np.unique(packed[~known], return_counts=True)
        order = np.argsort(-counts, kind='stable')
        shown = ', '.join(
          f'({c >> 16}, {(c >> 8) & 255}, {c & 255}): {k} px'
          for c, k in zip(colors[order][:10].tolist(), counts[order][:10].tolist(), strict=True)
        )
        more = f' and {len(colors) - 10} more' if len(colors) > 10 else ''
        raise LabelError(
          f'{path}: {len(colors)} colour(s) not in the classes file {classes.path}: '
          f'{shown}{more}. Add them to the classes file, or prepare with --unknown_color ignore '
          '(such pixels become 255, ignored).'
        )
    return label


# -- helpers ----------------------------------------------------------------------------------


def _join(*parts: str) -> str:
  return os.path.join(*parts)


def _and(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def _find_classes_file(manual_dir: str, given: str | None) -> tuple[str, str]:
  """(path of the classes file, '' ) or ('', what is missing, for the error message)."""
  if given:
    for cand in (given, _join(manual_dir, given)):
      if os.path.isfile(cand):
        return os.path.abspath(cand), ''
    return '', f'classes file {given!r} (given with --classes)'
  present = [f for f in CLASS_FILES if os.path.isfile(_join(manual_dir, f))]
  if len(present) > 1:
    raise PrepareError(
      f'manual_dir {manual_dir!r} has both {" and ".join(present)}; remove one or name it with '
      '--classes.'
    )
  if present:
    return os.path.abspath(_join(manual_dir, present[0])), ''
  return '', 'classes file (classes.json or classes.txt, or --classes PATH)'


def _make_plan(manual_dir: str, classes_path: str, settings: Settings) -> Plan:
  classes = read_classes(classes_path)
  images_dir, masks_dir = _join(manual_dir, 'images'), _join(manual_dir, 'masks')
  images = _files_by_stem(images_dir, IMAGE_EXTENSIONS)
  masks = _files_by_stem(masks_dir, MASK_EXTENSIONS)
  lossy = _files_by_stem(masks_dir, LOSSY_MASK_EXTENSIONS)
  paired = sorted(images.keys() & masks.keys())

  def no_mask(split: str, stem: str):
    detail = f'{images[stem]} has no mask {masks_dir}/{stem}.png (or .bmp, .tif)'
    if stem in lossy:
      detail += f'; {lossy[stem]} is lossy (JPEG/WebP), save the mask as PNG'
    return (split, stem, 'no_mask', detail)

  def no_image(split: str, stem: str):
    return (split, stem, 'no_image', f'{masks[stem]} has no image {images_dir}/{stem}.*')

  train_list, val_list = (_join(manual_dir, 'splits', f'{s}.txt') for s in SPLITS)
  listed = [os.path.isfile(p) for p in (train_list, val_list)]
  if any(listed):
    if not all(listed):
      have, lack = (train_list, val_list) if listed[0] else (val_list, train_list)
      raise FileNotFoundError(
        f'{have} is there but {lack} is not: give both split lists, or neither to draw the '
        'split with --val_fraction and --seed.'
      )
    given = [k for k in ('val_fraction', 'seed') if getattr(settings, k) is not None]
    if given:
      raise ValueError(
        f'{" and ".join(given)} draw a split, but {manual_dir} has splits/train.txt and '
        'splits/val.txt, which define it; drop the option(s) or the split lists.'
      )
    known = images.keys() | masks.keys()
    seen: dict[str, tuple[str, int]] = {}
    items, skips = {}, []
    for split, path in zip(SPLITS, (train_list, val_list), strict=True):
      items[split] = []
      for line, stem in _read_split_list(path, known):
        if stem in seen:
          other, other_line = seen[stem]
          where = 'also' if other == path else f'also in {other}'
          raise PrepareError(
            f'{path}:{line}: {stem!r} is listed {where} (line {other_line}); a stem belongs to '
            'one split, once.'
          )
        seen[stem] = (path, line)
        if stem not in known:
          raise PrepareError(
            f'{path}:{line}: {stem!r} has no image in {images_dir} and no mask in {masks_dir}.'
          )
        if stem not in masks:
          skips.append(no_mask(split, stem))
        elif stem not in images:
          skips.append(no_image(split, stem))
        else:
          items[split].append(Item(stem, images[stem], masks[stem]))
      items[split].sort()
    for split, path in zip(SPLITS, (train_list, val_list), strict=True):
      if not items[split] and not any(skip[0] == split for skip in skips):
        raise PrepareError(f'{path} lists no image; each split needs at least one.')
    unlisted = len(set(paired) - seen.keys())
    if unlisted:
      log.warning('%d image/mask pair(s) are in neither split list and are not used', unlisted)
    return Plan(classes, items, sorted(skips), 'splits/*.txt', unlisted)

  if not paired:
    raise PrepareError(
      f'no image/mask pairs in {manual_dir}: {len(images)} image(s) in {images_dir} and '
      f'{len(masks)} mask(s) in {masks_dir} share no stem (an image and its mask have the same '
      'file name up to the extension; subfolders are not searched).'
    )
  if len(paired) < 2:
    raise PrepareError(
      f'{manual_dir} holds 1 image/mask pair ({paired[0]!r}); train and val need one each.'
    )
  fraction = DEFAULT_VAL_FRACTION if settings.val_fraction is None else settings.val_fraction
  seed = DEFAULT_SEED if settings.seed is None else settings.seed
  n = len(paired)
  n_val = min(max(math.floor(fraction * n + 0.5), 1), n - 1)  # rounded half up
  order = np.random.default_rng(seed).permutation(n)
  val = {paired[i] for i in order[:n_val].tolist()}
  items = {
    'train': [Item(s, images[s], masks[s]) for s in paired if s not in val],
    'val': [Item(s, images[s], masks[s]) for s in paired if s in val],
  }
  skips = [no_mask('train', s) for s in sorted(images.keys() - masks.keys())]
  skips += [no_image('train', s) for s in sorted(masks.keys() - images.keys())]
  return Plan(classes, items, sorted(skips), f'seeded: val_fraction={fraction}, seed={seed}', 0)
