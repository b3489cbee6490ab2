"""DeepLab v1, DeepLab-LargeFOV (Chen, Papandreou, Kokkinos, Murphy & Yuille, ICLR 2015).

"Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected
CRFs", arXiv:1412.7062. Follows the DeepLab-LargeFOV Caffe prototxt:

* VGG-16 at output stride 8 (`jaxseg.backbones.vgg_deeplab`, 'deeplab' style:
  3x3 max pools with padding 1, pool4/pool5 stride 1, conv5 dilation 2, pool5a
  3x3 average pool);
* `fc6`: 3x3 convolution, dilation 12, 1024 channels (the "large field of
  view" variant, subsampled from VGG's 4096-channel fc6), ReLU, dropout 0.5;
* `fc7`: 1x1, 1024, ReLU, dropout 0.5;
* `fc8`: 1x1 classifier (Gaussian init, std 0.01, zero bias, as the prototxt)
  (fc6-fc8: `jaxseg.heads.fc_classifier`);
* bilinear upsampling of the stride-8 scores to the input size. Caffe's
  `Interp` layer maps corners onto corners, so `align_corners=True` (for the
  recommended 321 = 8 * 40 + 1 input size the 41x41 score grid then sits
  exactly on every 8th pixel).

The fully connected CRF post-processing is `jaxseg.crf` (eval only).

PyTorch layout (`jaxseg.weights`, 'deeplab_v1'): the Caffe layer names
`conv1_1` ... `conv5_3`, `fc6`, `fc7`, `fc8` as top-level modules (see
tests/torch_ref/deeplab_v1.py).

Paper (PASCAL VOC 2012 val): 62.25 mIoU, 67.64 with the CRF; 20,505,429
parameters with 21 classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.backbones.vgg import scaled_channels
from jaxseg.heads import fc_classifier
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

# LargeFOV's fc6 / fc7 channels and fc6 dilation; dropout after both (the prototxt's).
FC_FEATURES = 1024
FC6_DILATION = 12
DROPOUT = 0.5


class DeepLabLargeFOV(nn.Module):
  """DeepLab-LargeFOV on VGG-16.

  Attributes:
    num_classes: output channels.
    width: channel multiplier of the VGG part and of fc6/fc7 (1.0; smaller gives tiny variants).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  width: float = 1.0
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    return 'vgg16_deeplab', {'width': self.width}

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    layers.check_image_batch(x, 'DeepLab-LargeFOV', channels=3, min_size=8)
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    h = fc_classifier(
      feats['out'],
      self.num_classes,
      features=scaled_channels(FC_FEATURES, self.width),
      kernel_size=3,
      dilation=FC6_DILATION,
      padding=FC6_DILATION,
      dropout=DROPOUT,
      classifier='fc8',
      classifier_init=nn.initializers.normal(0.01),
      train=train,
      dtype=self.dtype,
    )
    return resize_bilinear(h.astype(jnp.float32), x.shape[1:3], align_corners=True)


@register_model('deeplab_v1')
def deeplab_v1(*, num_classes: int, **kwargs) -> DeepLabLargeFOV:
  return DeepLabLargeFOV(num_classes=num_classes, **kwargs)
