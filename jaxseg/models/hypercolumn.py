"""Hypercolumns (Hariharan, Arbelaez, Girshick & Malik, "Hypercolumns for Object Segmentation and Fine-grained Localization", CVPR 2015).

The hypercolumn of a pixel is the vector of activations above it in several
layers of a CNN, each feature map upsampled to the image. A per-pixel linear
classifier on the concatenated hypercolumn is evaluated as the paper does it
(Sec. 3.3, "Efficient classification using convolutions and upsampling"):
because upsampling is linear, classifying the concatenation equals applying
a 1x1 convolution to each layer's feature map (`score_<layer>`), upsampling
each score map bilinearly to the image and summing them. Only C channels per
layer are upsampled instead of the full feature maps.

Backbone: VGG16 (`jaxseg.backbones.vgg.VGG16`, registered as `vgg16`) with
ceil-mode pooling; fc6 (7x7 VALID) and fc7 (1x1) as convolutions when a
requested layer needs them. Default layers: pool2, conv4_3 and fc7, the
paper's choice for simultaneous detection and segmentation. The paper works on
detection boxes warped to 224x224 and adds location-specific classifiers over
a coarse grid of the box; for semantic segmentation of whole images there is
one classifier per pixel (no grid). With fc6/fc7 in the hypercolumn the input
must be at least 193x193 (pool5 >= 7x7); fc7's small map is upsampled over the
whole image as in the paper.

There is no reference PyTorch implementation; the backbone loads torchvision's
VGG16 weights through `backbone_spec`.

Paper result: SDS on VOC 2012 val (segmentation of detections), APr 60.0 at
0.5 overlap with hypercolumns (pool2, conv4, fc7) vs 49.7 for SDS; keypoint
and part labelling results in the paper.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg import layers
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

STAGE_ENDS = ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3')
STAGE_OUTPUTS = tuple(f'pool{s}' for s in range(1, 6))
FC_LAYERS = ('fc6', 'fc7')
MIN_FC_SIZE = 193  # ceil(193 / 32) = 7 = fc6's kernel


class Hypercolumn(nn.Module):
  """Per-pixel classifier on upsampled VGG16 features from several depths.

  Attributes:
    num_classes: output channels.
    layers: VGG16 layers whose feature maps form the hypercolumn (names of
      `jaxseg.backbones.vgg.VGG16`'s outputs: conv1_2 ... conv5_3 at the end of
      each stage, pool1 ... pool5, fc6, fc7).
    width: VGG16 channel multiplier (1.0 = VGG16; smaller gives tiny variants).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  layers: Sequence[str] = ('pool2', 'conv4_3', 'fc7')
  width: float = 1.0
  dtype: Any = None

  @property
  def uses_fc(self) -> bool:
    return any(name in FC_LAYERS for name in self.layers)

  def backbone_spec(self) -> tuple[str, dict]:
    """Registered backbone whose variables equal `params['backbone']` (ImageNet initialisation)."""
    kwargs = dict(ceil_mode=True, width=self.width)
    if self.uses_fc:
      kwargs['fc'] = 'conv'
    return 'vgg16', kwargs

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    known = STAGE_ENDS + STAGE_OUTPUTS + FC_LAYERS
    unknown = [name for name in self.layers if name not in known]
    if unknown or not self.layers:
      raise ValueError(
        f'Hypercolumn layers must be a non-empty subset of {known}, got {tuple(self.layers)}.'
      )
    layers.check_image_batch(
      x, 'Hypercolumn', channels=3, min_size=MIN_FC_SIZE if self.uses_fc else 1
    )
    height, width = x.shape[1:3]
    feats = build_backbone(self.backbone_spec(), dtype=self.dtype)(x, train=train)
    logits = jnp.zeros((x.shape[0], height, width, self.num_classes), jnp.float32)
    for name in self.layers:
      score = layers.Conv2d(self.num_classes, 1, dtype=self.dtype, name=f'score_{name}')(
        feats[name]
      )
      logits = logits + resize_bilinear(
        score.astype(jnp.float32), (height, width), align_corners=False
      )
    return logits


@register_model('hypercolumn')
def hypercolumn(*, num_classes: int, **kwargs) -> Hypercolumn:
  return Hypercolumn(num_classes=num_classes, **kwargs)
