"""Evaluates a checkpoint on a whole split: one confusion matrix, per-class IoU table.

  jaxseg eval --checkpoint runs/fcn8s [--config fcn8s] [--split val]
      [--scales 0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--sliding_window 513] [--crf]

Images are evaluated at full resolution (each batch padded to the split's
largest size; padded pixels are ignored). Multi-scale + flip averages softmax
probabilities over the scales; --sliding_window tiles large images with
overlapping crops of the given size. --crf applies the dense CRF (DeepLab
v1/v2 post-processing) to the probabilities. Writes `eval_<split>.json` next
to the checkpoint (or to --output).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags


def define_flags() -> None:
  """CLI flags, defined only when run as a program (so train.eval and train.predict can be imported together)."""
  config_flags.DEFINE_config_file(
    'config', None, 'Recipe name or config file; default: the config stored with the checkpoint.'
  )
  flags.DEFINE_string('checkpoint', None, 'Training workdir or checkpoint directory.')
  flags.DEFINE_bool('best', False, 'Use the best-mIoU checkpoint instead of the latest.')
  flags.DEFINE_string('split', None, 'Split to evaluate (default config.dataset.eval_split).')
  flags.DEFINE_list(
    'scales', None, 'Scales for multi-scale inference (default config.eval.scales).'
  )
  flags.DEFINE_bool('flip', None, 'Average with the flipped image (default config.eval.flip).')
  flags.DEFINE_integer(
    'sliding_window', 0, 'Sliding-window size for large images (0 = whole image).'
  )
  flags.DEFINE_bool('crf', None, 'Dense-CRF post-processing (default config.eval.crf).')
  flags.DEFINE_string('output', None, 'Where to write the JSON results.')
  flags.mark_flags_as_required(['checkpoint'])


def make_predict_fn(
  model, config, *, scales=(1.0,), flip=False, window: int = 0, crf: bool = False
):
  """jit-able fn(variables, images) -> (N, H, W) int predictions with the requested inference.

  The model runs with the config's convolution lowering (`steps.make_apply`).
  """
  from jaxseg.train import steps

  num_classes = int(config.dataset.num_classes)
  apply = steps.make_apply(config, model)
  apply_fn = lambda v, x: apply(v, x, train=False)

  def predict(variables, images):
    if window or tuple(scales) != (1.0,) or flip:
      from jaxseg import inference
    if window:
      probs = inference.sliding_window_probs(
        apply_fn, variables, images, window=(window, window), num_classes=num_classes
      )
    elif tuple(scales) == (1.0,) and not flip:
      probs = jax.nn.softmax(apply_fn(variables, images).astype(jnp.float32), axis=-1)
    else:
      probs = inference.predict_probs(
        apply_fn, variables, images, scales=tuple(scales), flip=flip, num_classes=num_classes
      )
    if crf:
      from jaxseg import crf as crf_lib
      from jaxseg.data import transforms

      rgb = transforms.denormalize_jax(images, config.dataset.normalize)
      # The CRF's unary is -log P of the (multi-scale) network probabilities.
      params = {'deeplab_v1': crf_lib.DEEPLAB_V1, 'deeplab_v2': crf_lib.DEEPLAB_V2}[
        config.eval.get('crf_params', 'deeplab_v2')
      ]
      probs = crf_lib.dense_crf(rgb, jnp.log(jnp.maximum(probs, 1e-8)), params)
    return jnp.argmax(probs, axis=-1)

  return predict


def evaluate_checkpoint(
  checkpoint: str,
  config=None,
  *,
  split=None,
  scales=None,
  flip=None,
  window=0,
  crf=None,
  best=False,
  progress=True,
) -> dict:
  from jaxseg import data as data_lib
  from jaxseg import metrics
  from jaxseg.train import evaluation, logging_lib, steps

  config, model, variables = evaluation.load_trained(checkpoint, config, best=best)
  scales = tuple(float(s) for s in (scales if scales is not None else config.eval.scales))
  flip = bool(config.eval.flip if flip is None else flip)
  crf = bool(config.eval.crf if crf is None else crf)
  num_classes = int(config.dataset.num_classes)
  ignore = int(config.dataset.ignore_index)
  predict = make_predict_fn(model, config, scales=scales, flip=flip, window=window, crf=crf)

  @functools.partial(jax.jit, compiler_options=steps.compiler_options(config))
  def confusion(variables, batch):
    preds = predict(variables, batch['image'])
    labels = jnp.where(batch['mask'][:, None, None], batch['label'], ignore)
    # Out-of-range labels are left out of the confusion matrix: count them so they are reported.
    invalid = metrics.count_invalid_labels(labels, num_classes, ignore)
    return metrics.confusion_matrix(labels, preds, num_classes, ignore), invalid

  eval_iter = data_lib.create_eval_iterator(config, split=split)
  total = np.zeros((num_classes, num_classes), np.int64)
  invalid = 0
  for batch in logging_lib.progress(eval_iter, desc='eval', enabled=progress):
    cm, bad = jax.device_get(confusion(variables, batch))
    total += np.asarray(cm, np.int64)
    invalid += int(bad)
  result = {**metrics.scores(total), 'invalid_labels': invalid}
  names = data_lib.dataset_info(config).get('class_names')
  print(evaluation.format_iou_table(result, names))
  return {
    'split': split or config.dataset.eval_split,
    'scales': list(scales),
    'flip': flip,
    'sliding_window': window,
    'crf': crf,
    'miou': result['miou'],
    'pixel_acc': result['pixel_acc'],
    'mean_acc': result['mean_acc'],
    'fwiou': result['fwiou'],
    'invalid_labels': invalid,
    'per_class_iou': {
      (names[i] if names else str(i)): (None if not np.isfinite(v) else float(v))
      for i, v in enumerate(result['per_class_iou'])
    },
    'confusion': total.tolist(),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  out = evaluate_checkpoint(
    f.checkpoint,
    f.config,
    split=f.split,
    scales=f.scales,
    flip=f.flip,
    window=f.sliding_window,
    crf=f.crf,
    best=f.best,
    progress=sys.stderr.isatty(),  # a bar on a terminal; nothing in a log file
  )
  path = f.output or os.path.join(f.checkpoint, f'eval_{out["split"]}.json')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(out, f, indent=1)
  os.replace(path + '.tmp', path)
  print(f'mIoU {100 * out["miou"]:.2f} -> {path}')


def run(argv: list[str] | None = None, prog: str = 'jaxseg eval') -> int:
  from jaxseg import cli, configs

  return cli.run_absl(__name__, define_flags, main, argv, prog, parse_hook=configs.resolve_argv)


if __name__ == '__main__':
  sys.exit(run(prog='python -m jaxseg.train.eval'))
