"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer & Darrell, CVPR 2015).

Faithful to the Caffe reference (fcn.berkeleyvision.org, voc-fcn*s) and to its
PyTorch port pytorch-fcn (torchfcn), whose key layout `jaxseg.weights` reads:

* VGG-16 with conv1_1 padded by 100 pixels and ceil-mode pooling, so that any
  input size >= 1 pixel yields a score map that covers the image;
* fc6 as a 7x7 VALID convolution (4096), fc7 as 1x1 (4096), each with ReLU and
  channel dropout 0.5 (`jaxseg.backbones.vgg`);
* zero-initialised 1x1 score layers (`score_fr`, `score_pool4`, `score_pool3`);
* bias-free transposed convolutions initialised to bilinear upsampling
  (`upscore`, `upscore2`, `upscore16`, `upscore_pool4`, `upscore8`);
* the reference crop offsets: 32s output [19:19+H]; 16s pool4 score [5:],
  output [27:]; 8s pool4 score [5:], pool3 score [9:], output [31:]
  (the score and upsampling layers are `jaxseg.heads.fcn_skip_head`).

Paper (PASCAL VOC 2012 test): FCN-8s 62.2 mIoU; reference models on seg11valid
32s / 16s / 8s: 63.6 / 65.0 / 65.5.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.heads import fcn_skip_head
from jaxseg.registry import build_backbone, register_model

Array = jax.Array


class FCN(nn.Module):
  """Fully convolutional network on VGG-16 with 32x, 16x or 8x skip fusion.

  Attributes:
    num_classes: output channels.
    stride: 32, 16 or 8 (FCN-32s, -16s, -8s).
    width: backbone channel multiplier (1.0 = the paper; < 1 for tiny variants).
    dtype: computation dtype (e.g. jnp.bfloat16); logits are returned in float32.
  """

  num_classes: int
  stride: int = 8
  width: float = 1.0
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    """Registered backbone whose variables equal `params['backbone']` (for ImageNet initialisation)."""
    return 'vgg16', dict(first_padding=100, ceil_mode=True, fc='conv', width=self.width)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.stride not in (8, 16, 32):
      raise ValueError(f'FCN stride must be 8, 16 or 32, got {self.stride}.')
    layers.check_image_batch(x, f'FCN-{self.stride}s', channels=3)
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    out = fcn_skip_head(feats, self.num_classes, self.stride, x.shape[1:3], dtype=self.dtype)
    return out.astype(jnp.float32)


@register_model('fcn32s')
def fcn32s(*, num_classes: int, **kwargs) -> FCN:
  return FCN(num_classes=num_classes, stride=32, **kwargs)


@register_model('fcn16s')
def fcn16s(*, num_classes: int, **kwargs) -> FCN:
  return FCN(num_classes=num_classes, stride=16, **kwargs)


@register_model('fcn8s')
def fcn8s(*, num_classes: int, **kwargs) -> FCN:
  return FCN(num_classes=num_classes, stride=8, **kwargs)
