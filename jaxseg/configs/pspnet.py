"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017) on VOC 2012, Cityscapes, ADE20K.

Run:    jaxseg train --config pspnet --workdir runs/pspnet50
        jaxseg train --config pspnet:r101 --workdir runs/pspnet101
        jaxseg train --config pspnet:cityscapes --workdir runs/pspnet50_cityscapes
        jaxseg train --config pspnet:ade20k --workdir runs/pspnet50_ade20k
Smoke:  jaxseg train --config pspnet:smoke --workdir /tmp/pspnet_smoke

Common recipe (paper, Sec. 5.1): dilated ResNet at output stride 8, SGD
momentum 0.9, weight decay 1e-4, base lr 0.01 (10x on the PPM and heads) with
the poly policy (power 0.9), batch 16, random scale 0.5-2.0 and flips,
auxiliary loss weight 0.4. The paper trains 30K iterations on VOC, 90K on
Cityscapes and 150K on ADE20K; crops of 473x473 (VOC, ADE20K) and 713x713
(Cityscapes), as in the authors' hszhao/semseg configs.

VOC 2012 (default; semseg config/voc2012/voc2012_pspnet50.yaml, 50 epochs of
the 10,582 augmented images, about 33K iterations): reported VOC 2012 val,
single scale, ResNet-50 77.05 and ResNet-101 79.07 mIoU with semseg's
deep-stem ImageNet weights (`deep_stem=True`); with torchvision ImageNet
weights keep `deep_stem=False` (the default here).

`:cityscapes` (2,975 fine training images, crop 713; ResNet-50 unless
`--config.model.kwargs.backbone=resnet101`): paper result 78.4 mIoU on the
Cityscapes test set with ResNet-101 trained on the fine annotations only
(80.2 with the coarse ones too). Evaluate the full 1024x2048 images as the
paper does, in 713x713 windows: `jaxseg eval --checkpoint W --sliding_window 713`.

`:ade20k` (SceneParse150, 20,210 training images, 150 classes, crop 473):
paper result on the validation set with multi-scale testing, ResNet-50 41.68
mIoU and 80.04% pixel accuracy (ResNet-269: 44.94 / 81.69); evaluate the same
way with `jaxseg eval --checkpoint W --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip`.

Data: `jaxseg prepare --dataset cityscapes|ade20k|voc ...` (README, "Datasets").
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
    c,
    variant,
    'pspnet',
    smoke=lambda c: common.smoke(c, size=64),
    r101=resnet101,
    cityscapes=cityscapes,
    ade20k=ade20k,
  )


def resnet101(c):
  c.model.kwargs.backbone = 'resnet101'
  return c


def cityscapes(c):
  common.dataset(c, 'cityscapes', (713, 713), scale_range=(0.5, 2.0))
  common.steps(c, batch_size=16, num_steps=90_000, eval_every=10_000, checkpoint_every=2_000)
  c.eval.batch_size = 1  # full 1024x2048 images
  return c


def ade20k(c):
  common.dataset(c, 'ade20k', (473, 473), scale_range=(0.5, 2.0))
  common.steps(c, batch_size=16, num_steps=150_000, eval_every=10_000, checkpoint_every=2_000)
  c.eval.batch_size = 1  # images of different sizes, padded to the largest
  return c
