"""Exports a segmentation model as StableHLO (`jax.export`) that runs without jaxseg.

  jaxseg export --checkpoint runs/fcn8s --format stablehlo --size 375,500 --output fcn8s.jaxexport

writes `fcn8s.jaxexport` (the serialized `jax.export.Exported`: network,
weights and input normalisation) and `fcn8s.jaxexport.json` (class names,
palette, input size, normalisation, output). `jaxseg/deploy/stablehlo_loader.py`
loads and runs it with JAX alone.

The interface of every artifact: one input `image`, uint8 (N, H, W, 3) RGB,
with a free batch size N and the height and width fixed at export time
(`--size`); one output, `logits` float32 (N, H, W, num_classes), or with
`returns='classes'` the int32 (N, H, W) class map. The network runs with plain
XLA convolutions (not the CPU engine's GEMM forms), so the artifact suits
every backend it is lowered for (`platforms`).

Sizes: jaxseg's networks compute shapes (crops, pooling windows, resize
matrices, unpooling indices) from the input size while they are traced, so
the height and width are exported as fixed numbers; export once per
deployment size. The batch axis is symbolic.
"""

from __future__ import annotations

import json
import os
import uuid

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 'jaxseg-stablehlo'
OUTPUTS = ('logits', 'classes')


def _normalize(images, mode: str):
  """uint8 RGB -> the network's float input, bit for bit `jaxseg.data.normalize(images, mode)`.

  A per-channel lookup table made by `normalize` itself: the same float32
  values whatever XLA does with the arithmetic (a one-ulp difference can move
  a max-pooling argmax, and SegNet's unpooling with it).
  """
  from jaxseg.data.transforms import normalize

  ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  table = jnp.asarray(normalize(ramp, mode))  # (256, 3): row v = the input value v, per channel
  source = (2, 1, 0) if mode == 'caffe' else (0, 1, 2)  # caffe's channels are BGR
  ids = images.astype(jnp.int32)
  return jnp.stack([table[:, k][ids[..., c]] for k, c in enumerate(source)], axis=-1)


def inference_fn(model, variables, *, normalize: str = 'imagenet', returns: str = 'logits'):
  """uint8 (N, H, W, 3) -> logits (N, H, W, C) float32 or classes (N, H, W) int32, weights bound."""
  from jaxseg import layers

  if returns not in OUTPUTS:
    raise ValueError(f'returns must be one of {OUTPUTS}, got {returns!r}.')
  _normalize(jnp.zeros((1, 1, 1, 3), jnp.uint8), normalize)  # checks the mode
  apply = layers.Apply(model, layers.XLA)
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}

  def infer(images):
    logits = apply(variables, _normalize(images, normalize), train=False)
    if isinstance(logits, dict):
      logits = logits['out']
    logits = logits.astype(jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32) if returns == 'classes' else logits

  return infer


def export(
  model,
  variables,
  output: str,
  *,
  input_size: tuple[int, int],
  normalize: str = 'imagenet',
  returns: str = 'logits',
  class_names=(),
  palette=None,
  platforms: tuple[str, ...] | None = None,
  extra_metadata: dict | None = None,
) -> dict:
  """Writes `output` (serialized jax.export) and `output + '.json'`; returns the sidecar dict.

  Args:
    model, variables: a jaxseg model and its {'params', 'batch_stats'}.
    output: path of the artifact (conventionally `*.jaxexport`).
    input_size: (H, W) the artifact takes.
    normalize: the input normalisation the model was trained with ('imagenet' or 'caffe').
    returns: 'logits' or 'classes'.
    class_names, palette: recorded in the sidecar ((num_classes, 3) colours).
    platforms: backends to lower for (e.g. ('cpu', 'cuda')); None = JAX's default backend.
    extra_metadata: more sidecar entries (the model's name and kwargs, its source).

  Raises ValueError when the model's output is not at the input size (the
  valid-convolution U-Net) or the size is not positive.
  """
  from jax import export as jax_export

  h, w = (int(s) for s in input_size)
  if h < 1 or w < 1:
    raise ValueError(f'input_size must be positive (H, W), got {tuple(input_size)}.')
  infer = inference_fn(model, variables, normalize=normalize, returns=returns)
  (batch,) = jax_export.symbolic_shape('N')
  spec = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8)
  kwargs = {'platforms': tuple(platforms)} if platforms else {}
  exported = jax_export.export(jax.jit(infer), **kwargs)(spec)
  (out,) = exported.out_avals
  if tuple(out.shape[1:3]) != (h, w):
    raise ValueError(
      f'the model returns {out.shape[1]}x{out.shape[2]} maps for {h}x{w} inputs; exported '
      'models must predict at the input size (use the padded variant of a valid-convolution net).'
    )
  num_classes = int(out.shape[-1]) if returns == 'logits' else None
  if num_classes is None:
    probe = jax.eval_shape(inference_fn(model, variables, normalize=normalize), spec)
    num_classes = int(probe.shape[-1])
  names = list(class_names) or [f'class_{i}' for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for a model with {num_classes} classes.')
  colors = np.asarray(palette if palette is not None else _default_palette(), np.uint8)
  metadata = {
    'format': FORMAT,
    'input': 'image',
    'input_dtype': 'uint8',
    'input_layout': 'NHWC, RGB',
    'input_size': [h, w],
    'batch': 'any',
    'normalize': normalize,
    'output': returns,
    'output_dtype': 'float32' if returns == 'logits' else 'int32',
    'output_layout': 'NHWC' if returns == 'logits' else 'NHW',
    'num_classes': num_classes,
    'class_names': names,
    'palette': colors[:num_classes].tolist(),
    'platforms': list(exported.platforms),
    'jax_version': jax.__version__,
    **(extra_metadata or {}),
  }
  _write(output, bytes(exported.serialize()))
  _write(output + '.json', json.dumps(metadata, indent=1).encode())
  return metadata


def _default_palette() -> np.ndarray:
  from jaxseg.data.palette import voc_palette

  return voc_palette()


def _write(path: str, data: bytes) -> None:
  """Writes through a temporary file and a rename: never a half-written artifact."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}')
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def export_checkpoint(
  checkpoint: str,
  output: str,
  *,
  input_size: tuple[int, int] | None = None,
  returns: str = 'logits',
  platforms: tuple[str, ...] | None = None,
) -> dict:
  """Exports a training workdir (`jaxseg train`) or a converted checkpoint (`jaxseg convert`).

  From a workdir: the model as evaluated (config.eval.model_kwargs applied),
  its input normalisation, class names and colours, and by default the
  config's eval size or else its training crop. From a converted checkpoint:
  the model and normalisation of its sidecar; `input_size` is then required.
  """
  if os.path.isdir(os.path.join(checkpoint, 'checkpoints')) or os.path.isfile(
    os.path.join(checkpoint, '_CHECKPOINT_METADATA')
  ):
    return _export_trained(checkpoint, output, input_size, returns, platforms)
  from jaxseg.weights.pretrained import checkpoint_metadata, load_checkpoint

  meta = checkpoint_metadata(checkpoint)
  if meta.get('kind') != 'model':
    raise ValueError(f'{checkpoint} holds a {meta.get("kind")} checkpoint, not a model.')
  if input_size is None:
    raise ValueError(f'{checkpoint} is a converted checkpoint: give the input size (--size H,W).')
  model, variables = load_checkpoint(checkpoint)
  num_classes = int(meta.get('num_classes') or 0)
  names = _voc_names() if num_classes == 21 else ()
  return export(
    model,
    variables,
    output,
    input_size=input_size,
    normalize=meta.get('normalize', 'imagenet'),
    returns=returns,
    class_names=names,
    platforms=platforms,
    extra_metadata={'model': meta['name'], 'source': os.path.abspath(checkpoint)},
  )


def _voc_names():
  from jaxseg.data.palette import VOC_CLASSES

  return VOC_CLASSES


def _export_trained(checkpoint, output, input_size, returns, platforms) -> dict:
  from jaxseg.data.palette import full_palette
  from jaxseg.train import checkpointing, evaluation

  config, model, variables = evaluation.load_trained(checkpoint)
  meta = checkpointing.read_meta(checkpoint)
  if input_size is None:
    input_size = tuple(config.dataset.eval_size) or tuple(config.dataset.crop_size)
  names = meta.get('class_names') or ()
  palette = full_palette(meta['colors']) if meta.get('colors') else None
  kwargs = {**dict(config.model.kwargs), **dict(config.eval.get('model_kwargs', {}) or {})}
  return export(
    model,
    variables,
    output,
    input_size=input_size,
    normalize=config.dataset.normalize,
    returns=returns,
    class_names=names,
    palette=palette,
    platforms=platforms,
    extra_metadata={
      'model': config.model.name,
      'model_kwargs': json.loads(json.dumps(kwargs, default=str)),
      'source': os.path.abspath(checkpoint),
    },
  )
