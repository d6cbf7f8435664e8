"""vaal, dfal and egl: known answers on hand-made data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jal import config_lib
from jal import strategies
from jal import train
from jal.strategies import dfal, egl, vaal

KEY = jax.random.PRNGKey(0)


def options(**kw):
  return ml_collections.ConfigDict(kw)


def classifier_inputs(model, variables, x, labeled, spec=train.InputSpec(), chunk_size=16):
  return strategies.Inputs(
      labeled=np.asarray(labeled),
      classifier=strategies.Classifier(
          model=model, spec=spec, variables=variables, x=jnp.asarray(x), chunk_size=chunk_size
      ),
  )


# -- egl ---------------------------------------------------------------------


def test_egl_exact_on_hand_made_probabilities():
  p = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1]]
  logits = np.log(np.maximum(np.asarray(p, np.float32), 1e-30))
  h = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], np.float32)
  # sum_y p_y ||p - e_y|| * sqrt(||h||^2 + 1), by hand:
  expected = [
      0.0,
      np.sqrt(0.5),  # both ||p - e_y||^2 = 0.25 + 0.25
      np.sqrt(2 / 3) * np.sqrt(26.0),  # (2/3)^2 + 2 (1/3)^2; ||h|| = 5
      0.7 * np.sqrt(0.14) + 0.2 * np.sqrt(1.14) + 0.1 * np.sqrt(1.34),
  ]  # ||p||^2 = 0.54
  np.testing.assert_allclose(egl.expected_gradient_length(logits, h), expected, atol=1e-6)


def test_egl_equals_expected_norm_of_jax_grad_of_a_dense_head():
  n, d, c = 6, 5, 4
  rng = np.random.default_rng(0)
  h = rng.normal(size=(n, d)).astype(np.float32) * 2
  head = nn.Dense(c)
  params = head.init(jax.random.PRNGKey(1), h[:1])
  logits = head.apply(params, h)

  def grad_norm(hi, y):
    loss = lambda prm: optax.softmax_cross_entropy_with_integer_labels(
        head.apply(prm, hi[None]), y[None]
    )[0]
    return optax.global_norm(jax.grad(loss)(params))

  norms = jax.vmap(lambda hi: jax.vmap(lambda y: grad_norm(hi, y))(jnp.arange(c)))(h)  # [n, c]
  expected = np.sum(np.asarray(jax.nn.softmax(logits)) * np.asarray(norms), axis=-1)
  np.testing.assert_allclose(egl.expected_gradient_length(logits, h), expected, rtol=1e-5)


def test_egl_picks_the_largest_scores_of_member_zero():
  rng = np.random.default_rng(0)
  n = 30
  logits = rng.normal(size=(3, n, 4)).astype(np.float32) * 3
  emb = rng.normal(size=(n, 8)).astype(np.float32)
  labeled = np.zeros(n, bool)
  labeled[:5] = True
  scores = np.asarray(egl.expected_gradient_length(logits[0], emb))
  picks = egl.select(strategies.Inputs(labeled=labeled, logits=logits, embeddings=emb), 6, KEY)
  np.testing.assert_array_equal(picks, 5 + np.argsort(-scores[5:])[:6])
  assert strategies.get_strategy('egl').needs == {'logits', 'embeddings'}


# -- dfal --------------------------------------------------------------------


class Linear(nn.Module):
  """A linear classifier over the flattened input, returning (logits, x)."""

  classes: int = 2

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.classes)(x), x


class Circle(nn.Module):
  """Two classes split by the unit circle: logits (0, ||x||^2 - 1)."""

  @nn.compact
  def __call__(self, x, train=False):
    f = jnp.sum(x * x, axis=-1) - 1.0
    return jnp.stack([jnp.zeros_like(f), f], axis=-1), x


def linear_variables(kernel, bias):
  return {
      'params': {
          'Dense_0': {
              'kernel': jnp.asarray(kernel, jnp.float32),
              'bias': jnp.asarray(bias, jnp.float32),
          }
      }
  }


def norms_of(model, variables, x, max_iter=50, overshoot=0.02, classes=10):
  fn = lambda flat: model.apply(variables, flat.reshape(x.shape))[0]
  return np.asarray(
      dfal.deepfool_norms(fn, jnp.asarray(x).reshape(len(x), -1), max_iter, overshoot, classes)
  )


@pytest.mark.parametrize('overshoot', [0.02, 0.0])
def test_dfal_norm_is_the_distance_to_a_linear_boundary(overshoot):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(60, 2)) * 2).astype(np.float32)
  w, b = np.array([1.0, 2.0]), 0.5  # f_1 - f_0 = w.x + b
  variables = linear_variables(np.stack([np.zeros(2), w], 1), [0.0, b])
  f = x @ w + b
  expected = (1 + overshoot) * (np.abs(f) + 1e-4) / np.linalg.norm(w)
  np.testing.assert_allclose(
      norms_of(Linear(), variables, x, overshoot=overshoot), expected, rtol=1e-5
  )
  # The picks are the unlabeled points nearest the boundary, nearest first.
  labeled = np.zeros(60, bool)
  labeled[np.argsort(np.abs(f))[:3]] = True  # the three nearest are already labeled
  picks = dfal.select(
      classifier_inputs(Linear(), variables, x, labeled), 7, KEY, options(dfal_overshoot=overshoot)
  )
  dist = np.where(labeled, np.inf, np.abs(f))
  np.testing.assert_array_equal(picks, np.argsort(dist)[:7])


def test_dfal_multiclass_linear_steps_to_the_nearest_pairwise_boundary():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 2)).astype(np.float32)
  kernel = np.array([[1.0, -1.0, 0.3], [0.5, 1.5, -2.0]], np.float32)  # [d=2, c=3]
  bias = np.array([0.1, -0.2, 0.0], np.float32)
  logits = x @ kernel + bias
  k0 = logits.argmax(-1)
  gap = logits[np.arange(40), k0][:, None] - logits  # [n, c]
  wdist = np.linalg.norm(kernel.T[None] - kernel.T[k0][:, None], axis=-1)  # [n, c]
  ratio = np.where(np.arange(3)[None] == k0[:, None], np.inf, gap / np.where(wdist > 0, wdist, 1))
  l = ratio.argmin(-1)
  rows = np.arange(40)
  expected = 1.02 * (gap[rows, l] + 1e-4) / wdist[rows, l]  # one step, then across
  np.testing.assert_allclose(
      norms_of(Linear(3), linear_variables(kernel, bias), x), expected, rtol=1e-5
  )
  # With one target class, the runner-up class's boundary is the only one.
  second = np.argsort(-logits, axis=-1)[:, 1]
  expected2 = 1.02 * (gap[rows, second] + 1e-4) / wdist[rows, second]
  np.testing.assert_allclose(
      norms_of(Linear(3), linear_variables(kernel, bias), x, classes=2), expected2, rtol=1e-5
  )


def test_dfal_never_crossing_is_inf_and_ranked_last():
  radius = np.array([0.5, 0.8, 2.0, 3.0, 0.9, 1.5, 0.0], np.float32)
  angle = np.linspace(0, 2, len(radius))
  x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32)
  # One step from inside crosses (r + 1.02 (1 - r^2) / 2r >= 1); from outside
  # it lands at r - 1.02 (r^2 - 1) / 2r > 1, still outside. At r = 0 every
  # gradient vanishes: no direction, +inf however many steps.
  one = norms_of(Circle(), {}, x, max_iter=1)
  inside = (radius < 1) & (radius > 0)
  np.testing.assert_array_equal(np.isfinite(one), inside)
  np.testing.assert_allclose(
      one[inside], 1.02 * (1 - radius[inside] ** 2 + 1e-4) / (2 * radius[inside]), rtol=1e-5
  )
  # With enough steps, outside points converge onto the circle from outside.
  many = norms_of(Circle(), {}, x, max_iter=50)
  outside = radius > 1
  dist = radius - 1
  assert np.isfinite(many[:-1]).all() and np.isinf(many[-1])
  assert (many[outside] >= dist[outside]).all()
  assert (many[outside] <= 1.02 * dist[outside] + 1e-3).all()
  # Ranked: the finite norms smallest first (r = 0.9, 0.8, 0.5), then the rest.
  picks = np.asarray(
      dfal.select(
          classifier_inputs(Circle(), {}, x, np.zeros(7, bool)), 7, KEY, options(dfal_max_iter=1)
      )
  )
  np.testing.assert_array_equal(picks[:3], [4, 1, 0])
  assert set(picks[3:].tolist()) == {2, 3, 5, 6}


def test_dfal_on_images_works_in_normalised_space():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, size=(20, 4, 4, 1)).astype(np.uint8)
  spec = train.InputSpec((0.5,), (0.25,))
  w = rng.normal(size=16).astype(np.float32)
  variables = linear_variables(np.stack([np.zeros(16), w], 1), [0.0, 0.3])
  f = np.asarray(train.prepare_inputs(x, spec)).reshape(20, -1) @ w + 0.3
  labeled = np.zeros(20, bool)
  labeled[0] = True
  picks = dfal.select(
      classifier_inputs(Linear(), variables, x, labeled, spec), 5, KEY, options(dfal_batch_size=8)
  )  # 19 candidates in 3 padded batches
  np.testing.assert_array_equal(picks, np.argsort(np.where(labeled, np.inf, np.abs(f)))[:5])


def test_dfal_attacks_only_the_drawn_candidates():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(60, 2)).astype(np.float32)
  variables = linear_variables([[0.0, 1.0], [0.0, -1.0]], [0.0, 0.2])
  labeled = np.zeros(60, bool)
  labeled[:10] = True
  dist = np.abs(x @ np.array([1.0, -1.0]) + 0.2)
  inputs = classifier_inputs(Linear(), variables, x, labeled)
  seen = set()
  for seed in range(3):
    key = jax.random.PRNGKey(seed)
    cand, valid = dfal.draw_candidates(jnp.asarray(labeled), jax.random.fold_in(key, 0), 15)
    cand = np.asarray(cand)
    assert valid.all() and len(set(cand.tolist())) == 15 and not labeled[cand].any()
    picks = np.asarray(dfal.select(inputs, 4, key, options(dfal_candidates=15)))
    np.testing.assert_array_equal(picks, cand[np.argsort(dist[cand])[:4]])
    seen.add(tuple(sorted(cand.tolist())))
  assert len(seen) == 3
  # Fewer unlabeled points than candidates: all of them, never a labeled one.
  picks = dfal.select(inputs, 50, KEY, options(dfal_candidates=10_000))
  np.testing.assert_array_equal(np.sort(picks), np.arange(10, 60))


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('dfal_candidates', 0, 'dfal: strategy_options.dfal_candidates must be a positive int'),
        ('dfal_max_iter', 2.5, 'dfal: strategy_options.dfal_max_iter must be a positive int'),
        (
            'dfal_overshoot',
            -0.1,
            'dfal: strategy_options.dfal_overshoot must be a finite number >= 0',
        ),
        ('dfal_classes', 1, 'dfal: strategy_options.dfal_classes must be an integer >= 2'),
        ('dfal_batch_size', 0, 'dfal: strategy_options.dfal_batch_size must be a positive int'),
    ],
)
def test_dfal_rejects_bad_options(field, value, message):
  inputs = classifier_inputs(Circle(), {}, np.ones((10, 2), np.float32), np.zeros(10, bool))
  with pytest.raises(ValueError, match=message):
    dfal.select(inputs, 2, KEY, options(**{field: value}))


def test_option_defaults_match_base_config():
  so = config_lib.base_config().strategy_options
  for opts in (None, so):
    assert dfal.settings_of(opts) == (2000, 50, 0.02, 10, None)
    assert vaal.settings_of(opts) == dict(
        steps=1000,
        width=16,
        latent=32,
        disc_width=512,
        batch_size=64,
        beta=1.0,
        adversary_weight=1.0,
        learning_rate=5e-4,
    )


# -- vaal --------------------------------------------------------------------


def two_blobs(num_labeled_a=30, num_unlabeled_a=30, num_b=20):
  """Blob A around (-3, 0), blob B around (3, 0); the labeled points come first."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(num_labeled_a + num_unlabeled_a, 2)) * 0.5 + [-3.0, 0.0]
  b = rng.normal(size=(num_b, 2)) * 0.5 + [3.0, 0.0]
  x = np.concatenate([a, b]).astype(np.float32)
  labeled = np.zeros(len(x), bool)
  labeled[:num_labeled_a] = True
  return x, labeled


SMALL = dict(vaal_steps=150, vaal_disc_width=64)


def test_vaal_discriminator_separates_separable_sets():
  x, labeled = two_blobs(num_unlabeled_a=0)  # labeled: all of A; unlabeled: all of B
  vae = vaal.VAE(shape=(2,), width=16, latent=32)
  disc = vaal.Discriminator(width=64)
  state = vaal.train_vaal(
      vae,
      disc,
      train.InputSpec(),
      64,
      5e-4,
      150,
      1.0,
      1.0,
      KEY,
      jnp.asarray(x),
      jnp.asarray(labeled),
  )
  logits = np.asarray(vaal.labeled_logits(vae, disc, train.InputSpec(), 16, state, jnp.asarray(x)))
  assert logits[labeled].min() > 0 > logits[~labeled].max()


def test_vaal_picks_the_blob_nothing_labeled_resembles():
  x, labeled = two_blobs()  # unlabeled: 30 more of A (like the labeled) and 20 of B
  inputs = classifier_inputs(None, None, x, labeled)
  for seed in range(2):
    picks = np.asarray(vaal.select(inputs, 10, jax.random.PRNGKey(seed), options(**SMALL)))
    assert (picks >= 60).all(), picks  # all in B


def test_vaal_conv_vae_on_images_picks_the_unfamiliar_ones():
  rng = np.random.default_rng(0)
  dark = rng.integers(0, 40, size=(40, 12, 12, 1))
  bright = rng.integers(200, 256, size=(10, 12, 12, 1))
  x = np.concatenate([dark, bright]).astype(np.uint8)  # 12 -> 6 -> 3 -> 2, decoded 16 -> 12
  labeled = np.zeros(50, bool)
  labeled[:20] = True
  inputs = classifier_inputs(None, None, x, labeled, train.InputSpec((0.3,), (0.4,)))
  picks = np.asarray(
      vaal.select(inputs, 5, KEY, options(vaal_steps=100, vaal_width=4, vaal_disc_width=32))
  )
  assert (picks >= 40).all(), picks


def test_vaal_steps_vmap_over_keys_equal_single_runs():
  x, labeled = two_blobs()
  x, labeled = jnp.asarray(x), jnp.asarray(labeled)
  spec = train.InputSpec()
  vae, disc = vaal.VAE(shape=(2,), width=8, latent=4), vaal.Discriminator(width=16)
  order = jnp.argsort(~labeled, stable=True)
  num_labeled = jnp.sum(labeled, dtype=jnp.int32)
  keys = jax.random.split(KEY, 2)
  beta, adv = jnp.float32(1.0), jnp.float32(1.0)

  def run(state, key, steps=3):
    for i in range(steps):
      state = vaal.vaal_step(
          vae, disc, spec, 8, 1e-3, state, key, jnp.int32(i), x, order, num_labeled, beta, adv
      )
    return state

  states = jax.lax.map(lambda k: vaal.init_vaal(vae, disc, spec, 1e-3, k, x), keys)
  singles = [run(jax.tree.map(lambda a, m=m: a[m], states), keys[m]) for m in range(2)]
  step = jax.vmap(
      lambda st, k, i: vaal.vaal_step(
          vae, disc, spec, 8, 1e-3, st, k, i, x, order, num_labeled, beta, adv
      ),
      in_axes=(0, 0, None),
  )
  for i in range(3):
    states = step(states, keys, jnp.int32(i))
  for m in range(2):
    jax.tree.map(
        lambda a, b, m=m: np.testing.assert_allclose(a[m], b, rtol=1e-5, atol=1e-6),
        states,
        singles[m],
    )


@pytest.mark.parametrize(
    'field,value,message',
    [
        ('vaal_steps', 0, 'vaal: strategy_options.vaal_steps must be a positive int'),
        ('vaal_beta', -1.0, 'vaal: strategy_options.vaal_beta must be a finite number >= 0'),
        (
            'vaal_learning_rate',
            0.0,
            'vaal: strategy_options.vaal_learning_rate must be a finite number > 0',
        ),
    ],
)
def test_vaal_rejects_bad_options(field, value, message):
  x, labeled = two_blobs()
  with pytest.raises(ValueError, match=message):
    vaal.select(classifier_inputs(None, None, x, labeled), 2, KEY, options(**{field: value}))
  with pytest.raises(ValueError, match='vaal: needs at least one labeled point'):
    vaal.select(classifier_inputs(None, None, x, np.zeros_like(labeled)), 2, KEY)
