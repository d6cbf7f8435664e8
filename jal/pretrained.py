"""Loading torchvision ResNet-18 weights into `jal.resnet.ResNet18`.

A torchvision state dict (`.npz`, `.safetensors`, or `.pth`/`.pt` when torch
is installed) is converted onto a template of flax variables, e.g. the output
of `ResNet18(...).init(...)`:

  conv weights  [o, i, kh, kw] (OIHW) -> kernel [kh, kw, i, o] (HWIO)
  fc.weight     [out, in]             -> fc/kernel [in, out]
  bn.weight / bn.bias                 -> params scale / bias
  bn.running_mean / running_var       -> batch_stats mean / var
  *.num_batches_tracked               -> ignored

Two template tensors may deliberately be kept instead of loaded:
  * stem='cifar': torchvision's conv1 is a 7x7 stride-2 filter bank designed
    for 224px images; the CIFAR stem is a 3x3 stride-1 conv. Rather than
    resample (which changes what the filters respond to), we keep the
    template's freshly initialised 3x3 conv1. bn1 and everything after it
    are loaded.
  * A classifier whose number of classes differs from the state dict's (1000)
    keeps the template's freshly initialised fc (standard fine-tuning).
Both cases are logged.

The conversion works on one model's variables; for a vmapped ensemble,
convert each member (`jax.tree.map(lambda a: a[m], variables)`) and re-stack.
The loop takes the loaded tensors as `overrides` of every member's own
initialisation.
"""

import functools
import os
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from jal import resnet
from jal import train

StateDict = dict[str, np.ndarray]
Variables = dict[str, Any]

STEMS = resnet.STEMS
_COLLECTIONS = ('params', 'batch_stats')
_BN_NAMES = {
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def load_state_dict(path: str) -> StateDict:
  """Reads a torchvision-format state dict as numpy arrays.

  Args:
    path: a `.npz`, `.safetensors`, `.pth` or `.pt` file (the last two need
      torch to be importable).

  Returns:
    A dict from torchvision parameter names to numpy arrays.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'pretrained weights: no such file: {path}')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  if ext == '.safetensors':
    try:
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          f'pretrained weights: reading {path} needs the '
          '`safetensors` package (pip install safetensors)'
      ) from None
    return dict(st_numpy.load_file(path))
  if ext in ('.pth', '.pt'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          f'pretrained weights: reading {path} needs torch; '
          'install torch or convert the file to .npz or '
          '.safetensors'
      ) from None
    sd = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(sd, dict) and 'state_dict' in sd:
      sd = sd['state_dict']
    return {k: v.detach().cpu().numpy() for k, v in sd.items() if isinstance(v, torch.Tensor)}
  raise ValueError(
      f'pretrained weights: unsupported file extension {ext!r} '
      f'for {path}; expected .npz, .safetensors, .pth or .pt'
  )


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
  """Maps a flax leaf (collection, module path..., leaf) to a torchvision key.

  E.g. ('params', ('layer2_0', 'downsample_conv', 'kernel')) ->
  'layer2.0.downsample.0.weight'.
  """

  def fail():
    return ValueError(
        'pretrained weights: cannot map flax variable '
        f'{collection}/{"/".join(path)} to a torchvision name'
    )

  *modules, leaf = path
  if not modules:
    raise fail()
  prefix = []
  if modules[0].startswith('layer') and len(modules) == 2:
    stage, _, block = modules[0][len('layer') :].partition('_')
    prefix = [f'layer{stage}', block]
    modules = modules[1:]
  if len(modules) != 1:
    raise fail()
  module = modules[0]
  module = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(module, module)

  if collection == 'params' and leaf == 'kernel':
    torch_leaf = 'weight'
  elif collection == 'params' and leaf == 'bias' and module == 'fc':
    torch_leaf = 'bias'
  elif (collection, leaf) in _BN_NAMES:
    torch_leaf = _BN_NAMES[(collection, leaf)]
  else:
    raise fail()
  return '.'.join(prefix + [module, torch_leaf])


def _to_flax_layout(x: np.ndarray) -> np.ndarray:
  """Conv OIHW -> HWIO, dense [out, in] -> [in, out], vectors unchanged."""
  if x.ndim == 4:
    return np.transpose(x, (2, 3, 1, 0))
  if x.ndim == 2:
    return x.T
  return x


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Inverse of `_to_flax_layout` on shapes (for error messages)."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _check_keys(state_dict: StateDict, expected: set[str]) -> None:
  """Raises a one-line ValueError on missing or unexpected keys."""
  present = {k for k in state_dict if not k.endswith('num_batches_tracked')}
  missing = sorted(expected - present)
  unexpected = sorted(present - expected)
  msgs = []
  if missing:
    more = f' (+{len(missing) - 5} more)' if len(missing) > 5 else ''
    msgs.append(f'missing keys {missing[:5]}{more}')
  if unexpected:
    more = f' (+{len(unexpected) - 5} more)' if len(unexpected) > 5 else ''
    msgs.append(f'unexpected keys {unexpected[:5]}{more}')
  if msgs:
    raise ValueError('pretrained weights: ' + '; '.join(msgs))


def _keep_template(
    key: str, value: np.ndarray, template: np.ndarray, *, stem: str, fc_out: int
) -> bool:
  """Whether `key` deliberately keeps the template tensor (cifar conv1, fc)."""
  if key == 'conv1.weight' and stem == 'cifar':
    o, i, kh, kw = _torch_shape(template.shape)
    if (kh, kw) != (3, 3) or value.shape[:2] != (o, i):
      raise ValueError(
          f"pretrained weights: stem='cifar' expects a 3x3 "
          f'conv1 with {(o, i)} out/in channels, got template '
          f'{(o, i, kh, kw)} and {key} {tuple(value.shape)}'
      )
    return True
  if key.startswith('fc.') and value.shape[0] != fc_out:
    want = _torch_shape(template.shape)
    if key == 'fc.weight' and value.shape[1:] != want[1:]:
      raise ValueError(
          f'pretrained weights: {key} has shape {tuple(value.shape)}, expected (*, {want[1]})'
      )
    return True
  return False


def convert_torchvision_resnet18(
    state_dict: StateDict, variables: Variables, *, stem: str
) -> Variables:
  """Copies a torchvision ResNet-18 state dict onto flax variables.

  Args:
    state_dict: torchvision names -> arrays (torch layout), as returned by
      `load_state_dict`.
    variables: template `{'params': ..., 'batch_stats': ...}` of a single
      `jal.resnet.ResNet18` (not a vmapped ensemble); provides structure,
      shapes and dtypes, and the tensors kept as initialised (see module doc).
    stem: 'cifar' or 'imagenet', the stem of the template model.

  Returns:
    New variables with the same structure and dtypes as `variables`.
  """
  if stem not in STEMS:
    raise ValueError(f'pretrained weights: unknown stem {stem!r}, expected one of {STEMS}')
  variables = flax.core.unfreeze(variables)
  extra = sorted(set(variables) - set(_COLLECTIONS))
  if extra or 'params' not in variables:
    raise ValueError(
        'pretrained weights: variables must hold exactly '
        f'{_COLLECTIONS}, got {sorted(variables)}'
    )

  leaves = {}  # (collection, path) -> (torch key, template leaf)
  for col in _COLLECTIONS:
    flat = flax.traverse_util.flatten_dict(variables.get(col, {}))
    for path, leaf in flat.items():
      leaves[(col, path)] = (_torch_name(col, path), leaf)
  _check_keys(state_dict, {key for key, _ in leaves.values()})

  fc_bias = variables['params']['fc']['bias']
  if fc_bias.ndim != 1:
    raise ValueError(
        'pretrained weights: variables look batched (fc/bias '
        f'has shape {fc_bias.shape}); convert one member at a '
        'time'
    )
  fc_out = fc_bias.shape[0]
  kept = []
  new = {col: {} for col in _COLLECTIONS if col in variables}
  for (col, path), (key, template) in leaves.items():
    value = np.asarray(state_dict[key])
    if _keep_template(key, value, template, stem=stem, fc_out=fc_out):
      kept.append(key)
      new[col][path] = template
      continue
    want = _torch_shape(template.shape)
    if tuple(value.shape) != want:
      raise ValueError(f'pretrained weights: {key} has shape {tuple(value.shape)}, expected {want}')
    new[col][path] = jnp.asarray(_to_flax_layout(value), dtype=template.dtype)

  if kept:
    logging.info(
        'pretrained weights: kept freshly initialised %s '
        '(stem=%r, %d classes vs %d in the state dict)',
        sorted(kept),
        stem,
        fc_out,
        state_dict['fc.bias'].shape[0],
    )
  logging.info('pretrained weights: loaded %d tensors into ResNet-18', len(leaves) - len(kept))
  return {col: flax.traverse_util.unflatten_dict(flat) for col, flat in new.items()}


def load_pretrained(path: str, variables: Variables, *, stem: str) -> Variables:
  """`load_state_dict(path)` then `convert_torchvision_resnet18` onto it."""
  logging.info('pretrained weights: reading %s', path)
  return convert_torchvision_resnet18(load_state_dict(path), variables, stem=stem)


def variable_shapes(model, sample_x, spec):
  """The model's variables as ShapeDtypeStructs, without running an initialiser."""
  return jax.eval_shape(
      functools.partial(model.init, train=False),
      jax.random.PRNGKey(0),
      train.prepare_inputs(sample_x, spec),
  )


def overrides(model, model_config, sample_x, spec):
  """The leaves loaded from `model_config.pretrained_path`, or None.

  Returns `{(collection, *path): array}` for every tensor the converter took
  from the state dict; tensors it kept as initialised (the head when the
  class count differs, the CIFAR-stem conv1) are left out, so each ensemble
  member initialises them from its own key.
  """
  path = model_config.get('pretrained_path')
  if not path:
    return None
  # Only shapes matter (kept leaves are left out), so no initialiser is run or compiled.
  shapes = variable_shapes(model, sample_x, spec)
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  loaded = load_pretrained(path, template, stem=model_config.get('stem', 'cifar'))
  out = {}
  for col, tree in loaded.items():
    fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(template[col]))
    for p, leaf in flax.traverse_util.flatten_dict(tree).items():
      if leaf is not fresh[p]:
        out[(col, *p)] = np.asarray(leaf)
  return out
