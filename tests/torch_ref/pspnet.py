"""PSPNet in hszhao/semseg's key layout (layer0..layer4, ppm.features.N, cls, aux), on torchvision's ResNet.

The backbone is torchvision's Bottleneck ResNet with replace_stride_with_dilation
=(False, True, True), then, as semseg does, every layer3 3x3 conv set to dilation 2
and every layer4 one to dilation 4 (the first block of each stage included). The stem
is `layer0` = Sequential(conv1, bn1, relu, maxpool), or semseg's deep base
Sequential(conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, relu, maxpool).
PPM and final upsampling use bilinear interpolation with align_corners=True.
"""

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck, ResNet


class PPM(nn.Module):
  def __init__(self, in_dim, reduction_dim, bins):
    super().__init__()
    self.features = nn.ModuleList(
      nn.Sequential(
        nn.AdaptiveAvgPool2d(b),
        nn.Conv2d(in_dim, reduction_dim, 1, bias=False),
        nn.BatchNorm2d(reduction_dim),
        nn.ReLU(inplace=True),
      )
      for b in bins
    )

  def forward(self, x):
    size = x.shape[2:]
    return torch.cat(
      [x] + [F.interpolate(f(x), size, mode='bilinear', align_corners=True) for f in self.features],
      1,
    )


class PSPNet(nn.Module):
  def __init__(
    self, classes=21, layers=(3, 4, 6, 3), deep_base=False, bins=(1, 2, 3, 6), dropout=0.1, aux=True
  ):
    super().__init__()
    resnet = ResNet(Bottleneck, list(layers), replace_stride_with_dilation=[False, True, True])
    for stage, rate in ((resnet.layer3, 2), (resnet.layer4, 4)):
      for block in stage:
        block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
    if deep_base:
      conv2, bn2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
      conv3, bn3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128)
      conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
      relu = nn.ReLU(inplace=True)
      self.layer0 = nn.Sequential(
        conv1, resnet.bn1, relu, conv2, bn2, relu, conv3, bn3, relu, resnet.maxpool
      )
      # layer1's first block reads 128 channels.
      b0 = resnet.layer1[0]
      b0.conv1 = nn.Conv2d(128, 64, 1, bias=False)
      b0.downsample[0] = nn.Conv2d(128, 256, 1, bias=False)
    else:
      self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
    self.layer1, self.layer2, self.layer3, self.layer4 = (
      resnet.layer1,
      resnet.layer2,
      resnet.layer3,
      resnet.layer4,
    )
    self.ppm = PPM(2048, 512, bins)
    self.cls = nn.Sequential(
      nn.Conv2d(2048 + 512 * len(bins), 512, 3, padding=1, bias=False),
      nn.BatchNorm2d(512),
      nn.ReLU(inplace=True),
      nn.Dropout2d(dropout),
      nn.Conv2d(512, classes, 1),
    )
    if aux:
      self.aux = nn.Sequential(
        nn.Conv2d(1024, 256, 3, padding=1, bias=False),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(256, classes, 1),
      )

  def forward(self, x):
    size = x.shape[2:]
    h = self.layer2(self.layer1(self.layer0(x)))
    h3 = self.layer3(h)
    h = self.cls(self.ppm(self.layer4(h3)))
    out = F.interpolate(h, size, mode='bilinear', align_corners=True)
    if self.training and hasattr(self, 'aux'):
      return out, F.interpolate(self.aux(h3), size, mode='bilinear', align_corners=True)
    return out
