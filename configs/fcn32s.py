"""FCN-32s on PASCAL VOC 2012: the FCN-8s recipe (configs/fcn8s.py) with the 32x head.

Run:    python -m train.main --config configs/fcn32s.py --workdir runs/fcn32s
Smoke:  python -m train.main --config configs/fcn32s.py:smoke --workdir /tmp/fcn32s_smoke

Paper result: reference FCN-32s 63.6 mIoU on seg11valid (Long et al. 2015, Table 2 / reference models).
"""

from configs import fcn8s


def get_config(variant: str = ''):
  c = fcn8s.get_config(variant)
  c.model.name = 'fcn32s'
  return c
