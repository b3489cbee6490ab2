"""DeconvNet (Noh, Hong & Han, ICCV 2015) on PASCAL VOC 2012.

Run:    python -m train.main --config configs/deconvnet.py --workdir runs/deconvnet
Smoke:  python -m train.main --config configs/deconvnet.py:smoke --workdir /tmp/deconvnet_smoke

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

from configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  c.dataset.name = 'voc'
  c.dataset.config = '2012_aug'
  c.dataset.num_classes = 21
  c.dataset.train_split = 'train_aug'
  c.dataset.eval_split = 'val'
  c.dataset.crop_size = (224, 224)  # fc6 is a 7x7 VALID conv: the network takes 224x224
  c.dataset.eval_size = (224, 224)
  c.model.name = 'deconvnet'
  c.optim.name = 'sgd'
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'step'
  c.optim.step_boundaries = (0.5,)
  c.train.batch_size = 64
  c.train.num_steps = 40_000
  c.train.eval_every = 2_000
  c.train.checkpoint_every = 2_000
  if variant == 'smoke':
    # Same network; smoke() keeps the size given here (224, as the model needs).
    c = common.smoke(c, size=224)
    c.dataset.eval_size = (224, 224)
    return c
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/deconvnet.py (known: 'smoke')")
  return c
