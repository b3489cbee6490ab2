"""FC-DenseNet (Tiramisu) in the layout of bfortuner/pytorch_tiramisu.

Keys: `firstconv`, `denseBlocksDown.{i}.layers.{j}.{norm,conv}`,
`transDownBlocks.{i}.{norm,conv}`, `bottleneck.bottleneck.layers.{j}.*`,
`transUpBlocks.{i}.convTrans`, `denseBlocksUp.{i}.layers.{j}.*`, `finalConv`.
Dense layer = BN-ReLU-3x3 conv-Dropout2d; transition down = BN-ReLU-1x1 conv-
Dropout2d-MaxPool2d(2); transition up = 3x3 stride-2 ConvTranspose2d, center-
cropped to the skip, concatenated [up, skip]. Up-path blocks (and the
bottleneck) pass on only their new feature maps; the last block passes all.
This returns logits (the original ends with LogSoftmax, which changes no argmax).
"""

import torch
from torch import nn


class DenseLayer(nn.Sequential):
  def __init__(self, cin, growth, drop):
    super().__init__()
    self.add_module('norm', nn.BatchNorm2d(cin))
    self.add_module('relu', nn.ReLU())
    self.add_module('conv', nn.Conv2d(cin, growth, 3, 1, 1, bias=True))
    self.add_module('drop', nn.Dropout2d(drop))


class DenseBlock(nn.Module):
  def __init__(self, cin, growth, n_layers, upsample, drop):
    super().__init__()
    self.upsample = upsample
    self.layers = nn.ModuleList(
      [DenseLayer(cin + i * growth, growth, drop) for i in range(n_layers)]
    )

  def forward(self, x):
    new = []
    for layer in self.layers:
      out = layer(x)
      x = torch.cat([x, out], 1)
      new.append(out)
    return torch.cat(new, 1) if self.upsample else x


class TransitionDown(nn.Sequential):
  def __init__(self, cin, drop):
    super().__init__()
    self.add_module('norm', nn.BatchNorm2d(cin))
    self.add_module('relu', nn.ReLU())
    self.add_module('conv', nn.Conv2d(cin, cin, 1, bias=True))
    self.add_module('drop', nn.Dropout2d(drop))
    self.add_module('maxpool', nn.MaxPool2d(2))


class TransitionUp(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.convTrans = nn.ConvTranspose2d(cin, cout, 3, 2, 0, bias=True)

  def forward(self, x, skip):
    out = self.convTrans(x)
    h, w = skip.shape[2:]
    top, left = (out.shape[2] - h) // 2, (out.shape[3] - w) // 2
    return torch.cat([out[:, :, top : top + h, left : left + w], skip], 1)


class Bottleneck(nn.Sequential):
  def __init__(self, cin, growth, n_layers, drop):
    super().__init__()
    self.add_module('bottleneck', DenseBlock(cin, growth, n_layers, True, drop))


class FCDenseNet(nn.Module):
  def __init__(
    self,
    in_channels=3,
    down_blocks=(4, 5, 7, 10, 12),
    up_blocks=(12, 10, 7, 5, 4),
    bottleneck_layers=15,
    growth_rate=16,
    first_conv=48,
    num_classes=11,
    drop=0.2,
  ):
    super().__init__()
    self.firstconv = nn.Conv2d(in_channels, first_conv, 3, 1, 1, bias=True)
    cur, skips = first_conv, []
    self.denseBlocksDown, self.transDownBlocks = nn.ModuleList(), nn.ModuleList()
    for n in down_blocks:
      self.denseBlocksDown.append(DenseBlock(cur, growth_rate, n, False, drop))
      cur += growth_rate * n
      skips.insert(0, cur)
      self.transDownBlocks.append(TransitionDown(cur, drop))
    self.bottleneck = Bottleneck(cur, growth_rate, bottleneck_layers, drop)
    prev = growth_rate * bottleneck_layers
    self.transUpBlocks, self.denseBlocksUp = nn.ModuleList(), nn.ModuleList()
    for i, n in enumerate(up_blocks):
      self.transUpBlocks.append(TransitionUp(prev, prev))
      cur = prev + skips[i]
      last = i == len(up_blocks) - 1
      self.denseBlocksUp.append(DenseBlock(cur, growth_rate, n, not last, drop))
      prev = growth_rate * n
    cur += growth_rate * up_blocks[-1]
    self.finalConv = nn.Conv2d(cur, num_classes, 1, bias=True)

  def forward(self, x):
    out = self.firstconv(x)
    skips = []
    for block, down in zip(self.denseBlocksDown, self.transDownBlocks, strict=True):
      out = block(out)
      skips.append(out)
      out = down(out)
    out = self.bottleneck(out)
    for up, block in zip(self.transUpBlocks, self.denseBlocksUp, strict=True):
      out = block(up(out, skips.pop()))
    return self.finalConv(out)


def fc_densenet(depth, **kw):
  n, growth = {56: (4, 12), 67: (5, 16), 103: (None, 16)}[depth]
  if depth == 103:
    return FCDenseNet(growth_rate=16, **kw)
  return FCDenseNet(
    down_blocks=(n,) * 5, up_blocks=(n,) * 5, bottleneck_layers=n, growth_rate=growth, **kw
  )


if __name__ == '__main__':
  for d in (56, 67, 103):
    m = fc_densenet(d)
    p = sum(q.numel() for q in m.parameters())
    stats = sum(b.numel() for k, b in m.state_dict().items() if 'running' in k)
    print(d, p, p + stats)
  print(fc_densenet(56)(torch.zeros(1, 3, 37, 45)).shape)
