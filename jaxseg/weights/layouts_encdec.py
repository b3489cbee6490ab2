"""PyTorch layouts of the encoder-decoder family: DeconvNet, SegNet, SegNet-Basic, U-Net, FC-DenseNet.

* deconvnet / segnet / segnet_basic: the PyTorch reference layouts in
  tests/torch_ref/segnet.py and tests/torch_ref/deconvnet.py, after the
  CBR = Conv-BN-ReLU naming of common PyTorch SegNet reimplementations: every
  layer is a Sequential(Conv2d, BatchNorm2d, ReLU) (`conv1_1.0.weight`,
  `conv1_1.1.running_mean`; DeconvNet's `fc6_deconv.0.weight` is a
  ConvTranspose2d), and the Flax encoder lives under `backbone`.
* unet / unet_padded: milesial/Pytorch-UNet (`inc.double_conv.0.weight`,
  `down1.maxpool_conv.1.double_conv.3.weight`, `up1.up.weight`,
  `up1.conv.double_conv.0.weight`, `outc.conv.weight`).
* fc_densenet56/67/103: bfortuner/pytorch_tiramisu (`firstconv.weight`,
  `denseBlocksDown.0.layers.0.norm.weight`, `transDownBlocks.0.conv.weight`,
  `bottleneck.bottleneck.layers.0.conv.weight`, `transUpBlocks.0.convTrans.weight`,
  `denseBlocksUp.0.layers.0.conv.weight`, `finalConv.weight`).
"""

from __future__ import annotations

from jaxseg.weights.core import Layout, register_layout, sequential_key


def cbr_key_fn(path: tuple[str, ...]) -> str:
  """('backbone', 'conv1_1', 'bn') -> 'conv1_1.1'; ('score_fr',) -> 'score_fr'."""
  layer, *rest = (p for p in path if p != 'backbone')
  if not rest:  # a plain convolution such as the classifier
    return layer
  (module,) = rest
  return sequential_key(layer, module)


def _unet_key_fn(padded: bool):
  def double_conv(leaf: str) -> str:
    kind, i = leaf.rsplit('_', 1)
    # milesial's Sequential: (conv, ReLU) x 2 for the valid network,
    # (conv, BN, ReLU) x 2 for the padded one.
    if padded:
      return f'double_conv.{3 * int(i) + (1 if kind == "bn" else 0)}'
    return f'double_conv.{2 * int(i)}'

  def key_fn(path: tuple[str, ...]) -> str:
    head, rest = path[0], path[1:]
    if head == 'inc':
      return f'inc.{double_conv(rest[0])}'
    if head.startswith('down'):
      return f'{head}.maxpool_conv.1.{double_conv(rest[0])}'
    if head.startswith('up'):
      return f'{head}.up' if rest == ('up',) else f'{head}.conv.{double_conv(rest[1])}'
    if head == 'outc':
      return 'outc.conv'
    raise KeyError(f'unexpected U-Net module path {path}')

  return key_fn


def fc_densenet_key_fn(path: tuple[str, ...]) -> str:
  """Flax names are the PyTorch ones with '_' before list indices ('denseBlocksDown_0', 'layers_3')."""
  out = []
  for p in path:
    head, _, index = p.rpartition('_')
    out.extend([head, index] if index.isdigit() and head else [p])
  if out[0] == 'bottleneck':  # a Sequential holding the block under the same name
    out.insert(0, 'bottleneck')
  return '.'.join(out)


for _name, _shape, _key in (
  ('segnet', (1, 32, 32, 3), 'score_fr.weight'),
  ('segnet_basic', (1, 32, 32, 3), 'conv_classifier.weight'),
  ('deconvnet', (1, 224, 224, 3), 'score_fr.weight'),
):
  register_layout(
    _name,
    Layout(
      key_fn=cbr_key_fn,
      input_shape=_shape,
      num_classes_key=_key,
      description='CBR layout: Sequential(Conv2d, BatchNorm2d, ReLU) per layer (tests/torch_ref)',
    ),
  )

for _name in ('unet', 'unet_padded'):
  register_layout(
    _name,
    Layout(
      key_fn=_unet_key_fn(padded=_name == 'unet_padded'),
      input_shape=(1, 188, 188, 1) if _name == 'unet' else (1, 32, 32, 3),
      num_classes_key='outc.conv.weight',
      description='milesial/Pytorch-UNet (UNet(bilinear=False))',
    ),
  )

for _name in ('fc_densenet56', 'fc_densenet67', 'fc_densenet103'):
  register_layout(
    _name,
    Layout(
      key_fn=fc_densenet_key_fn,
      input_shape=(1, 32, 32, 3),
      num_classes_key='finalConv.weight',
      description='bfortuner/pytorch_tiramisu (FCDenseNet56/67/103)',
    ),
  )
