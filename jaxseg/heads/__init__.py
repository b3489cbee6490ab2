"""Segmentation heads and decoders that models put on a backbone's feature maps.

Each head names the feature keys it reads. Heads written as functions build
their layers in the calling model's scope, so their variables keep the flat
names of the reference layouts (`aspp_c0`, `ppm_0_conv`, `score_fr`, ...);
heads that are their own submodule in the reference layout are Modules (`ASPP`,
`FCNHead`, `DeepLabHead`).
"""

from jaxseg.heads.aspp import ASPP, aspp_sum, default_rates
from jaxseg.heads.decoders import unpool_decoder
from jaxseg.heads.fcn_head import (
  DeepLabHead,
  FCNHead,
  conv_bn_relu_classifier,
  fc_classifier,
  fcn_skip_head,
)
from jaxseg.heads.pyramid_pooling import pyramid_pooling

__all__ = [
  'ASPP',
  'DeepLabHead',
  'FCNHead',
  'aspp_sum',
  'conv_bn_relu_classifier',
  'default_rates',
  'fc_classifier',
  'fcn_skip_head',
  'pyramid_pooling',
  'unpool_decoder',
]
