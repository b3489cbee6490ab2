"""U-Net in the layout of milesial/Pytorch-UNet (the most copied PyTorch U-Net).

Keys: `inc.double_conv.*`, `down{1..4}.maxpool_conv.1.double_conv.*`,
`up{1..4}.up.*` (2x2 stride-2 ConvTranspose2d halving the channels),
`up{1..4}.conv.double_conv.*`, `outc.conv.*`.

* valid=True, the original (Ronneberger et al. 2015): unpadded 3x3 convs with
  bias and ReLU, no BatchNorm (`double_conv.0`, `double_conv.2`); the skip is
  center-cropped to the upsampled map before concatenation [skip, up].
* valid=False, `unet_padded`: milesial's DoubleConv (3x3 p1 bias-free conv,
  BatchNorm, ReLU, twice: `double_conv.0/1/3/4`); the input is zero-padded at
  the bottom/right to a multiple of 16 and the logits cropped back.
`base` is the first level's width (64 in the paper; tests use less).
"""

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
  def __init__(self, cin, cout, valid):
    super().__init__()
    if valid:
      self.double_conv = nn.Sequential(
        nn.Conv2d(cin, cout, 3), nn.ReLU(), nn.Conv2d(cout, cout, 3), nn.ReLU()
      )
    else:
      self.double_conv = nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
      )

  def forward(self, x):
    return self.double_conv(x)


class Down(nn.Module):
  def __init__(self, cin, cout, valid):
    super().__init__()
    self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout, valid))

  def forward(self, x):
    return self.maxpool_conv(x)


class Up(nn.Module):
  def __init__(self, cin, cout, valid):
    super().__init__()
    self.up = nn.ConvTranspose2d(cin, cin // 2, 2, 2)
    self.conv = DoubleConv(cin, cout, valid)

  def forward(self, x, skip):
    x = self.up(x)
    h, w = x.shape[2:]
    top, left = (skip.shape[2] - h) // 2, (skip.shape[3] - w) // 2
    skip = skip[:, :, top : top + h, left : left + w]
    return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 1)

  def forward(self, x):
    return self.conv(x)


class UNet(nn.Module):
  def __init__(self, in_channels=1, num_classes=2, valid=True, base=64):
    super().__init__()
    self.valid = valid
    c = [base * 2**i for i in range(5)]
    self.inc = DoubleConv(in_channels, c[0], valid)
    for i in range(1, 5):
      setattr(self, f'down{i}', Down(c[i - 1], c[i], valid))
    for i in range(1, 5):
      setattr(self, f'up{i}', Up(c[5 - i], c[4 - i], valid))
    self.outc = OutConv(c[0], num_classes)

  def forward(self, x):
    h, w = x.shape[2:]
    if not self.valid:
      x = F.pad(x, (0, -w % 16, 0, -h % 16))
    skips = [self.inc(x)]
    for i in range(1, 5):
      skips.append(getattr(self, f'down{i}')(skips[-1]))
    x = skips.pop()
    for i in range(1, 5):
      x = getattr(self, f'up{i}')(x, skips.pop())
    x = self.outc(x)
    return x if self.valid else x[:, :, :h, :w]


if __name__ == '__main__':
  for valid, cin in ((True, 1), (False, 1), (False, 3)):
    print(valid, cin, sum(p.numel() for p in UNet(cin, 2, valid).parameters()))
  print(UNet(1, 2, True, 4)(torch.zeros(1, 1, 572, 572)).shape)
