"""The training loop: `train_and_evaluate(config, workdir)` for every jaxseg model.

* The state and the steps (train/steps.py) run under `jax.jit` over a device
  Mesh (default) or `jax.pmap`, chosen by config.train.parallelism; both give
  the same parameters.
* Metrics are read from the device at the first step, every
  `train.log_every` steps, at checkpoint steps and at the last step (the
  device runs ahead in between); each read checks that every step since the
  previous read was finite and had labels in [0, num_classes) or ignore_index,
  and writes a record (loss, learning rate, images/s, ...) to
  `workdir/metrics.jsonl` (and TensorBoard).
* Progress: a tqdm bar on a terminal; otherwise (a log file, nohup, CI) one
  plain line on stderr at the first step, every `train.log_every` steps and
  at the last step: step/total, loss, learning rate, images/s and ETA.
* The workdir is checked before anything is built (a file, a checkpoint of
  another model or model.kwargs), and a run refused before its first step
  leaves nothing behind: no files, no directories it created.
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
from jaxseg.train import checkpointing, logging_lib, optim, steps
from jaxseg.train.evaluation import evaluate, format_iou_table, log_eval_image


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN/inf loss or gradient (the last good checkpoint is kept)."""


class InvalidLabelError(ValueError):
  """A step's labels held class ids outside [0, num_classes) other than ignore_index."""


class _Throughput:
  """Steps per second for the progress report, time spent in evaluation excluded.

  Measured from the end of the first metrics read (`started`), so the first
  step's compilation and the metric files' setup count only until then.
  """

  def __init__(self, start_step: int):
    self._origin = (time.monotonic(), start_step, 0.0)
    self._base = None
    self._paused = 0.0

  def pause(self, seconds: float) -> None:
    self._paused += seconds

  def started(self, step: int) -> None:
    if self._base is None:
      self._base = (time.monotonic(), step, self._paused)

  def steps_per_s(self, step: int) -> float:
    t, s, paused = self._base if self._base is not None else self._origin
    return (step - s) / max(time.monotonic() - t - (self._paused - paused), 1e-9)


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

  `progress`: a tqdm bar (True) or plain lines on stderr at the first step,
  every `train.log_every` steps and the last step (False); default: a bar
  when stderr is a terminal.

  Returns a summary dict: final step, the last metrics read, evaluation
  scores, whether a signal interrupted the run, the number of skipped
  non-finite steps, the number of programs compiled for the train step
  (`train_executables`), the final host-side state and the model.
  """
  created = []  # directories check_workdir made for this run
  try:
    return _train_and_evaluate(config, workdir, progress, created)
  except BaseException:
    # A run that stops before writing anything leaves no empty workdir behind.
    checkpointing.remove_empty_dirs(created)
    raise


def _train_and_evaluate(config, workdir, progress, created: list) -> dict:
  from jaxseg import data as data_lib

  progress = sys.stderr.isatty() if progress is None else progress
  if config.train.get('distributed', False):
    initialize_distributed(config)
  workdir = os.path.abspath(os.fspath(workdir))
  checkpointing.check_workdir_path(workdir)
  info = data_lib.resolve_config(config)  # num_classes and class weights the config leaves open
  if config.train.get('class_weighting') and jax.process_index() == 0:
    weights = ', '.join(
      f'{n} {w:.3g}' for n, w in zip(info.class_names, config.train.class_weights, strict=False)
    )
    logging_lib.info(
      f'class weights ({config.train.class_weighting}, {config.dataset.train_split!r}): {weights}'
    )
  ckpt = checkpointing.Checkpointer(
    workdir,
    max_to_keep=int(config.train.max_to_keep),
    meta=checkpointing.checkpoint_meta(config, info),
  )
  ckpt.check_resume()  # from the stored config alone: before anything is built
  cfg = steps.step_config(config)
  model = steps.build_model(config)
  mode = config.train.get('parallelism', 'jit')
  parallel = steps.Parallel(mode, cfg, steps.compiler_options(config))
  parallel.check_batch_size(int(config.train.batch_size), 'config.train.batch_size')
  parallel.check_batch_size(int(config.eval.batch_size), 'config.eval.batch_size')
  accum = int(config.train.get('grad_accum_steps', 1))
  num_steps = int(config.train.num_steps) * accum
  if num_steps < 1:
    raise ValueError(f'config.train.num_steps must be >= 1, got {config.train.num_steps}.')
  schedule = optim.make_schedule(config)

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

  # Restoring only reads (incomplete steps aside), so a refused resume leaves the workdir as it was.
  state = ckpt.restore_latest(steps.abstract_train_state(config, model, input_shape), train_iter)
  created.extend(checkpointing.check_workdir(workdir))
  writer = logging_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
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
  print_lines = not progress and jax.process_index() == 0
  last_metrics, eval_result, skipped = {}, None, 0
  unread = []  # device metrics of the steps since metrics were last read, up to `done`
  throughput = _Throughput(start)
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
          what=f'training labels (step {step + 1})',
        )
        state, step_metrics = parallel.train(state, parallel.put_batch(host_batch), step_rng)
        final_step = done = step + 1
        unread.append(step_metrics)
        save = (ckpt_every and done % ckpt_every == 0) or done == num_steps
        save = save or stop.signal is not None
        log = done % log_every == 0 or done == num_steps or done == start + 1
        if save or log:
          # Every step since the last read is checked: no checkpoint follows a non-finite step.
          first = done - len(unread) + 1
          last_metrics, nonfinite = _read_metrics(parallel, unread, first, cfg, ckpt)
          unread, skipped = [], skipped + nonfinite
          steps_per_s = throughput.steps_per_s(done)
          rate = steps_per_s * int(config.train.batch_size)
          # The update of step `done` used the schedule at its optimiser-update count.
          lr = float(schedule((done - 1) // accum))
          record = {**last_metrics, 'lr': lr, 'images_per_s': rate, 'skipped_nonfinite': skipped}
          writer.scalars(done, record)
          bar.set_postfix(loss=f'{last_metrics["loss"]:.4f}', lr=f'{lr:.3g}', img_s=f'{rate:.1f}')
          if print_lines and log:
            # The first step's time is mostly compilation: no ETA from it.
            first_read = done == start + 1
            eta = (
              (num_steps - done) / steps_per_s if steps_per_s > 0 and not first_read else math.inf
            )
            line = logging_lib.progress_line(
              done, num_steps, loss=last_metrics['loss'], lr=lr, images_per_s=rate, eta_s=eta
            )
            logging_lib.info(line)
          throughput.started(done)
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
          t = time.monotonic()
          eval_result = _run_eval(config, parallel, state, writer, done, ckpt, progress)
          throughput.pause(time.monotonic() - t)
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


def _kept(ckpt) -> str:
  step = ckpt.latest_step()
  if step is None:
    return 'No checkpoint has been saved yet.'
  return f'The last good checkpoint in {ckpt.directory} is intact (step {step}).'


def _read_metrics(parallel, unread: list, first_step: int, cfg, ckpt) -> tuple[dict, int]:
  """Host metrics of the last step of `unread` (steps first_step, ...) and how many were non-finite.

  Raises InvalidLabelError at the first step with out-of-range labels, and
  NonFiniteLossError at the first non-finite step unless cfg.skip_nonfinite.
  """
  nonfinite = 0
  for step, m in enumerate(parallel.to_host(unread), start=first_step):
    m = {k: float(v) for k, v in m.items()}
    invalid = int(m.pop('invalid_labels'))
    if invalid:
      raise InvalidLabelError(
        f'training labels at step {step}: {invalid} pixels are outside 0..{cfg.num_classes - 1} '
        f'and not the ignore index {cfg.ignore_index}; valid labels are '
        f'0..{cfg.num_classes - 1} (num_classes={cfg.num_classes}) or {cfg.ignore_index}. Their '
        'loss is NaN and the scores would leave them out; stopping. Labels made inside jit '
        f'(e.g. by a label transform) are not seen by the host check. {_kept(ckpt)}'
      )
    if not m.pop('finite'):
      if not cfg.skip_nonfinite:
        raise NonFiniteLossError(
          f'non-finite loss or gradient at step {step} (loss={m["loss"]}, '
          f'grad_norm={m["grad_norm"]}); stopping. {_kept(ckpt)} Lower the '
          'learning rate or set config.train.skip_nonfinite=True.'
        )
      nonfinite += 1
  return m, nonfinite


def _run_eval(config, parallel, state, writer, step, ckpt, progress) -> dict:
  from jaxseg import data as data_lib

  eval_iter = data_lib.create_eval_iterator(
    config, process_index=jax.process_index(), process_count=jax.process_count()
  )
  if not progress and jax.process_index() == 0:
    logging_lib.info(f'evaluating at step {step} on {config.dataset.eval_split!r}...')
  eval_state = state
  if config.eval.get('model_kwargs'):  # the trained parameters run as config.eval.model_kwargs says
    eval_model = steps.build_model(config, evaluation=True)
    batch_axis = getattr(state.apply_fn, 'batch_axis', None)
    eval_state = state.replace(apply_fn=steps.make_apply(config, eval_model, batch_axis=batch_axis))
  result = evaluate(
    parallel, eval_state, eval_iter, int(config.dataset.num_classes), progress=progress
  )
  names = data_lib.dataset_info(config).get('class_names')
  table = format_iou_table(result, names)
  logging_lib.info(f'evaluation at step {step} ({config.dataset.eval_split}):\n{table}')
  keys = ('miou', 'pixel_acc', 'mean_acc', 'fwiou', 'invalid_labels')
  writer.scalars(step, {f'eval/{k}': result[k] for k in keys})
  host_state = parallel.get_state(state)
  if math.isfinite(result['miou']):
    ckpt.save_best(step, host_state, result['miou'])
  if writer.enabled:
    log_eval_image(config, parallel, host_state, writer, step)
  return result
