"""Variational Adversarial Active Learning, VAAL (Sinha, Ebrahimi & Darrell, ICCV 2019).

A beta-VAE learns a latent space of the whole pool, labeled and unlabeled,
while a discriminator learns to tell labeled from unlabeled points by their
latent means; the VAE is also trained adversarially, to make every point
look labeled to the discriminator. The query is the k unlabeled points the
discriminator rates least likely to be labeled: those least like anything
labeled so far. The classifier is not used.

Per training step, with a batch of B labeled and B unlabeled points drawn
uniformly with replacement, one VAE update and then one discriminator update
(the authors' code makes two VAE updates per discriminator update):

    VAE:            sum over both batches of [ ||x - x_hat||^2 + beta KL(q(z|x) || N(0, I)) ]
                    + adversary_weight * [BCE(D(mu_l), 1) + BCE(D(mu_u), 1)]
    discriminator:  BCE(D(mu_l), 1) + BCE(D(mu_u), 0), on the updated VAE's means,

each term a per-point mean over its batch, the squared error summed over the
input dimensions and the KL over the latent ones (the beta-VAE ELBO; the
authors' code mixes a per-pixel mean with a batch sum). Both are Adam steps.
Images (rank-4 pools) get a convolutional VAE: three stride-2 4x4
convolutions of w, 2w, 4w channels, and a decoder of 3x3 convolutions with
sub-pixel upsampling, cropped to the image size (the paper's VAE has four
stages of 128 to 1024 channels, and transposed convolutions). Flat features
get an MLP VAE with two hidden layers of 2w. The discriminator is the
paper's: two ReLU layers of `vaal_disc_width` (512) on the latent mean.

Training is part of the round. jal checkpoints after each whole round,
selection included, and every random draw here (initialisation, batches,
reparameterisation noise, tie order) is a `fold_in` of the round's select
key, so a round killed mid-VAAL re-runs VAAL identically on resume. The
training step `vaal_step` is pure, so `jax.vmap` of it over stacked states
(from `lax.map` of `init_vaal`) and keys trains several pairs at once, as
`train` does for ensemble members; jal runs its (strategy, seed) pairs one after another,
so it trains one VAE and one discriminator per round.
"""

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jal import kernels
from jal import train
from jal.strategies import base
from jal.strategies import options as options_lib

_LEVELS = 3  # stride-2 stages of the conv VAE


def _depth_to_space(x):
  """f32[b, h, w, 4c] -> f32[b, 2h, 2w, c]."""
  b, h, w, c4 = x.shape
  x = x.reshape(b, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c4 // 4)


class VAE(nn.Module):
  """beta-VAE over normalised inputs of one shape: conv for images, else MLP.

  Attributes:
    shape: one input's shape, (h, w, c) for images (conv) or anything else
      (MLP over the flattened input).
    width: w; conv channels w, 2w, 4w, MLP hidden width 2w.
    latent: latent size.
  """

  shape: tuple
  width: int
  latent: int

  def setup(self):
    w = self.width
    if len(self.shape) == 3:
      h, wd, c = self.shape
      self.enc = [nn.Conv(w * 2**i, (4, 4), strides=(2, 2), padding='SAME') for i in range(_LEVELS)]
      self.low = (-(-h // 2**_LEVELS), -(-wd // 2**_LEVELS), w * 2 ** (_LEVELS - 1))
      self.dec_in = nn.Dense(math.prod(self.low))
      # Sub-pixel upsampling (Shi et al., CVPR 2016): a 3x3 conv at the low
      # resolution to 4x the channels, then depth-to-space. XLA:CPU computes
      # ConvTranspose's kernel gradient some 50x slower than its forward pass.
      self.dec = [
          nn.Conv(4 * ch, (3, 3), padding='SAME')
          for ch in [w * 2**i for i in reversed(range(_LEVELS - 1))] + [c]
      ]
    else:
      self.enc = [nn.Dense(2 * w), nn.Dense(2 * w)]
      self.dec_in = nn.Dense(2 * w)
      self.dec = [nn.Dense(2 * w), nn.Dense(math.prod(self.shape))]
    self.mu = nn.Dense(self.latent)
    self.logvar = nn.Dense(self.latent)

  def encode(self, x):
    """f32[b, *shape] -> (mu f32[b, latent], logvar f32[b, latent])."""
    if len(self.shape) != 3:
      x = x.reshape(x.shape[0], -1)
    for layer in self.enc:
      x = nn.relu(layer(x))
    x = x.reshape(x.shape[0], -1)
    return self.mu(x), self.logvar(x)

  def decode(self, z):
    """f32[b, latent] -> f32[b, *shape]."""
    x = nn.relu(self.dec_in(z))
    if len(self.shape) == 3:
      x = x.reshape(x.shape[0], *self.low)
    for i, layer in enumerate(self.dec):
      x = layer(x)
      if len(self.shape) == 3:
        x = _depth_to_space(x)
      if i < len(self.dec) - 1:
        x = nn.relu(x)
    if len(self.shape) == 3:
      x = x[:, : self.shape[0], : self.shape[1]]  # 2^L-multiple sizes down to the image's
    return x.reshape(x.shape[0], *self.shape)

  def __call__(self, x, key):
    """(reconstruction f32[b, *shape], mu, logvar), z drawn from `key`."""
    mu, logvar = self.encode(x)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
    return self.decode(z), mu, logvar


class Discriminator(nn.Module):
  """MLP on latent means -> logit of "labeled", f32[b]."""

  width: int

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.width)(z))
    z = nn.relu(nn.Dense(self.width)(z))
    return nn.Dense(1)(z)[:, 0]


class VAALState(NamedTuple):
  """The VAE and discriminator training state (a pytree)."""

  vae_params: Any
  disc_params: Any
  vae_opt: Any
  disc_opt: Any


def _neg_elbo(x, recon, mu, logvar, beta):
  """Per-point mean of squared error (summed over dims) + beta * KL (summed)."""
  sq = jnp.sum(jnp.square(x - recon).reshape(x.shape[0], -1), axis=-1)
  kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)
  return jnp.mean(sq + beta * kl)


def _bce_labeled(logits, is_labeled: bool):
  """Mean binary cross-entropy of discriminator logits against one target."""
  return jnp.mean(jax.nn.softplus(-logits if is_labeled else logits))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def init_vaal(vae, disc, spec, learning_rate, key, x) -> VAALState:
  """Fresh VAE and discriminator parameters and their Adam states.

  Parameters are drawn from an 'rbg' key made from `key`, as
  `train.init_member` does: XLA compiles the initialisers several times
  faster than with threefry. Like ensemble members, several states are made
  by `lax.map` over keys (batched 'rbg' draws differ from unbatched ones).
  """
  tx = optax.adam(learning_rate)
  rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl='rbg')
  vae_params = vae.init(
      jax.random.fold_in(rbg, 0), train.prepare_inputs(x[:1], spec), jax.random.fold_in(rbg, 2)
  )
  disc_params = disc.init(jax.random.fold_in(rbg, 1), jnp.zeros((1, vae.latent)))
  return VAALState(vae_params, disc_params, tx.init(vae_params), tx.init(disc_params))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def vaal_step(
    vae,
    disc,
    spec,
    batch_size,
    learning_rate,
    state: VAALState,
    key,
    step,
    x,
    order,
    num_labeled,
    beta,
    adversary_weight,
) -> VAALState:
  """One VAE update, then one discriminator update. Pure.

  Batches and reparameterisation noise are drawn from `fold_in(key, step)`:
  B labeled points uniformly from `order[:num_labeled]` and B unlabeled ones
  from `order[num_labeled:]`, with replacement. Time O(B * (V + D')) for V,
  D' the VAE's and discriminator's per-point costs; memory: the two networks
  and their activations for 2B points.

  Args:
    vae, disc: the VAE and Discriminator modules (static).
    spec: train.InputSpec turning stored rows into normalised inputs (static).
    batch_size: B, points per set (static).
    learning_rate: Adam's, for both networks (static).
    state: VAALState.
    key: the training stream's PRNG key.
    step: i32[], this step's index.
    x: the stored pool [n, ...].
    order: i32[n], pool indices with the labeled ones first.
    num_labeled: i32[], at least 1 and below n.
    beta: f32[], KL weight.
    adversary_weight: f32[], weight of the VAE's adversarial term.

  Returns:
    The updated VAALState.
  """
  n = order.shape[0]
  tx = optax.adam(learning_rate)
  k_l, k_u, z_l, z_u = jax.random.split(jax.random.fold_in(key, step), 4)
  x_l = train.prepare_inputs(x[order[jax.random.randint(k_l, (batch_size,), 0, num_labeled)]], spec)
  x_u = train.prepare_inputs(x[order[jax.random.randint(k_u, (batch_size,), num_labeled, n)]], spec)

  def vae_loss(params):
    rec_l, mu_l, logvar_l = vae.apply(params, x_l, z_l)
    rec_u, mu_u, logvar_u = vae.apply(params, x_u, z_u)
    fool = _bce_labeled(disc.apply(state.disc_params, mu_l), True) + _bce_labeled(
        disc.apply(state.disc_params, mu_u), True
    )
    return (
        _neg_elbo(x_l, rec_l, mu_l, logvar_l, beta)
        + _neg_elbo(x_u, rec_u, mu_u, logvar_u, beta)
        + adversary_weight * fool
    )

  grads = jax.grad(vae_loss)(state.vae_params)
  updates, vae_opt = tx.update(grads, state.vae_opt, state.vae_params)
  vae_params = optax.apply_updates(state.vae_params, updates)
  mu_l = vae.apply(vae_params, x_l, method=VAE.encode)[0]
  mu_u = vae.apply(vae_params, x_u, method=VAE.encode)[0]

  def disc_loss(params):
    return _bce_labeled(disc.apply(params, mu_l), True) + _bce_labeled(
        disc.apply(params, mu_u), False
    )

  grads = jax.grad(disc_loss)(state.disc_params)
  updates, disc_opt = tx.update(grads, state.disc_opt, state.disc_params)
  return VAALState(vae_params, optax.apply_updates(state.disc_params, updates), vae_opt, disc_opt)


@jax.jit
def _labeled_first(labeled):
  return jnp.argsort(~labeled, stable=True).astype(jnp.int32), jnp.sum(labeled, dtype=jnp.int32)


def train_vaal(
    vae,
    disc,
    spec,
    batch_size: int,
    learning_rate: float,
    steps: int,
    beta: float,
    adversary_weight: float,
    key,
    x,
    labeled,
) -> VAALState:
  """Trains a VAE and a discriminator from scratch on the pool.

  `init_vaal` from `fold_in(key, 0)`, then `steps` calls of the jitted
  `vaal_step` on the stream `fold_in(key, 1)`, driven from Python: XLA:CPU
  runs convolution gradients far slower inside a loop body than at the top
  level of a program (as `train.Plan`'s dispatch 'step' notes; for the MNIST
  VAE, 3 s a step inside a `fori_loop` against 0.1 s at the top level), and
  on an accelerator a dispatch per step costs little next to the step. One
  compilation of the step serves every round (everything that changes
  between rounds is traced). Time O(steps * B * (V + D') + n log n), memory
  O(n) plus the two networks and one step's activations.

  Args:
    vae, disc, spec, batch_size, learning_rate: as in `vaal_step`.
    steps: number of steps.
    beta, adversary_weight: as in `vaal_step`.
    key: PRNG key.
    x: the stored pool [n, ...].
    labeled: bool[n]; at least one labeled and one unlabeled point.

  Returns:
    The trained VAALState.
  """
  state = init_vaal(vae, disc, spec, learning_rate, jax.random.fold_in(key, 0), x)
  order, num_labeled = _labeled_first(jnp.asarray(labeled, bool))
  stream = jax.random.fold_in(key, 1)
  beta, adversary_weight = jnp.float32(beta), jnp.float32(adversary_weight)
  for i in range(steps):
    state = vaal_step(
        vae,
        disc,
        spec,
        batch_size,
        learning_rate,
        state,
        stream,
        jnp.int32(i),
        x,
        order,
        num_labeled,
        beta,
        adversary_weight,
    )
  return state


def labeled_logits(vae, disc, spec, chunk_size, state: VAALState, x):
  """The discriminator's "labeled" logit of every pool point, on its latent mean.

  Chunks of `chunk_size` run in a `lax.map` (forward passes only); time
  O(n * (V + D')), memory O(chunk_size) activations. Jit with the first
  four arguments static.

  Returns:
    f32[n].
  """
  n = x.shape[0]
  num_chunks = -(-n // chunk_size)
  idx = jnp.minimum(jnp.arange(num_chunks * chunk_size), n - 1).reshape(num_chunks, chunk_size)

  def chunk(i):
    mu = vae.apply(state.vae_params, train.prepare_inputs(x[i], spec), method=VAE.encode)[0]
    return disc.apply(state.disc_params, mu)

  return jax.lax.map(chunk, idx).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _rank(vae, disc, spec, chunk_size, k, state, x, labeled, key):
  logits = labeled_logits(vae, disc, spec, chunk_size, state, x)
  return kernels.top_k_with_random_ties(-logits, ~labeled, key, k=k)


# The last five as in Sinha et al. 2019; keys of `settings_of`.
OPTIONS = {
    'steps': options_lib.positive_int('vaal_steps', 1000, 'VAE + discriminator Adam steps'),
    'width': options_lib.positive_int('vaal_width', 16, 'conv channels w, 2w, 4w; MLP 2w'),
    'latent': options_lib.positive_int('vaal_latent', 32, 'VAE latent size'),
    'disc_width': options_lib.positive_int('vaal_disc_width', 512, 'discriminator width'),
    'batch_size': options_lib.positive_int('vaal_batch_size', 64, 'labeled and unlabeled each'),
    'beta': options_lib.finite('vaal_beta', 1.0, 'beta-VAE KL weight', at_least=0),
    'adversary_weight': options_lib.finite(
        'vaal_adversary_weight', 1.0, "the VAE's adversarial loss weight", at_least=0
    ),
    'learning_rate': options_lib.finite('vaal_learning_rate', 5e-4, 'Adam rate', above=0),
}


def settings_of(options) -> dict:
  """The VAAL options with their defaults, each checked (one-line ValueError)."""
  return {key: option.read(options, 'vaal') for key, option in OPTIONS.items()}


def select(inputs: base.Inputs, k: int, key, options=None):
  """The k unlabeled points VAAL's discriminator rates least likely labeled.

  Trains a fresh VAE and discriminator on the pool (`train_vaal`, key
  `fold_in(key, 0)`), scores every point, and picks the k unlabeled ones with
  the lowest "labeled" logit, ties broken by a random order from
  `fold_in(key, 1)`. Deterministic given (inputs, key, options); one
  compilation of the step and of the ranking serves every round.

  Time O(vaal_steps * vaal_batch_size * (V + D') + n * (V + D') + n log n),
  V and D' the VAE's and discriminator's per-point costs; memory O(n) plus
  the two networks and one step's (or one chunk's) activations.

  Args:
    inputs: `labeled: bool[n]` (at least one labeled point) and `classifier`,
      of which only the stored pool `x`, `spec` and `chunk_size` are used.
    k: number of picks.
    key: PRNG key (every random draw of training, and tie-breaking).
    options: `vaal_steps` (1000), `vaal_width` (16), `vaal_latent` (32),
      `vaal_disc_width` (512), `vaal_batch_size` (64), `vaal_beta` (1.0),
      `vaal_adversary_weight` (1.0), `vaal_learning_rate` (5e-4); the last
      five as in the paper.

  Returns:
    i32[k], least labeled-looking first.
  """
  o = settings_of(options)
  clf = inputs.classifier
  labeled = jnp.asarray(inputs.labeled, bool)
  if not bool(jnp.any(labeled)):
    raise ValueError('vaal: needs at least one labeled point to train its discriminator')
  x = jnp.asarray(clf.x)
  vae = VAE(shape=tuple(x.shape[1:]), width=o['width'], latent=o['latent'])
  disc = Discriminator(width=o['disc_width'])
  state = train_vaal(
      vae,
      disc,
      clf.spec,
      o['batch_size'],
      o['learning_rate'],
      o['steps'],
      o['beta'],
      o['adversary_weight'],
      jax.random.fold_in(key, 0),
      x,
      labeled,
  )
  return _rank(
      vae, disc, clf.spec, int(clf.chunk_size), k, state, x, labeled, jax.random.fold_in(key, 1)
  )


STRATEGY = base.Strategy(
    'vaal', select, frozenset({base.CLASSIFIER}), kind='diversity', options=tuple(OPTIONS.values())
)
