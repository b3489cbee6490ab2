"""DeepLabv3 (Chen et al., arXiv:1706.05587, 2017) and DeepLabv3+ (Chen et al., ECCV 2018).

DeepLabv3 (`deeplab_v3`): a dilated ResNet (output stride 16 with multi-grid
(1, 2, 4) in layer4, as the paper's best single-scale VOC model) followed by
Atrous Spatial Pyramid Pooling (`jaxseg.heads.ASPP`): a 1x1 conv, three 3x3 atrous convs (rates
6/12/18 at output stride 16, 12/24/36 at 8) and an image-pooling branch (global
average pool, 1x1 conv, broadcast back), each 256 channels + BN + ReLU;
concatenated, projected by 1x1 conv 256 + BN + ReLU, dropout 0.1 (the
reference's keep probability 0.9), a 1x1 classifier and bilinear upsampling.
Paper: 77.21 mIoU on PASCAL VOC 2012 val (ResNet-101, OS 16, MG (1, 2, 4),
ImageNet-pretrained, single scale).
PyTorch layout (`jaxseg.weights`): torchvision's names, so torchvision's
`deeplabv3_resnet*` backbone and ASPP load: `backbone.*`,
`classifier.0.convs.{0..3}.{0,1}`, `classifier.0.convs.4.{1,2}` (pooling),
`classifier.0.project.{0,1}`; the paper's head has no extra 3x3 conv, so the
classifier is `classifier.1`.

DeepLabv3+ (`deeplab_v3plus`): an encoder (`xception65` modified aligned
Xception by default, `resnet101` or `mobilenet_v2`) at output stride 16 (or 8),
ASPP as above but with depthwise-separable 3x3 atrous branches, and a decoder:
the stride-4 encoder features reduced by 1x1 conv to 48 channels + BN + ReLU,
concatenated with the ASPP output upsampled to stride 4, two 3x3 separable
convs 256 (+ BN + ReLU), the 1x1 classifier and a 4x bilinear upsampling to
the input size. Bilinear resizing uses align_corners=True as the TF reference
(and jfzhang95's PyTorch port) do.
Paper: 82.20 mIoU on VOC 2012 val (Xception-65, OS 16, pretrained on
ImageNet and COCO, single scale).
PyTorch layout: jfzhang95/pytorch-deeplab-xception (`modeling/deeplab.py`,
the most widely used PyTorch DeepLabv3+): `backbone.*`, `aspp.aspp{1..4}.
{atrous_conv,bn}`, `aspp.global_avg_pool.{1,2}`, `aspp.conv1`, `aspp.bn1`,
`decoder.conv1`, `decoder.bn1`, `decoder.last_conv.{0,1,4,5,8}`. That port uses
plain (not separable) 3x3 convs in ASPP and decoder, dropout 0.5 after ASPP
and 0.5 / 0.1 in the decoder: `deeplab_v3plus(separable=False,
aspp_dropout=0.5, decoder_dropout=(0.5, 0.1))` is that network: with a ResNet
encoder (`backbone='resnet101'`, at output stride 16 or 8) identical to its
backbone, and with its Xception-65 (`backbone_kwargs={'variant': 'jfzhang95'}`,
which reproduces that port's departures from the TF reference; see
`jaxseg.backbones.xception`). With `separable=True`
the separable convs' parts are keyed `<module>.{depthwise,depthwise_bn,
pointwise,pointwise_bn}` (a jaxseg extension of that layout).

Auxiliary outputs: none here (see torchvision_seg for the aux convention).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.heads import ASPP, default_rates
from jaxseg.layers_sep import SeparableConv2d
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

# DeepLabv3+ encoder -> (stride-4 feature key, final feature key).
_ENCODER_KEYS = {
  'resnet50': ('layer1', 'layer4'),
  'resnet101': ('layer1', 'layer4'),
  'mobilenet_v2': ('low_level', 'out'),
  'xception65': ('low_level', 'out'),
}
# Dropout after DeepLabv3's ASPP projection (the reference's keep probability 0.9).
V3_DROPOUT = 0.1
# Channels of DeepLabv3+'s reduced stride-4 features.
LOW_LEVEL_FEATURES = 48


class DeepLabV3(nn.Module):
  """DeepLabv3: dilated ResNet + ASPP + 1x1 classifier, bilinear upsampling (align_corners=False).

  Attributes:
    num_classes: output channels.
    backbone: 'resnet101' (paper) or 'resnet50'.
    output_stride: 16 (ASPP rates 6/12/18) or 8 (12/24/36).
    multi_grid: layer4 unit rates ((1, 2, 4) in the paper's best model); None = torchvision's rule.
    dtype: computation dtype; logits are float32.
  """

  num_classes: int
  backbone: str = 'resnet101'
  output_stride: int = 16
  multi_grid: Sequence[int] | None = (1, 2, 4)
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    if self.backbone not in ('resnet50', 'resnet101'):
      raise ValueError(
        f"DeepLabV3 backbone must be 'resnet50' or 'resnet101', got {self.backbone!r}."
      )
    return self.backbone, dict(output_stride=self.output_stride, multi_grid=self.multi_grid)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    rates = default_rates(self.output_stride)
    spec = self.backbone_spec()
    layers.check_image_batch(x, 'DeepLabV3', channels=3, min_size=self.output_stride)
    feats = build_backbone(spec, dtype=self.dtype)(x, train=train)
    y = ASPP(rates, dropout=V3_DROPOUT, dtype=self.dtype, name='aspp')(feats['layer4'], train=train)
    y = layers.Conv2d(self.num_classes, 1, dtype=self.dtype, name='classifier')(y)
    return resize_bilinear(y.astype(jnp.float32), x.shape[1:3], align_corners=False)


class DeepLabV3Plus(nn.Module):
  """DeepLabv3+: encoder + (separable) ASPP + decoder on stride-4 features.

  Bilinear resizes use align_corners=True (the TF reference and jfzhang95).

  Attributes:
    num_classes: output channels.
    backbone: 'xception65' (paper), 'resnet101', 'resnet50' or 'mobilenet_v2'.
    output_stride: 16 (ASPP rates 6/12/18) or 8 (12/24/36).
    separable: separable convs in ASPP and decoder (paper); False = jfzhang95's plain convs.
    aspp_dropout: dropout after the ASPP projection (0.1 TF reference, 0.5 jfzhang95).
    decoder_dropout: dropout after each of the two decoder 3x3 convs ((0, 0) TF, (0.5, 0.1) jfzhang95).
    features: channels of ASPP and decoder (256).
    backbone_kwargs: extra kwargs for the encoder (default multi_grid (1, 2, 4) and
      dilate_first_block=True for ResNets, i.e. jfzhang95's encoder at output stride 8 too,
      last_conv=False for MobileNetV2; smaller values give tiny variants).
    dtype: computation dtype; logits are float32.
  """

  num_classes: int
  backbone: str = 'xception65'
  output_stride: int = 16
  separable: bool = True
  aspp_dropout: float = 0.1
  decoder_dropout: Sequence[float] = (0.0, 0.0)
  features: int = 256
  backbone_kwargs: Any = None
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    if self.backbone not in _ENCODER_KEYS:
      raise ValueError(
        f'DeepLabV3Plus backbone must be one of {sorted(_ENCODER_KEYS)}, got {self.backbone!r}.'
      )
    kwargs = dict(output_stride=self.output_stride, **dict(self.backbone_kwargs or {}))
    if self.backbone.startswith('resnet'):
      # Multi-grid as the paper's ResNet-101 and jfzhang95's encoder; at output stride 8 all of
      # layer3 at rate 2, as jfzhang95's.
      kwargs.setdefault('multi_grid', (1, 2, 4))
      kwargs.setdefault('dilate_first_block', True)
    elif self.backbone == 'mobilenet_v2':
      kwargs.setdefault('last_conv', False)  # DeepLab reads the 320-channel features.17
    return self.backbone, kwargs

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    rates = default_rates(self.output_stride)
    spec = self.backbone_spec()
    layers.check_image_batch(x, 'DeepLabV3Plus', channels=3, min_size=self.output_stride)
    feats = build_backbone(spec, dtype=self.dtype)(x, train=train)
    low_key, high_key = _ENCODER_KEYS[self.backbone]
    dt = self.dtype
    aspp = ASPP(rates, self.features, self.separable, self.aspp_dropout, dt, name='aspp')
    y = aspp(feats[high_key], train=train)

    reduce = layers.ConvBNReLU(
      LOW_LEVEL_FEATURES, 1, padding=0, use_bias=False, dtype=dt, name='decoder_reduce'
    )
    low = reduce(feats[low_key], train=train)
    y = resize_bilinear(y, low.shape[1:3], align_corners=True)
    y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
    for i, rate in enumerate(self.decoder_dropout):
      if self.separable:
        conv = SeparableConv2d(self.features, 3, dtype=dt, name=f'decoder_conv{i}')
      else:
        conv = layers.ConvBNReLU(
          self.features, 3, padding=1, use_bias=False, dtype=dt, name=f'decoder_conv{i}'
        )
      y = nn.Dropout(rate)(conv(y, train=train), deterministic=not train)
    y = layers.Conv2d(self.num_classes, 1, dtype=dt, name='classifier')(y)
    return resize_bilinear(y.astype(jnp.float32), x.shape[1:3], align_corners=True)


@register_model('deeplab_v3')
def deeplab_v3(*, num_classes: int, **kwargs) -> DeepLabV3:
  return DeepLabV3(num_classes=num_classes, **kwargs)


@register_model('deeplab_v3plus')
def deeplab_v3plus(*, num_classes: int, **kwargs) -> DeepLabV3Plus:
  return DeepLabV3Plus(num_classes=num_classes, **kwargs)
