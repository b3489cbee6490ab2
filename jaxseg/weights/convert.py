"""Converts a PyTorch checkpoint into a jaxseg checkpoint directory.

  jaxseg convert --model NAME --input FILE --output DIR \
      [--num_classes N] [--model_kwargs JSON] [--normalize imagenet|caffe] [--overwrite]

NAME is a registered model or backbone with a PyTorch layout (`fcn8s`,
`vgg16`, ...); FILE a .pth/.pt (read with torch.load(weights_only=True), so a
file needing arbitrary unpickling is refused; needs `pip install 'jaxseg[torch]'`),
.safetensors or .npz (neither needs PyTorch). The conversion is strict: any
missing, unused or mis-shaped key is an error naming the key and both shapes;
only the layers a backbone variant leaves out by design (its ImageNet
classifier, `Layout.omitted`) are skipped. With `--num_classes N` different
from the checkpoint's class count, the class-count-dependent layers (the
classifier) are freshly initialised (seed 0) and listed; nothing else may
differ. `--normalize caffe` records that the weights expect BGR 0-255 minus
the Caffe mean (pytorch-fcn's *_from_caffe.pth).

DIR then holds an orbax checkpoint of {'params', 'batch_stats'} and a JSON
sidecar (see jaxseg.weights.pretrained), read by
`jaxseg.weights.load_checkpoint(DIR) -> (model, variables)`.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from jaxseg.weights.core import build, from_torch, get_layout, load_state_dict
from jaxseg.weights.pretrained import load_pretrained, save_checkpoint


def parse_args(argv=None, prog=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
  p.add_argument(
    '--model', required=True, help='registered model or backbone name (e.g. fcn8s, vgg16)'
  )
  p.add_argument('--input', required=True, help='.pth/.pt, .safetensors or .npz state dict')
  p.add_argument('--output', required=True, help='checkpoint directory to write')
  p.add_argument('--num_classes', type=int, default=None, help='default: read from the checkpoint')
  p.add_argument('--model_kwargs', default='{}', help='JSON object of extra constructor arguments')
  p.add_argument('--normalize', default='imagenet', choices=('imagenet', 'caffe'))
  p.add_argument('--overwrite', action='store_true', help='replace an existing output directory')
  return p.parse_args(argv)


def convert_checkpoint(
  model: str,
  input_path: str,
  output: str,
  *,
  num_classes: int | None = None,
  model_kwargs: dict | None = None,
  normalize: str = 'imagenet',
  overwrite: bool = False,
) -> tuple[str, str]:
  """Converts `input_path` for `model` into checkpoint `output`; returns (directory, summary)."""
  kwargs = dict(model_kwargs or {})
  if 'num_classes' in kwargs:
    raise ValueError('pass num_classes as --num_classes, not in --model_kwargs')
  layout = get_layout(model)
  summary = ''
  if layout.kind == 'backbone':
    if num_classes is not None:
      raise ValueError(f'{model!r} is a backbone: it has no classifier, drop --num_classes.')
    variables = from_torch(model, input_path, **kwargs)
  else:
    sd = load_state_dict(input_path)
    key = layout.num_classes_key
    ckpt_classes = int(sd[key].shape[0]) if key and key in sd else None
    if num_classes is None:
      if ckpt_classes is None:
        raise ValueError(f'cannot read the class count of {input_path}; pass --num_classes.')
      num_classes = ckpt_classes
    if ckpt_classes is None or ckpt_classes == num_classes:
      variables = from_torch(model, sd, num_classes=num_classes, **kwargs)
    else:
      module = build(model, layout, num_classes=num_classes, **kwargs)
      fresh = jax.jit(lambda x: module.init(jax.random.key(0), x, train=False))(
        jnp.zeros(layout.input_shape, jnp.float32)
      )
      variables, report = load_pretrained(model, fresh, sd, num_classes, **kwargs)
      summary = str(report)
  directory = save_checkpoint(
    output,
    model,
    variables,
    num_classes=num_classes,
    model_kwargs=kwargs,
    source=str(input_path),
    normalize=normalize,
    overwrite=overwrite,
  )
  n = sum(v.size for v in jax.tree_util.tree_leaves(variables.get('params', {})))
  head = f'wrote {directory}: {model}' + (f' ({num_classes} classes)' if num_classes else '')
  return directory, '\n'.join(s for s in (f'{head}, {n:,} parameters', summary) if s)


def main(argv=None, prog=None) -> int:
  args = parse_args(argv, prog)
  try:
    kwargs = json.loads(args.model_kwargs)
  except json.JSONDecodeError as e:
    raise SystemExit(f'--model_kwargs is not valid JSON: {e}') from None
  if not isinstance(kwargs, dict):
    raise SystemExit(f'--model_kwargs must be a JSON object, got {args.model_kwargs!r}')
  _, summary = convert_checkpoint(
    args.model,
    args.input,
    args.output,
    num_classes=args.num_classes,
    model_kwargs=kwargs,
    normalize=args.normalize,
    overwrite=args.overwrite,
  )
  print(summary)
  return 0


run = main  # `jaxseg convert`

if __name__ == '__main__':
  sys.exit(main(prog='python -m jaxseg.weights.convert'))
