"""Acquisition strategies: exact scores, the select contract, and behaviour on blobs."""

import jax
import ml_collections
import numpy as np
import pytest

from jal import data as data_lib
from jal import experiment
from jal import kernels
from jal import models
from jal import strategies
from jal import train
from jal.strategies import balanced_uncertainty, coreset_ensembles, uncertainty
from tests.conftest import load_config

K = 7


def log_probs(p):
  """Logits whose softmax is `p`."""
  return np.log(np.asarray(p, np.float32))


def random_inputs(seed=0, m=3, n=60, c=4, d=5, num_labeled=10, t=6):
  """Every input a strategy may ask for, over a random pool of n points.

  The classifier is a small untrained MLP over 2-feature pool points; its
  member-0 logits are not the `logits` field (strategies must cope anyway).
  """
  rng = np.random.default_rng(seed)
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, num_labeled, replace=False)] = True
  x = rng.normal(size=(n, 2)).astype(np.float32)
  model = models.MLP(num_classes=c, hidden=(8,))
  variables = model.init(jax.random.PRNGKey(seed), x[:1])
  return strategies.Inputs(
      labeled=labeled,
      logits=rng.normal(size=(m, n, c)).astype(np.float32),
      embeddings=rng.normal(size=(n, d)).astype(np.float32),
      mc_logits=rng.normal(size=(t, n, c)).astype(np.float32),
      classifier=strategies.Classifier(
          model=model, spec=train.InputSpec(), variables=variables, x=x, chunk_size=16
      ),
  )


# -- exact scores ------------------------------------------------------------


def test_single_model_scores_exact():
  logits = log_probs([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0 - 2e-7, 1e-7, 1e-7]])
  np.testing.assert_allclose(uncertainty.least_confidence(logits), [0.3, 2 / 3, 0.0], atol=1e-6)
  np.testing.assert_allclose(uncertainty.margin(logits), [-0.5, 0.0, -1.0], atol=1e-6)
  h = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
  np.testing.assert_allclose(uncertainty.entropy(logits), [h, np.log(3), 0.0], atol=1e-5)
  # Huge logits stay finite.
  assert np.isfinite(uncertainty.entropy(np.array([[1e4, -1e4, 0.0]], np.float32))).all()


def test_ensemble_scores_exact():
  agree = log_probs([[[0.7, 0.3]], [[0.7, 0.3]]])  # [m=2, n=1, c=2]
  confident_disagree = np.array([[[20.0, -20.0]], [[-20.0, 20.0]]], np.float32)
  h_agree = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3))
  np.testing.assert_allclose(uncertainty.ensemble_entropy(agree), [h_agree], atol=1e-6)
  np.testing.assert_allclose(uncertainty.bald(agree), [0.0], atol=1e-6)
  np.testing.assert_allclose(
      uncertainty.ensemble_entropy(confident_disagree), [np.log(2)], atol=1e-6
  )
  np.testing.assert_allclose(uncertainty.bald(confident_disagree), [np.log(2)], atol=1e-6)
  # Mixed: p1 = [0.9, 0.1], p2 = [0.5, 0.5] -> H[mean] - mean H by hand.
  mixed = log_probs([[[0.9, 0.1]], [[0.5, 0.5]]])
  ent = lambda p: -np.sum(np.asarray(p) * np.log(p))
  expected = ent([0.7, 0.3]) - (ent([0.9, 0.1]) + ent([0.5, 0.5])) / 2
  np.testing.assert_allclose(uncertainty.bald(mixed), [expected], atol=1e-6)


# -- the select contract, for every registered strategy ----------------------


class ReadRecorder:
  """Empty strategy options (every field at its default) that record what is read."""

  def __init__(self):
    self.read = set()

  def get(self, name, default=None):
    self.read.add(name)
    return default


@pytest.mark.parametrize('name', sorted(strategies.STRATEGIES))
def test_select_contract(name):
  s = strategies.get_strategy(name)
  assert s.name == name
  assert s.kind in ('uncertainty', 'diversity', 'hybrid', 'low_budget', 'baseline')
  inputs = random_inputs()
  key = jax.random.PRNGKey(3)
  read_by_select = ReadRecorder()
  picks = np.asarray(s.select(inputs, K, key, read_by_select))
  assert picks.shape == (K,) and picks.dtype == np.int32
  assert len(set(picks.tolist())) == K
  assert not inputs.labeled[picks].any()
  again = np.asarray(s.select(inputs, K, key, ml_collections.ConfigDict()))
  np.testing.assert_array_equal(picks, again)
  # check_options reads every option select reads (and the loop's mc_samples),
  # so config_lib.validate rejects a bad one before any compute: exactly the
  # declared ones.
  read_by_check = ReadRecorder()
  s.check_options(read_by_check)
  assert read_by_check.read == {o.name for o in s.options}
  assert read_by_select.read <= read_by_check.read
  assert ('mc_samples' in read_by_check.read) == s.needs_dropout


# One bad value per option, with the exact error; the table covers every
# strategy that declares options (see test_every_checked_strategy_is_covered).
BAD_OPTIONS = [
    (
        'coreset_ensembles',
        'beta',
        0.5,
        'coreset_ensembles: strategy_options.beta must be a finite number >= 1, got 0.5',
    ),
    (
        'information_density',
        'density_beta',
        -1.0,
        'information_density: strategy_options.density_beta must be a finite number >= 0, '
        'got -1.0',
    ),
    (
        'kmeans',
        'kmeans_iters',
        0,
        'kmeans: strategy_options.kmeans_iters must be a positive int, got 0',
    ),
    (
        'typiclust',
        'typiclust_max_clusters',
        0,
        'typiclust: strategy_options.typiclust_max_clusters must be a positive int, got 0',
    ),
    (
        'typiclust',
        'kmeans_iters',
        True,
        'typiclust: strategy_options.kmeans_iters must be a positive int, got True',
    ),
    (
        'probcover',
        'probcover_alpha',
        1.5,
        'probcover: strategy_options.probcover_alpha must be a number in (0, 1], got 1.5',
    ),
    (
        'probcover',
        'probcover_delta',
        0.0,
        'probcover: strategy_options.probcover_delta must be a finite number > 0, got 0.0',
    ),
    (
        'probcover',
        'probcover_clusters',
        0,
        'probcover: strategy_options.probcover_clusters must be a positive int, got 0',
    ),
    (
        'probcover',
        'kmeans_iters',
        -3,
        'probcover: strategy_options.kmeans_iters must be a positive int, got -3',
    ),
    (
        'dal',
        'dal_subqueries',
        0,
        'dal: strategy_options.dal_subqueries must be a positive int, got 0',
    ),
    (
        'dal',
        'dal_batch_size',
        63,
        'dal: strategy_options.dal_batch_size must be a positive even int, got 63',
    ),
    (
        'dal',
        'dal_learning_rate',
        float('nan'),
        'dal: strategy_options.dal_learning_rate must be a finite number > 0, got nan',
    ),
    (
        'dfal',
        'dfal_candidates',
        0,
        'dfal: strategy_options.dfal_candidates must be a positive int, got 0',
    ),
    (
        'dfal',
        'dfal_classes',
        1,
        'dfal: strategy_options.dfal_classes must be an integer >= 2, got 1',
    ),
    (
        'dfal',
        'dfal_overshoot',
        -0.1,
        'dfal: strategy_options.dfal_overshoot must be a finite number >= 0, got -0.1',
    ),
    (
        'dfal',
        'dfal_batch_size',
        0,
        'dfal: strategy_options.dfal_batch_size must be a positive int, got 0',
    ),
    ('vaal', 'vaal_steps', 0, 'vaal: strategy_options.vaal_steps must be a positive int, got 0'),
    (
        'vaal',
        'vaal_beta',
        -1.0,
        'vaal: strategy_options.vaal_beta must be a finite number >= 0, got -1.0',
    ),
    (
        'vaal',
        'vaal_learning_rate',
        0.0,
        'vaal: strategy_options.vaal_learning_rate must be a finite number > 0, got 0.0',
    ),
    (
        'mc_dropout',
        'mc_samples',
        0,
        'mc_dropout: strategy_options.mc_samples must be a positive int, got 0',
    ),
    (
        'mc_dropout_bald',
        'mc_samples',
        True,
        'mc_dropout_bald: strategy_options.mc_samples must be a positive int, got True',
    ),
    (
        'batch_bald',
        'mc_samples',
        -1,
        'batch_bald: strategy_options.mc_samples must be a positive int, got -1',
    ),
    (
        'batch_bald',
        'batch_bald_samples',
        0,
        'batch_bald: strategy_options.batch_bald_samples must be a positive int, got 0',
    ),
    (
        'batch_bald',
        'batch_bald_candidates',
        0,
        'batch_bald: strategy_options.batch_bald_candidates must be a positive int, got 0',
    ),
]


@pytest.mark.parametrize('name,field,value,message', BAD_OPTIONS)
def test_bad_strategy_option_fails_before_any_compute(name, field, value, message, tmp_path):
  config = load_config('gaussian', 'smoke')
  config.strategies = ('random', name)
  config.model.dropout = 0.2  # for the MC strategies
  config.strategy_options[field] = value
  with pytest.raises(ValueError) as e:
    experiment.train_and_evaluate(config, str(tmp_path / 'w'))
  assert str(e.value) == message
  assert not (tmp_path / 'w').exists()  # nothing was written: no config.json, no checkpoint
  if field != 'mc_samples':  # read by the loop's MC passes, not by select
    with pytest.raises(ValueError) as e:
      strategies.get_strategy(name).select(
          random_inputs(), K, jax.random.PRNGKey(0), config.strategy_options
      )
    assert str(e.value) == message  # select's own error, from the same reader


def test_every_checked_strategy_is_covered():
  checked = {n for n, s in strategies.STRATEGIES.items() if s.options}
  assert {row[0] for row in BAD_OPTIONS} == checked
  # The smoke config's own options pass every check.
  config = load_config('gaussian', 'smoke')
  for n in checked:
    strategies.get_strategy(n).check_options(config.strategy_options)
  assert coreset_ensembles.beta_of(config.strategy_options) == coreset_ensembles.beta_of(None) == 10


def test_unknown_strategy_lists_sorted_names():
  with pytest.raises(ValueError) as e:
    strategies.get_strategy('bogus')
  assert str(e.value) == (
      "unknown strategy 'bogus'; valid: " + ', '.join(sorted(strategies.STRATEGIES))
  )
  listed = str(e.value).split('valid: ')[1].split(', ')  # sorted, whatever is registered
  assert listed == sorted(listed)
  assert {'balanced_uncertainty', 'coreset', 'ensemble_bald'} <= set(listed)


# -- behaviour on two Gaussian blobs ------------------------------------------


def blob_inputs(m=5, n=600, seed=0):
  """Blobs split by x0 = 0; member logits from a noisy logistic model of x0."""
  ds = data_lib.gaussian_blobs(num_train=n, num_test=2, seed=seed)
  x = ds.x_train
  rng = np.random.default_rng(seed)
  z = 3.0 * x[None, :, 0] + rng.normal(scale=1.0, size=(m, n))  # member-wise noise
  logits = np.stack([-z / 2, z / 2], axis=-1).astype(np.float32)
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, 10, replace=False)] = True
  # The members' logits double as MC dropout passes for strategies that read those,
  # and member 0's noise-free model is a linear classifier on the points.
  linear = {
      'params': {
          'Dense_0': {
              'kernel': np.array([[-1.5, 1.5], [0.0, 0.0]], np.float32),
              'bias': np.zeros(2, np.float32),
          }
      }
  }
  classifier = strategies.Classifier(
      model=models.MLP(num_classes=2, hidden=()),
      spec=train.InputSpec(),
      variables=linear,
      x=x,
      chunk_size=256,
  )
  return x, strategies.Inputs(
      labeled=labeled, logits=logits, embeddings=x, mc_logits=logits, classifier=classifier
  )


def test_uncertainty_strategies_pick_near_the_boundary():
  x, inputs = blob_inputs()
  k = 20
  key = jax.random.PRNGKey(0)
  rand = np.asarray(strategies.get_strategy('random').select(inputs, k, key, None))
  baseline = np.abs(x[rand, 0]).mean()
  assert baseline > 0.6
  for name, s in strategies.STRATEGIES.items():
    if s.kind not in ('uncertainty', 'hybrid'):
      continue
    # Default options: coreset_ensembles with beta=10 sees 200 candidates
    # but only ~110 points have any disagreement, and only those qualify.
    picks = np.asarray(s.select(inputs, k, key, ml_collections.ConfigDict()))
    assert np.abs(x[picks, 0]).mean() < 0.5 * baseline, name


def test_coreset_ensembles_never_admits_agreed_points_past_k():
  _, inputs = blob_inputs()
  vr = np.asarray(kernels.variation_ratio(inputs.logits))
  eligible = (vr > 0) & ~np.asarray(inputs.labeled)
  assert 20 < eligible.sum() < 1000  # a huge beta would reach agreed points
  picks = np.asarray(
      strategies.get_strategy('coreset_ensembles').select(
          inputs, 20, jax.random.PRNGKey(0), ml_collections.ConfigDict({'beta': 1000.0})
      )
  )
  assert (vr[picks] > 0).all()


def min_pairwise_distance(x):
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  return d[np.triu_indices(len(x), 1)].min()


@pytest.mark.parametrize('seed', [0, 1])
def test_coreset_ensembles_beta_one_is_ensembles(seed):
  ens = strategies.get_strategy('ensembles')
  ce = strategies.get_strategy('coreset_ensembles')
  for inputs in (random_inputs(seed), blob_inputs(seed=seed)[1]):
    key = jax.random.PRNGKey(seed)
    a = np.asarray(ens.select(inputs, K, key, None))
    b = np.asarray(ce.select(inputs, K, key, ml_collections.ConfigDict({'beta': 1.0})))
    assert set(a.tolist()) == set(b.tolist())
    # A different key breaks the (many) ties differently: still matches its own key.
    key2 = jax.random.PRNGKey(seed + 100)
    assert set(ens.select(inputs, K, key2, None).tolist()) == set(
        ce.select(inputs, K, key2, ml_collections.ConfigDict({'beta': 1})).tolist()
    )


def test_coreset_ensembles_large_beta_spreads_picks():
  x, inputs = blob_inputs()
  k = 10
  key = jax.random.PRNGKey(0)
  ens = np.asarray(strategies.get_strategy('ensembles').select(inputs, k, key, None))
  ce = np.asarray(
      strategies.get_strategy('coreset_ensembles').select(
          inputs, k, key, ml_collections.ConfigDict({'beta': 10.0})
      )
  )
  assert min_pairwise_distance(x[ce]) > 2 * min_pairwise_distance(x[ens])
  # Still near the boundary, unlike plain coreset.
  core = np.asarray(strategies.get_strategy('coreset').select(inputs, k, key, None))
  assert np.abs(x[ce, 0]).mean() < np.abs(x[core, 0]).mean()


@pytest.mark.parametrize('beta', [0.5, float('nan'), 'ten'])
def test_coreset_ensembles_rejects_bad_beta(beta):
  with pytest.raises(ValueError, match='beta must be a finite number >= 1'):
    coreset_ensembles.select(
        random_inputs(), K, jax.random.PRNGKey(0), ml_collections.ConfigDict({'beta': beta})
    )


def test_coreset_ensembles_candidates_beyond_pool():
  # ceil(beta * k) larger than the pool: candidates are all unlabeled points.
  inputs = random_inputs(n=20, num_labeled=5)
  picks = np.asarray(
      coreset_ensembles.select(
          inputs, 10, jax.random.PRNGKey(0), ml_collections.ConfigDict({'beta': 100})
      )
  )
  assert len(set(picks.tolist())) == 10 and not inputs.labeled[picks].any()


# -- class quotas ------------------------------------------------------------


@pytest.mark.parametrize(
    'freq,k,available,expected',
    [
        ([0.9, 0.1], 10, [900, 100], [1, 9]),  # inverse proportion
        ([0.5, 0.5], 5, [10, 10], [3, 2]),  # remainder tie: lower index
        ([0.5, 0.3, 0.2], 7, [50, 30, 20], [1, 2, 4]),  # 1.35, 2.26, 3.39 -> +1 to class 2
        ([0.9, 0.1], 10, [900, 3], [7, 3]),  # leftover of a short class
        ([0.5, 0.3, 0.2], 12, [50, 30, 1], [4, 7, 1]),  # cap class 2; 11 -> 4.125, 6.875
        ([0.6, 0.3, 0.1], 10, [100, 2, 1], [7, 2, 1]),  # caps cascade: class 2, then 1
        ([0.5, 0.0, 0.5], 4, [10, 0, 10], [2, 0, 2]),  # empty class gets nothing
        ([0.9, 0.1], 10, [4, 3], [4, 3]),  # fewer than k in all: everything
        ([1.0, 0.0], 3, [1, 5], [1, 2]),  # zero-frequency class as last resort
    ],
)
def test_class_quota_exact(freq, k, available, expected):
  quota = np.asarray(
      balanced_uncertainty.class_quota(
          np.asarray(freq, np.float32), k, np.asarray(available, np.int32)
      )
  )
  np.testing.assert_array_equal(quota, expected)
  assert quota.dtype == np.int32


def test_balanced_uncertainty_split_matches_quota():
  rng = np.random.default_rng(0)
  n, m = 400, 3
  labeled = np.zeros(n, bool)
  labeled[:20] = True
  for n_minority, expected in ((40, [1, 9]), (5, [5, 5])):  # 90/10, then a short minority
    pred = np.zeros(n, np.int32)
    minority = rng.choice(np.arange(20, n), n_minority, replace=False)
    pred[minority] = 1
    # Members agree on the class; a random third of them flips some points a little.
    margin = np.where(pred == 1, 1.0, -1.0)[None] * rng.uniform(0.5, 2, size=(m, n))
    flip = rng.random((m, n)) < 0.2
    z = np.where(flip & (np.arange(m)[:, None] == 0), -0.1 * margin, margin)
    logits = np.stack([-z, z], axis=-1).astype(np.float32)
    inputs = strategies.Inputs(labeled=labeled, logits=logits)
    got_pred, available = balanced_uncertainty.predicted_classes(logits, labeled)
    freq = np.asarray(available) / np.sum(available)
    promised = np.asarray(balanced_uncertainty.class_quota(freq.astype(np.float32), 10, available))
    np.testing.assert_array_equal(promised, expected)
    picks = np.asarray(balanced_uncertainty.select(inputs, 10, jax.random.PRNGKey(1)))
    assert len(set(picks.tolist())) == 10 and not labeled[picks].any()
    got_pred = np.asarray(got_pred)
    np.testing.assert_array_equal(got_pred, pred)
    np.testing.assert_array_equal(np.bincount(got_pred[picks], minlength=2), promised)
    # Within each class, the picks are among its most uncertain unlabeled points.
    vr = np.asarray(kernels.variation_ratio(logits))
    for c in (0, 1):
      mine = np.zeros(n, bool)
      mine[picks] = True
      in_c = (got_pred == c) & ~labeled
      assert vr[mine & in_c].min() >= vr[~mine & in_c].max(initial=-np.inf)
