"""Convolution layers with PyTorch semantics, and the lowering they compute with.

`Conv2d` and `ConvTranspose2d` create their parameters and hand the
arithmetic to a `Lowering` (one signature for each: NHWC inputs, HWIO or
(kh, kw, out, in) kernels, explicit padding): plain `lax.conv_general_dilated`
by default (`XLA`), or another implementation of the same two methods (the
XLA:CPU engine of `jaxseg.cpu_conv`). The lowering is a module field or an
argument of `layers.Apply`, never a process-wide setting, so it is part of
what jit compiles. Layouts: HWIO for convolutions and (kh, kw, out, in) for
transposed convolutions (PyTorch's ConvTranspose2d weight permuted by
(2, 3, 1, 0), the same permutation as Conv2d's OIHW -> HWIO).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IntOr2 = int | Sequence[int]

# PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)) has variance 1/(3 fan_in).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _pair(v: IntOr2) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(i) for i in v)
  if len(v) != 2:
    raise ValueError(f'expected an int or a pair, got {v!r}')
  return v


def _padding(padding, kernel, dilation) -> str | list[tuple[int, int]]:
  if isinstance(padding, str):
    padding = padding.upper()
    if padding not in ('SAME', 'VALID'):
      raise ValueError(f"padding must be an int, pairs, 'SAME' or 'VALID', got {padding!r}")
    if padding == 'SAME':
      # PyTorch-style symmetric "same" for stride 1 (odd effective kernels).
      return [
        ((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2)
        for k, d in zip(kernel, dilation, strict=True)
      ]
    return 'VALID'
  if isinstance(padding, int):
    return [(padding, padding), (padding, padding)]
  pads = list(padding)
  if all(isinstance(p, int) for p in pads):
    return [(pads[0], pads[0]), (pads[1], pads[1])]
  return [tuple(p) for p in pads]


def bilinear_kernel(kernel_size: int) -> np.ndarray:
  """The 2-D bilinear upsampling filter FCN initialises its deconvolutions with."""
  factor = (kernel_size + 1) // 2
  center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
  og = np.ogrid[:kernel_size, :kernel_size]
  return ((1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)).astype(
    np.float32
  )


def bilinear_init(key, shape, dtype=jnp.float32):
  """Initialiser for a (kh, kw, out, in) transposed-conv kernel: bilinear on the diagonal."""
  del key
  kh, kw, out_ch, in_ch = shape
  if kh != kw:
    raise ValueError(f'bilinear_init needs a square kernel, got {(kh, kw)}')
  w = np.zeros(shape, np.float32)
  filt = bilinear_kernel(kh)
  for i in range(min(out_ch, in_ch)):
    w[:, :, i, i] = filt
  return jnp.asarray(w, dtype)


@dataclasses.dataclass(frozen=True)
class Lowering:
  """Plain XLA convolutions (`lax.conv_general_dilated`), the default on every backend.

  Subclasses override `conv` and/or `conv_transpose` with the same signatures
  and must compute the same function (to floating-point rounding).
  """

  def conv(self, x: Array, kernel: Array, *, strides, padding, dilation, groups: int) -> Array:
    """`x` (N, H, W, C) convolved with `kernel` (kh, kw, C // groups, out), explicit
    `padding` ((top, bottom), (left, right)), `strides` and `dilation` pairs."""
    return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, rhs_dilation=dilation,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
    )  # fmt: skip

  def conv_transpose(self, x: Array, kernel: Array, *, strides, padding, output_padding) -> Array:
    """PyTorch's ConvTranspose2d of `x` (NHWC) with `kernel` (kh, kw, out, in); `padding`
    is cropped from each side, `output_padding` added at the bottom/right."""
    kh, kw = kernel.shape[:2]
    (ph, pw), (oph, opw) = padding, output_padding
    # A transposed conv is a conv of the stride-dilated input with the spatially
    # flipped, in/out-swapped kernel, padded by k - 1 - p on each side.
    return jax.lax.conv_general_dilated(
      x, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), (1, 1),
      [(kh - 1 - ph, kh - 1 - ph + oph), (kw - 1 - pw, kw - 1 - pw + opw)],
      lhs_dilation=strides, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )  # fmt: skip


XLA = Lowering()


def _add_bias(module: nn.Module, y: Array) -> Array:
  """`y` plus the module's `bias` parameter (created here, inside its compact call), if it has one."""
  if not module.use_bias:
    return y
  bias = module.param('bias', module.bias_init, (module.features,), module.param_dtype)
  return y + bias.astype(y.dtype)


class Conv2d(nn.Module):
  """2-D convolution on NHWC inputs (PyTorch Conv2d semantics).

  Attributes:
    features: output channels.
    kernel_size: int or (kh, kw).
    strides: int or pair.
    padding: int, pair of ints, explicit ((top, bottom), (left, right)), 'SAME' or 'VALID'.
    dilation: int or pair; lowers to `rhs_dilation` (atrous convolution).
    groups: feature groups (groups == in_channels is a depthwise convolution).
    use_bias: whether to add a bias.
    dtype: computation dtype (e.g. jnp.bfloat16); None keeps the input's.
    param_dtype: parameter dtype.
    kernel_init, bias_init: initialisers.
    lowering: how the convolution is computed (None: `XLA`).
  """

  features: int
  kernel_size: IntOr2 = 3
  strides: IntOr2 = 1
  padding: Any = 0
  dilation: IntOr2 = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = torch_default_init
  bias_init: Callable = nn.initializers.zeros_init()
  lowering: Lowering | None = None

  @nn.compact
  def __call__(self, x: Array, *, lowering: Lowering | None = None) -> Array:
    """`lowering` (given by `Apply`) overrides the module's own."""
    kh, kw = _pair(self.kernel_size)
    in_ch = x.shape[-1]
    if in_ch % self.groups:
      raise ValueError(
        f'{self.name}: {in_ch} input channels are not divisible by groups={self.groups}'
      )
    kernel = self.param(
      'kernel', self.kernel_init, (kh, kw, in_ch // self.groups, self.features), self.param_dtype
    )
    dtype = self.dtype or x.dtype
    dilation = _pair(self.dilation)
    padding = _padding(self.padding, (kh, kw), dilation)
    pads = ((0, 0), (0, 0)) if padding == 'VALID' else tuple(tuple(p) for p in padding)
    lowering = lowering or self.lowering or XLA
    y = lowering.conv(
      x.astype(dtype), kernel.astype(dtype),
      strides=_pair(self.strides), padding=pads, dilation=dilation, groups=self.groups,
    )  # fmt: skip
    return _add_bias(self, y)


class ConvTranspose2d(nn.Module):
  """Transposed convolution with PyTorch ConvTranspose2d semantics (NHWC).

  Output size is `(in - 1) * stride - 2 * padding + kernel + output_padding`.
  The kernel is stored (kh, kw, out, in).

  Attributes:
    features: output channels.
    kernel_size: int or pair.
    strides: int or pair.
    padding: int or pair (PyTorch's `padding`: cropped from each side).
    output_padding: int or pair added to the bottom/right.
    use_bias: whether to add a bias (FCN's upsampling layers have none).
    dtype, param_dtype, kernel_init, bias_init, lowering: as in `Conv2d`.
  """

  features: int
  kernel_size: IntOr2 = 2
  strides: IntOr2 = 2
  padding: IntOr2 = 0
  output_padding: IntOr2 = 0
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = torch_default_init
  bias_init: Callable = nn.initializers.zeros_init()
  lowering: Lowering | None = None

  @nn.compact
  def __call__(self, x: Array, *, lowering: Lowering | None = None) -> Array:
    """`lowering` (given by `Apply`) overrides the module's own."""
    kernel_hw = _pair(self.kernel_size)
    kernel = self.param(
      'kernel', self.kernel_init, (*kernel_hw, self.features, x.shape[-1]), self.param_dtype
    )
    dtype = self.dtype or x.dtype
    lowering = lowering or self.lowering or XLA
    y = lowering.conv_transpose(
      x.astype(dtype), kernel.astype(dtype), strides=_pair(self.strides),
      padding=_pair(self.padding), output_padding=_pair(self.output_padding),
    )  # fmt: skip
    return _add_bias(self, y)
