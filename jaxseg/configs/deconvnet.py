"""DeconvNet (Noh, Hong & Han, ICCV 2015) on PASCAL VOC 2012.

Run:    jaxseg train --config deconvnet --workdir runs/deconvnet
Smoke:  jaxseg train --config deconvnet:smoke --workdir /tmp/deconvnet_smoke

Paper recipe: VGG16 convolution layers initialised from ImageNet, the rest
from zero-mean Gaussians; BatchNorm after every convolution and deconvolution;
SGD with lr 0.01, momentum 0.9, weight decay 5e-4, mini-batches of 64 object
instances (two stages: ground-truth-centred crops, then object proposals),
inputs 250x250 randomly cropped to 224x224 with flips. Inference segments about
2,000 object proposals per image warped to 224x224 and aggregates them; the
proposal pipeline is not part of jaxseg, so this recipe trains on whole-image
224x224 crops and evaluates on images resized to 224x224.
Paper result (VOC 2012 test): DeconvNet 69.6; EDeconvNet (ensemble with FCN-8s)
71.7; EDeconvNet + CRF 72.5 mIoU.

Pretrained VGG16-BN weights: `--config.model.backbone_weights=/path/vgg16_bn.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  # fc6 is a 7x7 VALID conv: the network takes 224x224.
  common.voc_aug(c, (224, 224), eval_size=(224, 224))
  c.model.name = 'deconvnet'
  common.sgd(c, 0.01, schedule='step', step_boundaries=(0.5,))
  common.steps(c, batch_size=64, num_steps=40_000, eval_every=2_000, checkpoint_every=2_000)
  return common.select(c, variant, 'deconvnet', smoke=smoke)


def smoke(c):
  # Same network; smoke() keeps the size given here (224, as the model needs).
  c = common.smoke(c, size=224)
  c.dataset.eval_size = (224, 224)
  return c
