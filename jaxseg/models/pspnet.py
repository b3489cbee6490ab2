"""PSPNet (Zhao, Shi, Qi, Wang & Jia, CVPR 2017): pyramid pooling on a dilated ResNet.

"Pyramid Scene Parsing Network", arXiv:1612.01105. Follows the authors'
PyTorch re-implementation hszhao/semseg (`model/pspnet.py`):

* dilated ResNet-50/101 at output stride 8 (`jaxseg.backbones.resnet`), with
  PSPNet's deep stem (three 3x3 convs) optional (`deep_stem`);
* pyramid pooling module (`jaxseg.heads.pyramid_pooling`) on the 2048-channel
  layer4 output: for each bin size 1, 2, 3, 6 an adaptive average pool
  (PyTorch's bin rule, `jaxseg.ops.adaptive_pool`), a bias-free 1x1 conv to
  512, BN, ReLU and bilinear upsampling back (align_corners=True, as semseg),
  concatenated with the input (2048 + 4 * 512 = 4096 channels);
* `cls`: 3x3 conv 512 (no bias) + BN + ReLU, channel dropout 0.1, 1x1 classifier
  (`jaxseg.heads.conv_bn_relu_classifier`);
* auxiliary head on layer3 (1024 channels; stride 8 here, 16 nominally):
  3x3 conv 256 + BN + ReLU, dropout 0.1, 1x1 classifier, loss weight 0.4
  (`config.train.aux_loss_weight`); computed only in training;
* bilinear upsampling (align_corners=True) of the logits to the input size.

Output: `train=False` -> logits (N, H, W, C); `train=True` -> {'out': logits,
'aux': aux_logits} when `aux` is enabled, else the logits.

Dilation: as semseg, *every* 3x3 conv of layer3 has dilation 2 and of layer4
dilation 4, the first block of each stage included (the shared ResNet with
`dilate_first_block=True`; torchvision's rule would keep dilation 1 and 2 in
those two first blocks).

PyTorch layout (`jaxseg.weights`, 'pspnet'): semseg's keys `layer0.*` (stem),
`layer1` ... `layer4`, `ppm.features.N.{1,2}`, `cls.{0,1,4}`, `aux.{0,1,4}`.

Results of the re-implementation (PASCAL VOC 2012 val, single scale):
ResNet-50 77.05, ResNet-101 79.07 mIoU. 46,592,597 parameters (ResNet-50,
torchvision stem, 21 classes, without the auxiliary head; it adds 2,365,205).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.heads import conv_bn_relu_classifier, pyramid_pooling
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

BACKBONES = ('resnet50', 'resnet101')
# Pyramid bin sizes, channels of each pyramid branch, of the main head's and of the
# auxiliary head's 3x3 conv (semseg's PSPNet).
BINS = (1, 2, 3, 6)
PPM_FEATURES = 512
HEAD_FEATURES = 512
AUX_FEATURES = 256


class PSPNet(nn.Module):
  """PSPNet with an auxiliary FCN head.

  Attributes:
    num_classes: output channels.
    backbone: 'resnet50' or 'resnet101'.
    deep_stem: PSPNet's three-conv stem (semseg `deep_base`) instead of torchvision's 7x7.
    aux: whether to build the auxiliary head (its output is returned in training only).
    dropout: channel dropout before both classifiers (0.1).
    base_width: ResNet stem width (64; smaller gives tiny variants).
    stage_sizes: ResNet blocks per stage (None = the backbone's; fewer give tiny variants).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  backbone: str = 'resnet50'
  deep_stem: bool = False
  aux: bool = True
  dropout: float = 0.1
  base_width: int = 64
  stage_sizes: Sequence[int] | None = None
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    if self.backbone not in BACKBONES:
      raise ValueError(f"PSPNet backbone must be 'resnet50' or 'resnet101', got {self.backbone!r}.")
    kwargs = dict(
      output_stride=8,
      deep_stem=self.deep_stem,
      dilate_first_block=True,  # every layer3 3x3 conv at rate 2, every layer4 one at 4, as semseg
      base_width=self.base_width,
    )
    if self.stage_sizes is not None:
      kwargs['stage_sizes'] = tuple(self.stage_sizes)
    return self.backbone, kwargs

  def min_size(self) -> int:
    """Smallest input side whose stride-8 map (ceil(H / 8)) holds the largest pyramid bin."""
    return 8 * (max(BINS) - 1) + 1

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | dict[str, Array]:
    layers.check_image_batch(
      x,
      'PSPNet',
      channels=3,
      min_size=self.min_size(),
      min_size_reason=(
        f' so that the stride-8 feature map holds the {max(BINS)}x{max(BINS)} pyramid bins'
      ),
    )
    size = x.shape[1:3]
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    head = dict(dropout=self.dropout, channel_dropout=True, train=train, dtype=self.dtype)
    h = pyramid_pooling(feats['layer4'], BINS, PPM_FEATURES, train=train, dtype=self.dtype)
    h = conv_bn_relu_classifier(
      h, self.num_classes, HEAD_FEATURES, names=('cls_conv', 'cls_bn', 'cls'), **head
    )
    out = resize_bilinear(h.astype(jnp.float32), size, align_corners=True)

    if self.aux and (train or self.is_initializing()):
      a = conv_bn_relu_classifier(
        feats['layer3'],
        self.num_classes,
        AUX_FEATURES,
        names=('aux_conv', 'aux_bn', 'aux_cls'),
        **head,
      )
      if train:
        aux = resize_bilinear(a.astype(jnp.float32), size, align_corners=True)
        return {'out': out, 'aux': aux}
    return out


@register_model('pspnet')
def pspnet(*, num_classes: int, **kwargs) -> PSPNet:
  return PSPNet(num_classes=num_classes, **kwargs)
