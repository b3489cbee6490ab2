"""Every config file loads, its variants load, and the names it uses resolve (model registry, schema)."""

import importlib

import pytest

import jaxseg
from jaxseg import configs
from jaxseg.configs import common

CONFIG_FILES = configs.list_recipes()


# Free-form dicts: model constructor arguments and XLA:CPU compile options.
FREE_FORM = ('kwargs', 'xla_cpu_compiler_options')


def _schema_keys(c, prefix=''):
  out = set()
  for k, v in c.items():
    if hasattr(v, 'items') and k not in FREE_FORM:
      out |= _schema_keys(v, f'{prefix}{k}.')
    else:
      out.add(prefix + k)
  return out


BASE_KEYS = _schema_keys(common.base_config())


def test_every_registered_model_has_a_config_named_after_it():
  """DESIGN.md names configs after the registry names of the models they train."""
  assert 'fcn8s' in CONFIG_FILES and 'quickstart' in CONFIG_FILES


@pytest.mark.parametrize('name', CONFIG_FILES)
@pytest.mark.parametrize('variant', ['', 'smoke'])
def test_config_loads_and_resolves(name, variant):
  module = importlib.import_module(f'jaxseg.configs.{name}')
  assert module.__doc__ and f'jaxseg train --config {name}' in module.__doc__, (
    f'configs/{name}.py docstring must give the run command'
  )
  c = module.get_config(variant)
  assert c.model.name in jaxseg.list_models(), (
    f'configs/{name}.py names unknown model {c.model.name!r}'
  )
  unknown = _schema_keys(c) - BASE_KEYS
  assert not unknown, f'configs/{name}.py sets fields outside the schema: {sorted(unknown)}'
  model = jaxseg.create_model(
    c.model.name, num_classes=jaxseg.data.dataset_info(c).num_classes, **c.model.kwargs
  )
  assert model is not None
  if variant == 'smoke':
    from jaxseg import data

    assert c.dataset.name == 'synthetic' and c.train.num_steps == 2
    assert (
      data.num_examples(c, c.dataset.train_split) > 0
      and data.num_examples(c, c.dataset.eval_split) > 0
    )


def test_unknown_variant_is_refused():
  from jaxseg.configs import fcn8s

  with pytest.raises(ValueError, match="unknown variant 'big'"):
    fcn8s.get_config('big')
