"""Quickstart: a tiny FCN-8s on the embedded generated dataset (no download, laptop CPU, a few minutes).

Run:    python -m train.main --config configs/quickstart.py --workdir runs/quickstart
Smoke:  python -m train.main --config configs/quickstart.py:smoke --workdir /tmp/quickstart_smoke

The dataset (jaxseg/data/synthetic.py) draws textured backgrounds with shape
classes that occlude each other, with 255 'void' edges as in VOC. The model is
FCN-8s exactly as in the paper (pad 100, fc6/fc7 convolutions, skip fusion,
bilinear deconvolutions) with 1/8 of VGG-16's channels. It prints the
per-class IoU table and mIoU at the end (chance is about 1/num_classes of the
pixels per class, i.e. mIoU well under 20%), writes checkpoints to
WORKDIR/checkpoints, metrics to WORKDIR/metrics.jsonl and TensorBoard files,
and colour-palette predictions to WORKDIR/predictions/.
"""

from configs import common


def get_config(variant: str = ''):
  c = common.base_config()
  c.dataset.name = 'synthetic'
  c.dataset.num_classes = 6
  c.dataset.synthetic_size = 64
  c.dataset.crop_size = (64, 64)
  c.dataset.scale_range = (0.75, 1.25)
  c.dataset.synthetic_train_examples = 2048
  c.dataset.synthetic_eval_examples = 128
  c.model.name = 'fcn8s'
  c.model.kwargs.width = 0.125
  c.model.kwargs.dropout = 0.1
  c.optim.name = 'adam'
  c.optim.lr = 2e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 50
  c.train.batch_size = 16
  c.train.num_steps = 600
  c.train.log_every = 50
  c.train.eval_every = 0
  c.train.checkpoint_every = 200
  c.eval.batch_size = 16
  c.predict.num_images = 4
  if variant == 'smoke':
    c = common.smoke(c)
    c.predict.num_images = 2
    return c
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/quickstart.py (known: 'smoke')")
  return c
