"""DeepLab v2 (Chen, Papandreou, Kokkinos, Murphy & Yuille, TPAMI 2017): ResNet-101 + ASPP.

"DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", arXiv:1606.00915.

* ResNet-101 at output stride 8 (`jaxseg.backbones.resnet`, torchvision layout
  and dilation rule: layer3 dilation 2, layer4 dilation 4);
* ASPP-L (Sec. 3.1, Fig. 7; `jaxseg.heads.aspp_sum`): four parallel 3x3
  classifier branches on layer4 with atrous rates 6, 12, 18, 24, each producing
  the C class scores (with bias, Gaussian init std 0.01 as the reference
  prototxt), summed;
* bilinear upsampling to the input size (align_corners=True, Caffe `Interp`).

The paper's ResNet-101 is the original MSRA model (stride on the 1x1 conv,
frozen BatchNorm in Caffe); here it is torchvision's, so torchvision ImageNet
weights initialise it. The dense CRF is `jaxseg.crf` (DEEPLAB_V2 parameters).

PyTorch layout (`jaxseg.weights`, 'deeplab_v2'): `backbone.<torchvision key>`
and `aspp.c0` ... `aspp.c3` (kazuto1011/deeplab-pytorch's ASPP naming).

Paper (PASCAL VOC 2012 val): 76.35 mIoU, 77.69 with the CRF (ResNet-101,
MSC + COCO pretraining). 44,048,532 parameters with 21 classes.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.heads import aspp_sum
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

BACKBONES = ('resnet50', 'resnet101')
# ASPP-L's atrous rates.
ASPP_RATES = (6, 12, 18, 24)


class DeepLabV2(nn.Module):
  """DeepLab v2: dilated ResNet with the ASPP classifier.

  Attributes:
    num_classes: output channels.
    backbone: 'resnet101' (paper) or 'resnet50'.
    base_width: ResNet stem width (64; smaller gives tiny variants).
    stage_sizes: ResNet blocks per stage (None = the backbone's; fewer give tiny variants).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  backbone: str = 'resnet101'
  base_width: int = 64
  stage_sizes: Sequence[int] | None = None
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    if self.backbone not in BACKBONES:
      raise ValueError(
        f"DeepLab v2 backbone must be 'resnet50' or 'resnet101', got {self.backbone!r}."
      )
    kwargs = dict(output_stride=8, base_width=self.base_width)
    if self.stage_sizes is not None:
      kwargs['stage_sizes'] = tuple(self.stage_sizes)
    return self.backbone, kwargs

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    layers.check_image_batch(x, 'DeepLab v2', channels=3, min_size=8)
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    out = aspp_sum(feats['layer4'], self.num_classes, ASPP_RATES, dtype=self.dtype)
    return resize_bilinear(out.astype(jnp.float32), x.shape[1:3], align_corners=True)


@register_model('deeplab_v2')
def deeplab_v2(*, num_classes: int, **kwargs) -> DeepLabV2:
  return DeepLabV2(num_classes=num_classes, **kwargs)
