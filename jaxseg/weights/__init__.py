"""Weights: conversion from (and to) the reference PyTorch layouts.

`from_torch(name, state_dict_or_path, **model_kwargs)` and `to_torch(name, variables)`
work for every registered model or backbone that has a layout (one `layouts_*.py`
module per family registers them). `convert_state_dict(state_dict, target, layout)`
and `export_state_dict(variables, layout)` are the same conversions given a `Layout`
and the target variables (or their shapes) directly.

The submodules `convert` and `export` are command lines:
`jaxseg convert` (PyTorch file -> jaxseg checkpoint directory,
`jaxseg.weights.convert.convert_checkpoint`) and `jaxseg export`
(checkpoint directory -> PyTorch-layout file, `jaxseg.weights.export.export_checkpoint`).
"""

from jaxseg.weights.core import (
  LAYOUTS,
  Layout,
  WeightsError,
  convert_state_dict,
  export_state_dict,
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
  'convert_state_dict',
  'export_state_dict',
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
