"""The pool-based active learning loop of the study (Section 3.2).

For each (strategy, seed): a random warmup set is labeled (the same for every
strategy at a given seed); then each round trains a fresh ensemble from
scratch on the labeled set, evaluates it on the test set, and, unless it is
the last round, lets the strategy pick `query_size` new points to label.

Everything a run produces lives in its workdir:

    config.json          the config, to refuse a workdir of another experiment
    metrics.jsonl        one object per (strategy, seed, round)
    selections.jsonl     the indices labeled at each (strategy, seed, round)
    timings.jsonl        wall times of each round's parts, the seconds of
                         each spent compiling (`<part>_compile_seconds`; the
                         rest is steady-state work; jal.runtime's persistent
                         cache makes a repeated run's small), and the training
                         plan (`train.Plan.as_dict`); a fit resumed from its
                         saved progress: `train_resumed`, seconds summed over
                         the processes that trained it
    results.md           the final table
    checkpoints/<strategy>_seed<seed>/<round>   orbax loop state
    checkpoints/fit/<strategy>_seed<seed>/      the round's training in progress

The loop state of each (strategy, seed), saved after every round, holds the
label round of every pool point (-1: unlabeled), the run's RNG key and the
history. All randomness is `fold_in` of one root key, so a run resumed after
a crash draws exactly what an uninterrupted run draws, and the JSON files are
rewritten atomically from the checkpoints. A long round's training (dispatch
'step', the CPU default) also saves its progress every
`fit_checkpoint_seconds` (FitCheckpoints), so a run killed mid-fit loses at
most that much work.
"""

import functools
import hashlib
import json
import os
import shutil
import time
import zlib
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jal import config_lib
from jal import data as data_lib
from jal import infer
from jal import metrics as metrics_lib
from jal import models
from jal import report
from jal import runtime
from jal import sharding
from jal import strategies as strategies_lib
from jal import train
from jal import workdir as workdir_lib
from jal.strategies import base
from jal.strategies import mc_dropout

# Purposes folded into a seed's key: one independent stream each.
_WARMUP, _TRAIN, _SELECT = 1, 2, 3
# Folded into a round's select key for its MC dropout passes.
_MC_PASSES = 0x4D43  # 'MC'


def _name_id(name: str) -> int:
  """A stable 31-bit id of a strategy name, for fold_in."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def seed_key(root_seed: int, seed: int):
  return jax.random.fold_in(jax.random.PRNGKey(root_seed), seed)


def warmup_indices(key, n: int, size: int) -> np.ndarray:
  """The warmup set: `size` distinct pool indices, sorted. Strategy-free."""
  return np.sort(np.asarray(jax.random.choice(
      jax.random.fold_in(key, _WARMUP), n, (size,), replace=False)))


def member_keys(key, round_: int, members: int):
  """Init/shuffle keys of the ensemble trained at `round_`: [members, 2].

  They depend on the seed and round only, not on the strategy, so strategies
  are compared with common random numbers.
  """
  k = jax.random.fold_in(jax.random.fold_in(key, _TRAIN), round_)
  return jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(members))


def select_key(key, strategy: str, round_: int):
  k = jax.random.fold_in(jax.random.fold_in(key, _SELECT), _name_id(strategy))
  return jax.random.fold_in(k, round_)


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class Diverged(FloatingPointError):
  """A round's training diverged; one line: `training diverged: <where>: <detail>`."""

  def __init__(self, detail: str, where: str | None = None):
    super().__init__(f'training diverged: {where + ": " if where else ""}{detail}')
    self.detail = detail

  def at(self, where: str) -> 'Diverged':
    """The same divergence, named by the run that met it (strategy, seed, round)."""
    return Diverged(self.detail, where)


def atomic_write(path: str, text: str) -> None:
  """Replaces `path` by `text` in one step: readers see the old or the new file.

  The text goes to `<path>.tmp-<pid>` first, removed again if the write
  fails or is interrupted (a killed writer's is removed by the next run,
  `jal.workdir.remove_leftovers`).

  Raises:
    OSError: naming `path`, e.g. a full disk's ENOSPC, which a failed write
      or flush raises without a file name.
  """
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    if isinstance(e, OSError):
      raise OSError(e.errno, e.strerror, path) from e
    raise


def _jsonl(rows) -> str:
  return ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows)


class Experiment:
  """Holds what all (strategy, seed) runs of one config share.

  The data are uploaded to the device once; the model, the Trainer and the
  training Plan are built once, so every round reuses their compilations.
  `settings` is the config's `config_lib.Settings` (what `validate`
  returned; None parses `config`).
  """

  def __init__(self, config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
               settings: config_lib.Settings | None = None):
    runtime.count_compile_time()   # timings' *_compile_seconds (commands start it earlier)
    self.config = config
    self.settings = config_lib.parse(config) if settings is None else settings
    self.dataset = dataset
    # Several devices: members and pools are split over a mesh (jal.sharding),
    # and the data sit whole on every device.
    self.mesh = sharding.mesh_for(config.get('sharding', 'auto'))
    place = (jax.device_put if self.mesh is None else
             functools.partial(jax.device_put, device=sharding.replicated(self.mesh)))
    self.x_train = place(dataset.x_train)
    self.y_train = place(dataset.y_train.astype(np.int32))
    self.x_test = place(dataset.x_test)
    self.y_test = np.asarray(dataset.y_test)
    self.n = int(dataset.x_train.shape[0])
    self.model = models.get_model(config.model, dataset.num_classes)
    self.trainer = train.Trainer.from_config(
        config.train, self.model,
        train.InputSpec(dataset.mean, dataset.std, config.train.augment))
    self.eval_spec = train.InputSpec(dataset.mean, dataset.std, 'none')
    self.init_overrides = jax.device_put(pretrained_overrides(
        self.model, config.model, self.x_train[:1], self.eval_spec))
    # Resolved once: fits and predictions run the members as it says.
    self.plan = train.resolve_plan(config.train.members_plan, config.train.dispatch,
                                   self.trainer, self.x_train[:1], self.mesh)
    logging.info('training plan: %s', self.plan.describe())

  @functools.cached_property
  def fixed_embeddings(self):
    """f32[n, d] pool embeddings that do not change between rounds, computed once.

    Per `strategy_options.embeddings`: 'pretrained' gives the penultimate
    features of the network loaded from `model.pretrained_path`, before any
    training (with the ImageNet stem every tensor below the head is loaded,
    so no initialiser is run); a path gives that `.npy` file, one row per
    pool point in pool order (e.g. SimCLR features computed elsewhere).
    """
    source = self.settings.embedding_source
    if source == 'pretrained':
      shapes = variable_shapes(self.model, self.x_train[:1], self.eval_spec)
      flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
      unloaded = [p for p in flat if p not in self.init_overrides and p[:2] != ('params', 'fc')]
      if unloaded:
        raise ValueError(f'strategy_options.embeddings=pretrained: {unloaded[0]} is not in '
                         f'{self.config.model.pretrained_path}')
      # The head (fc) is not loaded when the class count differs: zeros, unused here.
      variables = flax.traverse_util.unflatten_dict(
          {p: self.init_overrides.get(p, np.zeros(s.shape, s.dtype)) for p, s in flat.items()})
      states = train.TrainState(
          params=jax.tree.map(lambda a: a[None], variables['params']),
          model_state={k: jax.tree.map(lambda a: a[None], v)
                       for k, v in variables.items() if k != 'params'}, opt_state=None)
      emb = self.predict(states, self.x_train, True).embeddings
    else:
      emb = np.load(source)
      if emb.ndim != 2 or emb.shape[0] != self.n:
        raise ValueError(f'strategy_options.embeddings {source} has shape {emb.shape}; '
                         f'needs [{self.n}, d], one row per pool point')
    logging.info('fixed embeddings (%s): %s', source, tuple(emb.shape))
    return jax.device_put(jnp.asarray(emb, jnp.float32))

  def fit(self, key, labeled_idx: np.ndarray, round_: int, checkpoint=None):
    """Trains the round's ensemble on `labeled_idx`; returns stacked states.

    `checkpoint` (a train.FitCheckpointer, e.g. FitCheckpoints) saves and
    resumes the fit mid-way where the plan's dispatch is 'step' (the CPU
    default); a 'program' fit runs whole, and `checkpoint` is not used.

    Raises:
      Diverged: the fit diverged (`check_trained`).
    """
    tc = self.config.train
    num = len(labeled_idx)
    capacity = train.capacity_for(num, tc.batch_size)
    idx = np.zeros((capacity,), np.int32)
    idx[:num] = labeled_idx
    epochs = train.epochs_for(num, tc.batch_size, tc.epochs, tc.min_steps)
    states = train.fit(
        self.trainer, member_keys(key, round_, tc.members), self.x_train, self.y_train,
        jnp.asarray(idx), jnp.int32(num), jnp.int32(epochs), plan=self.plan,
        init_overrides=self.init_overrides,
        checkpoint=checkpoint if self.plan.dispatch == 'step' else None, mesh=self.mesh)
    self.check_trained(states, labeled_idx, f'round {round_}')
    return states

  def _diverged(self, detail: str, where: str | None = None) -> Diverged:
    return Diverged(f'{detail}; lower config.train.learning_rate '
                    f'({self.config.train.learning_rate})', where)

  def check_trained(self, states, labeled_idx: np.ndarray, where: str) -> None:
    """Raises Diverged if the fit left non-finite parameters, or logits or a
    loss on its own labeled set beyond metrics_lib's limits. One forward pass
    over the labeled set, no randomness: results are unchanged."""
    if not bool(_all_finite(states.params)):
      raise self._diverged('the parameters are not finite', where)
    logits = self.predict(states, self.x_train, False, indices=labeled_idx).logits
    detail = metrics_lib.divergence(
        np.asarray(logits), np.asarray(self.dataset.y_train)[labeled_idx], 'labeled')
    if detail:
      raise self._diverged(detail, where)

  def predict(self, states, x, with_embeddings: bool, indices=None):
    return infer.predict(self.model, self.eval_spec, self.config.eval_batch_size,
                         with_embeddings, states, x, in_turn=infer.members_in_turn(self.plan),
                         mesh=self.mesh, indices=indices)

  def evaluate(self, states) -> dict[str, float]:
    """Test metrics of the ensemble (mean softmax) and of its members.

    Raises:
      Diverged: the test logits are not finite or beyond metrics_lib.LOGIT_LIMIT.
    """
    logits = np.asarray(self.predict(states, self.x_test, False).logits)
    detail = metrics_lib.divergence(logits)
    if detail:
      raise self._diverged(detail)
    return metrics_lib.classification_metrics(logits, self.y_test, self.dataset.positive_class)

  def score(self, strategy, states, labeled: np.ndarray, key) -> strategies_lib.Inputs:
    """Computes, over the whole pool, the inputs `strategy` asks for.

    Args:
      strategy: the registered Strategy.
      states: the round's ensemble, stacked on a member axis.
      labeled: bool[n].
      key: the round's select key (`select_key`); MC dropout passes use
        `fold_in(key, _MC_PASSES)`, so a resumed run redraws them exactly.
    """
    needs = strategy.needs
    inputs = strategies_lib.Inputs(labeled=jnp.asarray(labeled), mesh=self.mesh)
    # Embeddings from `strategy_options.embeddings` other than 'model' are fixed.
    fixed = base.EMBEDDINGS in needs and self.settings.embedding_source != 'model'
    model_needs = needs - {base.EMBEDDINGS} if fixed else needs
    if model_needs & {base.LOGITS, base.EMBEDDINGS}:
      # Embeddings are member 0's: without logits, run that member only.
      run = states if base.LOGITS in needs else jax.tree.map(lambda a: a[:1], states)
      preds = self.predict(run, self.x_train, base.EMBEDDINGS in model_needs)
      inputs = inputs._replace(
          logits=preds.logits if base.LOGITS in needs else None,
          embeddings=preds.embeddings)
    if fixed:
      inputs = inputs._replace(embeddings=self.fixed_embeddings)
    if needs & {base.CLASSIFIER, base.MC_LOGITS}:
      member0 = jax.tree.map(lambda a: a[0], states)
    if base.CLASSIFIER in needs:
      inputs = inputs._replace(classifier=base.Classifier(
          model=self.model, spec=self.eval_spec,
          variables={'params': member0.params, **member0.model_state},
          x=self.x_train, chunk_size=self.config.eval_batch_size))
    if base.MC_LOGITS in needs:
      inputs = inputs._replace(mc_logits=infer.mc_predict(
          self.model, self.eval_spec, self.config.eval_batch_size,
          mc_dropout.mc_samples_of(self.config.strategy_options, strategy.name), member0,
          self.x_train, jax.random.fold_in(key, _MC_PASSES)))
    return jax.block_until_ready(inputs)

  def select(self, strategy, inputs: strategies_lib.Inputs, key) -> np.ndarray:
    """Runs `strategy` on scored inputs; returns the picked indices, validated."""
    picks = np.asarray(strategy.select(inputs, self.config.query_size, key,
                                       self.config.strategy_options))
    labeled = np.asarray(inputs.labeled)
    if len(np.unique(picks)) != len(picks) or labeled[picks].any():
      raise RuntimeError(f'strategy {strategy.name} picked labeled or repeated points: {picks}')
    return picks


def variable_shapes(model, sample_x, spec):
  """The model's variables as ShapeDtypeStructs, without running an initialiser."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                        train.prepare_inputs(sample_x, spec))


def pretrained_overrides(model, model_config, sample_x, spec):
  """The leaves loaded from `model_config.pretrained_path`, or None.

  Returns `{(collection, *path): array}` for every tensor the converter took
  from the state dict; tensors it kept as initialised (the head when the
  class count differs, the CIFAR-stem conv1) are left out, so each ensemble
  member initialises them from its own key.
  """
  path = model_config.get('pretrained_path')
  if not path:
    return None
  from jal import pretrained  # pylint: disable=g-import-not-at-top
  # Only shapes matter (kept leaves are left out), so no initialiser is run or compiled.
  shapes = variable_shapes(model, sample_x, spec)
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  loaded = pretrained.load_pretrained(path, template, stem=model_config.get('stem', 'cifar'))
  out = {}
  for col, tree in loaded.items():
    fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(template[col]))
    for p, leaf in flax.traverse_util.flatten_dict(tree).items():
      if leaf is not fresh[p]:
        out[(col, *p)] = np.asarray(leaf)
  return out


def _initial_state(exp: Experiment, key) -> dict[str, Any]:
  label_round = np.full((exp.n,), -1, np.int32)
  label_round[warmup_indices(key, exp.n, exp.config.warmup_size)] = 0
  return {'label_round': label_round, 'round': -1, 'history': [], 'selections': [],
          'timings': []}


class DamagedCheckpoint(ValueError):
  """A checkpoint whose files or contents differ from what was saved."""


# What restoring a damaged checkpoint raises: orbax and tensorstore (ValueError, OSError),
# json (JSONDecodeError and UnicodeDecodeError are ValueErrors), a missing item or key
# (FileNotFoundError, KeyError), wrong types or shapes (TypeError, IndexError) and
# DamagedCheckpoint.
_DAMAGE = (OSError, ValueError, KeyError, TypeError, IndexError)


def _is_damage(error: Exception) -> bool:
  """Whether `error`, raised by a restore, says the checkpoint is damaged. Besides `_DAMAGE`,
  orbax raises a bare Exception when an array's data fail to read. Other errors (and
  KeyboardInterrupt, not an Exception) pass through."""
  # pylint: disable-next=unidiomatic-typecheck
  return isinstance(error, _DAMAGE) or type(error) is Exception


# Written into each saved checkpoint folder: the sha256 of every other file in it.
_SEAL = 'sha256sums.json'


def _one_line(error: BaseException, limit: int = 200) -> str:
  """`error` as a short line: tensorstore's messages run over a thousand characters."""
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _file_digests(directory: str) -> dict[str, str]:
  """The sha256 of every file under `directory` but the seal, by relative path."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), directory)
      if not rel.startswith(_SEAL):
        out[rel] = _file_sha256(os.path.join(root, name))
  return out


def _seal(directory: str) -> None:
  """Records the sha256 of each file of the checkpoint just saved in `directory`.

  `_check_seal` verifies them before orbax reads the checkpoint: given a
  damaged file, tensorstore fails with a line of a thousand characters and
  leaves reads in flight that print 'Event loop is closed' tracebacks later.
  """
  atomic_write(os.path.join(directory, _SEAL),
               json.dumps(_file_digests(directory), sort_keys=True, indent=0) + '\n')


def _check_seal(directory: str) -> None:
  """Raises DamagedCheckpoint if a file in `directory` differs from when it was sealed."""
  path = os.path.join(directory, _SEAL)
  if not os.path.exists(path):
    # Saved before seals existed, or killed between saving and sealing.
    logging.debug('%s has no %s: its files are not checked', directory, _SEAL)
    return
  with open(path) as f:
    saved = json.load(f)
  actual = _file_digests(directory)
  changed = sorted(k for k in saved.keys() | actual.keys() if saved.get(k) != actual.get(k))
  if changed:
    more = ' ...' if len(changed) > 2 else ''
    raise DamagedCheckpoint(f'files differ from their {_SEAL}: {", ".join(changed[:2])}{more}')


def _manager(directory: str, keep: int, items: tuple[str, ...]) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager of `directory` keeping its `keep` latest steps.

  `max_to_keep` and `item_names` are deprecated (orbax 0.12) in favour of a
  `LatestN` preservation policy and the default handler registry, which write
  the same layout; that API is newer than the orbax 0.6 pyproject allows.
  """
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=False, cleanup_tmp_directories=True),
      item_names=items)


def _move_aside(path: str) -> str:
  """Renames a damaged step folder to `<path>.damaged` (`.damaged-2`, ... if taken) and returns
  the new path. Orbax takes only folders named by a step number for steps, so it neither
  reads nor deletes it; it is kept for inspection."""
  aside, k = f'{path}.damaged', 1
  while os.path.exists(aside):
    k += 1
    aside = f'{path}.damaged-{k}'
  if jax.process_index() == 0:
    os.replace(path, aside)
  return aside


class FitCheckpoints:
  """Orbax checkpoints of one round's ensemble training in progress.

  A `train.FitCheckpointer`: at most every `every_seconds` (0: after every
  step) it saves the state of the group (member) in training and, once each,
  those of finished groups, so a run killed during a long fit (a ResNet-18
  round on a CPU takes hours) loses at most that much work and still ends
  bitwise equal to an uninterrupted run; the finished fit is saved too, so
  a kill during the round's evaluation or scoring does not train again.
  `tag` names the fit (round, labeled set, keys); progress saved under
  another tag is stale and dropped. `clear()` once the round's loop state is
  saved.

  Layout of `directory`: `progress/<n>/` (orbax: the current group's state
  and a JSON position), `group_<i>/` (finished group i's state); each
  holds a `sha256sums.json` of its files (`_seal`).

  Saved progress is only a cache: progress that fails to restore or to
  match its sha256 sums is reported in one warning and dropped, and the fit
  trains from scratch, to the same result.

  Each save also records the seconds the fit has trained so far, summed over
  the processes that worked on it; after `restore`, `resumed_seconds` holds
  that sum, so a resumed round's `train_seconds` counts every process's
  training (steps redone after a kill count again: they were run again).
  """

  def __init__(self, directory: str, tag: str, every_seconds: float, clock=time.monotonic):
    self.directory = os.path.abspath(directory)
    self.tag, self.every, self.clock = tag, float(every_seconds), clock
    self.started = self.last_save = clock()
    self.resumed = False
    self.resumed_seconds = 0.0
    self.saved_groups = 0
    self._manager = None

  @property
  def manager(self):
    if self._manager is None:
      self._manager = _manager(os.path.join(self.directory, 'progress'), 1, ('state', 'position'))
    return self._manager

  def _group_path(self, i: int) -> str:
    return os.path.join(self.directory, f'group_{i}')

  def restore(self, template):
    if not os.path.isdir(os.path.join(self.directory, 'progress')):
      return None
    try:
      return self._restore(template)
    except Exception as e:  # pylint: disable=broad-exception-caught
      if not _is_damage(e):
        raise
      logging.warning('dropped the damaged fit progress in %s (%s); training the fit (%s) from '
                      'scratch', self.directory, _one_line(e), self.tag)
      self.clear()
      return None

  def _restore(self, template):
    step = self.manager.latest_step()
    if step is None:
      return None
    _check_seal(os.path.join(self.directory, 'progress', str(step)))
    pos = self.manager.restore(step, args=ocp.args.Composite(
        position=ocp.args.JsonRestore())).position
    if pos['tag'] != self.tag:
      logging.debug('dropping the saved progress of another fit (%s)', pos['tag'])
      self.clear()
      return None
    for i in range(pos['group']):
      _check_seal(self._group_path(i))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
    with ocp.StandardCheckpointer() as ckptr:
      finished = [ckptr.restore(self._group_path(i), abstract) for i in range(pos['group'])]
    self.saved_groups = pos['group']
    self.resumed = True
    # Saves made before this field existed lack it: their time is not known.
    self.resumed_seconds = float(pos.get('elapsed_seconds', 0.0))
    logging.info('resuming the fit (%s) at group %d, step %d, after %.0f s of training',
                 self.tag, pos['group'], pos['step'], self.resumed_seconds)
    return pos['group'], pos['step'], finished, state

  def after_step(self, group: int, step: int, finished: list, state) -> None:
    if self.clock() - self.last_save < self.every:
      return
    self._save(group, step, finished, state,
               f'the fit in progress ({self.tag}): group {group}, {step} steps done')

  def fit_done(self, finished: list) -> None:
    """Saves every group's final state, whatever the interval: a run killed
    after the fit but before the round's loop state is saved (in evaluation
    or scoring, which take most of an hour for a CIFAR pool on a CPU) then
    resumes without training again."""
    self._save(len(finished), 0, finished, finished[-1],
               f'the finished fit ({self.tag}): {len(finished)} groups')

  def _save(self, group: int, step: int, finished: list, state, what: str) -> None:
    if jax.process_index() == 0:
      new = range(self.saved_groups, len(finished))
      with ocp.StandardCheckpointer() as ckptr:
        for i in new:
          ckptr.save(self._group_path(i), finished[i], force=True)
      for i in new:   # once the asynchronous saves are done, at the `with`'s end
        _seal(self._group_path(i))
      position = {'tag': self.tag, 'group': group, 'step': step,
                  'elapsed_seconds': self.resumed_seconds + self.clock() - self.started}
      n = group * 10**9 + step
      self.manager.save(n, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)))
      self.manager.wait_until_finished()
      _seal(os.path.join(self.directory, 'progress', str(n)))
      logging.debug('saved %s', what)
    self.saved_groups = len(finished)
    self.last_save = self.clock()

  def clear(self) -> None:
    """Deletes the saved progress. The folder is renamed aside first (one
    atomic step) and deleted there, so a kill during the delete never leaves
    a half-deleted checkpoint where `restore` would read it; what such a kill
    leaves aside is deleted by the next `clear`."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
    if jax.process_index() == 0:
      aside = self.directory + '.deleting'
      shutil.rmtree(aside, ignore_errors=True)
      if os.path.isdir(self.directory):
        os.replace(self.directory, aside)
      shutil.rmtree(aside, ignore_errors=True)


def fit_tag(round_: int, labeled_idx: np.ndarray, key) -> str:
  """Names one fit: its round and a digest of its labeled set and root key."""
  digest = hashlib.sha256(np.asarray(labeled_idx, np.int32).tobytes()
                          + np.asarray(key).tobytes()).hexdigest()[:16]
  return f'round {round_} {digest}'


def _loop_state_digest(history: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
  """sha256 of the canonical JSON of `history`, then of each array's name, dtype, shape and
  bytes: what a loop-state checkpoint holds, independent of how orbax lays it out."""
  h = hashlib.sha256(json.dumps(history, sort_keys=True, separators=(',', ':')).encode())
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f';{name} {a.dtype.str} {a.shape};'.encode() + a.tobytes())
  return h.hexdigest()


def _check_loop_state(state: dict[str, Any]) -> None:
  """Raises DamagedCheckpoint unless a restored loop state is one the loop saves: a row per
  round so far, and the labeled points exactly those its selections name."""
  label_round = state['label_round']
  if label_round.ndim != 1 or not np.issubdtype(label_round.dtype, np.integer):
    raise DamagedCheckpoint(f'label_round is {label_round.dtype}{list(label_round.shape)}')
  if [m['round'] for m in state['history']] != list(range(state['round'] + 1)):
    raise DamagedCheckpoint(f'its metrics are not one row per round 0..{state["round"]}')
  expected = np.full_like(label_round, -1)
  for s in state['selections']:
    expected[np.asarray(s['indices'], np.int64)] = s['round']
  if not np.array_equal(expected, label_round):
    raise DamagedCheckpoint('its label_round disagrees with its selections')


class RunCheckpoints:
  """Orbax checkpoints of one (strategy, seed) loop state, one per round.

  Each step holds `arrays` (label_round, key), `history` (metrics,
  selections, timings, and the sha256 of them all: `_loop_state_digest`)
  and a `sha256sums.json` of its files (`_seal`). `latest()` restores the
  newest intact step; a damaged one is moved aside with a warning, and the
  run resumes from the step before it. Steps saved before digests existed
  are accepted unchecked (a debug line), so older workdirs resume.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self.set_aside = 0   # damaged steps moved aside
    self._set_aside_unsealed()
    self.manager = _manager(self.directory, 2, ('arrays', 'history'))

  def _set_aside_unsealed(self) -> None:
    """Moves aside the steps whose files differ from their seal, before orbax opens the folder
    and reads (and logs errors about) their metadata."""
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      path = os.path.join(self.directory, name)
      if name.isdigit() and os.path.isdir(path):
        try:
          _check_seal(path)
        except (DamagedCheckpoint, OSError, ValueError) as e:
          self._set_aside(path, e)

  def _set_aside(self, path: str, error: Exception) -> None:
    aside = _move_aside(path)
    self.set_aside += 1
    logging.warning('checkpoint %s is damaged (%s); moved it to %s', path, _one_line(error),
                    os.path.basename(aside))

  @property
  def fit_directory(self) -> str:
    """Where this run's training in progress is saved (see FitCheckpoints)."""
    parent, name = os.path.split(self.directory)
    return os.path.join(parent, 'fit', name)

  def latest(self):
    """The newest intact loop state, or None if there is none.

    A step that fails to restore, to match its sha256s or to hold a loop
    state (`_check_loop_state`) is reported in one warning and renamed to
    `<step>.damaged` (`_move_aside`); the next older step is tried. If none
    is intact the run starts over from round 0.
    """
    state, damaged = None, False
    for step in sorted(self.manager.all_steps(), reverse=True):
      path = os.path.join(self.directory, str(step))
      try:
        state = self._restore(step)
        break
      except Exception as e:  # pylint: disable=broad-exception-caught
        if not _is_damage(e):
          raise
        self._set_aside(path, e)
        damaged = True
    if damaged:
      self.manager.reload()   # forgets the steps moved aside
    if state is None and self.set_aside:
      logging.warning('no intact checkpoint left in %s: starting the run over from round 0',
                      self.directory)
      self.set_aside = 0   # said once
    return state

  def _restore(self, step: int) -> dict[str, Any]:
    path = os.path.join(self.directory, str(step))
    _check_seal(path)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(), history=ocp.args.JsonRestore()))
    arrays = {k: np.asarray(restored.arrays[k]) for k in ('label_round', 'key')}
    hist = dict(restored.history)
    claimed = hist.pop('sha256', None)
    if claimed is None:
      logging.debug('%s has no sha256 (saved before digests were recorded): not verified', path)
    elif claimed != _loop_state_digest(hist, arrays):
      raise DamagedCheckpoint('its contents do not match the sha256 saved with them')
    state = {'label_round': arrays['label_round'], 'key': arrays['key'], 'round': step,
             'history': hist['metrics'], 'selections': hist['selections'],
             'timings': hist['timings']}
    _check_loop_state(state)
    return state

  def save(self, state, key) -> None:
    arrays = {'label_round': np.asarray(state['label_round']), 'key': np.asarray(key)}
    history = {'metrics': state['history'], 'selections': state['selections'],
               'timings': state['timings']}
    history['sha256'] = _loop_state_digest(history, arrays)
    self.manager.save(state['round'], args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), history=ocp.args.JsonSave(history)))
    self.manager.wait_until_finished()
    _seal(os.path.join(self.directory, str(state['round'])))


def run_one(exp: Experiment, strategy_name: str, seed: int, ckpt: RunCheckpoints,
            progress, on_round=None, stop_after_round=None) -> dict[str, Any]:
  """Runs (or resumes) one strategy at one seed to the last round.

  Args:
    exp: the shared Experiment.
    strategy_name: registry name.
    seed: the seed folded into the root key.
    ckpt: this run's checkpoints.
    progress: Progress, told about each finished round.
    on_round: optional callback `(state) -> None` after each saved round.
    stop_after_round: for tests, return after saving this round.

  Returns:
    The final loop state (history of metrics, selections, timings).
  """
  config = exp.config
  strategy = strategies_lib.get_strategy(strategy_name)
  key = seed_key(config.seed, seed)
  state = ckpt.latest()
  if state is None:
    state = _initial_state(exp, key)
  elif not np.array_equal(state['key'], np.asarray(key)):
    raise ValueError(f'checkpoint of {strategy_name} seed {seed} was made with another key')
  while state['round'] < config.num_rounds:
    r = state['round'] + 1
    labeled = state['label_round'] >= 0
    t0, c0 = time.perf_counter(), runtime.compile_seconds()
    labeled_idx = np.flatnonzero(labeled).astype(np.int32)
    fit_ckpt = FitCheckpoints(ckpt.fit_directory, fit_tag(r, labeled_idx, key),
                              config.fit_checkpoint_seconds)
    try:
      states = exp.fit(key, labeled_idx, r, fit_ckpt)
      jax.block_until_ready(states)
      t1, c1 = time.perf_counter(), runtime.compile_seconds()
      test_metrics = exp.evaluate(states)
    except Diverged as e:
      raise e.at(f'{strategy_name} seed {seed} round {r}') from None
    row = {'strategy': strategy_name, 'seed': seed, 'round': r,
           'n_labeled': int(labeled.sum()), **test_metrics}
    prev = [s for s in state['selections'] if s['round'] == r]
    if exp.dataset.positive_class is not None and r > 0:
      picked = np.asarray(prev[0]['indices'])
      row['minority_fraction_queried'] = float(
          np.mean(exp.dataset.y_train[picked] == exp.dataset.positive_class))
    t2 = t2s = time.perf_counter()
    c2 = c2s = runtime.compile_seconds()
    label_round = state['label_round'].copy()
    selections = list(state['selections'])
    if r == 0:
      selections.append({'strategy': strategy_name, 'seed': seed, 'round': 0,
                         'indices': np.flatnonzero(labeled).tolist()})
    if r < config.num_rounds:
      round_key = select_key(key, strategy_name, r)
      inputs = exp.score(strategy, states, labeled, round_key)
      t2s, c2s = time.perf_counter(), runtime.compile_seconds()
      picks = exp.select(strategy, inputs, round_key)
      label_round[picks] = r + 1
      selections.append({'strategy': strategy_name, 'seed': seed, 'round': r + 1,
                         'indices': picks.tolist()})
    t3, c3 = time.perf_counter(), runtime.compile_seconds()
    timing = {'strategy': strategy_name, 'seed': seed, 'round': r,
              'train_seconds': t1 - t0 + fit_ckpt.resumed_seconds, 'eval_seconds': t2 - t1,
              'score_seconds': t2s - t2, 'select_seconds': t3 - t2s,
              # Of those, the seconds spent compiling or loading compiled programs.
              'train_compile_seconds': c1 - c0, 'eval_compile_seconds': c2 - c1,
              'score_compile_seconds': c2s - c2, 'select_compile_seconds': c3 - c2s,
              'plan': exp.plan.as_dict()}
    if fit_ckpt.resumed:
      timing['train_resumed'] = True   # trained by several processes; seconds summed
    state = {'label_round': label_round, 'round': r, 'history': state['history'] + [row],
             'selections': selections, 'timings': state['timings'] + [timing]}
    if jax.process_index() == 0:
      ckpt.save(state, key)
    fit_ckpt.clear()
    progress.update(f'{strategy_name} seed {seed} round {r}: n_labeled={row["n_labeled"]} '
                    f'{report.headline_metric([row])}={row[report.headline_metric([row])]:.4f}')
    if on_round is not None:
      on_round(state)
    if stop_after_round is not None and r >= stop_after_round:
      break
  return state


class Progress:
  """Logs a progress line with an ETA after every finished round."""

  def __init__(self, total: int, done: int):
    self.total, self.done, self.start_done = total, done, done
    self.t0 = time.perf_counter()

  def update(self, message: str) -> None:
    self.done += 1
    elapsed = time.perf_counter() - self.t0
    rate = elapsed / max(self.done - self.start_done, 1)
    eta = rate * (self.total - self.done)
    logging.info('[%d/%d rounds | %s elapsed | ETA %s] %s', self.done, self.total,
                 _fmt_seconds(elapsed), _fmt_seconds(eta), message)


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates the workdir, or checks that it holds this same experiment.

  Raises:
    ValueError: the workdir's config.json differs in a field that changes
      results (everything but `data_dir`).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  current = config_lib.identity(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = config_lib.identity(ml_collections.ConfigDict(json.load(f)))
    if stored != current:
      diff = config_lib.diff(stored, current)
      raise ValueError(f'workdir {workdir} holds a different experiment ({diff}); '
                       'use another --workdir')
  elif jax.process_index() == 0:
    atomic_write(path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def write_outputs(workdir: str, config, settings: config_lib.Settings, states: dict) -> str:
  """Rewrites metrics/selections/timings/results.md from the run states."""
  done = [states[k] for k in settings.runs if k in states]
  rows = [r for st in done for r in st['history']]
  table = report.results_table(rows, config, settings.strategies)
  if jax.process_index() == 0:
    atomic_write(os.path.join(workdir, 'metrics.jsonl'), _jsonl(rows))
    atomic_write(os.path.join(workdir, 'selections.jsonl'),
                  _jsonl(s for st in done for s in st['selections']))
    atomic_write(os.path.join(workdir, 'timings.jsonl'),
                  _jsonl(t for st in done for t in st['timings']))
    atomic_write(os.path.join(workdir, 'results.md'), table)
  return table


def load_and_check(config):
  """Validates the config, loads the data, and validates sizes against it."""
  config_lib.validate(config)
  dataset = data_lib.load_dataset(config.data, data_dir=data_lib.resolve_data_dir(config.data_dir),
                                  seed=config.seed)
  config_lib.validate_against_data(config, dataset)
  return dataset


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_round=None) -> str:
  """Runs every (strategy, seed) of `config` in `workdir`, resuming if possible.

  Args:
    config: the experiment config (see configs/).
    workdir: output directory.
    stop_after_round: for tests: stop each run after this round (as a crash
      would), leaving a resumable workdir.

  Returns:
    The final results table as Markdown.

  Raises:
    jal.workdir.WorkdirBusy: another process holds the workdir (refused
      before its config.json is read or written).
  """
  settings = config_lib.validate(config)   # needs no workdir: a bad config leaves none behind
  # Process 0 writes the workdir (see jal.workdir): it alone holds the lock.
  with workdir_lib.claimed(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, settings, workdir, stop_after_round)


def _train_and_evaluate(config, settings: config_lib.Settings, workdir: str,
                        stop_after_round) -> str:
  """`train_and_evaluate` once the workdir is this process's."""
  dataset = load_and_check(config)
  prepare_workdir(workdir, config)
  exp = Experiment(config, dataset, settings)
  runs = settings.runs
  ckpts = {r: RunCheckpoints(os.path.join(workdir, 'checkpoints', f'{r[0]}_seed{r[1]}'))
           for r in runs}
  states = {r: st for r, st in ((r, c.latest()) for r, c in ckpts.items()) if st is not None}
  done = sum(st['round'] + 1 for st in states.values())
  progress = Progress(len(runs) * (config.num_rounds + 1), done)
  if done:
    logging.info('Resuming: %d of %d rounds already done in %s', done, progress.total, workdir)
  for run in runs:
    def on_round(state, run=run):
      states[run] = state
      write_outputs(workdir, config, settings, states)
    states[run] = run_one(exp, run[0], run[1], ckpts[run], progress, on_round, stop_after_round)
  return write_outputs(workdir, config, settings, states)
