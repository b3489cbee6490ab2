"""DeepLab v2, ResNet-101 + ASPP-L, on PASCAL VOC 2012 (Chen et al., TPAMI 2017).

Run:    python -m train.main --config configs/deeplab_v2.py --workdir runs/deeplab_v2
Smoke:  python -m train.main --config configs/deeplab_v2.py:smoke --workdir /tmp/deeplab_v2_smoke
CRF:    `:crf` evaluates with the dense CRF (`jaxseg.crf.DEEPLAB_V2` parameters).

Paper recipe: ImageNet ResNet-101, SGD momentum 0.9, weight decay 5e-4, base lr
2.5e-4 (10x on the ASPP classifier) with the "poly" policy (power 0.9), batch
10 of 321x321 crops, 20K iterations, random scaling 0.5-1.5 and flips, on the
augmented VOC 2012 train set (10,582 images).
Paper result: 76.35 mIoU on VOC 2012 val, 77.69 with the CRF (the paper's
model also uses multi-scale inputs and MS-COCO pretraining).

Pretrained ResNet-101 via `--config.model.backbone_weights=/path/resnet101-63fe2227.pth`.
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
  c.dataset.scale_range = (0.5, 1.5)
  c.dataset.normalize = 'imagenet'  # torchvision ImageNet weights
  c.model.name = 'deeplab_v2'
  c.optim.name = 'sgd'
  c.optim.lr = 2.5e-4
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'poly'
  c.optim.power = 0.9
  c.optim.head_lr_mult = 10.0
  c.train.batch_size = 10
  c.train.num_steps = 20_000
  c.train.eval_every = 2_000
  c.train.checkpoint_every = 1_000
  if variant == 'smoke':
    return common.smoke(c)
  if variant == 'crf':
    c.eval.crf = True
    return c
  if variant:
    raise ValueError(
      f"unknown variant {variant!r} of configs/deeplab_v2.py (known: 'smoke', 'crf')"
    )
  return c
