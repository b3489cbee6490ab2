"""Shared modules every model is built from.

Every convolution of every model is a `Conv2d` or `ConvTranspose2d`; each
creates its parameters and calls a `Lowering` for the arithmetic: plain
`lax.conv_general_dilated` by default (`XLA`), or the XLA:CPU engine of
`jaxseg.cpu_conv` where a caller asks for it (`Apply`, or a module's
`lowering` field). Parameter names follow flax (`kernel`, `bias`, `scale`,
`mean`, `var`).

- `conv`: Conv2d, ConvTranspose2d, the `Lowering` seam, initialisers.
- `norm`: BatchNorm (PyTorch's running-statistics rule), ConvBNReLU, Dropout2d.
- `apply`: `Apply`, a model's apply function with a lowering and a BatchNorm axis.
- `validation`: `check_image_batch`.
"""

from jaxseg.layers.apply import Apply
from jaxseg.layers.conv import (
  XLA,
  Conv2d,
  ConvTranspose2d,
  Lowering,
  bilinear_init,
  bilinear_kernel,
  torch_default_init,
)
from jaxseg.layers.norm import BatchNorm, ConvBNReLU, Dropout2d, apply_keep_mask
from jaxseg.layers.validation import check_image_batch

__all__ = [
  'XLA',
  'Apply',
  'BatchNorm',
  'Conv2d',
  'ConvBNReLU',
  'ConvTranspose2d',
  'Dropout2d',
  'Lowering',
  'apply_keep_mask',
  'bilinear_init',
  'bilinear_kernel',
  'check_image_batch',
  'torch_default_init',
]
