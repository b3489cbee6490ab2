"""Datasets and input pipelines: the generated set, VOC, Cityscapes, ADE20K, CamVid, your own folder.

Datasets by name (see `datasets`): `list_datasets`, `dataset_info(name,
config)`, `load_source(name, split, config=...)`, `prepare_dataset(name, ...)`,
`class_weights(name, split, ...)`.
From an experiment config (config.dataset): `create_train_iterator`,
`create_eval_iterator`, `get_source`, `num_examples`, `dataset_info(config)`
and `resolve_config`. See `pipeline` for checkpointing the training iterator.
"""

from jaxseg.data.datasets import (
  DatasetInfo,
  class_statistics,
  class_weights,
  list_datasets,
  load_source,
  prepare_dataset,
)
from jaxseg.data.palette import VOC_CLASSES, colorize, full_palette, overlay, voc_palette
from jaxseg.data.pipeline import (
  EvalIterable,
  create_eval_iterator,
  create_train_iterator,
  get_source,
  num_examples,
  resolve_config,
)
from jaxseg.data.transforms import denormalize, denormalize_jax, normalize


def dataset_info(name_or_config, config: str = '', *, data_dir: str | None = None) -> DatasetInfo:
  """Class names, num_classes, ignore index and palette of a dataset.

  `dataset_info('cityscapes')`, `dataset_info('folder', 'mine', data_dir=...)`,
  or `dataset_info(experiment_config)` for config.dataset (which also checks
  that a non-zero config.dataset.num_classes matches the dataset).
  """
  from jaxseg.data import datasets, pipeline

  if isinstance(name_or_config, str):
    return datasets.dataset_info(name_or_config, config, data_dir=data_dir)
  return pipeline.dataset_info(name_or_config)


__all__ = [
  'VOC_CLASSES',
  'DatasetInfo',
  'EvalIterable',
  'class_statistics',
  'class_weights',
  'full_palette',
  'list_datasets',
  'load_source',
  'prepare_dataset',
  'resolve_config',
  'colorize',
  'create_eval_iterator',
  'create_train_iterator',
  'dataset_info',
  'denormalize',
  'denormalize_jax',
  'get_source',
  'normalize',
  'num_examples',
  'overlay',
  'voc_palette',
]
