"""FCN-32s on PASCAL VOC 2012: the FCN-8s recipe (configs/fcn8s.py) with the 32x head.

Run:    jaxseg train --config fcn32s --workdir runs/fcn32s
Smoke:  jaxseg train --config fcn32s:smoke --workdir /tmp/fcn32s_smoke

Paper result: reference FCN-32s 63.6 mIoU on seg11valid (Long et al. 2015, Table 2 / reference models).
"""

from jaxseg.configs import fcn8s


def get_config(variant: str = ''):
  c = fcn8s.get_config(variant)
  c.model.name = 'fcn32s'
  return c
