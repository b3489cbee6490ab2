"""SegNet and SegNet-Basic (Badrinarayanan, Kendall & Cipolla, TPAMI 2017).

SegNet: the 13 convolutional layers of VGG16 with BatchNorm as the encoder (no
fully connected layers), a mirrored decoder that upsamples with the encoder's
max-pooling indices (a scatter, no learned upsampling) followed by
conv-BN-ReLU layers, and a 3x3 score convolution, as in the authors' Caffe
SegNet.

Layout: the PyTorch reference layout in tests/torch_ref/segnet.py, whose
CBR = Sequential(Conv2d 3x3 p1, BatchNorm2d, ReLU) gives the keys
`conv1_1.0.weight`, `conv1_1.1.running_mean`, ...:

* encoder `conv1_1, conv1_2 | conv2_1, conv2_2 | conv3_1..3_3 | conv4_1..4_3 |
  conv5_1..5_3`, each stage followed by 2x2/2 ceil-mode max pooling that keeps
  its argmax: the registered `vgg16_bn` backbone with `return_indices=True`
  (Flax submodule `backbone`), so ImageNet VGG16-BN weights load into it;
* decoder in forward order, each stage starting with max-unpooling to the size
  the matching encoder stage had (odd sizes round-trip exactly;
  `jaxseg.heads.unpool_decoder`): `dcbr5_1..5_3` (512), `dcbr4_1, dcbr4_2`
  (512), `dcbr4_3` (512->256), `dcbr3_1, dcbr3_2`, `dcbr3_3` (256->128),
  `dcbr2_1`, `dcbr2_2` (128->64), `dcbr1_1` (64);
* `score_fr` Conv2d(64, C, 3, padding 1).

29,449,355 parameters with 11 classes (29,455,125 with 21). Pooling ties
(whole windows of zeros after ReLU are common) go to the first maximum in
row-major order, as in PyTorch, so unpooling puts values where PyTorch does.

SegNet-Basic (the paper's smaller network for the CamVid analysis, Sec. 4.1):
4 encoders and 4 decoders, 64 channels, 7x7 kernels everywhere, BatchNorm
after every convolution, no convolution biases, no ReLU in the decoder, and a
1x1 classifier. Layout follows the Caffe SegNet-Basic model: `conv1..conv4`
(Sequential conv, BN, ReLU), `conv_decode4..conv_decode1` (conv, BN),
`conv_classifier`; 1,416,075 parameters with 11 classes. The Caffe model's
local response normalisation of the input is a preprocessing choice and is
left out.

Paper results (TPAMI 2017, CamVid test set, 11 road-scene classes, Table 3):
SegNet trained on a corpus of 3,433 road scenes reaches global accuracy
90.40, class average 71.20 and mIoU 60.10 at convergence (88.81 / 59.93 /
50.02 after 40K iterations); a model trained on CamVid's 367 training images
alone is not directly comparable.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.heads import unpool_decoder
from jaxseg.ops import max_pool_with_argmax, max_unpool
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

# (stage, ((name, in, out), ...)) of the SegNet decoder in forward order.
SEGNET_DECODER = (
  (5, (('dcbr5_1', 512, 512), ('dcbr5_2', 512, 512), ('dcbr5_3', 512, 512))),
  (4, (('dcbr4_1', 512, 512), ('dcbr4_2', 512, 512), ('dcbr4_3', 512, 256))),
  (3, (('dcbr3_1', 256, 256), ('dcbr3_2', 256, 256), ('dcbr3_3', 256, 128))),
  (2, (('dcbr2_1', 128, 128), ('dcbr2_2', 128, 64))),
  (1, (('dcbr1_1', 64, 64),)),
)
# SegNet-Basic: encoder (= decoder) stages.
BASIC_DEPTH = 4


class SegNet(nn.Module):
  """SegNet: VGG16-BN encoder, argmax-unpooling decoder, 3x3 score layer.

  Attributes:
    num_classes: output channels.
    width: channel multiplier (1.0 is the paper's network; smaller gives tiny variants).
    dtype: computation dtype (e.g. jnp.bfloat16); logits are returned in float32.
  """

  num_classes: int
  width: float = 1.0
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    """Registered backbone whose variables equal `params['backbone']` (ImageNet initialisation)."""
    return 'vgg16_bn', dict(width=self.width, ceil_mode=True, return_indices=True)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    layers.check_image_batch(x, 'SegNet', channels=3)
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    x = unpool_decoder(
      feats['pool5'], feats, SEGNET_DECODER, width=self.width, train=train, dtype=self.dtype
    )
    x = layers.Conv2d(self.num_classes, 3, padding=1, dtype=self.dtype, name='score_fr')(x)
    return x.astype(jnp.float32)


class SegNetBasic(nn.Module):
  """SegNet-Basic: 4 encoders / 4 decoders of 64 channels with 7x7 kernels.

  Attributes:
    num_classes: output channels.
    features: channels of every layer (64 in the paper).
    kernel_size: kernel of every encoder/decoder convolution (7 in the paper).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  features: int = 64
  kernel_size: int = 7
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    layers.check_image_batch(x, 'SegNet-Basic', channels=3)
    conv = dict(
      kernel_size=self.kernel_size, padding=self.kernel_size // 2, use_bias=False, dtype=self.dtype
    )
    saved = []
    for i in range(1, BASIC_DEPTH + 1):
      x = layers.ConvBNReLU(self.features, name=f'conv{i}', **conv)(x, train=train)
      size = tuple(x.shape[1:3])
      x, indices = max_pool_with_argmax(x, 2)
      saved.append((indices, size))
    for i in range(BASIC_DEPTH, 0, -1):
      indices, size = saved[i - 1]
      x = max_unpool(x, indices, size, window=2)
      # The paper's decoder has no non-linearity.
      x = layers.ConvBNReLU(self.features, relu=False, name=f'conv_decode{i}', **conv)(
        x, train=train
      )
    x = layers.Conv2d(self.num_classes, 1, dtype=self.dtype, name='conv_classifier')(x)
    return x.astype(jnp.float32)


@register_model('segnet')
def segnet(*, num_classes: int, **kwargs) -> SegNet:
  return SegNet(num_classes=num_classes, **kwargs)


@register_model('segnet_basic')
def segnet_basic(*, num_classes: int, **kwargs) -> SegNetBasic:
  return SegNetBasic(num_classes=num_classes, **kwargs)
