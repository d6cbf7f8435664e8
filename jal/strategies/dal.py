"""Discriminative Active Learning (Gissin & Shalev-Shwartz, arXiv:1907.06347, 2019).

A binary classifier is trained on the embeddings to tell labeled points
(class 0) from unlabeled ones (class 1); the unlabeled points it is most
sure are unlabeled lie where the labeled set represents the pool worst, and
are picked. As in the paper, the query is split into sub-queries: after
each, the picks count as labeled and a fresh discriminator is trained, so a
batch does not pile up in the single region one discriminator finds least
represented.

The discriminator is the paper's: an MLP of three ReLU layers (width 256)
with a 2-way softmax, trained with Adam. The paper trains to 98% accuracy;
here a fixed number of steps (`dal_steps`) keeps every sub-query one
compiled program. The labeled class is tiny (often < 1% of the pool), so the
loss is class-balanced as in the authors' code (there by class weights):
each minibatch draws half its points from the labeled set and half from the
unlabeled pool, and averages the two halves' losses with equal weight.
Embeddings are standardised (pool mean and std per feature) first. Unlike
the authors' code, the discriminator sees the whole unlabeled pool rather
than a random subset of 10 x |labeled| points.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jal import kernels
from jal.strategies import base
from jal.strategies import options as options_lib


class Discriminator(nn.Module):
  """ReLU MLP -> 2 logits (0: labeled, 1: unlabeled)."""

  width: int = 256
  depth: int = 3

  @nn.compact
  def __call__(self, x):
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(2)(x)


@functools.partial(jax.jit, static_argnames=('width', 'steps', 'batch_size'))
def unlabeled_probability(x, labeled, key, width, steps, batch_size, learning_rate):
  """P(unlabeled | x) of a discriminator trained from scratch on `labeled`.

  Each step draws batch_size / 2 labeled and batch_size / 2 unlabeled points,
  so the loss weighs the two classes equally. Time
  O(steps * batch_size * width * (d + width) + n * width * (d + width)),
  memory O(n * (d + width)).

  Args:
    x: f32[n, d] standardised embeddings.
    labeled: bool[n], class 0 (at least one point, and one unlabeled).
    key: PRNG key of the init and the minibatches.
    width: hidden width (static).
    steps: Adam steps (static).
    batch_size: points per step, half of each class (static, even).
    learning_rate: Adam's.

  Returns:
    f32[n].
  """
  model = Discriminator(width=width)
  init_key, data_key = jax.random.split(key)
  params = model.init(init_key, x[:1])
  tx = optax.adam(learning_rate)
  half = batch_size // 2
  targets = jnp.concatenate([jnp.zeros((half,), jnp.int32), jnp.ones((half,), jnp.int32)])
  n = x.shape[0]
  # Each class's indices first, so a class member is drawn in O(1).
  lab_idx, unl_idx = jnp.nonzero(labeled, size=n)[0], jnp.nonzero(~labeled, size=n)[0]
  num_lab = jnp.sum(labeled, dtype=jnp.int32)

  def loss_fn(params, xb):
    losses = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, xb), targets)
    return 0.5 * (jnp.mean(losses[:half]) + jnp.mean(losses[half:]))

  def step(carry, i):
    params, opt_state = carry
    kl, ku = jax.random.split(jax.random.fold_in(data_key, i))
    idx = jnp.concatenate(
        [
            lab_idx[jax.random.randint(kl, (half,), 0, num_lab)],
            unl_idx[jax.random.randint(ku, (half,), 0, n - num_lab)],
        ]
    )
    grads = jax.grad(loss_fn)(params, x[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
  return jax.nn.softmax(model.apply(params, x), axis=-1)[:, 1]


@jax.jit
def standardise(embeddings):
  """Per-feature zero mean, unit variance over the pool (constant features stay 0)."""
  x = jnp.asarray(embeddings, jnp.float32)
  return (x - jnp.mean(x, axis=0)) / jnp.maximum(jnp.std(x, axis=0), 1e-6)


def sub_query_sizes(k: int, subqueries: int) -> list[int]:
  """k split into min(subqueries, k) near-equal positive parts, larger first."""
  s = min(subqueries, k)
  return [k // s + (1 if i < k % s else 0) for i in range(s)]


SUBQUERIES = options_lib.positive_int('dal_subqueries', 10, 'retrained sub-queries per query')
STEPS = options_lib.positive_int('dal_steps', 300, 'discriminator Adam steps')
WIDTH = options_lib.positive_int('dal_width', 256, 'discriminator hidden width')
BATCH_SIZE = options_lib.Option(
    'dal_batch_size',
    64,
    int,
    lambda v: v >= 1 and v % 2 == 0,
    'a positive even int',
    'half labeled, half unlabeled',
)
LEARNING_RATE = options_lib.finite('dal_learning_rate', 1e-3, 'discriminator Adam rate', above=0)


def settings_of(options) -> dict:
  """DAL's options, checked: subqueries, steps, width, batch size, learning rate."""
  read = lambda option: option.read(options, 'dal')
  return dict(
      subqueries=read(SUBQUERIES),
      steps=read(STEPS),
      width=read(WIDTH),
      batch_size=read(BATCH_SIZE),
      learning_rate=read(LEARNING_RATE),
  )


def select(inputs: base.Inputs, k: int, key, options=None):
  """DAL: the unlabeled points a labeled-vs-unlabeled discriminator is surest are unlabeled.

  The k picks are made in `dal_subqueries` rounds (default 10, the authors'
  setting: enough that each discriminator's top picks are few, so one
  region cannot take the whole batch, while the retraining costs only 10
  small MLP fits), each retraining a fresh discriminator with the previous
  rounds' picks counted as labeled (sub-query i uses `fold_in(key, i)`).
  Within a round, the picks are the highest P(unlabeled), ties broken
  randomly. Time O(S * (steps * B * w * (d + w) + n * w * (d + w))) for S
  sub-queries, minibatch B and width w; memory O(n * (d + w)).

  Args:
    inputs: `labeled: bool[n]` (at least one) and `embeddings: f32[n, d]`.
    k: number of picks.
    key: PRNG key of the discriminators' inits, minibatches and tie-breaks.
    options: `dal_subqueries` (10), `dal_steps` (300), `dal_width` (256),
      `dal_batch_size` (64, even), `dal_learning_rate` (1e-3).

  Returns:
    i32[k], sub-query by sub-query, most surely unlabeled first within each.
  """
  cfg = settings_of(options)
  x = standardise(inputs.embeddings)
  labeled = jnp.asarray(inputs.labeled, bool)
  if not bool(jnp.any(labeled)):
    raise ValueError('dal: needs at least one labeled point to train its discriminator')
  picks = []
  for i, size in enumerate(sub_query_sizes(k, cfg['subqueries'])):
    train_key, tie_key = jax.random.split(jax.random.fold_in(key, i))
    p = unlabeled_probability(
        x, labeled, train_key, cfg['width'], cfg['steps'], cfg['batch_size'], cfg['learning_rate']
    )
    top = kernels.top_k_with_random_ties(p, ~labeled, tie_key, k=size)
    labeled = labeled.at[top].set(True)
    picks.append(top)
  return jnp.concatenate(picks)


STRATEGY = base.Strategy(
    'dal',
    select,
    frozenset({base.EMBEDDINGS}),
    kind='diversity',
    options=(SUBQUERIES, STEPS, WIDTH, BATCH_SIZE, LEARNING_RATE),
)
