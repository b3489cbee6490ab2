"""VGG-16 (Simonyan & Zisserman, 2015), with or without BatchNorm, as a feature extractor.

Returns the feature maps FCN-style heads read: `conv1_2` ... `conv5_3`,
`pool1` ... `pool5` (strides 2 ... 32) and, with `fc='conv'`, `fc6` / `fc7`
(the classifier's fully connected layers as 7x7 VALID and 1x1 convolutions,
each followed by ReLU and channel dropout 0.5, as in FCN).

With `return_indices=True` (ceil-mode pooling only) every pool also returns
its argmax, `pool1_indices` ... `pool5_indices` (PyTorch's
`MaxPool2d(2, 2, ceil_mode=True, return_indices=True)`; the pre-pool size is
that of the stage's last conv, `conv1_2` ... `conv5_3`): the encoder of SegNet
and DeconvNet, whose decoders unpool with them (`jaxseg.heads.unpool_decoder`).

Layer names follow the FCN / pytorch-fcn convention (`conv1_1` ... `conv5_3`,
`fc6`, `fc7`); `jaxseg.weights` maps torchvision's `features.N` /
`classifier.N` keys onto them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxseg import layers, ops
from jaxseg.registry import register_backbone

Array = jax.Array

# (stage, number of convs, channels)
VGG16_STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
CONV_NAMES = tuple(f'conv{s}_{i}' for s, n, _ in VGG16_STAGES for i in range(1, n + 1))
# Channel dropout after fc6 and fc7 (FCN's Caffe prototxts and pytorch-fcn).
FC_DROPOUT = 0.5


def scaled_channels(channels: int, width: float) -> int:
  """Channel count under a width multiplier (every VGG-based model rounds this way)."""
  return max(1, int(round(channels * width)))


def max_pool(x: Array, ceil_mode: bool) -> Array:
  """2x2/2 max pooling; ceil_mode keeps the partial border window (Caffe/FCN)."""
  return ops.max_pool2d(x, 2, ceil_mode=ceil_mode)  # faster gradient on CPU than nn.max_pool's


class VGG16(nn.Module):
  """VGG-16 feature extractor.

  Attributes:
    batch_norm: VGG16-BN (conv-BN-ReLU) instead of conv-ReLU.
    first_padding: padding of conv1_1 (1 normally, 100 in FCN so that any input size works).
    ceil_mode: ceil-mode pooling (FCN/Caffe) instead of floor (torchvision).
    fc: None for the convolutional part only, 'conv' to add fc6 (7x7 VALID, 4096) and fc7 (1x1, 4096).
    return_indices: also return each pool's argmax as `pool{s}_indices` (needs ceil_mode).
    width: channel multiplier (1.0 is VGG-16; smaller values give the tiny
      variants used by the quickstart and fast tests).
    dtype: computation dtype.
  """

  batch_norm: bool = False
  first_padding: int = 1
  ceil_mode: bool = False
  fc: str | None = None
  return_indices: bool = False
  width: float = 1.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
    layers.check_image_batch(x, 'VGG16', channels=3)
    if self.return_indices and not self.ceil_mode:
      raise ValueError(
        'VGG16 return_indices needs ceil_mode=True (argmax pooling keeps partial windows).'
      )
    feats = {}
    for stage, n_convs, ch in VGG16_STAGES:
      ch = scaled_channels(ch, self.width)
      for i in range(1, n_convs + 1):
        name = f'conv{stage}_{i}'
        pad = self.first_padding if name == 'conv1_1' else 1
        if self.batch_norm:
          x = layers.ConvBNReLU(ch, 3, padding=pad, dtype=self.dtype, name=name)(x, train=train)
        else:
          x = nn.relu(layers.Conv2d(ch, 3, padding=pad, dtype=self.dtype, name=name)(x))
      feats[f'conv{stage}_{n_convs}'] = x
      if self.return_indices:
        x, feats[f'pool{stage}_indices'] = ops.max_pool_with_argmax(x, 2)
      else:
        x = max_pool(x, self.ceil_mode)
      feats[f'pool{stage}'] = x
    if self.fc == 'conv':
      if min(x.shape[1:3]) < 7:
        raise ValueError(
          f'VGG16 fc6 is a 7x7 VALID convolution and needs pool5 of at least 7x7, got {tuple(x.shape[1:3])}; '
          'use a larger input (>= 193 px with first_padding=1, any size with FCN padding 100).'
        )
      fc = scaled_channels(4096, self.width)
      x = nn.relu(layers.Conv2d(fc, 7, padding=0, dtype=self.dtype, name='fc6')(x))
      x = layers.Dropout2d(FC_DROPOUT)(x, train=train)
      feats['fc6'] = x
      x = nn.relu(layers.Conv2d(fc, 1, padding=0, dtype=self.dtype, name='fc7')(x))
      x = layers.Dropout2d(FC_DROPOUT)(x, train=train)
      feats['fc7'] = x
    elif self.fc is not None:
      raise ValueError(f"VGG16 fc must be None or 'conv', got {self.fc!r}")
    return feats


@register_backbone('vgg16')
def vgg16(**kwargs) -> VGG16:
  return VGG16(batch_norm=False, **kwargs)


@register_backbone('vgg16_bn')
def vgg16_bn(**kwargs) -> VGG16:
  return VGG16(batch_norm=True, **kwargs)
