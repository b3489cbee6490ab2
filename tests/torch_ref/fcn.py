"""FCN-32s/16s/8s in the pytorch-fcn (torchfcn) layout: conv1_1 ... fc7, score_*, upscore*."""

import torch
from torch import nn

_CFG = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


class FCN(nn.Module):
  def __init__(self, n_class=21, stride=8):
    super().__init__()
    self.stride = stride
    cin = 3
    for s, n, ch in _CFG:
      for i in range(1, n + 1):
        setattr(self, f'conv{s}_{i}', nn.Conv2d(cin, ch, 3, padding=100 if (s, i) == (1, 1) else 1))
        cin = ch
    self.fc6 = nn.Conv2d(512, 4096, 7)
    self.fc7 = nn.Conv2d(4096, 4096, 1)
    self.drop = nn.Dropout2d()
    self.score_fr = nn.Conv2d(4096, n_class, 1)
    if stride == 32:
      self.upscore = nn.ConvTranspose2d(n_class, n_class, 64, 32, bias=False)
    else:
      self.score_pool4 = nn.Conv2d(512, n_class, 1)
      self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, 2, bias=False)
      if stride == 16:
        self.upscore16 = nn.ConvTranspose2d(n_class, n_class, 32, 16, bias=False)
      else:
        self.score_pool3 = nn.Conv2d(256, n_class, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, 2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, 8, bias=False)

  def forward(self, x):
    h = x
    feats = {}
    for s, n, _ in _CFG:
      for i in range(1, n + 1):
        h = torch.relu(getattr(self, f'conv{s}_{i}')(h))
      h = nn.functional.max_pool2d(h, 2, 2, ceil_mode=True)
      feats[s] = h
    h = self.drop(torch.relu(self.fc6(h)))
    h = self.drop(torch.relu(self.fc7(h)))
    h = self.score_fr(h)
    H, W = x.shape[2:]
    if self.stride == 32:
      h = self.upscore(h)
      return h[:, :, 19 : 19 + H, 19 : 19 + W]
    up2 = self.upscore2(h)
    p4 = self.score_pool4(feats[4])[:, :, 5 : 5 + up2.shape[2], 5 : 5 + up2.shape[3]]
    h = up2 + p4
    if self.stride == 16:
      h = self.upscore16(h)
      return h[:, :, 27 : 27 + H, 27 : 27 + W]
    up4 = self.upscore_pool4(h)
    p3 = self.score_pool3(feats[3])[:, :, 9 : 9 + up4.shape[2], 9 : 9 + up4.shape[3]]
    h = self.upscore8(up4 + p3)
    return h[:, :, 31 : 31 + H, 31 : 31 + W]
