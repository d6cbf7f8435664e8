"""Tests for jal.resnet.

Init is jitted with 'rbg' PRNG keys: compiling threefry for ~60 parameter
initialisers dominates CPU test time otherwise; the model code is the same.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import resnet


def _key(seed):
  return jax.random.key(seed, impl='rbg')


def _x(b=2, hw=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, hw, hw, 3)), jnp.float32)


@functools.cache
def _init(stem, num_classes=10):
  model = resnet.ResNet18(num_classes=num_classes, stem=stem)
  return model, jax.jit(model.init)(_key(0), _x())


@pytest.mark.parametrize('stem', ['cifar', 'imagenet'])
def test_output_shapes(stem):
  model, variables = _init(stem)
  assert set(variables) == {'params', 'batch_stats'}
  x = _x()
  (logits, emb), state = jax.jit(functools.partial(model.apply, mutable='intermediates'))(
      variables, x
  )
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert emb.shape == (2, 512) and emb.dtype == jnp.float32
  stem_shape = (2, 32, 32, 64) if stem == 'cifar' else (2, 8, 8, 64)
  assert state['intermediates']['stem'][0].shape == stem_shape


def test_param_tree_names():
  variables = jax.eval_shape(resnet.ResNet18(10).init, _key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables['params']
  expected = {'conv1', 'bn1', 'fc'} | {f'layer{i}_{j}' for i in range(1, 5) for j in range(2)}
  assert set(params) == expected
  assert set(params['layer1_0']) == {'conv1', 'bn1', 'conv2', 'bn2'}
  assert set(params['layer2_0']) == {
      'conv1',
      'bn1',
      'conv2',
      'bn2',
      'downsample_conv',
      'downsample_bn',
  }
  assert set(params['conv1']) == {'kernel'}  # No conv bias.
  assert params['conv1']['kernel'].shape == (3, 3, 3, 64)
  assert set(variables['batch_stats']['bn1']) == {'mean', 'var'}


def test_param_count_matches_torchvision():
  model = resnet.ResNet18(num_classes=1000, stem='imagenet')
  variables = jax.eval_shape(model.init, _key(0), jnp.zeros((1, 224, 224, 3)))
  n = sum(np.prod(p.shape) for p in jax.tree.leaves(variables['params']))
  assert n == 11_689_512
  assert variables['params']['conv1']['kernel'].shape == (7, 7, 3, 64)


def test_unknown_stem():
  with pytest.raises(ValueError, match='unknown stem'):
    jax.eval_shape(resnet.ResNet18(10, stem='tiny').init, _key(0), _x())


def test_batch_stats_update_only_in_train():
  model, variables = _init('cifar')
  apply = jax.jit(functools.partial(model.apply, mutable=['batch_stats']), static_argnames='train')
  _, updates = apply(variables, _x(), train=True)
  changed = jax.tree.map(
      lambda a, b: not np.allclose(a, b), variables['batch_stats'], updates['batch_stats']
  )
  assert all(jax.tree.leaves(changed))
  _, updates = apply(variables, _x(), train=False)
  same = jax.tree.map(np.array_equal, variables['batch_stats'], updates['batch_stats'])
  assert all(jax.tree.leaves(same))


def test_bf16_compute_keeps_f32_params():
  _, variables = _init('cifar')
  model = resnet.ResNet18(num_classes=10, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model.init, _key(0), _x())
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  logits, emb = jax.jit(model.apply)(variables, _x())
  assert logits.dtype == emb.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_vmapped_ensemble():
  model = resnet.ResNet18(num_classes=10)
  x = _x(hw=16)
  keys = jax.random.split(_key(1), 3)
  ens = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(keys, x)
  k = np.asarray(ens['params']['conv1']['kernel'])
  assert k.shape == (3, 3, 3, 3, 64)
  assert not np.allclose(k[0], k[1]) and not np.allclose(k[1], k[2])
  assert not np.allclose(k[0], k[2])

  def train_apply(v):
    return model.apply(v, x, train=True, mutable=['batch_stats'])

  (logits, emb), upd = jax.jit(jax.vmap(train_apply))(ens)
  assert logits.shape == (3, 2, 10) and emb.shape == (3, 2, 512)
  single = jax.jit(train_apply)
  for m in range(3):
    (l_m, e_m), u_m = single(jax.tree.map(lambda a, m=m: a[m], ens))
    np.testing.assert_allclose(logits[m], l_m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb[m], e_m, rtol=1e-4, atol=1e-5)
    jax.tree.map(
        lambda a, b, m=m: np.testing.assert_allclose(a[m], b, rtol=1e-4, atol=1e-5), upd, u_m
    )
