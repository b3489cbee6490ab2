"""What a training run shows and leaves on disk: progress without a terminal, metrics.jsonl,
refused workdirs and resumes, labels made inside jit.

One 7-step run of a tiny U-Net (4 features, 2 poolings, 16x16 generated data) is shared by the
tests; the refusals are checked on copies of its workdir.
"""

import contextlib
import io
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from jaxseg import data as data_lib
from jaxseg.configs import quickstart
from jaxseg.train import checkpointing, steps, train_lib

NUM_STEPS = 7
NUM_CLASSES = 4
LR, WARMUP = 2e-3, 30  # quickstart: adam, linear warmup over 30 updates (longer than the run)
EVAL_INVALID = 3  # label pixels set out of range in the first evaluation batch


def tiny_config(num_steps=NUM_STEPS):
  c = quickstart.get_config('smoke')
  c.dataset.synthetic_size = 16
  c.dataset.crop_size = (16, 16)
  c.model.kwargs = {'features': 4, 'depth': 2}
  c.train.num_steps = num_steps
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.train.eval_every = 0
  c.predict.num_images = 0
  assert (
    c.dataset.num_classes == NUM_CLASSES and c.optim.lr == LR and c.optim.warmup_steps == WARMUP
  )
  return c


def expected_lr(step):
  """The learning rate of the update made at `step` (1-based): the schedule at update step - 1."""
  return LR * (step - 1) / WARMUP


class LabelWrapper:
  """A train iterator or eval iterable that sets `count` label pixels of its `at`-th batch to `value`."""

  def __init__(self, iterable, at, count, value=NUM_CLASSES):
    self._src, self._at, self._count, self._value, self._n = iterable, at, count, value, 0
    self._it = None

  def __iter__(self):
    return self

  def __next__(self):
    self._it = self._it or iter(self._src)
    batch = next(self._it)
    self._n += 1
    if self._n == self._at:
      label = np.array(batch['label'])
      label[0].reshape(-1)[: self._count] = self._value
      batch = {**batch, 'label': label}
    return batch

  def get_state(self):
    return self._src.get_state()

  def set_state(self, state):
    self._src.set_state(state)


def snapshot(root):
  """Every path under `root` (itself included) with its mtime and size."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in ['', *dirnames, *filenames]:
      path = os.path.join(dirpath, name)
      st = os.stat(path)
      out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size)
  return out


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('train_path') / 'work'
  create_eval_iterator = data_lib.create_eval_iterator
  stderr = io.StringIO()  # not a terminal: the loop prints plain progress lines
  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
    mp.setattr(
      data_lib,
      'create_eval_iterator',
      lambda *a, **k: LabelWrapper(create_eval_iterator(*a, **k), 1, EVAL_INVALID),
    )
    summary = train_lib.train_and_evaluate(tiny_config(), str(workdir))
  return {'workdir': workdir, 'summary': summary, 'stderr': stderr.getvalue()}


def test_progress_lines_without_a_terminal(run):
  """First step, every log_every steps and the last: step/total, loss, actual lr, images/s, ETA."""
  pattern = r'train step (\d+)/(\d+)  loss (\S+)  lr (\S+)  (\S+) images/s  ETA (\S+)'
  lines = re.findall(pattern, run['stderr'])
  assert [int(m[0]) for m in lines] == [1, 2, 4, 6, 7], run['stderr'][-3000:]
  for step, total, loss, lr, rate, eta in lines:
    assert int(total) == NUM_STEPS and math.isfinite(float(loss)) and float(rate) > 0
    assert float(lr) == pytest.approx(expected_lr(int(step)), rel=1e-2, abs=1e-12)
    # The first step is mostly compilation: its time gives no ETA.
    assert eta == '?' if step == '1' else re.fullmatch(r'\d+:\d\d:\d\d', eta), eta
  assert lines[-1][-1] == '0:00:00'


def test_metrics_jsonl_has_every_read_step(run):
  """metrics.jsonl: the first step, every log_every step, checkpoint steps 3 and 6 (6 is also a
  log step) and the last step 7 (also a checkpoint), each once, with the learning rate."""
  with open(run['workdir'] / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train] == [1, 2, 3, 4, 6, 7]
  for r in train:
    assert r['lr'] == pytest.approx(expected_lr(r['step']), rel=1e-5, abs=1e-12)
    assert r['images_per_s'] > 0 and 'invalid_labels' not in r
  assert sorted(os.listdir(run['workdir'] / 'checkpoints')) == ['6', '7']
  (last,) = [r for r in records if 'eval/miou' in r]
  assert last['step'] == NUM_STEPS and last['eval/invalid_labels'] == EVAL_INVALID


def test_evaluation_reports_out_of_range_labels(run):
  assert run['summary']['eval']['invalid_labels'] == EVAL_INVALID
  message = f'WARNING: {EVAL_INVALID} label pixels outside 0..{NUM_CLASSES - 1}'
  assert message in run['stderr']


@pytest.mark.parametrize(
  'field, value, message, before_building',
  [
    ('model.kwargs.features', 8, 'model.kwargs.features: 4 -> 8', True),
    ('dataset.in_channels', 1, 'dataset.in_channels: 3 -> 1', True),
    ('optim.name', 'sgd', "optim.name: 'adam' -> 'sgd'", False),
    ('dataset.synthetic_size', 24, 'dataset.synthetic_size: 16 -> 24', False),
  ],
)
def test_resume_with_another_config_is_refused_and_writes_nothing(
  run, tmp_path, monkeypatch, field, value, message, before_building
):
  workdir = tmp_path / 'work'
  shutil.copytree(run['workdir'], workdir)
  before = snapshot(workdir)
  config = tiny_config(NUM_STEPS + 2)
  section, *rest = field.split('.')
  target = config[section]
  for key in rest[:-1]:
    target = target[key]
  target[rest[-1]] = value
  if before_building:  # the model's own parameters would not fit: refused from the stored config
    monkeypatch.setattr(steps, 'build_model', lambda c: pytest.fail('built the model'))
  with pytest.raises(checkpointing.CheckpointMismatchError, match=re.escape(message)) as e:
    train_lib.train_and_evaluate(config, str(workdir), progress=False)
  assert 'use another --workdir' in str(e.value).lower()
  assert snapshot(workdir) == before


def test_workdir_that_is_a_file_is_named_so(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  with pytest.raises(NotADirectoryError, match=r"workdir '.*a_file' is a file, not a directory"):
    train_lib.train_and_evaluate(tiny_config(), str(blocker), progress=False)
  match = r"workdir '.*a_file/work' cannot be created: '.*a_file' is a file, not a directory"
  with pytest.raises(NotADirectoryError, match=match):
    train_lib.train_and_evaluate(tiny_config(), str(blocker / 'work'), progress=False)
  assert sorted(os.listdir(tmp_path)) == ['a_file']


@pytest.mark.parametrize('bad', ['num_steps', 'kwargs'])
def test_bad_config_leaves_no_workdir_behind(tmp_path, bad):
  config = tiny_config()
  if bad == 'num_steps':
    config.train.num_steps = 0
  else:
    config.model.kwargs.no_such_argument = 1
  with pytest.raises((ValueError, TypeError), match='num_steps|no_such_argument'):
    train_lib.train_and_evaluate(config, str(tmp_path / 'runs' / 'work'), progress=False)
  assert os.listdir(tmp_path) == []


def test_labels_out_of_range_made_inside_jit_stop_the_run(run, tmp_path, monkeypatch):
  """Labels the host check cannot see (as if made inside jit) stop the run at their step, with
  the exact pixel count; the step's update is never checkpointed."""
  workdir = tmp_path / 'work'
  shutil.copytree(run['workdir'], workdir)
  config = tiny_config(12)
  config.train.log_every = 4  # metrics read at steps 8 (first after resuming) and 12
  config.train.checkpoint_every = 100
  monkeypatch.setattr(train_lib.metrics, 'check_labels', lambda *a, **k: None)
  create_train_iterator = data_lib.create_train_iterator
  monkeypatch.setattr(
    data_lib,
    'create_train_iterator',
    lambda *a, **k: LabelWrapper(create_train_iterator(*a, **k), 3, 5),  # step 10 (8, 9, 10)
  )
  with pytest.raises(train_lib.InvalidLabelError) as e:
    train_lib.train_and_evaluate(config, str(workdir), progress=False)
  message = str(e.value)
  assert 'training labels at step 10: 5 pixels' in message, message
  assert f'valid labels are 0..{NUM_CLASSES - 1}' in message and '255' in message, message
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['6', '7']
