"""DilatedNet: front-end + context module (Yu & Koltun, ICLR 2016).

"Multi-Scale Context Aggregation by Dilated Convolutions", arXiv:1511.07122.

* Front-end (Sec. 4): VGG-16 with pool4 and pool5 removed, conv5_x dilated by
  2 (`jaxseg.backbones.vgg_deeplab`, 'dilated' style), `fc6` a 7x7
  convolution dilated by 4 (4096), `fc7` 1x1 (4096), each with ReLU and
  dropout 0.5, and `final` a 1x1 classifier: class scores at output stride 8.
* Context module (Sec. 3, Table 1) on the C class-score maps: seven 3x3 layers
  with dilations 1, 1, 2, 4, 8, 16, 1 and a final 1x1, each but the last
  followed by ReLU ("truncation"). 'basic' keeps C channels everywhere;
  'large' uses 2C, 2C, 4C, 8C, 16C, 32C, 32C, then C. Both use the paper's
  identity initialisation (Eqs. 4 and 5): the centre tap copies (basic) or
  spreads with weight C / c_out (large) the input channels, all other
  weights are N(0, 1e-3^2) in 'large' and zero in 'basic'; biases are zero.
  The module starts as the identity on its (non-negative) input.
* Bilinear upsampling (align_corners=False, what the reference's fixed
  bilinear 16x16/8 deconvolution does away from the border) to the input size.

Deviation from the reference code (fyu/dilation): it runs unpadded
convolutions on a 186-pixel reflection-padded input (and pads the context
module's input by reflection); here every convolution is zero-padded to keep
its size, which gives the same strides and receptive fields for any input.

PyTorch layout (`jaxseg.weights`, 'dilatednet'): the Caffe names `conv1_1` ...
`conv5_3`, `fc6`, `fc7`, `final`, `ctx_conv1_1`, `ctx_conv1_2`, `ctx_conv2_1`,
`ctx_conv3_1`, `ctx_conv4_1`, `ctx_conv5_1`, `ctx_fc1`, `ctx_final`.

Paper (PASCAL VOC 2012 test): front-end 67.6 mIoU; front-end + large context
+ CRF-RNN, trained with Microsoft COCO, 75.3 (73.9 on val).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import layers
from jaxseg.backbones.vgg_deeplab import VGG16Dilated
from jaxseg.ops import resize_bilinear
from jaxseg.registry import register_model

Array = jax.Array

# (name, kernel, dilation, channel multiple of C in the 'large' module)
CONTEXT_LAYERS = (
  ('ctx_conv1_1', 3, 1, 2),
  ('ctx_conv1_2', 3, 1, 2),
  ('ctx_conv2_1', 3, 2, 4),
  ('ctx_conv3_1', 3, 4, 8),
  ('ctx_conv4_1', 3, 8, 16),
  ('ctx_conv5_1', 3, 16, 32),
  ('ctx_fc1', 3, 1, 32),
  ('ctx_final', 1, 1, 1),
)


def identity_init(num_classes: int, noise_std: float):
  """Yu & Koltun's identity initialisation for a (kh, kw, c_in, c_out) kernel (Eq. 5).

  k(t, a, b) = C / c_out at the centre tap t = 0 where floor(a C / c_in) ==
  floor(b C / c_out), else N(0, noise_std^2); with c_in == c_out == C and no
  noise this is Eq. 4 (k = 1 on the centre tap's diagonal).
  """

  def init(key, shape, dtype=jnp.float32):
    kh, kw, c_in, c_out = shape
    a = np.arange(c_in)[:, None] * num_classes // c_in
    b = np.arange(c_out)[None, :] * num_classes // c_out
    centre = np.where(a == b, num_classes / c_out, 0.0).astype(np.float32)
    kernel = noise_std * jax.random.normal(key, shape, jnp.float32)
    kernel = kernel.at[kh // 2, kw // 2].set(jnp.asarray(centre))
    return kernel.astype(dtype)

  return init


class ContextModule(nn.Module):
  """The context module on C class-score maps.

  Attributes:
    num_classes: C (input and output channels).
    size: 'basic' or 'large'.
    noise_std: std of the non-identity weights of the 'large' module.
    dtype: computation dtype.
  """

  num_classes: int
  size: str = 'large'
  noise_std: float = 1e-3
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.size not in ('basic', 'large'):
      raise ValueError(f"context module size must be 'basic' or 'large', got {self.size!r}.")
    c = self.num_classes
    if x.shape[-1] != c:
      raise ValueError(f'the context module expects {c} class-score channels, got {x.shape[-1]}.')
    large = self.size == 'large'
    for i, (name, k, d, mult) in enumerate(CONTEXT_LAYERS):
      out = c * mult if large else c
      x = layers.Conv2d(
        out,
        k,
        padding=d * (k // 2),
        dilation=d,
        kernel_init=identity_init(c, self.noise_std if large else 0.0),
        dtype=self.dtype,
        name=name,
      )(x)
      if i < len(CONTEXT_LAYERS) - 1:
        x = nn.relu(x)
    return x


class DilatedNet(nn.Module):
  """Yu & Koltun's dilated front-end with an optional context module.

  Attributes:
    num_classes: output channels.
    context: 'large' (Dilation8, the default), 'basic' or None (front-end only).
    fc_features: channels of fc6 / fc7 (4096).
    dropout: dropout rate after fc6 and fc7.
    width: channel multiplier of the VGG part and of fc6/fc7 (1.0; smaller only for tests).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  context: str | None = 'large'
  fc_features: int = 4096
  dropout: float = 0.5
  width: float = 1.0
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    return 'vgg16_dilated', {'width': self.width, 'dtype': self.dtype}

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.context not in (None, 'basic', 'large'):
      raise ValueError(
        f"DilatedNet context must be 'large', 'basic' or None, got {self.context!r}."
      )
    layers.check_image_batch(x, 'DilatedNet', channels=3, min_size=8)
    height, width = x.shape[1:3]
    h = VGG16Dilated(width=self.width, dtype=self.dtype, name='backbone')(x, train=train)['out']
    fc = max(1, int(round(self.fc_features * self.width)))
    h = nn.relu(layers.Conv2d(fc, 7, padding=12, dilation=4, dtype=self.dtype, name='fc6')(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = nn.relu(layers.Conv2d(fc, 1, dtype=self.dtype, name='fc7')(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = layers.Conv2d(self.num_classes, 1, dtype=self.dtype, name='final')(h)
    if self.context is not None:
      # Flax module names are flat (ctx_conv1_1, ...) so the Caffe names map 1:1.
      h = ContextModule(self.num_classes, self.context, dtype=self.dtype, name='context')(h)
    return resize_bilinear(h.astype(jnp.float32), (height, width), align_corners=False)


@register_model('dilatednet')
def dilatednet(*, num_classes: int, **kwargs) -> DilatedNet:
  return DilatedNet(num_classes=num_classes, **kwargs)
