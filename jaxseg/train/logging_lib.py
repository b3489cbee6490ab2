"""Progress bars, console messages and metric files (JSONL + TensorBoard event files).

On a terminal the loop shows a tqdm bar; without one (a log file, nohup, CI)
it prints `progress_line`s through `info` instead. `MetricWriter` creates its
files at the first record, so a run that stops before its first step leaves
none behind.
"""

from __future__ import annotations

import json
import math
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


def format_duration(seconds: float) -> str:
  """H:MM:SS ('?' when unknown)."""
  if not math.isfinite(seconds) or seconds < 0:
    return '?'
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}'


def progress_line(
  step: int, total: int, *, loss: float, lr: float, images_per_s: float, eta_s: float
) -> str:
  """One plain progress line: step/total, loss, learning rate, throughput and time left."""
  return (
    f'train step {step}/{total}  loss {loss:.4f}  lr {lr:.3g}  {images_per_s:.1f} images/s  '
    f'ETA {format_duration(eta_s)}'
  )


def _jsonable(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tb`.

  Both are created at the first record (nothing is written before).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self._tb = None
    self._jsonl = None
    self._opened = False

  def _open(self) -> None:
    if self._opened:
      return
    self._opened = True
    self._jsonl = open(os.path.join(self.workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(self.workdir, 'tb'))
    except ImportError:  # TensorBoard files are optional; the JSONL log is always written
      self._tb = None

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    self._open()
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
    if not self.enabled:
      return
    self._open()
    if self._tb is not None:
      self._tb.add_image(tag, np.asarray(image_hwc_uint8), int(step), dataformats='HWC')

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
