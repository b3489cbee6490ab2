"""Modified aligned Xception-65 (DeepLabv3+, Chen et al., ECCV 2018, Sec. 3.2) as a feature extractor.

Chollet's Xception (CVPR 2017) as modified by MSRA's aligned Xception and
DeepLabv3+ (paper Fig. 4): a deeper middle flow (16 repeats), every max pooling
replaced by a strided depthwise-separable convolution, and batch normalization
after each 3x3 depthwise convolution. Block structure and output-stride
handling follow the paper's TensorFlow reference (tensorflow/models
research/deeplab, `core/xception.py`, `xception_65`):

* entry flow: conv 3x3/2 32, conv 3x3 64 (each BN + ReLU), then blocks of three
  separable convs with depths [128]*3, [256]*3, [728]*3, each strided by its
  last separable conv and with a 1x1 conv + BN projection shortcut;
* middle flow: 16 blocks [728]*3 with identity shortcut;
* exit flow: [728, 1024, 1024] (strided, projection shortcut), then
  [1536, 1536, 2048] without shortcut.
In blocks with `activation_in_separable=False` (all but the last) a ReLU
precedes each separable conv and the separable conv is depthwise -> BN ->
pointwise -> BN; the last block uses depthwise -> BN -> ReLU -> pointwise ->
BN -> ReLU instead (the reference's `activation_fn_in_separable_conv`). The
paper's text adds "BN and ReLU after each 3x3 depthwise convolution"; its
reference (and so this module) has the BN everywhere but that ReLU only in the
last block, elsewhere the ReLU before the next separable conv. Shortcuts take
the block input itself. Padding is symmetric, dilation * 1 on each side of a
3x3 kernel: the same as the reference's explicit "fixed padding" before its
strided (VALID) convs.

`output_stride` 16 or 8 (also 32): once the running stride reaches it, a
strided block runs at stride 1 with the current rate and all later blocks use
the rate multiplied by that stride (the reference's `stack_blocks_dense`): at
16 the exit flow runs at rates 1 then 2, at 8 the entry flow's block3 is
unstrided, the middle flow runs at rate 2 and the exit flow at 2 then 4.

Returned features: 'low_level' (stride 4, 256 ch: the second separable conv
of entry block 2, the reference's decoder end point), 'entry_flow' (stride
16 or 8, 728), 'middle_flow' (728) and 'out' (2048, stride output_stride).

`variant='jfzhang95'` computes, on the same parameters, what
jfzhang95/pytorch-deeplab-xception's `AlignedXception` (the most used PyTorch
DeepLabv3+) computes, so its checkpoints load and give its outputs. It departs
from the reference, so it is not the default:

* its ReLUs are in place: a block's leading ReLU also rectifies the tensor the
  shortcut then reads, so every shortcut (projection or identity) takes
  relu(input) rather than the input (a residual of rectified features that
  neither Xception nor the paper's reference has);
* 'low_level' is relu(entry block1 output) (128 channels, also stride 4);
* the exit flow's last block is ReLU -> depthwise -> BN -> pointwise -> BN per
  separable conv, plus a final ReLU (no ReLU after its depthwise BNs);
* the third separable conv of the strided blocks (entry block3, exit block1)
  always has dilation 1, so at output stride 8 exit block1's is 1, not 2;
* output stride 16 or 8 only (that implementation raises on 32).
Parameters (and so the parameter count) are the same in both variants.

PyTorch layout (`jaxseg.weights`, backbone layout 'xception65' and the
encoder of 'deeplab_v3plus'): jfzhang95's key names (`conv1`, `bn1`, ...,
`block1..block20.rep.<i>.{conv1,bn,pointwise}`, `skip`, `skipbn`,
`conv3..conv5`, `bn3..bn5`); see `jaxseg.weights.layouts_deeplab`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax

from jaxseg import layers
from jaxseg.layers_sep import SeparableConv2d
from jaxseg.registry import register_backbone

Array = jax.Array

VARIANTS = ('paper', 'jfzhang95')


class XceptionBlock(nn.Module):
  """Three separable convs (the last strided) plus a 'conv', 'sum' or 'none' shortcut.

  Attributes:
    depths: output channels of the three separable convs.
    skip: 'conv' (1x1 conv + BN projection), 'sum' (identity) or 'none'.
    strides: stride of the third separable conv (and of the projection).
    dilation: dilation of the depthwise convs.
    last_dilation: dilation of the third depthwise conv if not `dilation` (jfzhang95 variant).
    activation_in_separable: ReLU inside the separable convs instead of before them.
    shortcut_from_relu: the shortcut reads relu(input) (jfzhang95 variant's in-place ReLU).
    dtype: computation dtype.
  """

  depths: Sequence[int]
  skip: str = 'conv'
  strides: int = 1
  dilation: int = 1
  last_dilation: int | None = None
  activation_in_separable: bool = False
  shortcut_from_relu: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
    """Returns (output, output of the second separable conv)."""
    act = self.activation_in_separable
    y, second = x, None
    for i, depth in enumerate(self.depths):
      if not act:
        y = nn.relu(y)
      last = i == 2
      y = SeparableConv2d(
        depth,
        3,
        self.strides if last else 1,
        self.last_dilation if last and self.last_dilation is not None else self.dilation,
        depthwise_relu=act,
        relu=act,
        dtype=self.dtype,
        name=f'sepconv{i + 1}',
      )(y, train=train)
      if i == 1:
        second = y
    shortcut = nn.relu(x) if self.shortcut_from_relu else x
    if self.skip == 'conv':
      shortcut = layers.Conv2d(
        self.depths[-1], 1, self.strides, use_bias=False, dtype=self.dtype, name='shortcut'
      )(shortcut)
      y = y + layers.BatchNorm(dtype=self.dtype, name='shortcut_bn')(shortcut, train=train)
    elif self.skip == 'sum':
      y = y + shortcut
    elif self.skip != 'none':
      raise ValueError(f"skip must be 'conv', 'sum' or 'none', got {self.skip!r}")
    return y, second


class _Flow(nn.Module):
  """A named group of blocks (entry / middle / exit flow); see `Xception`."""

  blocks: Sequence[tuple[str, dict]]
  stem: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, dict[str, tuple[Array, Array]]]:
    """Returns (output, {block name: (block output, its second separable conv's output)})."""
    dt = self.dtype
    if self.stem:
      x = layers.ConvBNReLU(32, 3, 2, 1, use_bias=False, dtype=dt, name='conv1')(x, train=train)
      x = layers.ConvBNReLU(64, 3, 1, 1, use_bias=False, dtype=dt, name='conv2')(x, train=train)
    outs = {}
    for name, kwargs in self.blocks:
      x, second = XceptionBlock(name=name, **kwargs, dtype=dt)(x, train=train)
      outs[name] = (x, second)
    return x, outs


class Xception(nn.Module):
  """Modified aligned Xception (Xception-65 with 16 middle blocks).

  Attributes:
    output_stride: 32, 16 or 8 (16 or 8 for the jfzhang95 variant).
    middle_repeats: middle-flow blocks (16 for Xception-65; fewer give tiny variants).
    variant: 'paper' (the paper's TensorFlow reference) or 'jfzhang95' (that PyTorch
      implementation's computation; see the module docstring).
    dtype: computation dtype.
  """

  output_stride: int = 16
  middle_repeats: int = 16
  variant: str = 'paper'
  dtype: Any = None

  def block_specs(self) -> dict[str, list[tuple[str, dict]]]:
    """Per flow: (block name, XceptionBlock kwargs) with strides/rates set for `output_stride`."""
    if self.variant not in VARIANTS:
      raise ValueError(f"Xception variant must be 'paper' or 'jfzhang95', got {self.variant!r}.")
    jf = self.variant == 'jfzhang95'
    if self.output_stride not in ((8, 16) if jf else (8, 16, 32)):
      allowed = '16 or 8' if jf else '32, 16 or 8'
      raise ValueError(
        f'Xception{" (jfzhang95 variant)" if jf else ""} output_stride must be {allowed}, '
        f'got {self.output_stride!r}.'
      )
    flows = {
      'entry_flow': [
        ('block1', dict(depths=(128,) * 3, skip='conv', strides=2)),
        ('block2', dict(depths=(256,) * 3, skip='conv', strides=2)),
        ('block3', dict(depths=(728,) * 3, skip='conv', strides=2)),
      ],
      'middle_flow': [
        (f'block{i + 1}', dict(depths=(728,) * 3, skip='sum')) for i in range(self.middle_repeats)
      ],
      'exit_flow': [
        ('block1', dict(depths=(728, 1024, 1024), skip='conv', strides=2)),
        ('block2', dict(depths=(1536, 1536, 2048), skip='none', activation_in_separable=not jf)),
      ],
    }
    current, rate = 2, 1  # the stem's conv1 has stride 2
    for blocks in flows.values():
      for _, kw in blocks:
        stride = kw.get('strides', 1)
        kw['dilation'] = rate
        if jf:
          kw['shortcut_from_relu'] = kw['skip'] != 'none'
          if stride != 1:
            kw['last_dilation'] = 1
        if current == self.output_stride:
          kw['strides'] = 1
          rate *= stride
        else:
          current *= stride
    return flows

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
    specs = self.block_specs()
    layers.check_image_batch(x, 'Xception', channels=3, min_size=self.output_stride)
    jf = self.variant == 'jfzhang95'
    dt = self.dtype
    feats = {}
    x, entry = _Flow(tuple(specs['entry_flow']), stem=True, dtype=dt, name='entry_flow')(
      x, train=train
    )
    feats['low_level'] = nn.relu(entry['block1'][0]) if jf else entry['block2'][1]
    feats['entry_flow'] = x
    x, _ = _Flow(tuple(specs['middle_flow']), dtype=dt, name='middle_flow')(x, train=train)
    feats['middle_flow'] = x
    x, _ = _Flow(tuple(specs['exit_flow']), dtype=dt, name='exit_flow')(x, train=train)
    feats['out'] = nn.relu(x) if jf else x
    return feats


Xception65 = functools.partial(Xception, middle_repeats=16)


@register_backbone('xception65')
def xception65(**kwargs) -> Xception:
  return Xception65(**kwargs)
