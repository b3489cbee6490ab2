"""Exports a jaxseg model: PyTorch-layout weights, or a StableHLO program that runs without jaxseg.

  jaxseg export --checkpoint DIR --output FILE.safetensors
  jaxseg export --checkpoint WORKDIR --format stablehlo --size 375,500 --output model.jaxexport

StableHLO (`--format stablehlo`, or an output ending in .jaxexport): DIR is a
training workdir or a converted checkpoint; see `jaxseg.deploy.stablehlo` for
the artifact's interface and `jaxseg/deploy/stablehlo_loader.py` to run it.

PyTorch layout:

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


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.replace('x', ',').split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected H,W (e.g. 375,500), got {text!r}') from None
  return h, w


def main(argv=None, prog=None) -> int:
  p = argparse.ArgumentParser(
    prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--checkpoint', required=True, help='checkpoint directory (or training workdir)')
  p.add_argument('--output', required=True, help='FILE.safetensors / .npz, or FILE.jaxexport')
  p.add_argument(
    '--format',
    choices=['torch', 'stablehlo'],
    default=None,
    help='default: stablehlo for a .jaxexport output, else torch',
  )
  p.add_argument('--size', type=_size, default=None, help='stablehlo: the input H,W')
  p.add_argument(
    '--returns',
    choices=['logits', 'classes'],
    default='logits',
    help='stablehlo: float32 logits (N, H, W, C) or the int32 class map (N, H, W)',
  )
  p.add_argument(
    '--platforms', default='', help='stablehlo: e.g. cpu,cuda,tpu (default: this machine)'
  )
  args = p.parse_args(argv)
  fmt = args.format or ('stablehlo' if args.output.endswith('.jaxexport') else 'torch')
  if fmt == 'stablehlo':
    from jaxseg.deploy import stablehlo

    platforms = tuple(x for x in args.platforms.split(',') if x) or None
    meta = stablehlo.export_checkpoint(
      args.checkpoint, args.output, input_size=args.size, returns=args.returns, platforms=platforms
    )
    h, w = meta['input_size']
    print(
      f'wrote {args.output} (+ .json): {meta.get("model", "model")} as StableHLO for '
      f'{", ".join(meta["platforms"])}, input uint8 (N, {h}, {w}, 3), output {meta["output"]} '
      f'({meta["num_classes"]} classes)'
    )
    return 0
  if args.size or args.platforms or args.returns != 'logits':
    p.error('--size, --returns and --platforms apply to --format stablehlo only.')
  sd = export_checkpoint(args.checkpoint, args.output)
  print(
    f'wrote {args.output}: {len(sd)} tensors in the PyTorch layout of {checkpoint_metadata(args.checkpoint)["name"]}'
  )
  return 0


run = main  # `jaxseg export`

if __name__ == '__main__':
  sys.exit(main(prog='python -m jaxseg.weights.export'))
