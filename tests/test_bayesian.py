"""Dropout models, MC dropout passes, and the Bayesian strategies built on them."""

import functools
import itertools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import config_lib, data, experiment, infer, kernels, models, resnet, strategies, train
from jal.strategies import batch_bald, mc_dropout, uncertainty
from tests.conftest import load_config
from tests.test_experiment import smoke

TRAIN = ml_collections.ConfigDict(dict(optimizer='adam', learning_rate=1e-2, weight_decay=0.0))


@pytest.fixture(scope='module')
def blobs():
  return data.gaussian_blobs(num_train=200, num_test=10, seed=0)


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# -- dropout in the models -----------------------------------------------------

MODELS = {
    'mlp': (lambda rate: models.MLP(3, hidden=(16, 16), dropout=rate), (5, 4)),
    'lenet': (lambda rate: models.LeNet(3, dropout=rate), (5, 12, 12, 1)),
    'resnet18': (lambda rate: resnet.ResNet18(3, width=4, dropout=rate), (5, 8, 8, 3)),
}


@pytest.mark.parametrize('name', sorted(MODELS))
def test_dropout_modes(name):
  make, shape = MODELS[name]
  model, plain = make(0.5), make(0.0)
  x = _x(shape)
  # Random variables of the init's shapes (compiling the init costs more than
  # the test): He-scaled kernels, 1-d leaves near 1.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: jnp.asarray(
          rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
          if len(s.shape) > 1
          else 1 + 0.1 * rng.normal(size=s.shape),
          jnp.float32,
      ),
      jax.eval_shape(plain.init, jax.random.PRNGKey(0), x),
  )
  # Dropout adds no parameters, so the same variables serve both models.
  assert jax.tree.structure(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  ) == jax.tree.structure(variables)
  mutable = ['batch_stats'] if 'batch_stats' in variables else False

  def logits(x, seed=1, **mode):  # eager: cheaper here than a compilation per mode
    out = model.apply(
        variables, x, rngs={'dropout': jax.random.PRNGKey(seed)}, mutable=mutable, **mode
    )
    return np.asarray((out[0] if mutable else out)[0])

  # Evaluation mode: no dropout, the outputs of the dropout-free model.
  ev = logits(x)
  np.testing.assert_array_equal(ev, plain.apply(variables, x)[0])
  # Training and MC modes: random, reproducible from the rng.
  for mode in ({'train': True}, {'mc': True}):
    a = logits(x, **mode)
    np.testing.assert_array_equal(a, logits(x, **mode))
    assert not np.allclose(a, ev) and not np.allclose(a, logits(x, seed=2, **mode)), mode
  # MC mode: one mask for the whole batch, so equal rows stay equal; for the
  # ResNet, BatchNorm on running averages (nothing to update).
  same = jnp.broadcast_to(x[:1], x.shape)
  mc_same = logits(same, mc=True)
  np.testing.assert_allclose(mc_same, np.broadcast_to(mc_same[:1], mc_same.shape), rtol=1e-6)
  assert not np.allclose(mc_same[0], ev[0])
  if mutable:
    _, updates = model.apply(
        variables, x, rngs={'dropout': jax.random.PRNGKey(1)}, mc=True, mutable=mutable
    )
    jax.tree.map(np.testing.assert_array_equal, updates['batch_stats'], variables['batch_stats'])
  else:
    # Training mode draws a mask per example: equal rows get different outputs.
    # (Not testable on the ResNet: BatchNorm maps a batch of equal rows to 0.)
    tr = logits(same, train=True)
    assert not np.allclose(tr[0], tr[1])


def test_get_model_reads_dropout():
  c = load_config('gaussian', 'smoke')
  assert models.get_model(c.model, 2).dropout == 0.0
  c.model.dropout = 0.3
  m = models.get_model(c.model, 2)
  assert m.dropout == 0.3 and models.has_dropout(m)
  assert not models.has_dropout(models.get_model(load_config('gaussian').model, 2))


class _MLPBefore(nn.Module):
  """`models.MLP` as it was before dropout existed."""

  num_classes: int
  hidden: Sequence[int] = (64, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), x.astype(jnp.float32)


def _trainer(model):
  return train.Trainer(model, train.make_optimizer(TRAIN), train.InputSpec(), 16, 'constant', 1e-2)


def _fit(model, blobs, plan=train.Plan('vmap', 'step')):
  """Two members from the same keys, 5 epochs over 40 labels."""
  idx = np.zeros(64, np.int32)
  idx[:40] = np.arange(40)
  return train.fit(
      _trainer(model),
      jax.random.split(jax.random.PRNGKey(0), 2),
      jnp.asarray(blobs.x_train),
      jnp.asarray(blobs.y_train),
      jnp.asarray(idx),
      jnp.int32(40),
      jnp.int32(5),
      plan=plan,
  )


@pytest.fixture(scope='module')
def dropout_fit(blobs):
  return _fit(models.MLP(2, hidden=(16, 16), dropout=0.3), blobs)


def test_dropout_zero_is_bit_identical_to_no_dropout(blobs, dropout_fit):
  new = _fit(models.MLP(2, hidden=(16, 16), dropout=0.0), blobs)
  old = _fit(_MLPBefore(2, hidden=(16, 16)), blobs)
  jax.tree.map(np.testing.assert_array_equal, new.params, old.params)
  x = jnp.asarray(blobs.x_test)
  predict = functools.partial(
      infer.predict, spec=train.InputSpec(), chunk_size=8, with_embeddings=True, x=x
  )
  for a, b in zip(
      predict(models.MLP(2, hidden=(16, 16)), states=new),
      predict(_MLPBefore(2, hidden=(16, 16)), states=old),
  ):
    np.testing.assert_array_equal(a, b)
  # Dropout > 0 changes training, from the same keys.
  assert not np.allclose(new.params['Dense_0']['kernel'], dropout_fit.params['Dense_0']['kernel'])


def test_dropout_training_is_per_member_and_plan_independent(blobs, dropout_fit):
  model = models.MLP(2, hidden=(16, 16), dropout=0.3)
  scan = _fit(model, blobs, plan=train.Plan('vmap', 'program'))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, dropout_fit.params, scan.params)
  idx = np.zeros(64, np.int32)
  idx[:40] = np.arange(40)
  key = jax.random.split(jax.random.PRNGKey(0), 2)[1]
  solo = jax.jit(functools.partial(train.fit_member, _trainer(model)))(
      key,
      jnp.asarray(blobs.x_train),
      jnp.asarray(blobs.y_train),
      jnp.asarray(idx),
      jnp.int32(40),
      jnp.int32(5),
  )
  jax.tree.map(lambda a, b: close(a[1], b), dropout_fit.params, solo.params)
  p = dropout_fit.params['Dense_0']['kernel']
  assert not np.allclose(p[0], p[1])


# -- MC dropout passes ---------------------------------------------------------


def test_mc_predict(blobs, dropout_fit):
  model = models.MLP(2, hidden=(16, 16), dropout=0.3)
  state = jax.tree.map(lambda a: a[0], dropout_fit)
  x = jnp.asarray(blobs.x_train[:50])
  mc = functools.partial(infer.mc_predict, model, train.InputSpec())
  key = jax.random.PRNGKey(7)
  a = np.asarray(mc(16, 6, state, x, key))
  assert a.shape == (6, 50, 2) and a.dtype == np.float32
  np.testing.assert_array_equal(a, mc(16, 6, state, x, key))  # deterministic
  assert not np.allclose(a, mc(16, 6, state, x, jax.random.PRNGKey(8)))
  for s, t in itertools.combinations(range(6), 2):  # passes differ
    assert not np.allclose(a[s], a[t])
  # Pass t is one network over every chunk: the model in MC mode with
  # rng fold_in(key, t), applied to all 50 points at once.
  variables = {'params': state.params, **state.model_state}
  one = model.apply(variables, x, mc=True, rngs={'dropout': jax.random.fold_in(key, 4)})[0]
  np.testing.assert_allclose(a[4], one, rtol=1e-5, atol=1e-6)
  # The mean over passes is near the evaluation output (dropout's scaling).
  ev = model.apply(variables, x)[0]
  assert np.abs(mc(16, 6, state, x, key).mean(0) - ev).mean() < np.abs(a[0] - ev).mean()


def _smoke(**overrides):
  return smoke(
      **{'seeds': (0,), 'model.dropout': 0.2, 'strategy_options.mc_samples': 5, **overrides}
  )


def test_experiment_score_fills_mc_logits():
  c = _smoke(strategies=('mc_dropout',))
  ds = experiment.load_and_check(c)
  exp = experiment.Experiment(c, ds)
  key = experiment.seed_key(c.seed, 0)
  labeled = np.zeros(exp.n, bool)
  labeled[experiment.warmup_indices(key, exp.n, c.warmup_size)] = True
  states = exp.fit(key, np.flatnonzero(labeled).astype(np.int32), 0)
  strategy = strategies.get_strategy('mc_dropout')
  round_key = experiment.select_key(key, 'mc_dropout', 0)
  inputs = exp.score(strategy, states, labeled, round_key)
  assert inputs.logits is None and inputs.embeddings is None
  assert inputs.mc_logits.shape == (5, exp.n, 2)
  member0 = jax.tree.map(lambda a: a[0], states)
  np.testing.assert_array_equal(
      inputs.mc_logits,
      infer.mc_predict(
          exp.model,
          exp.eval_spec,
          c.eval_batch_size,
          5,
          member0,
          exp.x_train,
          jax.random.fold_in(round_key, experiment._MC_PASSES),
      ),
  )
  np.testing.assert_array_equal(
      inputs.mc_logits, exp.score(strategy, states, labeled, round_key).mc_logits
  )
  other = exp.score(strategy, states, labeled, experiment.select_key(key, 'mc_dropout', 1))
  assert not np.allclose(inputs.mc_logits, other.mc_logits)


def test_mc_run_resumes_exactly(tmp_path):
  c = _smoke(strategies=('batch_bald',))
  table = experiment.train_and_evaluate(c, str(tmp_path / 'full'))
  experiment.train_and_evaluate(c, str(tmp_path / 'resumed'), stop_after_round=1)
  assert experiment.train_and_evaluate(c, str(tmp_path / 'resumed')) == table
  for name in ('metrics.jsonl', 'selections.jsonl'):
    assert (tmp_path / 'full' / name).read_text() == (tmp_path / 'resumed' / name).read_text()


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    'overrides,message',
    [
        (
            {'model.dropout': 0.0, 'strategies': ('random', 'mc_dropout')},
            "strategy 'mc_dropout' needs config.model.dropout > 0 (Monte Carlo dropout passes), got 0.0",
        ),
        (
            {'model.dropout': 0.0, 'strategies': ('batch_bald',)},
            "strategy 'batch_bald' needs config.model.dropout > 0",
        ),
        ({'model.dropout': 1.0}, 'config.model.dropout must be in [0, 1), got 1.0'),
        ({'model.dropout': -0.1}, 'config.model.dropout must be in [0, 1), got -0.1'),
        # The loop runs mc_samples passes for every MC strategy; each checks it.
        (
            {'strategy_options.mc_samples': 0, 'strategies': ('random', 'mc_dropout')},
            'mc_dropout: strategy_options.mc_samples must be a positive int, got 0',
        ),
        (
            {'strategy_options.mc_samples': -2, 'strategies': ('batch_bald',)},
            'batch_bald: strategy_options.mc_samples must be a positive int, got -2',
        ),
        (
            {'strategy_options.batch_bald_candidates': 0, 'strategies': ('batch_bald',)},
            'batch_bald: strategy_options.batch_bald_candidates must be a positive int, got 0',
        ),
    ],
)
def test_validation(overrides, message):
  with pytest.raises(ValueError) as e:
    config_lib.validate(_smoke(**overrides))
  assert message in str(e.value) and '\n' not in str(e.value)
  config_lib.validate(_smoke(strategies=('mc_dropout', 'mc_dropout_bald', 'batch_bald')))
  # Options of strategies not chosen are not read.
  config_lib.validate(_smoke(**{'strategy_options.mc_samples': 0}))
  assert {n for n, s in strategies.STRATEGIES.items() if s.needs_dropout} == {
      'mc_dropout',
      'mc_dropout_bald',
      'batch_bald',
  }


def test_option_defaults_match_base_config():
  so = config_lib.base_config().strategy_options
  for opts in (None, so):
    assert mc_dropout.mc_samples_of(opts) == 25
    assert batch_bald.settings_of(opts) == (10_000, 1_000)


# -- mc_dropout and mc_dropout_bald --------------------------------------------


def _logits(p):
  return np.log(np.clip(np.asarray(p, np.float64), 1e-7, 1.0)).astype(np.float32)


def test_mc_dropout_strategies_exact():
  # T = 4 passes over 4 points, 3 classes.
  p = np.array(
      [
          [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]],  # votes 0 1 2 0
          [[0.6, 0.3, 0.1]] * 4,  # all agree
          [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]] * 2,  # votes 0 1 0 1
          [[1 / 3] * 3] * 4,  # unsure, agree
      ]
  ).transpose(
      1, 0, 2
  )  # [T, n, c]
  mc_logits = _logits(p)
  np.testing.assert_array_equal(kernels.variation_ratio(mc_logits), [0.5, 0.0, 0.5, 0.0])
  ent = lambda q: -np.sum(q * np.log(q), axis=-1)
  bald = ent(p.mean(0)) - ent(p).mean(0)
  np.testing.assert_allclose(uncertainty.bald(mc_logits), bald, atol=1e-5)
  inputs = strategies.Inputs(labeled=np.array([False, False, False, False]), mc_logits=mc_logits)
  key = jax.random.PRNGKey(0)
  # BALD ranks point 2 (two confident camps) over point 0 (three camps at 0.8).
  assert bald[2] > bald[0] > bald[3] >= 0
  got = strategies.get_strategy('mc_dropout_bald').select(inputs, 2, key, None)
  np.testing.assert_array_equal(got, [2, 0])
  # Variation ratio ties points 0 and 2 at 0.5: both picked, in the key's order.
  vr = set(strategies.get_strategy('mc_dropout').select(inputs, 2, key, None).tolist())
  assert vr == {0, 2}
  labeled = np.array([False, False, True, False])
  got = strategies.get_strategy('mc_dropout').select(inputs._replace(labeled=labeled), 1, key, None)
  np.testing.assert_array_equal(got, [0])


# -- batch_bald -----------------------------------------------------------------


def _numpy_joint_entropy(mc_logits):
  """H(y_1..y_b) by enumerating all c^b labelings: f32[T, b, c] -> float."""
  p = np.asarray(jax.nn.softmax(np.asarray(mc_logits, np.float64), axis=-1))
  t, b, c = p.shape
  joint = np.ones((t, 1))
  for i in range(b):
    joint = (joint[:, :, None] * p[:, i, None, :]).reshape(t, -1)
  q = joint.mean(0)
  return float(-np.sum(q * np.log(q)))


def test_batch_bald_of_one_point_is_bald():
  rng = np.random.default_rng(0)
  mc_logits = (2 * rng.normal(size=(6, 60, 4))).astype(np.float32)
  labeled = np.zeros(60, bool)
  labeled[:10] = True
  picks, scores = batch_bald.batch_bald(
      mc_logits, jnp.asarray(labeled), jax.random.PRNGKey(0), k=5, num_candidates=60
  )  # 50 unlabeled
  bald = np.asarray(uncertainty.bald(mc_logits))
  assert picks[0] == np.argmax(np.where(labeled, -1, bald))
  np.testing.assert_allclose(scores[0], bald[picks[0]], rtol=1e-6)
  # Each score is the exact joint MI of the picks so far (c^5 = 1024 <= M);
  # it grows with the batch and never exceeds H(w) = log T.
  for i in range(1, 5):
    chosen = mc_logits[:, np.asarray(picks[: i + 1])]
    p = np.asarray(jax.nn.softmax(chosen.astype(np.float64), axis=-1))
    expected = _numpy_joint_entropy(chosen) + np.sum(p * np.log(p), axis=-1).mean(0).sum()
    np.testing.assert_allclose(scores[i], expected, rtol=1e-5)
  assert np.all(np.diff(scores) > 0) and scores[-1] <= np.log(6) + 1e-6
  assert len(set(picks.tolist())) == 5 and not labeled[picks].any()


def test_batch_bald_skips_a_duplicate_that_top_k_bald_takes():
  # T = 4 networks. Points 1 and 3 are copies, each splitting {w1, w2} from
  # {w3, w4} with certainty: BALD log 2, the highest. Point 4 splits {w1, w3}
  # from {w2, w4} less confidently: BALD 0.49. Points 0, 2, 5 carry none.
  hi, lo = [1.0, 0.0], [0.0, 1.0]
  soft_hi, soft_lo = [0.95, 0.05], [0.05, 0.95]
  half = [0.5, 0.5]
  p = np.array(
      [
          [half] * 4,
          [hi, hi, lo, lo],
          [[0.9, 0.1]] * 4,
          [hi, hi, lo, lo],
          [soft_hi, soft_lo, soft_hi, soft_lo],
          [[0.3, 0.7]] * 4,
      ]
  ).transpose(1, 0, 2)
  mc_logits = _logits(p)
  inputs = strategies.Inputs(labeled=np.zeros(6, bool), mc_logits=mc_logits)
  key = jax.random.PRNGKey(0)
  top_bald = strategies.get_strategy('mc_dropout_bald').select(inputs, 2, key, None)
  assert set(top_bald.tolist()) == {1, 3}
  picks, scores = batch_bald.batch_bald(mc_logits, jnp.zeros(6, bool), key, k=2, num_candidates=6)
  assert picks[0] in (1, 3) and picks[1] == 4
  np.testing.assert_array_equal(
      strategies.get_strategy('batch_bald').select(inputs, 2, key, None), picks
  )
  # a({1, 4}) = log 2 + BALD(4): independent splits of the four networks.
  bald4 = np.log(2) + 0.95 * np.log(0.95) + 0.05 * np.log(0.05)
  np.testing.assert_allclose(scores, [np.log(2), np.log(2) + bald4], atol=1e-5)


def test_batch_bald_candidates_are_the_top_bald_points():
  rng = np.random.default_rng(1)
  mc_logits = (2 * rng.normal(size=(5, 40, 3))).astype(np.float32)
  inputs = strategies.Inputs(labeled=np.zeros(40, bool), mc_logits=mc_logits)
  key = jax.random.PRNGKey(0)
  options = ml_collections.ConfigDict({'batch_bald_candidates': 4})
  picks = strategies.get_strategy('batch_bald').select(inputs, 4, key, options)
  top = strategies.get_strategy('mc_dropout_bald').select(inputs, 4, key, None)
  assert set(picks.tolist()) == set(top.tolist())
  with pytest.raises(ValueError, match='batch_bald_samples must be a positive int, got 0'):
    batch_bald.select(inputs, 4, key, ml_collections.ConfigDict({'batch_bald_samples': 0}))


def test_exact_joint_entropy_of_two_points():
  p = np.array(
      [  # [T=3, b=2, c=3]
          [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
          [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]],
          [[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]],
      ]
  )
  joint = np.einsum('ta,tb->ab', p[:, 0], p[:, 1]) / 3
  expected = -np.sum(joint * np.log(joint))
  np.testing.assert_allclose(expected, _numpy_joint_entropy(_logits(p)), rtol=1e-6)
  np.testing.assert_allclose(
      batch_bald.joint_entropy(_logits(p), jax.random.PRNGKey(0)), expected, rtol=1e-6
  )


def test_sampled_joint_entropy_is_close_to_exact():
  # 8 points, 3 classes, T = 10: 6,561 labelings. M = 400 enumerates the
  # first 5 points exactly (243 labelings) and samples the last 3.
  assert batch_bald.exact_steps(3, 400, 8) == 5
  mc_logits = (2 * np.random.default_rng(1).normal(size=(10, 8, 3))).astype(np.float32)
  exact = _numpy_joint_entropy(mc_logits)
  estimates = np.asarray(
      jax.vmap(lambda k: batch_bald.joint_entropy(mc_logits, k, 400))(
          jax.random.split(jax.random.PRNGKey(0), 64)
      )
  )
  # Each estimate within 0.06 nats (4 standard deviations, < 1%); unbiased:
  # their mean within 0.008 nats (4 standard errors).
  assert np.abs(estimates - exact).max() < 0.06
  assert abs(estimates.mean() - exact) < 0.008
  assert estimates.std() > 1e-3  # really sampled
