"""FCN-16s on PASCAL VOC 2012: the FCN-8s recipe (configs/fcn8s.py) with the 16x head.

Run:    jaxseg train --config fcn16s --workdir runs/fcn16s
Smoke:  jaxseg train --config fcn16s:smoke --workdir /tmp/fcn16s_smoke

Paper result: reference FCN-16s 65.0 mIoU on seg11valid (Long et al. 2015, Table 2 / reference models).
"""

from jaxseg.configs import fcn8s


def get_config(variant: str = ''):
  c = fcn8s.get_config(variant)
  c.model.name = 'fcn16s'
  return c
