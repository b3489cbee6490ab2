"""DeconvNet (Noh et al. 2015) in PyTorch, the reference layout of `jaxseg.models.deconvnet`.

The encoder is SegNet's (VGG16-BN with argmax pooling); fc6 = CBR(512, 4096, 7,
no padding), fc7 = CBR(4096, 4096, 1), fc6_deconv = Sequential(ConvTranspose2d(
4096, 512, 7), BatchNorm2d, ReLU); the decoder unpools before each stage and
uses 3x3 DCB blocks (a stride-1 3x3 deconvolution is a convolution with a
flipped kernel, so DCB is written with Conv2d); score_fr is a 1x1 conv.
"""

from torch import nn

from torch_ref.segnet import CBR, VGGEncoder, scaled

# (stage, ((name, in, out), ...)) of the deconvolution network in forward order.
DECONV_DECODER = (
  (5, (('deconv5_1', 512, 512), ('deconv5_2', 512, 512), ('deconv5_3', 512, 512))),
  (4, (('deconv4_1', 512, 512), ('deconv4_2', 512, 512), ('deconv4_3', 512, 256))),
  (3, (('deconv3_1', 256, 256), ('deconv3_2', 256, 256), ('deconv3_3', 256, 128))),
  (2, (('deconv2_1', 128, 128), ('deconv2_2', 128, 64))),
  (1, (('deconv1_1', 64, 64), ('deconv1_2', 64, 64))),
)


class DeconvNet(VGGEncoder):
  def __init__(self, num_classes=21, in_channels=3, width=1.0):
    super().__init__(in_channels, width)
    c5, fc = scaled(512, width), scaled(4096, width)
    self.fc6 = CBR(c5, fc, 7, 1, 0)
    self.fc7 = CBR(fc, fc, 1, 1, 0)
    self.fc6_deconv = nn.Sequential(nn.ConvTranspose2d(fc, c5, 7), nn.BatchNorm2d(c5), nn.ReLU())
    self.add_decoder(DECONV_DECODER, width)
    self.score_fr = nn.Conv2d(scaled(64, width), num_classes, 1)

  def forward(self, x):
    x, saved = self.encode(x)
    x = self.fc6_deconv(self.fc7(self.fc6(x)))
    return self.score_fr(self.decode(x, saved, DECONV_DECODER))


if __name__ == '__main__':
  print(sum(p.numel() for p in DeconvNet(21).parameters()))
