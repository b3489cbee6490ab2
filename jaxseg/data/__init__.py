"""Datasets and input pipelines: the generated default set, VOC 2012 (+SBD), grain loaders.

The interface the trainer uses (config.dataset.name 'synthetic' or 'voc'):
`create_train_iterator`, `create_eval_iterator`, `num_examples`,
`dataset_info` and `normalize`. See `pipeline` for checkpointing the training
iterator.
"""

from jaxseg.data.palette import VOC_CLASSES, colorize, overlay, voc_palette
from jaxseg.data.pipeline import (
  EvalIterable,
  create_eval_iterator,
  create_train_iterator,
  dataset_info,
  get_source,
  num_examples,
)
from jaxseg.data.transforms import denormalize, denormalize_jax, normalize

__all__ = [
  'VOC_CLASSES',
  'EvalIterable',
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
