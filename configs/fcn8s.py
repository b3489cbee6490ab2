"""FCN-8s on PASCAL VOC 2012 (Long, Shelhamer & Darrell, CVPR 2015).

Run:    python -m train.main --config configs/fcn8s.py --workdir runs/fcn8s
Smoke:  python -m train.main --config configs/fcn8s.py:smoke --workdir /tmp/fcn8s_smoke

Paper recipe: VGG-16 initialised from ImageNet, SGD momentum 0.99, lr 1e-4 (the
"heavy learning" fixed-lr recipe with unnormalised loss, batch 1 in Caffe;
here the loss is a per-pixel mean, so the lr is scaled up), weight decay 5e-4,
Caffe BGR mean subtraction, trained on SBD train (8,498 images).
Paper result: 62.2 mIoU on VOC 2012 test; reference model 65.5 on seg11valid.

Needs the prepared VOC dataset (see README, "Datasets"); pretrained VGG-16
weights via `--config.model.backbone_weights=/path/vgg16-397923af.pth`.
"""

from configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  c.dataset.name = 'voc'
  c.dataset.config = '2012_aug'
  c.dataset.num_classes = 21
  c.dataset.train_split = 'train_aug'
  c.dataset.eval_split = 'val'
  c.dataset.crop_size = (320, 320)
  c.dataset.normalize = 'caffe'
  c.model.name = 'fcn8s'
  c.optim.name = 'sgd'
  c.optim.lr = 1e-4 * 100  # per-pixel mean loss instead of Caffe's summed loss
  c.optim.momentum = 0.99
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'poly'
  c.train.batch_size = 20
  c.train.num_steps = 30_000
  c.train.eval_every = 2_000
  c.train.checkpoint_every = 1_000
  if variant == 'smoke':
    return common.smoke(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/fcn8s.py (known: 'smoke')")
  return c
