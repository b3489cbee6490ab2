"""DeepLabv3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017).

Run:    jaxseg train --config deeplab_v3 --workdir runs/deeplab_v3
        jaxseg train --config deeplab_v3:cityscapes --workdir runs/deeplab_v3_cityscapes
Smoke:  jaxseg train --config deeplab_v3:smoke --workdir /tmp/deeplab_v3_smoke

VOC 2012 (default; paper Sec. 4): ResNet-101 pretrained on ImageNet, output
stride 16 with multi-grid (1, 2, 4) and ASPP rates 6/12/18 + image pooling,
"poly" learning rate 0.007 (power 0.9), batch 16, crop 513x513, 30K
iterations on the augmented train set (SBD), BN fine-tuned, random scale
0.5-2.0 and flips. Paper result: 77.21 mIoU on VOC 2012 val (single scale,
OS 16 at test time).

`:cityscapes` (paper, appendix on Cityscapes): the same network trained on the
2,975 fine training images with 769x769 crops at output stride 16, evaluated
at output stride 8 (`config.eval.model_kwargs.output_stride = 8`: the same
parameters with denser atrous rates) on the full 1024x2048 val images. Paper
result: 77.82 mIoU on Cityscapes val at OS 8, single scale (77.23 at OS 16;
79.30 with multi-scale inputs and flips). The paper gives no iteration count
for Cityscapes; this recipe trains 90K iterations at batch 8.

Data: `jaxseg prepare --dataset voc|cityscapes ...` (README, "Datasets").
ImageNet ResNet-101 weights via
`--config.model.backbone_weights=/path/resnet101-63fe2227.pth` (torchvision's
file; the layout is `jaxseg.weights` 'resnet101').
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (513, 513), scale_range=(0.5, 2.0), normalize='imagenet')
  c.model.name = 'deeplab_v3'
  c.model.kwargs.backbone = 'resnet101'
  c.model.kwargs.output_stride = 16
  c.model.kwargs.multi_grid = (1, 2, 4)
  common.sgd(c, 0.007, weight_decay=1e-4, power=0.9)
  common.steps(c, batch_size=16, num_steps=30_000, eval_every=2_000, checkpoint_every=1_000)
  return common.select(c, variant, 'deeplab_v3', cityscapes=cityscapes)


def cityscapes(c):
  common.dataset(c, 'cityscapes', (769, 769), scale_range=(0.5, 2.0))
  common.steps(c, batch_size=8, num_steps=90_000, eval_every=10_000, checkpoint_every=2_000)
  c.eval.model_kwargs.output_stride = 8
  c.eval.batch_size = 1  # full 1024x2048 images at output stride 8
  return c
