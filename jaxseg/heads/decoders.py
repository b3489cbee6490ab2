"""Decoders shared by several models.

`unpool_decoder` is the decoder of SegNet (Badrinarayanan et al., TPAMI 2017)
and of DeconvNet's deconvolution network (Noh et al., ICCV 2015): per encoder
stage, in reverse, max-unpooling with that stage's pooling indices (a scatter,
no learned upsampling) to the size the stage had before pooling, then
conv-BN-ReLU layers.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from jaxseg import layers
from jaxseg.backbones.vgg import VGG16_STAGES, scaled_channels
from jaxseg.ops import max_unpool

Array = jax.Array

# A decoder: (encoder stage, ((layer name, in channels, out channels), ...)) in forward order.
DecoderStages = Sequence[tuple[int, Sequence[tuple[str, int, int]]]]

_LAST_CONV = {stage: f'conv{stage}_{n}' for stage, n, _ in VGG16_STAGES}


def unpool_decoder(
  x: Array, feats: dict[str, Array], stages: DecoderStages, *, width: float, train: bool, dtype: Any
) -> Array:
  """Runs `stages` on `x`, unpooling with a `VGG16(return_indices=True)` encoder's features.

  Reads `pool{s}_indices` and, for the pre-pool size, `conv{s}_{n}` (the
  stage's last conv) of each stage s; odd sizes round-trip exactly. Every layer
  is a 3x3 conv-BN-ReLU named as in `stages`, a submodule of the calling model.
  """
  for stage, block in stages:
    size = tuple(feats[_LAST_CONV[stage]].shape[1:3])
    x = max_unpool(x, feats[f'pool{stage}_indices'], size, window=2)
    for name, _, out_ch in block:
      cbr = layers.ConvBNReLU(scaled_channels(out_ch, width), 3, padding=1, dtype=dtype, name=name)
      x = cbr(x, train=train)
  return x
