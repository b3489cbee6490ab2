"""Input validation shared by the models."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def check_image_batch(
  x: Array, name: str, *, channels: int | None = None, min_size: int = 1
) -> None:
  """Validates a model input: NHWC float array with the expected channels and size."""
  if not hasattr(x, 'ndim') or x.ndim != 4:
    shape = getattr(x, 'shape', type(x).__name__)
    raise ValueError(f'{name} expects an NHWC batch of rank 4 (N, H, W, C), got shape {shape}.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f'{name} expects a floating-point input (normalised image), got dtype {x.dtype}.'
    )
  if channels is not None and x.shape[-1] != channels:
    raise ValueError(
      f'{name} expects {channels} input channels (NHWC, channels last), got {x.shape[-1]} (shape {tuple(x.shape)}).'
    )
  if min(x.shape[1], x.shape[2]) < min_size:
    raise ValueError(f'{name} needs H and W >= {min_size}, got {tuple(x.shape[1:3])}.')
