"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017).

Run:    jaxseg train --config segnet --workdir runs/segnet
CamVid: jaxseg train --config segnet:camvid --workdir runs/segnet_camvid
Smoke:  jaxseg train --config segnet:smoke --workdir /tmp/segnet_smoke

Paper recipe (CamVid, 11 classes, 360x480): VGG16 encoder initialised from
ImageNet, SGD with fixed learning rate 0.1 and momentum 0.9, mini-batches of
12 images, cross-entropy weighted by median frequency balancing (class weight =
median class frequency / class frequency, frequencies computed over the
training images that contain the class). Paper result quoted by the project
design: CamVid mIoU 50.2 (the TPAMI paper reports SegNet after several training
lengths in its CamVid comparison; compare a reproduction with the matching row).

The default variant trains the same network on PASCAL VOC 2012 (+SBD), the
dataset jaxseg builds. The 'camvid' variant sets the paper's CamVid recipe; it
needs a CamVid dataset (not built in yet) and its class weights, computed once
from the training label masks with `camvid_class_weights(masks)` (which uses
`jaxseg.losses.median_frequency_weights`) and passed as
`--config.train.class_weights='(w0, ..., w10)'`. 'camvid_smoke' runs that
weighting path (weights from generated masks) on the generated dataset.
"""

from jaxseg.configs import common

CAMVID_CLASSES = (
  'sky',
  'building',
  'pole',
  'road',
  'pavement',
  'tree',
  'sign_symbol',
  'fence',
  'car',
  'pedestrian',
  'bicyclist',
)


def camvid_class_weights(
  masks, num_classes: int = 11, ignore_index: int = 255
) -> tuple[float, ...]:
  """Median-frequency class weights from an iterable of (H, W) training label masks."""
  import numpy as np

  from jaxseg.losses import median_frequency_weights

  class_pixels = np.zeros(num_classes, np.int64)
  image_pixels = np.zeros(num_classes, np.int64)
  for m in masks:
    m = np.asarray(m)
    valid = m[m != ignore_index]
    counts = np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    class_pixels += counts
    image_pixels += np.where(counts > 0, m.size, 0)
  return tuple(float(w) for w in median_frequency_weights(class_pixels, image_pixels))


def get_config(variant: str = ''):
  c = common.base_config()
  common.voc_aug(c, (320, 320))
  c.model.name = 'segnet'
  common.sgd(c, 0.1, schedule='constant')
  common.steps(c, batch_size=12, num_steps=40_000, eval_every=2_000, checkpoint_every=2_000)
  return common.select(c, variant, 'segnet', camvid=camvid, camvid_smoke=camvid_smoke)


def camvid(c):
  c.dataset.update(
    dict(
      name='camvid',
      config='',
      num_classes=len(CAMVID_CLASSES),
      train_split='train',
      eval_split='test',
      crop_size=(360, 480),
      scale_range=(1.0, 1.0),
      eval_size=(360, 480),
    )
  )
  c.optim.weight_decay = 0.0
  return c


def camvid_smoke(c):
  # The CamVid recipe's model, loss weighting and optimiser on generated data.
  c = common.smoke(c)
  c.train.class_weights = camvid_class_weights(_synthetic_masks(c), c.dataset.num_classes)
  return c


def _synthetic_masks(c):
  """A few generated label masks, standing in for CamVid's in the smoke variant."""
  import numpy as np

  rng = np.random.default_rng(0)
  size = c.dataset.crop_size
  masks = []
  for _ in range(4):
    m = np.zeros(size, np.int64)
    for k in range(1, c.dataset.num_classes):
      y, x = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
      m[y : y + 8 * k, x : x + 8] = k
    masks.append(m)
  return masks
