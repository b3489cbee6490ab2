"""The `jaxseg` command: one program, a subcommand per task.

  jaxseg train --config quickstart --workdir runs/quickstart
  jaxseg eval --checkpoint runs/quickstart
  jaxseg predict --checkpoint runs/quickstart --input photo.jpg --output preds/

`jaxseg SUBCOMMAND --help` lists the flags of a subcommand. From a checkout,
`python -m train.main`, `python -m train.eval` and `python -m train.predict`
run the same programs.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# name -> (module with run(argv, prog), one-line description)
COMMANDS = {
  'train': ('jaxseg.train.main', 'train a model from a packaged recipe or a config file; resumes'),
  'eval': ('jaxseg.train.eval', 'score a checkpoint on a whole split (per-class IoU, mIoU)'),
  'predict': (
    'jaxseg.train.predict',
    'write colour-palette masks for an image, a folder or a split',
  ),
  'prepare': (
    'jaxseg.data.prepare',
    'prepare a dataset from files on disk (nothing is downloaded)',
  ),
  'convert': ('jaxseg.weights.convert', 'convert PyTorch weights into a jaxseg checkpoint'),
  'export': (
    'jaxseg.weights.export',
    'export a model: PyTorch-layout weights or StableHLO (runs without jaxseg)',
  ),
  'benchmark': ('jaxseg.benchmarks.run', 'time the models against their PyTorch counterparts'),
}

_HELP = ('-h', '--help', '-?', '--helpshort', '--helpfull')
# Errors of the user's input (config, files, data, checkpoints, a missing optional package):
# one line, no traceback, unless --traceback is given. Anything else keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError)
_TRACEBACK = False


def report_errors(prog: str, fn, argv: list[str]) -> int:
  """fn(argv) without `--traceback`; a USER_ERRORS exception becomes one line on stderr and exit 1."""
  global _TRACEBACK
  _TRACEBACK = show = _TRACEBACK or '--traceback' in argv  # also seen by a nested call
  argv = [a for a in argv if a != '--traceback']
  try:
    return fn(argv)
  except USER_ERRORS as e:
    if show:
      raise
    print(f'{prog}: {type(e).__name__}: {e}', file=sys.stderr)
    print(f'(`{prog} ... --traceback` shows where it was raised)', file=sys.stderr)
    return 1


def usage() -> str:
  lines = ['usage: jaxseg SUBCOMMAND [flags]', '', 'subcommands:']
  lines += [f'  {name:<10} {desc}' for name, (_, desc) in COMMANDS.items()]
  lines += ['', 'Run `jaxseg SUBCOMMAND --help` for the flags of one; add --traceback to any']
  lines += ['subcommand to see the Python traceback of an error instead of its one-line message.']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in _HELP or argv[0] == 'help':
    print(usage(), file=sys.stdout if argv else sys.stderr)
    return 0 if argv else 2
  if argv[0] == '--version':
    from jaxseg import __version__

    print(f'jaxseg {__version__}')
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    print(f'jaxseg: unknown subcommand {name!r}.{hint}\n\n{usage()}', file=sys.stderr)
    return 2
  module = importlib.import_module(COMMANDS[name][0])
  prog = f'jaxseg {name}'
  return int(report_errors(prog, lambda args: module.run(args, prog=prog), rest) or 0)


def _unquote(text: str) -> str:
  """`'\\'num_step\\'\\nDid you mean ...'` (a repr inside a repr) -> its text on one line."""
  import ast

  while len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
  return '. '.join(' '.join(line.split()) for line in str(text).splitlines() if line.strip())


def run_absl(module_name: str, define_flags, main, argv, prog: str, parse_hook=None) -> int:
  """Runs an absl program `main` with the flags `define_flags()` defines, as `prog`.

  `--help` prints the module's docstring and its own flags only (not absl's).
  A flag error is one line naming the flag, not a traceback. `parse_hook(argv)`
  may rewrite the arguments first (e.g. resolve a recipe name). Before `main`
  it sets jaxseg's XLA:CPU flag (`cpu_conv.configure_xla_flags`); absl's INFO
  logging is off unless --verbosity is given.
  """
  from absl import app, flags

  argv = list(sys.argv[1:] if argv is None else argv)
  define_flags()
  if any(a in _HELP for a in argv):
    doc = sys.modules[module_name].__doc__ or ''
    print(f'usage: {prog} [flags]\n\n{doc.strip()}\n\nflags:')
    print(flags.FLAGS.module_help(module_name))
    return 0
  try:
    argv = parse_hook(argv) if parse_hook else argv
  except ValueError as e:
    print(f'{prog}: {e}', file=sys.stderr)
    return 2

  def parse(args):
    try:
      return flags.FLAGS(args)
    except flags.Error as e:
      message = str(e)
    except (
      KeyError,
      AttributeError,
    ) as e:  # ml_collections: an override of a field that does not exist
      message = f'unknown config field {_unquote(str(e))}'
    message = ' '.join(message.split())
    print(f'{prog}: {message}\nRun `{prog} --help` for the flags.', file=sys.stderr)
    sys.exit(2)

  def quiet_main(args):
    from jaxseg import cpu_conv

    cpu_conv.configure_xla_flags()  # before JAX starts its backend, which reads XLA_FLAGS once
    if not flags.FLAGS['verbosity'].present:
      from absl import logging

      logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint read and write at INFO
    return main(args)

  # app.run exits with main's return value; exceptions propagate to report_errors.
  return report_errors(
    prog, lambda args: app.run(quiet_main, argv=[prog, *args], flags_parser=parse), argv
  )


if __name__ == '__main__':
  sys.exit(main())
