"""Fault tests of the training loop: kills, signals, non-finite losses, bad workdirs.

Each test runs `python -m train.main` in a subprocess on a tiny U-Net (4
features, 2 poolings) on the generated 16x16 dataset, 8 steps, a checkpoint
every 2 steps, and compares its final parameters with one uninterrupted run
of the same config. The training state is restored bit-exactly (same seed,
CPU), the data iterator position is part of the checkpoint, and the step RNG
is derived from the step number, so a killed and resumed run must end with
*identical* parameters, not merely close ones.

The subprocesses share a persistent JAX compilation cache so only the first
run of each config pays the XLA compile; every subprocess has a timeout.
Kill points are random (the seed is printed in failure messages).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 8
COLD_TIMEOUT = 300  # first run of a config compiles
WARM_TIMEOUT = 150

CONFIG = textwrap.dedent(
  f"""
  from jaxseg.configs import quickstart


  def get_config(variant=''):
    c = quickstart.get_config('smoke')
    c.dataset.synthetic_size = 16
    c.dataset.crop_size = (16, 16)
    c.model.name = 'unet_padded'
    c.model.kwargs = {{'features': 4, 'depth': 2, 'dropout': 0.1}}
    c.train.num_steps = {NUM_STEPS}
    c.train.checkpoint_every = 2
    c.train.max_to_keep = 2
    c.predict.num_images = 1
    if variant in ('nan', 'nan_skip'):
      # From update 5 on the learning rate is 1e30 times larger: the parameters
      # blow up and the following step's loss is not finite.
      c.optim.warmup_steps = 0
      c.optim.schedule = 'step'
      c.optim.step_boundaries = (0.5,)
      c.optim.step_factor = 1e30
      c.train.skip_nonfinite = variant == 'nan_skip'
      c.predict.num_images = 0
    return c
  """
)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp('faults')
  config = root / 'tiny_config.py'
  config.write_text(CONFIG)
  e = dict(os.environ)
  e.update(
    PYTHONPATH=REPO + os.pathsep + e.get('PYTHONPATH', ''),
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
  )
  return {'root': root, 'config': str(config), 'env': e}


def _cmd(env, workdir, variant=''):
  config = env['config'] + (f':{variant}' if variant else '')
  return [sys.executable, '-m', 'train.main', f'--config={config}', f'--workdir={workdir}']


def run_train(env, workdir, variant='', *, timeout=WARM_TIMEOUT, cwd=REPO):
  """Runs training to completion; returns (returncode, combined log)."""
  p = subprocess.run(
    _cmd(env, workdir, variant),
    cwd=cwd,
    env=env['env'],
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  return p.returncode, p.stdout + p.stderr


def start_train(env, workdir, variant=''):
  """Starts training in the background; the log goes to a file (a full pipe would block the child)."""
  log_path = f'{workdir}.log'
  log = open(log_path, 'w')
  p = subprocess.Popen(
    _cmd(env, workdir, variant), cwd=REPO, env=env['env'], stdout=log, stderr=subprocess.STDOUT
  )
  p.log_path = log_path
  p.log_file = log
  return p


def finish(p, timeout=WARM_TIMEOUT) -> str:
  try:
    p.wait(timeout=timeout)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
    p.log_file.close()
  with open(p.log_path) as f:
    return f.read()


def wait_for(predicate, p, timeout=WARM_TIMEOUT, poll=0.0005):
  """Polls `predicate` until true; fails if the process exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    found = predicate()
    if found:
      return found
    if p.poll() is not None:
      return None
    time.sleep(poll)
  return None


def ckpt_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def complete_steps(workdir) -> list[int]:
  d = ckpt_dir(workdir)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def incomplete_dirs(workdir) -> list[str]:
  d = ckpt_dir(workdir)
  return sorted(n for n in os.listdir(d) if 'orbax-checkpoint-tmp' in n) if os.path.isdir(d) else []


def load_variables(workdir):
  from jaxseg.train import evaluation

  _, _, variables = evaluation.load_trained(str(workdir))
  return jax.device_get(variables)


def assert_identical(got, want, msg=''):
  got_leaves, got_tree = jax.tree.flatten_with_path(got)[0], jax.tree.structure(got)
  want_leaves, want_tree = jax.tree.flatten_with_path(want)[0], jax.tree.structure(want)
  assert got_tree == want_tree, msg
  for (path, a), (_, b) in zip(got_leaves, want_leaves, strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f'{jax.tree_util.keystr(path)} {msg}'
    assert np.array_equal(a, b), (
      f'{jax.tree_util.keystr(path)} differs (max |diff| {np.abs(a - b).max()}) {msg}'
    )


@pytest.fixture(scope='module')
def reference(env):
  """One uninterrupted run, started from another working directory with a relative --workdir."""
  cwd = env['root'] / 'ref_cwd'
  cwd.mkdir()
  rc, log = run_train(env, 'work', timeout=COLD_TIMEOUT, cwd=str(cwd))
  assert rc == 0, log[-3000:]
  workdir = cwd / 'work'
  assert complete_steps(workdir)[-1] == NUM_STEPS
  return {'cwd': cwd, 'workdir': workdir, 'variables': load_variables(workdir)}


def test_reference_run_writes_only_inside_workdir(reference):
  # Everything the run wrote (checkpoints, best, logs, TensorBoard, predictions) is under --workdir.
  assert os.listdir(reference['cwd']) == ['work']
  names = set(os.listdir(reference['workdir']))
  assert {'checkpoints', 'metrics.jsonl', 'predictions'} <= names, names
  for dirpath, _, files in os.walk(reference['workdir']):
    for f in files:
      real = os.path.realpath(os.path.join(dirpath, f))
      assert real.startswith(os.path.realpath(reference['workdir']) + os.sep), real
  for leaf in jax.tree.leaves(reference['variables']):
    assert np.all(np.isfinite(leaf))


def test_sigkill_during_a_step_then_resume_is_bit_exact(env, reference, tmp_path):
  seed = random.randrange(2**32)
  rng = random.Random(seed)
  workdir = str(tmp_path / 'work')
  p = start_train(env, workdir)
  target = rng.choice([2, 4])
  assert wait_for(lambda: target in complete_steps(workdir), p), (
    f'no checkpoint {target}: ' + finish(p)[-3000:]
  )
  time.sleep(rng.uniform(0.0, 0.1))  # somewhere in the next step(s)
  assert p.poll() is None, f'run ended before the kill (seed {seed})'
  p.send_signal(signal.SIGKILL)
  finish(p)
  assert p.returncode == -signal.SIGKILL
  assert complete_steps(workdir)[-1] < NUM_STEPS
  rc, log = run_train(env, workdir)
  assert rc == 0, log[-3000:]
  assert re.search(r'resumed from .* at step \d+', log), log[-3000:]
  assert_identical(load_variables(workdir), reference['variables'], f'(kill seed {seed})')


def test_sigkill_during_async_checkpoint_write_then_resume_is_bit_exact(env, reference, tmp_path):
  seed = random.randrange(2**32)
  target = random.Random(seed).choice([4, 6])
  workdir = str(tmp_path / 'work')
  p = start_train(env, workdir)
  prefix = f'{target}.orbax-checkpoint-tmp'
  seen = wait_for(lambda: [n for n in incomplete_dirs(workdir) if n.startswith(prefix)], p)
  if p.poll() is None:
    p.send_signal(signal.SIGKILL)
  log = finish(p)
  assert seen, f'never saw {prefix} being written: ' + log[-3000:]
  assert p.returncode == -signal.SIGKILL, log[-3000:]
  left = incomplete_dirs(workdir)
  assert target not in complete_steps(workdir) or not left
  rc, log = run_train(env, workdir)
  assert rc == 0, log[-3000:]
  if left:  # killed before orbax renamed the temporary directory: restore must skip it, loudly
    assert 'skipping incomplete checkpoint' in log, log[-3000:]
    assert re.search(rf'resumed from .* at step {target - 2}\b', log), log[-3000:]
  assert_identical(load_variables(workdir), reference['variables'], f'(target step {target})')


@pytest.mark.parametrize('kind', ['orbax_tmp', 'step_dir_missing_files'])
def test_incomplete_checkpoint_directory_is_skipped_with_a_warning(env, reference, tmp_path, kind):
  workdir = tmp_path / 'work'
  shutil.copytree(
    reference['workdir'], workdir, ignore=shutil.ignore_patterns('best', 'predictions')
  )
  last = ckpt_dir(workdir) + f'/{NUM_STEPS}'
  if kind == 'orbax_tmp':
    # What a write killed half-way leaves: the step's temporary directory, partly written.
    partial = ckpt_dir(workdir) + f'/{NUM_STEPS}.orbax-checkpoint-tmp'
    os.rename(last, partial)
    shutil.rmtree(os.path.join(partial, 'state'))
  else:
    # A step directory under its final name with the arrays missing (an interrupted copy, or
    # a filesystem without atomic rename): orbax alone would pick it and fail to restore.
    partial = last
    shutil.rmtree(os.path.join(last, 'state'))
  rc, log = run_train(env, str(workdir))
  assert rc == 0, log[-3000:]
  assert f'WARNING: skipping incomplete checkpoint {partial}' in log, log[-3000:]
  assert re.search(rf'resumed from .* at step {NUM_STEPS - 2}\b', log), log[-3000:]
  assert complete_steps(workdir)[-1] == NUM_STEPS
  assert_identical(load_variables(workdir), reference['variables'])
  if kind == 'step_dir_missing_files':  # moved aside, not deleted
    assert [n.split('-')[0] for n in os.listdir(workdir / 'incomplete_checkpoints')] == [
      str(NUM_STEPS)
    ]


def test_set_aside_incomplete_steps_keeps_complete_ones(tmp_path):
  from jaxseg.train import checkpointing

  d = tmp_path / 'checkpoints'
  required = checkpointing.REQUIRED_FILES
  for step, files in [('2', required), ('4', required[1:]), ('6', ())]:
    (d / step).mkdir(parents=True)
    for f in files:
      (d / step / f).parent.mkdir(parents=True, exist_ok=True)
      (d / step / f).write_text('{}')
  (d / '8.orbax-checkpoint-tmp').mkdir()  # orbax's own temporary directories are left to orbax
  assert checkpointing.incomplete_steps(str(d)) == [str(d / '4'), str(d / '6')]
  moved = checkpointing.set_aside_incomplete_steps(str(d))
  assert sorted(os.listdir(d)) == ['2', '8.orbax-checkpoint-tmp']
  assert [os.path.basename(m).split('-')[0] for m in moved] == ['4', '6']
  assert all(os.path.dirname(m) == str(tmp_path / 'incomplete_checkpoints') for m in moved)
  assert os.path.exists(os.path.join(moved[0], 'meta', 'metadata'))  # contents kept
  assert checkpointing.set_aside_incomplete_steps(str(d)) == []


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_a_checkpoint_and_exits_cleanly(env, reference, tmp_path, sig):
  workdir = str(tmp_path / 'work')
  p = start_train(env, workdir)
  assert wait_for(lambda: 2 in complete_steps(workdir), p), finish(p)[-3000:]
  p.send_signal(sig)
  log = finish(p)
  assert p.returncode == 0, log[-3000:]
  m = re.search(rf'received signal {int(sig)}: saved checkpoint at step (\d+)', log)
  assert m, log[-3000:]
  saved = int(m.group(1))
  assert 2 <= saved < NUM_STEPS and complete_steps(workdir)[-1] == saved
  assert not incomplete_dirs(workdir)
  if sig == signal.SIGTERM:  # (one resume is enough to show the saved state is the real one)
    rc, log = run_train(env, workdir)
    assert rc == 0, log[-3000:]
    assert re.search(rf'resumed from .* at step {saved}\b', log), log[-3000:]
    assert_identical(load_variables(workdir), reference['variables'])


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(env, tmp_path):
  workdir = str(tmp_path / 'work')
  rc, log = run_train(env, workdir, 'nan', timeout=COLD_TIMEOUT)
  assert rc != 0
  m = re.search(r'non-finite loss or gradient at step (\d+)', log)
  assert m, log[-3000:]
  bad = int(m.group(1))
  steps = complete_steps(workdir)
  assert steps and steps[-1] < bad, (steps, bad)
  assert f'(step {steps[-1]})' in log  # the message points at the checkpoint that is kept
  for leaf in jax.tree.leaves(load_variables(workdir)):
    assert np.all(np.isfinite(leaf))


def test_skip_nonfinite_mode_finishes_the_run(env, tmp_path):
  workdir = str(tmp_path / 'work')
  rc, log = run_train(env, workdir, 'nan_skip', timeout=COLD_TIMEOUT)
  assert rc == 0, log[-3000:]
  assert complete_steps(workdir)[-1] == NUM_STEPS
  import json

  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    skipped = [json.loads(line).get('skipped_nonfinite', 0) for line in f]
  assert max(skipped) >= 1, skipped
  for leaf in jax.tree.leaves(load_variables(workdir)):
    assert np.all(np.isfinite(leaf))


def test_workdir_under_a_file_fails_before_training(env, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  workdir = str(blocker / 'work')
  t0 = time.monotonic()
  rc, log = run_train(env, workdir, timeout=60)
  assert rc != 0
  pattern = r"workdir '.*a_file/work' cannot be created: '.*a_file' is a file, not a directory"
  assert re.search(pattern, log), log[-3000:]
  assert 'evaluation at step' not in log and 'resumed' not in log
  assert time.monotonic() - t0 < 60


def test_check_workdir_messages(tmp_path):
  from jaxseg.train import checkpointing

  created = checkpointing.check_workdir(str(tmp_path / 'new' / 'dir'))
  assert created == [str(tmp_path / 'new'), str(tmp_path / 'new' / 'dir')]
  assert os.path.isdir(tmp_path / 'new' / 'dir') and not os.listdir(tmp_path / 'new' / 'dir')
  checkpointing.remove_empty_dirs(created)
  assert not os.path.exists(tmp_path / 'new')
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(NotADirectoryError, match='is a file, not a directory; choose another'):
    checkpointing.check_workdir(str(blocker))
  if os.geteuid() != 0:  # root ignores permission bits
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o500)
    try:
      with pytest.raises(PermissionError, match='is not writable'):
        checkpointing.check_workdir(str(ro))
    finally:
      ro.chmod(0o700)
