"""Trains a jaxseg model: `jaxseg train --config fcn8s --workdir runs/fcn8s`.

--config takes a packaged recipe's name (`fcn8s`, `quickstart:smoke`: a
variant after the colon) or the path of a config file (`configs/fcn8s.py` in a
checkout, or your own). Config fields can be overridden on the command line
(`--config.train.num_steps=100`). Re-running the same command with the same
--workdir resumes from the last complete checkpoint. Configs are Python code:
only run config files you trust.
"""

from __future__ import annotations

import sys

from absl import flags

_CONFIG = None
_WORKDIR = None


def define_flags() -> None:
  """CLI flags, defined only when run as a program."""
  global _CONFIG, _WORKDIR
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe name (fcn8s, quickstart:smoke, ...) or config file path[:variant].'
  )
  _WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, logs and predictions.'
  )
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import jax

  from jaxseg.train import train_lib

  summary = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if summary.get('eval') is not None:
    print(f'final mIoU: {100 * summary["eval"]["miou"]:.2f}  (step {summary["step"]})')
  print(f'params checksum: {train_lib.params_checksum(summary["state"].params):.8e}')
  is_main = jax.process_index() == 0
  if (
    is_main
    and _CONFIG.value.get('predict', {}).get('num_images', 0)
    and not summary.get('interrupted')
  ):
    from jaxseg.train import predict

    paths = predict.predict_from_config(
      _CONFIG.value, _WORKDIR.value, summary['state'], summary['model']
    )
    for p in paths:
      print(f'wrote {p}')


def run(argv: list[str] | None = None, prog: str = 'jaxseg train') -> int:
  from jaxseg import cli, configs

  return cli.run_absl(__name__, define_flags, main, argv, prog, parse_hook=configs.resolve_argv)


if __name__ == '__main__':
  sys.exit(run(prog='python -m jaxseg.train.main'))
