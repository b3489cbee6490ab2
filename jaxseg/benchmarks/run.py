"""Training and inference throughput of every registered jaxseg model, with PyTorch ratios.

  jaxseg benchmark                                 # every registered model
  jaxseg benchmark --models fcn8s,segnet --reps 5 --json out.json
  jaxseg benchmark --models fcn8s --lowering xla   # plain lax.conv lowering
  jaxseg benchmark --pipeline                      # input pipeline images/s per core
  jaxseg benchmark --pipeline --pipeline-dataset cityscapes --pipeline-data-dir DIR --size 769
  jaxseg benchmark --pipeline --pipeline-dataset cityscapes --pipeline-generate 16 --size 769

The PyTorch side needs torch and torchvision, and for the models without a
torchvision counterpart the references in a checkout's tests/torch_ref.

For each model (its default input shape from `DEFAULTS`, or `--batch` /
`--size`): a jitted train step (optax SGD with momentum, softmax
cross-entropy, state donated) and a jitted inference step are compiled once
(compile time measured), their FLOPs taken from XLA's cost analysis, and peak
host RSS sampled. Where `benchmarks.torch_models` has the same architecture in
PyTorch (same parameter count, checked), its train and inference steps are
built in the same process with the same thread count. Then, for `--reps`
repetitions, the JAX steps, the PyTorch steps and a float32 GEMM run one
after another (interleaved, so that a shared machine's changing load hits
every side alike); the table shows medians, JAX / PyTorch ratios (> 1: JAX
faster) and achieved FLOP/s as a fraction of that GEMM's.
The PyTorch side is skipped when JAX does not run on CPU (not comparable).
Nothing here assumes a CPU: the device is `jax.devices()[0]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxseg
from jaxseg import cpu_conv, layers
from jaxseg.train.steps import CompileCounter

# Per-model defaults: (batch, (H, W), num_classes). Models not listed get FALLBACK.
DEFAULTS: dict[str, tuple[int, tuple[int, int], int]] = {
  'fcn8s': (2, (128, 128), 21),
  'fcn16s': (2, (128, 128), 21),
  'fcn32s': (2, (128, 128), 21),
  'segnet': (2, (128, 128), 11),
  'segnet_basic': (2, (128, 128), 11),
  'deconvnet': (2, (224, 224), 21),  # train-mode BN on fc6's 1x1 map needs a batch > 1
  'unet': (1, (572, 572), 2),  # the paper's tile (388x388 output)
  'unet_padded': (1, (128, 128), 2),
  'deeplab_v1': (2, (128, 128), 21),
  'hypercolumn': (2, (224, 224), 21),  # fc6 needs inputs >= 193
  'fc_densenet56': (2, (128, 128), 11),
  'fc_densenet67': (2, (128, 128), 11),
  'fc_densenet103': (1, (128, 128), 11),
}
FALLBACK = (2, (128, 128), 21)


class RSSSampler:
  """Peak resident set size (bytes) of this process while the context is open.

  `resource.getrusage` only gives the peak over the whole process life and
  tracemalloc misses XLA's and PyTorch's native allocations, so VmRSS is
  sampled from /proc by a thread. `peak` is absolute; `delta` is above the
  RSS at entry. Where /proc is missing (not Linux) both stay None.
  """

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.peak = self.start = None
    self._stop = threading.Event()

  @staticmethod
  def rss() -> int | None:
    try:
      with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError):
      return None

  def _run(self):
    while not self._stop.is_set():
      r = self.rss()
      if r is not None:
        self.peak = max(self.peak or 0, r)
      time.sleep(self.interval)

  def __enter__(self):
    self.start = self.peak = self.rss()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    r = self.rss()
    if r is not None:
      self.peak = max(self.peak or 0, r)

  @property
  def delta(self) -> int | None:
    return None if self.peak is None else self.peak - self.start


def _median_time(fn: Callable[[], Any], reps: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def interleave(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, Any]]:
  """Times every function once per repetition, alternating between them.

  On a shared machine the load changes from minute to minute; alternating
  JAX, PyTorch and the GEMM within each repetition puts every side under the
  same conditions, so their ratios stay meaningful even when absolute times
  move. Returns per function the wall-clock times, their median, and the
  process CPU time per call (all threads; about threads x wall time when the
  machine is otherwise idle, and a load-independent measure of work).
  """
  out = {k: {'times': [], 'cpu': []} for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      c, t = time.process_time(), time.perf_counter()
      fn()
      out[k]['times'].append(time.perf_counter() - t)
      out[k]['cpu'].append(time.process_time() - c)
  for v in out.values():
    v['median'] = statistics.median(v['times'])
    v['cpu_median'] = statistics.median(v['cpu'])
  return out


def gemm_fn(n: int) -> Callable[[], Any]:
  """One float32 n^3 GEMM on the default device (compiled and warmed up)."""
  device = jax.devices()[0]
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), device)
  b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32), device)
  mm = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
  mm(a, b).block_until_ready()
  return lambda: mm(a, b).block_until_ready()


def torch_gemm_peak(n: int, reps: int) -> float:
  import torch

  a, b = torch.randn(n, n), torch.randn(n, n)
  torch.mm(a, b)
  t, _ = _median_time(lambda: torch.mm(a, b), reps)
  return 2.0 * n**3 / t


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def _logits(out):
  """Main logits and auxiliary outputs of a model's train-mode output."""
  leaves = [leaf for leaf in jax.tree_util.tree_leaves(out) if getattr(leaf, 'ndim', 0) == 4]
  return leaves[0], leaves[1:]


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def model_input(name: str, model, batch: int, size: tuple[int, int]) -> jax.ShapeDtypeStruct:
  channels = int(getattr(model, 'in_channels', 3))
  return jax.ShapeDtypeStruct((batch, *size, channels), jnp.float32)


def recipe_compiler_options(name: str) -> dict[str, Any] | None:
  """`train.xla_cpu_compiler_options` of the recipe configs/<name>.py, if it has one."""
  import importlib

  try:
    config = importlib.import_module(f'jaxseg.configs.{name}').get_config()
  except ModuleNotFoundError:
    return None
  return dict(config.train.get('xla_cpu_compiler_options', None) or {}) or None


def bench_jax(
  name: str, batch: int, size: tuple[int, int], num_classes: int, model_kwargs=None,
  *, lowering: layers.Lowering = layers.XLA,
) -> tuple[dict[str, Any], Callable[[], Any], Callable[[], Any]]:  # fmt: skip
  """Compiles (timed) and warms up the train and inference steps of registered model `name`.

  Convolutions use `lowering`; the jits get the recipe's XLA:CPU compile options.

  Returns (figures, train step, inference step); the steps block until done
  and are timed by the caller (`interleave`).
  """
  device = jax.devices()[0]
  model = jaxseg.create_model(name, num_classes=num_classes, **(model_kwargs or {}))
  apply = layers.Apply(model, lowering=lowering)
  spec = model_input(name, model, batch, size)
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal(spec.shape, np.float32), device)
  variables = jax.jit(
    lambda x: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, train=False
    )
  )(x)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  out_shape = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  main_shape = _logits(out_shape)[0].shape
  labels = jax.device_put(rng.integers(0, num_classes, main_shape[:3]).astype(np.int32), device)
  tx = optax.sgd(0.01, momentum=0.9)
  # Every leaf committed to the device like the step's outputs: `tx.init` gives
  # uncommitted zeros (also when jitted, and `device_put` to the same device
  # does not commit them), and the second step then compiles a second
  # executable (measured: +8 s on FCN). A host round trip commits them.
  state = {'params': params, 'batch_stats': batch_stats, 'opt': tx.init(params)}
  state = jax.tree.map(lambda a: jax.device_put(np.asarray(a), device), state)

  def loss_fn(params, batch_stats, x, labels, key):
    v = {'params': params}
    if batch_stats:
      v['batch_stats'] = batch_stats
      out, new = apply(v, x, train=True, rngs={'dropout': key}, mutable=['batch_stats'])
      batch_stats = new['batch_stats']
    else:
      out = apply(v, x, train=True, rngs={'dropout': key})
    main, aux = _logits(out)
    loss = _ce(main, labels)
    for a in aux:  # PSPNet-style auxiliary heads at the label resolution
      if a.shape[:3] == labels.shape:
        loss = loss + 0.4 * _ce(a, labels)
    return loss, batch_stats

  def train_step(state, x, labels, key):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'], state['batch_stats'], x, labels, key
    )
    updates, opt = tx.update(grads, state['opt'], state['params'])
    return {
      'params': optax.apply_updates(state['params'], updates),
      'batch_stats': batch_stats,
      'opt': opt,
    }, loss

  def infer(variables, x):
    return apply(variables, x, train=False)

  options = cpu_conv.compiler_options(recipe_compiler_options(name))
  train_jit = jax.jit(train_step, donate_argnums=(0,), compiler_options=options)
  infer_jit = jax.jit(infer, compiler_options=options)
  key = jax.random.key(2)
  result: dict[str, Any] = {
    'batch': batch,
    'input_shape': list(spec.shape),
    'output_shape': list(main_shape),
    'params': int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(params))),
    'compiler_options': options,  # the recipe's XLA:CPU compile options, where they apply
  }

  # Every compile of each function, the AOT one below included (static shapes: one each).
  train_compiles, infer_compiles = CompileCounter(), CompileCounter()
  with RSSSampler() as mem:
    t = time.perf_counter()
    with train_compiles:
      train_compiled = train_jit.lower(state, x, labels, key).compile()
    result['train_compile_s'] = time.perf_counter() - t
    result['train_flops'] = _flops(train_compiled)
    del train_compiled

    holder = {'state': state}
    del state

    def one_step():
      with train_compiles:
        holder['state'], loss = train_jit(holder['state'], x, labels, key)
      loss.block_until_ready()
      holder['loss'] = loss

    one_step()  # first call: reuses the executable compiled above
    one_step()  # the second must not compile either (committed state, static shapes)
    result['loss'] = float(holder['loss'])

    def infer_vars():
      v = {'params': holder['state']['params']}
      if batch_stats:
        v['batch_stats'] = holder['state']['batch_stats']
      return v

    def one_infer():
      with infer_compiles:
        out = infer_jit(infer_vars(), x)
      jax.block_until_ready(out)

    # Compiled for the trained state's (committed) arrays, which every timed call passes.
    t = time.perf_counter()
    with infer_compiles:
      infer_compiled = infer_jit.lower(infer_vars(), x).compile()
    result['infer_compile_s'] = time.perf_counter() - t
    result['infer_flops'] = _flops(infer_compiled)
    del infer_compiled
    one_infer()
  # Static shapes: one executable per function for the whole run (checked again after timing).
  result['train_executables'] = train_compiles.count
  result['infer_executables'] = infer_compiles.count
  result['peak_rss_bytes'] = mem.peak
  result['rss_growth_bytes'] = mem.delta
  stats = getattr(device, 'memory_stats', lambda: None)()
  if stats and 'peak_bytes_in_use' in stats:
    result['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  result['_executables'] = lambda: (train_compiles.count, infer_compiles.count)
  return result, one_step, one_infer


def bench_torch(
  name: str, batch: int, spec_shape, main_shape, num_classes: int
) -> tuple[dict[str, Any], Callable[[], Any], Callable[[], Any]] | None:
  """The PyTorch counterpart of `name`, warmed up: (figures, train step, inference step), or None."""
  from jaxseg.benchmarks import torch_models

  built = torch_models.build(name, num_classes)
  if built is None:
    return None
  import torch

  model = built
  n, h, w, c = spec_shape
  x = torch.randn(n, c, h, w)
  labels = torch.randint(0, num_classes, tuple(main_shape[:3]))
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    model.train()
    opt.zero_grad(set_to_none=True)
    out = model(x)
    aux = []
    if isinstance(out, (tuple, list)):
      out, aux = out[0], list(out[1:])
    elif isinstance(out, dict):
      out, aux = out['out'], [v for k, v in out.items() if k != 'out']
    loss = loss_fn(out, labels)
    for a in aux:  # same auxiliary weighting as the JAX side
      if a.shape[-2:] == labels.shape[-2:]:
        loss = loss + 0.4 * loss_fn(a, labels)
    loss.backward()
    opt.step()
    return loss

  def infer():
    model.eval()
    with torch.no_grad():
      return model(x)

  result: dict[str, Any] = {'params': int(sum(p.numel() for p in model.parameters()))}
  with RSSSampler() as mem:
    step()
    step()
    infer()
  result['rss_growth_bytes'] = mem.delta
  return result, step, infer


def _parse_size(text: str) -> tuple[int, int]:
  parts = text.lower().replace('x', ',').split(',')
  return (int(parts[0]), int(parts[-1]))


def _fmt(v, spec='.2f'):
  return '-' if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
  head = (
    f'{"model":<15} {"input":<16} {"train img/s":>11} {"torch":>7} {"ratio":>6} {"infer img/s":>11} '
    f'{"torch":>7} {"ratio":>6} {"%GEMM tr":>8} {"%GEMM inf":>9} {"compile s":>9} {"RSS GiB":>7} {"torch":>6}'
  )
  print(head)
  print('-' * len(head))
  for r in rows:
    if 'error' in r:
      print(f'{r["model"]:<15} ERROR {r["error"]}')
      continue
    j, t = r['jax'], r.get('torch') or {}
    shape = 'x'.join(str(s) for s in j['input_shape'])
    gib = lambda b: None if b is None else b / 2**30  # noqa: E731
    print(
      f'{r["model"]:<15} {shape:<16} {j["train_img_s"]:>11.2f} {_fmt(t.get("train_img_s")):>7} '
      f'{_fmt(r.get("train_ratio")):>6} {j["infer_img_s"]:>11.2f} {_fmt(t.get("infer_img_s")):>7} '
      f'{_fmt(r.get("infer_ratio")):>6} {_fmt(r.get("train_gemm_frac"), ".0%"):>8} '
      f'{_fmt(r.get("infer_gemm_frac"), ".0%"):>9} {j["train_compile_s"] + j["infer_compile_s"]:>9.1f} '
      f'{_fmt(gib(j["peak_rss_bytes"])):>7} {_fmt(gib(t.get("peak_rss_bytes"))):>6}'
    )


def environment(threads: int | None) -> dict[str, Any]:
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  env = {
    'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
    'cpu': cpu,
    'cpu_count': os.cpu_count(),
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'device': str(jax.devices()[0]),
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  try:
    import torch

    env['torch'] = torch.__version__
    env['torch_threads'] = threads
  except ImportError:
    pass
  return env


def run_models(args) -> dict[str, Any]:
  names = jaxseg.list_models()
  if args.models:
    wanted = [m.strip() for m in args.models.split(',') if m.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      raise SystemExit(f'unknown model(s) {unknown}; registered: {names}')
    names = [n for n in names if n in wanted]
  model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
  # A counterpart is the same architecture only with the default constructor arguments.
  use_torch = not args.no_torch and jax.default_backend() == 'cpu' and not model_kwargs
  threads = None
  if use_torch:
    try:
      import torch

      threads = args.threads or os.cpu_count()
      torch.set_num_threads(threads)
    except ImportError:
      use_torch = False
  lowering = cpu_conv.select(args.lowering)
  report = {'environment': environment(threads), 'models': []}
  report['environment']['conv_lowering'] = repr(lowering)
  gemm = gemm_fn(args.gemm_size)
  gemm_flop = 2.0 * args.gemm_size**3
  peak = gemm_flop / _median_time(gemm, max(3, args.reps))[0]
  report['gemm_flops'] = peak
  if use_torch:
    report['torch_gemm_flops'] = torch_gemm_peak(args.gemm_size, max(3, args.reps))
  print(
    f'float32 GEMM {args.gemm_size}^3: {peak / 1e9:.1f} GFLOP/s on {jax.devices()[0]}', flush=True
  )
  for name in names:
    batch, size, num_classes = DEFAULTS.get(name, FALLBACK)
    batch = args.batch or batch
    size = _parse_size(args.size) if args.size else size
    row: dict[str, Any] = {'model': name}
    base_rss = RSSSampler.rss()
    try:
      row['jax'], jax_train, jax_infer = bench_jax(
        name, batch, size, num_classes, model_kwargs, lowering=lowering
      )
    except Exception as e:  # noqa: BLE001 - one broken model must not hide the others
      row['error'] = f'{type(e).__name__}: {e}'[:300]
      report['models'].append(row)
      print(f'{name}: {row["error"]}', flush=True)
      continue
    j = row['jax']
    fns = {'jax_train': jax_train, 'jax_infer': jax_infer, 'gemm': gemm}
    t = None
    if use_torch:
      try:
        built = bench_torch(name, batch, j['input_shape'], j['output_shape'], num_classes)
      except Exception as e:  # noqa: BLE001
        built = None
        row['torch_error'] = f'{type(e).__name__}: {e}'[:300]
      if built:
        t, torch_train, torch_infer = built
        # Its own growth on top of the process before any model existed (JAX's buffers are
        # still alive while PyTorch runs).
        if base_rss is not None and t['rss_growth_bytes'] is not None:
          t['peak_rss_bytes'] = base_rss + t['rss_growth_bytes']
        fns.update(torch_train=torch_train, torch_infer=torch_infer)
    timed = interleave(fns, args.reps)
    executables = j.pop('_executables')()
    j['train_executables'], j['infer_executables'] = executables
    for side, res in (('jax', j), ('torch', t)):
      if res is None:
        continue
      for kind in ('train', 'infer'):
        m = timed[f'{side}_{kind}']
        res[f'{kind}_s'], res[f'{kind}_times'] = m['median'], m['times']
        res[f'{kind}_cpu_s'] = m['cpu_median']
        res[f'{kind}_img_s'] = batch / m['median']
    # The GEMM peak of this model's repetitions (interleaved with its steps).
    row['gemm_flops'] = model_peak = gemm_flop / timed['gemm']['median']
    if j['train_flops']:
      row['train_flop_s'] = j['train_flops'] / j['train_s']
      row['train_gemm_frac'] = row['train_flop_s'] / model_peak
    if j['infer_flops']:
      row['infer_flop_s'] = j['infer_flops'] / j['infer_s']
      row['infer_gemm_frac'] = row['infer_flop_s'] / model_peak
    if t:
      row['torch'] = t
      if t['params'] != j['params']:  # not the same architecture: say so loudly
        row['torch_params_mismatch'] = True
        print(f'{name}: WARNING torch counterpart has {t["params"]} parameters, JAX {j["params"]}')
      row['train_ratio'] = j['train_img_s'] / t['train_img_s']
      row['infer_ratio'] = j['infer_img_s'] / t['infer_img_s']
      # Process CPU seconds per step, PyTorch / JAX (> 1: JAX does the step with less CPU
      # work). Less sensitive than wall time to other jobs on a shared machine, but it
      # also counts both runtimes' spin-waiting threads.
      row['train_cpu_ratio'] = t['train_cpu_s'] / j['train_cpu_s']
      row['infer_cpu_ratio'] = t['infer_cpu_s'] / j['infer_cpu_s']
    report['models'].append(row)
    print(
      f'{name}: train {j["train_img_s"]:.2f} img/s (x{row.get("train_ratio", float("nan")):.2f} torch), '
      f'infer {j["infer_img_s"]:.2f} img/s (x{row.get("infer_ratio", float("nan")):.2f}), '
      f'CPU-time ratios {row.get("train_cpu_ratio", float("nan")):.2f}/'
      f'{row.get("infer_cpu_ratio", float("nan")):.2f}, '
      f'compile {j["train_compile_s"]:.1f}+{j["infer_compile_s"]:.1f} s, '
      f'GEMM {model_peak / 1e9:.0f} GFLOP/s',
      flush=True,
    )
  print()
  print_table([r for r in report['models']])
  return report


def run_pipeline(args) -> dict[str, Any]:
  """Images/s of the training input pipeline (augmentation included), per core."""
  try:
    from jaxseg import data
  except ImportError as e:
    raise SystemExit(f'--pipeline needs jaxseg.data: {e}') from e
  from jaxseg.configs.common import base_config

  config = base_config()
  config.dataset.name = args.pipeline_dataset
  config.dataset.config = args.pipeline_config
  config.dataset.data_dir = args.pipeline_data_dir
  config.dataset.num_workers = args.pipeline_workers
  prepared = {}
  if args.pipeline_generate:
    prepared = _generate_and_prepare(args, config)
  if args.size:
    config.dataset.crop_size = _parse_size(args.size)
  config.train.batch_size = args.batch or 8
  it = data.create_train_iterator(config, seed=0)
  next(it)  # start-up (worker spawn, first decode)
  n_batches = max(args.reps, 3) * 4
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(n_batches):
    b = next(it)
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  images = n_batches * b['image'].shape[0]
  result = {
    'environment': environment(None),
    **prepared,
    'dataset': config.dataset.name,
    'batch_shape': list(b['image'].shape),
    'images': images,
    'images_per_s': images / wall,
    'process_cpu_s': cpu,
    # Worker processes' CPU time is not in process_time; per-core figures
    # divide by the cores the pipeline may use.
    'cores': os.cpu_count(),
    'images_per_s_per_core': images / wall / (os.cpu_count() or 1),
  }
  print(
    f'pipeline {config.dataset.name} {tuple(b["image"].shape)}: {result["images_per_s"]:.1f} img/s, '
    f'{result["images_per_s_per_core"]:.1f} img/s per core ({result["cores"]} cores)'
  )
  return result


def _generate_and_prepare(args, config) -> dict[str, Any]:
  """Writes --pipeline-generate examples in the dataset's layout, prepares them (timed)."""
  import atexit
  import shutil
  import tempfile

  from jaxseg.benchmarks import datagen
  from jaxseg.data import datasets

  name = config.dataset.name
  if name not in datagen.TREES:
    raise SystemExit(f'--pipeline-generate supports {sorted(datagen.TREES)}, not {name!r}.')
  root = tempfile.mkdtemp(prefix='jaxseg_bench_')
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  manual = datagen.TREES[name](os.path.join(root, 'manual'), args.pipeline_generate)
  config.dataset.config = config.dataset.config or ('bench' if name == 'folder' else '')
  config.dataset.data_dir = os.path.join(root, 'tfds')
  t0 = time.perf_counter()
  builder = datasets.prepare_dataset(
    name, config=config.dataset.config, manual_dir=manual, data_dir=config.dataset.data_dir
  )
  seconds = time.perf_counter() - t0
  examples = sum(int(s.num_examples) for s in builder.info.splits.values())
  print(
    f'prepared {examples} generated {name} examples in {seconds:.1f} s: '
    f'{examples / seconds:.1f} examples/s (an image and its mask each)'
  )
  return {
    'prepare_examples': examples,
    'prepare_s': seconds,
    'prepare_examples_per_s': examples / seconds,
  }


def main(argv=None, prog=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0])
  parser.add_argument(
    '--models', default='', help='comma-separated registry names (default: all registered)'
  )
  parser.add_argument('--batch', type=int, default=0, help='batch size (default: per model)')
  parser.add_argument('--size', default='', help='input size H or HxW (default: per model)')
  parser.add_argument('--reps', type=int, default=3, help='timed repetitions (medians reported)')
  parser.add_argument('--json', default='', help='write the full results here')
  parser.add_argument(
    '--threads', type=int, default=0, help='PyTorch threads (default: all cores, like XLA)'
  )
  parser.add_argument('--no-torch', action='store_true', help='skip the PyTorch side')
  parser.add_argument(
    '--lowering', choices=cpu_conv.LOWERINGS, default='auto',
    help="convolution lowering: 'cpu' (jaxseg.cpu_conv), 'xla' (plain), 'auto' (cpu on CPU)",
  )  # fmt: skip
  parser.add_argument(
    '--model-kwargs', default='', help='JSON constructor kwargs (e.g. a tiny width); disables torch'
  )
  parser.add_argument('--gemm-size', type=int, default=2048, help='n of the n^3 float32 GEMM peak')
  parser.add_argument('--pipeline', action='store_true', help='measure the input pipeline instead')
  parser.add_argument(
    '--pipeline-dataset', default='synthetic', help='dataset name (jaxseg.data.list_datasets())'
  )
  parser.add_argument('--pipeline-config', default='', help='its config (e.g. a folder name)')
  parser.add_argument('--pipeline-data-dir', default='', help='where it is prepared')
  parser.add_argument(
    '--pipeline-generate',
    type=int,
    default=0,
    help='generate and prepare this many examples (cityscapes at 1024x2048, folder at 256x256)',
  )
  parser.add_argument('--pipeline-workers', type=int, default=0, help='grain worker processes')
  args = parser.parse_args(argv)
  cpu_conv.configure_xla_flags()  # before JAX starts its backend
  report = run_pipeline(args) if args.pipeline else run_models(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=1, default=str)
  return report


def run(argv=None, prog=None) -> int:
  """`jaxseg benchmark`: prints the table (and writes --json); exit status 0."""
  main(argv, prog)
  return 0


if __name__ == '__main__':
  main()
