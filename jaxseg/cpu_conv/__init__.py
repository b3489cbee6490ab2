"""A convolution engine for XLA:CPU: the same convolutions, in the forms its kernels run fast.

XLA:CPU has cliffs a different formulation avoids: the input gradient of
FCN's fc6 (7x7, 512 -> 4096 on an 11x11 map) takes ~15-20 s where shifted
slices feeding one GEMM take ~0.3 s; Eigen's convolution runs narrow outputs
(FC-DenseNet's 12-channel growth layers) at a third of its GEMM speed; its
`a . b^T` GEMMs (1x1 input gradients, transposed convolutions) are slow.
`CpuLowering` implements `layers.Lowering` by choosing, per convolution
shape (`plan.plan_conv`, a pure function), one of the forms in `forms`, each
with custom gradients. Results equal XLA's convolution to float32 rounding.

Nothing here runs unless a caller asks for it: `layers.Apply(model,
lowering=CpuLowering())`, a module's `lowering` field, or the trainer's
`config.train.conv_lowering` ('auto' picks it on the CPU backend). Entry
points call `configure_xla_flags()` before JAX starts and pass
`compiler_options(...)` to their jits; importing jaxseg does neither.
Measurements behind every threshold: benchmarks/README.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax

from jaxseg import layers
from jaxseg.cpu_conv import forms, plan
from jaxseg.cpu_conv.geometry import pad_hw

Array = jax.Array

__all__ = [
  'CpuLowering',
  'compiler_options',
  'configure_xla_flags',
  'select',
  'ynn_convolutions',
]


@dataclasses.dataclass(frozen=True)
class CpuLowering(layers.Lowering):
  """`layers.Lowering` in the forms XLA:CPU runs fastest (see the module docstring).

  Attributes:
    ynn_convolutions: whether XLA:CPU runs convolutions through YNNPACK (jaxlib's
      default; `configure_xla_flags` moves them to Eigen). Wide inputs then take
      im2col GEMM gradients. `select` reads it from XLA_FLAGS.
  """

  ynn_convolutions: bool = False

  def conv(self, x: Array, kernel: Array, *, strides, padding, dilation, groups: int) -> Array:
    strides, dilation = tuple(strides), tuple(dilation)
    p = plan.plan_conv(
      x.shape, kernel.shape, strides, padding, dilation, groups, x.dtype.itemsize,
      ynn_convolutions=self.ynn_convolutions,
    )  # fmt: skip
    (i0, i1), (j0, j1) = p.taps
    if (i0, i1, j0, j1) != (0, kernel.shape[0] - 1, 0, kernel.shape[1] - 1):
      kernel = kernel[i0 : i1 + 1, j0 : j1 + 1]
    (h0, h1), (w0, w1) = p.crop
    if (h0, h1, w0, w1) != (0, x.shape[1], 0, x.shape[2]):
      x = x[:, h0:h1, w0:w1]
    if any(map(any, p.pre_pad)):
      x = pad_hw(x, p.pre_pad)
    if p.form == 'plain':
      return forms.plain(x, kernel, strides, p.pads, dilation, groups)
    if p.form == 'padded_kernel_grad':
      return forms.padded_kernel_grad(x, kernel, p.pads, dilation, groups)
    form = getattr(forms, p.form)  # groups == 1 from here on
    return form(x, kernel, strides, p.pads, dilation)

  def conv_transpose(self, x: Array, kernel: Array, *, strides, padding, output_padding) -> Array:
    if (
      plan.plan_conv_transpose(x.shape, kernel.shape, strides, padding, x.dtype.itemsize) == 'plain'
    ):
      return super().conv_transpose(
        x, kernel, strides=strides, padding=padding, output_padding=output_padding
      )
    return forms.transpose_overlap_add(x, kernel, strides, padding, output_padding)


LOWERINGS = ('auto', 'xla', 'cpu')


def select(name: str) -> layers.Lowering:
  """The lowering a config names: 'xla', 'cpu', or 'auto' (the CPU engine when JAX's
  default backend is CPU, plain XLA on GPU/TPU). Call it after `configure_xla_flags`."""
  if name not in LOWERINGS:
    raise ValueError(f'conv_lowering must be one of {LOWERINGS}, got {name!r}.')
  if name == 'xla' or (name == 'auto' and jax.default_backend() != 'cpu'):
    return layers.XLA
  return CpuLowering(ynn_convolutions=ynn_convolutions())


# jaxlib 0.10's XLA:CPU hands dots, convolutions and reductions to YNNPACK.
# Its convolution gradients run 2.5-5x slower than Eigen's for the same op and
# its 2048^3 GEMM ~20% slower; its reductions are the more accurate (train-mode
# BatchNorm statistics). The flag keeps YNNPACK for reductions only.
_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
_YNN_VALUE = 'reduce'
# jaxlib versions on which the flag and options were verified to exist (XLA aborts on unknown ones).
_VERIFIED_JAXLIB = ((0, 10), (0, 12))
OPT_OUT_ENV = 'JAXSEG_KEEP_XLA_FLAGS'


def _xla_flag_value(name: str) -> str | None:
  """Value of the last `--name=value` in XLA_FLAGS (None if the flag is not given)."""
  value = None
  for token in os.environ.get('XLA_FLAGS', '').split():
    if token.startswith(f'--{name}='):
      value = token.split('=', 1)[1]
    elif token == f'--{name}':
      value = ''
  return value


def _jaxlib_verified() -> bool:
  try:
    import jaxlib.version

    version = tuple(int(p) for p in jaxlib.version.__version__.split('.')[:2])
  except (ImportError, ValueError):
    return False
  low, high = _VERIFIED_JAXLIB
  return low <= version < high


def configure_xla_flags() -> bool:
  """Adds `--xla_cpu_experimental_ynn_fusion_type=reduce` to XLA_FLAGS (for entry points).

  Dots and convolutions then run on Eigen, reductions stay with YNNPACK. XLA
  reads XLA_FLAGS once, when JAX starts its backends, so call this before any
  JAX computation. Does nothing when the flag is already in XLA_FLAGS (the
  user's choice wins), when JAXSEG_KEEP_XLA_FLAGS is non-empty, or on jaxlib
  versions where the flag was not verified. Returns whether it set the flag.
  Only the CPU backend reads it; results change within float32 rounding.
  """
  if os.environ.get(OPT_OUT_ENV) or _xla_flag_value(_YNN_FLAG) is not None:
    return False
  if not _jaxlib_verified():
    return False
  flags = os.environ.get('XLA_FLAGS', '')
  os.environ['XLA_FLAGS'] = f'{flags} --{_YNN_FLAG}={_YNN_VALUE}'.strip()
  return True


def ynn_convolutions() -> bool:
  """Whether XLA:CPU runs convolutions through YNNPACK (jaxlib's default), per XLA_FLAGS."""
  value = _xla_flag_value(_YNN_FLAG)
  return value is None or 'convolution' in value.lower()


def compiler_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """`options` for `jax.jit(..., compiler_options=...)` where they apply, else None.

  Per-program XLA:CPU options (a recipe's `train.xla_cpu_compiler_options`:
  FC-DenseNet-103 compiles 20-40% faster without the MLIR fusion emitters,
  while ResNet steps run 7-10% slower without them) apply on the CPU backend
  only, not when JAXSEG_KEEP_XLA_FLAGS is set, not on unverified jaxlib
  versions (XLA rejects unknown options), and never over an option XLA_FLAGS sets.
  """
  options = dict(options or {})
  if not options or os.environ.get(OPT_OUT_ENV) or jax.default_backend() != 'cpu':
    return None
  if not _jaxlib_verified():
    return None
  return {k: v for k, v in options.items() if _xla_flag_value(k) is None} or None
