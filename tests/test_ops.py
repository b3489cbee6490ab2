"""Ops and shared layers against PyTorch: argmax pooling/unpooling, resize, conv, transposed conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err, to_nchw, to_nhwc

from jaxseg import layers, ops


@pytest.mark.parametrize(
  'shape', [(2, 8, 8, 3), (1, 7, 9, 2), (2, 1, 1, 4), (1, 5, 2, 1), (1, 13, 11, 16)]
)
def test_pool_unpool_match_torch(torch_module, shape):
  torch = torch_module
  x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
  vals, idx = ops.max_pool_with_argmax(jnp.asarray(x))
  tv, ti = torch.nn.functional.max_pool2d(
    torch.from_numpy(to_nchw(x)), 2, 2, ceil_mode=True, return_indices=True
  )
  np.testing.assert_array_equal(np.asarray(vals), to_nhwc(tv.numpy()))
  np.testing.assert_array_equal(np.asarray(idx), to_nhwc(ti.numpy()))
  up = ops.max_unpool(vals, idx, shape[1:3])
  tup = torch.nn.functional.max_unpool2d(tv, ti, 2, 2, output_size=shape[1:3])
  np.testing.assert_array_equal(np.asarray(up), to_nhwc(tup.numpy()))


def test_pool_ties_go_to_first_max_like_torch(torch_module):
  torch = torch_module
  # Whole windows of zeros (as after ReLU) and repeated maxima.
  x = np.zeros((1, 5, 6, 2), np.float32)
  x[0, 0, 1, 0] = x[0, 1, 0, 0] = 1.0
  x[0, 2:4, 2:4, 1] = 3.0
  vals, idx = ops.max_pool_with_argmax(jnp.asarray(x))
  tv, ti = torch.nn.functional.max_pool2d(
    torch.from_numpy(to_nchw(x)), 2, 2, ceil_mode=True, return_indices=True
  )
  np.testing.assert_array_equal(np.asarray(idx), to_nhwc(ti.numpy()))
  assert int(idx[0, 0, 0, 0]) == 1  # (0, 1) comes before (1, 0) in row-major order
  assert int(idx[0, 1, 1, 1]) == 2 * 6 + 2


def test_pool_unpool_gradients_match_torch(torch_module):
  torch = torch_module
  x = np.random.default_rng(0).standard_normal((2, 7, 5, 3)).astype(np.float32)

  def f(x):
    v, i = ops.max_pool_with_argmax(x)
    return jnp.sum(jnp.sin(ops.max_unpool(v * 2.0, i, x.shape[1:3])) ** 2)

  g = jax.grad(f)(jnp.asarray(x))
  xt = torch.from_numpy(to_nchw(x)).requires_grad_()
  v, i = torch.nn.functional.max_pool2d(xt, 2, 2, ceil_mode=True, return_indices=True)
  (
    torch.sin(torch.nn.functional.max_unpool2d(v * 2.0, i, 2, 2, output_size=x.shape[1:3])) ** 2
  ).sum().backward()
  assert rel_err(g, to_nhwc(xt.grad.numpy())) < 1e-5


def test_unpool_rejects_mismatched_indices():
  v, i = ops.max_pool_with_argmax(jnp.ones((1, 4, 4, 2)))
  with pytest.raises(ValueError, match='indices shape'):
    ops.max_unpool(v, i[..., :1], (4, 4))
  with pytest.raises(ValueError, match='rank 4'):
    ops.max_pool_with_argmax(jnp.ones((4, 4)))


def _unpool_loss(x, k, **kw):
  v, i = ops.max_pool_with_argmax(x, k)
  return jnp.sum(jnp.sin(ops.max_unpool(v * 2.0, i, x.shape[1:3], **kw)) ** 2)


@pytest.mark.parametrize('k', [2, 3])
@pytest.mark.parametrize(
  'shape', [(2, 8, 8, 3), (1, 7, 9, 2), (2, 1, 1, 4), (1, 5, 2, 1), (1, 3, 1, 70)]
)
def test_unpool_window_path_equals_scatter(shape, k):
  """`max_unpool(..., window=k)` (dense select) gives the scatter's output and gradient bit for bit."""
  rng = np.random.default_rng(sum(shape) + k)
  # Even channels: few levels after ReLU, so many tied and all-zero windows; odd channels:
  # distinct values. Odd sizes: partial border windows.
  ties = np.maximum(rng.integers(-1, 2, size=shape), 0)
  distinct = rng.integers(-500, 501, size=shape) / 7.0
  x = jnp.asarray(np.where(np.arange(shape[3]) % 2 == 0, ties, distinct).astype(np.float32))
  v, i = ops.max_pool_with_argmax(x, k)
  dense = jax.jit(lambda v, i: ops.max_unpool(v, i, shape[1:3], window=k))(v, i)
  np.testing.assert_array_equal(np.asarray(dense), np.asarray(ops.max_unpool(v, i, shape[1:3])))
  assert int(jnp.count_nonzero(dense != 0)) == int(jnp.count_nonzero(v != 0))
  g_dense = jax.jit(jax.grad(lambda x: _unpool_loss(x, k, window=k)))(x)
  g_scatter = jax.jit(jax.grad(lambda x: _unpool_loss(x, k)))(x)
  np.testing.assert_array_equal(np.asarray(g_dense), np.asarray(g_scatter))
  # Each window's gradient lands on its argmax only.
  nz = np.asarray(g_dense).reshape(shape[0], -1, shape[3]) != 0
  idx = np.asarray(i).reshape(shape[0], -1, shape[3])
  for b in range(shape[0]):
    for c in range(shape[3]):
      assert set(np.flatnonzero(nz[b, :, c])) <= set(idx[b, :, c].tolist())
  # With a second path into the pooled values, XLA may add the two terms in another
  # order: equal to float32 rounding.
  both = lambda x, **kw: _unpool_loss(x, k, **kw) + jnp.sum(ops.max_pool_with_argmax(x, k)[0] ** 3)  # noqa: E731
  g_dense = jax.jit(jax.grad(lambda x: both(x, window=k)))(x)
  g_scatter = jax.jit(jax.grad(both))(x)
  np.testing.assert_allclose(np.asarray(g_dense), np.asarray(g_scatter), rtol=1e-6, atol=0)


def test_pool_gradient_on_ties_matches_torch(torch_module):
  """Windows of equal values (zeros after ReLU, plateaus): the gradient goes to the first maximum, as in PyTorch."""
  torch = torch_module
  x = np.maximum(np.random.default_rng(3).integers(-1, 2, (2, 7, 6, 3)), 0).astype(np.float32)
  w = np.random.default_rng(4).standard_normal((2, 4, 3, 3)).astype(np.float32)

  def f(x):
    v, i = ops.max_pool_with_argmax(x)
    return jnp.sum(v * w) + jnp.sum(ops.max_unpool(v * w, i, x.shape[1:3], window=2) ** 2)

  g = jax.grad(f)(jnp.asarray(x))
  xt = torch.from_numpy(to_nchw(x)).requires_grad_()
  wt = torch.from_numpy(to_nchw(w))
  v, i = torch.nn.functional.max_pool2d(xt, 2, 2, ceil_mode=True, return_indices=True)
  up = torch.nn.functional.max_unpool2d(v * wt, i, 2, 2, output_size=x.shape[1:3])
  ((v * wt).sum() + (up**2).sum()).backward()
  np.testing.assert_array_equal(np.asarray(g), to_nhwc(xt.grad.numpy()))


def test_unpool_window_path_rejects_foreign_indices():
  v, i = ops.max_pool_with_argmax(jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3))
  assert ops.max_unpool(v, i, (5, 4), window=2).shape == (2, 5, 4, 3)
  # An index into another window: the dense path cannot place it, so eager calls refuse it.
  foreign = i.at[0, 0, 0, 0].set(2)  # (0, 2): in window (0, 1), not that window's argmax
  with pytest.raises(ValueError, match='1 do not'):
    ops.max_unpool(v, foreign, (5, 4), window=2)
  # The general scatter places it.
  assert float(ops.max_unpool(v, foreign, (5, 4))[0, 0, 2, 0]) == float(v[0, 0, 0, 0])
  with pytest.raises(
    ValueError, match=r'window 2 pools output_size \(7, 4\) to \(4, 2\), but values are \(3, 2\)'
  ):
    ops.max_unpool(v, i, (7, 4), window=2)
  with pytest.raises(ValueError, match='window must be >= 1'):
    ops.max_pool_with_argmax(jnp.ones((1, 4, 4, 1)), 0)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize(
  'src,dst', [((7, 9), (13, 4)), ((5, 5), (21, 17)), ((16, 12), (8, 6)), ((1, 3), (4, 4))]
)
def test_resize_matches_torch(torch_module, align_corners, src, dst):
  torch = torch_module
  x = np.random.default_rng(1).standard_normal((2, *src, 3)).astype(np.float32)
  got = ops.resize_bilinear(jnp.asarray(x), dst, align_corners=align_corners)
  want = torch.nn.functional.interpolate(
    torch.from_numpy(to_nchw(x)), size=dst, mode='bilinear', align_corners=align_corners
  )
  assert rel_err(got, to_nhwc(want.numpy())) < 1e-5


def test_crop():
  x = jnp.arange(2 * 6 * 5 * 1).reshape(2, 6, 5, 1)
  np.testing.assert_array_equal(ops.crop(x, (1, 2), (3, 2)), x[:, 1:4, 2:4])
  np.testing.assert_array_equal(ops.center_crop(x, (4, 3)), x[:, 1:5, 1:4])
  with pytest.raises(ValueError, match='does not fit'):
    ops.crop(x, (4, 0), (3, 5))


@pytest.mark.parametrize(
  'kw',
  [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, padding=12, dilation=12),
    dict(kernel_size=7, padding=0),
    dict(kernel_size=3, strides=2, padding=1),
    dict(kernel_size=3, padding=1, groups=4),
  ],
)
def test_conv2d_matches_torch(torch_module, kw):
  torch = torch_module
  cin, cout = 4, 8
  conv_t = torch.nn.Conv2d(
    cin,
    cout,
    kw['kernel_size'],
    stride=kw.get('strides', 1),
    padding=kw['padding'],
    dilation=kw.get('dilation', 1),
    groups=kw.get('groups', 1),
  )
  x = np.random.default_rng(2).standard_normal((2, 29, 31, cin)).astype(np.float32)
  conv = layers.Conv2d(cout, **kw)
  params = {
    'params': {
      'kernel': conv_t.weight.detach().numpy().transpose(2, 3, 1, 0),
      'bias': conv_t.bias.detach().numpy(),
    }
  }
  got = conv.apply(params, jnp.asarray(x))
  with torch.no_grad():
    want = to_nhwc(conv_t(torch.from_numpy(to_nchw(x))).numpy())
  assert got.shape == want.shape
  assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize(
  'k,s,p,op',
  [(4, 2, 0, 0), (16, 8, 0, 0), (3, 2, 1, 1), (2, 2, 0, 0), (7, 1, 0, 0), (64, 32, 0, 0)],
)
def test_conv_transpose_matches_torch(torch_module, k, s, p, op):
  torch = torch_module
  cin, cout = 3, 5
  t = torch.nn.ConvTranspose2d(cin, cout, k, s, padding=p, output_padding=op)
  x = np.random.default_rng(3).standard_normal((2, 5, 4, cin)).astype(np.float32)
  layer = layers.ConvTranspose2d(cout, k, s, padding=p, output_padding=op)
  params = {
    'params': {
      'kernel': t.weight.detach().numpy().transpose(2, 3, 1, 0),
      'bias': t.bias.detach().numpy(),
    }
  }
  got = layer.apply(params, jnp.asarray(x))
  with torch.no_grad():
    want = to_nhwc(t(torch.from_numpy(to_nchw(x))).numpy())
  assert got.shape == want.shape
  assert rel_err(got, want) < 1e-5


def test_bilinear_kernel_upsamples_like_interpolation():
  """A bilinear-initialised 4x4/2 deconv doubles a linear ramp into a linear ramp (interior)."""
  k = layers.bilinear_kernel(4)
  np.testing.assert_allclose(k[1:3, 1:3], 0.5625)
  np.testing.assert_allclose(k, np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
  layer = layers.ConvTranspose2d(1, 4, 2, use_bias=False, kernel_init=layers.bilinear_init)
  x = jnp.arange(6, dtype=jnp.float32).reshape(1, 1, 6, 1) * jnp.ones((1, 6, 1, 1))
  v = layer.init(jax.random.key(0), x)
  y = np.asarray(layer.apply(v, x))[0, 4, 2:-2, 0]
  np.testing.assert_allclose(np.diff(y), 0.5, atol=1e-6)


def test_batchnorm_train_step_matches_torch(torch_module):
  torch = torch_module
  bn_t = torch.nn.BatchNorm2d(3)
  x = np.random.default_rng(4).standard_normal((4, 5, 6, 3)).astype(np.float32) * 3 + 1
  bn = layers.BatchNorm()
  v = bn.init(jax.random.key(0), jnp.asarray(x), train=False)
  y, new = bn.apply(v, jnp.asarray(x), train=True, mutable=['batch_stats'])
  bn_t.train()
  yt = bn_t(torch.from_numpy(to_nchw(x)))
  assert rel_err(y, to_nhwc(yt.detach().numpy())) < 1e-5
  np.testing.assert_allclose(
    new['batch_stats']['mean'], bn_t.running_mean.numpy(), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(new['batch_stats']['var'], bn_t.running_var.numpy(), rtol=1e-5)


POOL_CASES = [
  # (shape, window, ceil_mode): odd sizes (partial windows kept or dropped), 3x3 windows
  ((2, 7, 9, 3), 2, True),
  ((2, 7, 9, 3), 2, False),
  ((1, 8, 6, 2), 2, False),
  ((1, 10, 11, 4), 3, True),
  ((1, 1, 1, 2), 2, True),
]


@pytest.mark.parametrize('shape,window,ceil_mode', POOL_CASES)
def test_max_pool2d_equals_flax(shape, window, ceil_mode):
  """Values and gradients equal nn.max_pool's (reduce_window / select-and-scatter), ties included."""
  rng = np.random.default_rng(sum(shape))
  # ReLU-like input: whole windows of zeros and repeated maxima, where the
  # gradient must go to the first maximum only.
  x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
  x[0, 0, : min(2, shape[2])] = 1.0
  x = jnp.asarray(x)

  def ref(x):
    if not ceil_mode:
      return nn.max_pool(x, (window, window), (window, window))
    pad = ((0, -x.shape[1] % window), (0, -x.shape[2] % window))
    return nn.max_pool(x, (window, window), (window, window), padding=pad)

  def fast(x):
    return ops.max_pool2d(x, window, ceil_mode=ceil_mode)

  def loss(f):
    # A different weight per output, so a gradient sent to the wrong element is seen.
    return lambda x: jnp.sum(jnp.sin(f(x)) * (1.0 + jnp.arange(f(x).size).reshape(f(x).shape)))

  y, y_ref = jax.jit(fast)(x), jax.jit(ref)(x)
  assert y.shape == y_ref.shape
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  g, g_ref = jax.jit(jax.grad(loss(fast)))(x), jax.jit(jax.grad(loss(ref)))(x)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))


def test_max_pool2d_rejects_bad_input():
  with pytest.raises(ValueError, match='rank 4'):
    ops.max_pool2d(jnp.ones((4, 4)))
  with pytest.raises(ValueError, match='window'):
    ops.max_pool2d(jnp.ones((1, 4, 4, 1)), 0)
  with pytest.raises(ValueError, match='floor mode'):
    ops.max_pool2d(jnp.ones((1, 1, 4, 1)), 2)
