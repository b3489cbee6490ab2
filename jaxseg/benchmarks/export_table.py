"""Exports every registered model as StableHLO and checks it in a process that never imports jaxseg.

  python -m jaxseg.benchmarks.export_table [--models fcn8s,segnet] [--json out.json]

For each model (reduced width where its constructor takes `width` or
`base_width`, so that the run stays short; the input size and class count of
`jaxseg.benchmarks.run.DEFAULTS`): random weights, `jaxseg.deploy.stablehlo.export`
with a symbolic batch, then `jaxseg/deploy/stablehlo_loader.py` in a fresh
`python -I` process runs batches of 1 and 2 uint8 noise images; the table
gives the largest relative difference to `model.apply` (max |a - b| / max |b|),
the artifact's size and the export time, or why the export failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxseg
from jaxseg.benchmarks.run import DEFAULTS, FALLBACK
from jaxseg.data import normalize
from jaxseg.deploy import stablehlo

# Constructor arguments tried in turn: the first the model accepts is used.
REDUCED = ({'width': 1 / 8}, {'base_width': 16}, {})
_RUNNER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import stablehlo_loader
model = stablehlo_loader.load(sys.argv[2])
x = np.load(sys.argv[2] + '.input.npy')
np.savez(sys.argv[3], one=model(x[:1])['logits'], two=model(x)['logits'])
assert 'jaxseg' not in sys.modules
"""


def _build(name: str, num_classes: int):
  for kwargs in REDUCED:
    try:
      return jaxseg.create_model(name, num_classes=num_classes, **kwargs), kwargs
    except TypeError:
      continue
  raise AssertionError('unreachable: the last entry has no kwargs')


def check_model(name: str, root: str) -> dict:
  """Exports `name` and compares the artifact, run without jaxseg, with model.apply."""
  _, (h, w), num_classes = DEFAULTS.get(name, FALLBACK)
  model, kwargs = _build(name, num_classes)
  row = {'model': name, 'kwargs': {k: float(v) for k, v in kwargs.items()}, 'size': [h, w]}
  try:  # artifacts take RGB: a network built for other inputs does not export as it is
    variables = model.init(jax.random.key(0), jnp.zeros((1, h, w, 3)), train=False)
  except ValueError as e:
    row.update(stablehlo=False, error=f'ValueError: {str(e).splitlines()[0][:200]}')
    return row
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  variables = jax.tree.unflatten(
    tree,
    [a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys, strict=True)],
  )
  path = os.path.join(root, f'{name}.jaxexport')
  t0 = time.perf_counter()
  try:
    stablehlo.export(model, variables, path, input_size=(h, w))
  except Exception as e:  # noqa: BLE001 - the table reports why a model does not export
    row.update(stablehlo=False, error=f'{type(e).__name__}: {str(e).splitlines()[0][:200]}')
    return row
  row.update(stablehlo=True, export_s=time.perf_counter() - t0, bytes=os.path.getsize(path))
  x = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
  np.save(path + '.input.npy', x)
  out = os.path.join(root, f'{name}.out.npz')
  loader_dir = os.path.join(os.path.dirname(stablehlo.__file__))
  proc = subprocess.run(
    [sys.executable, '-I', '-c', _RUNNER, loader_dir, path, out],
    capture_output=True,
    text=True,
    timeout=900,
  )
  if proc.returncode:
    row.update(runs=False, error=proc.stderr.strip().splitlines()[-1][:200])
    return row
  ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, normalize(x))
  ref = np.asarray(ref['out'] if isinstance(ref, dict) else ref, np.float64)
  got = np.load(out)
  diffs = [np.abs(got['one'] - ref[:1]).max(), np.abs(got['two'] - ref).max()]
  scale = float(np.abs(ref).max())
  row.update(runs=True, output_abs_max=scale, max_rel_diff=float(max(diffs) / max(scale, 1e-12)))
  for f in (path, path + '.json', path + '.input.npy', out):
    os.remove(f)
  return row


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--models', default='', help='comma-separated names (default: all registered)')
  p.add_argument('--json', default='', help='write the rows here')
  args = p.parse_args(argv)
  names = [n for n in args.models.split(',') if n] or jaxseg.list_models()
  rows = []
  with tempfile.TemporaryDirectory(prefix='jaxseg_export_') as root:
    for name in names:
      row = check_model(name, root)
      rows.append(row)
      if row.get('runs'):
        print(
          f'| {name} | yes | batch: any; size: fixed {row["size"][0]}x{row["size"][1]} | '
          f'{row["max_rel_diff"]:.1e} (of max |logit| {row["output_abs_max"]:.3g}) | '
          f'{row["bytes"] / 2**20:.1f} MiB, {row["export_s"]:.1f} s |',
          flush=True,
        )
      else:
        print(f'| {name} | no | | | {row.get("error", "")} |', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == '__main__':
  main()
