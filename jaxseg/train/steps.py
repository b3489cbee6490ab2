"""The train state, the pure train/eval/predict steps, and their jit or pmap wrapper.

* The state's `apply_fn` is a `layers.Apply`: the model with the convolution
  lowering of `config.train.conv_lowering` ('auto': `jaxseg.cpu_conv` on the
  CPU backend, plain XLA elsewhere) and, under pmap, every BatchNorm
  synchronised over the pmap axis. It is hashable, so jit keys its caches on it.
* `train_step` / `eval_step` are pure module-level functions. `Parallel` runs
  them either in one `jax.jit` over a device Mesh (default: batch sharded on
  the 'data' axis, state replicated, BatchNorm statistics over the global
  batch, i.e. SyncBN by construction) or in `jax.pmap`. The loss is the mean
  over the valid pixels of the *global* batch in both, so both modes give the
  same parameters.
* Labels made inside jit cannot be checked on the host: `train_step`'s metrics
  and `eval_metrics` count the label pixels outside [0, num_classes) that are
  not ignore_index (the loss is NaN there and the confusion matrix skips them).
* The jitted steps compile with the recipe's `train.xla_cpu_compiler_options`
  (`cpu_conv.compiler_options`: on the CPU backend only); the state is donated
  to the train step.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxseg
from jaxseg import cpu_conv, layers, losses, metrics, ops
from jaxseg.train import optim

Array = jax.Array

# The pmap axis: BatchNorm statistics and losses are reduced over it.
PMAP_AXIS = 'batch'


class TrainState(train_state.TrainState):
  """Flax TrainState plus the BatchNorm running statistics."""

  batch_stats: Any = None


# ----------------------------------------------------------------------------- model and state


def model_kwargs(config) -> dict:
  """config.model.kwargs plus the computation dtype from config.train.dtype."""
  kwargs = dict(config.model.get('kwargs', {}) or {})
  dtype = config.train.get('dtype', 'float32')
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.train.dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  if dtype == 'bfloat16':
    kwargs['dtype'] = jnp.bfloat16
  return kwargs


def _resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  # A config that leaves the class count (or class weights) to the dataset gets them filled in.
  if int(config.dataset.num_classes) <= 0 or config.train.get('class_weighting', ''):
    from jaxseg import data

    data.resolve_config(config)
  return config


def build_model(config: ml_collections.ConfigDict, *, evaluation: bool = False):
  """The model named by config.model, with the computation dtype of config.train.dtype.

  `evaluation=True` applies config.eval.model_kwargs on top of config.model.kwargs:
  settings that change how the trained parameters are run, not what they are
  (DeepLabv3 evaluates at output stride 8 what it trained at 16).
  """
  _resolved(config)
  kwargs = model_kwargs(config)
  if evaluation:
    kwargs.update(dict(config.eval.get('model_kwargs', {}) or {}))
  try:
    return jaxseg.create_model(config.model.name, num_classes=config.dataset.num_classes, **kwargs)
  except TypeError as e:
    raise TypeError(
      f'config.model.kwargs {sorted(kwargs)} do not fit model {config.model.name!r}: {e}'
    ) from e


def make_apply(config, model, *, batch_axis: str | None = None) -> layers.Apply:
  """`model.apply` with the convolution lowering of config.train.conv_lowering.

  Configs stored with older checkpoints have no `conv_lowering`: 'auto'.
  `batch_axis` synchronises BatchNorm statistics over a pmap axis.
  """
  lowering = cpu_conv.select(config.train.get('conv_lowering', 'auto'))
  return layers.Apply(model, lowering=lowering, batch_axis=batch_axis)


def compiler_options(config) -> dict | None:
  """XLA compile options for the jitted steps (config.train.xla_cpu_compiler_options, CPU only)."""
  return cpu_conv.compiler_options(config.train.get('xla_cpu_compiler_options', None))


def init_variables(model, rng, input_shape) -> dict:
  x = jnp.zeros(input_shape, jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, x, train=False)
  return dict(flax.core.unfreeze(variables))


def create_train_state(config, model, rng, input_shape, variables=None) -> TrainState:
  """Fresh TrainState (params initialised from rng unless `variables` are given).

  Its `apply_fn` runs the model as `config.train.parallelism` needs it
  (BatchNorm synchronised over `PMAP_AXIS` under pmap).
  """
  if variables is None:
    variables = init_variables(model, rng, input_shape)
  params = variables['params']
  pmap = config.train.get('parallelism', 'jit') == 'pmap'
  return TrainState.create(
    apply_fn=make_apply(config, model, batch_axis=PMAP_AXIS if pmap else None),
    params=params,
    tx=optim.make_optimizer(config, params),
    batch_stats=variables.get('batch_stats', {}),
  )


def abstract_train_state(config, model, input_shape=None) -> TrainState:
  """Shapes and dtypes of `create_train_state` (no computation), e.g. to restore into."""
  if input_shape is None:
    h, w = (int(s) for s in config.dataset.crop_size)
    input_shape = (1, h, w, int(config.dataset.get('in_channels', 3)))
  shape = tuple(input_shape)
  return jax.eval_shape(lambda: create_train_state(config, model, jax.random.key(0), shape))


# ----------------------------------------------------------------------------- steps


@flax.struct.dataclass
class StepConfig:
  """The static, hashable part of the config a step needs."""

  num_classes: int = flax.struct.field(pytree_node=False)
  ignore_index: int = flax.struct.field(pytree_node=False, default=255)
  aux_loss_weight: float = flax.struct.field(pytree_node=False, default=0.4)
  skip_nonfinite: bool = flax.struct.field(pytree_node=False, default=False)
  axis_name: str | None = flax.struct.field(pytree_node=False, default=None)
  class_weights: tuple | None = flax.struct.field(pytree_node=False, default=None)


def step_config(config) -> StepConfig:
  _resolved(config)
  cw = tuple(float(w) for w in config.train.get('class_weights', ()) or ()) or None
  if cw is not None and len(cw) != config.dataset.num_classes:
    raise ValueError(
      f'config.train.class_weights has {len(cw)} entries, expected '
      f'num_classes={config.dataset.num_classes}.'
    )
  return StepConfig(
    num_classes=int(config.dataset.num_classes),
    ignore_index=int(config.dataset.ignore_index),
    aux_loss_weight=float(config.train.get('aux_loss_weight', 0.4)),
    skip_nonfinite=bool(config.train.get('skip_nonfinite', False)),
    class_weights=cw,
  )


def _labels_for(logits: Array, labels: Array) -> Array:
  """The labels' central region of the logits' size (the valid U-Net predicts a smaller map)."""
  size, label_size = logits.shape[1:3], labels.shape[1:3]
  if size[0] > label_size[0] or size[1] > label_size[1]:
    raise ValueError(f'model output {size} is larger than the labels {label_size}.')
  return ops.center_crop(labels[..., None], size)[..., 0]


def _split_outputs(outputs) -> tuple[Array, dict]:
  if isinstance(outputs, dict):
    return outputs['out'], {k: v for k, v in outputs.items() if k != 'out'}
  return outputs, {}


def _loss_terms(logits, labels, cfg: StepConfig):
  return losses.cross_entropy_sum(
    logits,
    _labels_for(logits, labels),
    ignore_index=cfg.ignore_index,
    class_weights=cfg.class_weights,
  )


def train_step(state: TrainState, batch: dict, rng: Array, *, cfg: StepConfig):
  """One optimiser step on `batch` ({'image', 'label'}); returns (new state, scalar metrics).

  Under pmap (`cfg.axis_name` set) losses are summed over devices before the
  division, so the loss is the global-batch mean exactly as under jit.
  """
  rng = jax.random.fold_in(rng, state.step)
  if cfg.axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(cfg.axis_name))

  def global_sum(x):
    return jax.lax.psum(x, cfg.axis_name) if cfg.axis_name is not None else x

  def mean_loss(logits, labels):
    total, weight = _loss_terms(logits, labels, cfg)
    return losses.safe_divide(total, jax.lax.stop_gradient(global_sum(weight)))

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    outputs, new_model_state = state.apply_fn(
      variables, batch['image'], train=True, mutable=['batch_stats'], rngs={'dropout': rng}
    )
    logits, aux = _split_outputs(outputs)
    loss = mean_loss(logits, batch['label'])
    for aux_logits in aux.values():
      loss = loss + cfg.aux_loss_weight * mean_loss(aux_logits, batch['label'])
    return loss, (new_model_state, logits)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (new_model_state, logits)), grads = grad_fn(state.params)
  if cfg.axis_name is not None:
    # Each device's loss is its share of the global mean: the gradient of the sum is the sum.
    grads = jax.lax.psum(grads, cfg.axis_name)
    loss = jax.lax.psum(loss, cfg.axis_name)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state.get('batch_stats', {}))
  if cfg.skip_nonfinite:
    # Keep the old parameters/statistics but advance the step (and the data).
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = new_state.replace(
      params=jax.tree.map(keep, new_state.params, state.params),
      opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
      batch_stats=jax.tree.map(keep, new_state.batch_stats, state.batch_stats),
    )
  labels = _labels_for(logits, batch['label'])
  valid = labels != cfg.ignore_index
  correct = global_sum(jnp.sum((jnp.argmax(logits, -1) == labels) & valid))
  n_valid = global_sum(jnp.sum(valid))
  out = {
    'loss': loss,
    'grad_norm': grad_norm,
    'pixel_acc': correct / jnp.maximum(n_valid, 1),
    'finite': finite,
    # Labels made inside jit escape the host check: the loop stops on a non-zero count.
    'invalid_labels': global_sum(
      metrics.count_invalid_labels(labels, cfg.num_classes, cfg.ignore_index)
    ),
  }
  return new_state, out


def eval_metrics(state: TrainState, batch: dict, *, cfg: StepConfig) -> dict:
  """`eval_step`'s confusion matrix and the number of label pixels it left out as out of range.

  Returns {'confusion': (num_classes, num_classes) int32, 'invalid_labels':
  int32 count of labels outside [0, num_classes) that are not ignore_index}.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = state.apply_fn(variables, batch['image'], train=False)
  labels = _labels_for(logits, batch['label'])
  if 'mask' in batch:
    labels = jnp.where(batch['mask'][:, None, None], labels, cfg.ignore_index)
  preds = jnp.argmax(logits, axis=-1)
  return {
    'confusion': metrics.confusion_matrix(labels, preds, cfg.num_classes, cfg.ignore_index),
    'invalid_labels': metrics.count_invalid_labels(labels, cfg.num_classes, cfg.ignore_index),
  }


def eval_step(state: TrainState, batch: dict, *, cfg: StepConfig) -> Array:
  """Confusion matrix (int32, num_classes^2) of one batch; padded examples (mask False) are ignored."""
  return eval_metrics(state, batch, cfg=cfg)['confusion']


def predict_step(apply_fn, variables, images: Array) -> Array:
  """Class ids (N, H', W') of normalised images; `apply_fn` is static (a `layers.Apply`)."""
  return jnp.argmax(apply_fn(variables, images, train=False), axis=-1)


# ----------------------------------------------------------------------------- parallel wrapper


# What jax.monitoring records once per XLA program compiled (or read from the persistent cache).
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


class CompileCounter:
  """Counts the XLA programs compiled by this thread while the context is active.

  Uses `jax.monitoring`'s backend-compile event; a call that hits jit's cache
  compiles nothing.
  """

  def __init__(self):
    self.count = 0
    self._thread = None

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == BACKEND_COMPILE_EVENT and threading.get_ident() == self._thread:
      self.count += 1

  def __enter__(self):
    self._thread = threading.get_ident()
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listener)
    self._thread = None


class Parallel:
  """Places states and batches and runs the steps for config.train.parallelism ('jit' or 'pmap').

  Attributes:
    mode: 'jit' or 'pmap'.
    num_devices: devices the batch is split over (local ones under pmap).
  """

  def __init__(self, mode: str, cfg: StepConfig, compiler_options: dict | None = None):
    """`compiler_options` go to every jit (`jax.pmap` takes none: XLA's defaults there)."""
    if mode not in ('jit', 'pmap'):
      raise ValueError(f"config.train.parallelism must be 'jit' or 'pmap', got {mode!r}.")
    self.mode = mode
    self.devices = jax.local_devices() if mode == 'pmap' else jax.devices()
    self.num_devices = len(self.devices)
    self._train_compiles = CompileCounter()
    # Predictions for one host-side image (the logged eval image): no sharding.
    self._predict = jax.jit(predict_step, static_argnums=(0,), compiler_options=compiler_options)
    if mode == 'jit':
      self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
      self.replicated = NamedSharding(self.mesh, P())
      self.data_sharding = NamedSharding(self.mesh, P('data'))
      self._train = jax.jit(
        functools.partial(train_step, cfg=cfg),
        donate_argnums=(0,),
        out_shardings=(self.replicated, self.replicated),
        compiler_options=compiler_options,
      )
      self._eval = jax.jit(
        functools.partial(eval_metrics, cfg=cfg),
        out_shardings=self.replicated,
        compiler_options=compiler_options,
      )
    else:
      pcfg = cfg.replace(axis_name=PMAP_AXIS)

      def pmapped_eval(state, batch):
        return jax.lax.psum(eval_metrics(state, batch, cfg=cfg), PMAP_AXIS)

      self._train = jax.pmap(
        functools.partial(train_step, cfg=pcfg),
        axis_name=PMAP_AXIS,
        donate_argnums=(0,),
        in_axes=(0, 0, None),
      )
      self._eval = jax.pmap(pmapped_eval, axis_name=PMAP_AXIS)

  def check_batch_size(self, global_batch: int, what: str) -> None:
    n = self.num_devices * (jax.process_count() if self.mode == 'pmap' else 1)
    if global_batch % n:
      raise ValueError(f'{what} {global_batch} must be divisible by the number of devices ({n}).')

  def put_state(self, state: TrainState) -> TrainState:
    if self.mode == 'jit':
      # A copy so that donation never deletes the caller's (host-side) arrays.
      return jax.device_put(jax.tree.map(jnp.array, state), self.replicated)
    if getattr(state.apply_fn, 'batch_axis', None) != PMAP_AXIS:
      raise ValueError(
        f'under pmap the state needs an apply_fn that synchronises BatchNorm over '
        f"{PMAP_AXIS!r}: create it with config.train.parallelism = 'pmap'."
      )
    # Placed as pmap places its outputs (a mesh over PMAP_AXIS), so step 2 reuses step 1's program.
    return flax.jax_utils.replicate(state, self.devices, axis_name=PMAP_AXIS)

  def get_state(self, state: TrainState) -> TrainState:
    """Host copy of the (replicated) state, e.g. for saving."""
    if self.mode == 'pmap':
      state = flax.jax_utils.unreplicate(state)
    return jax.device_get(state)

  def put_batch(self, batch: dict) -> dict:
    if self.mode == 'jit':
      sharding = self.data_sharding
      return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
      }
    n = self.num_devices
    # pmap shards a host array along its leading axis: (n, B / n, ...).
    return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in batch.items()}

  def train(self, state, batch, rng):
    with self._train_compiles:
      return self._train(state, batch, rng)

  def num_train_executables(self) -> int:
    """XLA programs compiled for the train step so far (1 with static shapes)."""
    return self._train_compiles.count

  def eval(self, state, batch) -> Array:
    """The confusion matrix of one batch (`eval_step`)."""
    return self.eval_metrics(state, batch)['confusion']

  def eval_metrics(self, state, batch) -> dict:
    """`eval_metrics` of one batch, on the device: confusion matrix and invalid-label count."""
    out = self._eval(state, batch)
    return jax.tree.map(lambda x: x[0], out) if self.mode == 'pmap' else out

  def predict(self, host_state: TrainState, images) -> np.ndarray:
    """Class ids for a host-side batch of normalised images (the state's model, eval mode)."""
    variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
    return np.asarray(self._predict(host_state.apply_fn, variables, images))

  def to_host(self, tree):
    """NumPy copy of step outputs (under pmap the first device's: they are all equal)."""
    tree = jax.device_get(tree)
    return jax.tree.map(lambda x: x[0], tree) if self.mode == 'pmap' else tree

  def scalar(self, x) -> float:
    return float(self.to_host(x))
