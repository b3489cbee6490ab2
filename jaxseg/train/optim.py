"""Learning-rate schedules and optimisers from `config.optim` (optax).

Schedules count optimiser updates: poly (DeepLab's `(1 - t / T) ** power`),
cosine, step (factors at fractions of the run), exponential (a factor every
`decay_steps` updates) or constant, each after an optional linear warmup. SGD uses coupled L2 weight decay as Caffe and
`torch.optim.SGD(weight_decay=...)` do; AdamW its decoupled decay.
"""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """poly / cosine / step / constant learning rate with optional linear warmup."""
  o, total = config.optim, int(config.train.num_steps)
  lr, warmup = float(o.lr), int(o.get('warmup_steps', 0))
  decay_steps = max(total - warmup, 1)
  name = o.get('schedule', 'poly')
  if name == 'poly':
    power = float(o.get('power', 0.9))
    main = optax.polynomial_schedule(lr, 0.0, power=power, transition_steps=decay_steps)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif name == 'step':
    factor = float(o.get('step_factor', 0.1))
    bounds = {int(f * total) - warmup: factor for f in o.get('step_boundaries', ())}
    main = optax.piecewise_constant_schedule(lr, bounds)
  elif name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'exponential':
    # lr * decay_rate ** (updates // decay_steps): FC-DenseNet's decay by 0.995 after each epoch.
    main = optax.exponential_decay(
      lr,
      transition_steps=max(int(o.get('decay_steps', 1)), 1),
      decay_rate=float(o.get('decay_rate', 1.0)),
      staircase=True,
    )
  else:
    raise ValueError(
      "config.optim.schedule must be 'poly', 'cosine', 'step', 'exponential' or 'constant', "
      f'got {name!r}.'
    )
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _base_optimizer(config, schedule) -> optax.GradientTransformation:
  o = config.optim
  name, wd = o.get('name', 'sgd'), float(o.get('weight_decay', 0.0))
  if name == 'sgd':
    momentum = float(o.get('momentum', 0.9)) or None
    opt = optax.sgd(schedule, momentum=momentum, nesterov=bool(o.get('nesterov', False)))
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  if name == 'adam':
    opt = optax.adam(schedule)
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  if name == 'adamw':
    return optax.adamw(schedule, weight_decay=wd)
  if name == 'rmsprop':
    # Lasagne's RMSprop (rho 0.9, epsilon 1e-6), which FC-DenseNet was trained with.
    opt = optax.rmsprop(schedule, decay=0.9, eps=1e-6)
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  raise ValueError(f"config.optim.name must be 'sgd', 'adam', 'adamw' or 'rmsprop', got {name!r}.")


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """Optimiser with schedule, optional head LR multiplier, clipping and gradient accumulation.

  With `optim.head_lr_mult != 1` every parameter outside the `backbone`
  submodule trains at `lr * head_lr_mult` (DeepLab's 10x classifier).
  `train.grad_accum_steps = k > 1` averages the gradients of k micro-batches
  per update (`optax.MultiSteps`).
  """
  schedule = make_schedule(config)
  mult = float(config.optim.get('head_lr_mult', 1.0))
  if mult != 1.0 and 'backbone' in params:
    head = lambda step: schedule(step) * mult
    labels = {k: ('base' if k == 'backbone' else 'head') for k in params}
    opt = optax.multi_transform(
      {'base': _base_optimizer(config, schedule), 'head': _base_optimizer(config, head)}, labels
    )
  else:
    opt = _base_optimizer(config, schedule)
  clip = float(config.optim.get('grad_clip_norm', 0.0))
  if clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(clip), opt)
  k = int(config.train.get('grad_accum_steps', 1))
  if k > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=k)
  return opt
