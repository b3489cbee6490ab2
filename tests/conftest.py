"""Shared test helpers: seeded torch models, NHWC <-> NCHW, relative error."""

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

  Every non-parameter collection (BatchNorm statistics) is mutable, dropout gets a fixed key;
  `compiler_options` go to the jit.
  """
  rest = {k: v for k, v in variables.items() if k != 'params'}

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def run(params, x):
    def loss(params):
      out = model.apply(
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


@pytest.fixture(scope='session')
def torch_module():
  torch = pytest.importorskip('torch')
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  return torch
