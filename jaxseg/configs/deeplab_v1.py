"""DeepLab-LargeFOV (DeepLab v1) on PASCAL VOC 2012 (Chen et al., ICLR 2015).

Run:    jaxseg train --config deeplab_v1 --workdir runs/deeplab_v1
Smoke:  jaxseg train --config deeplab_v1:smoke --workdir /tmp/deeplab_v1_smoke
CRF:    `:crf` evaluates with the dense CRF (jaxseg.crf; DeepLab v1's LargeFOV
        parameters are `jaxseg.crf.DEEPLAB_V1`).

Paper recipe (DeepLab-LargeFOV solver.prototxt): VGG-16 from ImageNet, SGD
momentum 0.9, weight decay 5e-4, lr 1e-3 (10x on the classifier fc8), batch
20 of 321x321 crops, 6,000 iterations with the lr divided by 10 every 2,000,
Caffe BGR mean subtraction, trained on the augmented VOC 2012 train set
(10,582 images, SBD annotations).
Paper result: 62.25 mIoU on VOC 2012 val, 67.64 with the fully connected CRF.

Pretrained VGG-16 via `--config.model.backbone_weights=/path/vgg16-397923af.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  # DeepLab v1 trains on random crops and flips only.
  common.voc_aug(c, (321, 321), scale_range=(1.0, 1.0), normalize='caffe')
  c.model.name = 'deeplab_v1'
  # x0.1 at 2K and 4K of 6K iterations.
  common.sgd(c, 1e-3, schedule='step', step_boundaries=(1 / 3, 2 / 3), step_factor=0.1)
  c.optim.head_lr_mult = 10.0
  common.steps(c, batch_size=20, num_steps=6_000, eval_every=2_000, checkpoint_every=1_000)
  c.eval.crf_params = 'deeplab_v1'
  return common.select(c, variant, 'deeplab_v1', crf=common.with_crf)
