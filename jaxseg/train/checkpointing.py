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
  another model or class count fails with a message naming both. A training
  run also compares the checkpoint's stored config before building anything
  (`Checkpointer.check_resume`: model.kwargs, dataset.in_channels), and a state
  or data-iterator position that does not fit the config is refused with the
  config fields that differ; a refused resume writes nothing.
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
import numpy as np
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


class _DropReadOnlyNotes:
  """Filters orbax's two warnings that a read-only manager is read-only (it is asked to be)."""

  def filter(self, record) -> bool:
    msg = record.getMessage()
    return 'read_only=True' not in msg and 'Given directory is read only' not in msg


def _read_only_manager(directory: str):
  """An orbax CheckpointManager that only reads `directory` (eval, predict, inspection)."""
  import logging

  note = _DropReadOnlyNotes()
  logger = logging.getLogger('absl')  # orbax logs through absl.logging
  logger.addFilter(note)
  try:
    return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
    )
  finally:
    logger.removeFilter(note)


def checkpoint_meta(config: ml_collections.ConfigDict, info=None) -> dict:
  """What a checkpoint records besides arrays: enough to rebuild the model for eval/predict."""
  meta = {
    'model': config.model.name,
    'num_classes': int(config.dataset.num_classes),
    'config': json.loads(config.to_json_best_effort()),
  }
  if info is not None:  # so predictions are named and coloured without the dataset at hand
    meta['class_names'] = list(info.class_names)
    meta['colors'] = np.asarray(info.palette)[: info.num_classes].tolist()
  return meta


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The training config stored by `checkpoint_meta`."""
  if 'config' not in meta:
    raise ValueError(
      f'checkpoint metadata has no config (keys: {sorted(meta)}); pass --config explicitly.'
    )
  return ml_collections.ConfigDict(meta['config'])


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir belongs to another model, class count or config."""


def check_workdir_path(workdir: str) -> None:
  """Fails if `workdir`, or its first parent that exists, is not a directory; creates nothing."""
  path = workdir
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return
    path = parent
  if os.path.isdir(path):
    return
  if path == workdir:
    raise NotADirectoryError(
      f'workdir {workdir!r} is a file, not a directory; choose another --workdir.'
    )
  raise NotADirectoryError(
    f'workdir {workdir!r} cannot be created: {path!r} is a file, not a directory; choose '
    'another --workdir.'
  )


def check_workdir(workdir: str) -> list[str]:
  """Creates `workdir` and fails early, with a clear message, if it is not writable or the disk is full.

  Returns the directories it created, outermost first (for `remove_empty_dirs`).
  """
  check_workdir_path(workdir)
  created, path = [], workdir
  while not os.path.exists(path):
    created.insert(0, path)
    path = os.path.dirname(path)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test_') as f:
      f.write(b'0' * 4096)
      f.flush()
  except OSError as e:
    remove_empty_dirs(created)
    raise PermissionError(
      f'workdir {workdir!r} is not writable ({e.strerror or e}); choose another --workdir.'
    ) from e
  free = shutil.disk_usage(workdir).free
  if free < MIN_FREE_BYTES:
    remove_empty_dirs(created)
    raise OSError(
      f'only {free / 2**20:.1f} MiB free on the disk of workdir {workdir!r}; at least {MIN_FREE_BYTES >> 20} MiB '
      'are needed to write checkpoints.'
    )
  return created


def remove_empty_dirs(directories: list[str]) -> None:
  """Removes those of `directories` (outermost first, as `check_workdir` returns them) still empty."""
  for path in reversed(directories):
    try:
      os.rmdir(path)
    except OSError:  # not empty (something was written) or already gone: keep the rest too
      return


def latest_complete_meta(directory: str) -> tuple[int, dict] | None:
  """(step, metadata) of the newest complete step in a checkpoint directory, or None.

  Reads the JSON file directly (no orbax manager), so nothing is written.
  """
  if not os.path.isdir(directory):
    return None
  incomplete = set(incomplete_steps(directory))
  complete = [
    int(name)
    for name in os.listdir(directory)
    if name.isdigit()
    and os.path.isdir(os.path.join(directory, name))
    and os.path.join(directory, name) not in incomplete
  ]
  if not complete:
    return None
  step = max(complete)
  try:
    with open(os.path.join(directory, str(step), 'meta', 'metadata'), encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, ValueError):  # unreadable: the restore itself reports it
    return None
  return step, meta if isinstance(meta, dict) else {}


_UNSET = object()


def _show(value) -> str:
  return '(not set)' if value is _UNSET else repr(value)


def _flatten(tree, prefix: str = '') -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return flat


def config_differences(old: dict | None, new: dict | None, prefix: str = '') -> list[str]:
  """'key: old -> new' for every config field (JSON form) that differs, keys under `prefix` only."""
  old_flat, new_flat = _flatten(old or {}), _flatten(new or {})
  keys = sorted(k for k in set(old_flat) | set(new_flat) if k.startswith(prefix))
  return [
    f'{k}: {_show(old_flat.get(k, _UNSET))} -> {_show(new_flat.get(k, _UNSET))}'
    for k in keys
    if old_flat.get(k, _UNSET) != new_flat.get(k, _UNSET)
  ]


def _mismatch_error(
  disk_meta: dict,
  meta: dict,
  where: str,
  what: str,
  cause: str,
  advice: str = "use another --workdir, or the checkpoint's values to resume",
) -> CheckpointMismatchError:
  """The error for `what` at `where` not fitting the config of `meta`, naming the fields that differ."""
  differences = config_differences(disk_meta.get('config'), meta.get('config'))
  if differences:
    shown = ', '.join(differences[:8]) + (', ...' if len(differences) > 8 else '')
    hint = f"config fields that differ from the checkpoint's (checkpoint -> config): {shown}"
  elif 'config' in disk_meta and 'config' in meta:
    hint = 'the stored config equals this one, so the checkpoint itself may be damaged'
  else:
    hint = 'the checkpoint or the config records no config to compare'
  return CheckpointMismatchError(
    f'{what} in {where} does not fit this config ({cause}); {hint}; {advice}.'
  )


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  text = text.split(' Metadata keys:')[0]  # orbax appends every stored key: too long to read
  return text if len(text) <= limit else text[:limit] + '...'


def shape_differences(restored, abstract, limit: int = 3) -> list[str]:
  """'path is (restored shape), expected (shape)' for the first `limit` leaves that differ."""
  got = jax.tree_util.tree_leaves_with_path(restored)
  want = jax.tree_util.tree_leaves_with_path(abstract)
  out = []
  for (path, a), (_, b) in zip(got, want, strict=False):
    if tuple(a.shape) != tuple(b.shape):
      out.append(f'{jax.tree_util.keystr(path)} is {tuple(a.shape)}, expected {tuple(b.shape)}')
      if len(out) == limit:
        break
  return out


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

  def check_resume(self) -> None:
    """Refuses, from the stored config alone, a checkpoint whose parameters cannot fit this config.

    Compares the latest complete checkpoint's model, class count,
    model.kwargs and dataset.in_channels with this run's (`meta`); reads one
    JSON file and writes nothing.
    """
    found = latest_complete_meta(self.directory)
    if found is None:
      return
    step, meta = found
    where = f'{self.directory}/{step}'
    self.check_meta(meta, where)
    if 'config' not in meta or 'config' not in self.meta:
      return
    old, new = meta['config'], self.meta['config']
    differences = config_differences(old.get('model', {}), new.get('model', {}), 'kwargs.')
    differences = [f'model.{d}' for d in differences]
    in_channels = [d.get('dataset', {}).get('in_channels', 3) for d in (old, new)]
    if in_channels[0] != in_channels[1]:
      differences.append(f'dataset.in_channels: {in_channels[0]!r} -> {in_channels[1]!r}')
    if differences:
      raise CheckpointMismatchError(
        f'checkpoint in {where} was trained with another {meta.get("model")!r} architecture: '
        f'{", ".join(differences)} (checkpoint -> config); its parameters do not fit this model. '
        "Use another --workdir, or the checkpoint's values to resume."
      )

  def restore_latest(self, abstract_state, train_iter=None):
    """The latest complete checkpoint restored into `abstract_state`'s structure, or None.

    Raises CheckpointMismatchError, naming the config fields that differ, when
    the stored state or data-iterator position does not fit.
    """
    self.check_resume()
    if os.path.isdir(self.directory):
      self._warn_incomplete()
      if set_aside_incomplete_steps(self.directory) and self._manager is not None:
        self._manager.reload()  # forget the steps that were moved away
    step = self.latest_step()
    if step is None:
      return None
    manager = self._get_manager(create=False)
    where = f'{self.directory}/{step}'
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    self.check_meta(meta, where)
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore(),
        ),
      )
    except ValueError as e:  # orbax: the saved tree has another structure (e.g. another optimizer)
      raise _mismatch_error(meta, self.meta, where, 'the training state', _first_line(e)) from e
    shapes = shape_differences(restored['state'], abstract_state)
    if shapes:
      raise _mismatch_error(meta, self.meta, where, 'the training state', '; '.join(shapes))
    if train_iter is not None:
      try:
        _set_iterator_state(train_iter, restored['data'].get('iterator'))
      except ValueError as e:  # grain: the position belongs to another data source
        raise _mismatch_error(
          meta, self.meta, where, 'the data-iterator position', _first_line(e)
        ) from e
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
    manager = _read_only_manager(directory)
    step = manager.latest_step()
    if step is None:
      continue
    disk_meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    where = f'{directory}/{step}'
    if meta is not None:
      Checkpointer('', meta=meta).check_meta(disk_meta, where)
    state = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )['state']
    shapes = shape_differences(state, abstract_state)
    if shapes:
      raise _mismatch_error(
        disk_meta,
        meta or {},
        where,
        'the state',
        '; '.join(shapes),
        'pass the config it was trained with',
      )
    return state, disk_meta
  raise FileNotFoundError(
    f'no complete checkpoint found in {path} (looked in {", ".join(candidates)}); train first with '
    '`jaxseg train --config ... --workdir DIR` and pass that DIR.'
  )


def read_meta(workdir_or_dir: str) -> dict:
  """The JSON metadata of the latest checkpoint (model name, class count, ...) without restoring arrays."""
  path = os.path.abspath(workdir_or_dir)
  for directory in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(directory):
      manager = _read_only_manager(directory)
      step = manager.latest_step()
      if step is not None:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  raise FileNotFoundError(f'no complete checkpoint found in {path}.')


__all__ = [
  'Checkpointer',
  'CheckpointMismatchError',
  'check_workdir',
  'check_workdir_path',
  'checkpoint_meta',
  'config_differences',
  'config_from_meta',
  'incomplete_steps',
  'latest_complete_meta',
  'read_meta',
  'remove_empty_dirs',
  'restore_for_inference',
  'set_aside_incomplete_steps',
  'shape_differences',
]
