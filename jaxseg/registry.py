"""Name -> constructor registries for models and backbones.

Each model family module registers its constructors with `@register_model`.
Registering a name twice is an error: a silently overwritten entry is the kind
of bug that only shows up as a wrong parameter count much later. Models build
their backbone with `build_backbone(self.backbone_spec())`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable

MODELS: dict[str, Callable[..., Any]] = {}
BACKBONES: dict[str, Callable[..., Any]] = {}


def _register(table: dict[str, Callable[..., Any]], kind: str, name: str):
  def decorator(fn):
    if name in table:
      raise ValueError(f'{kind} {name!r} is already registered (by {table[name]!r}).')
    table[name] = fn
    return fn

  return decorator


def register_model(name: str):
  """Decorator registering a model constructor `fn(*, num_classes, **kwargs)`."""
  return _register(MODELS, 'model', name)


def register_backbone(name: str):
  """Decorator registering a backbone constructor `fn(**kwargs)`."""
  return _register(BACKBONES, 'backbone', name)


_LOADED = False


def _load_all() -> None:
  """Imports every module of jaxseg.models and jaxseg.backbones (they self-register)."""
  global _LOADED
  if _LOADED:
    return
  _LOADED = True
  for package_name in ('jaxseg.backbones', 'jaxseg.models'):
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
      if not info.name.startswith('_'):
        importlib.import_module(f'{package_name}.{info.name}')


def _lookup(table: dict[str, Callable[..., Any]], kind: str, name: str):
  _load_all()
  if not isinstance(name, str) or name not in table:
    close = difflib.get_close_matches(str(name), table, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown {kind} {name!r}.{hint} Known {kind}s: {", ".join(sorted(table))}.')
  return table[name]


def list_models() -> list[str]:
  """Sorted names of every registered model."""
  _load_all()
  return sorted(MODELS)


def list_backbones() -> list[str]:
  """Sorted names of every registered backbone."""
  _load_all()
  return sorted(BACKBONES)


def create_model(name: str, *, num_classes: int, **kwargs):
  """Builds the registered model `name` with `num_classes` output channels."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be an integer >= 1, got {num_classes!r}.')
  return _lookup(MODELS, 'model', name)(num_classes=num_classes, **kwargs)


def create_backbone(name: str, /, **kwargs):
  """Builds the registered backbone `name`; its apply returns a dict of feature maps.

  `name` is positional-only, so `kwargs` may hold the Flax module's own `name=`.
  """
  return _lookup(BACKBONES, 'backbone', name)(**kwargs)


def build_backbone(spec: tuple[str, dict], *, name: str = 'backbone', **module_kwargs):
  """Builds a model's backbone from its `backbone_spec()`, as the Flax submodule `name`.

  Every model with an ImageNet backbone calls this with its own `backbone_spec()`
  (`(registered_backbone_name, kwargs)`), which `jaxseg.weights.init_backbone`
  also reads to load ImageNet weights into `params['backbone']`: the spec is the
  one description of the backbone, so the loaded and the built module cannot
  disagree. `module_kwargs` are what does not change the backbone's variables
  (the computation `dtype`, DilatedNet's convolution padding).

  Called inside a model's `@nn.compact` method, the backbone becomes that
  model's submodule.
  """
  backbone_name, kwargs = spec
  return create_backbone(backbone_name, name=name, **kwargs, **module_kwargs)
