"""Input validation shared by the models and backbones.

Every registered model and backbone calls `check_image_batch` first thing in its `__call__`,
so a wrong input fails the same way at `init` and at `apply`, before any parameter is created
from a misread shape (an NCHW batch would otherwise build a network for 64 input channels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _rank_hint(shape: tuple[int, ...], channels: int | None) -> str:
  """A fix for the common rank mistakes: one image without its batch axis, an NCHW image."""
  if len(shape) != 3:
    return ''
  if channels is not None and shape[0] == channels and shape[-1] != channels:
    return '; it looks like one CHW image: use x.transpose(1, 2, 0)[None]'
  if channels is None or shape[-1] == channels:
    return '; it looks like one HWC image: add a batch axis with x[None]'
  return ''


def check_image_batch(
  x: Array,
  name: str,
  *,
  channels: int | None = None,
  min_size: int = 1,
  min_size_reason: str = '',
) -> None:
  """Validates a model input: an NHWC floating-point batch with the expected channels and size.

  Args:
    x: the input (an array or a `jax.ShapeDtypeStruct`).
    name: the model or backbone named in the messages.
    channels: input channels the network is built for; None accepts any.
    min_size: smallest H and W the network takes.
    min_size_reason: why `min_size` holds, appended to its message (e.g. ' so that ...').

  Raises:
    ValueError: the rank, the channel axis or the size is wrong; the message names the
      expected layout and the shape that came, and how to transpose an NCHW batch.
    TypeError: the input is not floating point (e.g. uint8 pixels not yet normalised).
  """
  layout = f'(N, H, W, {"C" if channels is None else channels})'
  if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
    raise ValueError(f'{name} expects an NHWC batch of rank 4 {layout}, got {type(x).__name__}.')
  shape = tuple(x.shape)
  if len(shape) != 4:
    hint = _rank_hint(shape, channels)
    raise ValueError(f'{name} expects an NHWC batch of rank 4 {layout}, got shape {shape}{hint}.')
  if channels is not None and shape[-1] != channels:
    hint = ''
    if shape[1] == channels:
      hint = '; it looks like NCHW: transpose with x.transpose(0, 2, 3, 1)'
    raise ValueError(
      f'{name} expects {channels} input channels in an NHWC batch {layout}, got shape '
      f'{shape}{hint}.'
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f'{name} expects a floating-point input (normalised image), got dtype {x.dtype}; '
      'normalise first, e.g. jaxseg.data.normalize(images) for uint8 RGB.'
    )
  # Symbolic sizes (jax.export shape polymorphism) are checked when the artifact is called.
  concrete = all(isinstance(d, (int, np.integer)) for d in shape[1:3])
  if concrete and min(shape[1], shape[2]) < min_size:
    raise ValueError(f'{name} needs H and W >= {min_size}{min_size_reason}, got {shape[1:3]}.')
