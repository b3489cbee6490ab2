"""PyTorch layout of the ResNet backbones (torchvision.models.resnet50 / resnet101).

`resnet_key_fn` maps a Flax module path relative to the backbone onto
torchvision's module prefix; models that embed the backbone (as `backbone`)
reuse it. The deep (PSPNet) stem's `conv2`/`bn2`/`conv3`/`bn3` map to the same
names (hszhao/semseg's `deep_base` layout).
"""

from __future__ import annotations

from jaxseg.weights.core import Layout, register_layout

_RENAME = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}


def resnet_omitted(kwargs) -> tuple[str, ...]:
  """torchvision ResNet layers no jaxseg ResNet variant builds: the ImageNet classifier `fc` (Linear).

  Every variant keeps the stem and layer1-layer4 (dilation changes no weight shape); a variant
  with fewer blocks (`stage_sizes`) or the deep stem is not torchvision's network, so the blocks
  it lacks stay errors.
  """
  del kwargs  # the same for every variant
  return ('fc',)


def resnet_key_fn(path: tuple[str, ...]) -> str:
  """('layer1', '0', 'downsample_conv') -> 'layer1.0.downsample.0'."""
  return '.'.join(_RENAME.get(p, p) for p in path)


for _name in ('resnet50', 'resnet101'):
  register_layout(
    _name,
    Layout(
      key_fn=resnet_key_fn,
      kind='backbone',
      input_shape=(1, 64, 64, 3),
      omitted=resnet_omitted,
      description=f'torchvision.models.{_name}',
    ),
  )
