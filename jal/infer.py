"""Chunked inference of trained ensembles: logits, embeddings, MC dropout passes.

Every function takes what `jal.train.fit` returns (a TrainState stacked on a
leading member axis) or one member of it. Inputs are gathered from the stored
data by index on device, chunk by chunk, each chunk one jitted program of fixed
shape, so every set of points (test set, pool, a labeled subset) shares one
compilation.

    from jal import infer
    preds = infer.predict(model, spec, 1000, True, states, x_pool)
    probs = infer.ensemble_probs(preds.logits)                 # f32[n, c]
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jal.train import TrainState, prepare_inputs


class Predictions(NamedTuple):
  """Outputs of `predict` over a set of points.

  Attributes:
    logits: f32[m, n, c], every member's logits.
    embeddings: f32[n, d] of member 0, or None if not requested.
  """

  logits: Any
  embeddings: Any


def members_in_turn(plan) -> bool:
  """Whether inference runs a run's members in turn (`predict(in_turn=...)`).

  On a CPU as `plan` (a `jal.train.Plan`) trains them: XLA:CPU runs a
  vmapped convolution, a grouped one, far slower than the members' own in
  turn. On accelerators always vmapped, as jal measured it there
  (results/bench_h200): one batched program per chunk.
  """
  return plan.members == 'in_turn' and jax.default_backend() == 'cpu'


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _predict_chunk(model, spec, with_embeddings, states, x, idx):
  """Outputs of every member on `x[idx]`: (f32[m, b, c], f32[b, d] or None)."""

  def member_apply(params, model_state, xb):
    return model.apply({'params': params, **model_state}, xb, train=False)

  xb = prepare_inputs(x[idx], spec)
  logits, emb = jax.vmap(member_apply, in_axes=(0, 0, None))(states.params, states.model_state, xb)
  return logits, (emb[0] if with_embeddings else None)


def predict(
    model,
    spec,
    chunk_size,
    with_embeddings,
    states: TrainState,
    x,
    *,
    in_turn: bool = False,
    mesh=None,
    indices=None,
) -> Predictions:
  """Evaluation-mode outputs of an ensemble on all of `x`, in chunks.

  Each chunk is gathered from `x` by index on device (no copy of x) and run
  by one jitted program of fixed shape, so every set of points (test set,
  pool) shares one compilation; the last chunk is padded by repeating the
  final index.

  Args:
    model: flax module.
    spec: InputSpec.
    chunk_size: points per forward pass.
    with_embeddings: also return member 0's embeddings.
    states: TrainState with a leading member axis m.
    x: stored inputs [n, ...].
    in_turn: run the members one after another instead of vmapped (a run
      passes `members_in_turn(plan)`); the same outputs to float tolerance.
    mesh: optional 1-D mesh (`jal.sharding`): every chunk's points are split
      over its devices, which each hold the whole ensemble and `x`; the
      chunk size is rounded up to a multiple of the device count.
    indices: optional i32[k]: the outputs on `x[indices]` only, gathered
      chunk by chunk (the same compiled program as all of `x`).

  Returns:
    Predictions.
  """
  m = jax.tree.leaves(states.params)[0].shape[0]
  if in_turn and m > 1:
    parts = [
        predict(
            model,
            spec,
            chunk_size,
            with_embeddings and i == 0,
            jax.tree.map(lambda a, i=i: a[i : i + 1], states),
            x,
            mesh=mesh,
            indices=indices,
        )
        for i in range(m)
    ]
    return Predictions(jnp.concatenate([p.logits for p in parts], axis=0), parts[0].embeddings)
  place = lambda idx: idx
  if mesh is not None:
    chunk_size = -(-chunk_size // mesh.size) * mesh.size
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    states, x = jax.device_put((states, x), whole)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
    place = lambda idx: jax.device_put(idx, split)
  indices = None if indices is None else jnp.asarray(indices, jnp.int32)
  n = x.shape[0] if indices is None else indices.shape[0]
  logits, embs = [], []
  for start in range(0, n, chunk_size):
    idx = jnp.minimum(jnp.arange(start, start + chunk_size), n - 1)
    idx = place(idx if indices is None else indices[idx])
    lg, emb = _predict_chunk(model, spec, with_embeddings, states, x, idx)
    logits.append(lg)
    embs.append(emb)
  logits = jnp.concatenate(logits, axis=1)[:, :n]
  emb = jnp.concatenate(embs, axis=0)[:n] if with_embeddings else None
  return Predictions(logits, emb)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _mc_chunk(model, spec, num_samples, state, x, idx, key):
  """T = num_samples MC dropout passes of one member on `x[idx]`: f32[T, b, c].

  Pass t uses the dropout rng `fold_in(key, t)` whatever the chunk, and the
  model's MC mode shares its mask over the batch, so pass t is one sampled
  network over every chunk. Passes run one after another (`lax.map`):
  memory is that of one pass.
  """
  variables = {'params': state.params, **state.model_state}
  xb = prepare_inputs(x[idx], spec)

  def one_pass(t):
    logits, _ = model.apply(
        variables, xb, train=False, mc=True, rngs={'dropout': jax.random.fold_in(key, t)}
    )
    return logits

  return jax.lax.map(one_pass, jnp.arange(num_samples))


def mc_predict(model, spec, chunk_size, num_samples, state: TrainState, x, key):
  """Monte Carlo dropout logits of one member on all of `x`, in chunks.

  Each pass draws one dropout mask per layer (shared by all points, see
  `jal.models`) with BatchNorm in inference mode: the T passes are T networks
  sampled from the dropout posterior (Gal & Ghahramani, ICML 2016), each
  applied to the whole pool. Chunks are gathered and padded as in `predict`.
  Time O(T * n * forward pass), memory O(T * n * c + one chunk's pass).

  Args:
    model: flax module with dropout > 0 (with none, every pass is equal).
    spec: InputSpec.
    chunk_size: points per forward pass.
    num_samples: T, the number of passes.
    state: TrainState of one member (no member axis).
    x: stored inputs [n, ...].
    key: PRNG key; equal keys give equal outputs.

  Returns:
    f32[T, n, c].
  """
  n = x.shape[0]
  out = []
  for start in range(0, n, chunk_size):
    idx = jnp.minimum(jnp.arange(start, start + chunk_size), n - 1)
    out.append(_mc_chunk(model, spec, num_samples, state, x, idx, key))
  return jnp.concatenate(out, axis=1)[:, :n]


def ensemble_probs(member_logits):
  """Mean softmax over members: f32[m, n, c] -> f32[n, c]."""
  return jnp.mean(jax.nn.softmax(member_logits, axis=-1), axis=0)
