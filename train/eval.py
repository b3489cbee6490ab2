"""`python -m train.eval` in a checkout: the same program as `jaxseg eval` (see jaxseg/train/eval.py)."""

import sys

from jaxseg.train.eval import run

if __name__ == '__main__':
  sys.exit(run(prog='python -m train.eval'))
