"""Checkpoints with orbax: train state + data-iterator position + metadata, written atomically.

* Orbax writes each checkpoint into a temporary directory and renames it when
  complete, so a run killed mid-write leaves only an `*.orbax-checkpoint-tmp*`
  directory, which restore skips (with a warning).
* A step directory that lacks one of the files a finished save leaves (a
  partial copy, or a filesystem without atomic rename) is moved aside to
  `workdir/incomplete_checkpoints/` with a warning, and the run resumes from
  the latest complete step instead of failing inside orbax.
* Saving is asynchronous: `wait()` / `close()` before the process exits.
* Nothing is created in the workdir's checkpoint directory before the first
  successful step is saved.
* Metadata (model name, class count) is checked on restore, so a checkpoint of
  another model or class count fails with a message naming both.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxseg.train import logging_lib

MIN_FREE_BYTES = 64 << 20


# Files every finished `Checkpointer.save` leaves in a step directory (one per saved item).
REQUIRED_FILES = ('state/_METADATA', 'meta/metadata', 'data/metadata')


def incomplete_steps(directory: str) -> list[str]:
  """Step directories (named by their step number) missing a file of `REQUIRED_FILES`."""
  if not os.path.isdir(directory):
    return []
  bad = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.isdigit() and os.path.isdir(path):
      if not all(os.path.exists(os.path.join(path, f)) for f in REQUIRED_FILES):
        bad.append(path)
  return bad


def set_aside_incomplete_steps(directory: str) -> list[str]:
  """Moves incomplete step directories to `../incomplete_checkpoints/` (never deletes); returns the new paths."""
  bad = incomplete_steps(directory)
  if not bad:
    return []
  if jax.process_count() > 1:
    # Renaming from several hosts at once would race; ask the user instead.
    raise RuntimeError(
      f'incomplete checkpoint directories {bad} (missing one of {REQUIRED_FILES}); move them out of '
      f'{directory} and restart.'
    )
  aside = os.path.join(os.path.dirname(directory), 'incomplete_checkpoints')
  os.makedirs(aside, exist_ok=True)
  moved = []
  for path in bad:
    dest = os.path.join(aside, f'{os.path.basename(path)}-{time.strftime("%Y%m%d-%H%M%S")}')
    os.rename(path, dest)
    logging_lib.info(
      f'WARNING: skipping incomplete checkpoint {path} (missing one of {", ".join(REQUIRED_FILES)}); '
      f'moved to {dest}.'
    )
    moved.append(dest)
  return moved


def checkpoint_meta(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint records besides arrays: enough to rebuild the model for eval/predict."""
  return {
    'model': config.model.name,
    'num_classes': int(config.dataset.num_classes),
    'config': json.loads(config.to_json_best_effort()),
  }


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The training config stored by `checkpoint_meta`."""
  if 'config' not in meta:
    raise ValueError(
      f'checkpoint metadata has no config (keys: {sorted(meta)}); pass --config explicitly.'
    )
  return ml_collections.ConfigDict(meta['config'])


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir belongs to another model or class count."""


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and fails early, with a clear message, if it is not writable or the disk is full."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test_') as f:
      f.write(b'0' * 4096)
      f.flush()
  except OSError as e:
    raise PermissionError(
      f'workdir {workdir!r} is not writable ({e.strerror or e}); choose another --workdir.'
    ) from e
  free = shutil.disk_usage(workdir).free
  if free < MIN_FREE_BYTES:
    raise OSError(
      f'only {free / 2**20:.1f} MiB free on the disk of workdir {workdir!r}; at least {MIN_FREE_BYTES >> 20} MiB '
      'are needed to write checkpoints.'
    )


def _iterator_state(train_iter):
  get = getattr(train_iter, 'get_state', None)
  if get is None:
    return None
  state = get()
  return state.decode('utf-8') if isinstance(state, bytes) else state


def _set_iterator_state(train_iter, state) -> None:
  if state is None:
    return
  setter = getattr(train_iter, 'set_state', None)
  if setter is None:
    raise ValueError(
      'the checkpoint holds a data-iterator position but this iterator cannot be restored.'
    )
  setter(state.encode('utf-8') if isinstance(state, str) else state)


class Checkpointer:
  """Latest-N checkpoints in `workdir/checkpoints`, best-by-mIoU in `workdir/best`.

  Attributes:
    directory: where the periodic checkpoints go.
    best_directory: where the best-mIoU checkpoint goes.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 2, meta: dict | None = None):
    self.directory = os.path.join(workdir, 'checkpoints')
    self.best_directory = os.path.join(workdir, 'best')
    self.max_to_keep = max_to_keep
    self.meta = dict(meta or {})
    self._manager = None
    self._best = None

  # -- managers are created lazily so that nothing is written before a step succeeded.
  def _get_manager(self, create: bool):
    if self._manager is None and (create or os.path.isdir(self.directory)):
      self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
      )
    return self._manager

  def _get_best(self):
    if self._best is None:
      self._best = ocp.CheckpointManager(
        self.best_directory,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m['miou'], best_mode='max', create=True
        ),
      )
    return self._best

  def latest_step(self) -> int | None:
    manager = self._get_manager(create=False)
    return None if manager is None else manager.latest_step()

  def _warn_incomplete(self) -> None:
    for path in sorted(glob.glob(os.path.join(self.directory, '*.orbax-checkpoint-tmp*'))):
      logging_lib.info(
        f'WARNING: skipping incomplete checkpoint {path} (the run was killed while writing it).'
      )

  def check_meta(self, meta: dict, where: str) -> None:
    for key in ('model', 'num_classes'):
      if key in meta and key in self.meta and meta[key] != self.meta[key]:
        raise CheckpointMismatchError(
          f'checkpoint in {where} was written for {key}={meta[key]!r} but the config has '
          f'{key}={self.meta[key]!r} (model {meta.get("model")!r} with {meta.get("num_classes")} classes vs '
          f'{self.meta.get("model")!r} with {self.meta.get("num_classes")} classes); use another --workdir.'
        )

  def restore_latest(self, abstract_state, train_iter=None):
    """The latest complete checkpoint restored into `abstract_state`'s structure, or None."""
    if os.path.isdir(self.directory):
      self._warn_incomplete()
      if set_aside_incomplete_steps(self.directory) and self._manager is not None:
        self._manager.reload()  # forget the steps that were moved away
    step = self.latest_step()
    if step is None:
      return None
    manager = self._get_manager(create=False)
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    self.check_meta(meta, f'{self.directory}/{step}')
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
      ),
    )
    if train_iter is not None:
      _set_iterator_state(train_iter, restored['data'].get('iterator'))
    return restored['state']

  def save(self, step: int, host_state, train_iter=None) -> None:
    manager = self._get_manager(create=True)
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state),
        data=ocp.args.JsonSave(
          {'iterator': _iterator_state(train_iter) if train_iter is not None else None}
        ),
        meta=ocp.args.JsonSave({**self.meta, 'step': int(step)}),
      ),
    )

  def save_best(self, step: int, host_state, miou: float) -> None:
    best = self._get_best()
    best.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state),
        meta=ocp.args.JsonSave({**self.meta, 'step': int(step), 'miou': float(miou)}),
      ),
      metrics={'miou': float(miou)},
    )

  def wait(self) -> None:
    for m in (self._manager, self._best):
      if m is not None:
        m.wait_until_finished()

  def close(self) -> None:
    for m in (self._manager, self._best):
      if m is not None:
        m.wait_until_finished()
        m.close()
    self._manager = self._best = None


def restore_for_inference(
  workdir_or_dir: str, abstract_state, *, meta: dict | None = None, best: bool = False
):
  """Restores the state from a training workdir (latest, or best with best=True) or a checkpoint directory.

  Returns (state, meta_on_disk).
  """
  path = os.path.abspath(workdir_or_dir)
  candidates = [os.path.join(path, 'best' if best else 'checkpoints'), path]
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
    )
    step = manager.latest_step()
    if step is None:
      continue
    disk_meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if meta is not None:
      Checkpointer('', meta=meta).check_meta(disk_meta, f'{directory}/{step}')
    state = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )['state']
    return state, disk_meta
  raise FileNotFoundError(
    f'no complete checkpoint found in {path} (looked in {", ".join(candidates)}); train first with '
    '`python -m train.main --config ... --workdir DIR` and pass that DIR.'
  )


def read_meta(workdir_or_dir: str) -> dict:
  """The JSON metadata of the latest checkpoint (model name, class count, ...) without restoring arrays."""
  path = os.path.abspath(workdir_or_dir)
  for directory in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(directory):
      manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
      )
      step = manager.latest_step()
      if step is not None:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  raise FileNotFoundError(f'no complete checkpoint found in {path}.')


__all__ = [
  'Checkpointer',
  'CheckpointMismatchError',
  'check_workdir',
  'checkpoint_meta',
  'config_from_meta',
  'incomplete_steps',
  'read_meta',
  'restore_for_inference',
  'set_aside_incomplete_steps',
]
