"""Classifier heads: FCN's skip fusion, VGG-style fc heads, torchvision's FCNHead and DeepLabHead.

* `fcn_skip_head` (Long, Shelhamer & Darrell, CVPR 2015; pytorch-fcn layout):
  zero-initialised 1x1 score layers on fc7, pool4 and pool3, bias-free
  transposed convolutions initialised to bilinear upsampling, and the Caffe
  reference's crop offsets.
* `fc_classifier`: VGG's fully connected layers as convolutions (`fc6` with a
  given kernel and dilation, `fc7` 1x1, each ReLU + dropout) and a 1x1
  classifier: DeepLab-LargeFOV (Chen et al., ICLR 2015) and Yu & Koltun's
  front-end (ICLR 2016).
* `conv_bn_relu_classifier`: 3x3 conv (no bias) + BN + ReLU (+ dropout) + 1x1
  classifier: torchvision's `FCNHead`, the head of its `DeepLabHead`, and
  PSPNet's main and auxiliary heads (hszhao/semseg `cls`, `aux`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from jaxseg import layers
from jaxseg.heads.aspp import ASPP
from jaxseg.ops import crop

Array = jax.Array

# FCN-{32,16,8}s: output crop offset of the Caffe reference (conv1_1 is padded by 100).
_FCN_OFFSETS = {32: 19, 16: 27, 8: 31}


def _score(num_classes: int, name: str, dtype: Any) -> layers.Conv2d:
  zeros = nn.initializers.zeros_init()
  return layers.Conv2d(num_classes, 1, padding=0, kernel_init=zeros, dtype=dtype, name=name)


def _upscore(features: int, kernel: int, stride: int, name: str, dtype: Any):
  return layers.ConvTranspose2d(
    features,
    kernel,
    stride,
    use_bias=False,
    kernel_init=layers.bilinear_init,
    dtype=dtype,
    name=name,
  )


def fcn_skip_head(
  feats: dict[str, Array], num_classes: int, stride: int, size: Sequence[int], *, dtype: Any = None
) -> Array:
  """FCN-`stride`s scores from VGG16 `fc7`, `pool4` and `pool3` (FCN padding), cropped to `size`.

  Layers (submodules of the calling model): `score_fr`, then FCN-32s `upscore`;
  FCN-16s `upscore2`, `score_pool4`, `upscore16`; FCN-8s `upscore2`,
  `score_pool4`, `upscore_pool4`, `score_pool3`, `upscore8`. Crops: pool4
  scores [5:], pool3 scores [9:], output [19:] / [27:] / [31:].
  """
  c = num_classes
  score = _score(c, 'score_fr', dtype)(feats['fc7'])
  if stride == 32:
    out = _upscore(c, 64, 32, 'upscore', dtype)(score)
  else:
    up2 = _upscore(c, 4, 2, 'upscore2', dtype)(score)
    pool4 = _score(c, 'score_pool4', dtype)(feats['pool4'])
    fuse = up2 + crop(pool4, (5, 5), up2.shape[1:3])
    if stride == 16:
      out = _upscore(c, 32, 16, 'upscore16', dtype)(fuse)
    else:
      up4 = _upscore(c, 4, 2, 'upscore_pool4', dtype)(fuse)
      pool3 = _score(c, 'score_pool3', dtype)(feats['pool3'])
      fuse = up4 + crop(pool3, (9, 9), up4.shape[1:3])
      out = _upscore(c, 16, 8, 'upscore8', dtype)(fuse)
  offset = _FCN_OFFSETS[stride]
  return crop(out, (offset, offset), tuple(size))


def fc_classifier(
  x: Array,
  num_classes: int,
  *,
  features: int,
  kernel_size: int,
  dilation: int,
  padding: int,
  dropout: float,
  classifier: str,
  classifier_init: Callable | None = None,
  train: bool,
  dtype: Any = None,
) -> Array:
  """`fc6` (kernel_size, dilation, padding) -> ReLU -> dropout -> `fc7` 1x1 -> ReLU -> dropout -> 1x1.

  The classifier is named `classifier` (DeepLab's `fc8`, DilatedNet's `final`)
  and initialised with `classifier_init` (None: Conv2d's default); dropout is
  element-wise, as Caffe's. The layers are submodules of the calling model.
  """
  fc6 = layers.Conv2d(
    features, kernel_size, padding=padding, dilation=dilation, dtype=dtype, name='fc6'
  )
  x = nn.Dropout(dropout)(nn.relu(fc6(x)), deterministic=not train)
  x = nn.relu(layers.Conv2d(features, 1, dtype=dtype, name='fc7')(x))
  x = nn.Dropout(dropout)(x, deterministic=not train)
  init = {} if classifier_init is None else {'kernel_init': classifier_init}
  return layers.Conv2d(num_classes, 1, dtype=dtype, name=classifier, **init)(x)


def conv_bn_relu_classifier(
  x: Array,
  num_classes: int,
  features: int,
  *,
  names: tuple[str, str, str],
  dropout: float | None = None,
  channel_dropout: bool = False,
  train: bool,
  dtype: Any = None,
) -> Array:
  """3x3 conv (no bias) -> BN -> ReLU (-> dropout) -> 1x1 classifier, layers named `names`.

  `names` are (conv, BN, classifier); `dropout` None adds no dropout layer,
  `channel_dropout` drops whole feature maps (PyTorch Dropout2d) instead of
  elements. The layers are submodules of the calling module.
  """
  conv_name, bn_name, cls_name = names
  x = layers.Conv2d(features, 3, padding=1, use_bias=False, dtype=dtype, name=conv_name)(x)
  x = nn.relu(layers.BatchNorm(dtype=dtype, name=bn_name)(x, train=train))
  if dropout is not None and channel_dropout:
    x = layers.Dropout2d(dropout)(x, train=train)
  elif dropout is not None:
    x = nn.Dropout(dropout)(x, deterministic=not train)
  return layers.Conv2d(num_classes, 1, dtype=dtype, name=cls_name)(x)


class FCNHead(nn.Module):
  """torchvision's FCNHead: conv3x3 (in/4) + BN + ReLU + Dropout(0.1) + conv1x1 (classes).

  Attributes:
    num_classes: output channels.
    dtype: computation dtype.
  """

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return conv_bn_relu_classifier(
      x,
      self.num_classes,
      x.shape[-1] // 4,
      names=('conv', 'bn', 'cls'),
      dropout=0.1,
      train=train,
      dtype=self.dtype,
    )


class DeepLabHead(nn.Module):
  """torchvision's DeepLabHead: ASPP(12, 24, 36) + conv3x3 256 + BN + ReLU + conv1x1 (classes).

  Attributes:
    num_classes: output channels.
    dtype: computation dtype.
  """

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = ASPP((12, 24, 36), 256, dropout=0.5, dtype=self.dtype, name='aspp')(x, train=train)
    return conv_bn_relu_classifier(
      x, self.num_classes, 256, names=('head_conv', 'head_bn', 'cls'), train=train, dtype=self.dtype
    )
