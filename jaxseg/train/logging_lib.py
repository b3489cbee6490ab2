"""Progress bars, console messages and metric files (JSONL + TensorBoard event files)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from tqdm.auto import tqdm


def info(msg: str) -> None:
  print(f'[jaxseg {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def progress(iterable, *, desc: str, enabled: bool = True, **kwargs):
  """A tqdm bar (ETA, rate) that degrades to a plain iterator with set_postfix when disabled."""
  return tqdm(iterable, desc=desc, disable=not enabled, dynamic_ncols=True, **kwargs)


def _jsonable(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tb`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))
    except ImportError:  # TensorBoard files are optional; the JSONL log is always written
      self._tb = None

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {
      'step': int(step),
      'time': time.time(),
      **{k: _jsonable(v) for k, v in values.items()},
    }
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, float(v), int(step))

  def image(self, step: int, tag: str, image_hwc_uint8) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_image(tag, np.asarray(image_hwc_uint8), int(step), dataformats='HWC')

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
