"""Strict conversion between PyTorch state dicts and Flax variables.

A *layout* says, for one registered model or backbone, which PyTorch key holds
each Flax variable: `key_fn(module_path) -> torch module prefix`. The leaf
suffix and the array transform follow from the Flax leaf:

  params/kernel (4-D)   <- `weight` OIHW -> HWIO (also ConvTranspose2d (in, out, kh, kw)
                           -> (kh, kw, out, in), the layout of jaxseg.layers.ConvTranspose2d)
  params/kernel (2-D)   <- `weight` (out, in) -> (in, out)   (Linear)
  params/bias           <- `bias`
  params/scale          <- `weight`                          (BatchNorm)
  batch_stats/mean, var <- `running_mean`, `running_var`

Every Flax variable must be found with the right shape and every PyTorch key
must be used, except `num_batches_tracked` counters and the keys of layers the
built variant deliberately leaves out (`Layout.omitted`: an ImageNet classifier,
MobileNetV2's last 1x1 convolution when the variant stops before it); otherwise
one `WeightsError` lists all missing keys, unused keys and shape mismatches.
Nothing is ever partially loaded.

Files are untrusted: `.pth` is read with `torch.load(weights_only=True)` only,
`.npz` without pickle, and a file that is not a state dict is reported as such
(its size and first bytes, or the type of object it holds).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

LEAF_SUFFIX = {
  ('params', 'kernel'): 'weight',
  ('params', 'bias'): 'bias',
  ('params', 'scale'): 'weight',
  ('batch_stats', 'mean'): 'running_mean',
  ('batch_stats', 'var'): 'running_var',
}


class WeightsError(ValueError):
  """A state dict does not fit the model: lists every missing, unused or mis-shaped key."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one registered model/backbone maps onto a PyTorch state dict.

  Attributes:
    key_fn: Flax module path (tuple of names) -> PyTorch module prefix.
    kind: 'model' or 'backbone' (which registry builds it).
    input_shape: example NHWC input used (with jax.eval_shape, no compute) to get the variable shapes.
    preprocess: optional fn(state_dict, target_flat_shapes) -> state_dict bringing a
      source file into canonical form (e.g. VGG Linear fc6 -> 7x7 conv weights).
    omitted: optional fn(constructor_kwargs) -> PyTorch modules (Conv2d, BatchNorm2d, Linear
      names such as 'fc' or 'features.18.0') of the reference network that the module built with
      these kwargs deliberately leaves out; a checkpoint's parameters and buffers of these modules
      are skipped and reported, never an error. See `omitted_layers`.
    num_classes_key: PyTorch key whose first dimension is num_classes (to infer it).
    description: the PyTorch implementation whose layout this is.
    postprocess: optional fn(state_dict) -> state_dict applied by `export_state_dict`, undoing
      `preprocess` where the source layout differs from Flax's (e.g. fc6 7x7 conv
      weights back into torchvision's Linear).
  """

  key_fn: Callable[[tuple[str, ...]], str]
  kind: str = 'model'
  input_shape: tuple[int, ...] = (1, 224, 224, 3)
  preprocess: Callable[[dict, dict], dict] | None = None
  omitted: Callable[[Mapping[str, Any]], Sequence[str]] | None = None
  num_classes_key: str | None = None
  description: str = ''
  postprocess: Callable[[dict], dict] | None = None

  def omitted_layers(self, kwargs: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """PyTorch modules the module built with `kwargs` leaves out (sorted, no duplicates)."""
    if self.omitted is None:
      return ()
    return tuple(sorted(set(self.omitted(dict(kwargs or {})))))


# The parameters and buffers of the PyTorch layers jaxseg maps (Conv2d, BatchNorm2d, Linear).
TORCH_LEAVES = frozenset(('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'))


def in_layers(key: str, layers: Sequence[str]) -> bool:
  """Whether `key` is a parameter or buffer of one of `layers` ('fc.weight' of 'fc', not 'fc.x.y')."""
  module, _, leaf = key.rpartition('.')
  return leaf in TORCH_LEAVES and module in layers


def is_counter(key: str) -> bool:
  """BatchNorm's `num_batches_tracked`: a step counter, not a weight (Flax keeps none)."""
  return key.endswith('num_batches_tracked')


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, layout: Layout) -> None:
  if name in LAYOUTS:
    raise ValueError(f'weights layout {name!r} is already registered.')
  LAYOUTS[name] = layout


def get_layout(name: str) -> Layout:
  from jaxseg.registry import _load_all

  _load_all()
  _load_layouts()
  if name not in LAYOUTS:
    raise ValueError(
      f'No PyTorch layout is known for {name!r}. Known: {", ".join(sorted(LAYOUTS))}.'
    )
  return LAYOUTS[name]


_LAYOUTS_LOADED = False


def _load_layouts() -> None:
  global _LAYOUTS_LOADED
  if _LAYOUTS_LOADED:
    return
  _LAYOUTS_LOADED = True
  import importlib
  import pkgutil

  import jaxseg.weights as pkg

  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name.startswith('layouts_'):
      importlib.import_module(f'jaxseg.weights.{info.name}')


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # torch.Tensor, without importing torch
    v = v.detach().cpu()
    if str(v.dtype) == 'torch.bfloat16':
      v = v.float()
    return v.numpy()
  return np.asarray(v)


TORCH_EXTENSIONS = ('.pth', '.pt', '.bin', '.ckpt')
SUPPORTED = '.pth/.pt, .safetensors or .npz'
# What a converted checkpoint directory holds (jaxseg.weights.pretrained writes it).
CHECKPOINT_SIDECAR = 'jaxseg.json'


def _file_summary(path: str) -> str:
  """'1,000 bytes, starting with b'\x8f...'': what was read, for messages about unreadable files."""
  size = os.path.getsize(path)
  if size == 0:
    return 'an empty file (0 bytes)'
  with open(path, 'rb') as f:
    head = f.read(16)
  return f'{size:,} bytes, starting with {head!r}'


def _type_name(obj) -> str:
  t = type(obj)
  name = t.__qualname__ if t.__module__ == 'builtins' else f'{t.__module__}.{t.__qualname__}'
  shape = getattr(obj, 'shape', None)
  return f'{name} of shape {tuple(shape)}' if shape is not None else name


def directory_error(path: str, checkpoints_too: bool = False) -> ValueError:
  """The error for a directory given where a weights file is expected, saying what it holds.

  Args:
    path: the directory.
    checkpoints_too: the caller also reads converted checkpoint directories (with jaxseg.json).
  """
  expected = f'a weights file ({SUPPORTED})'
  if checkpoints_too:
    expected += f' or a converted checkpoint directory (with {CHECKPOINT_SIDECAR}, written by `jaxseg convert`)'
  if os.path.isfile(os.path.join(path, CHECKPOINT_SIDECAR)):
    found = (
      f'it is a jaxseg converted checkpoint ({CHECKPOINT_SIDECAR}), which '
      'jaxseg.weights.init_backbone (config.model.backbone_weights), load_pretrained '
      '(config.model.weights) and load_checkpoint read'
    )
  else:
    names = sorted(os.listdir(path))
    shown = ', '.join(names[:10]) + (f', ... ({len(names)} entries)' if len(names) > 10 else '')
    found = f'it holds {shown}' if names else 'it is empty'
  return ValueError(f'{path} is a directory, but {expected} is expected; {found}.')


def _read_torch_file(path: str):
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      f'reading {path} needs PyTorch, which is not installed with jaxseg by default: pip install '
      "'jaxseg[torch]' (or pip install torch). .safetensors and .npz files need no PyTorch."
    ) from e
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle.UnpicklingError, EOFError, RuntimeError (bad zip), ...
    # Only the refused object's name is taken from PyTorch's message, and the cause is not chained,
    # because that message advises weights_only=False, i.e. running whatever the file names.
    found = re.search(r'Unsupported global: GLOBAL ([\w.]{1,200})', str(e))
    if found:
      msg = (
        f'{path} is not a plain PyTorch state dict: it names the Python object '
        f'{found.group(1)!r}, which torch.load(weights_only=True) does not load; jaxseg never '
        'unpickles arbitrary objects. Expected tensors only, as torch.save(model.state_dict(), '
        'path) or a .safetensors file holds them.'
      )
    else:
      msg = (
        f'{path} is not a PyTorch state dict: torch.load(weights_only=True) cannot read it '
        f'({_file_summary(path)}).'
      )
    raise WeightsError(msg) from None


def _read_safetensors(path: str) -> dict:
  from safetensors.numpy import load_file

  try:
    return load_file(path)
  except Exception:  # safetensors_rust.SafetensorError, OSError, ...
    raise WeightsError(
      f'{path} is not a safetensors file: it cannot be read as one ({_file_summary(path)}).'
    ) from None


def _read_npz(path: str) -> dict:
  try:
    z = np.load(path, allow_pickle=False)
  except ValueError:  # not a zip or .npy file: numpy would have to unpickle it
    raise WeightsError(
      f'{path} is not an .npz archive of arrays ({_file_summary(path)}); jaxseg never unpickles '
      '.npz contents (allow_pickle=False).'
    ) from None
  except Exception:  # zipfile.BadZipFile, EOFError, ...
    raise WeightsError(f'{path} is not an .npz archive ({_file_summary(path)}).') from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise WeightsError(
      f'{path} is not a state dict: it holds a single array of shape {z.shape}, not named arrays.'
    )
  with z:
    out = {}
    for k in z.files:
      try:
        out[k] = z[k]
      except ValueError:  # an object array: its values are pickled Python objects
        raise WeightsError(
          f'{path} is not a state dict of arrays: {k!r} holds pickled Python objects, which '
          'jaxseg never loads (allow_pickle=False).'
        ) from None
    return out


def load_state_dict(source) -> dict[str, np.ndarray]:
  """Reads a state dict from a mapping or a file (.pth/.pt, .safetensors, .npz) as NumPy arrays.

  `.pth` files are read with `torch.load(..., weights_only=True)` (PyTorch is needed for them
  only: `pip install 'jaxseg[torch]'`): a file that needs arbitrary unpickling is refused, never
  executed. A checkpoint that wraps the weights under 'state_dict', 'model_state_dict' or 'model'
  is unwrapped, and DataParallel's 'module.' prefix dropped.

  Raises:
    WeightsError: the file is not a state dict (unreadable, or it holds something other than a
      mapping from names to arrays); the message says what was read.
    FileNotFoundError: no such file. A directory is a ValueError naming what it holds.
    ImportError: a .pth file without PyTorch installed.
  """
  where = 'the state dict'
  if isinstance(source, Mapping):
    sd = source
  else:
    path = where = os.fspath(source)
    if os.path.isdir(path):
      raise directory_error(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'weights file not found: {path}')
    ext = os.path.splitext(path)[1].lower()
    if ext in TORCH_EXTENSIONS:
      sd = _read_torch_file(path)
    elif ext == '.safetensors':
      sd = _read_safetensors(path)
    elif ext == '.npz':
      sd = _read_npz(path)
    else:
      raise ValueError(f'unsupported weights file {path!r}: expected {SUPPORTED}.')
    if not isinstance(sd, Mapping):
      raise WeightsError(
        f'{path} is not a PyTorch state dict: it holds a {_type_name(sd)}, not a mapping from '
        'parameter names to tensors.'
      )
  for wrapper in ('state_dict', 'model_state_dict', 'model'):
    if wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = sd[wrapper]
  out, bad = {}, []
  for k, v in sd.items():
    k = str(k)
    if k.startswith('module.'):  # DataParallel prefix
      k = k[len('module.') :]
    try:
      arr = None if isinstance(v, (Mapping, str, bytes)) else _to_numpy(v)
    except Exception:  # a list of tensors, a custom object, ...
      arr = None
    if arr is None or arr.dtype.kind in 'OUS':  # objects and strings are not weights
      bad.append(f'{k!r} holds a {_type_name(v)}')
      continue
    out[k] = arr
  if bad:
    more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
    raise WeightsError(f'{where} is not a state dict of tensors: {"; ".join(bad[:5])}{more}.')
  return out


def _torch_to_flax(arr: np.ndarray, flax_ndim: int) -> np.ndarray:
  if flax_ndim == 4 and arr.ndim == 4:
    return arr.transpose(2, 3, 1, 0)
  if flax_ndim == 2 and arr.ndim == 2:
    return arr.T
  return arr


def _flax_to_torch(arr: np.ndarray) -> np.ndarray:
  if arr.ndim == 4:
    return arr.transpose(3, 2, 0, 1)
  if arr.ndim == 2:
    return arr.T
  return arr


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  return _flax_to_torch(np.empty(flax_shape, np.int8)).shape


def flat_key_map(target: Mapping, key_fn: Callable) -> dict[tuple, str]:
  """{flax path (collection, *modules, leaf): torch key} for every variable of `target`."""
  out = {}
  for path in flax.traverse_util.flatten_dict(flax.core.unfreeze(target)):
    collection, *modules, leaf = path
    suffix = LEAF_SUFFIX.get((collection, leaf))
    if suffix is None:
      raise ValueError(f'no PyTorch counterpart for Flax variable {"/".join(path)}')
    out[path] = f'{key_fn(tuple(modules))}.{suffix}'
  return out


# Key-function building blocks shared by the layouts_*.py modules.


def dotted_key_fn(*wrappers: str) -> Callable[[tuple[str, ...]], str]:
  """A key function for layouts whose PyTorch names are the Flax module names joined with '.'.

  Args:
    *wrappers: Flax modules the PyTorch model has no counterpart for (e.g. 'backbone', when the
      PyTorch model keeps its encoder layers at the top level as pytorch-fcn does).

  Returns:
    fn(path) -> path without `wrappers`, joined with '.': ('backbone', 'conv1_1') -> 'conv1_1'.
  """

  def key_fn(path: tuple[str, ...]) -> str:
    return '.'.join(p for p in path if p not in wrappers)

  return key_fn


def conv_bn_key(module: str, conv: str, bn: str) -> str:
  """PyTorch prefix of one half of a convolution + BatchNorm2d pair.

  jaxseg's conv + BN blocks (jaxseg.layers.ConvBNReLU and the models' own) name the convolution
  'conv' ('deconv' for a transposed one) and the normalisation 'bn'.

  Args:
    module: the Flax sub-module name, 'conv', 'deconv' or 'bn'.
    conv: PyTorch prefix of the convolution (e.g. 'aspp.conv1').
    bn: PyTorch prefix of the BatchNorm2d (e.g. 'aspp.bn1').

  Returns:
    `conv` or `bn`.

  Raises:
    KeyError: `module` is neither half of the pair.
  """
  if module in ('conv', 'deconv'):
    return conv
  if module == 'bn':
    return bn
  raise KeyError(f'expected a conv or bn sub-module, got {module!r} (under {conv!r})')


def sequential_key(prefix: str, module: str, conv_index: int = 0) -> str:
  """PyTorch prefix of a convolution + BatchNorm2d pair held in a torch Sequential.

  As in torchvision's Conv2dNormActivation or `Sequential(Conv2d, BatchNorm2d, ReLU)`: the
  convolution is item `conv_index` of the Sequential at `prefix`, the BatchNorm2d the next item.
  ('conv1_1', 'bn') -> 'conv1_1.1'; ('convs.4', 'conv', 1) -> 'convs.4.1'.
  """
  return conv_bn_key(module, f'{prefix}.{conv_index}', f'{prefix}.{conv_index + 1}')


def convert_state_dict(
  state_dict: Mapping[str, np.ndarray],
  target: Mapping,
  layout: Layout,
  name: str = '',
  omitted: Sequence[str] = (),
) -> dict:
  """Builds Flax variables shaped like `target` from a PyTorch-layout state dict.

  Args:
    state_dict: PyTorch keys -> arrays (see `load_state_dict`).
    target: the model's variables, or their shapes from `jax.eval_shape` (`target_shapes`).
    layout: the key map (`get_layout(name)`).
    name: what the error message calls the model.
    omitted: PyTorch modules that `target` deliberately leaves out (`layout.omitted_layers(kwargs)`);
      their parameters and buffers are skipped, any other unused key is an error.

  Returns:
    Variables with `target`'s tree, shapes and dtypes (fresh copies, never views of `state_dict`).

  Raises:
    WeightsError: listing every missing key, shape mismatch and unused key.
  """
  flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  sd = dict(state_dict)
  if layout.preprocess is not None:
    sd = layout.preprocess(sd, flat_target)
  keymap = flat_key_map(target, layout.key_fn)
  missing, mismatched, found = [], [], {}
  for path, tkey in keymap.items():
    want = tuple(flat_target[path].shape)
    if tkey not in sd:
      missing.append(f'{tkey} (for {"/".join(path)}, expected torch shape {_torch_shape(want)})')
      continue
    have = tuple(np.shape(sd[tkey]))
    found[path] = tkey
    if _torch_to_flax(np.empty(have, np.int8), len(want)).shape != want:
      mismatched.append(f'{tkey}: checkpoint has {have}, model expects {_torch_shape(want)}')
  used = set(found.values())
  unused = sorted(
    k for k in sd if k not in used and not is_counter(k) and not in_layers(k, omitted)
  )
  if missing or mismatched or unused:
    lines = [f'State dict does not fit {name or "the model"}:']
    for title, items in (
      ('missing keys', missing),
      ('shape mismatches', mismatched),
      ('unused keys', unused),
    ):
      if items:
        lines.append(f'  {title} ({len(items)}):')
        lines.extend(f'    {s}' for s in items[:50])
        if len(items) > 50:
          lines.append(f'    ... and {len(items) - 50} more')
    raise WeightsError('\n'.join(lines))
  # Converted only once every key fits, so that a refused checkpoint costs no copies.
  out = {}
  for path, tkey in found.items():
    arr = _torch_to_flax(np.asarray(sd[tkey]), len(flat_target[path].shape))
    # A fresh copy: on CPU device_put may alias its source buffer (e.g. a torch tensor's memory),
    # and a later in-place change to the torch module would then alter the Flax variables.
    # (np.array + device_put rather than jnp.array: no per-shape XLA conversion to compile.)
    out[path] = jax.device_put(np.array(arr, dtype=flat_target[path].dtype, order='C', copy=True))
  return flax.traverse_util.unflatten_dict(out)


def export_state_dict(variables: Mapping, layout: Layout) -> dict[str, np.ndarray]:
  """Flax variables -> PyTorch-layout state dict (NumPy arrays), the inverse of `convert_state_dict`.

  BatchNorm layers also get the `num_batches_tracked` counter PyTorch's strict loading expects.
  """
  keymap = flat_key_map(variables, layout.key_fn)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  sd = {}
  for path, tkey in keymap.items():
    # A copy, never a view of the (immutable) JAX buffer that torch.from_numpy could then write into.
    sd[tkey] = np.array(
      _flax_to_torch(np.asarray(jax.device_get(flat[path]))), order='C', copy=True
    )
    if path[0] == 'batch_stats' and path[-1] == 'mean':
      sd[tkey.rsplit('.', 1)[0] + '.num_batches_tracked'] = np.zeros((), np.int64)
  if layout.postprocess is not None:
    sd = layout.postprocess(sd)
  return sd


def build(name: str, layout: Layout, **model_kwargs) -> Any:
  from jaxseg.registry import create_backbone, create_model

  if layout.kind == 'backbone':
    return create_backbone(name, **model_kwargs)
  return create_model(name, **model_kwargs)


def target_shapes(module, input_shape) -> dict:
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(
    lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False)
  )


def from_torch(name: str, state_dict_or_path, **model_kwargs) -> dict:
  """Converts a PyTorch state dict (or file) for registered model/backbone `name` to Flax variables.

  Args:
    name: a registered model or backbone name with a known PyTorch layout.
    state_dict_or_path: a state dict (tensors or arrays) or a .pth/.safetensors/.npz path.
    **model_kwargs: passed to `create_model` / `create_backbone` (e.g. num_classes,
      which is inferred from the checkpoint when omitted). For a backbone they also decide which
      layers of the reference network are left out (`Layout.omitted`), whose keys are skipped.

  Returns:
    `{'params': ..., 'batch_stats': ...}` ready for `model.apply`.
  """
  layout = get_layout(name)
  sd = load_state_dict(state_dict_or_path)
  if layout.kind == 'model' and 'num_classes' not in model_kwargs:
    if layout.num_classes_key is None or layout.num_classes_key not in sd:
      raise ValueError(
        f'from_torch({name!r}): pass num_classes= (it cannot be read from the checkpoint).'
      )
    model_kwargs['num_classes'] = int(sd[layout.num_classes_key].shape[0])
  module = build(name, layout, **model_kwargs)
  omitted = layout.omitted_layers(model_kwargs)
  try:
    return convert_state_dict(sd, target_shapes(module, layout.input_shape), layout, name, omitted)
  except WeightsError as e:
    have = sd.get(layout.num_classes_key) if layout.num_classes_key else None
    if layout.kind == 'model' and have is not None and have.shape[0] != model_kwargs['num_classes']:
      raise WeightsError(
        f'{e}\n  The checkpoint classifier {layout.num_classes_key} is for {have.shape[0]} classes, the model '
        f'for {model_kwargs["num_classes"]}: jaxseg.weights.load_pretrained re-initialises the classifier.'
      ) from None
    raise


def to_torch(name: str, variables: Mapping) -> dict[str, np.ndarray]:
  """Exports Flax variables of `name` to its PyTorch layout (NumPy arrays; wrap with torch.from_numpy)."""
  return export_state_dict(variables, get_layout(name))
