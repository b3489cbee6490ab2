"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015).

Convolution network: the 13 convolutional layers of VGG16 with BatchNorm and
2x2 max pooling that keeps its argmax (SegNet's encoder: the registered
`vgg16_bn` backbone with `return_indices=True`, Flax submodule `backbone`), then
fc6 as a 7x7 VALID convolution (4096) and fc7 as 1x1 (4096), each with BN and
ReLU. Deconvolution network, the mirror image: `fc6_deconv`, a 7x7 transposed
convolution back to 512 channels (BN, ReLU), then per stage unpooling with the
indices of the matching encoder stage followed by 3x3 deconvolution-BN-ReLU
layers, and a 1x1 score layer.

Layout: the PyTorch reference layout in tests/torch_ref/deconvnet.py (CBR/DCB
blocks; keys `conv1_1.0.weight`, `fc6.1.running_var`, `fc6_deconv.0.weight`,
...): encoder `conv1_1 ... conv5_3`;
`fc6` = CBR(512, 4096, 7, padding 0), `fc7` = CBR(4096, 4096, 1),
`fc6_deconv` = Sequential(ConvTranspose2d(4096, 512, 7), BatchNorm2d, ReLU);
decoder `deconv5_1..5_3` (512), `deconv4_1, deconv4_2` (512), `deconv4_3`
(512->256), `deconv3_1, deconv3_2`, `deconv3_3` (256->128), `deconv2_1`,
`deconv2_2` (128->64), `deconv1_1, deconv1_2` (64); `score_fr` Conv2d(64, C, 1).
A 3x3 stride-1 deconvolution is a convolution with a flipped kernel, so the
3x3 decoder layers are convolutions (`jaxseg.heads.unpool_decoder`). 251,805,653
parameters with 21 classes (BN scale/bias counted, running statistics not).

Input size: the reference network works on 224x224 inputs, where pool5 is 7x7
and fc6 reduces it to 1x1 (the paper segments object proposals warped to
this size and aggregates them; that proposal pipeline is outside the model).
By default any other size is refused. With `fully_convolutional=True` the
network slides fc6 over larger pool5 maps: any H, W >= 193 works (ceil-mode
pooling gives pool5 >= 7 and fc6_deconv restores pool5's size exactly), which
is what whole-image training and evaluation need.

Paper result (PASCAL VOC 2012 test): EDeconvNet (ensemble with FCN-8s) + CRF
72.5 mIoU; DeconvNet alone 69.6.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import layers
from jaxseg.backbones.vgg import scaled_channels
from jaxseg.heads import unpool_decoder
from jaxseg.registry import build_backbone, register_model

Array = jax.Array

# (stage, ((name, in, out), ...)) of the deconvolution network in forward order.
DECONV_DECODER = (
  (5, (('deconv5_1', 512, 512), ('deconv5_2', 512, 512), ('deconv5_3', 512, 512))),
  (4, (('deconv4_1', 512, 512), ('deconv4_2', 512, 512), ('deconv4_3', 512, 256))),
  (3, (('deconv3_1', 256, 256), ('deconv3_2', 256, 256), ('deconv3_3', 256, 128))),
  (2, (('deconv2_1', 128, 128), ('deconv2_2', 128, 64))),
  (1, (('deconv1_1', 64, 64), ('deconv1_2', 64, 64))),
)

INPUT_SIZE = (224, 224)
MIN_FULLY_CONVOLUTIONAL_SIZE = 193  # ceil(193 / 32) = 7 = fc6's kernel


class DeconvBNReLU(nn.Module):
  """ConvTranspose2d -> BatchNorm -> ReLU (fc6_deconv).

  Attributes:
    features: output channels.
    kernel_size: kernel of the transposed convolution (stride 1, no padding).
    dtype: computation dtype.
  """

  features: int
  kernel_size: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    deconv = layers.ConvTranspose2d(
      self.features, self.kernel_size, 1, dtype=self.dtype, name='deconv'
    )
    x = layers.BatchNorm(dtype=self.dtype, name='bn')(deconv(x), train=train)
    return nn.relu(x)


class DeconvNet(nn.Module):
  """DeconvNet: VGG16-BN convolution network, fc6/fc7, mirrored deconvolution network.

  Attributes:
    num_classes: output channels.
    fully_convolutional: accept any H, W >= 193 (fc6 slides over pool5) instead of only 224x224.
    width: channel multiplier (1.0 is the paper's network; smaller gives tiny variants).
    dtype: computation dtype (e.g. jnp.bfloat16); logits are returned in float32.
  """

  num_classes: int
  fully_convolutional: bool = False
  width: float = 1.0
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    """Registered backbone whose variables equal `params['backbone']` (ImageNet initialisation).

    fc6/fc7 carry BatchNorm here, unlike VGG16's classifier, so only the
    convolutional layers are initialised from ImageNet.
    """
    return 'vgg16_bn', dict(width=self.width, ceil_mode=True, return_indices=True)

  def _check_size(self, x: Array, train: bool) -> None:
    size = tuple(x.shape[1:3])
    if self.fully_convolutional:
      layers.check_image_batch(x, 'DeconvNet', channels=3, min_size=MIN_FULLY_CONVOLUTIONAL_SIZE)
    else:
      layers.check_image_batch(x, 'DeconvNet', channels=3)
      if size != INPUT_SIZE:
        raise ValueError(
          f'DeconvNet expects {INPUT_SIZE[0]}x{INPUT_SIZE[1]} inputs (fc6 is a 7x7 VALID conv on the '
          f'7x7 pool5 map), got {size[0]}x{size[1]}. Resize or crop to 224x224 (the paper warps '
          f'object proposals to this size), or build it with fully_convolutional=True to run on '
          f'any size >= {MIN_FULLY_CONVOLUTIONAL_SIZE}.'
        )
    if train:
      # PyTorch refuses BatchNorm training on one value per channel; at 224x224
      # fc6/fc7 are 1x1, so a batch of one would normalise everything to zero.
      fc_values = x.shape[0] * int(np.prod([-(-s // 32) - 6 for s in size]))
      if fc_values < 2:
        raise ValueError(
          f'DeconvNet training needs more than one fc6 value per channel for BatchNorm, got a '
          f'batch of {x.shape[0]} at {size[0]}x{size[1]} (fc6 map {fc_values // x.shape[0]} '
          'pixel(s)); use a batch of at least 2.'
        )

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    self._check_size(x, train)
    w, dt = self.width, self.dtype
    feats = build_backbone(self.backbone_spec(), dtype=dt)(x, train=train)
    fc = scaled_channels(4096, w)
    x = layers.ConvBNReLU(fc, 7, padding=0, dtype=dt, name='fc6')(feats['pool5'], train=train)
    x = layers.ConvBNReLU(fc, 1, padding=0, dtype=dt, name='fc7')(x, train=train)
    x = DeconvBNReLU(scaled_channels(512, w), 7, dtype=dt, name='fc6_deconv')(x, train=train)
    x = unpool_decoder(x, feats, DECONV_DECODER, width=w, train=train, dtype=dt)
    x = layers.Conv2d(self.num_classes, 1, padding=0, dtype=dt, name='score_fr')(x)
    return x.astype(jnp.float32)


@register_model('deconvnet')
def deconvnet(*, num_classes: int, **kwargs) -> DeconvNet:
  return DeconvNet(num_classes=num_classes, **kwargs)
