"""Pure, jitted training and inference for ensembles of classifiers.

The protocol follows the study (Section 3.2): each round, fresh models are
trained from scratch on the current labeled set. Members are initialised by
`lax.map` over their keys (`init_ensemble`) and trained together in one
compiled program by `jax.vmap` (`fit_ensemble`); member i equals `fit` run
alone with key i.

Static shapes: the labeled set is passed as an index vector padded to a
*capacity* (a multiple of the batch size, rounded up to a power of two number
of batches, see `capacity_for`), plus the number of valid entries. The data
are uploaded once; batches are gathered on device from the index vector.
`fit_ensemble` compiles once per capacity bucket, so a run that grows its
labeled set from L0 to L1 compiles it about log2(L1 / L0) + 1 times.

Inside `fit_ensemble`, epochs run in a `lax.fori_loop` (its trip count is a
traced value, so changing the number of epochs does not recompile) and the
batches of an epoch in a `lax.scan` over the bucket's batch slots. Slots past
the last valid batch are skipped by a `lax.cond` whose predicate does not
depend on the member, so under `vmap` it stays a real branch.
`fit_ensemble_stepwise` runs the same arithmetic one dispatched step at a
time, which XLA:CPU runs faster for convnets (`get_fit_fn('auto')` picks it
on CPU); `fit_members_map` and `fit_members_stepwise` train the members in
turn (faster for ResNet-18 on GPUs, and for convnets on CPUs), and
`fit_ensemble_sharded` splits the members over the devices of a mesh.

    from jal import train
    tx = train.make_optimizer(config.train)
    states = train.fit_ensemble(model, tx, train.InputSpec(), 64, 'constant', 1e-3,
                                keys, x, y, idx, num_valid, num_epochs)  # keys: [m, 2]
"""

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import optax

from jal import models

# Folded into a step's augmentation key to give its dropout key, so models
# with dropout leave every other stream exactly as it is without.
_DROPOUT_STREAM = 0x64726F70  # 'drop'


class TrainState(NamedTuple):
  """One member's training state (a pytree; stacked on axis 0 for ensembles).

  Attributes:
    params: the model's `params` collection.
    model_state: the other mutable collections, e.g. `{'batch_stats': ...}`;
      `{}` for models without any.
    opt_state: optax state of `inject_hyperparams(...)`, so the learning rate
      can follow a schedule whose length is only known at run time.
  """
  params: Any
  model_state: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How raw stored inputs become model inputs, on device, inside the jit.

  Attributes:
    mean: per-channel mean on the 0-1 scale, or None for non-image data
      (used as is).
    std: per-channel std on the 0-1 scale.
    augment: 'none' or 'crop_flip' (random 4-pixel-padded crop + horizontal
      flip, applied to training batches only).
  """
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  augment: str = 'none'


AUGMENTATIONS = ('none', 'crop_flip')


def _to_unit(x, spec):
  if spec.mean is None:
    return x.astype(jnp.float32)
  return x.astype(jnp.float32) / 255.0


def _normalize(x, spec):
  if spec.mean is None:
    return x
  mean = jnp.asarray(spec.mean, jnp.float32)
  std = jnp.asarray(spec.std, jnp.float32)
  return (x - mean) / std


def crop_flip(key, x, pad=4):
  """Random crop after zero padding, then random horizontal flip.

  Args:
    key: PRNG key.
    x: f32[b, h, w, c] images on the 0-1 scale.
    pad: pixels of zero padding on each side.

  Returns:
    f32[b, h, w, c].
  """
  b, h, w, c = x.shape
  k_off, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * pad + 1)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))
  x = crop(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def prepare_inputs(x, spec, key=None):
  """Raw stored inputs -> normalised model inputs (augmented if key given)."""
  x = _to_unit(x, spec)
  if key is not None and spec.augment == 'crop_flip':
    x = crop_flip(key, x)
  return _normalize(x, spec)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Builds the optimizer named by `train_config.optimizer`.

  The learning rate is an injected hyperparameter, set every step by
  `train_step` from `train_config.schedule`. Equal settings return the same
  object, so jitted trainers that take it as a static argument reuse their
  compilations across experiments.

  Args:
    train_config: ConfigDict with `optimizer` ('adam', 'adamw', 'sgd'),
      `learning_rate`, optional `weight_decay` and `momentum`.
  """
  return _optimizer(train_config.optimizer, float(train_config.learning_rate),
                    float(train_config.get('weight_decay', 0.0) or 0.0),
                    float(train_config.get('momentum', 0.9)))


@functools.lru_cache(maxsize=None)
def _optimizer(name, lr, wd, momentum):
  if name == 'adam':
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
  if name == 'adamw':
    return optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=wd)
  if name == 'sgd':

    def sgd(learning_rate):
      return optax.chain(optax.add_decayed_weights(wd),
                         optax.sgd(learning_rate, momentum=momentum, nesterov=True))

    return optax.inject_hyperparams(sgd)(learning_rate=lr)
  raise ValueError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine')


def lr_factor(schedule: str, step, total_steps):
  """Multiplier of the base learning rate at `step` of `total_steps`."""
  if schedule == 'constant':
    return jnp.float32(1.0)
  if schedule == 'cosine':
    frac = jnp.clip(step / jnp.maximum(total_steps, 1), 0.0, 1.0)
    return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  raise ValueError(f"unknown schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")


def init_state(model, tx, key, sample_x, init_overrides=None) -> TrainState:
  """Initialises one member.

  Args:
    model: flax module returning `(logits, embedding)`.
    tx: optimizer from `make_optimizer`.
    key: PRNG key.
    sample_x: f32[b, ...] model inputs fixing the shapes.
    init_overrides: optional `{(collection, *path): array}` replacing those
      leaves of the fresh init (pretrained weights, shared by all members;
      leaves not named keep their per-member random init, e.g. the head).
  """
  variables = model.init(key, sample_x, train=False)
  if init_overrides:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    for k, v in init_overrides.items():
      flat[k] = jnp.asarray(v, flat[k].dtype)
    variables = flax.traverse_util.unflatten_dict(flat)
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  return TrainState(params, model_state, tx.init(params))


def masked_cross_entropy(logits, labels, mask):
  """Mean softmax cross-entropy over the valid rows.

  Args:
    logits: f32[b, c].
    labels: i32[b].
    mask: bool[b].

  Returns:
    f32[], 0 if no row is valid.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  w = mask.astype(jnp.float32)
  return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)


def train_step(model, tx, state: TrainState, x, y, mask, learning_rate, dropout_key=None):
  """One optimizer step on one (padded) batch. Pure.

  Args:
    model: flax module.
    tx: optimizer.
    state: TrainState of one member.
    x: f32[b, ...] model inputs.
    y: i32[b] labels.
    mask: bool[b], valid rows.
    learning_rate: f32[], this step's learning rate.
    dropout_key: PRNG key of this step's dropout masks; required if the
      model has dropout, else None.

  Returns:
    (new state, loss f32[]).
  """
  mutable = list(state.model_state)
  apply_kwargs = {} if dropout_key is None else {'rngs': {'dropout': dropout_key}}

  def loss_fn(params):
    variables = {'params': params, **state.model_state}
    if mutable:
      (logits, _), new_model_state = model.apply(variables, x, train=True, mutable=mutable,
                                                 **apply_kwargs)
    else:
      logits, _ = model.apply(variables, x, train=True, **apply_kwargs)
      new_model_state = state.model_state
    return masked_cross_entropy(logits, y, mask), new_model_state

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  hyperparams = {**state.opt_state.hyperparams,
                 'learning_rate': jnp.asarray(learning_rate, jnp.float32)}
  opt_state = state.opt_state._replace(hyperparams=hyperparams)
  updates, opt_state = tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(params, new_model_state, opt_state), loss


def capacity_for(num_labeled: int, batch_size: int) -> int:
  """The padded size of the labeled index vector: B * 2^ceil(log2(L / B)).

  Args:
    num_labeled: L, the number of labeled samples.
    batch_size: B.

  Returns:
    A multiple of B, at least L; one trainer compilation per distinct value.
  """
  batches = max(1, math.ceil(num_labeled / batch_size))
  return batch_size * (1 << (batches - 1).bit_length())


def epochs_for(num_labeled: int, batch_size: int, epochs: int, min_steps: int) -> int:
  """Epochs to run: `epochs`, or more if that would be under `min_steps` steps."""
  steps_per_epoch = max(1, math.ceil(num_labeled / batch_size))
  return max(epochs, math.ceil(min_steps / steps_per_epoch))


def _split_member_key(key):
  """A member's key -> (init, shuffle, augmentation) keys."""
  return tuple(jax.random.split(key, 3))


def _epoch_batches(shuffle_key, e, idx, num_valid, batch_size):
  """Epoch e's batches: the valid entries in a fresh random order.

  Slots past the last valid entry (in the epoch's last batch, or the whole
  batch when fewer than B points are labeled) are filled by cycling through
  the epoch's order again and masked out of the loss: every row is a real
  labeled image, so BatchNorm's batch statistics never see a padding image,
  and a last batch with a single valid row does not collapse its variance.

  Returns:
    (batches i32[slots, B] of data indices, masks bool[slots, B] of the rows
    that count in the loss).
  """
  capacity = idx.shape[0]
  positions = jnp.arange(capacity)
  priority = jnp.where(positions < num_valid,
                       jax.random.uniform(jax.random.fold_in(shuffle_key, e), (capacity,)), 2.0)
  order = jnp.argsort(priority)
  filled = order[positions % jnp.maximum(num_valid, 1)]
  return (idx[filled].reshape(-1, batch_size),
          (positions < num_valid).reshape(-1, batch_size))


def _slot_update(model, tx, spec, schedule, learning_rate, state, aug_key, x, y,
                 batch_idx, mask, step, total_steps):
  """One step on the batch `x[batch_idx]` at global step `step`.

  The step's key `fold_in(aug_key, step)` drives augmentation; dropout, if
  the model has any, uses `fold_in(step key, _DROPOUT_STREAM)`.
  """
  step_key = jax.random.fold_in(aug_key, step)
  xb = prepare_inputs(x[batch_idx], spec, step_key)
  lr = learning_rate * lr_factor(schedule, step, total_steps)
  dropout_key = (jax.random.fold_in(step_key, _DROPOUT_STREAM)
                 if models.has_dropout(model) else None)
  return train_step(model, tx, state, xb, y[batch_idx], mask, lr, dropout_key)[0]


def _steps_per_epoch(num_valid, batch_size):
  return (num_valid + batch_size - 1) // batch_size


def init_member(model, tx, spec, key, x, init_overrides=None) -> TrainState:
  """A member's fresh state from its key.

  Parameters are drawn from an 'rbg' key derived from the member's init key:
  XLA compiles ResNet-18's initialisers in about a fifth of the time it needs
  with threefry. Ensembles map (not vmap) this over members, since batched
  'rbg' draws differ from unbatched ones; mapping keeps every member equal
  to the same key initialised alone.
  """
  init_key = _split_member_key(key)[0]
  rbg = jax.random.wrap_key_data(jax.random.bits(init_key, (4,), jnp.uint32), impl='rbg')
  return init_state(model, tx, rbg, prepare_inputs(x[:1], spec), init_overrides)


def train_member(model, tx, spec: InputSpec, batch_size: int, schedule: str,
                 learning_rate: float, state, key, x, y, idx, num_valid, num_epochs) -> TrainState:
  """Trains `state` for `num_epochs` over `x[idx[:num_valid]]`. Pure.

  Args:
    model, tx, spec, batch_size, schedule, learning_rate: static settings.
    state: the member's initial TrainState.
    key: the member's PRNG key (shuffling and augmentation streams).
    x: stored inputs, [n, ...] (uint8 images or float features).
    y: i32[n] labels.
    idx: i32[capacity] labeled indices, valid entries first; capacity is a
      multiple of batch_size.
    num_valid: i32[], the number of valid entries of idx.
    num_epochs: i32[], passes over the labeled set.

  Returns:
    The trained TrainState.
  """
  _, shuffle_key, aug_key = _split_member_key(key)
  steps_per_epoch = _steps_per_epoch(num_valid, batch_size)
  total_steps = steps_per_epoch * num_epochs
  update = functools.partial(_slot_update, model, tx, spec, schedule, learning_rate)

  def epoch(e, state):
    batches, masks = _epoch_batches(shuffle_key, e, idx, num_valid, batch_size)

    def slot(state, inputs):
      s, batch_idx, mask = inputs
      run = lambda st: update(st, aug_key, x, y, batch_idx, mask, e * steps_per_epoch + s,
                              total_steps)
      return jax.lax.cond(s < steps_per_epoch, run, lambda st: st, state), None

    state, _ = jax.lax.scan(slot, state, (jnp.arange(batches.shape[0]), batches, masks))
    return state

  return jax.lax.fori_loop(0, num_epochs, epoch, state)


def fit(model, tx, spec: InputSpec, batch_size: int, schedule: str, learning_rate: float,
        key, x, y, idx, num_valid, num_epochs, init_overrides=None) -> TrainState:
  """Trains one fresh member from `key`: `init_member` then `train_member`.

  Args:
    model, tx, spec, batch_size, schedule, learning_rate: static settings.
    key: PRNG key of this member (init, shuffling and augmentation).
    x, y, idx, num_valid, num_epochs: as in `train_member`.
    init_overrides: optional pretrained leaves, see `init_state`.

  Returns:
    The trained TrainState.
  """
  state = init_member(model, tx, spec, key, x, init_overrides)
  return train_member(model, tx, spec, batch_size, schedule, learning_rate, state, key, x, y,
                      idx, num_valid, num_epochs)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def init_ensemble(model, tx, spec, keys, x, init_overrides=None) -> TrainState:
  """Fresh states of one member per key, stacked on axis 0 (`init_member`)."""
  return jax.lax.map(lambda k: init_member(model, tx, spec, k, x, init_overrides), keys)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def fit_ensemble(model, tx, spec, batch_size, schedule, learning_rate,
                 keys, x, y, idx, num_valid, num_epochs, init_overrides=None) -> TrainState:
  """Trains one member per key in one program: training is `jax.vmap`ped.

  Member i equals `fit(..., keys[i], ...)` run alone. Static arguments are
  compared by value/identity, so reuse the same model and tx objects across
  calls to hit the compilation cache (`make_optimizer` does).

  Args:
    model, tx, spec, batch_size, schedule, learning_rate: as in `fit`.
    keys: [m, 2] uint32 PRNG keys, one per member.
    x, y, idx, num_valid, num_epochs, init_overrides: as in `fit`, shared by
      all members.

  Returns:
    TrainState whose leaves have a leading member axis m.
  """
  return _fit_ensemble(model, tx, spec, batch_size, schedule, learning_rate, keys, x, y, idx,
                       num_valid, num_epochs, init_overrides)


def _fit_ensemble(model, tx, spec, batch_size, schedule, learning_rate, keys, x, y, idx,
                  num_valid, num_epochs, init_overrides):
  """The body of `fit_ensemble` (traced, not jitted)."""
  states = init_ensemble(model, tx, spec, keys, x, init_overrides)
  one = functools.partial(train_member, model, tx, spec, batch_size, schedule, learning_rate)
  return jax.vmap(one, in_axes=(0, 0, None, None, None, None, None))(
      states, keys, x, y, idx, num_valid, num_epochs)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def fit_members_map(model, tx, spec, batch_size, schedule, learning_rate,
                    keys, x, y, idx, num_valid, num_epochs, init_overrides=None) -> TrainState:
  """`fit_ensemble` with the members trained one after another in one program.

  `lax.map` of `fit` over the keys: member i equals `fit(..., keys[i], ...)`.
  On GPUs XLA lowers a vmapped convolution to a grouped convolution, whose
  cuDNN kernels (backward pass above all, jax-ml/jax#13800) are slower than
  the members' plain convolutions in turn: on an H200 (bfloat16, batch 128
  per member) 5 ResNet-18 members trained at 30,435 img/s vmapped against
  46,787 img/s in turn, while 5 LeNets ran faster vmapped (376,670 against
  319,666 img/s; results/bench_h200). `get_fit_fn('auto')` picks this
  driver on accelerators for models that declare
  `members_in_turn_on_accelerators` (ResNet-18).

  Args and returns: as `fit_ensemble`.
  """
  return _fit_members_in_turn(model, tx, spec, batch_size, schedule, learning_rate, keys, x, y,
                              idx, num_valid, num_epochs, init_overrides)


def _fit_members_in_turn(model, tx, spec, batch_size, schedule, learning_rate, keys, x, y, idx,
                         num_valid, num_epochs, init_overrides):
  """The body of `fit_members_map` (traced, not jitted)."""
  one = lambda k: fit(model, tx, spec, batch_size, schedule, learning_rate, k, x, y, idx,
                      num_valid, num_epochs, init_overrides)
  return jax.lax.map(one, keys)


def fit_ensemble_sharded(mesh, model, tx, spec, batch_size, schedule, learning_rate,
                         keys, x, y, idx, num_valid, num_epochs,
                         init_overrides=None, in_turn: bool = False) -> TrainState:
  """`fit_ensemble` with the members split over the devices of `mesh`.

  Each device runs `fit_ensemble`'s program (or `fit_members_map`'s, if
  `in_turn`) on its share of the members (`jax.shard_map` over the mesh's
  one axis, see `jal.sharding`); data, labeled indices and pretrained leaves
  are replicated, and no arrays move between devices while training. m
  members on D devices take ceil(m / D) members' time: the member axis is
  padded to a multiple of D with copies of the first keys, whose results are
  dropped. Member i equals `fit_ensemble`'s member i (to float tolerance).

  Args:
    mesh: 1-D `jax.sharding.Mesh`.
    others: as in `fit_ensemble`.

  Returns:
    TrainState with a leading member axis m, split over the mesh.
  """
  m = keys.shape[0]
  pad = -(-m // mesh.size) * mesh.size - m
  keys = jnp.concatenate([keys, keys[jnp.arange(pad) % m]]) if pad else keys
  states = _fit_sharded(mesh, in_turn, model, tx, spec, batch_size, schedule, learning_rate,
                        keys, x, y, idx, num_valid, num_epochs, init_overrides)
  return jax.tree.map(lambda a: a[:m], states) if pad else states


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6, 7))
def _fit_sharded(mesh, in_turn, model, tx, spec, batch_size, schedule, learning_rate, keys, x, y,
                 idx, num_valid, num_epochs, init_overrides):
  split, whole = jax.sharding.PartitionSpec(mesh.axis_names[0]), jax.sharding.PartitionSpec()
  body = _fit_members_in_turn if in_turn else _fit_ensemble
  local = functools.partial(body, model, tx, spec, batch_size, schedule, learning_rate)
  return jax.shard_map(local, mesh=mesh, in_specs=(split,) + (whole,) * 6, out_specs=split,
                       check_vma=False)(keys, x, y, idx, num_valid, num_epochs, init_overrides)


@functools.partial(jax.jit, static_argnums=(0,))
def _ensemble_epoch_batches(batch_size, keys, e, idx, num_valid):
  one = lambda k: _epoch_batches(_split_member_key(k)[1], e, idx, num_valid, batch_size)
  return jax.vmap(one)(keys)


@jax.jit
def _take_slot(batches, masks, s):
  """Slot s of every member's epoch: ([m, slots, B], ...) -> ([m, B], ...)."""
  return batches[:, s], masks[:, s]


# The step's input state is donated: its buffers hold the output state.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4), donate_argnums=(5,))
def _ensemble_slot(model, tx, spec, schedule, learning_rate, states, keys, x, y, batch, mask,
                   step, total_steps):
  def one(state, key, b, m):
    return _slot_update(model, tx, spec, schedule, learning_rate, state, _split_member_key(key)[2],
                        x, y, b, m, step, total_steps)
  return jax.vmap(one)(states, keys, batch, mask)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_one(model, tx, spec, key, x, init_overrides=None) -> TrainState:
  return init_member(model, tx, spec, key, x, init_overrides)


@functools.partial(jax.jit, static_argnums=(0,))
def _member_epoch_batches(batch_size, key, e, idx, num_valid):
  return _epoch_batches(_split_member_key(key)[1], e, idx, num_valid, batch_size)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4), donate_argnums=(5,))
def _member_slot(model, tx, spec, schedule, learning_rate, state, key, x, y, batches, masks, s,
                 step, total_steps):
  return _slot_update(model, tx, spec, schedule, learning_rate, state, _split_member_key(key)[2],
                      x, y, batches[s], masks[s], step, total_steps)


class FitCheckpointer(Protocol):
  """Where a stepwise fit saves its progress, so a killed fit resumes mid-way.

  A fit trains *groups* one after another (the members in turn for
  `fit_members_stepwise`, one group of all members for
  `fit_ensemble_stepwise`), each for `total` steps. Every step is a pure
  function of the group's state, its key and the step number, so a fit
  resumed from a saved (group, step, state) ends bitwise equal to one that
  never stopped. `jal.experiment.FitCheckpoints` keeps them with orbax.
  """

  def restore(self, template: TrainState) -> tuple[int, int, list, TrainState] | None:
    """(group, steps done in it, finished groups' states, its state), or None.

    `template` is a fresh state of one group (for shapes and structure).
    """

  def after_step(self, group: int, step: int, finished: list, state: TrainState) -> None:
    """Called after each step (`step` steps of `group` done); may save."""

  def fit_done(self, finished: list) -> None:
    """Called once every group is trained (not when a restore found them all
    done); a later `restore` may then return (len(finished), 0, finished, _),
    and the fit returns `finished` without training."""


def _fit_groups(num_groups, init_fn, epoch_fn, step_fn, steps_per_epoch, num_epochs,
                checkpoint: FitCheckpointer | None):
  """Runs the stepwise drivers' loop: groups in turn, epochs, then steps.

  Args:
    num_groups: how many groups are trained one after another.
    init_fn: g -> the fresh TrainState of group g.
    epoch_fn: (g, e) -> group g's epoch-e batches (any pytree).
    step_fn: (g, state, batches, s, step) -> state after slot s of the
      epoch, global step `step`.
    steps_per_epoch, num_epochs: the fit's shape; a group runs
      steps_per_epoch * num_epochs steps.
    checkpoint: optional FitCheckpointer.

  Returns:
    The list of every group's final TrainState.
  """
  finished, start_group, start_step, resumed = [], 0, 0, None
  if checkpoint is not None:
    fresh = init_fn(0)
    restored = checkpoint.restore(fresh)
    if restored is None:
      resumed = fresh
    else:
      start_group, start_step, finished, resumed = restored
  for g in range(start_group, num_groups):
    if resumed is not None:
      state, done, resumed = resumed, start_step, None
    else:
      state, done = init_fn(g), 0
    for e in range(done // steps_per_epoch, num_epochs):
      batches = epoch_fn(g, e)
      for s in range(max(done - e * steps_per_epoch, 0), steps_per_epoch):
        step = e * steps_per_epoch + s
        state = step_fn(g, state, batches, s, step)
        if checkpoint is not None:
          checkpoint.after_step(g, step + 1, finished, state)
    finished = finished + [state]
  if checkpoint is not None and start_group < num_groups:
    checkpoint.fit_done(finished)
  return finished


def fit_ensemble_stepwise(model, tx, spec, batch_size, schedule, learning_rate,
                          keys, x, y, idx, num_valid, num_epochs,
                          init_overrides=None, checkpoint=None) -> TrainState:
  """`fit_ensemble` with one dispatch per step instead of one per fit.

  The same arithmetic as `fit_ensemble` (equal to float tolerance), but the
  epoch and step loops run in Python around a jitted, vmapped step, which is
  compiled once whatever the labeled-set size. XLA:CPU runs convolution
  gradients about 4x slower inside a while-loop body than at the top level of
  a program (measured on LeNet: 30 ms vs 8 ms a step), so on CPUs this is the
  faster driver for convnets; on accelerators prefer `fit_ensemble`, which
  never returns to Python. `checkpoint` (a FitCheckpointer) lets a killed
  fit resume mid-way with a bitwise equal result.
  """
  num_valid, num_epochs = int(num_valid), int(num_epochs)
  steps_per_epoch = _steps_per_epoch(num_valid, batch_size)
  total = jnp.int32(steps_per_epoch * num_epochs)

  def step_fn(g, states, epoch, s, step):
    batch, mask = _take_slot(*epoch, jnp.int32(s))
    return _ensemble_slot(model, tx, spec, schedule, learning_rate, states, keys, x, y,
                          batch, mask, jnp.int32(step), total)

  return _fit_groups(
      1, lambda g: init_ensemble(model, tx, spec, keys, x, init_overrides),
      lambda g, e: _ensemble_epoch_batches(batch_size, keys, jnp.int32(e), idx,
                                           jnp.int32(num_valid)),
      step_fn, steps_per_epoch, num_epochs, checkpoint)[0]


def fit_members_stepwise(model, tx, spec, batch_size, schedule, learning_rate,
                         keys, x, y, idx, num_valid, num_epochs,
                         init_overrides=None, checkpoint=None) -> TrainState:
  """`fit_ensemble_stepwise` with the members trained one after another.

  The same arithmetic as `fit_ensemble` (equal to float tolerance), member by
  member, one dispatch per step. XLA:CPU lowers a vmapped convolution to a
  grouped convolution that it runs far slower than the members' plain
  convolutions in turn: one 5-member training step of ResNet-18 (CIFAR stem,
  batch 64) took 63 s vmapped against 5 x 1.9 s in turn, and LeNet (batch
  64) 103 ms against 5 x 8.6 ms, on a 2-core CPU. `get_fit_fn('auto')`
  picks this driver on CPUs for convolutional models. `checkpoint` (a
  FitCheckpointer) lets a killed fit resume mid-member, bitwise equal.
  """
  num_valid, num_epochs = int(num_valid), int(num_epochs)
  steps_per_epoch = _steps_per_epoch(num_valid, batch_size)
  total = jnp.int32(steps_per_epoch * num_epochs)

  def step_fn(g, state, epoch, s, step):
    return _member_slot(model, tx, spec, schedule, learning_rate, state, keys[g], x, y,
                        *epoch, jnp.int32(s), jnp.int32(step), total)

  members = _fit_groups(
      keys.shape[0], lambda g: _init_one(model, tx, spec, keys[g], x, init_overrides),
      lambda g, e: _member_epoch_batches(batch_size, keys[g], jnp.int32(e), idx,
                                         jnp.int32(num_valid)),
      step_fn, steps_per_epoch, num_epochs, checkpoint)
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)


@functools.lru_cache(maxsize=None)
def _has_convolutions(model, shape, dtype) -> bool:
  jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.PRNGKey(0), x))(jnp.zeros(shape, dtype))
  return 'conv_general_dilated' in str(jaxpr)


def members_one_by_one(model, x) -> bool:
  """Whether to run ensemble members in turn rather than vmapped.

  True on CPUs for models with convolutions (see `fit_members_stepwise`);
  elsewhere vmapping is as fast or faster (a 5-member MLP step on CPU:
  0.5 ms vmapped, 2.5 ms in turn).

  Args:
    model: flax module.
    x: inputs as the model takes them (normalised), [b, ...]; only the shape
      of one row matters.
  """
  if jax.default_backend() != 'cpu':
    return False
  return _has_convolutions(model, (1,) + tuple(x.shape[1:]), jnp.float32)


def members_in_turn_on_accelerators(model) -> bool:
  """Whether `model` trains its ensemble faster in turn (`fit_members_map`)
  than vmapped on accelerators: declared by the model class (ResNet-18)."""
  return bool(getattr(model, 'members_in_turn_on_accelerators', False))


LOOPS = ('auto', 'scan', 'map', 'step', 'member_step')


def get_fit_fn(loop: str, model=None, x=None, mesh=None):
  """The ensemble trainer for `train.loop`.

  'scan' is `fit_ensemble` (one program per fit, members vmapped), 'map'
  `fit_members_map` (one program per fit, members in turn), 'step'
  `fit_ensemble_stepwise` (one dispatch per step, members vmapped),
  'member_step' `fit_members_stepwise` (one dispatch per step and member).
  'auto' is, on accelerators, 'map' for models that declare
  `members_in_turn_on_accelerators` and 'scan' otherwise; on CPU
  'member_step' for convolutional models (given `model` and sample inputs
  `x`) and 'step' otherwise.

  With a `mesh` of several devices the trainer is `fit_ensemble_sharded` on
  it, training each device's members as 'scan' or 'map' does ('auto': 'map'
  for models that declare `members_in_turn_on_accelerators`); the stepwise
  loops run on one device only.
  """
  if mesh is not None and mesh.size > 1:
    if loop == 'auto':
      loop = 'map' if members_in_turn_on_accelerators(model) else 'scan'
    if loop not in ('scan', 'map'):
      raise ValueError(f"train.loop='{loop}' runs on one device; with {mesh.size} devices use "
                       "'scan', 'map' or 'auto'")
    return functools.partial(fit_ensemble_sharded, mesh, in_turn=loop == 'map')
  if loop == 'auto':
    if jax.default_backend() != 'cpu':
      loop = 'map' if members_in_turn_on_accelerators(model) else 'scan'
    elif model is not None and members_one_by_one(model, x):
      loop = 'member_step'
    else:
      loop = 'step'
  if loop == 'scan':
    return fit_ensemble
  if loop == 'map':
    return fit_members_map
  if loop == 'step':
    return fit_ensemble_stepwise
  if loop == 'member_step':
    return fit_members_stepwise
  raise ValueError(f"unknown train.loop '{loop}'; valid: {', '.join(LOOPS)}")


class Predictions(NamedTuple):
  """Outputs of `predict` over a set of points.

  Attributes:
    logits: f32[m, n, c], every member's logits.
    embeddings: f32[n, d] of member 0, or None if not requested.
  """
  logits: Any
  embeddings: Any


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _predict_chunk(model, spec, with_embeddings, states, x, idx):
  """Outputs of every member on `x[idx]`: (f32[m, b, c], f32[b, d] or None)."""
  def member_apply(params, model_state, xb):
    return model.apply({'params': params, **model_state}, xb, train=False)

  xb = prepare_inputs(x[idx], spec)
  logits, emb = jax.vmap(member_apply, in_axes=(0, 0, None))(
      states.params, states.model_state, xb)
  return logits, (emb[0] if with_embeddings else None)


def predict(model, spec, chunk_size, with_embeddings, states: TrainState, x,
            one_by_one: bool = False, mesh=None, indices=None) -> Predictions:
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
    one_by_one: run the members in turn instead of vmapped (faster for
      convnets on CPU, see `members_one_by_one`); the same outputs.
    mesh: optional 1-D mesh (`jal.sharding`): every chunk's points are split
      over its devices, which each hold the whole ensemble and `x`; the
      chunk size is rounded up to a multiple of the device count.
    indices: optional i32[k]: the outputs on `x[indices]` only, gathered
      chunk by chunk (the same compiled program as all of `x`).

  Returns:
    Predictions.
  """
  m = jax.tree.leaves(states.params)[0].shape[0]
  if one_by_one and m > 1:
    parts = [predict(model, spec, chunk_size, with_embeddings and i == 0,
                     jax.tree.map(lambda a, i=i: a[i:i + 1], states), x, mesh=mesh,
                     indices=indices)
             for i in range(m)]
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
    logits, _ = model.apply(variables, xb, train=False, mc=True,
                            rngs={'dropout': jax.random.fold_in(key, t)})
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
