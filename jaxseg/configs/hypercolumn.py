"""Hypercolumns (Hariharan et al., CVPR 2015) as a semantic segmentation network on PASCAL VOC 2012.

Run:    jaxseg train --config hypercolumn --workdir runs/hypercolumn
Smoke:  jaxseg train --config hypercolumn:smoke --workdir /tmp/hypercolumn_smoke

Paper recipe: R-CNN's VGG16 (ImageNet, fine-tuned for detection), hypercolumns
from pool2, conv4_3 and fc7 of detection boxes warped to 224x224, per-pixel
classifiers fine-tuned with SGD (Caffe: momentum 0.9, weight decay 5e-4,
lr 1e-3 class of settings). Paper result (SDS, VOC 2012 val): APr 60.0 at 0.5
overlap (SDS baseline 49.7). Object detection boxes are not part of jaxseg:
this recipe classifies every pixel of whole 320x320 crops.

Pretrained VGG16 weights: `--config.model.backbone_weights=/path/vgg16-397923af.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (320, 320))  # fc6/fc7 in the hypercolumn need >= 193x193
  c.model.name = 'hypercolumn'
  c.model.kwargs.layers = ('pool2', 'conv4_3', 'fc7')
  common.sgd(c, 1e-3)
  common.steps(c, batch_size=8, num_steps=30_000, eval_every=2_000, checkpoint_every=2_000)
  # The smoke size is the smallest fc6 (7x7 VALID on pool5) takes.
  return common.select(c, variant, 'hypercolumn', smoke=lambda c: common.smoke(c, size=193))
