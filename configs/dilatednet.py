"""DilatedNet (front-end + large context module) on PASCAL VOC 2012 (Yu & Koltun, ICLR 2016).

Run:    python -m train.main --config configs/dilatednet.py --workdir runs/dilatednet
Smoke:  python -m train.main --config configs/dilatednet.py:smoke --workdir /tmp/dilatednet_smoke
Variants: `:front` (front-end only), `:basic` (basic context module).

Paper recipe (front-end): VGG-16 from ImageNet, SGD momentum 0.9, lr 1e-3,
mini-batch 14, 60K iterations (the paper then trains the context module on
the front-end's outputs and finally jointly; here the whole network is
trained end-to-end with the identity-initialised context module).
Caffe BGR mean subtraction.
Paper result (VOC 2012 test): front-end 67.6 mIoU; front-end + large context
+ CRF-RNN with MS-COCO training 75.3.

Pretrained VGG-16 via `--config.model.backbone_weights=/path/vgg16-397923af.pth`.
"""

from configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  c.dataset.name = 'voc'
  c.dataset.config = '2012_aug'
  c.dataset.num_classes = 21
  c.dataset.train_split = 'train_aug'
  c.dataset.eval_split = 'val'
  c.dataset.crop_size = (500, 500)
  c.dataset.normalize = 'caffe'
  c.model.name = 'dilatednet'
  c.model.kwargs.context = 'large'
  c.optim.name = 'sgd'
  c.optim.lr = 1e-3
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'constant'
  c.train.batch_size = 14
  c.train.num_steps = 60_000
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 2_000
  if variant == 'smoke':
    return common.smoke(c)
  if variant in ('front', 'basic'):
    c.model.kwargs.context = None if variant == 'front' else 'basic'
    return c
  if variant:
    raise ValueError(
      f"unknown variant {variant!r} of configs/dilatednet.py (known: 'smoke', 'front', 'basic')"
    )
  return c
