"""`python -m train.main` in a checkout: the same program as `jaxseg train` (see jaxseg/train/main.py)."""

import sys

from jaxseg.train.main import run

if __name__ == '__main__':
  sys.exit(run(prog='python -m train.main'))
