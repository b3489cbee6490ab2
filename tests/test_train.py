"""The training system: end-to-end train + checkpoint + resume + eval, multi-device equivalence, optimiser."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.configs import common, fcn8s
from jaxseg.train import checkpointing, optim, steps, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
  env = dict(os.environ)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  env.update(extra)
  return env


def smoke_config(num_steps=2):
  c = fcn8s.get_config('smoke')
  c.model.kwargs.width = 0.125  # FCN-8s exactly, with 1/8 of the channels
  c.predict.num_images = 2
  c.train.num_steps = num_steps
  c.train.checkpoint_every = 2
  c.dataset.synthetic_size = 32
  c.dataset.crop_size = (32, 32)
  return c


def test_multidevice_jit_equals_single_device_and_pmap():
  """4 fake CPU devices: a sharded jit step equals the whole-batch step; jit and pmap agree after 3 steps."""
  out = subprocess.run(
    [sys.executable, os.path.join(ROOT, 'tests', 'scripts', 'multidevice_check.py')],
    env=_env(XLA_FLAGS='--xla_force_host_platform_device_count=4'),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r['params_moved'] > 1e-3  # the comparison is not between untouched states
  assert r['single_vs_sharded'] < 1e-5 and r['single_vs_sharded_stats'] < 1e-5
  assert abs(r['loss_single'] - r['loss_sharded']) < 1e-5
  assert r['jit_vs_pmap'] < 1e-5 and r['jit_vs_pmap_stats'] < 1e-5
  assert abs(r['loss_jit'] - r['loss_pmap']) < 1e-5
  assert r['executables'] == {'jit': 1, 'pmap': 1}  # 3 steps, one compiled program each


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  summary = train_lib.train_and_evaluate(smoke_config(2), workdir, progress=False)
  return workdir, summary


def test_train_checkpoint_eval(trained):
  workdir, summary = trained
  assert summary['step'] == 2
  assert summary['train_executables'] == 1  # static shapes: step 2 reused step 1's executable
  assert np.isfinite(summary['metrics']['loss'])
  assert 0.0 <= summary['eval']['miou'] <= 1.0
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in lines if 'loss' in r] == [1, 2]  # log_every=1; 2 is a checkpoint step
  assert any('eval/miou' in r for r in lines)
  events = [
    f for f in os.listdir(os.path.join(workdir, 'tb')) if f.startswith('events.out.tfevents')
  ]
  assert events
  # The logged eval image (image summary).
  assert b'eval/prediction' in open(os.path.join(workdir, 'tb', events[0]), 'rb').read()


def test_restored_state_equals_saved(trained):
  workdir, summary = trained
  config = smoke_config(2)
  model = steps.build_model(config)
  abstract = steps.abstract_train_state(config, model)
  abstract = abstract.replace(
    params=jax.tree.map(
      lambda s, a: jax.ShapeDtypeStruct(np.shape(a), s.dtype),
      abstract.params,
      summary['state'].params,
    )
  )
  restored, meta = checkpointing.restore_for_inference(workdir, abstract)
  assert meta['model'] == 'fcn8s' and meta['step'] == 2
  saved = summary['state']
  assert int(restored.step) == int(saved.step) == 2
  for a, b in zip(
    jax.tree.leaves((restored.params, restored.opt_state)),
    jax.tree.leaves((saved.params, saved.opt_state)),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_continues_to_more_steps(trained, tmp_path):
  workdir, _ = trained
  import shutil

  copy = str(tmp_path / 'resume')
  shutil.copytree(workdir, copy)
  summary = train_lib.train_and_evaluate(smoke_config(4), copy, progress=False)
  assert summary['step'] == 4
  assert sorted(os.listdir(os.path.join(copy, 'checkpoints'))) == ['2', '4']


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
  workdir, _ = trained
  import shutil

  copy = str(tmp_path / 'other')
  shutil.copytree(workdir, copy)
  config = smoke_config(4)
  config.dataset.num_classes = 5
  with pytest.raises(checkpointing.CheckpointMismatchError, match='num_classes=4.*num_classes=5'):
    train_lib.train_and_evaluate(config, copy, progress=False)


def test_nothing_written_when_the_first_step_fails(tmp_path):
  config = smoke_config(2)
  config.model.kwargs.no_such_argument = 1
  with pytest.raises(TypeError, match='no_such_argument'):
    train_lib.train_and_evaluate(config, str(tmp_path / 'work'), progress=False)
  assert os.listdir(tmp_path) == []  # not even the workdir


def test_recipe_compiler_options_reach_the_step_compiles(monkeypatch, tmp_path):
  """config.train.xla_cpu_compiler_options go to the trainer's jits: an option XLA does not
  know fails the first step's compile (and nothing is written)."""
  from jaxseg import cpu_conv

  monkeypatch.delenv(cpu_conv.OPT_OUT_ENV, raising=False)
  config = smoke_config(2)
  config.train.xla_cpu_compiler_options = {'xla_no_such_option_for_the_test': True}
  with pytest.raises(Exception, match='xla_no_such_option_for_the_test'):
    train_lib.train_and_evaluate(config, str(tmp_path / 'work'), progress=False)
  assert os.listdir(tmp_path) == []  # the workdir this run created is removed again


def test_eval_and_predict_steps_compile_with_the_options():
  config = smoke_config()
  model = steps.build_model(config)
  state = steps.create_train_state(config, model, jax.random.key(0), (2, 32, 32, 3))
  batch = {'image': np.zeros((2, 32, 32, 3), np.float32), 'label': np.zeros((2, 32, 32), np.int32)}
  options = {'xla_no_such_option_for_the_test': True}
  par = steps.Parallel('jit', steps.step_config(config), options)
  with pytest.raises(Exception, match='xla_no_such_option_for_the_test'):
    par.eval(par.put_state(state), par.put_batch(batch))
  with pytest.raises(Exception, match='xla_no_such_option_for_the_test'):
    par.predict(state, batch['image'])
  par = steps.Parallel('jit', steps.step_config(config))
  assert par.predict(state, batch['image']).shape == (2, 32, 32)


def test_compile_counter_counts_programs_compiled_in_its_context():
  f = jax.jit(lambda x: x * 2 + 1)
  g = jax.jit(lambda x: x - 1)
  with steps.CompileCounter() as counter:
    for _ in range(3):
      f(np.ones(3, np.float32))  # compiled once, then served from jit's cache
  assert counter.count == 1
  g(np.ones(3, np.float32))  # outside the context: not counted
  with counter:
    f(np.ones(4, np.float32))  # a new shape is a new program
    f(np.ones(4, np.float32))
  assert counter.count == 2


def test_every_log_step_and_checkpoint_step_has_a_metrics_record(tmp_path):
  """Metrics are read every log_every steps, at checkpoint steps and at the last step, each
  time with a record in metrics.jsonl (a log step that is also a checkpoint step included);
  evaluation runs every eval_every steps whether or not metrics are read there."""
  from jaxseg.configs import quickstart

  config = quickstart.get_config('smoke')
  config.dataset.synthetic_size = 16
  config.dataset.crop_size = (16, 16)
  config.model.kwargs = {'features': 4, 'depth': 2}
  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.checkpoint_every = 3
  config.train.eval_every = 5  # neither a log nor a checkpoint step
  config.predict.num_images = 0
  summary = train_lib.train_and_evaluate(config, str(tmp_path), progress=False)
  assert summary['step'] == 6 and summary['train_executables'] == 1
  records = [json.loads(x) for x in open(tmp_path / 'metrics.jsonl')]
  train_records = [r for r in records if 'loss' in r]
  # The first step, every multiple of log_every (6 is also a checkpoint step) and checkpoint 3.
  assert [r['step'] for r in train_records] == [1, 2, 3, 4, 6]
  for r in train_records:
    assert {'loss', 'grad_norm', 'pixel_acc', 'images_per_s', 'skipped_nonfinite'} <= set(r)
    assert np.isfinite(r['loss']) and r['skipped_nonfinite'] == 0
  assert summary['metrics']['loss'] == train_records[-1]['loss']
  assert [r['step'] for r in records if 'eval/miou' in r] == [5, 6]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']


def test_batch_not_divisible_by_devices_is_explained(monkeypatch):
  par = steps.Parallel('jit', steps.step_config(smoke_config()))
  monkeypatch.setattr(par, 'num_devices', 4)
  with pytest.raises(ValueError, match='divisible by the number of devices \\(4\\)'):
    par.check_batch_size(6, 'config.train.batch_size')


@pytest.mark.parametrize('name', ['poly', 'cosine', 'step', 'constant'])
def test_schedules(name):
  c = common.base_config()
  c.optim.lr, c.optim.schedule, c.train.num_steps = 1.0, name, 100
  c.optim.step_boundaries, c.optim.warmup_steps = (0.5,), 10
  s = optim.make_schedule(c)
  assert float(s(0)) == 0.0 and np.isclose(float(s(10)), 1.0)
  expected_end = {
    'poly': (1 - 89 / 90) ** 0.9,
    'cosine': 0.5 * (1 + np.cos(np.pi * 89 / 90)),
    'step': 0.1,
    'constant': 1.0,
  }
  np.testing.assert_allclose(float(s(99)), expected_end[name], rtol=1e-4)


def test_head_lr_multiplier_and_accumulation():
  c = common.base_config()
  c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay = 'sgd', 1.0, 0.0, 0.0
  c.optim.schedule, c.optim.head_lr_mult = 'constant', 10.0
  params = {'backbone': jnp.ones(2), 'head': jnp.ones(2)}
  tx = optim.make_optimizer(c, params)
  grads = {'backbone': jnp.ones(2), 'head': jnp.ones(2)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['backbone'], -1.0)
  np.testing.assert_allclose(updates['head'], -10.0)
  c.optim.head_lr_mult, c.train.grad_accum_steps = 1.0, 2
  tx = optim.make_optimizer(c, params)
  st = tx.init(params)
  u1, st = tx.update(grads, st, params)
  u2, st = tx.update({k: 3 * v for k, v in grads.items()}, st, params)
  np.testing.assert_allclose(u1['head'], 0.0)
  np.testing.assert_allclose(u2['head'], -2.0)  # mean of the two micro-batch gradients


def test_bad_config_values():
  c = common.base_config()
  c.optim.schedule = 'linear'
  with pytest.raises(ValueError, match="'poly', 'cosine', 'step', 'exponential' or 'constant'"):
    optim.make_schedule(c)
  c = smoke_config()
  c.train.class_weights = (1.0, 2.0)
  with pytest.raises(ValueError, match='class_weights has 2 entries, expected num_classes=4'):
    steps.step_config(c)
  with pytest.raises(ValueError, match="'jit' or 'pmap'"):
    steps.Parallel('dp', steps.step_config(smoke_config()))


def test_eval_multiscale_flip_window_crf(trained):
  """The inference options run through the same whole-split evaluation and stay close to single-scale."""
  from jaxseg.train import eval as eval_lib

  workdir, summary = trained
  base = eval_lib.evaluate_checkpoint(workdir, progress=False)
  np.testing.assert_allclose(base['miou'], summary['eval']['miou'], rtol=1e-6)
  for kwargs in (dict(scales=(0.75, 1.0, 1.25), flip=True), dict(window=24), dict(crf=True)):
    r = eval_lib.evaluate_checkpoint(workdir, progress=False, **kwargs)
    assert 0.0 <= r['miou'] <= 1.0 and np.sum(r['confusion']) == np.sum(base['confusion'])


def test_eval_counts_labels_outside_the_classes(trained, monkeypatch):
  """Whole-split evaluation reports label pixels >= num_classes (left out of the confusion matrix)."""
  from jaxseg import data as data_lib
  from jaxseg.train import eval as eval_lib

  workdir, _ = trained
  real = data_lib.create_eval_iterator

  def with_bad_labels(config, **kwargs):
    for i, batch in enumerate(real(config, **kwargs)):
      if i == 0:
        label = np.array(batch['label'])
        label[0, :2, :3] = config.dataset.num_classes  # 6 pixels of a class that does not exist
        batch = {**batch, 'label': label}
      yield batch

  monkeypatch.setattr(data_lib, 'create_eval_iterator', with_bad_labels)
  r = eval_lib.evaluate_checkpoint(workdir, progress=False)
  assert r['invalid_labels'] == 6


def test_config_backbone_weights_initialise_only_the_backbone(tmp_path):
  """config.model.backbone_weights: the train loop loads an ImageNet-layout file into params['backbone'] only."""
  from safetensors.numpy import save_file

  import jaxseg

  config = smoke_config()
  model = steps.build_model(config)
  donor = steps.init_variables(model, jax.random.key(42), (1, 32, 32, 3))
  name, kwargs = model.backbone_spec()
  # torchvision vgg16 layout
  sd = jaxseg.weights.to_torch(name, {'params': donor['params']['backbone']})
  save_file(
    {k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / 'vgg16.safetensors')
  )
  config.model.backbone_weights = str(tmp_path / 'vgg16.safetensors')
  variables = train_lib.initial_variables(config, model, jax.random.key(0), (1, 32, 32, 3))
  fresh = steps.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  for a, b in zip(
    jax.tree.leaves(variables['params']['backbone']),
    jax.tree.leaves(donor['params']['backbone']),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for key in ('score_fr', 'upscore8'):  # the head keeps its fresh initialisation
    for a, b in zip(
      jax.tree.leaves(variables['params'][key]), jax.tree.leaves(fresh['params'][key]), strict=True
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_keeps_float32_params():
  """config.train.dtype='bfloat16': the model computes in bfloat16, parameters and their updates stay float32."""
  config = smoke_config()
  config.train.dtype = 'bfloat16'
  model = steps.build_model(config)
  assert model.dtype == jnp.bfloat16
  state = steps.create_train_state(config, model, jax.random.key(0), (2, 32, 32, 3))
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.standard_normal((2, 32, 32, 3)).astype(np.float32),
    'label': rng.integers(0, 4, (2, 32, 32)).astype(np.int32),
  }
  step = jax.jit(
    lambda s, b: steps.train_step(s, b, jax.random.key(1), cfg=steps.step_config(config))
  )
  new_state, m = step(state, batch)
  assert np.isfinite(float(m['loss'])) and bool(m['finite'])
  assert {a.dtype for a in jax.tree.leaves(new_state.params)} == {jnp.dtype('float32')}
  moved = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params), strict=True)
  )
  assert moved > 0
