"""PyTorch modified aligned Xception-65 in the key layout of jfzhang95/pytorch-deeplab-xception.

Written for the parity tests of `jaxseg.backbones.xception` (and DeepLabv3+ with
it). Module names, hence state-dict keys, are that repository's
(`modeling/backbone/xception.py`, `AlignedXception`):

  conv1/bn1, conv2/bn2 (stem); block1..block20 (entry 1-3, middle 4-19, exit 20),
  each `rep.<i>` = [ReLU,] SeparableConv2d, BatchNorm2d, ReLU, SeparableConv2d,
  BatchNorm2d, ReLU, SeparableConv2d, BatchNorm2d (block1 and block2 have no
  leading ReLU module, so their indices start at 0), with `skip`/`skipbn`
  (1x1 conv + BN) in blocks 1-3 and 20; conv3..conv5 (SeparableConv2d) with
  bn3..bn5. A SeparableConv2d is `conv1` (3x3 depthwise, explicit
  "fixed padding" then no padding), `bn` (BN after the depthwise conv) and
  `pointwise` (1x1); its BN after the pointwise conv is the next module.

Two computations on the same modules (`variant`):

* 'jfzhang95': that repository's forward. Its ReLUs are in place, so the
  leading ReLU of a block also rectifies the tensor its shortcut reads: every
  shortcut (1x1 projection or identity) takes relu(input); the stride-4
  low-level features are relu(block1 output) (128 channels); the exit flow
  applies ReLU before conv3 and after bn3..bn5 but none after the depthwise
  convs of conv3..conv5; the third separable conv of block20 (and block3)
  always has dilation 1 (dilation 2 for its first two at output stride 8).
* 'paper': the paper's TensorFlow reference (tensorflow/models
  research/deeplab, `xception_65`), which is what `jaxseg.backbones.xception`
  computes by default: shortcuts take the block input itself; the low-level
  features are the output of block2's second separable conv (+ BN, 256
  channels); the exit flow's last three separable convs run on the block20 output
  directly with BN + ReLU after each depthwise and each pointwise conv; every
  separable conv of a block uses the block's rate.

Output stride 16 or 8 as that repository: block3 unstrided at 8, middle-flow
dilation 1 / 2, exit dilations (1, 2) / (2, 4).
"""

import torch.nn.functional as F
from torch import nn

from torch_ref.deeplab_v3plus import ASPP, Decoder

VARIANTS = ('paper', 'jfzhang95')


def fixed_padding(x, kernel_size, dilation):
  """Pads so that a VALID conv with this kernel and dilation keeps the 'same' alignment (TF's rule)."""
  total = (kernel_size - 1) * dilation
  return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


class SeparableConv2d(nn.Module):
  def __init__(self, cin, cout, stride=1, dilation=1):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cin, 3, stride, 0, dilation, groups=cin, bias=False)
    self.bn = nn.BatchNorm2d(cin)
    self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

  def forward(self, x, depthwise_relu=False):
    x = self.bn(self.conv1(fixed_padding(x, 3, self.conv1.dilation[0])))
    return self.pointwise(F.relu(x) if depthwise_relu else x)


class Block(nn.Module):
  """Three (ReLU, separable conv, BN) with the third strided; 1x1 conv + BN or identity shortcut."""

  def __init__(self, cin, depths, stride=1, dilation=1, last_dilation=None, start_with_relu=True):
    super().__init__()
    if depths[-1] != cin or stride != 1:
      self.skip = nn.Conv2d(cin, depths[-1], 1, stride=stride, bias=False)
      self.skipbn = nn.BatchNorm2d(depths[-1])
    else:
      self.skip = None
    rep, c = [], cin
    for i, depth in enumerate(depths):
      if i > 0 or start_with_relu:
        rep.append(nn.ReLU())
      d = dilation if i < 2 or last_dilation is None else last_dilation
      rep += [SeparableConv2d(c, depth, stride if i == 2 else 1, d), nn.BatchNorm2d(depth)]
      c = depth
    self.rep = nn.Sequential(*rep)

  def forward(self, inp, shortcut_from_relu):
    """Returns (output, output of the second separable conv + BN)."""
    x, second, n_bn = F.relu(inp), None, 0
    for m in self.rep:
      x = m(x)
      if isinstance(m, nn.BatchNorm2d):
        n_bn += 1
        second = x if n_bn == 2 else second
    s = F.relu(inp) if shortcut_from_relu else inp
    return x + (s if self.skip is None else self.skipbn(self.skip(s))), second


class AlignedXception(nn.Module):
  """Xception-65 backbone: forward returns (stride-OS features, stride-4 low-level features)."""

  def __init__(self, output_stride=16, variant='paper'):
    super().__init__()
    if variant not in VARIANTS:
      raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')
    if output_stride not in (16, 8):
      raise ValueError(f'output_stride must be 16 or 8, got {output_stride!r}')
    self.variant = variant
    os16 = output_stride == 16
    middle, exit_rates = (1, (1, 2)) if os16 else (2, (2, 4))
    # The jfzhang95 layout builds block3's and block20's third separable conv with dilation 1.
    last = 1 if variant == 'jfzhang95' else None
    self.conv1 = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(32)
    self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(64)
    self.block1 = Block(64, (128,) * 3, stride=2, start_with_relu=False)
    self.block2 = Block(128, (256,) * 3, stride=2, start_with_relu=False)
    self.block3 = Block(256, (728,) * 3, stride=2 if os16 else 1, last_dilation=last)
    for i in range(4, 20):
      setattr(self, f'block{i}', Block(728, (728,) * 3, dilation=middle))
    self.block20 = Block(728, (728, 1024, 1024), dilation=exit_rates[0], last_dilation=last)
    for i, (cin, cout) in enumerate(((1024, 1536), (1536, 1536), (1536, 2048)), 3):
      setattr(self, f'conv{i}', SeparableConv2d(cin, cout, dilation=exit_rates[1]))
      setattr(self, f'bn{i}', nn.BatchNorm2d(cout))

  @property
  def low_level_channels(self):
    return 128 if self.variant == 'jfzhang95' else 256

  def forward(self, x):
    jf = self.variant == 'jfzhang95'
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    x, _ = self.block1(x, jf)
    low = F.relu(x) if jf else None
    x, second = self.block2(x, jf)
    low = second if low is None else low
    for i in range(3, 21):
      x, _ = getattr(self, f'block{i}')(x, jf)
    if jf:
      x = F.relu(x)
    for i in (3, 4, 5):
      x = F.relu(getattr(self, f'bn{i}')(getattr(self, f'conv{i}')(x, depthwise_relu=not jf)))
    return x, low


class DeepLabV3PlusXception(nn.Module):
  """DeepLab(backbone='xception') of that repository: plain 3x3 ASPP and decoder convs, its dropouts."""

  def __init__(self, num_classes, output_stride=16, variant='paper'):
    super().__init__()
    self.backbone = AlignedXception(output_stride, variant)
    self.aspp = ASPP(2048, (6, 12, 18) if output_stride == 16 else (12, 24, 36))
    self.decoder = Decoder(num_classes, self.backbone.low_level_channels)

  def forward(self, inputs):
    x, low = self.backbone(inputs)
    x = self.decoder(self.aspp(x), low)
    return F.interpolate(x, size=inputs.shape[2:], mode='bilinear', align_corners=True)
