"""grain input pipelines: a checkpointable training iterator and a finite eval iterable.

Training: a `grain.DataLoader` over the split's random-access source with an
infinite, seeded, globally shuffled `IndexSampler`, sharded per JAX process,
augmented per record by `transforms.train_augment` (the record's RNG is derived
by grain from the seed and the record's position, so a run is reproducible and
a restored iterator continues exactly where it stopped), then batched with
`drop_remainder=True` so every batch has the static shape
(batch_size // process_count, *crop_size).

Checkpointing the training iterator (grain 0.2.18), either
  * plain bytes: `state = it.get_state()` / `it.set_state(state)` on an
    iterator created with the same config and seed, or
  * with Orbax: `ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it))`
    to save and `grain.checkpoint.CheckpointRestore(it)` to restore (it writes
    one `process_<i>-of-<n>.json` per JAX process).

With `dataset.num_workers > 0` grain hands records to worker processes round
robin and each worker batches its own records, so batches are composed
differently than in-process (still deterministic); a state restores only into
an iterator with the same worker count (grain checks it).

Evaluation: every example of the split exactly once, in order. Process p of P
gets global examples b*B*P + p*B + j (j < B) for batch b, so all processes run
the same number of batches; slots past the end are padding with `mask` False,
image 0 and label 255. Images are padded bottom/right to one static size per
split (`config.dataset.eval_size`, or the split's largest image size).
"""

from __future__ import annotations

import math
import os

import grain
import numpy as np

from jaxseg.data import synthetic, transforms


def _split_name(config, split: str | None, train: bool) -> str:
  if split:
    return split
  return config.dataset.train_split if train else config.dataset.eval_split


def _synthetic_count(config, split: str) -> int:
  if split == 'train':
    return int(config.dataset.synthetic_train_examples)
  return int(config.dataset.synthetic_eval_examples)


def get_source(config, split: str):
  """The random-access source of `split`: records {'image': uint8 HWC, 'label': uint8 HW}.

  `source.example_id(i)` names example i ('2007_000033' in VOC, the file stem
  in Cityscapes and folders, 'val_00003' in the generated set); examples come
  in the split's order.
  """
  name = config.dataset.name
  if name == 'synthetic':
    return synthetic.SyntheticSegmentation(
      split,
      _synthetic_count(config, split),
      size=config.dataset.synthetic_size,
      num_classes=_num_classes(config),
    )
  from jaxseg.data import datasets  # TFDS import is slow; only pay it when needed.

  # The config field that named the split, so a wrong split name gets the exact override to add.
  field = next((f for f in ('train_split', 'eval_split') if config.dataset[f] == split), None)
  return datasets.load_source(
    name, split, config=config.dataset.config, data_dir=config.dataset.data_dir or None, field=field
  )


def _num_classes(config) -> int:
  n = int(config.dataset.num_classes)
  return n if n > 0 else datasets_lib().SYNTHETIC_NUM_CLASSES


def datasets_lib():
  from jaxseg.data import datasets

  return datasets


def num_examples(config, split: str | None = None) -> int:
  """Number of examples in `split` (default: the eval split)."""
  split = _split_name(config, split, train=False)
  if config.dataset.name == 'synthetic':
    synthetic.SyntheticSegmentation(
      split, max(_synthetic_count(config, split), 1), size=8, num_classes=2
    )  # validates the split name
    return _synthetic_count(config, split)
  return len(get_source(config, split))


def dataset_info(config):
  """The `datasets.DatasetInfo` of config.dataset (class names, num_classes, ignore index, palette).

  Raises ValueError when config.dataset.num_classes is set (> 0) and differs
  from the dataset's class count.
  """
  datasets = datasets_lib()
  name = config.dataset.name
  n = int(config.dataset.num_classes)
  if name == 'synthetic':
    return datasets.dataset_info('synthetic', str(n) if n > 0 else '')
  info = datasets.dataset_info(
    name, config.dataset.config, data_dir=config.dataset.data_dir or None
  )
  if n > 0 and n != info.num_classes:
    label = f'{name} {info.config!r}' if info.config else name
    raise ValueError(
      f'config.dataset.num_classes={n} but {label} has {info.num_classes} classes '
      f'({", ".join(info.class_names[:5])}{", ..." if info.num_classes > 5 else ""}). '
      f'Set --config.dataset.num_classes={info.num_classes}, or 0 to take it from the dataset.'
    )
  return info


def resolve_config(config):
  """Fills in what config.dataset leaves to the dataset, in place; returns the DatasetInfo.

  * dataset.num_classes = 0 becomes the dataset's class count (a different
    non-zero count is a ValueError naming both);
  * train.class_weighting = 'median_frequency' sets train.class_weights from
    the training split's label statistics (`datasets.class_weights`);
  * a relative dataset.data_dir becomes absolute.
  Idempotent: the trainer, eval and predict call it before building a model.
  """
  if config.dataset.data_dir:
    # Absolute, so that eval and predict find the data from any directory (the path is stored
    # with the checkpoint); '~' too, which a shell leaves alone in --config.dataset.data_dir=~/x.
    config.dataset.data_dir = os.path.abspath(os.path.expanduser(config.dataset.data_dir))
  info = dataset_info(config)
  config.dataset.num_classes = info.num_classes
  weighting = config.train.get('class_weighting', '') or ''
  if weighting and weighting != 'none' and not tuple(config.train.get('class_weights', ()) or ()):
    if config.dataset.name == 'synthetic':
      from jaxseg import losses

      source = get_source(config, config.dataset.train_split)
      weights = losses.median_frequency_from_masks(
        (source[i]['label'] for i in range(len(source))), info.num_classes
      )
      weights = tuple(float(w) for w in weights)
    else:
      weights = datasets_lib().class_weights(
        config.dataset.name,
        config.dataset.train_split,
        config=info.config,
        data_dir=config.dataset.data_dir or None,
        method=weighting,
      )
    with config.ignore_type():
      config.train.class_weights = weights
  return info


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f'need 0 <= process_index < process_count, got process_index={process_index}, '
      f'process_count={process_count}.'
    )


def _per_process_batch(batch_size: int, process_count: int, what: str) -> int:
  if batch_size < process_count or batch_size % process_count:
    raise ValueError(
      f'{what} {batch_size} must be a positive multiple of the number of processes '
      f'({process_count}).'
    )
  return batch_size // process_count


class TrainAugment(grain.transforms.RandomMap):
  """Scale, normalise, pad, crop and flip one record (a grain RandomMapTransform)."""

  def __init__(self, *, crop_size, scale_range, flip, normalize_mode, ignore_index):
    self.crop_size = tuple(int(c) for c in crop_size)
    self.scale_range = tuple(float(s) for s in scale_range)
    self.flip = bool(flip)
    self.normalize_mode = normalize_mode
    self.ignore_index = int(ignore_index)

  def random_map(self, element, rng: np.random.Generator):
    image, label = transforms.train_augment(
      element['image'],
      element['label'],
      rng,
      crop_size=self.crop_size,
      scale_range=self.scale_range,
      flip=self.flip,
      normalize_mode=self.normalize_mode,
      ignore_index=self.ignore_index,
    )
    return {'image': image, 'label': label}


def create_train_iterator(
  config, *, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.DataLoaderIterator:
  """Infinite, checkpointable iterator of {'image': f32 (B, H, W, C), 'label': i32 (B, H, W)}.

  Args:
    config: the experiment config (uses `dataset` and `train.batch_size`).
    seed: shuffling/augmentation seed (any int; reduced to 32 bits for grain).
    process_index: this JAX process (`jax.process_index()`).
    process_count: number of processes (`jax.process_count()`).

  Returns:
    A `grain.DataLoaderIterator`; B = train.batch_size // process_count and
    (H, W) = dataset.crop_size. Save/restore with get_state()/set_state().
  """
  _check_process(process_index, process_count)
  batch = _per_process_batch(int(config.train.batch_size), process_count, 'config.train.batch_size')
  crop_size = tuple(int(c) for c in config.dataset.crop_size)
  if len(crop_size) != 2 or min(crop_size) < 1:
    raise ValueError(f'dataset.crop_size must be (H, W), got {config.dataset.crop_size!r}.')
  transforms.check_mode(config.dataset.normalize)
  source = get_source(config, _split_name(config, None, train=True))
  shard = grain.sharding.ShardOptions(
    shard_index=process_index, shard_count=process_count, drop_remainder=True
  )
  if len(source) < process_count:
    raise ValueError(
      f'{len(source)} training examples cannot be sharded over {process_count} processes.'
    )
  sampler = grain.samplers.IndexSampler(
    num_records=len(source),
    shard_options=shard,
    shuffle=True,
    num_epochs=None,
    seed=int(seed) % (2**32),
  )
  ops = [
    TrainAugment(
      crop_size=crop_size,
      scale_range=config.dataset.scale_range,
      flip=config.dataset.flip,
      normalize_mode=config.dataset.normalize,
      ignore_index=config.dataset.ignore_index,
    ),
    grain.transforms.Batch(batch_size=batch, drop_remainder=True),
  ]
  if int(config.dataset.num_workers) > 0:
    from absl import flags

    # grain's worker processes read absl flags; outside an absl app (scripts,
    # notebooks) they are unparsed, which grain treats as an error.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  loader = grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=ops,
    worker_count=int(config.dataset.num_workers),
    shard_options=shard,
    # grain's default of 16 reader threads oversubscribes small hosts.
    read_options=grain.ReadOptions(
      num_threads=min(4, os.cpu_count() or 1), prefetch_buffer_size=2 * batch
    ),
  )
  return iter(loader)


class EvalIterable:
  """Finite, re-iterable eval batches {'image', 'label', 'mask'} of one static shape.

  Attributes:
    num_batches: batches per pass (equal on every process).
    batch_size: examples per batch on this process.
    image_size: (H, W) every batch is padded to.
    num_examples: real examples in the split (all processes together).
  """

  def __init__(
    self,
    source,
    *,
    batch_size,
    image_size,
    normalize_mode,
    ignore_index,
    process_index,
    process_count,
  ):
    self._source = source
    self.batch_size = int(batch_size)
    self.image_size = tuple(int(s) for s in image_size)
    self._normalize_mode = normalize_mode
    self._ignore_index = int(ignore_index)
    self._process_index = process_index
    self._process_count = process_count
    self.num_examples = len(source)
    self.num_batches = math.ceil(self.num_examples / (self.batch_size * process_count))

  def __len__(self) -> int:
    return self.num_batches

  def _global_index(self, local: int) -> int:
    b, j = divmod(local, self.batch_size)
    return (b * self._process_count + self._process_index) * self.batch_size + j

  def _load(self, local: int) -> dict[str, np.ndarray]:
    h, w = self.image_size
    g = self._global_index(local)
    if g >= self.num_examples:
      return {
        'image': np.zeros((h, w, 3), np.float32),
        'label': np.full((h, w), self._ignore_index, np.int32),
        'mask': np.bool_(False),
      }
    rec = self._source[g]
    image, label = np.asarray(rec['image']), np.asarray(rec['label'])
    if label.ndim == 3:
      label = label[..., 0]
    if image.shape[0] > h or image.shape[1] > w:
      name = self._source.example_id(g) if hasattr(self._source, 'example_id') else g
      need = (max(h, image.shape[0]), max(w, image.shape[1]))
      raise ValueError(
        f'eval example {name!r} is {image.shape[0]}x{image.shape[1]}, larger than '
        f'config.dataset.eval_size {h}x{w}: set --config.dataset.eval_size="{need}" or more, or '
        "--config.dataset.eval_size='()' for the split's largest image."
      )
    image = transforms.normalize(image, self._normalize_mode)
    image, label = transforms.pad_to_size(
      image, label, (h, w), image_fill=0.0, label_fill=self._ignore_index
    )
    return {
      'image': np.ascontiguousarray(image, np.float32),
      'label': label.astype(np.int32),
      'mask': np.bool_(True),
    }

  def __iter__(self):
    ds = (
      grain.MapDataset.range(self.num_batches * self.batch_size)
      .map(self._load)
      .batch(self.batch_size)
    )
    # A few threads decode/normalise ahead of the consumer.
    yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def create_eval_iterator(
  config,
  *,
  split: str | None = None,
  batch_size: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> EvalIterable:
  """Finite iterable over `split` (default dataset.eval_split), each example exactly once.

  Args:
    config: the experiment config.
    split: split name; None = config.dataset.eval_split.
    batch_size: global batch size; None = config.eval.batch_size.
    process_index: this JAX process.
    process_count: number of processes.

  Returns:
    An `EvalIterable` of {'image': f32 (B, H, W, C), 'label': i32 (B, H, W),
    'mask': bool (B,)}; B = batch_size // process_count, (H, W) = eval_size or
    the split's largest image size.
  """
  _check_process(process_index, process_count)
  what = 'config.eval.batch_size' if batch_size is None else 'eval batch size'
  batch_size = int(config.eval.batch_size if batch_size is None else batch_size)
  batch = _per_process_batch(batch_size, process_count, what)
  transforms.check_mode(config.dataset.normalize)
  source = get_source(config, _split_name(config, split, train=False))
  image_size = tuple(config.dataset.eval_size) or tuple(source.max_image_size)
  if len(image_size) != 2:
    raise ValueError(f'dataset.eval_size must be () or (H, W), got {config.dataset.eval_size!r}.')
  return EvalIterable(
    source,
    batch_size=batch,
    image_size=image_size,
    normalize_mode=config.dataset.normalize,
    ignore_index=config.dataset.ignore_index,
    process_index=process_index,
    process_count=process_count,
  )
