"""Pure functions shared by the models: pooling with argmax, unpooling, resize, crop."""

from jaxseg.ops.pooling import max_pool2d, max_pool_with_argmax, max_unpool, pooled_size
from jaxseg.ops.resize import center_crop, crop, resize_bilinear

__all__ = [
  'center_crop',
  'crop',
  'max_pool2d',
  'max_pool_with_argmax',
  'max_unpool',
  'pooled_size',
  'resize_bilinear',
]
