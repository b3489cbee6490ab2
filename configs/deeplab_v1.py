"""DeepLab-LargeFOV (DeepLab v1) on PASCAL VOC 2012 (Chen et al., ICLR 2015).

Run:    python -m train.main --config configs/deeplab_v1.py --workdir runs/deeplab_v1
Smoke:  python -m train.main --config configs/deeplab_v1.py:smoke --workdir /tmp/deeplab_v1_smoke
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

from configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  c.dataset.name = 'voc'
  c.dataset.config = '2012_aug'
  c.dataset.num_classes = 21
  c.dataset.train_split = 'train_aug'
  c.dataset.eval_split = 'val'
  c.dataset.crop_size = (321, 321)
  c.dataset.scale_range = (1.0, 1.0)  # DeepLab v1 trains on random crops and flips only
  c.dataset.normalize = 'caffe'
  c.model.name = 'deeplab_v1'
  c.optim.name = 'sgd'
  c.optim.lr = 1e-3
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'step'
  c.optim.step_boundaries = (1 / 3, 2 / 3)  # x0.1 at 2K and 4K of 6K iterations
  c.optim.step_factor = 0.1
  c.optim.head_lr_mult = 10.0
  c.train.batch_size = 20
  c.train.num_steps = 6_000
  c.train.eval_every = 2_000
  c.train.checkpoint_every = 1_000
  c.eval.crf_params = 'deeplab_v1'
  if variant == 'smoke':
    return common.smoke(c)
  if variant == 'crf':
    c.eval.crf = True
    return c
  if variant:
    raise ValueError(
      f"unknown variant {variant!r} of configs/deeplab_v1.py (known: 'smoke', 'crf')"
    )
  return c
