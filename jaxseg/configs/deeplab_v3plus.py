"""DeepLabv3+ on PASCAL VOC 2012 (Chen et al., "Encoder-Decoder with Atrous Separable Convolution", ECCV 2018).

Run:    jaxseg train --config deeplab_v3plus --workdir runs/deeplab_v3plus
Smoke:  jaxseg train --config deeplab_v3plus:smoke --workdir /tmp/deeplab_v3plus_smoke

Recipe: modified aligned Xception-65 encoder at output stride 16, separable
ASPP (rates 6/12/18 + image pooling) and decoder, "poly" learning rate 0.007
(power 0.9), batch 16, crop 513x513, 30K iterations on the augmented train
set, BN fine-tuned, random scale 0.5-2.0 and flips (the DeepLabv3 schedule the
paper reuses); weight decay 4e-5 as the TF reference for Xception.
Paper result: 82.20 mIoU on VOC 2012 val (OS 16, single scale) -- with the
encoder pretrained on ImageNet AND COCO; starting from ImageNet alone
expect a few points less.

Needs the prepared VOC dataset (see README, "Datasets"); encoder weights via
`--config.model.backbone_weights=...` in the 'xception65' layout
(jfzhang95/pytorch-deeplab-xception's `AlignedXception` keys; there is no
torchvision Xception). Weights trained with that implementation compute as
there only with `c.model.kwargs.backbone_kwargs = {'variant': 'jfzhang95'}`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (513, 513), scale_range=(0.5, 2.0), normalize='imagenet')
  c.model.name = 'deeplab_v3plus'
  c.model.kwargs.backbone = 'xception65'
  c.model.kwargs.output_stride = 16
  common.sgd(c, 0.007, weight_decay=4e-5, power=0.9)
  common.steps(c, batch_size=16, num_steps=30_000, eval_every=2_000, checkpoint_every=1_000)
  return common.select(c, variant, 'deeplab_v3plus')
