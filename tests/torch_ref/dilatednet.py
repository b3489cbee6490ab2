"""DilatedNet (Yu & Koltun) in PyTorch with fyu/dilation's Caffe layer names.

Front-end: `conv1_1` ... `conv5_3` (3x3, conv5_x dilation 2), 2x2/2 max pools
with Caffe's ceil rounding after stages 1-3, `fc6` 7x7 dilation 4, `fc7` 1x1,
`final` 1x1; context module `ctx_conv1_1`, `ctx_conv1_2`, `ctx_conv2_1`,
`ctx_conv3_1`, `ctx_conv4_1`, `ctx_conv5_1` (dilations 1, 1, 2, 4, 8, 16),
`ctx_fc1` 3x3, `ctx_final` 1x1; 'basic' keeps C channels, 'large' uses
2C, 2C, 4C, 8C, 16C, 32C, 32C.

padding='reflect_valid' is the reference's deploy pipeline: the image is
reflection-padded by 186 on each side (cv2.BORDER_REFLECT_101, reflected
again where the image is smaller than the margin), every front-end
convolution is unpadded; the 'large' context module zero-pads its input by 33
and runs unpadded convolutions (Dilation8 VOC deploy net), the 'basic' one
zero-pads each convolution (network.py); the scores are zoomed by 8 as
`util.interp_map` does (pixel h reads scores h // 8 and h // 8 + 1 with weight
(h mod 8) / 8; the last score is repeated past the end). padding='same'
zero-pads every convolution and upsamples with F.interpolate(align_corners=False).

`width` scales the VGG and fc6/fc7 channels (rounded as jaxseg rounds them) so
the parity tests run on small networks.
"""

import torch
from torch import nn
from torch.nn import functional as F

_CFG = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
_CONTEXT = (
  ('ctx_conv1_1', 3, 1, 2),
  ('ctx_conv1_2', 3, 1, 2),
  ('ctx_conv2_1', 3, 2, 4),
  ('ctx_conv3_1', 3, 4, 8),
  ('ctx_conv4_1', 3, 8, 16),
  ('ctx_conv5_1', 3, 16, 32),
  ('ctx_fc1', 3, 1, 32),
  ('ctx_final', 1, 1, 1),
)
MARGIN = 186
ZOOM = 8


def reflect_pad(x, margin):
  """cv2.copyMakeBorder(..., BORDER_REFLECT_101) of an NCHW tensor, for any margin.

  F.pad's 'reflect' needs margin < size; reflecting the padded tensor again
  continues the same mirror pattern (period 2 (size - 1)).
  """
  for dim in (2, 3):
    left = margin
    while left > 0:
      size = x.shape[dim]
      # A single row/column reflects onto itself (cv2 repeats it).
      step, mode = (min(left, size - 1), 'reflect') if size > 1 else (left, 'replicate')
      x = F.pad(x, (0, 0, step, step) if dim == 2 else (step, step, 0, 0), mode=mode)
      left -= step
  return x


def zoom(h, size, factor=ZOOM):
  """fyu/dilation's util.interp_map on an NCHW tensor, cropped to `size`, last score repeated."""
  for dim, n_out in ((2, size[0]), (3, size[1])):
    n_in = h.shape[dim]
    pix = torch.arange(n_out)
    r0 = pix // factor
    r1 = torch.clamp(r0 + 1, max=n_in - 1)
    t = (pix % factor).to(h.dtype) / factor
    shape = [1, 1, 1, 1]
    shape[dim] = n_out
    t = t.reshape(shape)
    h = h.index_select(dim, r0) * (1 - t) + h.index_select(dim, r1) * t
  return h


class DilatedNet(nn.Module):
  def __init__(self, n_class=21, context=None, padding='reflect_valid', width=1.0, fc=4096):
    super().__init__()
    assert padding in ('reflect_valid', 'same') and context in (None, 'basic', 'large')
    self.padding, self.context = padding, context
    valid = padding == 'reflect_valid'
    cin = 3
    for s, n, ch in _CFG:
      ch = max(1, int(round(ch * width)))
      d = 2 if s == 5 else 1
      for i in range(1, n + 1):
        setattr(self, f'conv{s}_{i}', nn.Conv2d(cin, ch, 3, padding=0 if valid else d, dilation=d))
        cin = ch
    fc = max(1, int(round(fc * width)))
    self.fc6 = nn.Conv2d(cin, fc, 7, padding=0 if valid else 12, dilation=4)
    self.fc7 = nn.Conv2d(fc, fc, 1)
    self.final = nn.Conv2d(fc, n_class, 1)
    self.drop = nn.Dropout(0.5)
    # The Dilation8 VOC net pads the large module's input once; network.py pads each basic layer.
    self.ctx_pad_input = valid and context == 'large'
    cin = n_class
    for name, k, d, mult in _CONTEXT if context else ():
      cout = n_class * mult if context == 'large' else n_class
      pad = 0 if self.ctx_pad_input else d * (k // 2)
      setattr(self, name, nn.Conv2d(cin, cout, k, padding=pad, dilation=d))
      cin = cout

  def frontend(self, h):
    """conv1_1 ... final on an (already padded) NCHW input: stride-8 class scores."""
    for s, n, _ in _CFG:
      for i in range(1, n + 1):
        h = torch.relu(getattr(self, f'conv{s}_{i}')(h))
      if s <= 3:
        h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    h = self.drop(torch.relu(self.fc6(h)))
    h = self.drop(torch.relu(self.fc7(h)))
    return self.final(h)

  def forward(self, x):
    size = x.shape[2:]
    h = self.frontend(reflect_pad(x, MARGIN) if self.padding == 'reflect_valid' else x)
    if self.context:
      if self.ctx_pad_input:
        h = F.pad(h, (33, 33, 33, 33))
      for j, (name, *_) in enumerate(_CONTEXT):
        h = getattr(self, name)(h)
        if j < len(_CONTEXT) - 1:
          h = torch.relu(h)
    if self.padding == 'reflect_valid':
      return zoom(h, size)
    return F.interpolate(h, size=size, mode='bilinear', align_corners=False)
