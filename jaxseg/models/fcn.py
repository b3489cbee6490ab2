"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer & Darrell, CVPR 2015).

Faithful to the Caffe reference (fcn.berkeleyvision.org, voc-fcn*s) and to its
PyTorch port pytorch-fcn (torchfcn), whose key layout `jaxseg.weights` reads:

* VGG-16 with conv1_1 padded by 100 pixels and ceil-mode pooling, so that any
  input size >= 1 pixel yields a score map that covers the image;
* fc6 as a 7x7 VALID convolution (4096), fc7 as 1x1 (4096), each with ReLU and
  channel dropout;
* zero-initialised 1x1 score layers (`score_fr`, `score_pool4`, `score_pool3`);
* bias-free transposed convolutions initialised to bilinear upsampling
  (`upscore`, `upscore2`, `upscore16`, `upscore_pool4`, `upscore8`);
* the reference crop offsets: 32s output [19:19+H]; 16s pool4 score [5:],
  output [27:]; 8s pool4 score [5:], pool3 score [9:], output [31:].

Paper (PASCAL VOC 2012 test): FCN-8s 62.2 mIoU; reference models on seg11valid
32s / 16s / 8s: 63.6 / 65.0 / 65.5.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.backbones.vgg import VGG16FCN
from jaxseg.ops import crop
from jaxseg.registry import register_model

Array = jax.Array


def _upscore(features: int, kernel: int, stride: int, name: str, dtype: Any) -> layers.ConvTranspose2d:
  return layers.ConvTranspose2d(
    features, kernel, stride, use_bias=False, kernel_init=layers.bilinear_init, dtype=dtype, name=name
  )


def _score(num_classes: int, name: str, dtype: Any) -> layers.Conv2d:
  zeros = nn.initializers.zeros_init()
  return layers.Conv2d(num_classes, 1, padding=0, kernel_init=zeros, dtype=dtype, name=name)


class FCN(nn.Module):
  """Fully convolutional network on VGG-16 with 32x, 16x or 8x skip fusion.

  Attributes:
    num_classes: output channels.
    stride: 32, 16 or 8 (FCN-32s, -16s, -8s).
    dropout: channel dropout after fc6 / fc7.
    width: backbone channel multiplier (1.0 = the paper; < 1 for tiny variants).
    dtype: computation dtype (e.g. jnp.bfloat16); logits are returned in float32.
  """

  num_classes: int
  stride: int = 8
  dropout: float = 0.5
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
    height, width = x.shape[1:3]
    feats = VGG16FCN(fc_dropout=self.dropout, width=self.width, dtype=self.dtype, name='backbone')(x, train=train)
    c, dt = self.num_classes, self.dtype
    score = _score(c, 'score_fr', dt)(feats['fc7'])
    if self.stride == 32:
      out, offset = _upscore(c, 64, 32, 'upscore', dt)(score), 19
    else:
      up2 = _upscore(c, 4, 2, 'upscore2', dt)(score)
      pool4 = _score(c, 'score_pool4', dt)(feats['pool4'])
      fuse = up2 + crop(pool4, (5, 5), up2.shape[1:3])
      if self.stride == 16:
        out, offset = _upscore(c, 32, 16, 'upscore16', dt)(fuse), 27
      else:
        up4 = _upscore(c, 4, 2, 'upscore_pool4', dt)(fuse)
        pool3 = _score(c, 'score_pool3', dt)(feats['pool3'])
        fuse = up4 + crop(pool3, (9, 9), up4.shape[1:3])
        out, offset = _upscore(c, 16, 8, 'upscore8', dt)(fuse), 31
    return crop(out, (offset, offset), (height, width)).astype(jnp.float32)


@register_model('fcn32s')
def fcn32s(*, num_classes: int, **kwargs) -> FCN:
  return FCN(num_classes=num_classes, stride=32, **kwargs)


@register_model('fcn16s')
def fcn16s(*, num_classes: int, **kwargs) -> FCN:
  return FCN(num_classes=num_classes, stride=16, **kwargs)


@register_model('fcn8s')
def fcn8s(*, num_classes: int, **kwargs) -> FCN:
  return FCN(num_classes=num_classes, stride=8, **kwargs)
