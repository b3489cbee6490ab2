"""DeepLabv3 on PASCAL VOC 2012 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017).

Run:    python -m train.main --config configs/deeplab_v3.py --workdir runs/deeplab_v3
Smoke:  python -m train.main --config configs/deeplab_v3.py:smoke --workdir /tmp/deeplab_v3_smoke

Paper recipe (Sec. 4): ResNet-101 pretrained on ImageNet, output stride 16 with
multi-grid (1, 2, 4) and ASPP rates 6/12/18 + image pooling, "poly" learning
rate 0.007 (power 0.9), batch 16, crop 513x513, 30K iterations on the
augmented train set (SBD), BN fine-tuned, random scale 0.5-2.0 and flips.
Paper result: 77.21 mIoU on VOC 2012 val (single scale, OS 16 at test time).

Needs the prepared VOC dataset (see README, "Datasets"); ImageNet ResNet-101
weights via `--config.model.backbone_weights=/path/resnet101-63fe2227.pth`
(torchvision's file; the layout is `jaxseg.weights` 'resnet101').
"""

from configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  c.dataset.name = 'voc'
  c.dataset.config = '2012_aug'
  c.dataset.num_classes = 21
  c.dataset.train_split = 'train_aug'
  c.dataset.eval_split = 'val'
  c.dataset.crop_size = (513, 513)
  c.dataset.scale_range = (0.5, 2.0)
  c.dataset.normalize = 'imagenet'
  c.model.name = 'deeplab_v3'
  c.model.kwargs.backbone = 'resnet101'
  c.model.kwargs.output_stride = 16
  c.model.kwargs.multi_grid = (1, 2, 4)
  c.optim.name = 'sgd'
  c.optim.lr = 0.007
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'poly'
  c.optim.power = 0.9
  c.train.batch_size = 16
  c.train.num_steps = 30_000
  c.train.eval_every = 2_000
  c.train.checkpoint_every = 1_000
  if variant == 'smoke':
    return common.smoke(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/deeplab_v3.py (known: 'smoke')")
  return c
