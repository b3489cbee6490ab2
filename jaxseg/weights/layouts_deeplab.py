"""PyTorch layouts of torchvision's fcn_resnet*/deeplabv3_resnet*, of deeplab_v3 and of deeplab_v3plus.

* fcn_resnet50/101, deeplabv3_resnet50/101: torchvision's own keys.
* deeplab_v3: torchvision's backbone and ASPP keys; the 1x1 classifier is `classifier.1`.
* deeplab_v3plus: jfzhang95/pytorch-deeplab-xception (`DeepLab(backbone=...)`); its ResNet
  encoder has torchvision's keys, its Xception encoder that repository's `AlignedXception`
  keys (`xception_key_fn`); the mobilenet_v2 encoder uses torchvision's MobileNetV2 keys
  (`backbone.` + the backbone's key function).
* xception65 (backbone): jfzhang95's `AlignedXception` keys (`xception_key_fn`).
"""

from __future__ import annotations

from jaxseg.weights.core import Layout, conv_bn_key, register_layout, sequential_key
from jaxseg.weights.layouts_resnet import resnet_key_fn


def _encoder_key(path: tuple[str, ...]) -> str:
  """Encoder path -> key, for any DeepLabv3+ encoder (their top-level names do not overlap)."""
  if path[0].startswith('features_'):
    from jaxseg.weights.layouts_mobilenet import mobilenet_v2_key_fn

    return mobilenet_v2_key_fn(path)
  if path[0].endswith('_flow'):
    return xception_key_fn(path)
  return resnet_key_fn(path)


# jaxseg's SeparableConv2d sub-modules: separable ASPP / decoder convolutions (a jaxseg extension
# of both layouts) keep these names as PyTorch keys.
_JF_SEP = ('depthwise', 'depthwise_bn', 'pointwise', 'pointwise_bn')
_XCEPTION_SEP = {'depthwise': 'conv1', 'depthwise_bn': 'bn', 'pointwise': 'pointwise'}
_XCEPTION_MIDDLE = 16  # jfzhang95's middle flow: block4..block19; exit block1 is block20


def xception_key_fn(path: tuple[str, ...]) -> str:
  """Xception path -> jfzhang95/pytorch-deeplab-xception's `AlignedXception` key.

  ('entry_flow', 'conv1', 'bn') -> 'bn1'; ('middle_flow', 'block1', 'sepconv2', 'depthwise') ->
  'block4.rep.4.conv1'; ('exit_flow', 'block2', 'sepconv1', 'pointwise_bn') -> 'bn3'. A block's
  `rep` is [ReLU,] SeparableConv2d, BatchNorm2d, ReLU, ... with no leading ReLU in entry blocks 1-2.
  """
  flow, block, *rest = path
  if flow == 'entry_flow' and block in ('conv1', 'conv2'):
    return {'conv': block, 'bn': 'bn' + block[-1]}[rest[0]]
  k = int(block[len('block') :])
  if flow == 'exit_flow' and k == 2:  # conv3..conv5 (SeparableConv2d) + bn3..bn5
    sep, part = rest
    i = int(sep[len('sepconv') :]) + 2
    return f'bn{i}' if part == 'pointwise_bn' else f'conv{i}.{_XCEPTION_SEP[part]}'
  if flow == 'middle_flow' and not 1 <= k <= _XCEPTION_MIDDLE:
    raise ValueError(
      f'the jfzhang95 Xception layout has {_XCEPTION_MIDDLE} middle-flow blocks, got {"/".join(path)}'
    )
  n = {'entry_flow': k, 'middle_flow': 3 + k, 'exit_flow': 20}[flow]
  if rest[0] in ('shortcut', 'shortcut_bn'):
    return f'block{n}.' + {'shortcut': 'skip', 'shortcut_bn': 'skipbn'}[rest[0]]
  sep, part = rest
  index = 3 * (int(sep[len('sepconv') :]) - 1) + (0 if flow == 'entry_flow' and k <= 2 else 1)
  if part == 'pointwise_bn':
    return f'block{n}.rep.{index + 1}'
  return f'block{n}.rep.{index}.{_XCEPTION_SEP[part]}'


register_layout(
  'xception65',
  Layout(
    key_fn=xception_key_fn,
    kind='backbone',
    input_shape=(1, 64, 64, 3),
    description='jfzhang95/pytorch-deeplab-xception modeling/backbone/xception.py (AlignedXception)',
  ),
)


def torchvision_aspp_key(path: tuple[str, ...], n_rates: int = 3) -> str:
  """ASPP path (branchN / pooling / project, then conv|bn) -> torchvision's ASPP prefix."""
  branch, *rest = path
  if branch == 'project':
    return sequential_key('project', rest[0])
  if branch == 'pooling':  # Sequential(AdaptiveAvgPool2d, Conv2d, BN, ReLU)
    return sequential_key(f'convs.{n_rates + 1}', rest[0], 1)
  i = int(branch[len('branch') :])
  if rest[0] in _JF_SEP:  # separable branch (jaxseg extension)
    return f'convs.{i}.' + '.'.join(rest)
  return sequential_key(f'convs.{i}', rest[0])


def torchvision_seg_key_fn(path: tuple[str, ...]) -> str:
  """Keys of torchvision's FCN / DeepLabV3 (classifier, aux_classifier, backbone)."""
  head, *rest = path
  if head == 'backbone':
    return 'backbone.' + resnet_key_fn(tuple(rest))
  if rest[0] == 'aspp':  # DeepLabHead = Sequential(ASPP, conv, bn, relu, conv)
    return f'{head}.0.' + torchvision_aspp_key(tuple(rest[1:]))
  # FCNHead = Sequential(conv, bn, relu, dropout, conv)
  index = {'head_conv': '1', 'head_bn': '2', 'conv': '0', 'bn': '1', 'cls': '4'}
  return f'{head}.{index[rest[0]]}'


for _head in ('fcn', 'deeplabv3'):
  for _depth in (50, 101):
    register_layout(
      f'{_head}_resnet{_depth}',
      Layout(
        key_fn=torchvision_seg_key_fn,
        input_shape=(1, 64, 64, 3),
        num_classes_key='classifier.4.weight',
        description=f'torchvision.models.segmentation.{_head}_resnet{_depth}',
      ),
    )


def deeplab_v3_key_fn(path: tuple[str, ...]) -> str:
  head, *rest = path
  if head == 'backbone':
    return 'backbone.' + resnet_key_fn(tuple(rest))
  if head == 'aspp':
    return 'classifier.0.' + torchvision_aspp_key(tuple(rest))
  if head == 'classifier':
    return 'classifier.1'
  raise KeyError(path)


register_layout(
  'deeplab_v3',
  Layout(
    key_fn=deeplab_v3_key_fn,
    input_shape=(1, 64, 64, 3),
    num_classes_key='classifier.1.weight',
    description='torchvision DeepLabV3 backbone + ASPP names, 1x1 classifier classifier.1',
  ),
)


def deeplab_v3plus_key_fn(path: tuple[str, ...]) -> str:
  head, *rest = path
  if head == 'backbone':
    return 'backbone.' + _encoder_key(tuple(rest))
  if head == 'aspp':
    branch, *leaf = rest
    if branch == 'pooling':  # Sequential(AdaptiveAvgPool2d, Conv2d, BN, ReLU)
      return sequential_key('aspp.global_avg_pool', leaf[0], 1)
    if branch == 'project':
      return conv_bn_key(leaf[0], 'aspp.conv1', 'aspp.bn1')
    n = int(branch[len('branch') :]) + 1
    if leaf[0] in _JF_SEP:
      return f'aspp.aspp{n}.{leaf[0]}'
    return conv_bn_key(leaf[0], f'aspp.aspp{n}.atrous_conv', f'aspp.aspp{n}.bn')
  if head == 'decoder_reduce':
    return conv_bn_key(rest[0], 'decoder.conv1', 'decoder.bn1')
  if head.startswith('decoder_conv'):
    base = 4 * int(head[len('decoder_conv') :])  # Sequential(conv, bn, relu, dropout) x 2
    if rest[0] in _JF_SEP:
      return f'decoder.last_conv.{base}.{rest[0]}'
    return sequential_key('decoder.last_conv', rest[0], base)
  if head == 'classifier':
    return 'decoder.last_conv.8'
  raise KeyError(path)


register_layout(
  'deeplab_v3plus',
  Layout(
    key_fn=deeplab_v3plus_key_fn,
    input_shape=(1, 64, 64, 3),
    num_classes_key='decoder.last_conv.8.weight',
    description='jfzhang95/pytorch-deeplab-xception modeling/deeplab.py (DeepLab)',
  ),
)
