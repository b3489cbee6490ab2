"""Experiment recipes: one `get_config(variant)` per paper setting (ml_collections).

A recipe is named by its module (`fcn8s`, `deeplab_v3plus`, ...) and an
optional variant after a colon (`quickstart:smoke`). `jaxseg train --config`
accepts that name or the path of a config file of your own.
"""

from __future__ import annotations

import difflib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def list_recipes() -> list[str]:
  """Names of the packaged recipes (the modules of this package that define get_config)."""
  names = []
  for f in sorted(os.listdir(_HERE)):
    stem, ext = os.path.splitext(f)
    if ext == '.py' and not stem.startswith('_') and stem != 'common':
      names.append(stem)
  return names


def resolve(spec: str) -> str:
  """`NAME[:variant]` or `PATH[:variant]` -> `PATH[:variant]` of an existing config file.

  An existing file wins over a recipe of the same name. Anything else raises
  ValueError naming the packaged recipes (and the closest one).
  """
  path, sep, variant = spec.partition(':')
  if os.path.isfile(path):
    return spec
  recipes = list_recipes()
  if path in recipes:
    return os.path.join(_HERE, f'{path}.py') + sep + variant
  stem = os.path.splitext(os.path.basename(path))[0]
  if os.sep in path or path.endswith('.py'):
    msg = f'config file {path!r} does not exist'
    if stem in recipes:
      msg += f' (the packaged recipe of that name is --config {stem}{sep}{variant})'
    raise ValueError(msg + '.')
  close = difflib.get_close_matches(path, recipes, n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  raise ValueError(
    f'--config {spec!r}: no config file and no packaged recipe named {path!r}.{hint} '
    f'Recipes: {", ".join(recipes)}.'
  )


def resolve_argv(argv: list[str]) -> list[str]:
  """Command-line arguments with `--config NAME[:variant]` (or `--config=...`) resolved to a path."""
  out = list(argv)
  for i, a in enumerate(out):
    if a in ('--config', '-config') and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
    elif a.startswith(('--config=', '-config=')):
      flag, _, value = a.partition('=')
      out[i] = f'{flag}={resolve(value)}'
  return out
