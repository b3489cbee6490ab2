"""SegNet, SegNet-Basic and DeconvNet's encoder and decoder in PyTorch (Badrinarayanan et al. 2017).

The reference layout of `jaxseg.models.segnet` / `deconvnet`: CBR = Sequential(Conv2d
3x3 p1, BatchNorm2d, ReLU), so keys read `conv1_1.0.weight`, `conv1_1.1.running_mean`,
...; pooling is MaxPool2d(2, 2, ceil_mode=True, return_indices=True) and the decoder
unpools with MaxUnpool2d to the saved size, as the Caffe SegNet's Upsample layer does.
`width` multiplies every channel count (1.0 is the paper's network; smaller gives the
tiny variants the tests use).
"""

import torch
from torch import nn

VGG16_STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
# (name, in, out) of the SegNet decoder in forward order, grouped by stage.
SEGNET_DECODER = (
  (5, (('dcbr5_1', 512, 512), ('dcbr5_2', 512, 512), ('dcbr5_3', 512, 512))),
  (4, (('dcbr4_1', 512, 512), ('dcbr4_2', 512, 512), ('dcbr4_3', 512, 256))),
  (3, (('dcbr3_1', 256, 256), ('dcbr3_2', 256, 256), ('dcbr3_3', 256, 128))),
  (2, (('dcbr2_1', 128, 128), ('dcbr2_2', 128, 64))),
  (1, (('dcbr1_1', 64, 64),)),
)


def scaled(channels, width):
  return max(1, int(round(channels * width)))


def CBR(cin, cout, k=3, s=1, p=1):
  return nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU())


class VGGEncoder(nn.Module):
  """conv1_1 ... conv5_3 with argmax pooling; forward returns (x, [(indices, size), ...])."""

  def __init__(self, in_channels=3, width=1.0):
    super().__init__()
    cin = in_channels
    for s, n, ch in VGG16_STAGES:
      for i in range(1, n + 1):
        setattr(self, f'conv{s}_{i}', CBR(cin, scaled(ch, width)))
        cin = scaled(ch, width)
    self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
    self.unpool = nn.MaxUnpool2d(2, 2)

  def add_decoder(self, decoder, width):
    """Registers the CBR layers of `decoder`: (stage, ((name, in, out), ...)) in forward order."""
    for _, block in decoder:
      for name, cin, cout in block:
        setattr(self, name, CBR(scaled(cin, width), scaled(cout, width)))

  def decode(self, x, saved, decoder):
    """Per stage of `decoder`: unpool with that encoder stage's saved indices and size, then CBRs."""
    for stage, block in decoder:
      idx, size = saved[stage - 1]
      x = self.unpool(x, idx, output_size=size)
      for name, _, _ in block:
        x = getattr(self, name)(x)
    return x

  # Pooling decisions to use instead of the computed ones (one NCHW int64 tensor
  # per stage): lets a parity test replay another implementation's argmax where
  # two window values are closer than float32 rounding ("near ties").
  forced_indices = None

  def encode(self, x):
    saved = []
    self.last_indices, self.pre_pool = [], []
    for s, n, _ in VGG16_STAGES:
      for i in range(1, n + 1):
        x = getattr(self, f'conv{s}_{i}')(x)
      size = x.shape[2:]
      pooled, idx = self.pool(x)
      self.last_indices.append(idx)
      self.pre_pool.append(x)
      if self.forced_indices is not None:
        idx = self.forced_indices[s - 1]
        pooled = x.flatten(2).gather(2, idx.flatten(2)).view_as(idx)
      x = pooled
      saved.append((idx, size))
    return x, saved


class SegNet(VGGEncoder):
  def __init__(self, num_classes=11, in_channels=3, width=1.0):
    super().__init__(in_channels, width)
    self.add_decoder(SEGNET_DECODER, width)
    self.score_fr = nn.Conv2d(scaled(64, width), num_classes, 3, 1, 1)

  def forward(self, x):
    x, saved = self.encode(x)
    return self.score_fr(self.decode(x, saved, SEGNET_DECODER))


class SegNetBasic(nn.Module):
  """4 encoders / 4 decoders, 64 channels, 7x7 kernels, no conv biases, no decoder ReLU."""

  def __init__(self, num_classes=11, in_channels=3, features=64, kernel_size=7):
    super().__init__()
    p = kernel_size // 2
    cin = in_channels
    for i in range(1, 5):
      setattr(
        self,
        f'conv{i}',
        nn.Sequential(
          nn.Conv2d(cin, features, kernel_size, 1, p, bias=False),
          nn.BatchNorm2d(features),
          nn.ReLU(),
        ),
      )
      cin = features
    for i in range(4, 0, -1):
      setattr(
        self,
        f'conv_decode{i}',
        nn.Sequential(
          nn.Conv2d(features, features, kernel_size, 1, p, bias=False), nn.BatchNorm2d(features)
        ),
      )
    self.conv_classifier = nn.Conv2d(features, num_classes, 1)
    self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
    self.unpool = nn.MaxUnpool2d(2, 2)

  def forward(self, x):
    saved = []
    for i in range(1, 5):
      x = getattr(self, f'conv{i}')(x)
      size = x.shape[2:]
      x, idx = self.pool(x)
      saved.append((idx, size))
    for i in range(4, 0, -1):
      idx, size = saved[i - 1]
      x = getattr(self, f'conv_decode{i}')(self.unpool(x, idx, output_size=size))
    return self.conv_classifier(x)


def forward_with_indices(ref, x, indices):
  """Runs `ref` on NCHW `x` replaying the given per-stage pooling indices.

  Returns the output and the number of windows where `ref`'s own argmax (on the
  same activations) differs from the replayed one; asserts that every such
  window is a near tie (values equal to float32 rounding of the largest
  activation of that stage), i.e. that the replay changes no real decision.
  """
  forced_list = [torch.as_tensor(i, dtype=torch.int64) for i in indices]
  ref.forced_indices = forced_list
  try:
    with torch.no_grad():
      out = ref(x)
  finally:
    ref.forced_indices = None
  n_diff = 0
  for own, forced, pre in zip(ref.last_indices, forced_list, ref.pre_pool, strict=True):
    diff = own != forced
    if bool(diff.any()):
      flat = pre.flatten(2)
      a = flat.gather(2, own.flatten(2)).view_as(own)[diff]
      b = flat.gather(2, forced.flatten(2)).view_as(own)[diff]
      gap = float((a - b).abs().max())
      assert gap <= 1e-5 * float(flat.abs().max()), (
        f'pooling decision differs by {gap}: not a near tie'
      )
      n_diff += int(diff.sum())
  return out, n_diff


def n_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


if __name__ == '__main__':
  print(n_params(SegNet(11)), n_params(SegNet(21)), n_params(SegNetBasic(11)))
  m = SegNet(3, width=1 / 16).eval()
  print(m(torch.zeros(1, 3, 35, 29)).shape)
