"""Trains a jaxseg model: `python -m train.main --config configs/fcn8s.py --workdir runs/fcn8s`.

Config fields can be overridden on the command line (`--config.train.num_steps=100`);
`--config configs/X.py:smoke` selects a config variant. Re-running the same
command with the same --workdir resumes from the last complete checkpoint.
Configs are Python code: only run config files you trust.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/*.py[:variant]).'
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and predictions.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from absl import logging

  from jaxseg import cpu_conv

  cpu_conv.configure_xla_flags()  # before JAX starts its backend, which reads XLA_FLAGS once
  if not flags.FLAGS['verbosity'].present:
    # orbax logs every save at INFO; progress goes to stderr anyway.
    logging.set_verbosity(logging.WARNING)
  import jax

  from train import train_lib

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
    from train import predict

    paths = predict.predict_from_config(
      _CONFIG.value, _WORKDIR.value, summary['state'], summary['model']
    )
    for p in paths:
      print(f'wrote {p}')


if __name__ == '__main__':
  app.run(main)
