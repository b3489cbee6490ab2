"""Prepares a dataset for training (no download: the data must already be on disk).

  jaxseg prepare --dataset voc --config 2012_aug \
      --manual_dir DIR --data_dir OUT

DIR holds VOCdevkit/VOC2012 and benchmark_RELEASE (or the official archives
VOCtrainval_11-May-2012.tar and benchmark.tgz). Then train with
config.dataset.name = 'voc', config.dataset.config = '2012_aug' and
config.dataset.data_dir = OUT.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm


def prepare_voc(config_name: str, manual_dir: str, data_dir: str | None, *, progress: bool = True):
  """Builds the VOC TFDS dataset; returns the builder (its `.skipped` counts skipped examples)."""
  import tensorflow_datasets as tfds

  from jaxseg.data import voc

  voc.check_manual_dir(manual_dir, config_name)  # before TFDS starts writing anything
  builder = voc.VocSegmentation(config=config_name, data_dir=data_dir or None)
  gen = builder._generate_examples

  def with_progress(items, split):
    items = list(items)
    yield from gen(
      tqdm(items, desc=f'{config_name}/{split}', unit='img', disable=not progress), split
    )

  builder._generate_examples = with_progress  # progress bar around the generator
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    ),
    file_format='array_record',
  )
  return builder


def main(argv=None, prog=None) -> int:
  p = argparse.ArgumentParser(
    prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--dataset', required=True, choices=['voc'])
  p.add_argument('--config', default='2012_aug', choices=['2012', '2012_aug'])
  p.add_argument('--manual_dir', required=True, help='folder with the extracted data or archives')
  p.add_argument(
    '--data_dir', default='', help='TFDS data dir to write (default ~/tensorflow_datasets)'
  )
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()  # the per-split bar of prepare_voc shows the progress
  builder = prepare_voc(args.config, args.manual_dir, args.data_dir)
  for split, info in builder.info.splits.items():
    skipped = dict(builder.skipped.get(split, {}))
    print(f'{split}: {info.num_examples} examples' + (f', skipped {skipped}' if skipped else ''))
  print(f'prepared in {builder.data_dir}')
  return 0


run = main  # `jaxseg prepare`

if __name__ == '__main__':
  sys.exit(main())
