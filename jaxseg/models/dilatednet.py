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

Two geometries (`padding`), the same parameters:

* 'reflect_valid' (default; the reference code, fyu/dilation): the input is
  reflection-padded by 186 pixels on each side (OpenCV's BORDER_REFLECT_101,
  i.e. without repeating the edge pixel, reflected again where the image is
  smaller than the margin) and every front-end convolution is unpadded, with
  Caffe's ceil-mode 2x2 pools. An H x W image gives a ceil(H/8) x ceil(W/8)
  score map (H = 8k: 8k + 372 -> 8k + 368 -> 4k + 184 -> ... -> k + 24 -> k);
  any H, W >= 1 works. The context module follows the released nets: 'large'
  zero-pads its input once by 33 (its total shrinkage) and runs unpadded
  convolutions (the Dilation8 PASCAL VOC deploy net), 'basic' zero-pads each
  convolution (`network.py`, the CamVid deploy net). Score i is then
  upsampled as the reference's `util.interp_map` does (zoom 8): output row h
  interpolates rows h // 8 and h // 8 + 1 with weight (h mod 8) / 8, so score
  i sits on image pixel 8i, where the reference's training labels are sampled
  (`label_slice` stride 8 from the margin). Near the bottom and right edges
  the reference's `predict.py` runs a fixed 900 x 900 tile whose extra border
  continues the reflection; here, when H is not a multiple of 8 the last
  score's window runs past the padded input (the ceil-mode pools take the
  partial windows), and the zoom repeats the last score where it needs one
  past the map. For the front-end the two differ in those last rows and
  columns (fewer than 16) only. The context module's 67-score window spans
  the whole map, so there predict.py's tile, which also feeds it the scores
  of the reflected canvas beyond the image, changes every output; the layers
  and their padding are the same.
* 'same' (jaxseg's variant): every convolution is zero-padded to keep its
  size (fc6 by 12), giving a ceil(H/8) score map with the same strides and
  receptive fields, and the scores are upsampled bilinearly with
  align_corners=False (what the reference's fixed bilinear 16x16/8
  deconvolution, used with `--up`, does away from the border); H, W >= 8.

PyTorch layout (`jaxseg.weights`, 'dilatednet'): the Caffe names `conv1_1` ...
`conv5_3`, `fc6`, `fc7`, `final`, `ctx_conv1_1`, `ctx_conv1_2`, `ctx_conv2_1`,
`ctx_conv3_1`, `ctx_conv4_1`, `ctx_conv5_1`, `ctx_fc1`, `ctx_final` (as
`network.py` writes them; the Dilation8 VOC deploy net spells the classifier
`fc-final` and the context layers `ct_*`). Both geometries, with and without
either context module, match tests/torch_ref/dilatednet.py within 1e-4
relative on the same weights.

Paper (PASCAL VOC 2012 test): front-end 67.6 mIoU; front-end + large context
+ CRF-RNN, trained with Microsoft COCO, 75.3 (73.9 on val).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import layers
from jaxseg.backbones.vgg import scaled_channels
from jaxseg.heads import fc_classifier
from jaxseg.ops import resize_bilinear
from jaxseg.registry import build_backbone, register_model

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
# fyu/dilation's `label_margin`: the unpadded front-end shrinks its input by 2 x 186.
REFLECT_MARGIN = 186
ZOOM = 8
PADDINGS = ('reflect_valid', 'same')
# The front-end's fc6 / fc7 channels (VGG-16's) and their dropout rate.
FC_FEATURES = 4096
DROPOUT = 0.5
# Std of the non-identity weights of the 'large' context module (Sec. 3).
IDENTITY_NOISE_STD = 1e-3


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


def reflect_pad(x: Array, margin: int) -> Array:
  """Pads H and W of an NHWC array as cv2.copyMakeBorder(..., BORDER_REFLECT_101) does.

  Margins wider than the image reflect again (period 2 (size - 1)); a single
  row is repeated. One gather per axis with static indices: jnp.pad's
  'reflect' builds a chain of concatenations that grows with margin / size.
  """
  for axis in (1, 2):
    x = jnp.take(x, np.pad(np.arange(x.shape[axis]), margin, mode='reflect'), axis=axis)
  return x


@functools.lru_cache(maxsize=256)
def _zoom_matrix(in_size: int, out_size: int, zoom: int) -> np.ndarray:
  """(out_size, in_size) matrix of the reference's `interp_map` along one axis."""
  if not (in_size - 1) * zoom < out_size <= in_size * zoom:
    raise ValueError(f'zoom {zoom}: {in_size} scores cannot cover {out_size} pixels.')
  h = np.arange(out_size)
  r0 = h // zoom
  frac = (h % zoom) / zoom
  m = np.zeros((out_size, in_size), np.float64)
  m[h, r0] += 1.0 - frac
  m[h, np.minimum(r0 + 1, in_size - 1)] += frac  # past the last score: repeat it
  return m.astype(np.float32)


def zoom_bilinear(x: Array, size: tuple[int, int], zoom: int = ZOOM) -> Array:
  """Upsamples NHWC scores by `zoom` with score i on pixel zoom * i, cropped to `size`."""
  mh = jnp.asarray(_zoom_matrix(x.shape[1], int(size[0]), zoom), x.dtype)
  mw = jnp.asarray(_zoom_matrix(x.shape[2], int(size[1]), zoom), x.dtype)
  y = jnp.einsum('oh,nhwc->nowc', mh, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('pw,nowc->nopc', mw, y, precision=jax.lax.Precision.HIGHEST)


class ContextModule(nn.Module):
  """The context module on C class-score maps.

  Attributes:
    num_classes: C (input and output channels).
    size: 'basic' or 'large'.
    pad_input: zero-pad the input once by the module's total shrinkage (33)
      and run unpadded convolutions (the reference's Dilation8 VOC net) instead
      of zero-padding each convolution. Both keep the spatial size.
    dtype: computation dtype.
  """

  num_classes: int
  size: str = 'large'
  pad_input: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.size not in ('basic', 'large'):
      raise ValueError(f"context module size must be 'basic' or 'large', got {self.size!r}.")
    c = self.num_classes
    if x.shape[-1] != c:
      raise ValueError(f'the context module expects {c} class-score channels, got {x.shape[-1]}.')
    large = self.size == 'large'
    if self.pad_input:
      m = sum(d * (k // 2) for _, k, d, _ in CONTEXT_LAYERS)
      x = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
    for i, (name, k, d, mult) in enumerate(CONTEXT_LAYERS):
      out = c * mult if large else c
      x = layers.Conv2d(
        out,
        k,
        padding=0 if self.pad_input else d * (k // 2),
        dilation=d,
        kernel_init=identity_init(c, IDENTITY_NOISE_STD if large else 0.0),
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
    padding: 'reflect_valid' (the reference's 186-pixel reflection margin,
      unpadded convolutions and zoom-8 interpolation) or 'same' (zero-padded
      convolutions, align_corners=False upsampling); see the module docstring.
    width: channel multiplier of the VGG part and of fc6/fc7 (1.0; smaller gives tiny variants).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  context: str | None = 'large'
  padding: str = 'reflect_valid'
  width: float = 1.0
  dtype: Any = None

  def backbone_spec(self) -> tuple[str, dict]:
    # The padding (a module argument of build_backbone) does not change the variables.
    return 'vgg16_dilated', {'width': self.width}

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.context not in (None, 'basic', 'large'):
      raise ValueError(
        f"DilatedNet context must be 'large', 'basic' or None, got {self.context!r}."
      )
    if self.padding not in PADDINGS:
      raise ValueError(
        f"DilatedNet padding must be 'reflect_valid' or 'same', got {self.padding!r}."
      )
    valid = self.padding == 'reflect_valid'
    layers.check_image_batch(x, 'DilatedNet', channels=3, min_size=1 if valid else 8)
    height, width = x.shape[1:3]
    if valid:
      x = reflect_pad(x, REFLECT_MARGIN)
    padding = 'valid' if valid else 'same'
    backbone = build_backbone(self.backbone_spec(), padding=padding, dtype=self.dtype)
    h = fc_classifier(
      backbone(x, train=train)['out'],
      self.num_classes,
      features=scaled_channels(FC_FEATURES, self.width),
      kernel_size=7,
      dilation=4,
      padding=0 if valid else 12,
      dropout=DROPOUT,
      classifier='final',
      train=train,
      dtype=self.dtype,
    )
    if self.context is not None:
      # Flax module names are flat (ctx_conv1_1, ...) so the Caffe names map 1:1.
      pad_input = valid and self.context == 'large'
      context = ContextModule(
        self.num_classes, self.context, pad_input=pad_input, dtype=self.dtype, name='context'
      )
      h = context(h)
    h = h.astype(jnp.float32)
    if valid:
      return zoom_bilinear(h, (height, width))
    return resize_bilinear(h, (height, width), align_corners=False)


@register_model('dilatednet')
def dilatednet(*, num_classes: int, **kwargs) -> DilatedNet:
  return DilatedNet(num_classes=num_classes, **kwargs)
