"""Per-convolution census of a model: where the JAX step loses to PyTorch.

    python -m jaxseg.benchmarks.conv_census --model pspnet [--train] [--reps 5]

XLA:CPU runs Eigen convolutions asynchronously, so a profiler trace does not
attribute the step's time to its convolutions. This tool records every
convolution of one forward pass (input shape, kernel, stride, padding,
dilation, groups; through a recording `layers.Lowering`), then times each
distinct configuration on its own: the jitted `jaxseg.cpu_conv` form the
engine picks for it (the `form` column; forward, or
forward + input and kernel gradients with `--train`) and `torch.nn.functional
.conv2d` with the same shapes and threads, interleaved per repetition. The
table lists the configurations by the time JAX loses (count x (JAX - PyTorch)),
with the total over all of them; conv time not lost here lies elsewhere in the
step (pooling, BatchNorm, concatenations, the optimiser).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxseg
from jaxseg import cpu_conv, layers
from jaxseg.benchmarks import run
from jaxseg.cpu_conv import plan


@dataclasses.dataclass(frozen=True, eq=False)
class _Recorder(layers.Lowering):
  """The plain lowering, counting the configuration of every convolution it computes."""

  seen: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def conv(self, x, kernel, *, strides, padding, dilation, groups):
    key = (tuple(x.shape), tuple(kernel.shape), tuple(strides), padding, tuple(dilation), groups)
    self.seen[key] += 1
    return super().conv(
      x, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups
    )


def record_convs(name: str, batch: int, size, num_classes: int, model_kwargs=None):
  """Counter of (x shape, kernel shape, strides, pads, dilation, groups) over one forward."""
  model = jaxseg.create_model(name, num_classes=num_classes, **(model_kwargs or {}))
  spec = run.model_input(name, model, batch, size)
  recorder = _Recorder()
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), spec)
  jax.eval_shape(lambda v, x: layers.Apply(model, recorder)(v, x, train=False), variables, spec)
  return recorder.seen


def _jax_fn(key, train: bool, lowering: layers.Lowering):
  x_shape, k_shape, strides, pads, dilation, groups = key
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
  k = jnp.asarray(rng.standard_normal(k_shape, np.float32) * 0.05)

  def conv(k, x):
    return lowering.conv(x, k, strides=strides, padding=pads, dilation=dilation, groups=groups)

  if train:
    f = jax.jit(jax.grad(lambda k, x: jnp.sum(conv(k, x) ** 2), argnums=(0, 1)))
  else:
    f = jax.jit(conv)
  f(k, x)
  return lambda: jax.block_until_ready(f(k, x))


def _torch_fn(key, train: bool):
  import torch

  x_shape, k_shape, strides, pads, dilation, groups = key
  n, h, w, c = x_shape
  x = torch.randn(n, c, h, w, requires_grad=train)
  k = (torch.randn(k_shape[3], k_shape[2], k_shape[0], k_shape[1]) * 0.05).requires_grad_(train)
  (pt, pb), (pl, pr) = pads
  symmetric = pt == pb and pl == pr

  def fwd():
    xi = x if symmetric else torch.nn.functional.pad(x, (pl, pr, pt, pb))
    return torch.nn.functional.conv2d(
      xi, k, None, strides, (pt, pl) if symmetric else 0, dilation, groups
    )

  if train:

    def step():
      x.grad = k.grad = None
      (fwd() ** 2).sum().backward()

    step()
    return step

  def infer():
    with torch.no_grad():
      fwd()

  infer()
  return infer


def census(name, batch, size, num_classes, train, reps, model_kwargs=None):
  """Rows (one per distinct convolution), sorted by the time JAX loses to PyTorch."""
  import torch

  torch.set_num_threads(int(os.environ.get('JAXSEG_BENCH_THREADS', os.cpu_count() or 1)))
  seen = record_convs(name, batch, size, num_classes, model_kwargs)
  lowering = cpu_conv.CpuLowering(ynn_convolutions=cpu_conv.ynn_convolutions())
  rows = []
  for key, count in seen.items():
    fns = {'jax': _jax_fn(key, train, lowering), 'torch': _torch_fn(key, train)}
    timed = run.interleave(fns, reps)
    x_shape, k_shape, strides, pads, dilation, groups = key
    form = plan.plan_conv(
      x_shape, k_shape, strides, pads, dilation, groups,
      ynn_convolutions=lowering.ynn_convolutions,
    ).form  # fmt: skip
    j, t = timed['jax']['median'], timed['torch']['median']
    rows.append({
      'x': list(x_shape), 'kernel': list(k_shape), 'strides': list(strides),
      'pads': [list(p) for p in pads], 'dilation': list(dilation), 'groups': groups,
      'form': form, 'count': count, 'jax_s': j, 'torch_s': t, 'lost_s': count * (j - t),
    })  # fmt: skip
  rows.sort(key=lambda r: -r['lost_s'])
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', required=True, choices=jaxseg.list_models())
  p.add_argument('--train', action='store_true', help='forward + gradients (default: forward)')
  p.add_argument('--reps', type=int, default=5)
  p.add_argument('--batch', type=int)
  p.add_argument('--size', help='HxW')
  p.add_argument('--model-kwargs', help='JSON dict passed to create_model (e.g. a width)')
  p.add_argument('--json', help='write the rows here')
  args = p.parse_args(argv)
  cpu_conv.configure_xla_flags()  # before JAX starts its backend
  model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
  batch, size, num_classes = run.DEFAULTS.get(args.model, run.FALLBACK)
  batch = args.batch or batch
  size = run._parse_size(args.size) if args.size else size
  t0 = time.perf_counter()
  rows = census(args.model, batch, size, num_classes, args.train, args.reps, model_kwargs)
  print(f'{args.model} {"train" if args.train else "infer"} conv census ({len(rows)} configs, '
        f'{time.perf_counter() - t0:.0f} s), sorted by time lost to PyTorch:')  # fmt: skip
  print(f'{"x (NHWC)":>20} {"kernel (HWIO)":>20} {"form":>18} {"s":>3} {"d":>3} {"n":>3} '
        f'{"jax ms":>8} {"torch ms":>8} {"ratio":>6} {"lost ms":>8}')  # fmt: skip
  for r in rows:
    print(
      f'{"x".join(map(str, r["x"])):>20} {"x".join(map(str, r["kernel"])):>20} {r["form"]:>18} '
      f'{r["strides"][0]:>3} {r["dilation"][0]:>3} {r["count"]:>3} {r["jax_s"] * 1e3:8.2f} '
      f'{r["torch_s"] * 1e3:8.2f} {r["torch_s"] / r["jax_s"]:6.2f} {r["lost_s"] * 1e3:8.1f}'
    )
  tot_j = sum(r['count'] * r['jax_s'] for r in rows)
  tot_t = sum(r['count'] * r['torch_s'] for r in rows)
  print(f'all convolutions: JAX {tot_j * 1e3:.0f} ms, PyTorch {tot_t * 1e3:.0f} ms '
        f'(ratio {tot_t / tot_j:.2f})')  # fmt: skip
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'model': args.model, 'train': args.train, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
