"""Generated dataset trees in the official layouts, for benchmarking preparation and the pipeline.

No real data can be downloaded here, so `jaxseg benchmark --pipeline --pipeline-generate N`
writes N examples drawn by `jaxseg.data.synthetic` (textured, noisy images:
they compress worse than photos, so PNG decoding is not flattered) at the
dataset's real image size, in the layout its builder reads:

  cityscapes  leftImg8bit/{train,val}/bench/bench_<seq>_000019_leftImg8bit.png and
              gtFine/.../bench_<seq>_000019_gtFine_labelIds.png, 1024x2048, label ids
              spread over Cityscapes' 34 ids (void ids included)
  folder      images/<i>.jpg and masks/<i>.png (index PNGs) with classes.txt

Cityscapes gets n training examples and one val example; a folder gets n (its val split drawn from them).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxseg.data import synthetic

# Cityscapes label ids the generated classes map to: road, sidewalk, building, car, person,
# vegetation, sky and the void id 0.
_CITYSCAPES_IDS = np.array([0, 7, 8, 11, 26, 24, 21, 23], np.uint8)


def _example(i: int, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  ex = synthetic.generate_example(0, 'train', i, size=size, num_classes=num_classes)
  return ex['image'], ex['label']


def cityscapes_tree(root: str, n: int, size: tuple[int, int] = (1024, 2048)) -> str:
  """Writes a Cityscapes-layout tree of n train and 1 val examples under `root`; returns root."""
  for split, count in (('train', n), ('val', 1)):
    img_dir = os.path.join(root, 'leftImg8bit', split, 'bench')
    gt_dir = os.path.join(root, 'gtFine', split, 'bench')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    for i in range(count):
      image, label = _example(i + (0 if split == 'train' else n), size, len(_CITYSCAPES_IDS))
      ids = np.where(label == 255, 0, _CITYSCAPES_IDS[np.minimum(label, 7)])
      stem = f'bench_{i:06d}_000019'
      Image.fromarray(image).save(os.path.join(img_dir, f'{stem}_leftImg8bit.png'))
      Image.fromarray(ids.astype(np.uint8), mode='L').save(
        os.path.join(gt_dir, f'{stem}_gtFine_labelIds.png')
      )
  return root


def folder_tree(root: str, n: int, size: tuple[int, int] = (256, 256), num_classes: int = 6) -> str:
  """Writes a folder-dataset tree of n JPEG images with index-PNG masks and classes.txt."""
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  os.makedirs(os.path.join(root, 'masks'), exist_ok=True)
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('\n'.join(synthetic.class_names(num_classes)) + '\n')
  for i in range(n):
    image, label = _example(i, size, num_classes)
    Image.fromarray(image).save(os.path.join(root, 'images', f'{i:05d}.jpg'), quality=90)
    Image.fromarray(label, mode='L').save(os.path.join(root, 'masks', f'{i:05d}.png'))
  return root


TREES = {'cityscapes': cityscapes_tree, 'folder': folder_tree}
