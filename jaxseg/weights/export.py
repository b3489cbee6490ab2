"""Exports a jaxseg checkpoint to a PyTorch-layout state dict.

  jaxseg export --checkpoint DIR --output FILE.safetensors

DIR is a checkpoint written by `jaxseg convert` (or
`jaxseg.weights.save_checkpoint`, e.g. after fine-tuning); its model must have a
PyTorch layout. The file holds the reference implementation's keys and shapes
(OIHW convolutions, running_mean/var, num_batches_tracked; torchvision VGG's fc6/fc7
as Linear weights), so `module.load_state_dict(safetensors.torch.load_file(FILE))`
works in PyTorch. `.npz` output is also accepted. The file is written to a
temporary name and renamed, never left half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import numpy as np

from jaxseg.weights.core import to_torch
from jaxseg.weights.pretrained import checkpoint_metadata, load_checkpoint


def export_checkpoint(checkpoint: str, output: str) -> dict[str, np.ndarray]:
  """Writes the PyTorch-layout state dict of `checkpoint` to `output` (.safetensors or .npz)."""
  ext = os.path.splitext(output)[1].lower()
  if ext not in ('.safetensors', '.npz'):
    raise ValueError(f'output must end in .safetensors or .npz, got {output!r}')
  meta = checkpoint_metadata(checkpoint)
  _, variables = load_checkpoint(checkpoint)
  sd = to_torch(meta['name'], variables)
  sd = {k: np.ascontiguousarray(v) for k, v in sd.items()}
  directory = os.path.dirname(os.path.abspath(output))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}{ext}')
  try:
    if ext == '.safetensors':
      from safetensors.numpy import save_file

      save_file(sd, tmp, metadata={'jaxseg_model': meta['name'], 'format': 'pt'})
    else:
      np.savez(tmp, **sd)
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return sd


def main(argv=None, prog=None) -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
  p.add_argument('--checkpoint', required=True, help='jaxseg checkpoint directory')
  p.add_argument('--output', required=True, help='FILE.safetensors (or .npz)')
  args = p.parse_args(argv)
  sd = export_checkpoint(args.checkpoint, args.output)
  print(
    f'wrote {args.output}: {len(sd)} tensors in the PyTorch layout of {checkpoint_metadata(args.checkpoint)["name"]}'
  )
  return 0


run = main  # `jaxseg export`

if __name__ == '__main__':
  sys.exit(main(prog='python -m jaxseg.weights.export'))
