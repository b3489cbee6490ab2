"""Pretrained weights for training and inference: backbones, full models, converted checkpoints.

Four functions, all strict (a checkpoint that does not fit raises `WeightsError`
naming every missing, unused or mis-shaped key; nothing is partially loaded):

`init_backbone(model, variables, path_or_state_dict) -> (variables, report)`
  Initialises `variables['params']['backbone']` (and `batch_stats['backbone']`)
  from an ImageNet classification checkpoint in the backbone's PyTorch layout
  (e.g. torchvision's vgg16-397923af.pth, resnet50-0676ba61.pth), or from a
  converted checkpoint directory of that backbone or of a model built on it.
  The model names the backbone through `model.backbone_spec() -> (backbone_name,
  kwargs)`; everything outside the backbone (the head) keeps its fresh
  initialisation. The checkpoint's layers that this backbone variant leaves out
  by design (`Layout.omitted`: the ImageNet classifier, MobileNetV2's
  features.18 in DeepLabv3+) are skipped and listed in `report.omitted`. The
  train loop calls it when `config.model.backbone_weights` is set.

`load_pretrained(model_name, variables, path, num_classes, **model_kwargs) -> (variables, report)`
  Loads a full-model checkpoint in the model's PyTorch layout (e.g. torchvision
  deeplabv3_resnet50_coco-cd0a2569.pth, pytorch-fcn fcn8s_from_caffe.pth), or a
  converted checkpoint directory of the same model. If
  the checkpoint was trained for another number of classes, exactly the
  variables whose shape depends on the class count (found by building the
  model at both class counts) keep their fresh initialisation from `variables`
  and `report.reinitialized` lists them; any other mismatch is an error. The
  train loop calls it when `config.model.weights` is set, passing
  `config.model.kwargs` as `model_kwargs`.

`save_checkpoint(directory, model_name, variables, ...)` / `load_checkpoint(directory) -> (model, variables)`
  A converted checkpoint: an orbax `StandardSave` of `{'params', 'batch_stats'}`
  in `directory/state` plus `directory/jaxseg.json` (model or backbone name,
  num_classes, model kwargs, source file, input normalisation), written to a
  temporary directory and renamed into place so that a crash never leaves a
  half-written checkpoint. `jaxseg convert` writes them;
  `jaxseg eval` / `jaxseg predict` and `jaxseg export` read them
  with `load_checkpoint`.

Input normalisation: torchvision checkpoints expect RGB in [0, 1] normalised
with the ImageNet mean/std (`config.dataset.normalize = 'imagenet'`). Weights
converted from Caffe (pytorch-fcn's fcn8s_from_caffe.pth, vgg16_from_caffe.pth)
expect BGR images in 0-255 minus the mean (104.007, 116.669, 122.679)
(`config.dataset.normalize = 'caffe'`); the wrong one costs many mIoU points
without any error, so `convert --normalize caffe` records it in the sidecar
(`checkpoint_metadata(directory)['normalize']`).

Typical use in a train loop:

  variables = model.init(rng, dummy, train=False)
  if config.model.backbone_weights:
    variables, report = init_backbone(model, variables, config.model.backbone_weights)
  if config.model.weights:
    variables, report = load_pretrained(config.model.name, variables, config.model.weights,
                                        config.dataset.num_classes, **config.model.kwargs)
  logging.info('%s', report)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import uuid
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.weights.core import (
  CHECKPOINT_SIDECAR,
  _torch_shape,
  convert_state_dict,
  directory_error,
  flat_key_map,
  get_layout,
  in_layers,
  is_counter,
  load_state_dict,
  target_shapes,
  to_torch,
)

log = logging.getLogger(__name__)

METADATA_FILE = CHECKPOINT_SIDECAR
STATE_DIR = 'state'
FORMAT = 'jaxseg-checkpoint'


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What a load did.

  Attributes:
    source: the file (or 'state dict') that was read.
    target: the model / backbone the weights went into.
    loaded: PyTorch keys whose values were loaded.
    reinitialized: 'key: checkpoint shape -> model shape' for every variable
      that kept its fresh initialisation (a classifier for another class count).
    ignored: checkpoint keys that were not loaded: those of the `omitted` layers
      and BatchNorm's num_batches_tracked counters.
    omitted: the checkpoint's layers (PyTorch module names, e.g. 'fc',
      'features.18.0') that the target leaves out by design (`Layout.omitted`).
  """

  source: str
  target: str
  loaded: tuple[str, ...] = ()
  reinitialized: tuple[str, ...] = ()
  ignored: tuple[str, ...] = ()
  omitted: tuple[str, ...] = ()

  def __str__(self) -> str:
    lines = [
      f'{self.target}: loaded {len(self.loaded)} tensors from {self.source}; '
      f'{len(self.reinitialized)} re-initialised.'
    ]
    if self.reinitialized:
      lines.append('  re-initialised (fresh init kept): ' + '; '.join(self.reinitialized))
    if self.omitted:
      skipped = sum(not is_counter(k) for k in self.ignored)
      lines.append(
        f'  layers left out by this variant (not loaded): {", ".join(self.omitted)} '
        f'({skipped} checkpoint tensors)'
      )
    return '\n'.join(lines)


def _source_name(source) -> str:
  return 'state dict' if isinstance(source, Mapping) else os.fspath(source)


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _place_like(new, old):
  """Puts a converted array where the leaf it replaces lived (keeps a mesh sharding)."""
  if new.dtype != old.dtype:
    new = jnp.asarray(new, dtype=old.dtype)
  sharding = getattr(old, 'sharding', None)
  return jax.device_put(new, sharding) if sharding is not None else new


def _account(
  sd: dict, target: Mapping, layout, omitted=()
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
  """(loaded keys, ignored keys, omitted layers present in `sd`) of a load that succeeded."""
  sd = dict(sd)
  if layout.preprocess is not None:
    sd = layout.preprocess(sd, _flat(target))
  used = set(flat_key_map(target, layout.key_fn).values())
  ignored = tuple(sorted(k for k in sd if k not in used))
  present = tuple(
    p for p in omitted if any(in_layers(k, (p,)) for k in ignored if not is_counter(k))
  )
  return tuple(sorted(used)), ignored, present


@functools.lru_cache(maxsize=64)
def _cached_spec_shapes(name: str, frozen_kwargs: tuple, input_shape: tuple) -> dict:
  from jaxseg.registry import create_backbone

  shapes = target_shapes(create_backbone(name, **dict(frozen_kwargs)), input_shape)
  return {p: tuple(v.shape) for p, v in _flat(shapes).items() if p[0] in ('params', 'batch_stats')}


def _spec_shapes(name: str, kwargs: Mapping, input_shape: tuple) -> dict:
  """{flax path: shape} of the backbone `backbone_spec()` describes (traced once per spec)."""
  frozen = tuple(sorted(kwargs.items()))
  try:
    hash(frozen)
  except TypeError:  # e.g. a list-valued kwarg: traced every time
    return _cached_spec_shapes.__wrapped__(name, frozen, tuple(input_shape))
  return _cached_spec_shapes(name, frozen, tuple(input_shape))


def _is_directory(source) -> bool:
  return not isinstance(source, Mapping) and os.path.isdir(os.fspath(source))


def _checkpoint_directory(path: str) -> tuple[dict, Any, dict]:
  """(metadata, module, variables) of a converted checkpoint; any other directory is refused."""
  if not os.path.isfile(os.path.join(path, METADATA_FILE)):
    raise directory_error(path, checkpoints_too=True)
  meta = checkpoint_metadata(path)
  model, variables = load_checkpoint(path)
  return meta, model, variables


def _backbone_state_dict(source) -> tuple[dict, str]:
  """(state dict in a backbone's PyTorch layout, its description) from a file, dict or directory.

  A converted checkpoint directory is exported back to its backbone's PyTorch layout, so that it
  goes through exactly the checks a file does.
  """
  if not _is_directory(source):
    return load_state_dict(source), _source_name(source)
  path = os.fspath(source)
  meta, model, variables = _checkpoint_directory(path)
  if meta['kind'] == 'backbone':
    return to_torch(meta['name'], variables), f'{path} (converted {meta["name"]} backbone)'
  params = variables.get('params', {})
  if not hasattr(model, 'backbone_spec') or 'backbone' not in params:
    raise ValueError(
      f'{path} is a converted checkpoint of model {meta["name"]!r}, which has no ImageNet '
      'backbone (no backbone_spec() / params["backbone"]) to take backbone weights from.'
    )
  name, _ = model.backbone_spec()
  backbone = {'params': params['backbone']}
  stats = (variables.get('batch_stats') or {}).get('backbone')
  if stats:
    backbone['batch_stats'] = stats
  return to_torch(name, backbone), f'{path} (backbone of converted {meta["name"]})'


def _model_state_dict(source, model_name: str) -> tuple[dict, str]:
  """(state dict in `model_name`'s PyTorch layout, its description) from a file, dict or directory."""
  if not _is_directory(source):
    return load_state_dict(source), _source_name(source)
  path = os.fspath(source)
  meta, _, variables = _checkpoint_directory(path)
  if meta['kind'] != 'model' or meta['name'] != model_name:
    hint = ' (use it as backbone weights: init_backbone)' if meta['kind'] == 'backbone' else ''
    raise ValueError(
      f'{path} is a converted checkpoint of {meta["kind"]} {meta["name"]!r}, not of model '
      f'{model_name!r}{hint}.'
    )
  return to_torch(model_name, variables), f'{path} (converted {model_name})'


def init_backbone(model, variables: Mapping, path_or_state_dict) -> tuple[dict, LoadReport]:
  """Initialises the model's backbone from an ImageNet checkpoint in the backbone's PyTorch layout.

  Args:
    model: a model with a `backbone` submodule and `backbone_spec()` returning
      `(registered_backbone_name, kwargs)`.
    variables: the model's freshly initialised variables (`model.init(...)`).
    path_or_state_dict: .pth/.pt (read with torch.load(weights_only=True)),
      .safetensors or .npz file, or a state dict, in the backbone's layout
      (e.g. torchvision's vgg16 / resnet50 ImageNet checkpoints); or a
      converted checkpoint directory (`save_checkpoint`, `jaxseg convert`) of
      the backbone or of a model built on it.

  Returns:
    `(variables, report)`: a copy of `variables` whose `params['backbone']` and
    `batch_stats['backbone']` come from the checkpoint, everything else
    unchanged; `report.omitted` names the checkpoint's layers this backbone
    variant leaves out by design (`get_layout(name).omitted_layers(kwargs)`),
    `report.ignored` their keys (and num_batches_tracked counters).

  Raises:
    WeightsError: a checkpoint key that fits no variable and belongs to no
      omitted layer, a missing key or a shape mismatch (all of them listed).
  """
  if not hasattr(model, 'backbone_spec'):
    raise ValueError(
      f'{type(model).__name__} has no backbone_spec(): it does not declare an ImageNet backbone, '
      'so backbone weights cannot be loaded into it.'
    )
  name, kwargs = model.backbone_spec()
  layout = get_layout(name)
  if layout.kind != 'backbone':
    raise ValueError(
      f'backbone_spec() names {name!r}, which is a model layout, not a backbone one.'
    )
  variables = flax.core.unfreeze(variables)
  if 'backbone' not in variables.get('params', {}):
    raise ValueError(
      f"variables['params'] has no 'backbone' entry (found {sorted(variables.get('params', {}))}); "
      'the backbone submodule must be named `backbone`.'
    )
  target = {'params': variables['params']['backbone']}
  stats = variables.get('batch_stats', {}).get('backbone')
  if stats:
    target['batch_stats'] = stats

  # jaxseg's models build their backbone from backbone_spec() (registry.build_backbone); a model
  # that builds it otherwise must still match it variable for variable.
  want = _spec_shapes(name, kwargs, layout.input_shape)
  have = {p: tuple(v.shape) for p, v in _flat(target).items()}
  if want != have:
    diff = sorted(set(want.items()) ^ set(have.items()))[:10]
    raise ValueError(
      f'{type(model).__name__}.backbone_spec() = ({name!r}, {kwargs}) does not build the variables '
      f"under params['backbone']; first differences (path, shape): {diff}"
    )

  sd, source = _backbone_state_dict(path_or_state_dict)
  omitted = layout.omitted_layers(kwargs)
  loaded = convert_state_dict(sd, target, layout, f'backbone {name!r} {kwargs}', omitted)
  used, ignored, present = _account(sd, target, layout, omitted)
  flat_new = _flat(loaded)
  out = _flat(variables)
  for (collection, *rest), arr in flat_new.items():
    path = (collection, 'backbone', *rest)
    out[path] = _place_like(arr, out[path])
  report = LoadReport(
    source=source,
    target=f'{type(model).__name__}.backbone ({name})',
    loaded=used,
    ignored=ignored,
    omitted=present,
  )
  log.info('%s', report)
  return flax.traverse_util.unflatten_dict(out), report


def load_pretrained(
  model_name: str, variables: Mapping, path, num_classes: int, **model_kwargs
) -> tuple[dict, LoadReport]:
  """Loads a full-model checkpoint, re-initialising a classifier trained for another class count.

  Args:
    model_name: registered model name with a PyTorch layout (e.g. 'fcn8s').
    variables: freshly initialised variables of `create_model(model_name,
      num_classes=num_classes, **model_kwargs)`; the re-initialised variables
      keep these values.
    path: .pth/.safetensors/.npz file or a state dict in the model's layout, or
      a converted checkpoint directory of `model_name`.
    num_classes: the class count the model is trained for.
    **model_kwargs: the other arguments the model was built with.

  Returns:
    `(variables, report)`; `report.reinitialized` names each re-initialised
    PyTorch key with the checkpoint's and the model's shapes.

  Raises:
    WeightsError: any missing, unused or mis-shaped key other than the
      class-count-dependent ones.
  """
  from jaxseg.registry import create_model

  layout = get_layout(model_name)
  if layout.kind != 'model':
    raise ValueError(f'{model_name!r} is a backbone; use init_backbone for backbone checkpoints.')
  sd, source = _model_state_dict(path, model_name)
  ckpt_classes = num_classes
  key = layout.num_classes_key
  if key is not None and key in sd and np.ndim(sd[key]) >= 1:
    ckpt_classes = int(np.shape(sd[key])[0])
  mine = _flat(
    target_shapes(
      create_model(model_name, num_classes=num_classes, **model_kwargs), layout.input_shape
    )
  )
  variables = flax.core.unfreeze(variables)
  have = _flat(variables)
  if {p: tuple(v.shape) for p, v in mine.items()} != {p: tuple(v.shape) for p, v in have.items()}:
    raise ValueError(
      f'variables do not belong to {model_name!r} with num_classes={num_classes} and {model_kwargs}.'
    )
  theirs_tree = target_shapes(
    create_model(model_name, num_classes=ckpt_classes, **model_kwargs), layout.input_shape
  )
  theirs = _flat(theirs_tree)
  if set(theirs) != set(mine):
    raise ValueError(
      f'{model_name!r} has different variables for {ckpt_classes} and {num_classes} classes; '
      'a checkpoint for another class count cannot be adapted.'
    )
  # Strict check of the whole checkpoint against the model it was trained as.
  loaded = _flat(
    convert_state_dict(sd, theirs_tree, layout, f'{model_name} ({ckpt_classes} classes)')
  )
  keymap = flat_key_map(theirs_tree, layout.key_fn)
  reinit, out = [], {}
  for var, old in have.items():
    if tuple(theirs[var].shape) != tuple(old.shape):
      reinit.append(
        f'{keymap[var]}: checkpoint {_torch_shape(tuple(theirs[var].shape))} -> model {_torch_shape(tuple(old.shape))}'
      )
      out[var] = old
    else:
      out[var] = _place_like(loaded[var], old)
  used, ignored, _ = _account(sd, theirs_tree, layout)
  report = LoadReport(
    source=source,
    target=f'{model_name} ({num_classes} classes)',
    loaded=tuple(k for k in used if not any(r.startswith(k + ':') for r in reinit)),
    reinitialized=tuple(sorted(reinit)),
    ignored=ignored,
  )
  if reinit:
    log.warning(
      'checkpoint classifier has %d classes, model %d: re-initialised %s',
      ckpt_classes,
      num_classes,
      ', '.join(r.split(':')[0] for r in report.reinitialized),
    )
  log.info('%s', report)
  return flax.traverse_util.unflatten_dict(out), report


def _jsonable(kwargs: Mapping) -> dict:
  try:
    json.dumps(dict(kwargs))
  except TypeError as e:
    raise ValueError(
      f'model kwargs must be JSON-serialisable to be saved with a checkpoint: {e}'
    ) from e
  return dict(kwargs)


def save_checkpoint(
  directory,
  name: str,
  variables: Mapping,
  *,
  num_classes: int | None = None,
  model_kwargs: Mapping | None = None,
  source: str = '',
  normalize: str = 'imagenet',
  overwrite: bool = False,
) -> str:
  """Writes `variables` of registered model (or backbone) `name` as a converted checkpoint.

  Layout: `directory/state` (orbax StandardSave of {'params', 'batch_stats'})
  and `directory/jaxseg.json`. Everything is written into a temporary sibling
  directory first and renamed into place, so `directory` is either absent,
  the previous checkpoint (with overwrite) or complete.

  Args:
    directory: output directory (must not exist unless overwrite=True).
    name: registered model or backbone name.
    variables: {'params': ..., 'batch_stats': ...} (batch_stats may be absent).
    num_classes: for models; None for backbones.
    model_kwargs: JSON-serialisable constructor arguments besides num_classes.
    source: where the weights came from (recorded only).
    normalize: input normalisation the weights expect ('imagenet' or 'caffe').
    overwrite: replace an existing checkpoint.

  Returns:
    The absolute path of the checkpoint directory.
  """
  import orbax.checkpoint as ocp

  if normalize not in ('imagenet', 'caffe'):
    raise ValueError(f"normalize must be 'imagenet' or 'caffe', got {normalize!r}")
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f'{directory} exists; pass overwrite=True (--overwrite) to replace it.')
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f'.{os.path.basename(directory)}.tmp-{uuid.uuid4().hex[:8]}')
  variables = flax.core.unfreeze(variables)
  state = {'params': variables['params'], 'batch_stats': variables.get('batch_stats') or {}}
  meta = {
    'format': FORMAT,
    'version': 1,
    'kind': 'model' if num_classes is not None else 'backbone',
    'name': name,
    'num_classes': num_classes,
    'model_kwargs': _jsonable(model_kwargs or {}),
    'has_batch_stats': bool(state['batch_stats']),
    'source': source,
    'normalize': normalize,
  }
  if not state['batch_stats']:
    del state['batch_stats']  # orbax cannot store an empty subtree
  try:
    os.makedirs(tmp)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, STATE_DIR), state)
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
    if os.path.exists(directory):
      trash = f'{tmp}.old'
      os.rename(directory, trash)
      os.rename(tmp, directory)
      shutil.rmtree(trash)
    else:
      os.rename(tmp, directory)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return directory


def checkpoint_metadata(directory) -> dict:
  """The JSON sidecar of a converted checkpoint (name, kind, num_classes, model_kwargs, normalize, ...)."""
  path = os.path.join(os.fspath(directory), METADATA_FILE)
  if os.path.isfile(os.fspath(directory)):
    raise ValueError(
      f'{directory} is a file, but a converted checkpoint directory (with {METADATA_FILE}) is '
      'expected; convert a PyTorch file first with `jaxseg convert`.'
    )
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'{path} not found: {directory} is not a jaxseg converted checkpoint '
      '(write one with `jaxseg convert`).'
    )
  try:
    with open(path, encoding='utf-8') as f:
      meta = json.load(f)
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    raise ValueError(
      f'{path} is not a jaxseg checkpoint sidecar: it is not valid JSON ({e}).'
    ) from None
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    found = meta.get('format') if isinstance(meta, dict) else type(meta).__name__
    raise ValueError(f'{path}: unknown checkpoint format {found!r}')
  return meta


def build_from_metadata(meta: Mapping) -> Any:
  from jaxseg.registry import create_backbone, create_model

  if meta['kind'] == 'backbone':
    return create_backbone(meta['name'], **meta['model_kwargs'])
  return create_model(meta['name'], num_classes=meta['num_classes'], **meta['model_kwargs'])


def load_checkpoint(directory) -> tuple[Any, dict]:
  """Reads a checkpoint written by `save_checkpoint` / `jaxseg convert`.

  Returns:
    `(model, variables)`: the module built from the sidecar's name and kwargs
    and `{'params', 'batch_stats'}` ready for `model.apply(variables, x, train=False)`.
  """
  import orbax.checkpoint as ocp

  meta = checkpoint_metadata(directory)
  model = build_from_metadata(meta)
  # The variable shapes do not depend on the input size; the layout's example
  # input (or a 224x224 image) is only traced, never computed.
  try:
    input_shape = get_layout(meta['name']).input_shape
  except ValueError:
    input_shape = (1, 224, 224, 3)
  abstract = dict(flax.core.unfreeze(target_shapes(model, input_shape)))
  abstract.setdefault('batch_stats', {})
  if not meta.get('has_batch_stats', True) or not abstract['batch_stats']:
    abstract.pop('batch_stats')
  abstract = {k: v for k, v in abstract.items() if k in ('params', 'batch_stats')}
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(os.path.abspath(os.fspath(directory)), STATE_DIR), abstract)
  state = dict(state)
  state.setdefault('batch_stats', {})
  return model, state
