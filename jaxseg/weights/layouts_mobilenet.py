"""PyTorch layout of MobileNetV2 (torchvision.models.mobilenet_v2).

`mobilenet_v2_key_fn` maps a Flax path relative to the backbone to torchvision's
prefix; DeepLabv3+ with a MobileNetV2 encoder reuses it under `backbone.`.
"""

from __future__ import annotations

from jaxseg.weights.core import Layout, register_layout, sequential_key


def mobilenet_v2_omitted(kwargs) -> tuple[str, ...]:
  """torchvision MobileNetV2 layers the variant built with `kwargs` leaves out.

  The ImageNet classifier's Linear `classifier.1` always; the last 1x1 convolution and its
  BatchNorm (`features.18.0`, `features.18.1`) when built with `last_conv=False`, as DeepLabv3+
  does (it reads the 320-channel features.17).
  """
  layers = ['classifier.1']
  if not kwargs.get('last_conv', True):
    layers += [mobilenet_v2_key_fn(('features_18', part)) for part in ('conv', 'bn')]
  return tuple(layers)


def mobilenet_v2_key_fn(path: tuple[str, ...]) -> str:
  """('features_2', 'depthwise', 'conv') -> 'features.2.conv.1.0'."""
  block, *rest = path
  i = int(block[len('features_') :])
  if i in (0, 18):  # Conv2dNormActivation = Sequential(conv, bn, relu6)
    return sequential_key(f'features.{i}', rest[0])
  # InvertedResidual.conv = [expand (t > 1)], depthwise, project conv, project BN; block 1 has t = 1.
  offset = 0 if i == 1 else 1
  part = rest[0]
  if part == 'expand':
    return sequential_key(f'features.{i}.conv.0', rest[1])
  if part == 'depthwise':
    return sequential_key(f'features.{i}.conv.{offset}', rest[1])
  if part == 'project':
    return f'features.{i}.conv.{offset + 1}'
  if part == 'project_bn':
    return f'features.{i}.conv.{offset + 2}'
  raise KeyError(path)


register_layout(
  'mobilenet_v2',
  Layout(
    key_fn=mobilenet_v2_key_fn,
    kind='backbone',
    input_shape=(1, 64, 64, 3),
    omitted=mobilenet_v2_omitted,
    description='torchvision.models.mobilenet_v2',
  ),
)
