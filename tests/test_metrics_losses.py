"""Metrics against a NumPy confusion-matrix reference; losses against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses, metrics


def numpy_confusion(labels, preds, n, ignore=255):
  cm = np.zeros((n, n), np.int64)
  for t, p in zip(labels.ravel(), preds.ravel(), strict=True):
    if t != ignore:
      cm[t, p] += 1
  return cm


def test_confusion_matrix_matches_numpy_with_ignore():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (3, 17, 13))
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = rng.integers(0, 5, (3, 17, 13))
  got = np.asarray(jax.jit(lambda a, b: metrics.confusion_matrix(a, b, 5))(labels, preds))
  np.testing.assert_array_equal(got, numpy_confusion(labels, preds, 5))


def test_scores_reference_values():
  # rows = ground truth, cols = predictions
  cm = np.array([[3, 1, 0, 0], [2, 4, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
  s = metrics.scores(cm)
  iou = [
    3 / (4 + 5 - 3),
    4 / (6 + 5 - 4),
    0.0,
  ]  # class 2 predicted never, labelled once; class 3 only predicted
  iou3 = 0 / (0 + 1 - 0)
  np.testing.assert_allclose(s['per_class_iou'][:3], iou)
  np.testing.assert_allclose(s['per_class_iou'][3], iou3)
  np.testing.assert_allclose(s['miou'], np.mean(iou + [iou3]))
  np.testing.assert_allclose(s['pixel_acc'], 7 / 11)
  np.testing.assert_allclose(s['mean_acc'], np.mean([3 / 4, 4 / 6, 0 / 1]))  # class 3 has no labels
  np.testing.assert_allclose(s['fwiou'], (4 * iou[0] + 6 * iou[1] + 1 * iou[2]) / 11)


def test_absent_classes_are_excluded_not_zero():
  cm = np.zeros((4, 4), np.int64)
  cm[0, 0], cm[1, 1] = 10, 5
  s = metrics.scores(cm)
  assert s['miou'] == 1.0 and s['mean_acc'] == 1.0
  assert np.isnan(s['per_class_iou'][2]) and np.isnan(s['per_class_iou'][3])


def test_global_confusion_differs_from_batch_average():
  """mIoU from the summed matrix is not the mean of per-batch mIoUs (the classic bug)."""
  a = metrics.confusion_matrix(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), 2)
  b = metrics.confusion_matrix(np.array([1, 1]), np.array([1, 1]), 2)
  total = metrics.scores(np.asarray(a) + np.asarray(b))['miou']
  averaged = np.mean([metrics.scores(a)['miou'], metrics.scores(b)['miou']])
  np.testing.assert_allclose(total, np.mean([3 / 4, 2 / 3]))
  assert not np.isclose(total, averaged)


def test_metric_input_errors():
  with pytest.raises(ValueError, match=r'\[0, 3\) or the ignore index 255; found \[7\]'):
    metrics.confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
  with pytest.raises(ValueError, match='shape'):
    metrics.confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
  with pytest.raises(TypeError, match='integers'):
    metrics.confusion_matrix(np.zeros(3), np.zeros(3), 3)
  with pytest.raises(ValueError, match='num_classes'):
    metrics.confusion_matrix(np.zeros(3, int), np.zeros(3, int), 0)


@pytest.mark.parametrize('weighted', [False, True])
def test_cross_entropy_matches_torch(torch_module, weighted):
  torch = torch_module
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((2, 5, 7, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (2, 5, 7))
  labels[0, :2] = 255
  w = np.array([0.5, 2.0, 1.0, 3.0], np.float32) if weighted else None
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weights=w)
  ref = torch.nn.functional.cross_entropy(
    torch.from_numpy(logits.transpose(0, 3, 1, 2)),
    torch.from_numpy(labels),
    ignore_index=255,
    weight=None if w is None else torch.from_numpy(w),
  )
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def test_cross_entropy_all_ignored_is_zero_with_finite_grad():
  logits = jnp.ones((1, 3, 3, 2))
  labels = jnp.full((1, 3, 3), 255)
  assert float(losses.cross_entropy(logits, labels)) == 0.0
  g = jax.grad(lambda z: losses.cross_entropy(z, labels))(logits)
  assert np.all(np.isfinite(g)) and not np.any(g)


def test_cross_entropy_bad_input():
  with pytest.raises(ValueError, match=r'\[0, 2\) or the ignore index 255; found \[5\]'):
    losses.cross_entropy(jnp.zeros((1, 2, 2, 2)), jnp.array([[[0, 5], [1, 1]]]))
  with pytest.raises(ValueError, match='labels must be'):
    losses.cross_entropy(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 3, 2), int))


def test_median_frequency_weights():
  # class pixels and pixels of the images each class appears in
  w = losses.median_frequency_weights([100, 10, 0, 50], [1000, 200, 0, 100])
  freq = np.array([0.1, 0.05, 0.5])
  np.testing.assert_allclose(w[[0, 1, 3]], np.median(freq) / freq, rtol=1e-6)
  assert w[2] == 0
  masks = [np.array([[0, 0], [1, 255]]), np.array([[0, 0], [0, 0]])]
  w2 = losses.median_frequency_from_masks(masks, 2)
  f = np.array([6 / 7, 1 / 3])  # class 0: 6 px over 3 + 4 valid px; class 1: 1 px over 3
  np.testing.assert_allclose(w2, np.median(f) / f, rtol=1e-6)
