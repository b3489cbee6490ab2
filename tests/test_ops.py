"""Ops and shared layers against PyTorch: argmax pooling/unpooling, resize, conv, transposed conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err, to_nchw, to_nhwc
from jaxseg import layers, ops


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (1, 7, 9, 2), (2, 1, 1, 4), (1, 5, 2, 1), (1, 13, 11, 16)])
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
  tv, ti = torch.nn.functional.max_pool2d(torch.from_numpy(to_nchw(x)), 2, 2, ceil_mode=True, return_indices=True)
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
  (torch.sin(torch.nn.functional.max_unpool2d(v * 2.0, i, 2, 2, output_size=x.shape[1:3])) ** 2).sum().backward()
  assert rel_err(g, to_nhwc(xt.grad.numpy())) < 1e-5


def test_unpool_rejects_mismatched_indices():
  v, i = ops.max_pool_with_argmax(jnp.ones((1, 4, 4, 2)))
  with pytest.raises(ValueError, match='indices shape'):
    ops.max_unpool(v, i[..., :1], (4, 4))
  with pytest.raises(ValueError, match='rank 4'):
    ops.max_pool_with_argmax(jnp.ones((4, 4)))


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('src,dst', [((7, 9), (13, 4)), ((5, 5), (21, 17)), ((16, 12), (8, 6)), ((1, 3), (4, 4))])
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
    cin, cout, kw['kernel_size'], stride=kw.get('strides', 1), padding=kw['padding'],
    dilation=kw.get('dilation', 1), groups=kw.get('groups', 1),
  )
  x = np.random.default_rng(2).standard_normal((2, 29, 31, cin)).astype(np.float32)
  conv = layers.Conv2d(cout, **kw)
  params = {'params': {'kernel': conv_t.weight.detach().numpy().transpose(2, 3, 1, 0), 'bias': conv_t.bias.detach().numpy()}}
  got = conv.apply(params, jnp.asarray(x))
  with torch.no_grad():
    want = to_nhwc(conv_t(torch.from_numpy(to_nchw(x))).numpy())
  assert got.shape == want.shape
  assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize('k,s,p,op', [(4, 2, 0, 0), (16, 8, 0, 0), (3, 2, 1, 1), (2, 2, 0, 0), (7, 1, 0, 0), (64, 32, 0, 0)])
def test_conv_transpose_matches_torch(torch_module, k, s, p, op):
  torch = torch_module
  cin, cout = 3, 5
  t = torch.nn.ConvTranspose2d(cin, cout, k, s, padding=p, output_padding=op)
  x = np.random.default_rng(3).standard_normal((2, 5, 4, cin)).astype(np.float32)
  layer = layers.ConvTranspose2d(cout, k, s, padding=p, output_padding=op)
  params = {'params': {'kernel': t.weight.detach().numpy().transpose(2, 3, 1, 0), 'bias': t.bias.detach().numpy()}}
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
  np.testing.assert_allclose(new['batch_stats']['mean'], bn_t.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['batch_stats']['var'], bn_t.running_var.numpy(), rtol=1e-5)
