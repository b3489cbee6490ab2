"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), the original valid-convolution network.

Run:    jaxseg train --config unet --workdir runs/unet
Smoke:  jaxseg train --config unet:smoke --workdir /tmp/unet_smoke

Paper recipe: grayscale microscopy tiles of 572x572 (output 388x388), batch of
one large tile, SGD with momentum 0.99, pixel-wise softmax cross-entropy with
a weight map (class balancing plus a border term separating touching cells),
Gaussian initialisation with std sqrt(2/N), elastic deformations as the main
augmentation, dropout at the end of the contracting path.
Paper results: ISBI 2012 EM segmentation challenge, warping error 0.000353
(rand error 0.0382); ISBI 2015 cell tracking challenge, mean IoU 0.9203
(PhC-U373) and 0.7756 (DIC-HeLa).

The microscopy datasets are not built into jaxseg; this recipe trains the same
network on PASCAL VOC 2012 (RGB: in_channels=3) with the paper's optimiser.
The learning rate is not given in the paper; 0.01 is this recipe's choice.
The logits are smaller than the input (572 -> 388): the training loop compares
them with the center crop of the labels of the same size, which is where the
valid network's outputs sit.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  # A valid size: output 388x388.
  common.voc_aug(c, (572, 572), in_channels=3, eval_size=(572, 572))
  c.model.name = 'unet'
  c.model.kwargs.in_channels = 3
  common.sgd(c, 0.01, momentum=0.99, weight_decay=0.0, schedule='constant')
  common.steps(c, batch_size=1, num_steps=20_000, eval_every=2_000, checkpoint_every=2_000)
  return common.select(c, variant, 'unet', smoke=smoke)


def smoke(c):
  # 236 is a valid input size of the depth-4 valid U-Net (output 52x52).
  c = common.smoke(c, size=236)
  c.dataset.eval_size = (236, 236)
  return c
