"""PSPNet on PASCAL VOC 2012 (Zhao et al., CVPR 2017), recipe of the hszhao/semseg re-implementation.

Run:    jaxseg train --config pspnet --workdir runs/pspnet50
        jaxseg train --config pspnet:r101 --workdir runs/pspnet101
Smoke:  jaxseg train --config pspnet:smoke --workdir /tmp/pspnet_smoke

Recipe (semseg config/voc2012/voc2012_pspnet50.yaml): dilated ResNet-50/101 at
output stride 8, SGD momentum 0.9, weight decay 1e-4, base lr 0.01 (10x on the
PPM and heads) with the poly policy (power 0.9), batch 16 of 473x473 crops,
random scale 0.5-2.0, flips, 50 epochs of the 10,582 augmented training images
(about 33K iterations), auxiliary loss weight 0.4.
Reported (VOC 2012 val, single scale): ResNet-50 77.05, ResNet-101 79.07 mIoU.
Those models use semseg's deep-stem ImageNet weights (`deep_stem=True`); with
torchvision ImageNet weights keep `deep_stem=False` (the default here).

Pretrained ResNet via `--config.model.backbone_weights=/path/resnet50-0676ba61.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (473, 473), scale_range=(0.5, 2.0), normalize='imagenet')
  c.model.name = 'pspnet'
  c.model.kwargs.backbone = 'resnet50'
  c.model.kwargs.deep_stem = False
  common.sgd(c, 0.01, weight_decay=1e-4, power=0.9, head_lr_mult=10.0)
  common.steps(c, batch_size=16, num_steps=33_000, eval_every=3_000, checkpoint_every=1_000)
  c.train.aux_loss_weight = 0.4
  # PSPNet needs H, W >= 41 (the stride-8 map must hold the 6x6 pyramid bins): 64 is safe.
  return common.select(
    c, variant, 'pspnet', smoke=lambda c: common.smoke(c, size=64), r101=resnet101
  )


def resnet101(c):
  c.model.kwargs.backbone = 'resnet101'
  return c
