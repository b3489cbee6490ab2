"""DeepLab-LargeFOV (DeepLab v1) in PyTorch, Caffe prototxt names: conv1_1 ... conv5_3, fc6, fc7, fc8.

Pools: 3x3 max with padding 1 and ceil rounding (stride 2 for pool1-3, 1 for
pool4/pool5), pool5a 3x3/1 average (padding counted), conv5 dilation 2, fc6
3x3 dilation 12 (1024), fc7 1x1 (1024), fc8 1x1, bilinear upsampling with
align_corners=True to the input size.
"""

import torch
from torch import nn
from torch.nn import functional as F

_CFG = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


class DeepLabLargeFOV(nn.Module):
  def __init__(self, n_class=21, fc=1024):
    super().__init__()
    cin = 3
    for s, n, ch in _CFG:
      d = 2 if s == 5 else 1
      for i in range(1, n + 1):
        setattr(self, f'conv{s}_{i}', nn.Conv2d(cin, ch, 3, padding=d, dilation=d))
        cin = ch
    self.fc6 = nn.Conv2d(512, fc, 3, padding=12, dilation=12)
    self.fc7 = nn.Conv2d(fc, fc, 1)
    self.fc8 = nn.Conv2d(fc, n_class, 1)
    self.drop = nn.Dropout(0.5)

  def forward(self, x):
    h = x
    for s, n, _ in _CFG:
      for i in range(1, n + 1):
        h = torch.relu(getattr(self, f'conv{s}_{i}')(h))
      h = F.max_pool2d(h, 3, 2 if s <= 3 else 1, 1, ceil_mode=True)
    h = F.avg_pool2d(h, 3, 1, 1)
    h = self.drop(torch.relu(self.fc6(h)))
    h = self.drop(torch.relu(self.fc7(h)))
    h = self.fc8(h)
    return F.interpolate(h, size=x.shape[2:], mode='bilinear', align_corners=True)
