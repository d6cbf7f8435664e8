"""Pure, jitted training of ensembles of classifiers: one entry point, `fit`.

The protocol follows the study (Section 3.2): each round, fresh models are
trained from scratch on the current labeled set. `fit` trains one member per
key; member i equals `fit_member` run alone with key i. What a run keeps
fixed (model, optimizer, input spec, batch size, schedule, learning rate) is
one hashable `Trainer`, a single static argument of the jitted programs. How
the members run is one `Plan`, resolved once per run from the config and the
backend by `resolve_plan`; plans differ in speed, not in results:

  members   'vmap' (batched by `jax.vmap`) or 'in_turn' (one after another).
  dispatch  'program' (the whole fit is one compiled program) or 'step' (one
            jitted dispatch per optimizer step from a Python loop; a
            `FitCheckpointer` can save and resume it mid-fit).
  devices   1, or D > 1: the members split over a mesh by `shard_map`
            (dispatch 'program' only).

Static shapes: the labeled set is passed as an index vector padded to a
*capacity* (a multiple of the batch size, rounded up to a power of two number
of batches, see `capacity_for`), plus the number of valid entries. The data
are uploaded once; batches are gathered on device from the index vector. A
'program' fit compiles once per capacity bucket, so a run that grows its
labeled set from L0 to L1 compiles it about log2(L1 / L0) + 1 times; a 'step'
fit compiles its step once.

In a 'program' fit, epochs run in a `lax.fori_loop` (its trip count is a
traced value, so changing the number of epochs does not recompile) and the
batches of an epoch in a `lax.scan` over the bucket's batch slots. Slots past
the last valid batch are skipped by a `lax.cond` whose predicate does not
depend on the member, so under `vmap` it stays a real branch. A 'step' fit
runs the same arithmetic one step at a time. Inference is in `jal.infer`.

    from jal import train
    trainer = train.Trainer.from_config(config.train, model, train.InputSpec())
    plan = train.resolve_plan(config.train.members_plan, config.train.dispatch, trainer, x[:1])
    states = train.fit(trainer, keys, x, y, idx, num_valid, num_epochs, plan=plan)  # keys: [m, 2]
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
  object, so Trainers built from equal settings are equal and share their
  compiled programs across experiments.

  Args:
    train_config: ConfigDict with `optimizer` ('adam', 'adamw', 'sgd'),
      `learning_rate`, optional `weight_decay` and `momentum`.
  """
  return _optimizer(
      train_config.optimizer,
      float(train_config.learning_rate),
      float(train_config.get('weight_decay', 0.0) or 0.0),
      float(train_config.get('momentum', 0.9)),
  )


@functools.lru_cache(maxsize=None)
def _optimizer(name, lr, wd, momentum):
  if name == 'adam':
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
  if name == 'adamw':
    return optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=wd)
  if name == 'sgd':

    def sgd(learning_rate):
      return optax.chain(
          optax.add_decayed_weights(wd), optax.sgd(learning_rate, momentum=momentum, nesterov=True)
      )

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
      (logits, _), new_model_state = model.apply(
          variables, x, train=True, mutable=mutable, **apply_kwargs
      )
    else:
      logits, _ = model.apply(variables, x, train=True, **apply_kwargs)
      new_model_state = state.model_state
    return masked_cross_entropy(logits, y, mask), new_model_state

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  hyperparams = {
      **state.opt_state.hyperparams,
      'learning_rate': jnp.asarray(learning_rate, jnp.float32),
  }
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


def _check_choice(what: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"unknown {what} '{value}'; valid: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a run keeps fixed between fits: the static half of `fit`'s arguments.

  Frozen and hashable by its fields, so jitted programs take it as one static
  argument and equal settings share their compilations: flax modules compare
  by their fields, and `make_optimizer` returns the same object for equal
  settings.

  Attributes:
    model: flax module returning `(logits, embedding)`.
    tx: optimizer from `make_optimizer`.
    spec: InputSpec of the training inputs (augmentation included).
    batch_size: B, rows per step and member.
    schedule: learning-rate schedule, one of SCHEDULES.
    learning_rate: the base learning rate, scaled by `lr_factor` each step.
  """

  model: Any
  tx: optax.GradientTransformation
  spec: InputSpec
  batch_size: int
  schedule: str
  learning_rate: float

  @classmethod
  def from_config(cls, train_config, model, spec: InputSpec) -> 'Trainer':
    """The Trainer of `config.train` (optimizer from `make_optimizer`)."""
    return cls(
        model,
        make_optimizer(train_config),
        spec,
        int(train_config.batch_size),
        train_config.schedule,
        float(train_config.learning_rate),
    )


MEMBERS = ('vmap', 'in_turn')
DISPATCHES = ('program', 'step')


@dataclasses.dataclass(frozen=True)
class Plan:
  """How `fit` runs an ensemble's training; every plan gives the same members.

  Member i equals `fit_member` with key i under every plan (to float
  tolerance: only the order of floating-point operations differs); plans
  differ in speed, measured in `results/bench_*`.

  Attributes:
    members: 'vmap' trains the members batched by `jax.vmap`; 'in_turn' one
      after another. XLA lowers a vmapped convolution to a grouped one, which
      cuDNN (backward pass above all, jax-ml/jax#13800) and XLA:CPU run
      slower than the members' plain convolutions in turn, while small
      models (LeNet on a GPU, MLPs everywhere) run faster vmapped: measured
      per model and machine in results/bench_h200/ensemble_train.jsonl and
      results/bench_cpu/ensemble_train*.jsonl, and `resolve_plan` follows
      those measurements.
    dispatch: 'program' runs the whole fit as one compiled program (epochs
      in `lax.fori_loop`, batches in `lax.scan`), never returning to Python;
      'step' dispatches one jitted step at a time from a Python loop, which
      compiles once whatever the labeled-set size and can save and resume
      mid-fit (`FitCheckpointer`). XLA:CPU runs convolution gradients
      several times slower inside a loop body than at the top level of a
      program (results/bench_cpu/ensemble_train.jsonl), so CPUs prefer 'step'.
    devices: 1, or D > 1: the members split over the D devices of a mesh by
      `shard_map`, each device training its share as `members` says (m
      members cost ceil(m / D) members' time); 'program' dispatch only.
  """

  members: str = 'vmap'
  dispatch: str = 'program'
  devices: int = 1

  def __post_init__(self):
    _check_choice('members', self.members, MEMBERS)
    _check_choice('dispatch', self.dispatch, DISPATCHES)
    if not isinstance(self.devices, int) or self.devices < 1:
      raise ValueError(f'devices must be a positive int, got {self.devices!r}')
    if self.devices > 1 and self.dispatch != 'program':
      raise ValueError(
          f"dispatch '{self.dispatch}' runs on one device; with {self.devices} "
          "devices use 'program'"
      )

  def describe(self) -> str:
    """One line for the run log, e.g. 'members in turn, one dispatch per step, 1 device'."""
    members = 'members vmapped' if self.members == 'vmap' else 'members in turn'
    dispatch = 'one program per fit' if self.dispatch == 'program' else 'one dispatch per step'
    devices = '1 device' if self.devices == 1 else f'split over {self.devices} devices'
    return f'{members}, {dispatch}, {devices}'

  def as_dict(self) -> dict[str, Any]:
    """{'members', 'dispatch', 'devices'}: the plan in JSON records (timings.jsonl)."""
    return dataclasses.asdict(self)


@functools.lru_cache(maxsize=None)
def _has_convolutions(model, shape, dtype) -> bool:
  jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.PRNGKey(0), x))(jnp.zeros(shape, dtype))
  return 'conv_general_dilated' in str(jaxpr)


def resolve_plan(
    members: str = 'auto',
    dispatch: str = 'auto',
    trainer: Trainer | None = None,
    sample_x=None,
    mesh=None,
) -> Plan:
  """The Plan of a run, from `config.train.members_plan` and `.dispatch`.

  'auto' follows the measurements in `Plan`'s docstring. On one CPU device:
  dispatch 'step', and members 'in_turn' for models with convolutions,
  'vmap' otherwise. On accelerators, or with a mesh of several devices:
  dispatch 'program', and members 'in_turn' for models that declare
  `members_in_turn_on_accelerators` (ResNet-18), 'vmap' otherwise.

  Args:
    members: 'auto', 'vmap' or 'in_turn'.
    dispatch: 'auto', 'program' or 'step'.
    trainer: the run's Trainer; its model decides 'auto' members (without
      one, 'auto' members are 'vmap').
    sample_x: [b, ...] inputs as stored or as the model takes them (only the
      shape of a row matters); needed for 'auto' members on a CPU.
    mesh: optional 1-D mesh (`jal.sharding`); with several devices the plan
      splits the members over them.

  Raises:
    ValueError: an unknown value, or dispatch 'step' with several devices.
  """
  _check_choice('members', members, ('auto',) + MEMBERS)
  _check_choice('dispatch', dispatch, ('auto',) + DISPATCHES)
  devices = 1 if mesh is None else mesh.size
  model = None if trainer is None else trainer.model
  one_cpu = jax.default_backend() == 'cpu' and devices == 1
  if members == 'auto':
    if not one_cpu:
      in_turn = bool(getattr(model, 'members_in_turn_on_accelerators', False))
    elif model is None:
      in_turn = False
    elif sample_x is None:
      raise ValueError(
          "members 'auto' on a CPU needs sample_x, to see whether the model " 'has convolutions'
      )
    else:
      in_turn = _has_convolutions(model, (1,) + tuple(sample_x.shape[1:]), jnp.float32)
    members = 'in_turn' if in_turn else 'vmap'
  if dispatch == 'auto':
    dispatch = 'step' if one_cpu else 'program'
  return Plan(members, dispatch, devices)


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
  priority = jnp.where(
      positions < num_valid,
      jax.random.uniform(jax.random.fold_in(shuffle_key, e), (capacity,)),
      2.0,
  )
  order = jnp.argsort(priority)
  filled = order[positions % jnp.maximum(num_valid, 1)]
  return (idx[filled].reshape(-1, batch_size), (positions < num_valid).reshape(-1, batch_size))


def _slot_update(trainer: Trainer, state, aug_key, x, y, batch_idx, mask, step, total_steps):
  """One step on the batch `x[batch_idx]` at global step `step`.

  The step's key `fold_in(aug_key, step)` drives augmentation; dropout, if
  the model has any, uses `fold_in(step key, _DROPOUT_STREAM)`.
  """
  step_key = jax.random.fold_in(aug_key, step)
  xb = prepare_inputs(x[batch_idx], trainer.spec, step_key)
  lr = trainer.learning_rate * lr_factor(trainer.schedule, step, total_steps)
  dropout_key = (
      jax.random.fold_in(step_key, _DROPOUT_STREAM) if models.has_dropout(trainer.model) else None
  )
  return train_step(trainer.model, trainer.tx, state, xb, y[batch_idx], mask, lr, dropout_key)[0]


def _steps_per_epoch(num_valid, batch_size):
  return (num_valid + batch_size - 1) // batch_size


def init_member(trainer: Trainer, key, x, init_overrides=None) -> TrainState:
  """A member's fresh state from its key.

  Parameters are drawn from an 'rbg' key derived from the member's init key:
  XLA compiles ResNet-18's initialisers in about a fifth of the time it needs
  with threefry. Ensembles map (not vmap) this over members, since batched
  'rbg' draws differ from unbatched ones; mapping keeps every member equal
  to the same key initialised alone.

  Args:
    trainer: the Trainer (model, tx and spec matter).
    key: the member's PRNG key.
    x: stored inputs [n, ...]; row 0 fixes the shapes.
    init_overrides: optional pretrained leaves, see `init_state`.
  """
  init_key = _split_member_key(key)[0]
  rbg = jax.random.wrap_key_data(jax.random.bits(init_key, (4,), jnp.uint32), impl='rbg')
  return init_state(
      trainer.model, trainer.tx, rbg, prepare_inputs(x[:1], trainer.spec), init_overrides
  )


def train_member(trainer: Trainer, state, key, x, y, idx, num_valid, num_epochs) -> TrainState:
  """Trains `state` for `num_epochs` over `x[idx[:num_valid]]`. Pure.

  Args:
    trainer: the static settings.
    state: the member's initial TrainState.
    key: the member's PRNG key (shuffling and augmentation streams).
    x: stored inputs, [n, ...] (uint8 images or float features).
    y: i32[n] labels.
    idx: i32[capacity] labeled indices, valid entries first; capacity is a
      multiple of the batch size.
    num_valid: i32[], the number of valid entries of idx.
    num_epochs: i32[], passes over the labeled set.

  Returns:
    The trained TrainState.
  """
  _, shuffle_key, aug_key = _split_member_key(key)
  steps_per_epoch = _steps_per_epoch(num_valid, trainer.batch_size)
  total_steps = steps_per_epoch * num_epochs

  def epoch(e, state):
    batches, masks = _epoch_batches(shuffle_key, e, idx, num_valid, trainer.batch_size)

    def slot(state, inputs):
      s, batch_idx, mask = inputs
      run = lambda st: _slot_update(
          trainer, st, aug_key, x, y, batch_idx, mask, e * steps_per_epoch + s, total_steps
      )
      return jax.lax.cond(s < steps_per_epoch, run, lambda st: st, state), None

    state, _ = jax.lax.scan(slot, state, (jnp.arange(batches.shape[0]), batches, masks))
    return state

  return jax.lax.fori_loop(0, num_epochs, epoch, state)


def fit_member(
    trainer: Trainer, key, x, y, idx, num_valid, num_epochs, init_overrides=None
) -> TrainState:
  """Trains one fresh member from `key`: `init_member` then `train_member`. Pure.

  The single-member kernel (jit it with `static_argnums=0`); `fit` trains an
  ensemble whose member i equals this with key i.

  Args:
    trainer: the static settings.
    key: PRNG key of this member (init, shuffling and augmentation).
    x, y, idx, num_valid, num_epochs: as in `train_member`.
    init_overrides: optional pretrained leaves, see `init_state`.

  Returns:
    The trained TrainState.
  """
  state = init_member(trainer, key, x, init_overrides)
  return train_member(trainer, state, key, x, y, idx, num_valid, num_epochs)


@functools.partial(jax.jit, static_argnums=0)
def init_ensemble(trainer: Trainer, keys, x, init_overrides=None) -> TrainState:
  """Fresh states of one member per key (keys: [m, 2]), stacked on axis 0 (`init_member`)."""
  return jax.lax.map(lambda k: init_member(trainer, k, x, init_overrides), keys)


class FitCheckpointer(Protocol):
  """Where a 'step' fit saves its progress, so a killed fit resumes mid-way.

  A fit trains *groups* one after another (each member for members
  'in_turn', one group of all members for 'vmap'), each for `total` steps.
  Every step is a pure function of the group's state, its key and the step
  number, so a fit resumed from a saved (group, step, state) ends bitwise
  equal to one that never stopped. `jal.checkpoints.FitProgress` keeps
  them with orbax.
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


def fit(
    trainer: Trainer,
    keys,
    x,
    y,
    idx,
    num_valid,
    num_epochs,
    *,
    plan: Plan,
    init_overrides=None,
    checkpoint: FitCheckpointer | None = None,
    mesh=None,
) -> TrainState:
  """Trains one fresh member per key, as `plan` says; member i equals `fit_member`
  with `keys[i]` (to float tolerance, whatever the plan).

  Args:
    trainer: the static settings; reuse one object (or equal ones) across
      calls to reuse the compiled programs.
    keys: [m, 2] uint32 PRNG keys, one per member.
    x: stored inputs, [n, ...] (uint8 images or float features).
    y: i32[n] labels.
    idx: i32[capacity] labeled indices, valid entries first; capacity is a
      multiple of the batch size (`capacity_for`).
    num_valid: i32[], the number of valid entries of idx.
    num_epochs: i32[], passes over the labeled set.
    plan: from `resolve_plan` (or a Plan built by hand).
    init_overrides: optional pretrained leaves shared by all members, see
      `init_state`.
    checkpoint: optional FitCheckpointer saving and resuming the fit mid-way;
      dispatch 'step' only (a 'program' fit is one dispatch, with no point to
      save at).
    mesh: the 1-D mesh of a plan with several devices (`jal.sharding`);
      None or a one-device mesh otherwise.

  Returns:
    TrainState whose leaves have a leading member axis m (split over the
    mesh's devices for a plan with several).

  Raises:
    ValueError: a checkpoint with dispatch 'program', or a mesh whose size is
      not the plan's device count.
  """
  devices = 1 if mesh is None else mesh.size
  if devices != plan.devices:
    raise ValueError(
        f'the plan is for {plan.devices} device(s) but the mesh has {devices}; '
        'resolve the plan with this mesh'
    )
  if checkpoint is not None and plan.dispatch != 'step':
    raise ValueError(f"a checkpoint needs dispatch 'step', the plan has '{plan.dispatch}'")
  in_turn = plan.members == 'in_turn'
  dynamic = (keys, x, y, idx, num_valid, num_epochs, init_overrides)
  if plan.devices > 1:
    return _fit_sharded(trainer, in_turn, mesh, *dynamic)
  if plan.dispatch == 'program':
    return _fit_program(trainer, in_turn, *dynamic)
  steps = _fit_steps_in_turn if in_turn else _fit_steps_vmapped
  return steps(trainer, *dynamic, checkpoint)


# --------------------------------------------------------------------------
# Dispatch 'program': the whole fit in one compiled program.
# --------------------------------------------------------------------------


def _program_vmapped(trainer, keys, x, y, idx, num_valid, num_epochs, init_overrides):
  """Members 'vmap' in one program (traced, not jitted)."""
  states = init_ensemble(trainer, keys, x, init_overrides)
  one = functools.partial(train_member, trainer)
  return jax.vmap(one, in_axes=(0, 0, None, None, None, None, None))(
      states, keys, x, y, idx, num_valid, num_epochs
  )


def _program_in_turn(trainer, keys, x, y, idx, num_valid, num_epochs, init_overrides):
  """Members 'in_turn' in one program: `lax.map` of `fit_member` (traced, not jitted)."""
  one = lambda k: fit_member(trainer, k, x, y, idx, num_valid, num_epochs, init_overrides)
  return jax.lax.map(one, keys)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fit_program(trainer, in_turn, keys, x, y, idx, num_valid, num_epochs, init_overrides):
  body = _program_in_turn if in_turn else _program_vmapped
  return body(trainer, keys, x, y, idx, num_valid, num_epochs, init_overrides)


def _fit_sharded(trainer, in_turn, mesh, keys, x, y, idx, num_valid, num_epochs, init_overrides):
  """Dispatch 'program' with the members split over the devices of `mesh`.

  Each device runs the one-device program on its share of the members
  (`jax.shard_map` over the mesh's one axis); data, labeled indices and
  pretrained leaves are replicated, and no arrays move between devices while
  training. The member axis is padded to a multiple of the device count with
  copies of the first keys, whose results are dropped.
  """
  m = keys.shape[0]
  pad = -(-m // mesh.size) * mesh.size - m
  keys = jnp.concatenate([keys, keys[jnp.arange(pad) % m]]) if pad else keys
  states = _fit_program_sharded(
      trainer, in_turn, mesh, keys, x, y, idx, num_valid, num_epochs, init_overrides
  )
  return jax.tree.map(lambda a: a[:m], states) if pad else states


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _fit_program_sharded(
    trainer, in_turn, mesh, keys, x, y, idx, num_valid, num_epochs, init_overrides
):
  split, whole = jax.sharding.PartitionSpec(mesh.axis_names[0]), jax.sharding.PartitionSpec()
  body = _program_in_turn if in_turn else _program_vmapped
  return jax.shard_map(
      functools.partial(body, trainer),
      mesh=mesh,
      in_specs=(split,) + (whole,) * 6,
      out_specs=split,
      check_vma=False,
  )(keys, x, y, idx, num_valid, num_epochs, init_overrides)


# --------------------------------------------------------------------------
# Dispatch 'step': one jitted dispatch per optimizer step.
# --------------------------------------------------------------------------


def _fit_groups(
    num_groups,
    init_fn,
    epoch_fn,
    step_fn,
    steps_per_epoch,
    num_epochs,
    checkpoint: FitCheckpointer | None,
):
  """Runs a 'step' fit's loop: groups in turn, epochs, then steps.

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


def _fit_steps_vmapped(trainer, keys, x, y, idx, num_valid, num_epochs, init_overrides, checkpoint):
  """Dispatch 'step', members 'vmap': one group of all members."""
  num_valid, num_epochs = int(num_valid), int(num_epochs)
  steps_per_epoch = _steps_per_epoch(num_valid, trainer.batch_size)
  total = jnp.int32(steps_per_epoch * num_epochs)

  def step_fn(g, states, epoch, s, step):
    batch, mask = _take_slot(*epoch, jnp.int32(s))
    return _vmapped_slot(trainer, states, keys, x, y, batch, mask, jnp.int32(step), total)

  return _fit_groups(
      1,
      lambda g: init_ensemble(trainer, keys, x, init_overrides),
      lambda g, e: _vmapped_epoch_batches(
          trainer.batch_size, keys, jnp.int32(e), idx, jnp.int32(num_valid)
      ),
      step_fn,
      steps_per_epoch,
      num_epochs,
      checkpoint,
  )[0]


def _fit_steps_in_turn(trainer, keys, x, y, idx, num_valid, num_epochs, init_overrides, checkpoint):
  """Dispatch 'step', members 'in_turn': one group per member."""
  num_valid, num_epochs = int(num_valid), int(num_epochs)
  steps_per_epoch = _steps_per_epoch(num_valid, trainer.batch_size)
  total = jnp.int32(steps_per_epoch * num_epochs)

  def step_fn(g, state, epoch, s, step):
    return _member_slot(trainer, state, keys[g], x, y, *epoch, jnp.int32(s), jnp.int32(step), total)

  members = _fit_groups(
      keys.shape[0],
      lambda g: _init_one(trainer, keys[g], x, init_overrides),
      lambda g, e: _member_epoch_batches(
          trainer.batch_size, keys[g], jnp.int32(e), idx, jnp.int32(num_valid)
      ),
      step_fn,
      steps_per_epoch,
      num_epochs,
      checkpoint,
  )
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)


@functools.partial(jax.jit, static_argnums=(0,))
def _vmapped_epoch_batches(batch_size, keys, e, idx, num_valid):
  one = lambda k: _epoch_batches(_split_member_key(k)[1], e, idx, num_valid, batch_size)
  return jax.vmap(one)(keys)


@jax.jit
def _take_slot(batches, masks, s):
  """Slot s of every member's epoch: ([m, slots, B], ...) -> ([m, B], ...)."""
  return batches[:, s], masks[:, s]


# A step's input state is donated: its buffers hold the output state.
@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
def _vmapped_slot(trainer, states, keys, x, y, batch, mask, step, total_steps):
  def one(state, key, b, m):
    return _slot_update(trainer, state, _split_member_key(key)[2], x, y, b, m, step, total_steps)

  return jax.vmap(one)(states, keys, batch, mask)


@functools.partial(jax.jit, static_argnums=(0,))
def _init_one(trainer, key, x, init_overrides=None) -> TrainState:
  return init_member(trainer, key, x, init_overrides)


@functools.partial(jax.jit, static_argnums=(0,))
def _member_epoch_batches(batch_size, key, e, idx, num_valid):
  return _epoch_batches(_split_member_key(key)[1], e, idx, num_valid, batch_size)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
def _member_slot(trainer, state, key, x, y, batches, masks, s, step, total_steps):
  return _slot_update(
      trainer, state, _split_member_key(key)[2], x, y, batches[s], masks[s], step, total_steps
  )
