"""PyTorch layouts of the dilated-convolution models: DeepLab v1/v2, DilatedNet, PSPNet.

* `vgg16_deeplab`, `vgg16_dilated` (backbones): torchvision's VGG-16 `features.N`
  keys (ImageNet initialisation; torchvision's classifier is left out, see `vgg16_dense_omitted`).
* `deeplab_v1`: the DeepLab-LargeFOV Caffe layer names as top-level modules:
  `conv1_1` ... `conv5_3`, `fc6`, `fc7`, `fc8` (tests/torch_ref/deeplab_v1.py).
* `dilatednet`: Yu & Koltun's Caffe names as fyu/dilation's `network.py` writes
  them: `conv1_1` ... `conv5_3`, `fc6`, `fc7`, `final`, and for the context
  module `ctx_conv1_1`, `ctx_conv1_2`, `ctx_conv2_1`, `ctx_conv3_1`,
  `ctx_conv4_1`, `ctx_conv5_1`, `ctx_fc1`, `ctx_final` as top-level modules
  (tests/torch_ref/dilatednet.py). Both paddings ('reflect_valid', 'same') hold
  the same variables; the released Dilation8 VOC net names its classifier
  `fc-final` and its context layers `ct_*`, which need renaming first.
* `deeplab_v2`: `backbone.<torchvision resnet101 key>` and the ASPP classifier
  branches `aspp.c0` ... `aspp.c3` (the layout of kazuto1011/deeplab-pytorch's
  `_ASPP`, on a torchvision backbone).
* `pspnet`: hszhao/semseg's PSPNet keys: `layer0` (stem Sequential: conv1 `0`,
  bn1 `1`, and with the deep stem conv2 `3`, bn2 `4`, conv3 `6`, bn3 `7`),
  `layer1` ... `layer4` (torchvision block keys), `ppm.features.N.1` (conv) /
  `.2` (BN), `cls.0` / `cls.1` / `cls.4`, `aux.0` / `aux.1` / `aux.4`.
"""

from __future__ import annotations

from jaxseg.weights.core import Layout, dotted_key_fn, register_layout, sequential_key
from jaxseg.weights.layouts_vgg_fcn import _vgg_key_fn, linear_fc_to_conv, vgg16_omitted


def vgg16_dense_omitted(kwargs) -> tuple[str, ...]:
  """torchvision VGG-16 layers the dense variants leave out: the whole classifier.

  DeepLab v1 and DilatedNet replace fc6/fc7 with their own (dilated) layers outside the backbone,
  so torchvision's `classifier.0`, `.3` and `.6` are never loaded.
  """
  del kwargs  # the same for both styles, widths and paddings
  return vgg16_omitted({'fc': None})


for _name in ('vgg16_deeplab', 'vgg16_dilated'):
  register_layout(
    _name,
    Layout(
      key_fn=_vgg_key_fn(False),
      kind='backbone',
      input_shape=(1, 32, 32, 3),
      preprocess=linear_fc_to_conv,
      omitted=vgg16_dense_omitted,
      description='torchvision.models.vgg16 features (ImageNet initialisation)',
    ),
  )


register_layout(
  'deeplab_v1',
  Layout(
    key_fn=dotted_key_fn('backbone'),
    input_shape=(1, 32, 32, 3),
    num_classes_key='fc8.weight',
    description='DeepLab-LargeFOV Caffe layer names (conv1_1 ... conv5_3, fc6, fc7, fc8)',
  ),
)


register_layout(
  'dilatednet',
  Layout(
    key_fn=dotted_key_fn('backbone', 'context'),
    input_shape=(1, 32, 32, 3),
    num_classes_key='final.weight',
    description='Yu & Koltun Caffe names (conv1_1 ... fc7, final, ctx_conv1_1 ... ctx_final)',
  ),
)


_SEMSEG_STEM = {'conv1': 'layer0.0', 'bn1': 'layer0.1', 'conv2': 'layer0.3', 'bn2': 'layer0.4'}
_SEMSEG_STEM.update({'conv3': 'layer0.6', 'bn3': 'layer0.7'})
_SEMSEG_HEAD = {'cls_conv': 'cls.0', 'cls_bn': 'cls.1', 'cls': 'cls.4'}
_SEMSEG_HEAD.update({'aux_conv': 'aux.0', 'aux_bn': 'aux.1', 'aux_cls': 'aux.4'})


def _pspnet_key_fn(path: tuple[str, ...]) -> str:
  from jaxseg.weights.layouts_resnet import resnet_key_fn

  head, rest = path[0], path[1:]
  if head == 'backbone':
    if rest[0] in _SEMSEG_STEM:
      return _SEMSEG_STEM[rest[0]]
    return resnet_key_fn(rest)
  if head in _SEMSEG_HEAD:
    return _SEMSEG_HEAD[head]
  if head.startswith('ppm_'):  # ppm_{i}_conv / ppm_{i}_bn: Sequential(pool, conv, bn, relu)
    _, i, kind = head.split('_')
    return sequential_key(f'ppm.features.{i}', kind, 1)
  raise KeyError(f'no semseg PSPNet key for Flax module path {path}')


register_layout(
  'pspnet',
  Layout(
    key_fn=_pspnet_key_fn,
    input_shape=(1, 48, 48, 3),
    num_classes_key='cls.4.weight',
    description='hszhao/semseg PSPNet (layer0..layer4, ppm.features.N, cls, aux)',
  ),
)


def _deeplab_v2_key_fn(path: tuple[str, ...]) -> str:
  from jaxseg.weights.layouts_resnet import resnet_key_fn

  if path[0] == 'backbone':
    return 'backbone.' + resnet_key_fn(path[1:])
  return path[0].replace('aspp_', 'aspp.')  # aspp_c0 -> aspp.c0


register_layout(
  'deeplab_v2',
  Layout(
    key_fn=_deeplab_v2_key_fn,
    input_shape=(1, 32, 32, 3),
    num_classes_key='aspp.c0.weight',
    description='torchvision ResNet under backbone.*, ASPP branches aspp.c0..c3 (kazuto1011/deeplab-pytorch naming)',
  ),
)
