"""FC-DenseNet56/67/103: counts (with and without BN statistics), parity with the Tiramisu reference."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  abstract_init,
  assert_torch_parity,
  assert_train_gradients,
  n_params,
  randomize_torch,
  rel_err,
  torch_state_dict,
)

import jaxseg
from jaxseg.models.fc_densenet import DenseBlock, DenseLayer, TransitionDown

# name: (trainable, + BN running statistics = the paper's 1.5M / 3.5M / 9.4M)
COUNTS = {
  'fc_densenet56': (1_376_795, 1_397_963),
  'fc_densenet67': (3_463_243, 3_502_923),
  'fc_densenet103': (9_322_091, 9_425_163),
}


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_param_counts_and_shapes(name):
  model = jaxseg.create_model(name, num_classes=11)
  for size in ((32, 32), (37, 45)):
    variables, out = abstract_init(model, (2, *size, 3))
    assert n_params(variables['params']) == COUNTS[name][0]
    assert n_params(variables) == COUNTS[name][1]
    assert out.shape == (2, *size, 11) and out.dtype == jnp.float32


def _parity(depth, x, seed, train):
  from torch_ref.fc_densenet import fc_densenet

  name = f'fc_densenet{depth}'
  ref = randomize_torch(fc_densenet(depth, num_classes=5, drop=0.0), seed=seed)
  variables = jaxseg.weights.from_torch(name, torch_state_dict(ref), dropout=0.0)
  model = jaxseg.create_model(name, num_classes=5, dropout=0.0)
  got = assert_torch_parity(name, model, variables, ref, x, train=train)
  assert got.shape == (*x.shape[:3], 5)


def test_parity_fc_densenet103(torch_module):
  x = np.random.default_rng(9).standard_normal((1, 37, 45, 3)).astype(np.float32)
  _parity(103, x, seed=9, train=False)


def test_parity_fc_densenet56_eval_and_train(torch_module):
  x = np.random.default_rng(10).standard_normal((2, 67, 35, 3)).astype(np.float32)
  _parity(56, x, seed=10, train=True)


def test_gradients_reach_every_parameter():
  # Every kind of layer (dense layers, transitions down/up, bottleneck, the
  # last up block's full output) at two levels; the compile of the full-depth
  # backward pass costs a minute on two cores.
  model = jaxseg.create_model(
    'fc_densenet56',
    num_classes=3,
    down_blocks=(2, 1),
    bottleneck_layers=2,
    up_blocks=(1, 2),
    growth_rate=2,
    first_features=4,
  )
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, 3))
  assert_train_gradients(model, x, (2, 9, 11, 3))


class ConcatDenseBlock(nn.Module):
  """The dense block as the paper writes it: each layer's output concatenated to its input.

  Same submodule names as `DenseBlock` and the same one keep-mask draw, so on the same
  variables and dropout key it computes what `DenseBlock` should.
  """

  num_layers: int
  growth_rate: int
  dropout: float
  new_only: bool = False

  @nn.compact
  def __call__(self, x, *, train):
    k = self.growth_rate
    shape = x.shape[:3] + (self.num_layers * k,)
    keep = (
      jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout, shape) if train else None
    )
    new = []
    for j in range(self.num_layers):
      layer_keep = None if keep is None else keep[..., j * k : (j + 1) * k]
      y = DenseLayer(k, self.dropout, name=f'layers_{j}')(x, train=train, keep=layer_keep)
      x = jnp.concatenate([x, y], axis=-1)
      new.append(y)
    return jnp.concatenate(new, axis=-1) if self.new_only else x


@pytest.mark.parametrize('new_only', [False, True])
def test_dense_block_equals_concatenation(new_only):
  # DenseBlock (one preallocated channel buffer) against the concatenating
  # reference block on the same variables and dropout masks: train-mode outputs,
  # batch statistics, and the gradients of the input and of every parameter.
  kw = dict(num_layers=3, growth_rate=3, dropout=0.2, new_only=new_only)
  buf, cat = DenseBlock(**kw), ConcatDenseBlock(**kw)
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 5))
  variables = buf.init(jax.random.key(1), x, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(
    cat.init(jax.random.key(1), x, train=False)
  )
  weights = jax.random.normal(jax.random.key(2), (2, 7, 6, 9 if new_only else 14))

  def run(block):
    def loss(params, x):
      out, upd = block.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        x,
        train=True,
        rngs={'dropout': jax.random.key(3)},
        mutable=['batch_stats'],
      )
      return jnp.sum(jnp.sin(out) * weights), (out, upd)

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(variables['params'], x)

  (grads, dx), (out, upd) = run(buf)
  (grads_ref, dx_ref), (out_ref, upd_ref) = run(cat)
  assert out.shape == out_ref.shape == (2, 7, 6, 9 if new_only else 14)
  assert rel_err(out, out_ref) < 1e-6
  assert float(jnp.mean(out == 0)) > 0.05  # dropout acted
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd_ref), strict=True):
    assert rel_err(a, b) < 1e-6
  assert rel_err(dx, dx_ref) < 1e-5
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
    assert rel_err(a, b) < 1e-5
  assert float(jnp.max(jnp.abs(dx))) > 0


def test_block_dropout_mask():
  # A dense block used on its own draws one keep-mask for all its layers: a
  # one-layer block's train-mode output is the dropout-free output with each
  # element either zeroed or scaled by 1 / 0.8, about 20% zeroed; each layer of
  # a deeper block gets its own slice (different patterns); rate 1 zeroes
  # everything; a mask of the wrong shape is refused.
  from jaxseg import layers

  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))

  def train_out(block, **kw):
    variables = jax.jit(lambda x: block.init(jax.random.key(1), x, train=False))(x)
    apply = functools.partial(block.apply, train=True, mutable=['batch_stats'], **kw)
    return jax.jit(lambda v, x: apply(v, x, rngs={'dropout': jax.random.key(5)})[0])(variables, x)

  out = train_out(DenseBlock(1, 64, 0.2, new_only=True))
  ref = train_out(DenseBlock(1, 64, 0.0, new_only=True))
  dropped = out == 0
  assert 0.18 < float(jnp.mean(dropped)) < 0.22
  np.testing.assert_allclose(out, jnp.where(dropped, 0.0, ref / 0.8), rtol=1e-6, atol=1e-6)
  assert float(jnp.mean(ref == 0)) < 1e-3  # the zeros come from the mask

  out = train_out(DenseBlock(2, 64, 0.2, new_only=True))
  first, second = out[..., :64] == 0, out[..., 64:] == 0
  assert 0.15 < float(jnp.mean(second)) < 0.25
  assert float(jnp.mean(first == second)) < 0.8  # independent patterns agree on ~68%

  # A given mask is used as given.
  keep = jax.random.bernoulli(jax.random.key(9), 0.5, (2, 16, 16, 64))
  out = train_out(DenseBlock(1, 64, 0.2, new_only=True), keep=keep)
  np.testing.assert_array_equal(out == 0, ~keep)
  np.testing.assert_allclose(out, jnp.where(keep, ref / 0.8, 0.0), rtol=1e-6, atol=1e-6)

  assert float(jnp.max(jnp.abs(layers.apply_keep_mask(x, x > 0, 1.0)))) == 0.0
  with pytest.raises(
    ValueError, match=r'DenseBlock .*expected shape \(2, 16, 16, 6\), got \(2, 16, 16, 4\)'
  ):
    train_out(DenseBlock(2, 3, 0.2), keep=x > 0)
  with pytest.raises(
    ValueError, match=r'TransitionDown .*expected shape \(2, 16, 16, 4\), got \(2, 16, 16, 3\)'
  ):
    train_out(TransitionDown(0.2), keep=x[..., :3] > 0)


def test_network_dropout_is_one_draw(monkeypatch):
  # The whole network's dropout masks come from one random draw (each draw of a
  # new shape is its own kernel to compile: FC-DenseNet103 had 96), and
  # `mask_shapes` lists exactly the masks the forward pass uses, odd sizes
  # included (a wrong list raises in the blocks' shape checks or at the end).
  small = dict(down_blocks=(2, 1, 2), bottleneck_layers=2, up_blocks=(2, 1, 2), growth_rate=4)
  model = jaxseg.create_model('fc_densenet56', num_classes=3, first_features=8, **small)
  x = jax.random.normal(jax.random.key(0), (1, 19, 23, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)

  def train(key, model=model):
    rngs = {'dropout': key} if key is not None else {}
    return model.apply(variables, x, train=True, rngs=rngs, mutable=['batch_stats'])[0]

  draws = []
  bernoulli = jax.random.bernoulli
  monkeypatch.setattr(
    jax.random, 'bernoulli', lambda *a, **k: draws.append(1) or bernoulli(*a, **k)
  )
  jax.eval_shape(train, jax.random.key(2))
  assert len(draws) == 1
  monkeypatch.undo()
  assert model.mask_shapes(x.shape) == [
    (1, 19, 23, 8), (1, 19, 23, 16),  # down 0: block's new channels, transition down
    (1, 9, 11, 4), (1, 9, 11, 20),
    (1, 4, 5, 8), (1, 4, 5, 28),
    (1, 2, 2, 8),  # bottleneck
    (1, 4, 5, 8), (1, 9, 11, 4), (1, 19, 23, 8),  # up blocks, at their skips' sizes
  ]  # fmt: skip
  jitted = jax.jit(train)
  a, b, c = jitted(jax.random.key(2)), jitted(jax.random.key(2)), jitted(jax.random.key(3))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - c))) > 1e-3
  no_dropout = jaxseg.create_model(
    'fc_densenet56', num_classes=3, first_features=8, dropout=0.0, **small
  )
  off = jax.jit(lambda: train(None, no_dropout))()
  assert float(jnp.max(jnp.abs(a - off))) > 1e-3  # dropout acted


def test_bad_inputs():
  model = jaxseg.create_model('fc_densenet103', num_classes=2)
  init = lambda shape: jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False)
  )
  with pytest.raises(ValueError, match=r'needs H and W >= 32, got \(31, 64\)'):
    init((1, 31, 64, 3))
  with pytest.raises(ValueError, match='expects 3 input channels'):
    init((1, 32, 32, 1))
