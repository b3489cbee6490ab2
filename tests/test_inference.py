"""Multi-scale/flip averaging against a PyTorch reference, and sliding-window prediction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxseg import inference
from jaxseg.data import transforms

C = 4


def _variables(seed=0):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=(3, C)).astype(np.float32), 'ramp': np.float32(2.0)}


def pixelwise(v, x):
  """A per-pixel model: equivariant to flips, translations and windowing."""
  return jnp.tanh(x) @ v['w']


def positional(v, x):
  """Depends on the row and column: not flip-equivariant, not window-invariant."""
  row = jnp.linspace(-1.0, 1.0, x.shape[1])[None, :, None, None]
  col = jnp.linspace(-1.0, 1.0, x.shape[2])[None, None, :, None]
  k = jnp.arange(C, dtype=jnp.float32)
  return jnp.tanh(x) @ v['w'] + v['ramp'] * (col * k + row * k[::-1])


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(1).normal(size=(2, 13, 17, 3)).astype(np.float32)


def _torch_resize(x_nhwc, size):
  t = torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2)
  return (
    F.interpolate(t, size=size, mode='bilinear', align_corners=False).permute(0, 2, 3, 1).numpy()
  )


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _reference(fn, v, x, scales, flip):
  h, w = x.shape[1:3]
  outs = []
  for s in scales:
    size = (round(h * s), round(w * s))
    xs = _torch_resize(x, size) if size != (h, w) else x
    for f in (False, True) if flip else (False,):
      view = xs[:, :, ::-1] if f else xs
      p = _softmax(np.asarray(fn(v, jnp.asarray(view.copy()))))
      p = p[:, :, ::-1] if f else p
      outs.append(_torch_resize(p, (h, w)) if size != (h, w) else p)
  return np.mean(outs, 0)


def test_single_scale_is_softmax(images):
  v = _variables()
  got = inference.predict_probs(positional, v, images, num_classes=C)
  np.testing.assert_allclose(got, jax.nn.softmax(positional(v, images)), atol=1e-6)
  logits = inference.predict_logits(positional, v, images, num_classes=C)
  np.testing.assert_allclose(jax.nn.softmax(logits), got, atol=1e-6)


@pytest.mark.parametrize(
  'scales, flip', [((1.0,), True), ((0.5, 1.0, 1.5), False), ((0.75, 1.25), True)]
)
def test_multiscale_flip_matches_torch_reference(images, scales, flip):
  v = _variables()
  predict = jax.jit(
    lambda v, x: inference.predict_probs(positional, v, x, scales=scales, flip=flip, num_classes=C)
  )
  got = np.asarray(predict(v, images))
  assert got.shape == (2, 13, 17, C)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got, _reference(positional, v, images, scales, flip), atol=2e-5)


def test_flip_changes_non_equivariant_model_only(images):
  v = _variables()
  a = inference.predict_probs(pixelwise, v, images, flip=True, num_classes=C)
  np.testing.assert_allclose(a, jax.nn.softmax(pixelwise(v, images)), atol=1e-6)
  b = inference.predict_probs(positional, v, images, flip=True, num_classes=C)
  assert np.abs(np.asarray(b) - np.asarray(jax.nn.softmax(positional(v, images)))).max() > 1e-2


@pytest.mark.parametrize('window, stride', [(8, None), ((6, 9), (4, 5)), (20, None)])
def test_sliding_window_per_pixel_model_equals_full_image(images, window, stride):
  v = _variables()
  got = inference.sliding_window_probs(
    pixelwise, v, images, window=window, stride=stride, num_classes=C
  )
  np.testing.assert_allclose(got, jax.nn.softmax(pixelwise(v, images)), atol=1e-6)


def test_sliding_window_averages_overlaps(images):
  v = _variables()
  window, stride = (8, 10), (5, 4)
  got = np.asarray(
    inference.sliding_window_logits(
      positional, v, images, window=window, stride=stride, num_classes=C
    )
  )
  # Independent reference: every window position, explicitly enumerated.
  ys = [0, 5]  # 0 + stride 5 is already flush with the end (13 - 8)
  xs = [0, 4, 17 - 10]  # starts by stride 4, then one flush with the end
  total = np.zeros((2, 13, 17, C))
  count = np.zeros((13, 17, 1))
  for y in ys:
    for x in xs:
      total[:, y : y + 8, x : x + 10] += _softmax(
        np.asarray(positional(v, images[:, y : y + 8, x : x + 10]))
      )
      count[y : y + 8, x : x + 10] += 1
  assert count.min() >= 1
  np.testing.assert_allclose(np.exp(got), total / count, atol=1e-5)
  assert inference.window_starts(13, 8, 5) == [0, 5]
  assert inference.window_starts(17, 10, 4) == [0, 4, 7]
  assert inference.window_starts(5, 8, 4) == [0]


def test_denormalize_jax_matches_numpy(images):
  for mode in ('imagenet', 'caffe'):
    x = transforms.normalize(
      np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8), mode
    )
    np.testing.assert_array_equal(
      transforms.denormalize_jax(x, mode), transforms.denormalize(x, mode)
    )


def test_errors(images):
  v = _variables()
  with pytest.raises(
    ValueError, match=r'expected an image batch \(N, H, W, C\), got shape \(13, 17, 3\)'
  ):
    inference.predict_probs(pixelwise, v, images[0], num_classes=C)
  with pytest.raises(ValueError, match='num_classes=5'):
    inference.predict_probs(pixelwise, v, images, num_classes=5)
  with pytest.raises(ValueError, match='scales must be'):
    inference.predict_probs(pixelwise, v, images, scales=(0.0,), num_classes=C)
  with pytest.raises(ValueError, match='window and stride must be positive'):
    inference.sliding_window_probs(pixelwise, v, images, window=8, stride=0, num_classes=C)
