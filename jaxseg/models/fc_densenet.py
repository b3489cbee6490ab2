"""FC-DenseNet56 / 67 / 103, "The One Hundred Layers Tiramisu" (Jegou et al., CVPRW 2017).

* first layer: 3x3 convolution to 48 channels;
* dense block: n layers of BN-ReLU-3x3 conv (growth rate k channels)-dropout
  0.2, each layer's input the concatenation of the block input and all
  previous layers' outputs;
* transition down: BN-ReLU-1x1 conv (same channels)-dropout-2x2 max pool;
* transition up: 3x3 transposed convolution, stride 2, on the new feature maps
  of the previous block, center-cropped to the skip and concatenated with it;
* the bottleneck and the up-path blocks pass on only the feature maps they
  created (the paper's remedy for the feature-map explosion), except the last
  up block, whose full output feeds the 1x1 classifier.

Configurations (layers per block down / bottleneck / up, growth rate):
FC-DenseNet56: 4 everywhere, k=12; FC-DenseNet67: 5 everywhere, k=16;
FC-DenseNet103: 4, 5, 7, 10, 12 / 15 / 12, 10, 7, 5, 4, k=16.

Parameters with 11 classes (trainable, torch-style counting: BN scale/bias
counted, running statistics not): 1,376,795 / 3,463,243 / 9,322,091. The
paper's 1.5M / 3.5M / 9.4M count the BatchNorm running mean and variance too:
1,397,963 / 3,502,923 / 9,425,163.

Layout: bfortuner/pytorch_tiramisu (the widely used PyTorch port), keys
`firstconv`, `denseBlocksDown.{i}.layers.{j}.{norm,conv}`,
`transDownBlocks.{i}.{norm,conv}`, `bottleneck.bottleneck.layers.{j}.*`,
`transUpBlocks.{i}.convTrans`, `denseBlocksUp.{i}.layers.{j}.*`, `finalConv`
(Flax names use '_' before the index: `denseBlocksDown_0/layers_3/conv`). That
port ends with LogSoftmax; here the model returns logits, as every jaxseg model
does. Dropout is element-wise, as in the authors' Lasagne code (the port uses
channel dropout); it only acts in training, and all of a forward pass's masks
come from one random draw (`FCDenseNet.mask_shapes` lists them).

Pooling is floor-mode and each transition up is cropped to its skip, so any
input with H, W >= 32 works (odd sizes included) and the logits have the
input's size.

Paper result: CamVid (11 classes, 360x480) mIoU 66.9 for FC-DenseNet103
(58.9 for 56, 65.8 for 67), trained with RMSprop, lr 1e-3 decayed by 0.995 per
epoch, weight decay 1e-4, 224x224 random crops and flips, then fine-tuned on
full images.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import layers
from jaxseg.ops import center_crop, max_pool2d
from jaxseg.registry import register_model

Array = jax.Array


class DenseBlock(nn.Module):
  """n x (BN-ReLU-3x3 conv-dropout), densely connected.

  Attributes:
    num_layers: layers in the block.
    growth_rate: channels each layer adds.
    dropout: dropout rate.
    new_only: return only the new feature maps (bottleneck and up path).
    dtype: computation dtype.
  """

  num_layers: int
  growth_rate: int
  dropout: float
  new_only: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, keep: Array | None = None) -> Array:
    """`keep`: the block's dropout keep-mask, (N, H, W, num_layers * growth_rate)
    booleans, layer j using channels [j * k, (j + 1) * k); `FCDenseNet` passes
    its slice of the network's one draw. Without it, training draws the block's
    mask here (one draw for all layers)."""
    k = self.growth_rate
    keep = _keep_mask(self, keep, x.shape[:3] + (self.num_layers * k,), train, 'DenseBlock')

    def layer_keep(j):
      return None if keep is None else keep[..., j * k : (j + 1) * k]

    # Layer j reads the first c0 + j * k channels of one (N, H, W, c0 + n * k)
    # buffer and writes its k new channels after them (an in-place update for
    # XLA) instead of concatenating a growing copy after every layer: each
    # layer's input gradient is then one padded add into a buffer-sized
    # accumulator, where a concatenation's gradient is split per earlier layer
    # and XLA fuses every layer's BatchNorm backward into each split. FC-DenseNet56
    # train step against a concatenating block (batch 2, 128x128, 2 shared cores,
    # compiled and timed interleaved): 51k -> 39k optimised HLO instructions,
    # 4.48 -> 3.92 CPU-seconds per step, compile time about the same.
    c0 = x.shape[-1]
    buf = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.num_layers * k)))
    for j in range(self.num_layers):
      inp = jax.lax.slice_in_dim(buf, 0, c0 + j * k, axis=3)
      y = DenseLayer(k, self.dropout, self.dtype, name=f'layers_{j}')(
        inp, train=train, keep=layer_keep(j)
      )
      buf = jax.lax.dynamic_update_slice_in_dim(buf, y.astype(buf.dtype), c0 + j * k, axis=3)
    return jax.lax.slice_in_dim(buf, c0, buf.shape[3], axis=3) if self.new_only else buf


class DenseLayer(nn.Module):
  """BN-ReLU-3x3 conv-dropout.

  Attributes:
    features: output channels (the growth rate).
    dropout: dropout rate.
    dtype: computation dtype.
  """

  features: int
  dropout: float
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, keep: Array | None = None) -> Array:
    """`keep`: this layer's dropout keep-mask (from its block); without it,
    training draws one here."""
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name='norm')(x, train=train))
    x = layers.Conv2d(self.features, 3, padding=1, dtype=self.dtype, name='conv')(x)
    return _dropout(self, x, train, keep, 'DenseLayer')


class TransitionDown(nn.Module):
  """BN-ReLU-1x1 conv-dropout-2x2 max pool.

  Attributes:
    dropout: dropout rate.
    dtype: computation dtype.
  """

  dropout: float
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, keep: Array | None = None) -> Array:
    """`keep`: the dropout keep-mask (from `FCDenseNet`); without it, training draws one here."""
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name='norm')(x, train=train))
    x = layers.Conv2d(x.shape[-1], 1, dtype=self.dtype, name='conv')(x)
    return max_pool2d(_dropout(self, x, train, keep, 'TransitionDown'), 2)


def _keep_mask(module: nn.Module, keep: Array | None, shape, train: bool, where: str):
  """The dropout keep-mask `module` uses: None outside training or at rate 0, else
  `keep` as given (shape-checked), or one drawn here when none is given."""
  if not train or module.dropout == 0:
    return None
  if keep is None:
    return jax.random.bernoulli(module.make_rng('dropout'), 1.0 - module.dropout, shape)
  if tuple(keep.shape) != tuple(shape):
    raise ValueError(f'{where} dropout keep-mask: expected shape {tuple(shape)}, got {keep.shape}.')
  return keep


def _dropout(module: nn.Module, x: Array, train: bool, keep: Array | None, where: str) -> Array:
  """Element-wise dropout of `x` with `_keep_mask`'s mask."""
  keep = _keep_mask(module, keep, x.shape, train, where)
  return x if keep is None else layers.apply_keep_mask(x, keep, module.dropout)


class FCDenseNet(nn.Module):
  """Fully convolutional DenseNet (Tiramisu).

  Attributes:
    num_classes: output channels.
    down_blocks: layers per dense block of the down path.
    bottleneck_layers: layers of the bottleneck block.
    up_blocks: layers per dense block of the up path.
    growth_rate: channels each dense layer adds (k).
    first_features: channels of the first 3x3 convolution.
    in_channels: input channels (3 for RGB; 1 for grayscale data).
    dropout: dropout rate everywhere (0.2 in the paper).
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int
  down_blocks: Sequence[int] = (4, 5, 7, 10, 12)
  bottleneck_layers: int = 15
  up_blocks: Sequence[int] = (12, 10, 7, 5, 4)
  growth_rate: int = 16
  first_features: int = 48
  in_channels: int = 3
  dropout: float = 0.2
  dtype: Any = None

  @property
  def min_input_size(self) -> int:
    return 2 ** len(self.down_blocks)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if len(self.up_blocks) != len(self.down_blocks):
      raise ValueError(
        f'FC-DenseNet needs as many up blocks as down blocks, got {self.down_blocks} / {self.up_blocks}.'
      )
    layers.check_image_batch(
      x, 'FC-DenseNet', channels=self.in_channels, min_size=self.min_input_size
    )
    k, dt = self.growth_rate, self.dtype
    keeps = self._keep_masks(x.shape, train)
    x = layers.Conv2d(self.first_features, 3, padding=1, dtype=dt, name='firstconv')(x)
    skips = []
    for i, n in enumerate(self.down_blocks):
      x = DenseBlock(n, k, self.dropout, dtype=dt, name=f'denseBlocksDown_{i}')(
        x, train=train, keep=next(keeps)
      )
      skips.append(x)
      x = TransitionDown(self.dropout, dt, name=f'transDownBlocks_{i}')(
        x, train=train, keep=next(keeps)
      )
    x = DenseBlock(
      self.bottleneck_layers, k, self.dropout, new_only=True, dtype=dt, name='bottleneck'
    )(x, train=train, keep=next(keeps))
    for i, n in enumerate(self.up_blocks):
      skip = skips.pop()
      x = TransitionUp(dt, name=f'transUpBlocks_{i}')(x, skip)
      last = i == len(self.up_blocks) - 1
      x = DenseBlock(n, k, self.dropout, new_only=not last, dtype=dt, name=f'denseBlocksUp_{i}')(
        x, train=train, keep=next(keeps)
      )
    if next(keeps, 'done') != 'done':
      raise RuntimeError('FC-DenseNet: mask_shapes lists more dropout masks than __call__ uses.')
    x = layers.Conv2d(self.num_classes, 1, dtype=dt, name='finalConv')(x)
    return x.astype(jnp.float32)

  def mask_shapes(self, input_shape) -> list[tuple[int, ...]]:
    """Shapes of the dropout keep-masks, in the order `__call__` uses them: per
    down level the dense block's new channels and the transition down's input,
    then the bottleneck's and each up block's new channels."""
    n, h, w = input_shape[:3]
    k, c, sizes, shapes = self.growth_rate, self.first_features, [], []
    for layers_ in self.down_blocks:
      shapes.append((n, h, w, layers_ * k))
      c += layers_ * k
      shapes.append((n, h, w, c))
      sizes.append((h, w))
      h, w = h // 2, w // 2  # floor-mode 2x2 pooling
    shapes.append((n, h, w, self.bottleneck_layers * k))
    for layers_ in self.up_blocks:
      h, w = sizes.pop()  # cropped to the skip
      shapes.append((n, h, w, layers_ * k))
    return shapes

  def _keep_masks(self, input_shape, train: bool):
    """An iterator over the network's dropout keep-masks, all from one draw.

    Every `jax.random` draw of a new shape is its own threefry kernel in the
    compiled step: FC-DenseNet103's 96 per-layer draws were about a third of
    its train-step compile time (one flat draw for all masks, then slices).
    Yields None (no dropout) outside training or with dropout 0.
    """
    shapes = self.mask_shapes(input_shape)
    if not train or self.dropout == 0:
      return iter([None] * len(shapes))
    sizes = [int(np.prod(s)) for s in shapes]
    flat = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout, (sum(sizes),))
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    return iter([p.reshape(s) for p, s in zip(parts, shapes, strict=True)])


class TransitionUp(nn.Module):
  """3x3 stride-2 transposed convolution, center crop to the skip, concatenation [up, skip].

  Attributes:
    dtype: computation dtype.
  """

  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, skip: Array) -> Array:
    x = layers.ConvTranspose2d(x.shape[-1], 3, 2, dtype=self.dtype, name='convTrans')(x)
    return jnp.concatenate([center_crop(x, skip.shape[1:3]), skip], axis=-1)


FCDenseNet56 = functools.partial(
  FCDenseNet, down_blocks=(4,) * 5, bottleneck_layers=4, up_blocks=(4,) * 5, growth_rate=12
)
FCDenseNet67 = functools.partial(
  FCDenseNet, down_blocks=(5,) * 5, bottleneck_layers=5, up_blocks=(5,) * 5, growth_rate=16
)
FCDenseNet103 = FCDenseNet


@register_model('fc_densenet56')
def fc_densenet56(*, num_classes: int, **kwargs) -> FCDenseNet:
  return FCDenseNet56(num_classes=num_classes, **kwargs)


@register_model('fc_densenet67')
def fc_densenet67(*, num_classes: int, **kwargs) -> FCDenseNet:
  return FCDenseNet67(num_classes=num_classes, **kwargs)


@register_model('fc_densenet103')
def fc_densenet103(*, num_classes: int, **kwargs) -> FCDenseNet:
  return FCDenseNet103(num_classes=num_classes, **kwargs)
