"""Weights: conversion from (and to) the reference PyTorch layouts.

`from_torch(name, state_dict_or_path, **model_kwargs)` works for every
registered model or backbone that has a layout (one `layouts_*.py` module per
family registers them).
"""

from jaxseg.weights.core import (
  LAYOUTS,
  Layout,
  WeightsError,
  convert,
  export,
  from_torch,
  get_layout,
  load_state_dict,
  register_layout,
  to_torch,
)

__all__ = [
  'LAYOUTS',
  'Layout',
  'WeightsError',
  'convert',
  'export',
  'from_torch',
  'get_layout',
  'load_state_dict',
  'register_layout',
  'to_torch',
]

from jaxseg.weights.pretrained import (  # noqa: E402
  LoadReport,
  checkpoint_metadata,
  init_backbone,
  load_checkpoint,
  load_pretrained,
  save_checkpoint,
)

__all__ += [
  'LoadReport',
  'checkpoint_metadata',
  'init_backbone',
  'load_checkpoint',
  'load_pretrained',
  'save_checkpoint',
]
