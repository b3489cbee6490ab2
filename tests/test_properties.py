"""Property-based tests (hypothesis) of the ops, metrics and loss against NumPy references.

The references below are written from the definitions (PyTorch semantics for
pooling/unpooling and bilinear resizing, mmseg's confusion-matrix mIoU with an
ignore index, PyTorch's weighted `CrossEntropyLoss(ignore_index=255)`), not
from jaxseg's code. Each property runs 200 examples. Shapes are drawn from
small fixed buckets so JAX compiles each op a bounded number of times; the
values inside each shape are free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxseg import losses, metrics, ops

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (N, H, W, C): odd sizes, 1-pixel planes, sizes smaller than the window, large channel counts.
POOL_SHAPES = [
  (1, 1, 1, 1),
  (1, 1, 2, 3),
  (2, 2, 1, 2),
  (1, 2, 2, 1),
  (1, 3, 3, 2),
  (2, 5, 4, 3),
  (1, 4, 7, 1),
  (1, 7, 7, 2),
  (3, 6, 5, 1),
  (1, 2, 3, 130),
  (1, 3, 1, 257),
  (1, 9, 8, 4),
]


@st.composite
def pool_cases(draw):
  shape = draw(st.sampled_from(POOL_SHAPES))
  window = draw(st.sampled_from([2, 3]))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  # Few distinct values so windows often hold ties (whole zero windows after ReLU are common).
  levels = draw(st.sampled_from([2, 3, 1000]))
  x = rng.integers(-levels // 2, levels // 2 + 1, size=shape).astype(np.float32)
  if draw(st.booleans()):
    x = np.maximum(x, 0.0)
  return x, window


def np_pool_with_argmax(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Ceil-mode max pool, kernel == stride == k; first max in row-major order; index row * W + col."""
  n, h, w, c = x.shape
  ho, wo = -(-h // k), -(-w // k)
  vals = np.zeros((n, ho, wo, c), x.dtype)
  idx = np.zeros((n, ho, wo, c), np.int64)
  for b in range(n):
    for ch in range(c):
      for i in range(ho):
        for j in range(wo):
          best, best_idx = None, None
          for r in range(i * k, min(i * k + k, h)):
            for q in range(j * k, min(j * k + k, w)):
              if best is None or x[b, r, q, ch] > best:  # strict: keeps the first max on ties
                best, best_idx = x[b, r, q, ch], r * w + q
          vals[b, i, j, ch], idx[b, i, j, ch] = best, best_idx
  return vals, idx


def np_unpool(vals: np.ndarray, idx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  n, _, _, c = vals.shape
  h, w = size
  out = np.zeros((n, h * w, c), vals.dtype)
  for b in range(n):
    for ch in range(c):
      out[b, idx[b, ..., ch].ravel(), ch] = vals[b, ..., ch].ravel()
  return out.reshape(n, h, w, c)


_pool = jax.jit(ops.max_pool_with_argmax, static_argnums=1)
_unpool = jax.jit(ops.max_unpool, static_argnums=2)


@SETTINGS
@given(pool_cases())
def test_pool_with_argmax_matches_numpy(case):
  x, k = case
  vals, idx = _pool(x, k)
  ref_vals, ref_idx = np_pool_with_argmax(x, k)
  assert vals.shape == ref_vals.shape and idx.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(vals), ref_vals)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  out = _unpool(vals, idx, x.shape[1:3])
  np.testing.assert_array_equal(np.asarray(out), np_unpool(ref_vals, ref_idx, x.shape[1:3]))


@SETTINGS
@given(pool_cases())
def test_unpool_keeps_exactly_the_maxima(case):
  """Unpool(pool(x)) holds each window's maximum at its argmax and zeros elsewhere; pooling it again gives the same values."""
  x, k = case
  vals, idx = _pool(x, k)
  vals, idx = np.asarray(vals), np.asarray(idx)
  out = np.asarray(_unpool(vals, idx, x.shape[1:3]))
  assert out.shape == x.shape
  n, h, w, c = x.shape
  kept = np.zeros((n, h * w, c), bool)
  kept[np.arange(n)[:, None, None], idx.reshape(n, -1, c), np.arange(c)[None, None, :]] = True
  kept = kept.reshape(x.shape)
  assert int(kept.sum()) == vals.size  # windows do not overlap: one distinct position each
  np.testing.assert_array_equal(out[kept], x[kept])
  np.testing.assert_array_equal(out[~kept], 0.0)
  again = np.asarray(_pool(np.where(kept, x, -np.inf).astype(np.float32), k)[0])
  np.testing.assert_array_equal(again, vals)


# --- confusion matrix / scores ----------------------------------------------------------------

LABEL_SHAPES = [(1,), (7,), (2, 3, 5), (1, 9, 9), (4, 4, 4)]


@st.composite
def label_cases(draw):
  shape = draw(st.sampled_from(LABEL_SHAPES))
  num_classes = draw(st.sampled_from([1, 2, 3, 5, 21]))
  seed = draw(st.integers(0, 2**31 - 1))
  ignore_frac = draw(st.sampled_from([0.0, 0.3, 1.0]))
  rng = np.random.default_rng(seed)
  # Draw classes from a random subset so some classes are absent from labels, preds or both.
  subset = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
  labels = rng.choice(subset, size=shape).astype(np.int32)
  labels[rng.random(shape) < ignore_frac] = 255
  preds = rng.choice(subset, size=shape).astype(np.int32)
  flip = rng.random(shape) < 0.5  # half the pixels predicted right
  preds[flip & (labels != 255)] = labels[flip & (labels != 255)]
  return labels, preds, num_classes


def np_confusion(labels, preds, num_classes, ignore_index=255):
  cm = np.zeros((num_classes, num_classes), np.int64)
  for t, p in zip(labels.ravel(), preds.ravel(), strict=True):
    if t != ignore_index:
      cm[t, p] += 1
  return cm


def np_scores(cm):
  """mIoU etc. over the classes present in the labels or the predictions."""
  k = cm.shape[0]
  ious, accs, fw = [], [], 0.0
  total = cm.sum()
  for c in range(k):
    tp, gt, pr = cm[c, c], cm[c, :].sum(), cm[:, c].sum()
    if gt + pr - tp > 0:
      ious.append(tp / (gt + pr - tp))
      fw += gt / total * ious[-1]
    if gt > 0:
      accs.append(tp / gt)
  return {
    'pixel_acc': np.trace(cm) / total,
    'mean_acc': np.mean(accs),
    'miou': np.mean(ious),
    'fwiou': fw,
  }


@SETTINGS
@given(label_cases())
def test_confusion_matrix_and_scores_match_numpy(case):
  labels, preds, num_classes = case
  cm = np.asarray(metrics.confusion_matrix(labels, preds, num_classes))
  ref = np_confusion(labels, preds, num_classes)
  np.testing.assert_array_equal(cm, ref)
  got = metrics.scores(cm)
  if ref.sum() == 0:  # every pixel ignored: nothing to score
    assert all(np.isnan(got[k]) for k in ('pixel_acc', 'mean_acc', 'miou', 'fwiou'))
    return
  want = np_scores(ref)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
  absent = (ref.sum(0) == 0) & (ref.sum(1) == 0)
  assert np.all(np.isnan(got['per_class_iou'][absent]))
  assert np.all(np.isfinite(got['per_class_iou'][~absent]))


@SETTINGS
@given(label_cases(), st.integers(1, 4))
def test_confusion_matrix_is_additive_over_batches(case, parts):
  """Summing per-batch matrices equals the matrix of the whole split (the reason mIoU uses it)."""
  labels, preds, num_classes = case
  flat_l, flat_p = labels.ravel(), preds.ravel()
  chunks = np.array_split(np.arange(flat_l.size), parts)
  total = sum(np_confusion(flat_l[c], flat_p[c], num_classes) for c in chunks)
  np.testing.assert_array_equal(
    np.asarray(metrics.confusion_matrix(labels, preds, num_classes)), total
  )


# --- resize and crop --------------------------------------------------------------------------

# (H, W) -> (h, w): up, down, mixed, odd, 1-pixel sources and targets, identity.
RESIZE_PAIRS = [
  ((1, 1), (3, 2)),
  ((2, 2), (1, 1)),
  ((3, 5), (7, 2)),
  ((4, 6), (2, 3)),
  ((5, 5), (13, 13)),
  ((8, 4), (3, 8)),
  ((6, 8), (6, 8)),
  ((13, 2), (5, 1)),
]


@st.composite
def resize_cases(draw):
  (h, w), size = draw(st.sampled_from(RESIZE_PAIRS))
  c = draw(st.sampled_from([1, 3]))
  seed = draw(st.integers(0, 2**31 - 1))
  x = np.random.default_rng(seed).standard_normal((2, h, w, c)).astype(np.float32)
  return x, size, draw(st.booleans())


_resize = jax.jit(ops.resize_bilinear, static_argnums=1, static_argnames='align_corners')


@SETTINGS
@given(case=resize_cases())
def test_resize_matches_torch_interpolate(case, torch_module):
  torch = torch_module
  x, size, align = case
  got = np.asarray(_resize(x, size, align_corners=align))
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size, mode='bilinear', align_corners=align
  )
  ref = ref.numpy().transpose(0, 2, 3, 1)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(resize_cases(), st.floats(-1e3, 1e3, allow_nan=False, width=32))
def test_resize_invariants(case, value):
  x, size, align = case
  # A constant image stays constant (interpolation weights sum to 1).
  const = np.full_like(x, value)
  np.testing.assert_allclose(
    np.asarray(_resize(const, size, align_corners=align)), value, rtol=1e-5, atol=1e-4
  )
  # Resizing to the same size is the identity.
  np.testing.assert_array_equal(np.asarray(_resize(x, x.shape[1:3], align_corners=align)), x)
  y = np.asarray(_resize(x, size, align_corners=align))
  # Bilinear interpolation is a convex combination: it never leaves the input range.
  assert y.min() >= x.min() - 1e-5 and y.max() <= x.max() + 1e-5
  if align:
    # align_corners=True maps corner pixels onto corner pixels.
    h, w = x.shape[1:3]
    oh, ow = size
    for (i, j), (oi, oj) in [((0, 0), (0, 0)), ((h - 1, w - 1), (oh - 1, ow - 1))]:
      if (oh > 1 or h == 1) and (ow > 1 or w == 1):
        np.testing.assert_allclose(y[:, oi, oj], x[:, i, j], rtol=1e-5, atol=1e-5)
    # ... and a linear ramp stays exactly a ramp.
    if h > 1 and oh > 1:
      ramp = np.broadcast_to(np.arange(h, dtype=np.float32)[None, :, None, None], x.shape).copy()
      yr = np.asarray(_resize(ramp, size, align_corners=True))
      want = np.linspace(0, h - 1, oh, dtype=np.float64)[None, :, None, None]
      np.testing.assert_allclose(yr, np.broadcast_to(want, yr.shape), atol=1e-4)
  elif x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
    # Halving with align_corners=False samples at pixel-pair midpoints: 2x2 average pooling.
    n, h, w, c = x.shape
    half = np.asarray(_resize(x, (h // 2, w // 2), align_corners=False))
    avg = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    np.testing.assert_allclose(half, avg, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
  st.sampled_from([(1, 1), (3, 4), (5, 5), (8, 3)]),
  st.integers(0, 8),
  st.integers(0, 8),
  st.integers(0, 9),
  st.integers(0, 9),
)
def test_crop_invariants(hw, oy, ox, ch, cw):
  h, w = hw
  x = np.arange(2 * h * w * 3, dtype=np.float32).reshape(2, h, w, 3)
  np.testing.assert_array_equal(np.asarray(ops.center_crop(x, (h, w))), x)
  if oy + ch <= h and ox + cw <= w:
    np.testing.assert_array_equal(
      np.asarray(ops.crop(x, (oy, ox), (ch, cw))), x[:, oy : oy + ch, ox : ox + cw]
    )
  else:
    with pytest.raises(ValueError, match='does not fit'):
      ops.crop(x, (oy, ox), (ch, cw))
  if ch <= h and cw <= w:
    c = np.asarray(ops.center_crop(x, (ch, cw)))
    top, left = (h - ch) // 2, (w - cw) // 2
    np.testing.assert_array_equal(c, x[:, top : top + ch, left : left + cw])
    # The margins differ by at most one pixel (the extra one goes bottom/right).
    assert 0 <= (h - ch - top) - top <= 1 and 0 <= (w - cw - left) - left <= 1


# --- loss -------------------------------------------------------------------------------------

LOSS_SHAPES = [(1, 1, 1, 2), (2, 3, 5, 4), (1, 4, 4, 21), (2, 2, 3, 1)]


@st.composite
def loss_cases(draw):
  shape = draw(st.sampled_from(LOSS_SHAPES))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
  logits = (rng.standard_normal(shape) * scale).astype(np.float32)
  labels = rng.integers(0, shape[-1], size=shape[:3]).astype(np.int32)
  labels[rng.random(shape[:3]) < draw(st.sampled_from([0.0, 0.5, 1.0]))] = 255
  weights = (
    rng.uniform(0.0, 3.0, size=shape[-1]).astype(np.float32) if draw(st.booleans()) else None
  )
  return logits, labels, weights


def np_cross_entropy(logits, labels, weights=None, ignore_index=255):
  z = logits.astype(np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  valid = labels != ignore_index
  if not valid.any():
    return 0.0
  y = labels[valid]
  ce = -logp[valid][np.arange(y.size), y]
  w = np.ones(logits.shape[-1]) if weights is None else weights.astype(np.float64)
  if w[y].sum() == 0:
    return 0.0
  return float((w[y] * ce).sum() / w[y].sum())


_loss = jax.jit(losses.cross_entropy)
_loss_sum = jax.jit(losses.cross_entropy_sum)
_loss_grad = jax.jit(jax.value_and_grad(losses.cross_entropy))


@SETTINGS
@given(loss_cases())
def test_cross_entropy_matches_numpy(case):
  logits, labels, weights = case
  got = float(_loss(logits, labels, class_weights=weights))
  assert got == pytest.approx(np_cross_entropy(logits, labels, weights), rel=2e-5, abs=1e-5)


@SETTINGS
@given(loss_cases())
def test_cross_entropy_all_ignored_is_zero_with_finite_gradient(case):
  logits, labels, weights = case
  labels = np.full_like(labels, 255)
  value, grad = _loss_grad(logits, labels, class_weights=weights)
  assert float(value) == 0.0
  assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


@SETTINGS
@given(loss_cases())
def test_cross_entropy_sum_over_batch_splits_gives_the_global_mean(case):
  """(sum, weight) pairs add across batch shards: their ratio is the mean over the whole batch."""
  logits, labels, weights = case
  parts = [
    _loss_sum(logits[i : i + 1], labels[i : i + 1], class_weights=weights)
    for i in range(logits.shape[0])
  ]
  total = sum(float(p[0]) for p in parts)
  weight = sum(float(p[1]) for p in parts)
  want = np_cross_entropy(logits, labels, weights)
  got = float(losses.safe_divide(jnp.float32(total), jnp.float32(weight)))
  assert got == pytest.approx(want, rel=2e-5, abs=1e-5)
