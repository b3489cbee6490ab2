"""DeepLab v2, ResNet-101 + ASPP-L, on PASCAL VOC 2012 (Chen et al., TPAMI 2017).

Run:    jaxseg train --config deeplab_v2 --workdir runs/deeplab_v2
Smoke:  jaxseg train --config deeplab_v2:smoke --workdir /tmp/deeplab_v2_smoke
CRF:    `:crf` evaluates with the dense CRF (`jaxseg.crf.DEEPLAB_V2` parameters).

Paper recipe: ImageNet ResNet-101, SGD momentum 0.9, weight decay 5e-4, base lr
2.5e-4 (10x on the ASPP classifier) with the "poly" policy (power 0.9), batch
10 of 321x321 crops, 20K iterations, random scaling 0.5-1.5 and flips, on the
augmented VOC 2012 train set (10,582 images).
Paper result: 76.35 mIoU on VOC 2012 val, 77.69 with the CRF (the paper's
model also uses multi-scale inputs and MS-COCO pretraining).

Pretrained ResNet-101 via `--config.model.backbone_weights=/path/resnet101-63fe2227.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  # torchvision ImageNet weights (imagenet normalisation).
  common.voc_aug(c, (321, 321), scale_range=(0.5, 1.5), normalize='imagenet')
  c.model.name = 'deeplab_v2'
  common.sgd(c, 2.5e-4, power=0.9, head_lr_mult=10.0)
  common.steps(c, batch_size=10, num_steps=20_000, eval_every=2_000, checkpoint_every=1_000)
  return common.select(c, variant, 'deeplab_v2', crf=common.with_crf)
