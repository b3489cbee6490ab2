"""Run in a subprocess with 4 fake CPU devices (XLA_FLAGS set by the caller).

Prints one JSON line: max differences between (a) one jit step on a batch
sharded over 4 devices and the single-device step on the whole batch, and (b)
the jit (Mesh) and pmap paths after 3 steps. The model has BatchNorm, so (b)
only agrees if pmap synchronises the statistics like the global-batch jit path.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import layers
from jaxseg.configs import common
from jaxseg.train import steps


class TinyBNNet(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train):
    x = layers.ConvBNReLU(8, 3, padding=1, name='a')(x, train=train)
    x = layers.ConvBNReLU(8, 3, strides=2, padding=1, name='b')(x, train=train)
    x = layers.ConvTranspose2d(self.num_classes, 4, 2, padding=1, name='up')(x)
    return x.astype(jnp.float32)


def main():
  assert jax.device_count() == 4, jax.devices()
  config = common.base_config()
  config.dataset.num_classes = 3
  config.optim.lr = 0.1
  config.optim.momentum = 0.9
  config.train.num_steps = 10
  model = TinyBNNet()
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    label = rng.integers(0, 3, (8, 12, 10)).astype(np.int32)
    label[rng.random(label.shape) < 0.3] = 255  # unequal valid pixels per device
    batches.append(
      {'image': rng.standard_normal((8, 12, 10, 3)).astype(np.float32), 'label': label}
    )
  state0 = steps.create_train_state(config, model, jax.random.key(0), (1, 12, 10, 3))
  cfg = steps.step_config(config)
  step_rng = jax.random.key(1)

  # (a) single-device step on the whole batch vs one sharded jit step.
  single = jax.jit(functools.partial(steps.train_step, cfg=cfg))
  s_single, m_single = single(state0, batches[0], step_rng)
  par = steps.Parallel('jit', cfg)
  s_sharded, m_sharded = par.train(par.put_state(state0), par.put_batch(batches[0]), step_rng)
  diff_a = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(
      jax.tree.leaves(s_single.params),
      jax.tree.leaves(jax.device_get(s_sharded.params)),
      strict=True,
    )
  )
  diff_a_stats = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(
      jax.tree.leaves(s_single.batch_stats),
      jax.tree.leaves(jax.device_get(s_sharded.batch_stats)),
      strict=True,
    )
  )

  # (b) jit (Mesh) vs pmap after 3 steps.
  results, executables = {}, {}
  for mode in ('jit', 'pmap'):
    # The state's apply_fn synchronises BatchNorm over the pmap axis when the config says pmap.
    config.train.parallelism = mode
    p = steps.Parallel(mode, cfg)
    s = p.put_state(steps.create_train_state(config, model, jax.random.key(0), (1, 12, 10, 3)))
    for b in batches:
      s, m = p.train(s, p.put_batch(b), step_rng)
    results[mode] = (p.get_state(s), p.scalar(m['loss']))
    executables[mode] = p.num_train_executables()
  diff_b = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(
      jax.tree.leaves(results['jit'][0].params),
      jax.tree.leaves(results['pmap'][0].params),
      strict=True,
    )
  )
  diff_b_stats = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(
      jax.tree.leaves(results['jit'][0].batch_stats),
      jax.tree.leaves(results['pmap'][0].batch_stats),
      strict=True,
    )
  )
  moved = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(
      jax.tree.leaves(results['jit'][0].params), jax.tree.leaves(state0.params), strict=True
    )
  )
  print(
    json.dumps(
      {
        'single_vs_sharded': diff_a,
        'single_vs_sharded_stats': diff_a_stats,
        'loss_single': float(m_single['loss']),
        'loss_sharded': float(m_sharded['loss']),
        'jit_vs_pmap': diff_b,
        'jit_vs_pmap_stats': diff_b_stats,
        'loss_jit': results['jit'][1],
        'loss_pmap': results['pmap'][1],
        'params_moved': moved,
        'executables': executables,
      }
    )
  )


if __name__ == '__main__':
  main()
