"""Segmentation metrics from one confusion matrix accumulated over a whole split.

mIoU must come from the confusion matrix of the *whole* evaluation split, not
from an average of per-batch mIoUs (which over-weights small batches and
classes that happen to be absent). `confusion_matrix` is jit-able and is summed
across batches (and devices); `scores` turns the total into the numbers.

Convention: rows are ground-truth classes, columns predicted classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_labels(
  labels, num_classes: int, ignore_index: int | None = 255, what: str = 'labels'
) -> None:
  """Raises if a concrete label array holds values outside [0, num_classes) other than ignore_index."""
  if not _is_concrete(labels):
    return
  arr = np.asarray(labels)
  if arr.size == 0:
    return
  bad = (arr < 0) | (arr >= num_classes)
  if ignore_index is not None:
    bad &= arr != ignore_index
  if bad.any():
    values = np.unique(arr[bad])[:10]
    raise ValueError(
      f'{what} must be in [0, {num_classes}) or the ignore index {ignore_index}; found {values.tolist()} '
      f'({int(bad.sum())} pixels).'
    )


def count_invalid_labels(labels: Array, num_classes: int, ignore_index: int | None = 255) -> Array:
  """Number (int32) of label pixels outside [0, num_classes) that are not `ignore_index`; jit-able.

  The in-jit counterpart of `check_labels`: such pixels make the cross-entropy
  NaN and are left out of `confusion_matrix`, so steps report this count.
  """
  labels = jnp.asarray(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if ignore_index is not None:
    bad &= labels != ignore_index
  return jnp.sum(bad, dtype=jnp.int32)


def confusion_matrix(
  labels: Array, preds: Array, num_classes: int, ignore_index: int | None = 255
) -> Array:
  """(num_classes, num_classes) int32 counts; pixels labelled `ignore_index` are skipped.

  Args:
    labels: integer ground truth of any shape.
    preds: integer predictions, same shape as labels.
    num_classes: number of classes.
    ignore_index: label value to skip (None to skip nothing).

  Out-of-range labels raise when the inputs are concrete; under `jit` they are
  skipped like ignored pixels (`count_invalid_labels` counts them).
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be an integer >= 1, got {num_classes!r}.')
  labels, preds = jnp.asarray(labels), jnp.asarray(preds)
  if labels.shape != preds.shape:
    raise ValueError(f'labels shape {tuple(labels.shape)} != preds shape {tuple(preds.shape)}.')
  for name, a in (('labels', labels), ('preds', preds)):
    if not jnp.issubdtype(a.dtype, jnp.integer):
      raise TypeError(f'{name} must be integers (class ids), got dtype {a.dtype}.')
  check_labels(labels, num_classes, ignore_index)
  check_labels(preds, num_classes, None, what='preds')
  labels = labels.reshape(-1).astype(jnp.int32)
  preds = preds.reshape(-1).astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
  if ignore_index is not None:
    valid &= labels != ignore_index
  index = jnp.where(valid, labels * num_classes + preds, num_classes * num_classes)
  counts = jnp.bincount(index, length=num_classes * num_classes + 1)[:-1]
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def scores(confusion) -> dict:
  """Pixel accuracy, mean class accuracy, mIoU, frequency-weighted IoU and per-class IoU.

  Classes that appear neither in the labels nor in the predictions are left out
  of every mean (their `per_class_iou` entry is NaN); a class only predicted
  has IoU 0 and counts. `mean_acc` averages over classes present in the labels.
  An all-zero matrix gives NaN means (there is nothing to score).
  """
  cm = np.asarray(confusion, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion must be a square matrix, got shape {cm.shape}.')
  tp = np.diag(cm)
  gt = cm.sum(axis=1)
  pred = cm.sum(axis=0)
  total = cm.sum()
  union = gt + pred - tp
  present = union > 0
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(present, tp / np.where(present, union, 1), np.nan)
    acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
    freq = gt / total if total > 0 else np.zeros_like(gt)
  nan = float('nan')
  return {
    'pixel_acc': float(tp.sum() / total) if total > 0 else nan,
    'mean_acc': float(np.nanmean(acc)) if (gt > 0).any() else nan,
    'miou': float(np.nanmean(iou)) if present.any() else nan,
    'fwiou': float(np.sum(freq[present] * iou[present])) if total > 0 else nan,
    'per_class_iou': iou,
  }
