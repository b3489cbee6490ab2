"""FCN-8s on PASCAL VOC 2012 (Long, Shelhamer & Darrell, CVPR 2015).

Run:    jaxseg train --config fcn8s --workdir runs/fcn8s
Smoke:  jaxseg train --config fcn8s:smoke --workdir /tmp/fcn8s_smoke

Paper recipe: VGG-16 initialised from ImageNet, SGD momentum 0.99, lr 1e-4 (the
"heavy learning" fixed-lr recipe with unnormalised loss, batch 1 in Caffe;
here the loss is a per-pixel mean, so the lr is scaled up), weight decay 5e-4,
Caffe BGR mean subtraction, trained on SBD train (8,498 images).
Paper result: 62.2 mIoU on VOC 2012 test; reference model 65.5 on seg11valid.

Needs the prepared VOC dataset (see README, "Datasets"); pretrained VGG-16
weights via `--config.model.backbone_weights=/path/vgg16-397923af.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (320, 320), normalize='caffe')
  c.model.name = 'fcn8s'
  # lr 1e-4 x 100: per-pixel mean loss instead of Caffe's summed loss.
  common.sgd(c, 1e-4 * 100, momentum=0.99)
  common.steps(c, batch_size=20, num_steps=30_000, eval_every=2_000, checkpoint_every=1_000)
  return common.select(c, variant, 'fcn8s')
