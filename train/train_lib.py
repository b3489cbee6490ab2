"""Training and evaluation for every jaxseg model: state, pure steps, the loop.

* `train_step` / `eval_step` are pure module-level functions; the loop wraps
  them either in one `jax.jit` over a device Mesh (default: batch sharded on
  the 'data' axis, state replicated, BatchNorm statistics over the global
  batch, i.e. SyncBN) or in `jax.pmap` (classic; BatchNorm synchronised with
  `layers.sync_batch_stats`). The loss is the mean over the valid pixels of
  the *global* batch in both, so both paths give the same parameters.
* mIoU comes only from one confusion matrix accumulated over the whole split.
* The state is donated to the step; shapes come from `jax.eval_shape`.
* Checkpoints (train/checkpointing.py) hold the state, the data iterator
  position and metadata; a killed run resumes from the last complete one.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
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
from jaxseg import layers, losses, metrics
from train import checkpointing, logging_lib

Array = jax.Array


class TrainState(train_state.TrainState):
  """Flax TrainState plus the BatchNorm running statistics."""

  batch_stats: Any = None


class NonFiniteLossError(FloatingPointError):
  """Raised when a step produced a NaN/inf loss or gradient (the last good checkpoint is kept)."""


# ----------------------------------------------------------------------------- model / optimiser


def _model_kwargs(config) -> dict:
  """config.model.kwargs plus the computation dtype from config.train.dtype."""
  kwargs = dict(config.model.get('kwargs', {}) or {})
  dtype = config.train.get('dtype', 'float32')
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.train.dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  if dtype == 'bfloat16':
    kwargs['dtype'] = jnp.bfloat16
  return kwargs


def build_model(config: ml_collections.ConfigDict):
  """The model named by config.model, with the computation dtype of config.train.dtype."""
  kwargs = _model_kwargs(config)
  try:
    return jaxseg.create_model(config.model.name, num_classes=config.dataset.num_classes, **kwargs)
  except TypeError as e:
    raise TypeError(f'config.model.kwargs {sorted(kwargs)} do not fit model {config.model.name!r}: {e}') from e


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """poly / cosine / step / constant learning rate with optional linear warmup (in optimiser updates)."""
  o, total = config.optim, int(config.train.num_steps)
  lr, warmup = float(o.lr), int(o.get('warmup_steps', 0))
  decay_steps = max(total - warmup, 1)
  name = o.get('schedule', 'poly')
  if name == 'poly':
    main = optax.polynomial_schedule(lr, 0.0, power=float(o.get('power', 0.9)), transition_steps=decay_steps)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif name == 'step':
    bounds = {int(f * total) - warmup: float(o.get('step_factor', 0.1)) for f in o.get('step_boundaries', ())}
    main = optax.piecewise_constant_schedule(lr, bounds)
  elif name == 'constant':
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"config.optim.schedule must be 'poly', 'cosine', 'step' or 'constant', got {name!r}.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _base_optimizer(config, schedule) -> optax.GradientTransformation:
  o = config.optim
  name, wd = o.get('name', 'sgd'), float(o.get('weight_decay', 0.0))
  if name == 'sgd':
    # Coupled L2 decay as in Caffe / torch.optim.SGD(weight_decay=...).
    opt = optax.sgd(schedule, momentum=float(o.get('momentum', 0.9)) or None, nesterov=bool(o.get('nesterov', False)))
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  if name == 'adam':
    opt = optax.adam(schedule)
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=wd)
  raise ValueError(f"config.optim.name must be 'sgd', 'adam' or 'adamw', got {name!r}.")


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """Optimiser with schedule, optional head LR multiplier, clipping and gradient accumulation.

  With `optim.head_lr_mult != 1` every parameter outside the `backbone`
  submodule trains at `lr * head_lr_mult` (DeepLab's 10x classifier).
  """
  schedule = make_schedule(config)
  mult = float(config.optim.get('head_lr_mult', 1.0))
  if mult != 1.0 and 'backbone' in params:
    head = lambda step: schedule(step) * mult
    labels = {k: ('base' if k == 'backbone' else 'head') for k in params}
    opt = optax.multi_transform(
      {'base': _base_optimizer(config, schedule), 'head': _base_optimizer(config, head)}, labels
    )
  else:
    opt = _base_optimizer(config, schedule)
  clip = float(config.optim.get('grad_clip_norm', 0.0))
  if clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(clip), opt)
  k = int(config.train.get('grad_accum_steps', 1))
  if k > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=k)
  return opt


def init_variables(model, rng, input_shape) -> dict:
  variables = model.init({'params': rng, 'dropout': rng}, jnp.zeros(input_shape, jnp.float32), train=False)
  return dict(flax.core.unfreeze(variables))


def create_train_state(config, model, rng, input_shape, variables=None) -> TrainState:
  """Fresh TrainState (params initialised from rng unless `variables` are given)."""
  if variables is None:
    variables = init_variables(model, rng, input_shape)
  params = variables['params']
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=make_optimizer(config, params),
    batch_stats=variables.get('batch_stats', {}),
  )


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
  cw = tuple(float(w) for w in config.train.get('class_weights', ()) or ()) or None
  if cw is not None and len(cw) != config.dataset.num_classes:
    raise ValueError(
      f'config.train.class_weights has {len(cw)} entries, expected num_classes={config.dataset.num_classes}.'
    )
  return StepConfig(
    num_classes=int(config.dataset.num_classes),
    ignore_index=int(config.dataset.ignore_index),
    aux_loss_weight=float(config.train.get('aux_loss_weight', 0.4)),
    skip_nonfinite=bool(config.train.get('skip_nonfinite', False)),
    class_weights=cw,
  )


def _match_labels(logits: Array, labels: Array) -> Array:
  """Center-crops labels to the logits' size (the valid-convolution U-Net predicts a smaller map)."""
  lh, lw = labels.shape[1:3]
  h, w = logits.shape[1:3]
  if (h, w) == (lh, lw):
    return labels
  if h > lh or w > lw:
    raise ValueError(f'model output {(h, w)} is larger than the labels {(lh, lw)}.')
  top, left = (lh - h) // 2, (lw - w) // 2
  return labels[:, top : top + h, left : left + w]


def _split_outputs(outputs) -> tuple[Array, dict]:
  if isinstance(outputs, dict):
    return outputs['out'], {k: v for k, v in outputs.items() if k != 'out'}
  return outputs, {}


def _loss_terms(logits, labels, cfg: StepConfig):
  labels = _match_labels(logits, labels)
  return losses.cross_entropy_sum(logits, labels, ignore_index=cfg.ignore_index, class_weights=cfg.class_weights)


def train_step(state: TrainState, batch: dict, rng: Array, *, cfg: StepConfig) -> tuple[TrainState, dict]:
  """One optimiser step on `batch` ({'image', 'label'}); returns the new state and scalar metrics.

  Under pmap (`cfg.axis_name` set) losses are summed over devices before the
  division, so the loss is the global-batch mean exactly as under jit.
  """
  rng = jax.random.fold_in(rng, state.step)
  if cfg.axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(cfg.axis_name))

  def global_sum(x):
    return jax.lax.psum(x, cfg.axis_name) if cfg.axis_name is not None else x

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    outputs, new_model_state = state.apply_fn(
      variables, batch['image'], train=True, mutable=['batch_stats'], rngs={'dropout': rng}
    )
    logits, aux = _split_outputs(outputs)
    total, weight = _loss_terms(logits, batch['label'], cfg)
    weight = jax.lax.stop_gradient(global_sum(weight))
    loss = losses.safe_divide(total, weight)
    for aux_logits in aux.values():
      aux_total, aux_weight = _loss_terms(aux_logits, batch['label'], cfg)
      loss = loss + cfg.aux_loss_weight * losses.safe_divide(aux_total, jax.lax.stop_gradient(global_sum(aux_weight)))
    return loss, (new_model_state, logits)

  (loss, (new_model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
  labels = _match_labels(logits, batch['label'])
  valid = labels != cfg.ignore_index
  correct = global_sum(jnp.sum((jnp.argmax(logits, -1) == labels) & valid))
  n_valid = global_sum(jnp.sum(valid))
  out = {
    'loss': loss,
    'grad_norm': grad_norm,
    'pixel_acc': correct / jnp.maximum(n_valid, 1),
    'finite': finite,
  }
  return new_state, out


def eval_step(state: TrainState, batch: dict, *, cfg: StepConfig) -> Array:
  """Confusion matrix (int32, num_classes^2) of one batch; padded examples (mask False) are ignored."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = state.apply_fn(variables, batch['image'], train=False)
  labels = _match_labels(logits, batch['label'])
  if 'mask' in batch:
    labels = jnp.where(batch['mask'][:, None, None], labels, cfg.ignore_index)
  preds = jnp.argmax(logits, axis=-1)
  return metrics.confusion_matrix(labels, preds, cfg.num_classes, cfg.ignore_index)


# ----------------------------------------------------------------------------- parallel wrappers


class Parallel:
  """Places batches and runs the steps for config.train.parallelism ('jit' or 'pmap')."""

  def __init__(self, mode: str, cfg: StepConfig, compiler_options: dict | None = None):
    """`compiler_options`: XLA compile options for the jitted steps (`layers.cpu_compiler_options`
    of the model); `jax.pmap` takes none, so the pmap mode compiles with XLA's defaults."""
    if mode not in ('jit', 'pmap'):
      raise ValueError(f"config.train.parallelism must be 'jit' or 'pmap', got {mode!r}.")
    self.mode = mode
    self.devices = jax.local_devices() if mode == 'pmap' else jax.devices()
    self.num_devices = len(self.devices)
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
        functools.partial(eval_step, cfg=cfg),
        out_shardings=self.replicated,
        compiler_options=compiler_options,
      )
    else:
      pcfg = cfg.replace(axis_name='batch')

      def pmapped_train(state, batch, rng):
        with layers.sync_batch_stats('batch'):
          return train_step(state, batch, rng, cfg=pcfg)

      def pmapped_eval(state, batch):
        return jax.lax.psum(eval_step(state, batch, cfg=cfg), 'batch')

      self._train = jax.pmap(pmapped_train, axis_name='batch', donate_argnums=(0,), in_axes=(0, 0, None))
      self._eval = jax.pmap(pmapped_eval, axis_name='batch')

  def check_batch_size(self, global_batch: int, what: str) -> None:
    n = self.num_devices * (jax.process_count() if self.mode == 'pmap' else 1)
    if global_batch % n:
      raise ValueError(f'{what} {global_batch} must be divisible by the number of devices ({n}).')

  def put_state(self, state: TrainState) -> TrainState:
    if self.mode == 'jit':
      # A copy so that donation never deletes the caller's (host-side) arrays.
      return jax.device_put(jax.tree.map(jnp.array, state), self.replicated)
    return flax.jax_utils.replicate(state, self.devices)

  def get_state(self, state: TrainState) -> TrainState:
    """Host copy of the (replicated) state, e.g. for saving."""
    if self.mode == 'pmap':
      state = flax.jax_utils.unreplicate(state)
    return jax.device_get(state)

  def put_batch(self, batch: dict) -> dict:
    if self.mode == 'jit':
      return {
        k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(v)) for k, v in batch.items()
      }
    n = self.num_devices
    # pmap shards a host array along its leading axis: (n, B / n, ...).
    return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in batch.items()}

  def train(self, state, batch, rng):
    return self._train(state, batch, rng)

  def num_train_executables(self) -> int:
    """How many times the train step was compiled (1 with static shapes and a committed state)."""
    return getattr(self._train, '_cache_size', lambda: -1)()

  def eval(self, state, batch) -> Array:
    cm = self._eval(state, batch)
    return cm[0] if self.mode == 'pmap' else cm

  def scalar(self, x) -> float:
    x = x[0] if self.mode == 'pmap' else x
    return float(jax.device_get(x))


# ----------------------------------------------------------------------------- evaluation


def evaluate(parallel: Parallel, state, eval_iter, num_classes: int, *, progress: bool = True, desc='eval') -> dict:
  """Runs eval_step over a whole split; returns `metrics.scores` of the summed confusion matrix."""
  total = None
  bar = logging_lib.progress(eval_iter, desc=desc, enabled=progress)
  for batch in bar:
    cm = parallel.eval(state, parallel.put_batch(batch))
    total = cm if total is None else total + cm
  if total is None:
    raise ValueError('the evaluation split is empty: no batch was produced.')
  confusion = np.asarray(jax.device_get(total), np.int64)
  result = metrics.scores(confusion)
  result['confusion'] = confusion
  return result


def format_iou_table(result: dict, class_names) -> str:
  lines = [f'{"class":<16} {"IoU":>7}']
  for i, iou in enumerate(result['per_class_iou']):
    name = class_names[i] if class_names and i < len(class_names) else str(i)
    lines.append(f'{name:<16} {("%.2f" % (100 * iou)) if np.isfinite(iou) else "  n/a":>7}')
  lines.append(
    f'{"mIoU":<16} {100 * result["miou"]:>7.2f}   pixel acc {100 * result["pixel_acc"]:.2f}   '
    f'mean acc {100 * result["mean_acc"]:.2f}   fwIoU {100 * result["fwiou"]:.2f}'
  )
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- the loop


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the next step boundary and exits cleanly."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # second signal: give up immediately
      raise KeyboardInterrupt
    self.signal = signum

  def __exit__(self, *exc):
    for sig, prev in self._previous.items():
      signal.signal(sig, prev)


def _initial_variables(config, model, rng, input_shape) -> dict:
  """Random init, then optional pretrained backbone / full-model weights from config.model."""
  variables = jax.jit(functools.partial(init_variables, model), static_argnums=(1,))(rng, tuple(input_shape))
  variables = jax.device_get(variables)
  if config.model.get('backbone_weights'):
    from jaxseg.weights import pretrained

    variables, report = pretrained.init_backbone(model, variables, config.model.backbone_weights)
    logging_lib.info(f'backbone initialised from {config.model.backbone_weights}: {report}')
  if config.model.get('weights'):
    from jaxseg.weights import pretrained

    variables, report = pretrained.load_pretrained(
      config.model.name, variables, config.model.weights, config.dataset.num_classes, **_model_kwargs(config)
    )
    logging_lib.info(f'model initialised from {config.model.weights}: {report}')
  return variables


def checkpoint_meta(config) -> dict:
  """What a checkpoint records besides arrays: enough to rebuild the model and state for eval/predict."""
  return {
    'model': config.model.name,
    'num_classes': int(config.dataset.num_classes),
    'config': json.loads(config.to_json_best_effort()),
  }


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  if 'config' not in meta:
    raise ValueError(f'checkpoint metadata has no config (keys: {sorted(meta)}); pass --config explicitly.')
  return ml_collections.ConfigDict(meta['config'])


def abstract_train_state(config, model) -> TrainState:
  h, w = (int(s) for s in config.dataset.crop_size)
  shape = (1, h, w, int(config.dataset.get('in_channels', 3)))
  return jax.eval_shape(lambda: create_train_state(config, model, jax.random.key(0), shape))


def load_trained(checkpoint: str, config: ml_collections.ConfigDict | None = None, *, best: bool = False):
  """(config, model, variables) from a training workdir or checkpoint directory.

  The config stored with the checkpoint is used unless `config` is given (its
  model name and class count must then match the checkpoint's).
  """
  disk_meta = checkpointing.read_meta(checkpoint)
  if config is None:
    config = config_from_meta(disk_meta)
  model = build_model(config)
  state, _ = checkpointing.restore_for_inference(
    checkpoint, abstract_train_state(config, model), meta=checkpoint_meta(config), best=best
  )
  return config, model, {'params': state.params, 'batch_stats': state.batch_stats}


def params_checksum(params) -> float:
  """Sum of |p| over all parameters (float64): a cheap fingerprint to compare runs/processes."""
  return float(sum(np.abs(np.asarray(p, np.float64)).sum() for p in jax.tree.leaves(jax.device_get(params))))


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() from config.train (explicit coordinator, or auto-detected on TPU/SLURM).

  Must run before any other JAX call. On CPU the cross-process collectives go
  through gloo (used by the 2-process loopback test).
  """
  t = config.train
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if t.get('coordinator_address', ''):
    if int(t.num_processes) < 1 or not 0 <= int(t.process_id) < int(t.num_processes):
      raise ValueError(
        f'with config.train.coordinator_address set, num_processes must be >= 1 and 0 <= process_id < '
        f'num_processes; got num_processes={t.num_processes}, process_id={t.process_id}.'
      )
    jax.distributed.initialize(t.coordinator_address, int(t.num_processes), int(t.process_id))
  else:
    jax.distributed.initialize()
  logging_lib.info(f'process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices in all')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, progress: bool | None = None) -> dict:
  """Trains config.model on config.dataset, checkpointing to and resuming from `workdir`.

  Returns a summary dict (final step, last metrics, evaluation scores).
  """
  from jaxseg import data as data_lib

  progress = sys.stderr.isatty() if progress is None else progress
  if config.train.get('distributed', False):
    initialize_distributed(config)
  workdir = os.path.abspath(os.fspath(workdir))
  checkpointing.check_workdir(workdir)
  cfg = step_config(config)
  model = build_model(config)
  parallel = Parallel(config.train.get('parallelism', 'jit'), cfg, layers.cpu_compiler_options(model))
  parallel.check_batch_size(int(config.train.batch_size), 'config.train.batch_size')
  parallel.check_batch_size(int(config.eval.batch_size), 'config.eval.batch_size')
  num_steps = int(config.train.num_steps) * int(config.train.get('grad_accum_steps', 1))
  if num_steps < 1:
    raise ValueError(f'config.train.num_steps must be >= 1, got {config.train.num_steps}.')

  rng = jax.random.key(int(config.train.seed))
  init_rng, step_rng = jax.random.split(rng)
  train_iter = data_lib.create_train_iterator(
    config, seed=int(config.train.seed), process_index=jax.process_index(), process_count=jax.process_count()
  )
  h, w = (int(s) for s in config.dataset.crop_size)
  local_batch = int(config.train.batch_size) // jax.process_count()
  input_shape = (local_batch, h, w, int(config.dataset.get('in_channels', 3)))

  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=int(config.train.max_to_keep), meta=checkpoint_meta(config))
  writer = logging_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  abstract = jax.eval_shape(lambda: create_train_state(config, model, init_rng, input_shape))
  restored = ckpt.restore_latest(abstract, train_iter)
  if restored is not None:
    state = restored
    logging_lib.info(f'resumed from {ckpt.directory} at step {int(state.step)}')
  else:
    state = create_train_state(config, model, init_rng, input_shape, _initial_variables(config, model, init_rng, input_shape))
  start = int(state.step)
  state = parallel.put_state(state)

  eval_every = int(config.train.get('eval_every', 0))
  ckpt_every = int(config.train.get('checkpoint_every', 0))
  log_every = max(1, int(config.train.get('log_every', 10)))
  last_metrics, eval_result, skipped = {}, None, 0
  pending = None  # (step, metrics) of the previous step, read while the next one runs
  t0, n_images = time.time(), 0

  def check(step_metrics_pair):
    nonlocal skipped
    step, m = step_metrics_pair
    m = {k: parallel.scalar(v) for k, v in m.items()}
    if not m.pop('finite'):
      if not cfg.skip_nonfinite:
        raise NonFiniteLossError(
          f'non-finite loss or gradient at step {step} (loss={m["loss"]}, grad_norm={m["grad_norm"]}); '
          f'stopping. The last good checkpoint in {ckpt.directory} is intact '
          f'(step {ckpt.latest_step()}). Lower the learning rate or set config.train.skip_nonfinite=True.'
        )
      skipped += 1
    return step, m

  bar = logging_lib.progress(range(start, num_steps), desc='train', enabled=progress, initial=start, total=num_steps)
  with _StopFlag() as stop:
    try:
      for step in bar:
        host_batch = next(train_iter)
        # Under jit out-of-range labels would only show up as a NaN or silently wrong loss: check on the host.
        metrics.check_labels(host_batch['label'], cfg.num_classes, cfg.ignore_index, what=f'training labels (step {step})')
        batch = parallel.put_batch(host_batch)
        state, step_metrics = parallel.train(state, batch, step_rng)
        n_images += int(config.train.batch_size)
        if pending is not None:
          done_step, m = check(pending)
          last_metrics = m
          if done_step % log_every == 0 or done_step == start + 1:
            rate = n_images / max(time.time() - t0, 1e-9)
            writer.scalars(done_step, {**m, 'images_per_s': rate, 'skipped_nonfinite': skipped})
            bar.set_postfix(loss=f'{m["loss"]:.4f}', img_s=f'{rate:.1f}')
        pending = (step + 1, step_metrics)
        done = step + 1
        if (ckpt_every and done % ckpt_every == 0) or done == num_steps or stop.signal is not None:
          _, last_metrics = check(pending)  # never save a state whose step was non-finite
          pending = None
          host_state = parallel.get_state(state)
          ckpt.save(done, host_state, train_iter)
          if stop.signal is not None:
            ckpt.wait()
            logging_lib.info(
              f'received signal {stop.signal}: saved checkpoint at step {done} in {ckpt.directory}; '
              'run the same command again to resume.'
            )
            break
        if eval_every and done % eval_every == 0 and done != num_steps:
          eval_result = _run_eval(config, parallel, state, writer, done, ckpt, progress)
      if pending is not None:
        _, last_metrics = check(pending)
    finally:
      ckpt.wait()
  final_step = int(parallel.get_state(state).step) if stop.signal is None else done
  interrupted = stop.signal is not None
  if not interrupted and final_step >= num_steps:
    eval_result = _run_eval(config, parallel, state, writer, final_step, ckpt, progress)
  ckpt.close()
  writer.close()
  return {
    'step': final_step,
    'train_executables': parallel.num_train_executables(),
    'metrics': last_metrics,
    'eval': eval_result,
    'interrupted': interrupted,
    'skipped_nonfinite': skipped,
    'state': parallel.get_state(state),
    'model': model,
  }


def _run_eval(config, parallel, state, writer, step, ckpt, progress) -> dict:
  from jaxseg import data as data_lib

  eval_iter = data_lib.create_eval_iterator(
    config, process_index=jax.process_index(), process_count=jax.process_count()
  )
  result = evaluate(parallel, state, eval_iter, int(config.dataset.num_classes), progress=progress)
  names = data_lib.dataset_info(config).get('class_names')
  logging_lib.info(f'evaluation at step {step} ({config.dataset.eval_split}):\n' + format_iou_table(result, names))
  writer.scalars(step, {f'eval/{k}': result[k] for k in ('miou', 'pixel_acc', 'mean_acc', 'fwiou')})
  host_state = parallel.get_state(state)
  if math.isfinite(result['miou']):
    ckpt.save_best(step, host_state, result['miou'])
  if writer.enabled:
    _log_eval_image(config, host_state, writer, step)
  return result


_PREDICT_FNS: dict[int, Any] = {}


def _jitted_apply(apply_fn):
  model = getattr(apply_fn, '__self__', None)
  key = id(apply_fn if model is None else model)
  if key not in _PREDICT_FNS:
    _PREDICT_FNS[key] = jax.jit(
      lambda v, x: jnp.argmax(apply_fn(v, x, train=False), axis=-1),
      compiler_options=layers.cpu_compiler_options(model),
    )
  return _PREDICT_FNS[key]


def _log_eval_image(config, host_state, writer, step) -> None:
  """The first evaluation image next to its predicted overlay, in TensorBoard (eval/prediction)."""
  from jaxseg import data as data_lib

  image = np.asarray(data_lib.get_source(config, config.dataset.eval_split)[0]['image'])
  x = data_lib.normalize(image, config.dataset.normalize)[None]
  variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
  pred = np.asarray(_jitted_apply(host_state.apply_fn)(variables, x))[0]
  image = center_crop_to(image, pred.shape)  # the valid U-Net predicts the central region only
  writer.image(step, 'eval/prediction', np.concatenate([image, data_lib.overlay(image, pred)], axis=1))


def center_crop_to(image: np.ndarray, shape) -> np.ndarray:
  """The central shape[:2] region of an (H, W, ...) image (identity when the sizes agree)."""
  h, w = shape[:2]
  top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
  return image[top : top + h, left : left + w]
