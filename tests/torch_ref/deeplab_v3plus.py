"""PyTorch DeepLabv3+ in the key layout of jfzhang95/pytorch-deeplab-xception (modeling/deeplab.py).

Written for the parity tests from the paper and that layout: a ResNet encoder
(torchvision's ResNet modules at output stride 16 with layer4 unit rates
2, 4, 8: that repository's ResNet-101 with multi-grid (1, 2, 4) has the same
keys and computation), ASPP with plain 3x3 atrous convs (`aspp.aspp1..4`,
`aspp.global_avg_pool`, `aspp.conv1`, `aspp.bn1`, dropout 0.5) and the decoder
(`decoder.conv1`, `decoder.bn1`, `decoder.last_conv` with dropouts 0.5 / 0.1),
bilinear resizing with align_corners=True.
"""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class _Branch(nn.Module):
  def __init__(self, cin, cout, kernel, dilation):
    super().__init__()
    pad = 0 if kernel == 1 else dilation
    self.atrous_conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return F.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
  def __init__(self, cin=2048, rates=(6, 12, 18)):
    super().__init__()
    self.aspp1 = _Branch(cin, 256, 1, 1)
    self.aspp2 = _Branch(cin, 256, 3, rates[0])
    self.aspp3 = _Branch(cin, 256, 3, rates[1])
    self.aspp4 = _Branch(cin, 256, 3, rates[2])
    self.global_avg_pool = nn.Sequential(
      nn.AdaptiveAvgPool2d((1, 1)),
      nn.Conv2d(cin, 256, 1, bias=False),
      nn.BatchNorm2d(256),
      nn.ReLU(),
    )
    self.conv1 = nn.Conv2d(1280, 256, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(256)
    self.dropout = nn.Dropout(0.5)

  def forward(self, x):
    outs = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)]
    pooled = self.global_avg_pool(x)
    outs.append(F.interpolate(pooled, size=x.shape[2:], mode='bilinear', align_corners=True))
    return self.dropout(F.relu(self.bn1(self.conv1(torch.cat(outs, 1)))))


class Decoder(nn.Module):
  def __init__(self, num_classes, low_level_channels=256):
    super().__init__()
    self.conv1 = nn.Conv2d(low_level_channels, 48, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(48)
    self.last_conv = nn.Sequential(
      nn.Conv2d(304, 256, 3, padding=1, bias=False),
      nn.BatchNorm2d(256),
      nn.ReLU(),
      nn.Dropout(0.5),
      nn.Conv2d(256, 256, 3, padding=1, bias=False),
      nn.BatchNorm2d(256),
      nn.ReLU(),
      nn.Dropout(0.1),
      nn.Conv2d(256, num_classes, 1),
    )

  def forward(self, x, low):
    low = F.relu(self.bn1(self.conv1(low)))
    x = F.interpolate(x, size=low.shape[2:], mode='bilinear', align_corners=True)
    return self.last_conv(torch.cat([x, low], 1))


class DeepLabV3Plus(nn.Module):
  """ResNet encoder (multi-grid 1/2/4) + ASPP + decoder, jfzhang95 keys.

  Output stride 16: layer4 rates 2, 4, 8, ASPP 6/12/18. Output stride 8: every
  layer3 block at rate 2 (the first included, as that repository's
  `_make_layer` passes the stage dilation to every block), layer4 rates 4, 8,
  16, ASPP 12/24/36.
  """

  def __init__(self, num_classes, depth=101, output_stride=16):
    super().__init__()
    os8 = output_stride == 8
    resnet = getattr(torchvision.models, f'resnet{depth}')(
      weights=None, replace_stride_with_dilation=[False, os8, True]
    )
    stage_rate = 4 if os8 else 2
    for block, grid in zip(resnet.layer4, (1, 2, 4), strict=True):
      block.conv2.dilation = block.conv2.padding = (stage_rate * grid,) * 2
    if os8:
      for block in resnet.layer3:
        block.conv2.dilation = block.conv2.padding = (2, 2)
    resnet.fc = nn.Identity()  # that repository's ResNet has no classifier
    self.backbone = resnet
    self.aspp = ASPP(rates=(12, 24, 36) if os8 else (6, 12, 18))
    self.decoder = Decoder(num_classes)

  def encoder(self, x):
    b = self.backbone
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
    low = b.layer1(x)
    return b.layer4(b.layer3(b.layer2(low))), low

  def forward(self, inputs):
    x, low = self.encoder(inputs)
    x = self.decoder(self.aspp(x), low)
    return F.interpolate(x, size=inputs.shape[2:], mode='bilinear', align_corners=True)
