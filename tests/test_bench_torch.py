"""jal.bench.torch_models and torch_cases: the PyTorch side computes what jal
computes, and the cases time both sides (skipped without torch).

Given jal's weights, the PyTorch LeNet and ResNet-18 give jal's logits, and
a few optimiser steps of each recipe give jal's losses: the architectures,
BatchNorm, input normalisation, masked loss and optimisers are the same.
"""

import functools
import math
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from jal import data as data_lib
from jal import models
from jal import resnet
from jal import train
from jal.bench import torch_cases as tc
from jal.bench import torch_models as tm
from tests.conftest import load_config

_RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def one_torch_thread():
  """Tiny tensors: one thread, which also keeps PyTorch fast when the cores are shared
  (multi-threaded, it waits at every op for a thread that another process holds)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def random_variables(model, shape, seed):
  """Random variables of `model` shaped by `jax.eval_shape` (no initialiser is compiled):
  He-scaled kernels, and non-trivial biases, BatchNorm scales and running statistics."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape))
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  for k, v in flat.items():
    if k[-1] == 'kernel':
      a = rng.normal(0, math.sqrt(2 / np.prod(v.shape[:-1])), v.shape)
    elif k[-1] == 'var':
      a = rng.uniform(0.5, 1.5, v.shape)
    else:  # biases, BatchNorm scales and means
      a = rng.normal(float(k[-1] == 'scale'), 0.2, v.shape)
    flat[k] = jnp.asarray(a, jnp.float32)
  return flax.traverse_util.unflatten_dict(flat)


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def nchw(x):
  return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize('name,width', [('lenet', None), ('resnet18', 8), ('resnet18', 64)])
def test_parameter_counts_equal_jal(name, width):
  if name == 'lenet':
    jal_model, shape, torch_model = models.LeNet(10), (1, 28, 28, 1), tm.LeNet(10)
  else:
    jal_model, shape, torch_model = (
        resnet.ResNet18(10, width=width),
        (1, 32, 32, 3),
        tm.ResNet18(10, width),
    )
  shapes = jax.eval_shape(jal_model.init, jax.random.PRNGKey(0), jnp.zeros(shape))
  assert sum(p.numel() for p in torch_model.parameters()) == count(shapes['params'])
  # BatchNorm's running averages: flax batch_stats, torch buffers.
  buffers = sum(b.numel() for n, b in torch_model.named_buffers() if 'running' in n)
  assert buffers == count(shapes.get('batch_stats', {}))


def test_lenet_logits_equal_jal_given_its_weights():
  x = _RNG.normal(size=(5, 28, 28, 1)).astype(np.float32)
  model = models.LeNet(10)
  variables = random_variables(model, x.shape, 1)
  logits, emb = jax.jit(model.apply)(variables, x)
  torch_model = tm.load_flax_variables(tm.LeNet(10), variables).eval()
  for fmt in tm.FORMATS:
    with torch.inference_mode():
      t_logits, t_emb = torch_model.to(memory_format=tm._MEMORY_FORMATS[fmt])(
          nchw(x).contiguous(memory_format=tm._MEMORY_FORMATS[fmt])
      )
    np.testing.assert_allclose(t_logits.numpy(), logits, atol=1e-4)
    np.testing.assert_allclose(t_emb.numpy(), emb, atol=1e-4)


def test_resnet18_eval_logits_equal_jal_given_its_weights():
  x = _RNG.normal(size=(3, 32, 32, 3)).astype(np.float32)
  model = resnet.ResNet18(10, width=8)
  variables = random_variables(model, x.shape, 2)
  logits, emb = jax.jit(model.apply)(variables, x)
  torch_model = tm.load_flax_variables(tm.ResNet18(10, 8), variables).eval()
  with torch.inference_mode():
    t_logits, t_emb = torch_model(nchw(x))
  np.testing.assert_allclose(t_logits.numpy(), logits, atol=1e-4)
  np.testing.assert_allclose(t_emb.numpy(), emb, atol=1e-4)


def test_resnet18_batchnorm_momentum_is_jal():
  """One training forward: running mean = 0.9 * running + 0.1 * batch mean on both sides;
  torch's running variance uses the unbiased batch variance, n / (n - 1) of flax's."""
  b = 4
  x = _RNG.normal(size=(b, 32, 32, 3)).astype(np.float32)
  model = resnet.ResNet18(10, width=8)
  variables = random_variables(model, x.shape, 4)
  _, updated = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x
  )
  torch_model = tm.load_flax_variables(tm.ResNet18(10, 8), variables).train()
  torch_model(nchw(x))
  stats = updated['batch_stats']['bn1']
  np.testing.assert_allclose(torch_model.bn1.running_mean.numpy(), stats['mean'], atol=1e-6)
  n = b * 32 * 32
  var0 = np.asarray(variables['batch_stats']['bn1']['var'])
  np.testing.assert_allclose(
      (torch_model.bn1.running_var.numpy() - 0.9 * var0) * (n - 1) / n,
      np.asarray(stats['var']) - 0.9 * var0,
      rtol=1e-4,
      atol=1e-6,
  )


@pytest.mark.parametrize(
    'recipe,jal_model,torch_model',
    [
        (tm.lenet_mnist(), models.LeNet(10), tm.LeNet(10)),
        # A larger weight decay than the recipe's 5e-4, to be seen in three steps.
        (
            tm.resnet_cifar(width=8, learning_rate=0.01, weight_decay=0.05),
            resnet.ResNet18(10, width=8),
            tm.ResNet18(10, 8),
        ),
    ],
)
def test_training_steps_equal_jal(recipe, jal_model, torch_model):
  """Three steps from the same weights on a masked batch: Adam (LeNet) and SGD Nesterov
  + weight decay on a cosine schedule (ResNet-18) give jal's losses and parameters."""
  steps, n = 3, 6
  rng = np.random.default_rng(5)
  x = rng.integers(0, 256, (n, *recipe.image_shape), dtype=np.uint8)
  y = rng.integers(0, 10, (n,)).astype(np.int32)
  mask = np.arange(n) < n - 2
  spec = train.InputSpec(recipe.mean, recipe.std, 'none')
  xj = train.prepare_inputs(jnp.asarray(x), spec)
  xt = tm.to_inputs(torch.from_numpy(x), recipe, 'contiguous')
  np.testing.assert_allclose(xt.permute(0, 2, 3, 1).numpy(), xj, atol=1e-6)
  variables = random_variables(jal_model, xj.shape, 6)
  tx = train.make_optimizer(
      ml_collections.ConfigDict(
          dict(
              optimizer=recipe.optimizer,
              learning_rate=recipe.learning_rate,
              weight_decay=recipe.weight_decay,
              momentum=recipe.momentum,
          )
      )
  )
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  state = train.TrainState(variables['params'], model_state, tx.init(variables['params']))
  tm.load_flax_variables(torch_model, variables).train()
  opt, sched = tm.make_optimizer(recipe, torch_model, steps)
  step = jax.jit(functools.partial(train.train_step, jal_model, tx))
  for s in range(steps):
    lr = recipe.learning_rate * float(train.lr_factor(recipe.schedule, s, steps))
    assert lr == pytest.approx(sched.get_last_lr()[0])
    state, loss = step(state, xj, jnp.asarray(y), jnp.asarray(mask), lr)
    t_loss = tm.train_step(
        torch_model, opt, sched, xt, torch.from_numpy(y).long(), torch.from_numpy(mask)
    )
    assert float(t_loss) == pytest.approx(float(loss), rel=1e-4)
  trained = dict(
      tm.load_flax_variables(
          type(torch_model)(*_args(torch_model)), {'params': state.params, **state.model_state}
      ).named_parameters()
  )
  for name, p in torch_model.named_parameters():
    np.testing.assert_allclose(
        p.detach().numpy(), trained[name].detach().numpy(), atol=2e-5, err_msg=name
    )


def _args(torch_model):
  return (10,) if isinstance(torch_model, tm.LeNet) else (10, torch_model.conv1.out_channels)


def test_crop_flip_takes_a_crop_of_the_padded_image_flipped_or_not():
  b, pad = 64, 4
  x = torch.from_numpy(np.random.default_rng(7).integers(1, 256, (b, 6, 5, 3), dtype=np.uint8))
  out = tm.crop_flip(x, torch.Generator().manual_seed(0), pad)
  assert out.shape == x.shape and out.dtype == torch.uint8
  padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
  seen = set()
  for i in range(b):
    found = [
        (dy, dx, f)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for f in (False, True)
        if torch.equal(
            out[i], (lambda c, f=f: c.flip(1) if f else c)(padded[i, dy : dy + 6, dx : dx + 5])
        )
    ]
    assert found, i
    seen.update(found)
  assert {f for _, _, f in seen} == {False, True}
  assert len({(dy, dx) for dy, dx, _ in seen}) > 20


def test_epoch_batches_cycle_the_labeled_set_and_mask_the_filler():
  positions, mask = tm.epoch_batches(10, 4, torch.Generator().manual_seed(0))
  assert positions.shape == mask.shape == (3, 4)
  assert sorted(positions.flatten()[:10].tolist()) == list(range(10))
  assert mask.flatten().tolist() == [True] * 10 + [False] * 2
  # Fewer than a batch: the whole batch cycles through the few labeled.
  positions, mask = tm.epoch_batches(3, 8, torch.Generator().manual_seed(0))
  assert positions.shape == (1, 8) and mask.sum() == 3
  assert positions[0, 3:6].tolist() == positions[0, :3].tolist()
  assert tm.epochs_for(10, 64, 20, 300) == train.epochs_for(10, 64, 20, 300) == 300
  assert tm.epochs_for(6000, 64, 20, 300) == train.epochs_for(6000, 64, 20, 300) == 20


def test_variation_ratio_and_top_k_with_random_ties():
  logits = torch.tensor(_RNG.normal(size=(5, 40, 10)), dtype=torch.float32)
  np.testing.assert_allclose(
      tm.variation_ratio(logits).numpy(), jal_variation_ratio(logits.numpy()), atol=1e-6
  )
  scores = torch.tensor([0.0, 0.8, 0.8, 0.8, 0.4, 0.9, 0.8])
  eligible = torch.tensor([True, True, True, True, True, False, True])
  picks = [
      tuple(
          tm.top_k_with_random_ties(scores, eligible, 3, torch.Generator().manual_seed(s)).tolist()
      )
      for s in range(20)
  ]
  assert all(set(p) <= {1, 2, 3, 6} and len(set(p)) == 3 for p in picks)
  assert len(set(picks)) > 1  # ties in a random order, not by index


def jal_variation_ratio(logits):
  from jal import kernels  # pylint: disable=g-import-not-at-top

  return np.asarray(kernels.variation_ratio(jnp.asarray(logits)))


def test_run_round_follows_the_loop_protocol():
  """Warmup, fit / check / evaluate / score / select, then the last fit and evaluation."""
  rng = np.random.default_rng(8)
  dataset = data_lib.Dataset(
      name='tiny',
      x_train=rng.integers(0, 256, (120, 28, 28, 1), dtype=np.uint8),
      y_train=rng.integers(0, 10, (120,)).astype(np.int32),
      x_test=rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8),
      y_test=rng.integers(0, 10, (30,)).astype(np.int32),
      num_classes=10,
      class_names=tuple('0123456789'),
      mean=data_lib.MNIST_MEAN,
      std=data_lib.MNIST_STD,
  )
  config = tm.load_mnist_config('smoke')
  config.num_rounds = 1
  config.warmup_size = config.query_size = 5
  config.eval_batch_size = 32
  config.train.members, config.train.epochs, config.train.min_steps = 2, 2, 3
  summary = tm.run_round(config, dataset, 'channels_last')
  r0, r1 = summary['rounds']
  assert (r0['n_labeled'], r1['n_labeled']) == (5, 10)
  assert r0['train_steps'] == r1['train_steps'] == 3  # min_steps, one batch an epoch
  assert r0['score_seconds'] > 0 and r1['score_seconds'] == 0
  assert summary['rounds_seconds'] == pytest.approx(
      sum(summary[k] for k in ('train_seconds', 'eval_seconds', 'score_seconds', 'select_seconds'))
  )
  assert 0 <= summary['accuracy'] <= 1


TINY = tc.Shapes(
    members=2,
    lenet_batch=4,
    lenet_steps=2,
    resnet_width=4,
    resnet_batch=2,
    resnet_steps=1,
    pool=24,
    score_chunk=8,
)


def test_versus_records_have_every_side_and_sane_numbers():
  cases = ('lenet_ensemble_train', 'lenet_score_pool')
  records = tc.versus(
      tc.jal_cases(TINY, cases), tc.torch_cases(TINY, cases), repeats=2, info=tc.case_info(TINY)
  )
  assert [r['case'] for r in records] == list(cases)
  for r in records:
    for side in ('jal', 'torch_contiguous', 'torch_channels_last'):
      for key in ('seconds', 'seconds_min', 'seconds_max', 'spread', 'images_per_second'):
        v = r[f'{side}_{key}']
        assert math.isfinite(v) and v > 0, (side, key, r)
      assert r[f'{side}_seconds_min'] <= r[f'{side}_seconds'] <= r[f'{side}_seconds_max']
    assert r['torch_best_format'] in tm.FORMATS
    assert r['torch_seconds'] == min(
        r['torch_contiguous_seconds'], r['torch_channels_last_seconds']
    )
    assert r['ratio'] == pytest.approx(r['jal_seconds'] / r['torch_seconds'])
    assert 0 < r['pair_ratio_min'] <= r['pair_ratio_median'] <= r['pair_ratio_max']
    assert r['repeats'] == 2 and r['vs'] == 'torch' and r['work']
    assert r['loadavg_1min_before'] >= 0 and r['cpus'] >= 1


def test_versus_keeps_the_medians_of_what_calls_return():
  """The round's calls return their phases: each side's median of each is recorded."""
  returned = iter([9.0, 3.0, 2.0, 5.0])  # the warm-up call's, then the timed calls'
  jal = {'c': lambda: {'train_seconds': next(returned), 'note': 'text is left out'}}
  tor = {'c': {'contiguous': lambda: {'train_seconds': 0.5}}}
  (rec,) = tc.versus(jal, tor, repeats=3, warmup=1)
  assert rec['jal_train_seconds'] == 3.0
  assert 'jal_note' not in rec
  assert rec['torch_contiguous_train_seconds'] == 0.5
  assert rec['torch_best_format'] == 'contiguous'


def test_shapes_follow_jal_bench_params():
  from jal.bench import core  # pylint: disable=g-import-not-at-top

  s = tc.shapes_for(core.params_for('small'), data_dir='/data')
  assert (s.members, s.lenet_batch, s.lenet_steps, s.resnet_width, s.resnet_batch, s.pool) == (
      2,
      16,
      4,
      8,
      8,
      256,
  )
  assert (s.round_config, s.data_dir) == ('smoke', '/data')
  full = tc.shapes_for(core.params_for('full'))
  assert (full.members, full.lenet_batch, full.resnet_batch, full.score_chunk) == (5, 64, 128, 1000)
  # Pool scoring runs in the chunks the MNIST loop scores in.
  assert full.score_chunk == load_config('mnist', 'low').eval_batch_size
  assert s.score_chunk == 128


@pytest.mark.parametrize('side', ['jal', 'channels_last'])
def test_repeat_calls_only_the_given_side_once_more_than_it_times(side, monkeypatch):
  calls = []

  def builder(name):
    def fn():
      calls.append(name)
      time.sleep(0.01)

    return fn

  monkeypatch.setattr(tc, 'jal_cases', lambda s, cases: {c: builder('jal') for c in cases})
  monkeypatch.setattr(
      tc,
      'torch_cases',
      lambda s, cases, formats: {c: {f: builder(f) for f in formats} for c in cases},
  )
  seconds = tc.repeat(TINY, 'resnet18_inference', side, 3)
  assert calls == [side] * 4  # one warm-up call, then the 3 timed
  assert len(seconds) == 3 and all(0.01 <= t < 1 for t in seconds)


def test_repeat_refuses_the_round_and_unknown_cases():
  with pytest.raises(ValueError, match='mnist_round is whole processes'):
    tc.repeat(TINY, 'mnist_round', 'jal', 1)
  with pytest.raises(ValueError, match=r"unknown case\(s\) \['resnet50'\]; valid: lenet_ensemble"):
    tc.repeat(TINY, 'resnet50', 'jal', 1)
