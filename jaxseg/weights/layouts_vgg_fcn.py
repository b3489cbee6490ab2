"""PyTorch layouts of VGG-16 (torchvision) and FCN-32s/16s/8s (pytorch-fcn / torchfcn)."""

from __future__ import annotations

import numpy as np

from jaxseg.backbones.vgg import CONV_NAMES
from jaxseg.weights.core import Layout, dotted_key_fn, register_layout, sequential_key


def _torchvision_vgg_index(batch_norm: bool) -> dict[str, int]:
  """conv name -> index in torchvision's `features` Sequential."""
  index, i = {}, 0
  for name in CONV_NAMES:
    index[name] = i
    i += 3 if batch_norm else 2  # conv, (bn), relu
    if name.endswith(('1_2', '2_2', '3_3', '4_3', '5_3')):
      i += 1  # max pool
  return index


def _vgg_key_fn(batch_norm: bool):
  index = _torchvision_vgg_index(batch_norm)

  def key_fn(path: tuple[str, ...]) -> str:
    path = tuple(p for p in path if p != 'backbone')
    head = path[0]
    if head == 'fc6':
      return 'classifier.0'
    if head == 'fc7':
      return 'classifier.3'
    if batch_norm:  # features.i = Conv2d, features.(i + 1) = BatchNorm2d
      return sequential_key('features', path[1], index[head])
    return f'features.{index[head]}'

  return key_fn


def vgg16_omitted(kwargs) -> tuple[str, ...]:
  """torchvision VGG-16 layers the `vgg16` / `vgg16_bn` variant built with `kwargs` leaves out.

  The 1000-way Linear `classifier.6` always; the fully connected `classifier.0` (fc6) and
  `classifier.3` (fc7) unless the backbone is built with fc='conv' (FCN, Hypercolumn), which
  turns them into 7x7 and 1x1 convolutions.
  """
  key_fn = _vgg_key_fn(False)  # fc6 / fc7 have the same keys with and without BatchNorm
  fc = () if kwargs.get('fc') == 'conv' else tuple(key_fn((m,)) for m in ('fc6', 'fc7'))
  return ('classifier.6', *fc)


def linear_fc_to_conv(sd: dict, flat_target: dict) -> dict:
  """ImageNet VGG classifier Linear weights -> fc6 7x7 / fc7 1x1 conv weights (as FCN does).

  The input channels come from the model's own fc6 / fc7 kernels (512 / 4096 for VGG-16,
  fewer for the narrow variants), so a Linear of the wrong size is reported as a shape mismatch.
  """
  sd = dict(sd)
  kernels = {
    path[-2]: v.shape
    for path, v in flat_target.items()
    if path[0] == 'params' and path[-1] == 'kernel'
  }
  for key, module in (('classifier.0.weight', 'fc6'), ('classifier.3.weight', 'fc7')):
    if key in sd and np.asarray(sd[key]).ndim == 2 and module in kernels:
      kh, kw, cin, _ = kernels[module]
      w = np.asarray(sd[key])
      if w.shape[1] == cin * kh * kw:  # torchvision flattens pool5 as (C, H, W)
        sd[key] = w.reshape(w.shape[0], cin, kh, kw)
  return sd


def conv_fc_to_linear(sd: dict) -> dict:
  """The inverse of `linear_fc_to_conv` on export: fc6 / fc7 convs -> torchvision's Linear weights."""
  sd = dict(sd)
  for key in ('classifier.0.weight', 'classifier.3.weight'):
    if key in sd and np.asarray(sd[key]).ndim == 4:
      sd[key] = np.ascontiguousarray(np.asarray(sd[key]).reshape(sd[key].shape[0], -1))
  return sd


for _bn in (False, True):
  register_layout(
    'vgg16_bn' if _bn else 'vgg16',
    Layout(
      key_fn=_vgg_key_fn(_bn),
      kind='backbone',
      preprocess=linear_fc_to_conv,
      postprocess=conv_fc_to_linear,
      omitted=vgg16_omitted,
      description='torchvision.models.vgg16 / vgg16_bn',
    ),
  )


for _name in ('fcn32s', 'fcn16s', 'fcn8s'):
  register_layout(
    _name,
    Layout(
      key_fn=dotted_key_fn('backbone'),
      input_shape=(1, 32, 32, 3),
      num_classes_key='score_fr.weight',
      description='pytorch-fcn (torchfcn.models.FCN32s/FCN16s/FCN8s)',
    ),
  )
