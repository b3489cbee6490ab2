"""The config schema every recipe fills in, and the `smoke` variant.

Sections: `dataset`, `model`, `optim`, `train`, `eval`. Recipes call
`base_config()` and override fields; `get_config('smoke')` of any recipe calls
`smoke(config)`, which keeps the model but runs 2 steps on the generated
dataset at a small size (big_vision's `runlocal` idea), so every recipe can be
exercised on a laptop and in CI.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.dataset = ml_collections.ConfigDict()
  # 'synthetic' (embedded, generated), or a prepared dataset: 'voc', 'cityscapes', 'ade20k',
  # 'camvid', 'folder' (jaxseg.data.list_datasets()).
  c.dataset.name = 'synthetic'
  c.dataset.config = ''  # '2012' or '2012_aug' for VOC; the name given at prepare time for a folder
  c.dataset.data_dir = (
    ''  # where prepared TFDS data lives ('' = TFDS default ~/tensorflow_datasets)
  )
  c.dataset.num_classes = 0  # 0 = the dataset's (21 for the generated set); else must match it
  c.dataset.ignore_index = 255
  c.dataset.train_split = 'train'
  c.dataset.eval_split = 'val'
  c.dataset.crop_size = (320, 320)  # training crop (H, W)
  c.dataset.scale_range = (0.5, 2.0)  # random rescale before the crop
  c.dataset.flip = True
  c.dataset.normalize = (
    'imagenet'  # 'imagenet' (RGB mean/std) or 'caffe' (BGR mean, 0-255: converted Caffe weights)
  )
  c.dataset.in_channels = 3
  c.dataset.eval_size = ()  # () = full resolution, padded to the split's largest image
  c.dataset.num_workers = 0  # grain worker processes (0 = in-process)
  c.dataset.synthetic_size = 64  # image side of the generated dataset
  c.dataset.synthetic_train_examples = 512
  c.dataset.synthetic_eval_examples = 64

  c.model = ml_collections.ConfigDict()
  c.model.name = 'fcn8s'
  c.model.kwargs = ml_collections.ConfigDict()  # passed to jaxseg.create_model
  c.model.backbone_weights = (
    ''  # path to an ImageNet checkpoint for the backbone (.pth/.safetensors/.npz)
  )
  c.model.weights = ''  # path to a full-model checkpoint in the model's PyTorch layout

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'  # 'sgd', 'adam', 'adamw' or 'rmsprop'
  c.optim.lr = 1e-3
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'poly'  # 'poly', 'cosine', 'step', 'exponential' or 'constant'
  c.optim.power = 0.9  # poly exponent
  c.optim.step_boundaries = ()  # fractions of num_steps for 'step'
  c.optim.step_factor = 0.1
  c.optim.decay_rate = 1.0  # 'exponential': lr * decay_rate ** (step // decay_steps)
  c.optim.decay_steps = 1
  c.optim.warmup_steps = 0
  c.optim.head_lr_mult = 1.0  # DeepLab trains the classifier head at 10x
  c.optim.grad_clip_norm = 0.0  # 0 = off

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8  # global batch
  c.train.num_steps = 1000
  c.train.seed = 0
  c.train.dtype = 'float32'  # computation dtype: 'float32' or 'bfloat16' (params stay float32)
  c.train.parallelism = 'jit'  # 'jit' (Mesh + NamedSharding; SyncBN) or 'pmap'
  # Convolutions: 'auto' (jaxseg.cpu_conv on the CPU backend, plain XLA elsewhere), 'xla', 'cpu'.
  c.train.conv_lowering = 'auto'
  c.train.xla_cpu_compiler_options = {}  # per-program XLA:CPU options (cpu_conv.compiler_options)
  c.train.grad_accum_steps = 1
  c.train.aux_loss_weight = 0.4  # for models with auxiliary heads (PSPNet)
  c.train.class_weights = ()  # () = unweighted; else one weight per class
  # 'median_frequency': class_weights from the training split's labels (SegNet); '' = none.
  c.train.class_weighting = ''
  c.train.log_every = 10
  c.train.eval_every = 500  # 0 = only at the end
  c.train.checkpoint_every = 500
  c.train.max_to_keep = 2
  c.train.skip_nonfinite = False  # True: skip updates with NaN/inf gradients instead of stopping
  c.train.distributed = False  # call jax.distributed.initialize() (multi-host)
  c.train.coordinator_address = (
    ''  # 'host:port' of process 0; '' = auto-detect (TPU pods, SLURM, ...)
  )
  c.train.num_processes = 0  # with coordinator_address: total processes
  c.train.process_id = -1  # with coordinator_address: this process

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 8
  c.eval.scales = (1.0,)
  c.eval.flip = False
  c.eval.crf = False
  c.eval.crf_params = 'deeplab_v2'  # 'deeplab_v1' or 'deeplab_v2' (jaxseg.crf presets)
  # model.kwargs overrides for evaluation and prediction only (e.g. output_stride=8 for DeepLabv3)
  c.eval.model_kwargs = ml_collections.ConfigDict()

  c.predict = ml_collections.ConfigDict()
  c.predict.num_images = (
    0  # > 0: after training, write colour-palette predictions of that many eval images
  )
  return c


def smoke(c: ml_collections.ConfigDict, size: int = 64) -> ml_collections.ConfigDict:
  """2 steps of the same model on the generated dataset at `size` x `size`."""
  c.dataset.name = 'synthetic'
  c.dataset.config = ''
  c.dataset.train_split = 'train'
  c.dataset.eval_split = 'val'
  c.dataset.normalize = 'imagenet'
  c.dataset.num_classes = 4
  c.dataset.crop_size = (size, size)
  c.dataset.synthetic_size = size
  c.dataset.synthetic_train_examples = 8
  c.dataset.synthetic_eval_examples = 4
  c.dataset.eval_size = ()
  c.model.backbone_weights = ''
  c.model.weights = ''
  c.train.batch_size = 2
  c.train.num_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.checkpoint_every = 2
  c.eval.batch_size = 2
  c.eval.crf = False
  return c


def voc_aug(c: ml_collections.ConfigDict, crop_size, **dataset) -> ml_collections.ConfigDict:
  """PASCAL VOC 2012 with SBD's extra masks: train on `train_aug` (10,582), evaluate on `val` (1,449).

  `dataset` overrides further `c.dataset` fields (e.g. scale_range, normalize).
  """
  c.dataset.update(
    dict(
      name='voc',
      config='2012_aug',
      num_classes=0,  # VOC's 21
      train_split='train_aug',
      eval_split='val',
      crop_size=tuple(crop_size),
      **dataset,
    )
  )
  return c


def dataset(
  c: ml_collections.ConfigDict, name: str, crop_size, *, eval_split: str = 'val', **fields
) -> ml_collections.ConfigDict:
  """A prepared dataset other than VOC ('cityscapes', 'ade20k', 'camvid', 'folder'): its train split and
  `eval_split`, the class count from the prepared data; `fields` override further `c.dataset`
  fields."""
  c.dataset.update(
    dict(
      name=name,
      config='',
      num_classes=0,
      train_split='train',
      eval_split=eval_split,
      crop_size=tuple(crop_size),
      **fields,
    )
  )
  return c


def sgd(
  c: ml_collections.ConfigDict,
  lr: float,
  *,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  schedule: str = 'poly',
  **optim,
) -> ml_collections.ConfigDict:
  """SGD with momentum and weight decay; `optim` overrides further `c.optim` fields."""
  c.optim.update(
    dict(
      name='sgd', lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule, **optim
    )
  )
  return c


def steps(
  c: ml_collections.ConfigDict,
  batch_size: int,
  num_steps: int,
  eval_every: int,
  checkpoint_every: int,
) -> ml_collections.ConfigDict:
  """Global batch, training length and the evaluation / checkpoint cadence."""
  c.train.update(
    dict(
      batch_size=batch_size,
      num_steps=num_steps,
      eval_every=eval_every,
      checkpoint_every=checkpoint_every,
    )
  )
  return c


def select(c: ml_collections.ConfigDict, variant: str, recipe: str, **variants):
  """Applies the named variant of a recipe: '' is the recipe itself, 'smoke' is `smoke(c)` unless
  `variants` gives its own, and each entry of `variants` maps a name to a function c -> config.
  An unknown name is a ValueError listing the known ones."""
  variants = {'smoke': smoke, **variants}
  if not variant:
    return c
  if variant not in variants:
    known = ', '.join(repr(k) for k in variants)
    raise ValueError(f'unknown variant {variant!r} of configs/{recipe}.py (known: {known})')
  return variants[variant](c)


def with_crf(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The recipe evaluated with the dense CRF (`c.eval.crf_params` preset)."""
  c.eval.crf = True
  return c
