"""Whole-split evaluation, the per-class IoU table, the logged eval image, trained models.

mIoU comes only from one confusion matrix accumulated over the whole split
(Scenic's global metrics): averaging per-batch IoUs is biased. Label pixels
outside [0, num_classes) that are not ignore_index are left out of the matrix;
their number is reported (`invalid_labels`, and a line under the IoU table).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxseg import data as data_lib
from jaxseg import metrics, ops
from jaxseg.train import checkpointing, logging_lib, steps


def evaluate(
  parallel: steps.Parallel, state, eval_iter, num_classes: int, *, progress=True, desc='eval'
) -> dict:
  """Runs eval_step over a whole split; returns `metrics.scores` of the summed confusion matrix.

  The result also holds the matrix ('confusion') and the number of label
  pixels left out of it as out of range ('invalid_labels').
  """
  total = None
  bar = logging_lib.progress(eval_iter, desc=desc, enabled=progress)
  for batch in bar:
    out = parallel.eval_metrics(state, parallel.put_batch(batch))
    total = out if total is None else jax.tree.map(lambda a, b: a + b, total, out)
  if total is None:
    raise ValueError('the evaluation split is empty: no batch was produced.')
  total = jax.device_get(total)
  confusion = np.asarray(total['confusion'], np.int64)
  result = metrics.scores(confusion)
  result['confusion'] = confusion
  result['invalid_labels'] = int(total['invalid_labels'])
  return result


def format_iou_table(result: dict, class_names) -> str:
  """Per-class IoU (%) lines, then mIoU, pixel accuracy, mean accuracy and frequency-weighted IoU."""
  lines = [f'{"class":<16} {"IoU":>7}']
  for i, iou in enumerate(result['per_class_iou']):
    name = class_names[i] if class_names and i < len(class_names) else str(i)
    lines.append(f'{name:<16} {("%.2f" % (100 * iou)) if np.isfinite(iou) else "  n/a":>7}')
  lines.append(
    f'{"mIoU":<16} {100 * result["miou"]:>7.2f}   pixel acc {100 * result["pixel_acc"]:.2f}   '
    f'mean acc {100 * result["mean_acc"]:.2f}   fwIoU {100 * result["fwiou"]:.2f}'
  )
  if result.get('invalid_labels'):
    n = len(result['per_class_iou'])
    lines.append(
      f'WARNING: {result["invalid_labels"]} label pixels outside 0..{n - 1} (and not the ignore '
      'index) were left out of these scores.'
    )
  return '\n'.join(lines)


def log_eval_image(config, parallel: steps.Parallel, host_state, writer, step: int) -> None:
  """The first evaluation image next to its predicted overlay, in TensorBoard (eval/prediction)."""
  from jaxseg import data as data_lib

  image = np.asarray(data_lib.get_source(config, config.dataset.eval_split)[0]['image'])
  x = data_lib.normalize(image, config.dataset.normalize)[None]
  pred = parallel.predict(host_state, x)[0]
  image = ops.center_crop(image[None], pred.shape)[0]  # the valid U-Net predicts the centre only
  writer.image(step, 'eval/prediction', np.concatenate([image, data_lib.overlay(image, pred)], 1))


def load_trained(
  checkpoint: str, config: ml_collections.ConfigDict | None = None, *, best: bool = False
):
  """(config, model, variables) from a training workdir or checkpoint directory.

  The model is built as evaluated (config.eval.model_kwargs applied).
  The config stored with the checkpoint is used unless `config` is given (its
  model name and class count must then match the checkpoint's). Run the model
  with `steps.make_apply(config, model)` for the recipe's convolution lowering.
  """
  if config is None:
    config = checkpointing.config_from_meta(checkpointing.read_meta(checkpoint))
  if int(config.dataset.num_classes) <= 0:  # a config that leaves the class count to the dataset
    data_lib.resolve_config(config)
  model = steps.build_model(config, evaluation=True)
  state, _ = checkpointing.restore_for_inference(
    checkpoint,
    steps.abstract_train_state(config, model),
    meta=checkpointing.checkpoint_meta(config),
    best=best,
  )
  return config, model, {'params': state.params, 'batch_stats': state.batch_stats}


def class_palette(checkpoint: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """(256, 3) uint8 colours of the classes a checkpoint predicts.

  The colours recorded with the checkpoint at training time, so predictions
  are coloured as in the dataset without the dataset at hand; else the
  dataset's palette, else VOC's.
  """
  meta = checkpointing.read_meta(checkpoint)
  if meta.get('colors'):
    return data_lib.full_palette(meta['colors'])
  try:
    return np.asarray(data_lib.dataset_info(config).palette, np.uint8)
  except (OSError, ValueError):
    return data_lib.voc_palette()
