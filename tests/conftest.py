"""Shared test helpers: seeded torch models, NHWC <-> NCHW, errors, parity and gradient checks."""

import functools
import os

# Tests that need several devices set this before JAX starts (see test_train_multidevice);
# everything else runs on one CPU device.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
# The suite initialises many models: XLA:CPU compiles the 'rbg' generator much faster than the
# default threefry (measured 24 s -> 16 s for one gradient test). Random values only seed the
# weights; every numerical check compares against references built from the same weights.
# Set in the environment so the training subprocesses of the tests use it too.
os.environ.setdefault('JAX_DEFAULT_PRNG_IMPL', 'rbg')

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import cpu_conv, layers

# The suite is an entry point: it runs XLA:CPU with jaxseg's flag (Eigen convolutions, as the
# trainer does), set before JAX starts its backend (importing jax does not start it). Training
# subprocesses inherit it.
cpu_conv.configure_xla_flags()

# Modules whose module-scoped fixtures train a model, build the wheel or convert checkpoints.
# Under `pytest -n 2 --dist loadgroup` (the README's command) each of them runs on one worker,
# so that fixture is built once instead of once per worker.
ONE_WORKER_MODULES = (
  'test_backbone_checkpoints.py',
  'test_export_stablehlo.py',
  'test_faults.py',
  'test_install.py',
  'test_train.py',
  'test_train_path.py',
  'test_weights_pretrained.py',
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module = os.path.basename(str(item.fspath))
    if module in ONE_WORKER_MODULES:
      item.add_marker(pytest.mark.xdist_group(module))


def n_params(tree) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


def abstract_init(model, shape):
  """(variables, output) of `model` on a float32 batch of `shape`, as ShapeDtypeStructs (no compile)."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return variables, out


def train_grads(model, variables, x, compiler_options=None):
  """(gradients w.r.t. every parameter, train-mode output) of a nonlinear loss of the output.

  Computed as the trainer computes them: convolutions through the lowering its 'auto' picks
  (`jaxseg.cpu_conv` on CPU). Every non-parameter collection (BatchNorm statistics) is
  mutable, dropout gets a fixed key; `compiler_options` go to the jit.
  """
  rest = {k: v for k, v in variables.items() if k != 'params'}
  apply = layers.Apply(model, cpu_conv.select('auto'))

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def run(params, x):
    def loss(params):
      out = apply(
        {'params': params, **rest},
        x,
        train=True,
        mutable=list(rest) or False,
        rngs={'dropout': jax.random.key(2)},
      )
      out = out[0] if rest else out
      return jnp.mean(jax.nn.log_softmax(out)[..., 0] ** 2), out

    return jax.grad(loss, has_aux=True)(params)

  return run(variables['params'], x)


def assert_gradients_everywhere(grads, out):
  """The output is finite and every parameter gets a finite, non-zero gradient."""
  assert bool(jnp.all(jnp.isfinite(out)))
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert flat
  for path, g in flat:
    name = jax.tree_util.keystr(path)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0, name


def rel_err(a, b) -> float:
  """max |a - b| / max |b| (relative to the reference's scale)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def to_nchw(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def to_nhwc(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def randomize_torch(module, seed=0, scale=None):
  """Random weights everywhere (incl. zero-initialised layers and BN stats), deterministic."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(module.state_dict().items()):
      if t.dtype in (torch.float32, torch.float64):
        if name.endswith('running_var'):
          t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith('running_mean'):
          t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif t.ndim >= 2:
          fan_in = t[0].numel()
          t.copy_(torch.randn(t.shape, generator=g) * (scale or (2.0 / fan_in) ** 0.5))
        elif name.endswith('weight'):
          t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
        else:
          t.copy_(0.1 * torch.randn(t.shape, generator=g))
  return module


def numpy_init(model, x, seed=0):
  """He-scaled random variables shaped by eval_shape (compiling flax's init costs seconds on CPU)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(seed)

  def draw(a):
    fan_in = max(1, int(np.prod(a.shape[:-1])))
    return jnp.asarray(rng.standard_normal(a.shape) * (2.0 / fan_in) ** 0.5, a.dtype)

  return jax.tree_util.tree_map(draw, shapes)


def assert_every_gradient_nonzero(grads):
  """Every gradient leaf is finite and somewhere non-zero; names the leaves that are not."""
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert flat
  zero = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g))]
  assert not zero, zero
  assert all(np.all(np.isfinite(np.asarray(g))) for _, g in flat)


def assert_train_gradients(model, x, out_shape, variables=None):
  """Train-mode gradients (`train_grads`) reach every parameter; the output has `out_shape`.

  `variables` default to `model.init` on `x`.
  """
  if variables is None:
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
  grads, out = train_grads(model, variables, x)
  assert out.shape == out_shape
  assert_gradients_everywhere(grads, out)


def torch_state_dict(ref):
  """A copy of a PyTorch module's state dict.

  A train-mode forward updates the module's BN statistics in place, and on CPU
  converted arrays may alias the torch tensors.
  """
  return {k: v.clone() for k, v in ref.state_dict().items()}


def torch_forward(ref, x, *, train=False):
  """A PyTorch module's output on NHWC numpy `x` in eval (or train) mode, without gradients, NHWC."""
  import torch

  ref.train(train)
  with torch.no_grad():
    return to_nhwc(ref(torch.from_numpy(to_nchw(x))).numpy())


def torchvision_resnet_multigrid(depth):
  """torchvision's ResNet-`depth` at output stride 16, layer4 re-dilated to DeepLabv3's multi-grid.

  Multi-grid (1, 2, 4) on layer4's dilation 2 gives its three blocks rates 2, 4 and 8.
  """
  import torchvision

  ref = getattr(torchvision.models, f'resnet{depth}')(
    weights=None, replace_stride_with_dilation=[False, False, True]
  )
  for blk, rate in zip(ref.layer4, (2, 4, 8), strict=True):
    blk.conv2.dilation, blk.conv2.padding = (rate, rate), (rate, rate)
  return ref


def assert_torch_parity(name, model, variables, ref, x, *, train=False, tol=1e-4):
  """`model` (registered as `name`) computes what its PyTorch twin `ref` computes on `x`.

  Compares the eval-mode outputs and, with `train`, one train-mode forward and the
  running statistics it leaves (exported with `jaxseg.weights.to_torch`); build
  `variables` from `torch_state_dict(ref)` then. The model runs as the trainer and
  predictor run it (convolutions lowered by 'auto': `jaxseg.cpu_conv` on CPU; the engine
  equals plain XLA, tests/test_cpu_conv.py). Returns the eval-mode output.
  """
  import jaxseg

  apply = layers.Apply(model, cpu_conv.select('auto'))
  expected = torch_forward(ref, x)
  got = jax.jit(lambda v, x: apply(v, x, train=False))(variables, x)
  assert got.shape == expected.shape
  assert rel_err(got, expected) < tol
  if train:
    expected = torch_forward(ref, x, train=True)
    step = jax.jit(lambda v, x: apply(v, x, train=True, mutable=['batch_stats']))
    out, updates = step(variables, x)
    assert rel_err(out, expected) < tol
    exported = jaxseg.weights.to_torch(name, {'params': variables['params'], **updates})
    stats = [k for k in ref.state_dict() if 'running' in k]
    assert stats
    for k in stats:
      assert rel_err(exported[k], ref.state_dict()[k].numpy()) < tol, k
  return got


@pytest.fixture(scope='session')
def torch_module():
  torch = pytest.importorskip('torch')
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  return torch
