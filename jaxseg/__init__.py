"""jaxseg: the classic semantic-segmentation networks in JAX/Flax (linen)."""

from jaxseg import losses, metrics, weights
from jaxseg.registry import create_backbone, create_model, list_backbones, list_models

__all__ = [
  'create_backbone',
  'create_model',
  'list_backbones',
  'list_models',
  'losses',
  'metrics',
  'weights',
]
__version__ = '0.1.0'
