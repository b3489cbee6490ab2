"""Pixel-wise losses with an ignore label.

`cross_entropy` averages over valid pixels only (PyTorch's
`CrossEntropyLoss(ignore_index=255, reduction='mean')`, weighted mean when
class weights are given): a batch whose pixels are all ignored contributes 0,
never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg.metrics import check_labels

Array = jax.Array


def cross_entropy_sum(
  logits: Array,
  labels: Array,
  *,
  ignore_index: int = 255,
  class_weights: Array | None = None,
) -> tuple[Array, Array]:
  """Summed (weighted) cross-entropy over valid pixels and the summed weight.

  `cross_entropy` is `sum / weight`; data-parallel code sums both across
  devices first so the loss is the mean over the *global* batch's valid pixels.
  Arguments as in `cross_entropy`.
  """
  if logits.ndim != 4:
    raise ValueError(f'logits must be (N, H, W, C), got shape {tuple(logits.shape)}.')
  if labels.shape != logits.shape[:3]:
    raise ValueError(
      f'labels must be (N, H, W) = {tuple(logits.shape[:3])} to match the logits, got {tuple(labels.shape)}.'
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f'labels must be integer class ids, got dtype {labels.dtype}.')
  num_classes = logits.shape[-1]
  check_labels(labels, num_classes, ignore_index)
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  weight = valid.astype(jnp.float32)
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise ValueError(
        f'class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}.'
      )
    weight = weight * class_weights[safe]
  return jnp.sum(ce * weight), jnp.sum(weight)


def cross_entropy(
  logits: Array,
  labels: Array,
  *,
  ignore_index: int = 255,
  class_weights: Array | None = None,
) -> Array:
  """Mean softmax cross-entropy over pixels whose label != ignore_index.

  Args:
    logits: (N, H, W, C) float scores.
    labels: (N, H, W) integer class ids in [0, C) or ignore_index.
    ignore_index: label value excluded from the loss.
    class_weights: optional (C,) weights (e.g. `median_frequency_weights`);
      the mean is then weighted: sum(w[y] * ce) / sum(w[y]).

  Returns:
    Scalar float32 loss; 0 (not NaN) when every pixel is ignored.
  """
  total, weight = cross_entropy_sum(
    logits, labels, ignore_index=ignore_index, class_weights=class_weights
  )
  return safe_divide(total, weight)


def safe_divide(total: Array, weight: Array) -> Array:
  """total / weight, and 0 where weight == 0 (with a finite gradient)."""
  return total / jnp.maximum(weight, 1e-12) * (weight > 0)


def median_frequency_weights(class_pixels, image_pixels) -> np.ndarray:
  """SegNet's median frequency balancing: w_c = median(freq) / freq_c.

  Args:
    class_pixels: (C,) pixels of each class over the training set.
    image_pixels: (C,) total pixels of the images in which each class appears.

  Classes that never appear get weight 0.
  """
  class_pixels = np.asarray(class_pixels, np.float64)
  image_pixels = np.asarray(image_pixels, np.float64)
  if class_pixels.shape != image_pixels.shape or class_pixels.ndim != 1:
    raise ValueError(
      f'class_pixels {class_pixels.shape} and image_pixels {image_pixels.shape} must be equal 1-D.'
    )
  seen = (class_pixels > 0) & (image_pixels > 0)
  if not seen.any():
    raise ValueError('median_frequency_weights: no class has any pixel.')
  freq = np.where(seen, class_pixels / np.where(seen, image_pixels, 1), 0.0)
  med = np.median(freq[seen])
  return np.where(seen, med / np.where(seen, freq, 1), 0.0).astype(np.float32)


def median_frequency_from_masks(masks, num_classes: int, ignore_index: int = 255) -> np.ndarray:
  """`median_frequency_weights` computed from an iterable of (H, W) label masks."""
  class_pixels = np.zeros(num_classes, np.int64)
  image_pixels = np.zeros(num_classes, np.int64)
  for m in masks:
    m = np.asarray(m)
    check_labels(m, num_classes, ignore_index, what='mask')
    valid = m[m != ignore_index]
    counts = np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    class_pixels += counts
    image_pixels += np.where(counts > 0, valid.size, 0)
  return median_frequency_weights(class_pixels, image_pixels)
