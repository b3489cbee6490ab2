"""jaxseg: the classic semantic-segmentation networks in JAX/Flax (linen).

Importing jaxseg changes no environment variable and no JAX setting; entry
points that want jaxseg's XLA:CPU flag call `jaxseg.cpu_conv.configure_xla_flags()`.
"""

from jaxseg import cpu_conv, layers, losses, metrics, weights
from jaxseg.registry import create_backbone, create_model, list_backbones, list_models

__all__ = [
  'cpu_conv',
  'create_backbone',
  'create_model',
  'layers',
  'list_backbones',
  'list_models',
  'losses',
  'metrics',
  'weights',
]
__version__ = '0.1.0'
