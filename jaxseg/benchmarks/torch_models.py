"""PyTorch counterparts of the registered jaxseg models, for the benchmark ratios.

`build(name, num_classes)` returns a `torch.nn.Module` with the same
architecture (NCHW) as `jaxseg.create_model(name, num_classes=...)`, or None
where there is none. The parity references in tests/torch_ref are reused, so
the benchmark times exactly the architectures the parity tests compare
against; torchvision supplies the ResNet-based models. Memory format stays
PyTorch's default (NCHW, contiguous), as a user would run it.

No counterpart: `deeplab_v3plus` (its default Xception-65 with separable
convolutions has no PyTorch twin here; tests/torch_ref/deeplab_v3plus.py is the
ResNet variant), `hypercolumn`, `dilatednet`.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Callable

# The PyTorch references of the parity tests live in a checkout's tests/torch_ref (not installed).
_TESTS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tests'
)


def _ref(module: str):
  """Imports tests/torch_ref/<module>.py (its modules import each other as `torch_ref.*`)."""
  if not os.path.isdir(os.path.join(_TESTS, 'torch_ref')):
    raise FileNotFoundError(
      f'the PyTorch reference of this model is in a jaxseg checkout (tests/torch_ref/{module}.py), '
      'not in the installed package: run `jaxseg benchmark` from a checkout installed with '
      "`pip install -e '.[test]'`, or pass --no-torch."
    )
  if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
  return importlib.import_module(f'torch_ref.{module}')


def _fcn(stride, num_classes):
  return _ref('fcn').FCN(n_class=num_classes, stride=stride)


def _segnet(num_classes):
  return _ref('segnet').SegNet(num_classes=num_classes)


def _segnet_basic(num_classes):
  return _ref('segnet').SegNetBasic(num_classes=num_classes)


def _deconvnet(num_classes):
  return _ref('deconvnet').DeconvNet(num_classes=num_classes)


def _unet(valid, in_channels, num_classes):
  return _ref('unet').UNet(in_channels=in_channels, num_classes=num_classes, valid=valid)


def _deeplab_v1(num_classes):
  return _ref('deeplab_v1').DeepLabLargeFOV(n_class=num_classes)


def _fc_densenet(depth, num_classes):
  return _ref('fc_densenet').fc_densenet(depth, num_classes=num_classes)


def _pspnet(num_classes):
  return _ref('pspnet').PSPNet(classes=num_classes)


def _deeplab_v2(num_classes, depth=101):
  """jaxseg's deeplab_v2: torchvision ResNet at output stride 8 + ASPP-L (four summed 3x3 atrous convs)."""
  import torch
  import torchvision
  from torch import nn

  class DeepLabV2(nn.Module):
    def __init__(self):
      super().__init__()
      resnet = getattr(torchvision.models, f'resnet{depth}')(
        weights=None, replace_stride_with_dilation=[False, True, True]
      )
      del resnet.fc
      self.backbone = resnet
      self.aspp = nn.ModuleList(
        nn.Conv2d(2048, num_classes, 3, padding=r, dilation=r) for r in (6, 12, 18, 24)
      )

    def forward(self, x):
      b = self.backbone
      h = b.layer4(b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))))
      out = torch.stack([c(h) for c in self.aspp]).sum(0)
      return nn.functional.interpolate(out, x.shape[2:], mode='bilinear', align_corners=True)

  return DeepLabV2()


def _deeplab_v3(num_classes, depth=101):
  """jaxseg's deeplab_v3: ResNet at output stride 16, multi-grid (1, 2, 4) + torchvision's ASPP + 1x1."""
  import torch
  import torchvision
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

  resnet = getattr(torchvision.models, f'resnet{depth}')(
    weights=None, replace_stride_with_dilation=[False, False, True]
  )
  for block, rate in zip(resnet.layer4, (2, 4, 8), strict=True):
    block.conv2.dilation = block.conv2.padding = (rate, rate)
  head = torch.nn.Sequential(ASPP(2048, [6, 12, 18]), torch.nn.Conv2d(256, num_classes, 1))
  return DeepLabV3(IntermediateLayerGetter(resnet, {'layer4': 'out'}), head)


def _torchvision_seg(fn_name, num_classes):
  from torchvision.models import segmentation

  return getattr(segmentation, fn_name)(
    weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
  )


BUILDERS: dict[str, Callable[[int], object]] = {
  'fcn8s': functools.partial(_fcn, 8),
  'fcn16s': functools.partial(_fcn, 16),
  'fcn32s': functools.partial(_fcn, 32),
  'segnet': _segnet,
  'segnet_basic': _segnet_basic,
  'deconvnet': _deconvnet,
  'unet': functools.partial(_unet, True, 1),
  'unet_padded': functools.partial(_unet, False, 3),
  'deeplab_v1': _deeplab_v1,
  'fc_densenet56': functools.partial(_fc_densenet, 56),
  'fc_densenet67': functools.partial(_fc_densenet, 67),
  'fc_densenet103': functools.partial(_fc_densenet, 103),
  'pspnet': _pspnet,
  'deeplab_v2': _deeplab_v2,
  'deeplab_v3': _deeplab_v3,
  'deeplabv3_resnet50': functools.partial(_torchvision_seg, 'deeplabv3_resnet50'),
  'deeplabv3_resnet101': functools.partial(_torchvision_seg, 'deeplabv3_resnet101'),
  'fcn_resnet50': functools.partial(_torchvision_seg, 'fcn_resnet50'),
  'fcn_resnet101': functools.partial(_torchvision_seg, 'fcn_resnet101'),
}


def build(name: str, num_classes: int):
  """The PyTorch module for registry name `name`, or None if there is no counterpart."""
  builder = BUILDERS.get(name)
  if builder is None:
    return None
  try:
    return builder(num_classes)
  except ImportError:  # a reference module that does not exist (yet) in this checkout
    return None
