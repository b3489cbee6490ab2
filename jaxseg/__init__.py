"""jaxseg: the classic semantic-segmentation networks in JAX/Flax (linen)."""

# layers first: on import it sets jaxseg's XLA:CPU defaults (layers.configure_xla_cpu),
# which only take effect before JAX starts its backend.
from jaxseg import layers  # noqa: I001
from jaxseg import losses, metrics, weights
from jaxseg.registry import create_backbone, create_model, list_backbones, list_models

__all__ = [
  'create_backbone',
  'create_model',
  'list_backbones',
  'layers',
  'list_models',
  'losses',
  'metrics',
  'weights',
]
__version__ = '0.1.0'
