"""torchvision's segmentation models: FCN-ResNet and DeepLabv3-ResNet, built exactly as torchvision does.

`fcn_resnet50/101` and `deeplabv3_resnet50/101` match
`torchvision.models.segmentation.*` (weights=None, weights_backbone=None)
module for module, so torchvision checkpoints load 1:1 through
`jaxseg.weights.from_torch` (keys `backbone.layer1.0.conv1.weight`,
`classifier.0.convs.0.0.weight`, `aux_classifier.0.weight`, ...):

* backbone: ResNet at output stride 8 (`replace_stride_with_dilation=[False,
  True, True]`, torchvision's dilation rule);
* FCNHead(in, C) (`jaxseg.heads.FCNHead`): 3x3 conv in/4 (no bias) + BN + ReLU
  + Dropout(0.1) + 1x1 conv C;
* DeepLabHead(2048, C) (`jaxseg.heads.DeepLabHead`): ASPP (1x1, 3x3 at rates
  12/24/36, image pooling; 256 each, projection 1x1 256 + BN + ReLU +
  Dropout(0.5)), 3x3 conv 256 + BN + ReLU, 1x1 conv C;
* optional auxiliary FCNHead(1024, C) on layer3 (`aux=True`, torchvision's
  `aux_loss=True`);
* bilinear upsampling to the input size with align_corners=False.

Parameter counts (21 classes) equal torchvision's: fcn_resnet50 32,957,013
(+aux 35,322,218), fcn_resnet101 51,949,141, deeplabv3_resnet50 39,638,869
(+aux 42,004,074), deeplabv3_resnet101 58,630,997 (+aux 60,996,202).
Reference: Long et al. (FCN, CVPR 2015) and Chen et al. (DeepLabv3, 2017) as
reimplemented in torchvision (PASCAL VOC-subset-of-COCO weights: FCN-R50 60.5,
DeepLabv3-R50 66.4 mIoU per torchvision's model card).

Auxiliary output convention (used by train.steps): `apply(..., train=False)`
always returns the logits array. With `aux=True`, `apply(..., train=True)`
returns a dict `{'out': logits, 'aux': aux_logits}` (both at input
resolution, float32); the train loop adds `config.train.aux_loss_weight` times
the auxiliary loss. Without aux heads the training output is the logits array.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.heads import DeepLabHead, FCNHead
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

Array = jax.Array


class TorchvisionSegmentation(nn.Module):
  """ResNet (output stride 8) + FCNHead or DeepLabHead (+ auxiliary FCNHead on layer3).

  Attributes:
    num_classes: output channels.
    head: 'fcn' or 'deeplabv3'.
    depth: 50 or 101.
    aux: build the auxiliary classifier (torchvision's aux_loss=True).
    base_width: ResNet stem width (64; smaller gives tiny variants).
    dtype: computation dtype; logits are float32.
  """

  num_classes: int
  head: str = 'deeplabv3'
  depth: int = 50
  aux: bool = False
  base_width: int = 64
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    return f'resnet{self.depth}', dict(output_stride=8, base_width=self.base_width)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array | dict[str, Array]:
    if self.head not in ('fcn', 'deeplabv3') or self.depth not in (50, 101):
      raise ValueError(
        f"head must be 'fcn' or 'deeplabv3' and depth 50 or 101, got {self.head!r}, {self.depth!r}."
      )
    layers.check_image_batch(x, f'{self.head}_resnet{self.depth}', channels=3, min_size=8)
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    head = FCNHead if self.head == 'fcn' else DeepLabHead
    size = x.shape[1:3]
    out = head(self.num_classes, self.dtype, name='classifier')(feats['layer4'], train=train)
    out = resize_bilinear(out.astype(jnp.float32), size, align_corners=False)
    # The aux head runs at init (so its variables exist for eval-mode init) and in training only.
    if self.aux and (train or self.is_initializing()):
      aux = FCNHead(self.num_classes, self.dtype, name='aux_classifier')(
        feats['layer3'], train=train
      )
      aux = resize_bilinear(aux.astype(jnp.float32), size, align_corners=False)
      if train:
        return {'out': out, 'aux': aux}
    return out


def _register(head: str, depth: int):
  @register_model(f'{head}_resnet{depth}')
  def build(*, num_classes: int, **kwargs) -> TorchvisionSegmentation:
    return TorchvisionSegmentation(num_classes=num_classes, head=head, depth=depth, **kwargs)

  build.__name__ = f'{head}_resnet{depth}'
  return build


fcn_resnet50 = _register('fcn', 50)
fcn_resnet101 = _register('fcn', 101)
deeplabv3_resnet50 = _register('deeplabv3', 50)
deeplabv3_resnet101 = _register('deeplabv3', 101)
