"""`python -m train.predict` in a checkout: the same program as `jaxseg predict` (see jaxseg/train/predict.py)."""

import sys

from jaxseg.train.predict import run

if __name__ == '__main__':
  sys.exit(run(prog='python -m train.predict'))
