"""The training loop: `train_and_evaluate(config, workdir)` for every jaxseg model.

* The state and the steps (train/steps.py) run under `jax.jit` over a device
  Mesh (default) or `jax.pmap`, chosen by config.train.parallelism; both give
  the same parameters.
* Metrics are read from the device every `train.log_every` steps, at
  checkpoint steps and at the last step (the device runs ahead in between);
  each read checks that every step since the previous read was finite and
  writes a record to `workdir/metrics.jsonl` (and TensorBoard).
* Checkpoints (train/checkpointing.py) hold the state, the data iterator
  position and metadata; a killed run resumes from the last complete one,
  SIGTERM/SIGINT save one at the next step, and a checkpoint is never saved
  after a non-finite step (unless config.train.skip_nonfinite skips it).
* Evaluation (train/evaluation.py) prints the per-class IoU table, keeps the
  best-mIoU checkpoint and logs the first eval image with its prediction.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np

from jaxseg import metrics
from jaxseg.train import checkpointing, logging_lib, steps
from jaxseg.train.evaluation import evaluate, format_iou_table, log_eval_image


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient (the last good checkpoint is kept)."""


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the next step boundary and exits."""

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


def initial_variables(config, model, rng, input_shape) -> dict:
  """Random init, then optional pretrained backbone / full-model weights from config.model."""
  init = jax.jit(functools.partial(steps.init_variables, model), static_argnums=(1,))
  variables = jax.device_get(init(rng, tuple(input_shape)))
  if config.model.get('backbone_weights'):
    from jaxseg.weights import pretrained

    variables, report = pretrained.init_backbone(model, variables, config.model.backbone_weights)
    logging_lib.info(f'backbone initialised from {config.model.backbone_weights}: {report}')
  if config.model.get('weights'):
    from jaxseg.weights import pretrained

    variables, report = pretrained.load_pretrained(
      config.model.name,
      variables,
      config.model.weights,
      config.dataset.num_classes,
      **steps.model_kwargs(config),
    )
    logging_lib.info(f'model initialised from {config.model.weights}: {report}')
  return variables


def params_checksum(params) -> float:
  """Sum of |p| over all parameters (float64): a cheap fingerprint to compare runs/processes."""
  leaves = jax.tree.leaves(jax.device_get(params))
  return float(sum(np.abs(np.asarray(p, np.float64)).sum() for p in leaves))


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() from config.train (explicit coordinator, or auto-detected).

  Must run before any other JAX call. On CPU the cross-process collectives go
  through gloo (used by the 2-process loopback test).
  """
  t = config.train
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if t.get('coordinator_address', ''):
    if int(t.num_processes) < 1 or not 0 <= int(t.process_id) < int(t.num_processes):
      raise ValueError(
        'with config.train.coordinator_address set, num_processes must be >= 1 and '
        f'0 <= process_id < num_processes; got num_processes={t.num_processes}, '
        f'process_id={t.process_id}.'
      )
    jax.distributed.initialize(t.coordinator_address, int(t.num_processes), int(t.process_id))
  else:
    jax.distributed.initialize()
  logging_lib.info(
    f'process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices in all'
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, progress: bool | None = None
) -> dict:
  """Trains config.model on config.dataset, checkpointing to and resuming from `workdir`.

  Returns a summary dict: final step, the last metrics read, evaluation
  scores, whether a signal interrupted the run, the number of skipped
  non-finite steps, the number of programs compiled for the train step
  (`train_executables`), the final host-side state and the model.
  """
  from jaxseg import data as data_lib

  progress = sys.stderr.isatty() if progress is None else progress
  if config.train.get('distributed', False):
    initialize_distributed(config)
  workdir = os.path.abspath(os.fspath(workdir))
  checkpointing.check_workdir(workdir)
  cfg = steps.step_config(config)
  model = steps.build_model(config)
  mode = config.train.get('parallelism', 'jit')
  parallel = steps.Parallel(mode, cfg, steps.compiler_options(config))
  parallel.check_batch_size(int(config.train.batch_size), 'config.train.batch_size')
  parallel.check_batch_size(int(config.eval.batch_size), 'config.eval.batch_size')
  num_steps = int(config.train.num_steps) * int(config.train.get('grad_accum_steps', 1))
  if num_steps < 1:
    raise ValueError(f'config.train.num_steps must be >= 1, got {config.train.num_steps}.')

  init_rng, step_rng = jax.random.split(jax.random.key(int(config.train.seed)))
  train_iter = data_lib.create_train_iterator(
    config,
    seed=int(config.train.seed),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  h, w = (int(s) for s in config.dataset.crop_size)
  local_batch = int(config.train.batch_size) // jax.process_count()
  input_shape = (local_batch, h, w, int(config.dataset.get('in_channels', 3)))

  ckpt = checkpointing.Checkpointer(
    workdir,
    max_to_keep=int(config.train.max_to_keep),
    meta=checkpointing.checkpoint_meta(config),
  )
  writer = logging_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  state = ckpt.restore_latest(steps.abstract_train_state(config, model, input_shape), train_iter)
  if state is not None:
    logging_lib.info(f'resumed from {ckpt.directory} at step {int(state.step)}')
  else:
    variables = initial_variables(config, model, init_rng, input_shape)
    state = steps.create_train_state(config, model, init_rng, input_shape, variables)
  start = final_step = int(state.step)
  state = parallel.put_state(state)

  eval_every = int(config.train.get('eval_every', 0))
  ckpt_every = int(config.train.get('checkpoint_every', 0))
  log_every = max(1, int(config.train.get('log_every', 10)))
  last_metrics, eval_result, skipped = {}, None, 0
  unread = []  # device metrics of the steps since metrics were last read, up to `done`
  t0, n_images = time.time(), 0
  bar = logging_lib.progress(
    range(start, num_steps), desc='train', enabled=progress, initial=start, total=num_steps
  )
  with _StopFlag() as stop:
    try:
      for step in bar:
        host_batch = next(train_iter)
        # Under jit out-of-range labels would only show up as a NaN or a wrong loss: check here.
        metrics.check_labels(
          host_batch['label'],
          cfg.num_classes,
          cfg.ignore_index,
          what=f'training labels (step {step})',
        )
        state, step_metrics = parallel.train(state, parallel.put_batch(host_batch), step_rng)
        n_images += int(config.train.batch_size)
        final_step = done = step + 1
        unread.append(step_metrics)
        save = (ckpt_every and done % ckpt_every == 0) or done == num_steps
        save = save or stop.signal is not None
        if save or done % log_every == 0 or done == start + 1:
          # Every step since the last read is checked: no checkpoint follows a non-finite step.
          first = done - len(unread) + 1
          last_metrics, nonfinite = _read_metrics(parallel, unread, first, cfg, ckpt)
          unread, skipped = [], skipped + nonfinite
          rate = n_images / max(time.time() - t0, 1e-9)
          record = {**last_metrics, 'images_per_s': rate, 'skipped_nonfinite': skipped}
          writer.scalars(done, record)
          bar.set_postfix(loss=f'{last_metrics["loss"]:.4f}', img_s=f'{rate:.1f}')
        if save:
          ckpt.save(done, parallel.get_state(state), train_iter)
          if stop.signal is not None:
            ckpt.wait()
            logging_lib.info(
              f'received signal {stop.signal}: saved checkpoint at step {done} in '
              f'{ckpt.directory}; run the same command again to resume.'
            )
            break
        if eval_every and done % eval_every == 0 and done != num_steps:
          eval_result = _run_eval(config, parallel, state, writer, done, ckpt, progress)
    finally:
      ckpt.wait()
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


def _read_metrics(parallel, unread: list, first_step: int, cfg, ckpt) -> tuple[dict, int]:
  """Host metrics of the last step of `unread` (steps first_step, ...) and how many were non-finite.

  Raises NonFiniteLossError at the first non-finite step unless cfg.skip_nonfinite.
  """
  nonfinite = 0
  for step, m in enumerate(parallel.to_host(unread), start=first_step):
    m = {k: float(v) for k, v in m.items()}
    if not m.pop('finite'):
      if not cfg.skip_nonfinite:
        raise NonFiniteLossError(
          f'non-finite loss or gradient at step {step} (loss={m["loss"]}, '
          f'grad_norm={m["grad_norm"]}); stopping. The last good checkpoint in '
          f'{ckpt.directory} is intact (step {ckpt.latest_step()}). Lower the '
          'learning rate or set config.train.skip_nonfinite=True.'
        )
      nonfinite += 1
  return m, nonfinite


def _run_eval(config, parallel, state, writer, step, ckpt, progress) -> dict:
  from jaxseg import data as data_lib

  eval_iter = data_lib.create_eval_iterator(
    config, process_index=jax.process_index(), process_count=jax.process_count()
  )
  result = evaluate(parallel, state, eval_iter, int(config.dataset.num_classes), progress=progress)
  names = data_lib.dataset_info(config).get('class_names')
  table = format_iou_table(result, names)
  logging_lib.info(f'evaluation at step {step} ({config.dataset.eval_split}):\n{table}')
  writer.scalars(step, {f'eval/{k}': result[k] for k in ('miou', 'pixel_acc', 'mean_acc', 'fwiou')})
  host_state = parallel.get_state(state)
  if math.isfinite(result['miou']):
    ckpt.save_best(step, host_state, result['miou'])
  if writer.enabled:
    log_eval_image(config, parallel, host_state, writer, step)
  return result
