"""Test-time inference: multi-scale + flip averaging and sliding-window prediction.

Multi-scale inputs with left-right flips, averaging the class probabilities at
the input resolution, is the evaluation protocol of DeepLab (Chen et al. 2017,
"DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", scales 0.5/0.75/1) and PSPNet (Zhao et
al. 2017, "Pyramid Scene Parsing Network"); PSPNet also predicts large images
with overlapping windows (stride 2/3 of the window) averaged where they overlap.

All functions are pure and jit-able (sizes are static Python ints).
`apply_fn(variables, images) -> logits` is e.g.
`lambda v, x: model.apply(v, x, train=False)`; images are normalised NHWC and
logits come back at input resolution, as every jaxseg model returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxseg.ops import resize_bilinear

Array = jax.Array
ApplyFn = Callable[[object, Array], Array]


def _check_images(images) -> None:
  if getattr(images, 'ndim', None) != 4:
    raise ValueError(
      f'expected an image batch (N, H, W, C), got shape {getattr(images, "shape", type(images))}.'
    )


def _probs(apply_fn: ApplyFn, variables, x: Array, num_classes: int) -> Array:
  logits = apply_fn(variables, x)
  if logits.shape[:3] != x.shape[:3] or logits.shape[-1] != num_classes:
    raise ValueError(
      f'apply_fn must return logits (N, H, W, num_classes={num_classes}) at input size '
      f'{tuple(x.shape[:3])}, got {tuple(logits.shape)}.'
    )
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def predict_probs(
  apply_fn: ApplyFn,
  variables,
  images: Array,
  *,
  scales: Sequence[float] = (1.0,),
  flip: bool = False,
  num_classes: int,
) -> Array:
  """Softmax probabilities (N, H, W, num_classes) averaged over scales (and flips).

  Each scale s resizes the input bilinearly to round(s * H) x round(s * W),
  and the probabilities back to H x W (align_corners=False, as torch's
  F.interpolate default). With `flip` the mirrored input counts too.
  """
  _check_images(images)
  if not scales or any(float(s) <= 0 for s in scales):
    raise ValueError(
      f'scales must be a non-empty sequence of positive numbers, got {tuple(scales)}.'
    )
  n, h, w, _ = images.shape
  total = jnp.zeros((n, h, w, num_classes), jnp.float32)
  count = 0
  for s in scales:
    size = (max(1, round(h * float(s))), max(1, round(w * float(s))))
    x = images if size == (h, w) else resize_bilinear(images, size)
    views = [(x, False)] + ([(x[:, :, ::-1], True)] if flip else [])
    for view, flipped in views:
      p = _probs(apply_fn, variables, view, num_classes)
      if flipped:
        p = p[:, :, ::-1]
      if size != (h, w):
        p = resize_bilinear(p, (h, w))
      total = total + p
      count += 1
  return total / count


def predict_logits(
  apply_fn: ApplyFn,
  variables,
  images: Array,
  *,
  scales: Sequence[float] = (1.0,),
  flip: bool = False,
  num_classes: int,
) -> Array:
  """Log of `predict_probs` (softmax of it gives back the averaged probabilities)."""
  probs = predict_probs(
    apply_fn, variables, images, scales=scales, flip=flip, num_classes=num_classes
  )
  return jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """0, stride, 2*stride, ... and a last window flush with the end (one window if size <= window)."""
  if size <= window:
    return [0]
  starts = list(range(0, size - window + 1, stride))
  if starts[-1] != size - window:
    starts.append(size - window)
  return starts


def sliding_window_probs(
  apply_fn: ApplyFn,
  variables,
  images: Array,
  *,
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
  num_classes: int,
) -> Array:
  """Probabilities (N, H, W, num_classes) from overlapping windows, averaged where they overlap.

  Args:
    apply_fn: fn(variables, images) -> logits at input size.
    variables: model variables.
    images: normalised (N, H, W, C) batch.
    window: window (h, w) or side; images smaller than it are padded with 0
      (the mean after normalisation) and the padding is cut off again.
    stride: step (h, w) or side; default 2/3 of the window (PSPNet).
    num_classes: number of classes.
  """
  _check_images(images)
  wh, ww = (window, window) if isinstance(window, int) else (int(window[0]), int(window[1]))
  if stride is None:
    sh, sw = max(1, -(-2 * wh // 3)), max(1, -(-2 * ww // 3))
  else:
    sh, sw = (stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[1]))
  if min(wh, ww, sh, sw) < 1:
    raise ValueError(
      f'window and stride must be positive, got window {(wh, ww)}, stride {(sh, sw)}.'
    )
  n, h, w, _ = images.shape
  ph, pw = max(wh - h, 0), max(ww - w, 0)
  x = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0))) if ph or pw else images
  hh, ww_ = h + ph, w + pw
  positions = [(y, x0) for y in window_starts(hh, wh, sh) for x0 in window_starts(ww_, ww, sw)]
  # All windows in one batch: one call of apply_fn, one compile.
  crops = jnp.concatenate([x[:, y : y + wh, x0 : x0 + ww] for y, x0 in positions], axis=0)
  p = _probs(apply_fn, variables, crops, num_classes).reshape(
    len(positions), n, wh, ww, num_classes
  )
  total = jnp.zeros((n, hh, ww_, num_classes), jnp.float32)
  count = jnp.zeros((1, hh, ww_, 1), jnp.float32)
  for k, (y, x0) in enumerate(positions):
    total = total.at[:, y : y + wh, x0 : x0 + ww].add(p[k])
    count = count.at[:, y : y + wh, x0 : x0 + ww].add(1.0)
  return (total / count)[:, :h, :w]


def sliding_window_logits(
  apply_fn: ApplyFn,
  variables,
  images: Array,
  *,
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
  num_classes: int,
) -> Array:
  """Log of `sliding_window_probs`."""
  probs = sliding_window_probs(
    apply_fn, variables, images, window=window, stride=stride, num_classes=num_classes
  )
  return jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))
