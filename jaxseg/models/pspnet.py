"""PSPNet (Zhao, Shi, Qi, Wang & Jia, CVPR 2017): pyramid pooling on a dilated ResNet.

"Pyramid Scene Parsing Network", arXiv:1612.01105. Follows the authors'
PyTorch re-implementation hszhao/semseg (`model/pspnet.py`):

* dilated ResNet-50/101 at output stride 8 (`jaxseg.backbones.resnet`), with
  PSPNet's deep stem (three 3x3 convs) optional (`deep_stem`);
* pyramid pooling module on the 2048-channel layer4 output: for each bin size
  1, 2, 3, 6 an adaptive average pool (PyTorch's bin rule,
  `jaxseg.ops.adaptive_pool`), a bias-free 1x1 conv to 512, BN, ReLU and
  bilinear upsampling back (align_corners=True, as semseg), concatenated with
  the input (2048 + 4 * 512 = 4096 channels);
* `cls`: 3x3 conv 512 (no bias) + BN + ReLU, channel dropout 0.1, 1x1 classifier;
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

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.backbones.resnet import ResNet
from jaxseg.ops import resize_bilinear
from jaxseg.ops.adaptive_pool import adaptive_avg_pool
from jaxseg.registry import register_model

Array = jax.Array

STAGES = {'resnet50': (3, 4, 6, 3), 'resnet101': (3, 4, 23, 3)}


class PSPNet(nn.Module):
  """PSPNet with an auxiliary FCN head.

  Attributes:
    num_classes: output channels.
    backbone: 'resnet50' or 'resnet101'.
    deep_stem: PSPNet's three-conv stem (semseg `deep_base`) instead of torchvision's 7x7.
    bins: pyramid bin sizes.
    ppm_features: channels of each pyramid branch (512).
    head_features: channels of the 3x3 conv of the main head (512).
    aux: whether to build the auxiliary head (its output is returned in training only).
    aux_features: channels of the auxiliary head's 3x3 conv (256).
    dropout: channel dropout before both classifiers (0.1).
    base_width: ResNet stem width (64; smaller only for tests).
    stage_sizes: override of the ResNet blocks per stage (None = the backbone's; tests only).
    dtype: computation dtype; logits are returned in float32.
    bn_axis_name: axis for synchronised BatchNorm, or None.
  """

  num_classes: int
  backbone: str = 'resnet50'
  deep_stem: bool = False
  bins: Sequence[int] = (1, 2, 3, 6)
  ppm_features: int = 512
  head_features: int = 512
  aux: bool = True
  aux_features: int = 256
  dropout: float = 0.1
  base_width: int = 64
  stage_sizes: Sequence[int] | None = None
  dtype: Any = None
  bn_axis_name: str | None = None

  def backbone_spec(self) -> tuple[str, dict]:
    if self.backbone not in STAGES:
      raise ValueError(f"PSPNet backbone must be 'resnet50' or 'resnet101', got {self.backbone!r}.")
    stages = tuple(self.stage_sizes or STAGES[self.backbone])
    kwargs = dict(
      output_stride=8,
      deep_stem=self.deep_stem,
      dilate_first_block=True,  # every layer3 3x3 conv at rate 2, every layer4 one at 4, as semseg
      base_width=self.base_width,
      dtype=self.dtype,
      bn_axis_name=self.bn_axis_name,
    )
    if self.stage_sizes is not None:
      kwargs['stage_sizes'] = stages
    return self.backbone, kwargs

  def min_size(self) -> int:
    """Smallest input side whose stride-8 map (ceil(H / 8)) holds the largest pyramid bin."""
    return 8 * (max(self.bins) - 1) + 1

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | dict[str, Array]:
    layers.check_image_batch(x, 'PSPNet', channels=3)
    if min(x.shape[1:3]) < self.min_size():
      raise ValueError(
        f'PSPNet needs H and W >= {self.min_size()} so that the stride-8 feature map holds the '
        f'{max(self.bins)}x{max(self.bins)} pyramid bins, got {tuple(x.shape[1:3])}.'
      )
    height, width = x.shape[1:3]
    _, kwargs = self.backbone_spec()
    stages = kwargs.pop('stage_sizes', STAGES[self.backbone])
    feats = ResNet(stage_sizes=stages, **kwargs, name='backbone')(x, train=train)
    dt = self.dtype
    bn = functools.partial(layers.BatchNorm, axis_name=self.bn_axis_name, dtype=dt)
    conv = functools.partial(layers.Conv2d, use_bias=False, dtype=dt)

    h = feats['layer4']
    size = h.shape[1:3]
    pyramid = [h]
    for i, b in enumerate(self.bins):
      p = adaptive_avg_pool(h, b)
      p = conv(self.ppm_features, 1, name=f'ppm_{i}_conv')(p)
      p = nn.relu(bn(name=f'ppm_{i}_bn')(p, train=train))
      pyramid.append(resize_bilinear(p, size, align_corners=True))
    h = jnp.concatenate(pyramid, axis=-1)
    h = conv(self.head_features, 3, padding=1, name='cls_conv')(h)
    h = nn.relu(bn(name='cls_bn')(h, train=train))
    h = layers.Dropout2d(self.dropout)(h, train=train)
    h = layers.Conv2d(self.num_classes, 1, dtype=dt, name='cls')(h)
    out = resize_bilinear(h.astype(jnp.float32), (height, width), align_corners=True)

    if self.aux and (train or self.is_initializing()):
      a = conv(self.aux_features, 3, padding=1, name='aux_conv')(feats['layer3'])
      a = nn.relu(bn(name='aux_bn')(a, train=train))
      a = layers.Dropout2d(self.dropout)(a, train=train)
      a = layers.Conv2d(self.num_classes, 1, dtype=dt, name='aux_cls')(a)
      if train:
        aux = resize_bilinear(a.astype(jnp.float32), (height, width), align_corners=True)
        return {'out': out, 'aux': aux}
    return out


@register_model('pspnet')
def pspnet(*, num_classes: int, **kwargs) -> PSPNet:
  return PSPNet(num_classes=num_classes, **kwargs)
