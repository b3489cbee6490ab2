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

# Subpackages imported on first attribute access (`jaxseg.data.load_source`), so that
# `import jaxseg` stays fast and does not pull in TFDS, grain or orbax.
_LAZY = (
  'backbones',
  'benchmarks',
  'cli',
  'configs',
  'crf',
  'deploy',
  'data',
  'heads',
  'inference',
  'models',
  'ops',
  'registry',
  'train',
)


def __getattr__(name):
  if name in _LAZY:
    import importlib

    module = importlib.import_module(f'{__name__}.{name}')
    globals()[name] = module
    return module
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
