"""Runs a segmentation model exported by `jaxseg export --format stablehlo`, with JAX alone.

This file imports only JAX, NumPy and the standard library (never jaxseg), so it
can be copied next to an artifact and used where jaxseg is not installed:

  import stablehlo_loader
  model = stablehlo_loader.load('fcn8s.jaxexport')  # reads fcn8s.jaxexport.json too
  out = model(images)          # images: uint8 (N, H, W, 3) RGB -> {'logits': float32 (N, H, W, C)}
  model.metadata['class_names'], model.metadata['palette']

or from the command line, for one image (Pillow needed), writing the class map as PNG:

  python stablehlo_loader.py fcn8s.jaxexport photo.jpg classes.png

The artifact is a serialized `jax.export.Exported`: the network with its
weights and its input normalisation, lowered to StableHLO. Its input is
`image`, uint8 NHWC RGB; its output `logits` (float32 NHWC at the input's
height and width) or `classes` (int32 (N, H, W)), as the sidecar JSON says.
The batch size is free; the height and width are those the sidecar's
'input_size' gives.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


class ArtifactError(ValueError):
  """The file is not a jaxseg StableHLO artifact, or its sidecar does not describe it."""


class ExportedModel:
  """A loaded artifact: call it with uint8 (N, H, W, 3) RGB images.

  Attributes:
    metadata: the sidecar JSON (class names, palette, input normalisation, sizes).
    output: 'logits' or 'classes', the name of the single output.
  """

  def __init__(self, exported, metadata: dict, path: str):
    self._exported = exported
    self.metadata = metadata
    self.output = metadata['output']
    self._path = path
    self.input_size = tuple(metadata['input_size'])

  def check_input(self, images) -> np.ndarray:
    """The images as a uint8 (N, H, W, 3) array, or a ValueError naming what is expected."""
    x = np.asarray(images)
    h, w = self.input_size
    expected = f'uint8 RGB images of shape (N, {h}, {w}, 3) (NHWC)'
    if x.dtype != np.uint8:
      raise ValueError(
        f'{self._path} expects {expected}, got dtype {x.dtype}: pass the pixels as they are '
        '(the normalisation is part of the model).'
      )
    if x.ndim == 3:
      raise ValueError(
        f'{self._path} expects {expected}, got {x.shape}: add the batch axis, x[None].'
      )
    if x.ndim != 4:
      raise ValueError(f'{self._path} expects {expected}, got shape {x.shape}.')
    if x.shape[-1] != 3:
      hint = '; it looks like NCHW: x.transpose(0, 2, 3, 1)' if x.shape[1] == 3 else ''
      raise ValueError(f'{self._path} expects {expected}, got shape {x.shape}{hint}.')
    if tuple(x.shape[1:3]) != (h, w):
      raise ValueError(
        f'{self._path} expects {expected}, got {x.shape[1]}x{x.shape[2]} images: resize or '
        f'crop them to {h}x{w}, or export the model at their size (jaxseg export --size).'
      )
    if x.shape[0] < 1:
      raise ValueError(f'{self._path} expects at least one image, got shape {x.shape}.')
    return x

  def __call__(self, images) -> dict[str, np.ndarray]:
    out = self._exported.call(self.check_input(images))
    return {self.output: np.asarray(out)}


def load(path: str) -> ExportedModel:
  """Reads `path` (a `.jaxexport` file) and its sidecar `path + '.json'`."""
  from jax import export

  sidecar = path + '.json'
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no StableHLO artifact at {path!r}.')
  if not os.path.isfile(sidecar):
    raise FileNotFoundError(
      f'{path!r} has no sidecar {sidecar!r} (class names, input size, output), which jaxseg '
      'export writes next to it.'
    )
  try:
    with open(sidecar) as f:
      metadata = json.load(f)
    missing = [k for k in ('format', 'input_size', 'output', 'class_names') if k not in metadata]
    if metadata.get('format') != 'jaxseg-stablehlo' or missing:
      raise ArtifactError(f'{sidecar} is not a jaxseg StableHLO sidecar (missing {missing}).')
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
    raise ArtifactError(f'{sidecar} is not a jaxseg StableHLO sidecar: {e}') from None
  with open(path, 'rb') as f:
    data = f.read()
  try:
    exported = export.deserialize(bytearray(data))
  except Exception as e:  # noqa: BLE001 - any failure means the bytes are not an artifact
    raise ArtifactError(
      f'{path} is not a serialized jax.export artifact ({len(data):,} bytes, starting with '
      f'{data[:16]!r}): {type(e).__name__}: {str(e)[:200]}'
    ) from None
  (aval,) = exported.in_avals
  h, w = metadata['input_size']
  if str(aval.dtype) != 'uint8' or tuple(aval.shape[1:]) != (h, w, 3):
    raise ArtifactError(
      f'{path} takes {aval.dtype} {aval.shape}, but its sidecar says uint8 (N, {h}, {w}, 3): '
      'the two files do not belong together.'
    )
  return ExportedModel(exported, metadata, path)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 3:
    print('usage: python stablehlo_loader.py MODEL.jaxexport IMAGE OUTPUT.png', file=sys.stderr)
    return 2
  from PIL import Image

  model = load(argv[0])
  image = np.asarray(Image.open(argv[1]).convert('RGB'))[None]
  out = model(image)[model.output][0]
  classes = out if model.output == 'classes' else np.argmax(out, axis=-1)
  mask = Image.fromarray(classes.astype(np.uint8), mode='P')
  mask.putpalette(np.asarray(model.metadata['palette'], np.uint8).ravel().tolist())
  mask.save(argv[2])
  print(f'wrote {argv[2]}: {classes.shape[0]}x{classes.shape[1]} class map')
  return 0


if __name__ == '__main__':
  sys.exit(main())
