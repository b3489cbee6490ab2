"""`Apply`: a model's apply function with a chosen convolution lowering and BatchNorm axis."""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from jaxseg.layers.conv import XLA, Conv2d, ConvTranspose2d, Lowering
from jaxseg.layers.norm import BatchNorm


@dataclasses.dataclass(frozen=True)
class Apply:
  """`model.apply` with every `Conv2d` / `ConvTranspose2d` computed by `lowering`, and
  every `BatchNorm` synchronised over the collective axis `batch_axis` (pmap/shard_map).

  Same signature and results as `model.apply` (to float32 rounding for another
  lowering); hashable and compared by value, so it can be the `apply_fn` of a
  train state or a static argument, and two equal `Apply`s share jit caches.
  Under jit with a sharded batch BatchNorm statistics are already global;
  `batch_axis` is for per-device programs (`jax.pmap`, `jax.shard_map`).

  Attributes:
    model: the flax module.
    lowering: the convolution lowering.
    batch_axis: axis name for BatchNorm statistics, or None.
  """

  model: nn.Module
  lowering: Lowering = XLA
  batch_axis: str | None = None

  def __call__(self, variables, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.model.apply(variables, *args, **kwargs)

  def _intercept(self, next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      if isinstance(context.module, (Conv2d, ConvTranspose2d)):
        kwargs = {**kwargs, 'lowering': self.lowering}
      elif isinstance(context.module, BatchNorm) and self.batch_axis is not None:
        kwargs = {**kwargs, 'axis_name': self.batch_axis}
    return next_fun(*args, **kwargs)
