"""DilatedNet (Yu & Koltun): parameter counts, output geometry of both paddings, parity with the
Caffe-layout PyTorch model, identity-initialised context module, gradients, bad inputs."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  assert_every_gradient_nonzero,
  assert_torch_parity,
  n_params,
  numpy_init,
  randomize_torch,
  rel_err,
  to_nchw,
  to_nhwc,
)

import jaxseg
from jaxseg.models.dilatednet import ContextModule, identity_init, reflect_pad, zoom_bilinear
from jaxseg.weights.core import flat_key_map, get_layout

VGG_CONVS = 14_714_688
FRONT = VGG_CONVS + (7 * 7 * 512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 21 + 21)
LARGE = [21, 42, 42, 84, 168, 336, 672, 672, 21]
COUNTS = {
  None: FRONT,
  'basic': FRONT + 7 * (9 * 21 * 21 + 21) + (21 * 21 + 21),
  'large': FRONT
  + sum(
    (9 if i < 7 else 1) * cin * cout + cout
    for i, (cin, cout) in enumerate(zip(LARGE[:-1], LARGE[1:], strict=True))
  ),
}
TINY = 1 / 16  # VGG channels 4, 8, 16, 32, 32 and fc6/fc7 256: the parity tests run in seconds


def init_shapes(model, x):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


@pytest.mark.parametrize('context', [None, 'basic', 'large'])
def test_param_count_and_shapes(context):
  """Full width, both paddings (jax.eval_shape: nothing is computed)."""
  assert COUNTS == {None: 134_346_581, 'basic': 134_374_973, 'large': 141_149_720}
  for padding, size in (('reflect_valid', (65, 97)), ('same', (64, 64))):
    model = jaxseg.create_model('dilatednet', num_classes=21, context=context, padding=padding)
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables = init_shapes(model, x)
    assert n_params(variables['params']) == COUNTS[context]
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.shape == (2, *size, 21) and out.dtype == jnp.float32
  # The backbone contract: backbone_spec rebuilds exactly variables['params']['backbone'].
  name, kwargs = model.backbone_spec()
  backbone = jaxseg.create_backbone(name, **kwargs)
  bvars = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), x)
  assert jax.tree_util.tree_map(lambda a: a.shape, bvars['params']) == jax.tree_util.tree_map(
    lambda a: a.shape, variables['params']['backbone']
  )


@pytest.mark.parametrize('padding', ['reflect_valid', 'same'])
def test_score_map_is_ceil_h_over_8(padding):
  """Both geometries give a ceil(H/8) x ceil(W/8) score map (the reference: 8k + 2*186 -> k)."""
  model = jaxseg.create_model('dilatednet', num_classes=2, width=TINY, padding=padding)
  sizes = [(8, 9), (15, 16), (17, 23), (24, 25), (33, 500), (187, 501)]
  if padding == 'reflect_valid':
    sizes += [(1, 2), (3, 7)]  # any size: the margin reflects again
  for size in sizes:
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    variables = init_shapes(model, x)
    out, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True), variables, x
    )
    inter = state['intermediates']
    want = tuple(math.ceil(s / 8) for s in size)
    assert inter['final']['__call__'][0].shape[1:3] == want, size
    assert inter['context']['ctx_final']['__call__'][0].shape[1:3] == want, size
    assert out.shape == (1, *size, 2)


def cv2_reflect_101(p: int, n: int) -> int:
  """OpenCV's borderInterpolate for BORDER_REFLECT_101 (what fyu/dilation pads with)."""
  if n == 1:
    return 0
  while not 0 <= p < n:
    p = -p if p < 0 else 2 * n - 2 - p
  return p


def test_reflect_pad_is_opencv_reflect_101(torch_module):
  from torch_ref.dilatednet import reflect_pad as torch_reflect_pad

  rng = np.random.default_rng(0)
  for h, w, margin in ((1, 2, 9), (3, 7, 10), (5, 4, 3), (12, 9, 40)):
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    rows = [cv2_reflect_101(p, h) for p in range(-margin, h + margin)]
    cols = [cv2_reflect_101(p, w) for p in range(-margin, w + margin)]
    want = x[:, rows][:, :, cols]
    np.testing.assert_array_equal(np.asarray(reflect_pad(jnp.asarray(x), margin)), want)
    got = torch_reflect_pad(torch_module.from_numpy(to_nchw(x)), margin)
    np.testing.assert_array_equal(to_nhwc(got.numpy()), want)


def test_zoom_is_the_reference_interp_map():
  """fyu/dilation's util.interp_map, written as its loops; the last score repeats past the end."""
  rng = np.random.default_rng(0)
  scores = rng.standard_normal((1, 3, 4, 2)).astype(np.float32)
  ext = np.pad(scores, ((0, 0), (0, 1), (0, 1), (0, 0)), mode='edge')
  for height, width in ((24, 32), (17, 25), (20, 29)):
    want = np.zeros((1, height, width, 2), np.float32)
    for h in range(height):
      for w in range(width):
        r0, c0 = h // 8, w // 8
        rt, ct = h / 8 - r0, w / 8 - c0
        v0 = rt * ext[0, r0 + 1, c0] + (1 - rt) * ext[0, r0, c0]
        v1 = rt * ext[0, r0 + 1, c0 + 1] + (1 - rt) * ext[0, r0, c0 + 1]
        want[0, h, w] = (1 - ct) * v0 + ct * v1
    got = np.asarray(zoom_bilinear(jnp.asarray(scores), (height, width)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='3 scores cannot cover 25 pixels'):
    zoom_bilinear(jnp.asarray(scores), (25, 32))


def predict_py_frontend(ref, x, extra=24):
  """fyu/dilation's predict.py for one tile with the front-end alone, on NHWC numpy `x`.

  The image is reflection-padded by 186, the tile extends that by reflection at the bottom and
  right (predict.py pads to its fixed 900 x 900 input; `extra` rows suffice here), the unpadded
  network runs, and `util.interp_map` zooms the scores reading the real scores past the image.
  """
  import torch
  from torch.nn import functional as F
  from torch_ref.dilatednet import reflect_pad as torch_reflect_pad

  _, height, width, _ = x.shape
  tile = F.pad(
    torch_reflect_pad(torch.from_numpy(to_nchw(x)), 186), (0, extra, 0, extra), mode='reflect'
  )
  with torch.no_grad():
    prob = to_nhwc(ref.frontend(tile).numpy())
  out = np.zeros(x.shape[:3] + prob.shape[3:], np.float32)
  for h in range(height):
    for w in range(width):
      r0, c0 = h // 8, w // 8
      rt, ct = h / 8 - r0, w / 8 - c0
      v0 = rt * prob[:, r0 + 1, c0] + (1 - rt) * prob[:, r0, c0]
      v1 = rt * prob[:, r0 + 1, c0 + 1] + (1 - rt) * prob[:, r0, c0 + 1]
      out[:, h, w] = (1 - ct) * v0 + ct * v1
  return out


@pytest.mark.parametrize(
  'padding,context',
  [
    ('reflect_valid', None),
    ('reflect_valid', 'basic'),
    ('reflect_valid', 'large'),
    ('same', 'large'),
  ],
)
def test_parity_with_pytorch(torch_module, padding, context):
  from torch_ref.dilatednet import DilatedNet as TorchDilatedNet

  kwargs = {'context': context, 'padding': padding, 'width': TINY}
  ref = randomize_torch(TorchDilatedNet(n_class=3, **kwargs), seed=1).eval()
  variables = jaxseg.weights.from_torch('dilatednet', ref.state_dict(), **kwargs)
  model = jaxseg.create_model('dilatednet', num_classes=3, **kwargs)
  rng = np.random.default_rng(0)
  # Odd sizes, not multiples of 8; 190 > 186 is one plain reflection, 45, 70 and 9 reflect again.
  sizes = [(45, 70)] + ([(190, 9)] if context is None else [])
  for size in sizes:
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    got = np.asarray(assert_torch_parity('dilatednet', model, variables, ref, x))
    assert got.shape == (2, *size, 3)
    if padding == 'reflect_valid' and context is None and min(size) > 15:
      # The reference's own tiled pipeline agrees away from the last 15 rows and columns, where
      # its larger tile continues the reflection (see jaxseg.models.dilatednet).
      h, w = size[0] - 15, size[1] - 15
      tiled = predict_py_frontend(ref, x)[:, :h, :w]
      assert rel_err(got[:, :h, :w], tiled) < 1e-4, size
  exported = jaxseg.weights.to_torch('dilatednet', variables)
  assert sorted(exported) == sorted(ref.state_dict())
  for k, v in ref.state_dict().items():
    np.testing.assert_array_equal(exported[k], v.numpy())


def test_layout_uses_the_caffe_names():
  model = jaxseg.create_model('dilatednet', num_classes=21)
  variables = init_shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  keys = set(flat_key_map(variables, get_layout('dilatednet').key_fn).values())
  want = {
    f'conv{s}_{i}' for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
  }
  want |= {'fc6', 'fc7', 'final', 'ctx_conv1_1', 'ctx_conv1_2', 'ctx_conv2_1', 'ctx_conv3_1'}
  want |= {'ctx_conv4_1', 'ctx_conv5_1', 'ctx_fc1', 'ctx_final'}
  assert keys == {f'{m}.{leaf}' for m in want for leaf in ('weight', 'bias')}


def test_context_module_starts_as_identity():
  """Identity initialisation (Eqs. 4, 5): non-negative score maps pass through."""
  basic = np.asarray(identity_init(5, 0.0)(jax.random.key(0), (3, 3, 5, 5)))
  want = np.zeros((3, 3, 5, 5), np.float32)
  want[1, 1] = np.eye(5)
  np.testing.assert_array_equal(basic, want)
  large = np.asarray(identity_init(5, 1e-3)(jax.random.key(0), (3, 3, 5, 10)))
  assert np.allclose(large[1, 1][np.arange(10) // 2, np.arange(10)], 0.5)
  assert np.allclose(large[1, 1].sum(0), 0.5, atol=0.01) and 0 < np.std(large[0]) < 2e-3
  # The whole module is the identity up to its small noise, with either padding.
  x = jnp.abs(jax.random.normal(jax.random.key(0), (1, 12, 13, 3)))
  modules = [ContextModule(num_classes=3, size='large', pad_input=p) for p in (False, True)]
  # (rbg keys: threefry's random kernels take seconds to compile on CPU)
  key = jax.random.key(1, impl='rbg')
  ys = jax.jit(lambda x: [m.init_with_output(key, x)[0] for m in modules])(x)
  for y in ys:
    assert y.shape == x.shape and np.max(np.abs(np.asarray(y) - np.asarray(x))) < 0.1


def test_tiny_forward_backward():
  model = jaxseg.create_model('dilatednet', num_classes=3, width=1 / 32)
  x = jax.random.normal(jax.random.key(1), (2, 21, 26, 3))
  variables = numpy_init(model, x)

  def loss(params):
    y = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)})
    return jnp.mean(jax.nn.logsumexp(y, axis=-1) - y[..., 0]), y

  grads, y = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  assert y.shape == (2, 21, 26, 3) and bool(jnp.all(jnp.isfinite(y)))
  assert_every_gradient_nonzero(grads)


def test_bad_inputs():
  x16 = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  with pytest.raises(ValueError, match="context must be 'large', 'basic' or None, got 'huge'"):
    init_shapes(jaxseg.create_model('dilatednet', num_classes=2, context='huge'), x16)
  with pytest.raises(ValueError, match="padding must be 'reflect_valid' or 'same', got 'valid'"):
    init_shapes(jaxseg.create_model('dilatednet', num_classes=2, padding='valid'), x16)
  same = jaxseg.create_model('dilatednet', num_classes=2, width=1 / 32, padding='same')
  with pytest.raises(ValueError, match=r'H and W >= 8, got \(16, 5\)'):
    init_shapes(same, jax.ShapeDtypeStruct((1, 16, 5, 3), jnp.float32))

  # The unpadded front-end alone (what 'reflect_valid' runs on the padded input) needs 181.
  def backbone_shapes(name, size):
    backbone = jaxseg.create_backbone(name, width=1 / 32, padding='valid')
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    return jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x), x)

  backbone_shapes('vgg16_dilated', (181, 181))
  with pytest.raises(ValueError, match=r'H and W >= 181, got \(180, 200\)'):
    backbone_shapes('vgg16_dilated', (180, 200))
  with pytest.raises(
    ValueError, match="'valid' with style 'dilated', got 'valid' with style 'deeplab'"
  ):
    backbone_shapes('vgg16_deeplab', (200, 200))
