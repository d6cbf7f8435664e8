"""Diversity and low-budget strategies against exact answers on hand-made points.

k-means, BADGE, DAL, information density, TypiClust and ProbCover, their
kernels, and where strategies take embeddings from (`strategy_options.embeddings`).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import config_lib
from jal import data as data_lib
from jal import experiment
from jal import kernels
from jal import strategies
from jal import train
from jal.strategies import badge, dal, information_density, kmeans, probcover, typiclust

Options = ml_collections.ConfigDict


def select(name, inputs, k, seed=0, **options):
  picks = strategies.get_strategy(name).select(
      inputs, k, jax.random.PRNGKey(seed), Options(options)
  )
  return np.asarray(picks)


def planted(sizes, centres, scale, seed=0):
  """Gaussian clusters of the given sizes around `centres`, in shuffled order.

  Returns (x f32[n, d], cluster id i32[n]).
  """
  rng = np.random.default_rng(seed)
  ids = np.repeat(np.arange(len(sizes)), sizes)
  ids = ids[rng.permutation(len(ids))]
  centres = np.asarray(centres, np.float32)
  x = centres[ids] + scale * rng.normal(size=(len(ids), centres.shape[1]))
  return x.astype(np.float32), ids


# -- kernels: k-means and k-means++ seeding ---------------------------------


def test_nearest_center_matches_brute_force_across_blocks():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2500, 3)).astype(np.float32)  # 3 blocks of 1024, the last padded
  c = rng.normal(size=(7, 3)).astype(np.float32)
  d = ((x[:, None] - c[None]) ** 2).sum(-1)
  assign, dist = kernels.nearest_center(x, c)
  np.testing.assert_array_equal(assign, d.argmin(1))
  np.testing.assert_allclose(dist, d.min(1), rtol=1e-5, atol=1e-5)


def test_kmeans_recovers_planted_clusters_and_ignores_masked_points():
  centres = [[0, 0], [50, 0], [0, 50]]
  x, ids = planted([30, 20, 10], centres, 1.0)
  outlier = np.array([[1000.0, 1000.0]], np.float32)
  xs = np.concatenate([x, outlier])
  mask = np.arange(len(xs)) < len(x)  # the outlier may neither seed nor move a centre
  for seed in range(3):
    got, assign = kernels.kmeans(xs, 3, jax.random.PRNGKey(seed), 10, mask=mask)
    got, assign = np.asarray(got), np.asarray(assign)
    # Each centre is its cluster's mean: Lloyd's fixed point on separated clusters.
    order = [int(np.argmin(((got - c) ** 2).sum(1))) for c in centres]
    assert sorted(order) == [0, 1, 2]
    for true_id, cid in enumerate(order):
      np.testing.assert_allclose(got[cid], x[ids == true_id].mean(0), atol=1e-4)
      assert (assign[:-1][ids == true_id] == cid).all()


def test_d2_seeding_draws_proportional_to_squared_distance():
  # Seed 0 at the origin; points 1 and 2 at distances 1 and 3: P(2) = 9 / 10.
  x = jnp.array([[0.0], [1.0], [3.0]])
  sq = lambda j: (x[:, 0] - x[j, 0]) ** 2
  draw = jax.vmap(lambda key: kernels.d2_seeding(sq, jnp.ones(3, bool), key, 2, 0)[1])
  second = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 4000)))
  assert set(second.tolist()) == {1, 2}
  assert abs(np.mean(second == 2) - 0.9) < 0.02  # 4 standard errors


def test_d2_seeding_of_duplicates_stays_distinct():
  x = jnp.zeros((6, 2))  # every D^2 is 0 after the first seed: uniform draws
  eligible = jnp.array([True, True, False, True, True, True])
  seeds = np.asarray(
      jax.jit(
          lambda key: kernels.d2_seeding(
              lambda j: jnp.sum((x - x[j]) ** 2, -1), eligible, key, 5, 1
          )
      )(jax.random.PRNGKey(0))
  )
  assert sorted(seeds.tolist()) == [0, 1, 3, 4, 5] and seeds[0] == 1


# -- kmeans -------------------------------------------------------------------


def test_kmeans_picks_the_point_nearest_each_centre_largest_cluster_first():
  # Three clusters whose means are data points: sizes 5, 4, 3; far apart.
  pts = [
      [0, 0],
      [1, 0],
      [-1, 0],
      [0, 1],
      [0, -1],  # mean (0, 0)
      [100, 0],
      [101, 0],
      [99, 0],
      [100, 0.5],  # mean (100, 0.125)
      [0, 100],
      [0.5, 100],
      [-0.5, 100],  # mean (0, 100)
      [50, 50],
      [0.1, 0.1],
  ]  # labeled
  x = np.asarray(pts, np.float32)
  perm = np.random.default_rng(0).permutation(len(x))
  labeled = np.zeros(len(x), bool)
  labeled[[12, 13]] = True
  inputs = strategies.Inputs(labeled=labeled[perm], embeddings=x[perm])
  for seed in range(3):
    picks = perm[select('kmeans', inputs, 3, seed=seed)]
    np.testing.assert_array_equal(picks, [0, 5, 9])


# -- BADGE --------------------------------------------------------------------


def brute_force_gradient_embeddings(logits, h):
  """g_i = outer(p_i - onehot(argmax p_i), h_i), materialised: f32[n, c * d]."""
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  a = p - np.eye(p.shape[1])[p.argmax(1)]
  return (a[:, :, None] * h[:, None, :]).reshape(len(h), -1)


def test_badge_equals_brute_force_gradient_embeddings():
  rng = np.random.default_rng(0)
  n, c, d, k = 40, 3, 4, 8
  logits = rng.normal(size=(n, c)).astype(np.float32) * 2
  h = rng.normal(size=(n, d)).astype(np.float32)
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, 5, replace=False)] = True
  g = brute_force_gradient_embeddings(logits.astype(np.float64), h.astype(np.float64))
  sq = ((g[:, None] - g[None]) ** 2).sum(-1)
  a = badge.gradient_factors(logits)
  for j in (0, 17, 39):
    np.testing.assert_allclose(
        badge.gradient_sq_dists_to(a, jnp.asarray(h), j), sq[:, j], rtol=1e-4, atol=1e-5
    )
  # The picks equal k-means++ run on the materialised g with the same draws.
  norms = np.where(labeled, -np.inf, (g**2).sum(1))
  g32 = jnp.asarray(g, jnp.float32)
  brute = jax.jit(
      lambda key: kernels.d2_seeding(
          lambda j: jnp.sum((g32 - g32[j]) ** 2, -1), ~labeled, key, k, int(np.argmax(norms))
      )
  )
  for seed in range(2):
    key = jax.random.PRNGKey(seed)
    want = brute(key)
    inputs = strategies.Inputs(labeled=labeled, logits=logits[None], embeddings=h)
    got = select('badge', inputs, k, seed=seed)
    np.testing.assert_array_equal(got, want)
    assert got[0] == np.argmax(norms)  # the largest gradient first, as the authors' code


def test_badge_takes_at_most_one_point_of_zero_gradient():
  # 20 points the model is sure of (p exactly one-hot, so g = 0) and 10
  # uncertain ones. Once one g = 0 point is a centre, the others are at D^2 = 0
  # and can never be drawn while any uncertain point is left.
  rng = np.random.default_rng(0)
  logits = np.concatenate([rng.normal(size=(10, 3)), np.tile([[1e4, 0, 0]], (20, 1))])
  h = rng.normal(size=(30, 5)).astype(np.float32)
  inputs = strategies.Inputs(
      labeled=np.zeros(30, bool), logits=logits[None].astype(np.float32), embeddings=h
  )
  confident_picks = [np.sum(select('badge', inputs, 8, seed=seed) >= 10) for seed in range(10)]
  assert max(confident_picks) == 1  # 2/3 of the pool, yet one representative


# -- information density --------------------------------------------------------


def test_information_density_exact_on_hand_made_vectors():
  h = np.array([[1, 0], [0, 2], [1, 1], [3, 0], [-1, -1]], np.float32)
  labeled = np.array([False, False, False, False, True])
  # Unlabeled unit vectors: (1,0), (0,1), (1,1)/r2, (1,0) -> mean below.
  r2 = np.sqrt(2.0)
  centre = np.array([(1 + 1 / r2 + 1) / 4, (1 + 1 / r2) / 4])
  units = h / np.linalg.norm(h, axis=1, keepdims=True)
  want_cos = units @ centre
  brute = (units @ units[~labeled].T).mean(1)  # the n x n definition
  np.testing.assert_allclose(want_cos, brute, atol=1e-12)
  got = information_density.mean_cosine_similarity(h, ~labeled)
  np.testing.assert_allclose(got, want_cos, atol=1e-6)
  assert want_cos[4] < 0  # (-1,-1) points away: density clamped to 0

  p = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.5, 0.5]])
  member_logits = np.log(p)[None].astype(np.float32)
  ent = -(p * np.log(p)).sum(1)
  for beta in (0.0, 1.0, 2.5):
    want = ent * np.maximum(want_cos, 0) ** beta
    got = information_density.information_density(member_logits, h, labeled, beta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # beta = 1: 2 (entropy 0.673) sits nearest the pool's mean direction (cos
  # 0.781) and beats 0 and 3 (entropy log 2 = 0.693, cos 0.677), which tie
  # (3 = 3 * (1, 0) is no denser than 0); 1 (0.9/0.1, cos 0.427) comes last.
  inputs = strategies.Inputs(labeled=labeled, logits=member_logits, embeddings=h)
  scores = ent * np.maximum(want_cos, 0)
  picks = select('information_density', inputs, 4)
  np.testing.assert_allclose(scores[picks], np.sort(scores[~labeled])[::-1], rtol=1e-5)
  assert picks[0] == 2 and set(picks[1:3].tolist()) == {0, 3} and picks[3] == 1
  # beta = 0 is plain ensemble entropy: the two log 2 points first.
  picks0 = select('information_density', inputs, 4, density_beta=0.0)
  assert set(picks0[:2].tolist()) == {0, 3} and picks0[2] == 2


@pytest.mark.parametrize('beta', [-1.0, float('inf'), 'one', True])
def test_information_density_rejects_bad_beta(beta):
  with pytest.raises(
      ValueError,
      match=r'information_density: strategy_options.density_beta ' r'must be a finite number >= 0',
  ):
    information_density.beta_of(Options({'density_beta': beta}))


# -- DAL ----------------------------------------------------------------------

FAST_DAL = dict(dal_steps=150, dal_width=32, dal_subqueries=3)


def test_dal_picks_from_the_region_the_labeled_set_misses():
  x, ids = planted([60, 60], [[0, 0, 0, 0], [6, 6, 6, 6]], 1.0)
  labeled = np.zeros(len(x), bool)
  labeled[np.flatnonzero(ids == 0)[:12]] = True  # labels only in cluster 0
  inputs = strategies.Inputs(labeled=labeled, embeddings=x)
  picks = select('dal', inputs, 9, **FAST_DAL)
  assert len(set(picks.tolist())) == 9 and not labeled[picks].any()
  assert (ids[picks] == 1).all()


def test_dal_sub_queries_and_their_sizes():
  assert dal.sub_query_sizes(10, 3) == [4, 3, 3]
  assert dal.sub_query_sizes(2, 10) == [1, 1]
  assert dal.sub_query_sizes(20, 10) == [2] * 10


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('dal_subqueries', 0, 'dal_subqueries must be a positive int, got 0'),
        ('dal_steps', 2.5, 'dal_steps must be a positive int, got 2.5'),
        ('dal_batch_size', 63, 'dal_batch_size must be a positive even int, got 63'),
        ('dal_batch_size', 0, 'dal_batch_size must be a positive even int, got 0'),
        ('dal_learning_rate', -1.0, 'dal_learning_rate must be a finite number > 0'),
    ],
)
def test_dal_rejects_bad_options(field, value, message):
  with pytest.raises(ValueError, match=f'dal: strategy_options.{message}'):
    dal.settings_of(Options({field: value}))


# -- TypiClust ---------------------------------------------------------------------


def brute_force_typicality(x, k_nn=20):
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  k = min(k_nn, len(x) - 1)
  return 1.0 / np.sort(d, axis=1)[:, :k].mean(1)


def test_cluster_typicality_matches_brute_force_across_tiles():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(700, 3)).astype(np.float32)
  members = np.zeros(700, bool)
  members[rng.choice(700, 600, replace=False)] = True  # 2 x 2 tiles of 512
  got = np.asarray(jax.jit(typiclust.cluster_typicality, static_argnums=2)(x, members, 20))
  np.testing.assert_allclose(got[members], brute_force_typicality(x[members]), rtol=1e-4)
  assert np.isneginf(got[~members]).all()
  small = np.zeros(700, bool)
  small[[3, 9, 11]] = True  # K = min(20, 3 - 1) = 2
  got = np.asarray(typiclust.cluster_typicality(x, small, 20))
  np.testing.assert_allclose(got[small], brute_force_typicality(x[small]), rtol=1e-5)


def test_typiclust_one_typical_point_per_cluster_largest_first():
  sizes = [40, 30, 20, 12]
  centres = [[0, 0], [30, 0], [0, 30], [30, 30]]
  x, ids = planted(sizes, centres, 1.0)
  densest = [
      int(np.flatnonzero(ids == c)[np.argmax(brute_force_typicality(x[ids == c]))])
      for c in range(4)
  ]
  # Nothing labeled: 4 clusters, one pick each, by size.
  inputs = strategies.Inputs(labeled=np.zeros(len(x), bool), embeddings=x)
  np.testing.assert_array_equal(select('typiclust', inputs, 4), densest)
  # The densest point is central: nearer its centre than the cluster's typical point.
  for c, j in enumerate(densest):
    spread = np.linalg.norm(x[ids == c] - centres[c], axis=1)
    assert np.linalg.norm(x[j] - centres[c]) < np.median(spread)
  # One label (the least typical point) in the largest cluster.
  members0 = np.flatnonzero(ids == 0)
  labeled = np.zeros(len(x), bool)
  labeled[members0[np.argmin(brute_force_typicality(x[members0]))]] = True
  # Capped at 4 clusters, 5 picks: the 3 uncovered, largest first; then every
  # cluster has one label and the largest comes first; then cluster 1 (now
  # the largest with one label) gives its second most typical point.
  inputs = strategies.Inputs(labeled=labeled, embeddings=x)
  picks = select('typiclust', inputs, 5, typiclust_max_clusters=4)
  np.testing.assert_array_equal(picks[:4], densest[1:] + [densest[0]])
  typ1 = brute_force_typicality(x[ids == 1])
  assert picks[4] == np.flatnonzero(ids == 1)[np.argsort(typ1)[-2]]


# -- ProbCover ----------------------------------------------------------------


def test_ball_graph_equals_brute_force():
  rng = np.random.default_rng(0)
  x = probcover.normalise(rng.normal(size=(1200, 3)))  # 3 row blocks of 512
  delta = 0.3
  src, dst = probcover.ball_graph(x, jnp.float32(delta))
  src, dst = np.asarray(src), np.asarray(dst)
  real = src < 1200
  xn = np.asarray(x, np.float64)
  d = np.sqrt(((xn[:, None] - xn[None]) ** 2).sum(-1))
  want = set(zip(*np.nonzero(d < delta)))
  got = set(zip(src[real].tolist(), dst[real].tolist()))
  assert len(got) == real.sum()  # no duplicates
  near = np.abs(d - delta) < 1e-5  # rounding may decide these
  assert {e for e in got ^ want if not near[e]} == set()
  assert (np.diff(src) >= 0).all() and (src[~real] == 1200).all()


def test_max_coverage_exact_on_a_line():
  # 1-D points; delta = 1.5 balls: idx 1 covers {0,1,2}, idx 4 covers {4,5}.
  pos = np.array([0, 1, 2, 3, 10, 11, 20], np.float32)[:, None]
  src, dst = probcover.ball_graph(jnp.asarray(pos), jnp.float32(1.5))
  labeled = np.zeros(7, bool)
  key = jax.random.PRNGKey(0)
  picks = np.asarray(probcover.max_coverage(src, dst, labeled, key, k=4))
  # Gains 3 (1 and 2 tie: lowest index), then 2 (4 and 5), then 1 each: 2
  # (covers 3) ties with 3 and 6; then only 6 has an uncovered point.
  np.testing.assert_array_equal(picks, [1, 4, 2, 6])
  # Nothing left to cover: the rest are random unlabeled points.
  picks = np.asarray(probcover.max_coverage(src, dst, labeled, key, k=7))
  assert sorted(picks[4:].tolist()) == [0, 3, 5]
  # Labeled balls start covered: {0, 1} and {6}. Then 2 (covers 2 and 3)
  # beats 1 (only 2), then 4; then nothing is left to cover.
  labeled[6] = labeled[0] = True
  picks = np.asarray(probcover.max_coverage(src, dst, labeled, key, k=3))
  np.testing.assert_array_equal(picks[:2], [2, 4])
  assert picks[2] in (1, 3, 5)


def seven_clusters(seed=0):
  """7 tight clusters around orthogonal directions in 8-D, sizes 30 down to 12."""
  sizes = [30, 27, 24, 21, 18, 15, 12]
  x, ids = planted(sizes, np.eye(8)[:7] * 10, 0.3, seed)
  return x, ids


def test_purity_delta_lies_between_intra_and_inter_cluster_distances():
  x, ids = seven_clusters()
  xn = np.asarray(probcover.normalise(x), np.float64)
  d = np.sqrt(((xn[:, None] - xn[None]) ** 2).sum(-1))
  same = ids[:, None] == ids[None]
  intra, inter = d[same].max(), d[~same].min()
  assert intra < 0.3 < 1.2 < inter
  inputs = strategies.Inputs(
      labeled=np.zeros(len(x), bool), logits=np.zeros((1, len(x), 7)), embeddings=x
  )
  delta = probcover.delta_of(inputs, jnp.asarray(xn, jnp.float32), jax.random.PRNGKey(0), Options())
  # Larger than any within-cluster distance; an order statistic of d_out, at
  # most the 5% quantile, so below most between-cluster distances.
  d_out = np.where(same, np.inf, d).min(1)
  assert intra < delta <= np.quantile(d_out, 0.05) + 1e-6
  assert delta < np.median(d[~same]) and inter < 1.4
  # The largest delta of purity >= 0.95: purity drops below just above it.
  assert probcover.purity(d_out, delta - 1e-5) >= 0.95 > probcover.purity(d_out, delta + 1e-4)


def test_probcover_covers_seven_planted_clusters_one_pick_each():
  x, ids = seven_clusters()
  inputs = strategies.Inputs(
      labeled=np.zeros(len(x), bool), logits=np.zeros((1, len(x), 7), np.float32), embeddings=x
  )
  picks = select('probcover', inputs, 7)
  assert sorted(ids[picks].tolist()) == list(range(7))
  # With the largest cluster labeled, the next 6 picks cover the other 6.
  labeled = ids == 0
  inputs = inputs._replace(labeled=labeled)
  picks = select('probcover', inputs, 6)
  assert sorted(ids[picks].tolist()) == list(range(1, 7))


def test_probcover_needs_a_cluster_count():
  x, _ = seven_clusters()
  inputs = strategies.Inputs(labeled=np.zeros(len(x), bool), embeddings=x)
  with pytest.raises(ValueError, match='probcover: needs logits'):
    select('probcover', inputs, 3)
  picks = select('probcover', inputs, 7, probcover_clusters=7)
  assert len(set(picks.tolist())) == 7
  with pytest.raises(ValueError, match='probcover_alpha must be a number in'):
    select('probcover', inputs, 3, probcover_clusters=7, probcover_alpha=1.5)


# -- where embeddings come from ------------------------------------------------


def gaussian_config(**options):
  c = config_lib.base_config()
  c.data = dict(name='gaussian_blobs', num_train=40, num_test=10)
  c.strategies = ('coreset',)
  c.train.members = 2
  c.strategy_options.update(options)
  return c


def test_embedding_source_errors(tmp_path):
  with pytest.raises(
      ValueError,
      match=r"unknown strategy_options.embeddings 'simclr'; "
      r'valid: model, pretrained, or the path of a .npy file',
  ):
    config_lib.validate(gaussian_config(embeddings='simclr'))
  with pytest.raises(ValueError, match='needs config.model.pretrained_path'):
    config_lib.validate(gaussian_config(embeddings='pretrained'))
  missing = str(tmp_path / 'none.npy')
  with pytest.raises(FileNotFoundError, match=f'file not found: {missing}'):
    config_lib.validate(gaussian_config(embeddings=missing))
  path = str(tmp_path / 'emb.npy')
  np.save(path, np.zeros((39, 4), np.float32))
  config = gaussian_config(embeddings=path)
  config_lib.validate(config)
  dataset = data_lib.gaussian_blobs(num_train=40, num_test=10)
  with pytest.raises(
      ValueError, match=r'has shape \(39, 4\); it needs one row per pool ' r'point, \[40, d\]'
  ):
    config_lib.validate_against_data(config, dataset)


def test_npy_embeddings_replace_the_model_s(tmp_path):
  path = str(tmp_path / 'emb.npy')
  emb = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
  np.save(path, emb)
  config = gaussian_config(embeddings=path)
  dataset = data_lib.gaussian_blobs(num_train=40, num_test=10)
  config_lib.validate_against_data(config, dataset)
  exp = experiment.Experiment(config, dataset)
  labeled = np.zeros(40, bool)
  labeled[:5] = True
  key = jax.random.PRNGKey(0)
  # Embeddings only: no model is run at all (states unused).
  inputs = exp.score(strategies.get_strategy('coreset'), None, labeled, key)
  np.testing.assert_array_equal(inputs.embeddings, emb)
  assert inputs.logits is None
  assert exp.fixed_embeddings is exp.fixed_embeddings  # computed once
  np.testing.assert_array_equal(
      exp.select(strategies.get_strategy('coreset'), inputs, key),
      kernels.k_center_greedy(emb, labeled, k=config.query_size),
  )
  # Logits still come from the model.
  states = train.init_ensemble(exp.trainer, jax.random.split(key, 2), exp.x_train)
  inputs = exp.score(strategies.get_strategy('probcover'), states, labeled, key)
  np.testing.assert_array_equal(inputs.embeddings, emb)
  assert inputs.logits.shape == (2, 40, 2)


def test_pretrained_embeddings_are_the_loaded_network_s(tmp_path):
  from jal import pretrained  # pylint: disable=g-import-not-at-top
  from tests.test_pretrained import random_state_dict  # pylint: disable=g-import-not-at-top

  path = str(tmp_path / 'resnet18.npz')
  np.savez(path, **random_state_dict(0))
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  y = np.array([0, 1, 0, 1, 0, 1], np.int32)
  dataset = data_lib.Dataset(
      name='tiny',
      x_train=x,
      y_train=y,
      x_test=x[:2],
      y_test=y[:2],
      num_classes=2,
      class_names=('a', 'b'),
      mean=(0.5,) * 3,
      std=(0.25,) * 3,
  )
  config = gaussian_config(embeddings='pretrained')
  config.model.update(
      name='resnet18', stem='imagenet', width=64, pretrained_path=path, compute_dtype='float32'
  )
  config.eval_batch_size = 6
  config_lib.validate(config)
  exp = experiment.Experiment(config, dataset)
  got = np.asarray(exp.fixed_embeddings)
  # Independently: the converted weights on a template of random numbers.
  shapes = jax.eval_shape(
      functools.partial(exp.model.init, train=False),
      jax.random.PRNGKey(0),
      jnp.zeros((1, 32, 32, 3)),
  )
  template = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), shapes)
  variables = pretrained.load_pretrained(path, template, stem='imagenet')
  xn = train.prepare_inputs(jnp.asarray(x), exp.eval_spec)
  _, want = jax.jit(functools.partial(exp.model.apply, train=False))(variables, xn)
  assert got.shape == (6, 512)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.std(got, axis=0).max() > 0  # features differ between images
  # The CIFAR stem's conv1 is not in the weights: refused.
  config.model.stem = 'cifar'
  with pytest.raises(ValueError, match=r"needs config.model.stem='imagenet'"):
    config_lib.validate(config)


def test_option_defaults_match_base_config():
  so = config_lib.base_config().strategy_options
  for opts in (None, so):
    assert dal.settings_of(opts) == dict(
        subqueries=10, steps=300, width=256, batch_size=64, learning_rate=1e-3
    )
    assert information_density.beta_of(opts) == 1.0
    assert kmeans.iters_of(opts) == 20
    assert typiclust.settings_of(opts) == (500, 20)
    assert probcover.settings_of(opts) == dict(delta=None, alpha=0.95, iters=20, clusters=None)
  assert so.embeddings == 'model'
