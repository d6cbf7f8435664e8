"""Tests for jal.pretrained against an independent numpy ResNet-18.

A random state dict with torchvision's exact names and shapes is generated,
saved, loaded and converted; the flax model must then reproduce a float64
numpy forward pass written here directly on the torch-layout (NCHW/OIHW)
arrays. Templates are built from `jax.eval_shape` + numpy to avoid compiling
~60 parameter initialisers on CPU.
"""

import functools
import importlib.util
import logging

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import pretrained
from jal import resnet

HAS_SAFETENSORS = importlib.util.find_spec('safetensors') is not None
HAS_TORCH = importlib.util.find_spec('torch') is not None


# --------------------------------------------------------------------------
# torchvision-format state dict.


def torchvision_resnet18_shapes(num_classes=1000):
  """torchvision resnet18 state_dict names -> shapes (torch layout)."""
  shapes = {}

  def bn(prefix, c):
    for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{prefix}.{leaf}'] = (c,)
    shapes[f'{prefix}.num_batches_tracked'] = ()

  shapes['conv1.weight'] = (64, 3, 7, 7)
  bn('bn1', 64)
  cin = 64
  for i, planes in enumerate((64, 128, 256, 512), start=1):
    for j in range(2):
      p = f'layer{i}.{j}'
      shapes[f'{p}.conv1.weight'] = (planes, cin, 3, 3)
      bn(f'{p}.bn1', planes)
      shapes[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
      bn(f'{p}.bn2', planes)
      if i > 1 and j == 0:
        shapes[f'{p}.downsample.0.weight'] = (planes, cin, 1, 1)
        bn(f'{p}.downsample.1', planes)
      cin = planes
  shapes['fc.weight'] = (num_classes, 512)
  shapes['fc.bias'] = (num_classes,)
  return shapes


def random_state_dict(seed=0):
  """Well-scaled random torchvision ResNet-18 state dict (float32)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in torchvision_resnet18_shapes().items():
    leaf = name.rsplit('.', 1)[1]
    if leaf == 'num_batches_tracked':
      v = np.array(1234, np.int64)
    elif leaf == 'running_var':
      v = rng.uniform(0.5, 2.0, shape)
    elif leaf == 'running_mean':
      v = rng.normal(0.0, 0.2, shape)
    elif leaf == 'weight' and len(shape) == 1:  # BN scale.
      v = rng.uniform(0.5, 1.5, shape)
    elif leaf == 'bias':
      v = rng.normal(0.0, 0.1, shape)
    else:  # conv / fc weights, He-scaled.
      v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    sd[name] = np.asarray(v, np.int64 if v.dtype == np.int64 else np.float32)
  return sd


@functools.cache
def _state_dict():
  return random_state_dict()


def state_dict():
  return dict(_state_dict())


# --------------------------------------------------------------------------
# Independent numpy forward pass (float64, NCHW, torch-layout weights).


def np_conv(x, w, stride, pad):
  """Cross-correlation; x: [n, i, h, w], w: [o, i, kh, kw] -> [n, o, h', w']."""
  n, _, h, wd = x.shape
  _, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh = (h + 2 * pad - kh) // stride + 1
  ow = (wd + 2 * pad - kw) // stride + 1
  out = np.zeros((n, w.shape[0], oh, ow))
  for dy in range(kh):
    for dx in range(kw):
      patch = xp[
          :, :, dy : dy + stride * (oh - 1) + 1 : stride, dx : dx + stride * (ow - 1) + 1 : stride
      ]
      out += np.einsum('nihw,oi->nohw', patch, w[:, :, dy, dx])
  return out


def np_bn(x, sd, prefix, eps=1e-5):
  c = lambda k: sd[f'{prefix}.{k}'].astype(np.float64)[None, :, None, None]
  return (x - c('running_mean')) / np.sqrt(c('running_var') + eps) * c('weight') + c('bias')


def np_relu(x):
  return np.maximum(x, 0.0)


def np_maxpool(x, k=3, stride=2, pad=1):
  n, ch, h, w = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
  oh = (h + 2 * pad - k) // stride + 1
  ow = (w + 2 * pad - k) // stride + 1
  out = np.full((n, ch, oh, ow), -np.inf)
  for dy in range(k):
    for dx in range(k):
      out = np.maximum(
          out,
          xp[
              :,
              :,
              dy : dy + stride * (oh - 1) + 1 : stride,
              dx : dx + stride * (ow - 1) + 1 : stride,
          ],
      )
  return out


def np_stem(x, sd):
  w = sd['conv1.weight'].astype(np.float64)
  return np_maxpool(np_relu(np_bn(np_conv(x, w, 2, 3), sd, 'bn1')))


def np_block(x, sd, prefix, stride):
  w = lambda k: sd[f'{prefix}.{k}'].astype(np.float64)
  y = np_relu(np_bn(np_conv(x, w('conv1.weight'), stride, 1), sd, f'{prefix}.bn1'))
  y = np_bn(np_conv(y, w('conv2.weight'), 1, 1), sd, f'{prefix}.bn2')
  if f'{prefix}.downsample.0.weight' in sd:
    x = np_bn(np_conv(x, w('downsample.0.weight'), stride, 0), sd, f'{prefix}.downsample.1')
  return np_relu(y + x)


def np_resnet18(x, sd):
  """x: [n, 3, h, w] -> (logits [n, 1000], embedding [n, 512], activations)."""
  acts = {'stem': np_stem(x, sd)}
  y = acts['stem']
  for i in range(1, 5):
    for j in range(2):
      y = np_block(y, sd, f'layer{i}.{j}', 2 if i > 1 and j == 0 else 1)
      acts[f'layer{i}_{j}'] = y
  emb = y.mean(axis=(2, 3))
  logits = emb @ sd['fc.weight'].T.astype(np.float64) + sd['fc.bias']
  return logits, emb, acts


# --------------------------------------------------------------------------
# Helpers.


def _template(stem, num_classes, seed=1):
  """Random numpy-filled variables with ResNet18's structure."""
  model = resnet.ResNet18(num_classes=num_classes, stem=stem)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)
  fill = lambda s: rng.normal(size=s.shape).astype(s.dtype)
  return model, jax.tree.map(fill, shapes)


def _save_npz(tmp_path, sd, name='resnet18.npz'):
  path = tmp_path / name
  np.savez(path, **sd)
  return str(path)


def _assert_close(actual, expected, rtol=1e-4):
  """Max error relative to the reference's scale."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err < rtol, err


def _flatten(tree):
  return {'/'.join(p): v for p, v in flax.traverse_util.flatten_dict(tree).items()}


# --------------------------------------------------------------------------
# Tests.


def test_generated_state_dict_is_torchvision_sized():
  sd = state_dict()
  n_params = sum(
      v.size
      for k, v in sd.items()
      if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))
  )
  assert n_params == 11_689_512
  assert len(sd) == 122


def test_load_npz_roundtrip(tmp_path):
  sd = state_dict()
  loaded = pretrained.load_state_dict(_save_npz(tmp_path, sd))
  assert sorted(loaded) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(loaded[k], v)


@pytest.mark.skipif(not HAS_SAFETENSORS, reason='safetensors not installed')
def test_load_safetensors_roundtrip(tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top

  sd = state_dict()
  path = str(tmp_path / 'resnet18.safetensors')
  st_numpy.save_file(sd, path)
  loaded = pretrained.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(loaded[k], v)


def test_imagenet_matches_numpy(tmp_path):
  sd = state_dict()
  model, template = _template('imagenet', 1000)
  variables = pretrained.load_pretrained(_save_npz(tmp_path, sd), template, stem='imagenet')
  x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)

  @jax.jit
  def forward(v, x):
    return model.apply(v, x, capture_intermediates=True, mutable=['intermediates'])

  (logits, emb), state = forward(variables, x)
  inter = state['intermediates']
  ref_logits, ref_emb, acts = np_resnet18(np.transpose(x, (0, 3, 1, 2)).astype(np.float64), sd)
  nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))

  # (a) stem: conv1 + bn1 + relu + maxpool.
  _assert_close(inter['stem'][0], nhwc(acts['stem']))
  # (b) layer1.0 (identity shortcut) and layer2.0 (downsample shortcut).
  _assert_close(inter['layer1_0']['__call__'][0], nhwc(acts['layer1_0']))
  _assert_close(inter['layer2_0']['__call__'][0], nhwc(acts['layer2_0']))
  # (c) whole network.
  _assert_close(emb, ref_emb)
  _assert_close(logits, ref_logits)


def test_converted_is_exact_transpose():
  sd = state_dict()
  _, template = _template('imagenet', 1000)
  variables = pretrained.convert_torchvision_resnet18(sd, template, stem='imagenet')
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['conv1']['kernel'], sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      params['layer3_0']['downsample_conv']['kernel'],
      sd['layer3.0.downsample.0.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(stats['layer4_1']['bn2']['var'], sd['layer4.1.bn2.running_var'])
  np.testing.assert_array_equal(params['fc']['kernel'], sd['fc.weight'].T)
  assert jax.tree.structure(variables) == jax.tree.structure(template)
  assert all(
      a.dtype == b.dtype and a.shape == b.shape
      for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(template))
  )


@pytest.mark.skipif(not HAS_SAFETENSORS, reason='safetensors not installed')
def test_safetensors_converts_like_npz(tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top

  sd = state_dict()
  path = str(tmp_path / 'resnet18.safetensors')
  st_numpy.save_file(sd, path)
  _, template = _template('imagenet', 1000)
  a = pretrained.load_pretrained(path, template, stem='imagenet')
  b = pretrained.load_pretrained(_save_npz(tmp_path, sd), template, stem='imagenet')
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_cifar_stem_keeps_conv1_and_fc(caplog):
  sd = state_dict()
  _, template = _template('cifar', 10)
  with caplog.at_level(logging.INFO):
    variables = pretrained.convert_torchvision_resnet18(sd, template, stem='cifar')
  assert 'conv1.weight' in caplog.text and 'fc.weight' in caplog.text

  flat, flat_t = _flatten(variables), _flatten(template)
  kept = {'params/conv1/kernel', 'params/fc/kernel', 'params/fc/bias'}
  for path in kept:
    np.testing.assert_array_equal(flat[path], flat_t[path])
  names = {
      'kernel': 'weight',
      'scale': 'weight',
      'bias': 'bias',
      'mean': 'running_mean',
      'var': 'running_var',
  }
  checked = 0
  for path, value in flat.items():
    if path in kept:
      continue
    _, *mods, leaf = path.split('/')
    key = (
        '.'.join(mods)
        .replace('_', '.')
        .replace('downsample.conv', 'downsample.0')
        .replace('downsample.bn', 'downsample.1')
    )
    key = f'{key}.{names[leaf]}'
    expected = sd[key]
    if expected.ndim == 4:
      expected = expected.transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(value, expected, err_msg=key)
    checked += 1
  assert checked == len(flat) - len(kept) == 122 - 20 - 3


def test_same_num_classes_loads_fc():
  sd = state_dict()
  _, template = _template('cifar', 1000)
  variables = pretrained.convert_torchvision_resnet18(sd, template, stem='cifar')
  np.testing.assert_array_equal(variables['params']['fc']['bias'], sd['fc.bias'])
  np.testing.assert_array_equal(
      variables['params']['conv1']['kernel'], template['params']['conv1']['kernel']
  )


def _one_line_error(exc_type, fn, *args, **kwargs):
  with pytest.raises(exc_type) as info:
    fn(*args, **kwargs)
  msg = str(info.value)
  assert '\n' not in msg, msg
  return msg


def test_missing_key_raises():
  sd = state_dict()
  del sd['layer3.1.bn2.running_var']
  _, template = _template('imagenet', 1000)
  msg = _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, sd, template, stem='imagenet'
  )
  assert 'missing' in msg and 'layer3.1.bn2.running_var' in msg


def test_many_missing_keys_lists_first_few():
  sd = {k: v for k, v in state_dict().items() if not k.startswith('layer4')}
  _, template = _template('imagenet', 1000)
  msg = _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, sd, template, stem='imagenet'
  )
  assert 'layer4.0.bn1.bias' in msg and 'more' in msg


def test_unexpected_key_raises():
  sd = state_dict()
  sd['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  _, template = _template('imagenet', 1000)
  msg = _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, sd, template, stem='imagenet'
  )
  assert 'unexpected' in msg and 'layer5.0.conv1.weight' in msg


def test_num_batches_tracked_optional():
  sd = {k: v for k, v in state_dict().items() if not k.endswith('num_batches_tracked')}
  _, template = _template('imagenet', 1000)
  pretrained.convert_torchvision_resnet18(sd, template, stem='imagenet')


def test_wrong_shape_raises():
  sd = state_dict()
  sd['layer1.0.conv1.weight'] = np.zeros((64, 64, 1, 1), np.float32)
  _, template = _template('imagenet', 1000)
  msg = _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, sd, template, stem='imagenet'
  )
  assert msg == (
      'pretrained weights: layer1.0.conv1.weight has shape '
      '(64, 64, 1, 1), expected (64, 64, 3, 3)'
  )


def test_imagenet_weights_into_cifar_template_wrong_stem():
  _, template = _template('cifar', 1000)
  msg = _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, state_dict(), template, stem='imagenet'
  )
  assert 'conv1.weight' in msg and '(64, 3, 7, 7)' in msg


def test_unknown_stem_raises():
  _, template = _template('cifar', 10)
  _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, state_dict(), template, stem='tiny'
  )


def test_batched_template_raises():
  _, template = _template('cifar', 10)
  batched = jax.tree.map(lambda a: np.stack([a, a]), template)
  msg = _one_line_error(
      ValueError, pretrained.convert_torchvision_resnet18, state_dict(), batched, stem='cifar'
  )
  assert 'batched' in msg


def test_missing_file_raises(tmp_path):
  path = str(tmp_path / 'nope.npz')
  msg = _one_line_error(FileNotFoundError, pretrained.load_state_dict, path)
  assert path in msg


def test_unsupported_extension_raises(tmp_path):
  path = tmp_path / 'weights.h5'
  path.write_bytes(b'')
  msg = _one_line_error(ValueError, pretrained.load_state_dict, str(path))
  assert '.h5' in msg


@pytest.mark.skipif(HAS_TORCH, reason='torch is installed')
def test_pth_without_torch_raises(tmp_path):
  path = tmp_path / 'resnet18.pth'
  path.write_bytes(b'')
  msg = _one_line_error(ImportError, pretrained.load_state_dict, str(path))
  assert 'torch' in msg and '.npz' in msg
