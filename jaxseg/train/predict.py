"""Writes colour-palette segmentation masks for images or for a split of the training dataset.

  jaxseg predict --checkpoint runs/quickstart --input img.jpg_or_dir --output preds/
  jaxseg predict --checkpoint runs/quickstart --split val --num_images 8 --output preds/

For each input image: `NAME.png` (palette PNG of class ids, VOC colours, so
it opens as a class-index image too), `NAME_overlay.png` (image | prediction
overlay side by side) and, with --probs, `NAME_probs.npy` (H, W, C float16
softmax probabilities). NAME is the input file's name without its extension,
or with --split the dataset's example id ('2007_000033' in VOC, 'val_00003' in
the generated set), in the split's order. The model, its class count, the
input normalisation and the dataset come from the checkpoint's stored config.

In a folder, files without an image extension are left out (and counted);
image files that cannot be read are skipped with a warning each, every other
image is predicted, and the command ends with a summary and exits with status
1 if any file was skipped.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def list_images(path: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(
      os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
      raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in directory {path!r}.')
    return files
  if not os.path.isfile(path):
    raise FileNotFoundError(f'input {path!r} does not exist.')
  return [path]


def other_files(path: str) -> list[str]:
  """Names of the files in directory `path` that `list_images` leaves out (no image extension)."""
  if not os.path.isdir(path):
    return []
  return sorted(
    f
    for f in os.listdir(path)
    if os.path.isfile(os.path.join(path, f)) and not f.lower().endswith(IMAGE_EXTENSIONS)
  )


def read_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path!r} is not a readable image: {unreadable_reason(e)}') from e


def unreadable_reason(error: Exception) -> str:
  """Why an image file could not be read, in a few words and without its path."""
  from PIL import UnidentifiedImageError

  if isinstance(error, UnidentifiedImageError):
    return 'unrecognised image data (not an image file, or a corrupt one)'
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return str(error) or type(error).__name__


@functools.lru_cache(maxsize=8)
def _probs_fn(apply_fn, scales: tuple, flip: bool, num_classes: int, compiler_options: tuple):
  """Jitted fn(variables, images) -> probabilities, one per (hashable) `layers.Apply` and options."""
  from jaxseg import inference

  def probs(variables, x):
    if scales == (1.0,) and not flip:
      logits = apply_fn(variables, x, train=False)
      return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return inference.predict_probs(
      lambda v, x: apply_fn(v, x, train=False),
      variables,
      x,
      scales=scales,
      flip=flip,
      num_classes=num_classes,
    )

  return jax.jit(probs, compiler_options=dict(compiler_options) or None)


def predict_probs(
  model, variables, image_uint8: np.ndarray, config, *, scales=(1.0,), flip=False
) -> np.ndarray:
  """(H, W, C) softmax probabilities for one uint8 RGB image, at full resolution.

  The model runs with the config's convolution lowering and compile options.
  """
  from jaxseg import data as data_lib
  from jaxseg.train import steps

  x = jnp.asarray(data_lib.normalize(image_uint8, config.dataset.normalize)[None])
  options = tuple(sorted((steps.compiler_options(config) or {}).items()))
  probs_fn = _probs_fn(
    steps.make_apply(config, model),
    tuple(float(s) for s in scales),
    bool(flip),
    int(config.dataset.num_classes),
    options,
  )
  return np.asarray(jax.device_get(probs_fn(variables, x)))[0]


def write_prediction(
  out_dir: str,
  name: str,
  image: np.ndarray,
  probs: np.ndarray,
  *,
  save_probs=False,
  palette: np.ndarray | None = None,
) -> list[str]:
  """Writes NAME.png (class ids, coloured by `palette`, default VOC's) and NAME_overlay.png."""
  from jaxseg import data as data_lib

  palette = data_lib.voc_palette() if palette is None else np.asarray(palette, np.uint8)

  if not name or name in ('.', '..') or os.sep in name or (os.altsep and os.altsep in name):
    raise ValueError(
      f'prediction name {name!r} must be a plain file name (no directories): outputs stay in {out_dir!r}.'
    )
  os.makedirs(out_dir, exist_ok=True)
  pred = np.argmax(probs, -1).astype(np.uint8)
  mask_path = os.path.join(out_dir, f'{name}.png')
  pal = Image.fromarray(pred, mode='P')
  pal.putpalette(palette.reshape(-1).tolist())
  tmp = mask_path + '.tmp'
  pal.save(tmp, format='PNG')
  os.replace(tmp, mask_path)  # never leave a half-written PNG under the final name
  from jaxseg import ops

  image = ops.center_crop(image[None], pred.shape)[0]  # the valid U-Net predicts the centre only
  side = np.concatenate([image, data_lib.overlay(image, pred, palette=palette)], axis=1)
  overlay_path = os.path.join(out_dir, f'{name}_overlay.png')
  Image.fromarray(side).save(overlay_path + '.tmp', format='PNG')
  os.replace(overlay_path + '.tmp', overlay_path)
  paths = [mask_path, overlay_path]
  if save_probs:
    p = os.path.join(out_dir, f'{name}_probs.npy')
    with open(p + '.tmp', 'wb') as f:
      np.save(f, probs.astype(np.float16))
    os.replace(p + '.tmp', p)
    paths.append(p)
  return paths


def predict_source(
  config,
  model,
  variables,
  source,
  out_dir: str,
  *,
  num_images: int = 0,
  scales=(1.0,),
  flip=False,
  save_probs=False,
  palette: np.ndarray | None = None,
) -> list[str]:
  """Predictions for the first `num_images` examples of a dataset source (0 = all), in its order.

  Each is named after the example id (`source.example_id(i)`, see `data.get_source`).
  Returns the paths written.
  """
  count = len(source) if num_images <= 0 else min(int(num_images), len(source))
  if palette is None:
    from jaxseg import data as data_lib

    palette = data_lib.dataset_info(config).palette
  paths = []
  for i in range(count):
    image = np.asarray(source[i]['image'])
    probs = predict_probs(model, variables, image, config, scales=scales, flip=flip)
    paths += write_prediction(
      out_dir, source.example_id(i), image, probs, save_probs=save_probs, palette=palette
    )
  return paths


def predict_from_config(config, workdir: str, state, model) -> list[str]:
  """After training: predictions for the first config.predict.num_images eval images into workdir/predictions.

  Files are named after the example ids of config.dataset.eval_split.
  """
  from jaxseg import data as data_lib

  if int(config.predict.num_images) <= 0:
    return []
  source = data_lib.get_source(config, config.dataset.eval_split)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  out_dir = os.path.join(workdir, 'predictions')
  return predict_source(
    config, model, variables, source, out_dir, num_images=int(config.predict.num_images)
  )


def define_flags() -> None:
  """CLI flags, defined only when run as a program (so train.eval and train.predict can be imported together)."""
  flags.DEFINE_string('checkpoint', None, 'Training workdir or checkpoint directory.')
  flags.DEFINE_string('input', None, 'An image file or a directory of images.')
  flags.DEFINE_string(
    'split',
    None,
    "Instead of --input: predict this split of the checkpoint's dataset (e.g. val), "
    'files named after the example ids.',
  )
  flags.DEFINE_integer(
    'num_images', 0, 'With --split: the first N examples of the split (0 = all).'
  )
  flags.DEFINE_string('output', None, 'Output directory.')
  flags.DEFINE_bool('best', False, 'Use the best-mIoU checkpoint instead of the latest.')
  flags.DEFINE_bool('probs', False, 'Also write per-class probabilities (.npy).')
  flags.DEFINE_list('scales', ['1.0'], 'Inference scales, e.g. 0.75,1.0,1.25.')
  flags.DEFINE_bool('flip', False, 'Average with the horizontally flipped prediction.')
  flags.mark_flags_as_required(['checkpoint', 'output'])
  flags.mark_flags_as_mutual_exclusive(['input', 'split'], required=True)


def _plural(n: int, word: str) -> str:
  return f'{n} {word}' + ('' if n == 1 else 's')


def main(argv):
  """A missing input, an unknown split or an unprepared dataset raise; `jaxseg` reports them in one line."""
  del argv
  from jaxseg.train import evaluation

  f = flags.FLAGS
  scales = tuple(float(s) for s in f.scales)
  if f.split is not None:
    from jaxseg import data as data_lib
    from jaxseg.train import checkpointing

    config = checkpointing.config_from_meta(checkpointing.read_meta(f.checkpoint))
    source = data_lib.get_source(config, f.split)  # before loading weights: a bad split fails fast
    config, model, variables = evaluation.load_trained(f.checkpoint, config, best=f.best)
    count = len(source) if f.num_images <= 0 else min(f.num_images, len(source))
    paths = predict_source(
      config,
      model,
      variables,
      source,
      f.output,
      num_images=count,
      scales=scales,
      flip=f.flip,
      save_probs=f.probs,
      palette=evaluation.class_palette(f.checkpoint, config),
    )
    for p in paths:
      print(p)
    print(f'wrote {_plural(count, "prediction")} of split {f.split!r} to {f.output}')
    return 0

  files = list_images(f.input)
  config, model, variables = evaluation.load_trained(f.checkpoint, best=f.best)
  palette = evaluation.class_palette(f.checkpoint, config)
  written, skipped = 0, []
  for path in files:
    try:
      image = read_image(path)
    except ValueError as e:
      reason = unreadable_reason(e.__cause__ or e)
      print(f'warning: skipped {path}: {reason}', file=sys.stderr, flush=True)
      skipped.append((os.path.basename(path), reason))
      continue
    probs = predict_probs(model, variables, image, config, scales=scales, flip=f.flip)
    name = os.path.splitext(os.path.basename(path))[0]
    for p in write_prediction(f.output, name, image, probs, save_probs=f.probs, palette=palette):
      print(p)
    written += 1
  summary = f'wrote {_plural(written, "prediction")} to {f.output}'
  if skipped:
    summary += f', skipped {len(skipped)}: ' + ', '.join(f'{n}: {r}' for n, r in skipped)
  others = other_files(f.input)
  if others:
    # Files such as notes or label lists are expected beside images; say so once, do not fail.
    shown = ', '.join(others[:5]) + (', ...' if len(others) > 5 else '')
    summary += f'; left out {_plural(len(others), "file")} without an image extension: {shown}'
  print(summary)
  return 1 if skipped else 0


def run(argv: list[str] | None = None, prog: str = 'jaxseg predict') -> int:
  from jaxseg import cli

  return cli.run_absl(__name__, define_flags, main, argv, prog)


if __name__ == '__main__':
  sys.exit(run(prog='python -m jaxseg.train.predict'))
