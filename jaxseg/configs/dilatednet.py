"""DilatedNet (front-end + large context module) on PASCAL VOC 2012 (Yu & Koltun, ICLR 2016).

Run:    jaxseg train --config dilatednet --workdir runs/dilatednet
Smoke:  jaxseg train --config dilatednet:smoke --workdir /tmp/dilatednet_smoke
Variants: `:front` (front-end only), `:basic` (basic context module).

Geometry (`model.kwargs.padding`): 'reflect_valid' (default) is the reference
code's: each image is reflection-padded by 186 pixels, the front-end runs
unpadded convolutions down to a ceil(H/8) x ceil(W/8) score map, the large
context module zero-pads its input once by 33, and the scores are zoomed x8
as fyu/dilation's `interp_map` does; with the same weights it matches the
PyTorch transcription in tests/torch_ref/dilatednet.py within 1e-4. 'same'
(`--config.model.kwargs.padding=same`) zero-pads every convolution instead:
same parameters, strides and receptive fields, different values near the
border, and cheaper (no 2 x 186-pixel margin).

Paper recipe (front-end): VGG-16 from ImageNet, SGD momentum 0.9, lr 1e-3,
mini-batch 14, 60K iterations (the paper then trains the context module on
the front-end's outputs and finally jointly; here the whole network is
trained end-to-end with the identity-initialised context module).
Caffe BGR mean subtraction. The reference trains on 500 x 500 windows of the
reflection-padded image, so only their central 128 x 128 pixels carry labels
(sampled at stride 8); here a 500 x 500 crop is labelled everywhere and the
model adds the 186-pixel margin itself (an 872 x 872 network input).
Paper result (VOC 2012 test): front-end 67.6 mIoU; front-end + large context
+ CRF-RNN with MS-COCO training 75.3.

No Cityscapes recipe: the paper's Cityscapes network (Dilation10 in the
authors' fyu/dilation release) extends the context module with further layers
at larger dilations, which `model.kwargs.context` ('basic', 'large') does not
build; training this model on `--config.dataset.name=cityscapes` would not be
the paper's model, so no paper number could be quoted for it.

Pretrained VGG-16 via `--config.model.backbone_weights=/path/vgg16-397923af.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (500, 500), normalize='caffe')
  c.model.name = 'dilatednet'
  c.model.kwargs.context = 'large'
  c.model.kwargs.padding = 'reflect_valid'
  common.sgd(c, 1e-3, schedule='constant')
  common.steps(c, batch_size=14, num_steps=60_000, eval_every=5_000, checkpoint_every=2_000)
  return common.select(c, variant, 'dilatednet', front=front_end, basic=basic_context)


def front_end(c):
  c.model.kwargs.context = None
  return c


def basic_context(c):
  c.model.kwargs.context = 'basic'
  return c
