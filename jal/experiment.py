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
    checkpoints/<strategy>_seed<seed>/<round>   the loop state after the round
    checkpoints/fit/<strategy>_seed<seed>/      the round's training in progress
                                                (layouts: jal.checkpoints)

The state of each (strategy, seed) run is a `checkpoints.LoopState`: the
label round of every pool point (-1: unlabeled), the run's RNG key and its
rows of metrics, selections and timings. One round is `run_round`, a function
state -> state (fit, evaluate, score, select); `run_one` saves the state
after each (`checkpoints.RoundCheckpoints`). All randomness is `fold_in` of
one root key, so a run resumed after a crash draws exactly what an
uninterrupted run draws, and the JSON files are rewritten atomically from the
states. A long round's training (dispatch 'step', the CPU default) also saves
its progress every `fit_checkpoint_seconds` (`checkpoints.FitProgress`), so a
run killed mid-fit loses at most that much work.
"""

import functools
import json
import os
import zlib

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jal import checkpoints
from jal import config_lib
from jal import data as data_lib
from jal import infer
from jal import logs
from jal import metrics as metrics_lib
from jal import models
from jal import pretrained
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
  return np.sort(
      np.asarray(jax.random.choice(jax.random.fold_in(key, _WARMUP), n, (size,), replace=False))
  )


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


def _jsonl(rows) -> str:
  return ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows)


class Experiment:
  """Holds what all (strategy, seed) runs of one config share.

  The data are uploaded to the device once; the model, the Trainer and the
  training Plan are built once, so every round reuses their compilations.
  `settings` is the config's `config_lib.Settings` (what `validate`
  returned; None parses `config`).
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      dataset: data_lib.Dataset,
      settings: config_lib.Settings | None = None,
  ):
    runtime.count_compile_time()  # timings' *_compile_seconds (commands start it earlier)
    self.config = config
    self.settings = config_lib.parse(config) if settings is None else settings
    self.dataset = dataset
    # Several devices: members and pools are split over a mesh (jal.sharding),
    # and the data sit whole on every device.
    self.mesh = sharding.mesh_for(config.get('sharding', 'auto'))
    place = (
        jax.device_put
        if self.mesh is None
        else functools.partial(jax.device_put, device=sharding.replicated(self.mesh))
    )
    self.x_train = place(dataset.x_train)
    self.y_train = place(dataset.y_train.astype(np.int32))
    self.x_test = place(dataset.x_test)
    self.y_test = np.asarray(dataset.y_test)
    self.n = int(dataset.x_train.shape[0])
    self.model = models.get_model(config.model, dataset.num_classes)
    self.trainer = train.Trainer.from_config(
        config.train, self.model, train.InputSpec(dataset.mean, dataset.std, config.train.augment)
    )
    self.eval_spec = train.InputSpec(dataset.mean, dataset.std, 'none')
    self.init_overrides = jax.device_put(
        pretrained.overrides(self.model, config.model, self.x_train[:1], self.eval_spec)
    )
    # Resolved once: fits and predictions run the members as it says.
    self.plan = train.resolve_plan(
        config.train.members_plan, config.train.dispatch, self.trainer, self.x_train[:1], self.mesh
    )
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
      shapes = pretrained.variable_shapes(self.model, self.x_train[:1], self.eval_spec)
      flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
      unloaded = [p for p in flat if p not in self.init_overrides and p[:2] != ('params', 'fc')]
      if unloaded:
        raise ValueError(
            f'strategy_options.embeddings=pretrained: {unloaded[0]} is not in '
            f'{self.config.model.pretrained_path}'
        )
      # The head (fc) is not loaded when the class count differs: zeros, unused here.
      variables = flax.traverse_util.unflatten_dict(
          {p: self.init_overrides.get(p, np.zeros(s.shape, s.dtype)) for p, s in flat.items()}
      )
      states = train.TrainState(
          params=jax.tree.map(lambda a: a[None], variables['params']),
          model_state={
              k: jax.tree.map(lambda a: a[None], v) for k, v in variables.items() if k != 'params'
          },
          opt_state=None,
      )
      emb = self.predict(states, self.x_train, True).embeddings
    else:
      emb = np.load(source)
      if emb.ndim != 2 or emb.shape[0] != self.n:
        raise ValueError(
            f'strategy_options.embeddings {source} has shape {emb.shape}; '
            f'needs [{self.n}, d], one row per pool point'
        )
    logging.info('fixed embeddings (%s): %s', source, tuple(emb.shape))
    return jax.device_put(jnp.asarray(emb, jnp.float32))

  def fit(self, key, labeled_idx: np.ndarray, round_: int, checkpoint=None):
    """Trains the round's ensemble on `labeled_idx`; returns stacked states.

    `checkpoint` (a train.FitCheckpointer, e.g. checkpoints.FitProgress) saves and
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
        self.trainer,
        member_keys(key, round_, tc.members),
        self.x_train,
        self.y_train,
        jnp.asarray(idx),
        jnp.int32(num),
        jnp.int32(epochs),
        plan=self.plan,
        init_overrides=self.init_overrides,
        checkpoint=checkpoint if self.plan.dispatch == 'step' else None,
        mesh=self.mesh,
    )
    self.check_trained(states, labeled_idx, f'round {round_}')
    return states

  def _diverged(self, detail: str, where: str | None = None) -> Diverged:
    return Diverged(
        f'{detail}; lower config.train.learning_rate ({self.config.train.learning_rate})', where
    )

  def check_trained(self, states, labeled_idx: np.ndarray, where: str) -> None:
    """Raises Diverged if the fit left non-finite parameters, or logits or a
    loss on its own labeled set beyond metrics_lib's limits. One forward pass
    over the labeled set, no randomness: results are unchanged."""
    if not bool(_all_finite(states.params)):
      raise self._diverged('the parameters are not finite', where)
    logits = self.predict(states, self.x_train, False, indices=labeled_idx).logits
    detail = metrics_lib.divergence(
        np.asarray(logits), np.asarray(self.dataset.y_train)[labeled_idx], 'labeled'
    )
    if detail:
      raise self._diverged(detail, where)

  def predict(self, states, x, with_embeddings: bool, indices=None):
    return infer.predict(
        self.model,
        self.eval_spec,
        self.config.eval_batch_size,
        with_embeddings,
        states,
        x,
        in_turn=infer.members_in_turn(self.plan),
        mesh=self.mesh,
        indices=indices,
    )

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
          logits=preds.logits if base.LOGITS in needs else None, embeddings=preds.embeddings
      )
    if fixed:
      inputs = inputs._replace(embeddings=self.fixed_embeddings)
    if needs & {base.CLASSIFIER, base.MC_LOGITS}:
      member0 = jax.tree.map(lambda a: a[0], states)
    if base.CLASSIFIER in needs:
      inputs = inputs._replace(
          classifier=base.Classifier(
              model=self.model,
              spec=self.eval_spec,
              variables={'params': member0.params, **member0.model_state},
              x=self.x_train,
              chunk_size=self.config.eval_batch_size,
          )
      )
    if base.MC_LOGITS in needs:
      inputs = inputs._replace(
          mc_logits=infer.mc_predict(
              self.model,
              self.eval_spec,
              self.config.eval_batch_size,
              mc_dropout.mc_samples_of(self.config.strategy_options, strategy.name),
              member0,
              self.x_train,
              jax.random.fold_in(key, _MC_PASSES),
          )
      )
    return jax.block_until_ready(inputs)

  def select(self, strategy, inputs: strategies_lib.Inputs, key) -> np.ndarray:
    """Runs `strategy` on scored inputs; returns the picked indices, validated."""
    picks = np.asarray(
        strategy.select(inputs, self.config.query_size, key, self.config.strategy_options)
    )
    labeled = np.asarray(inputs.labeled)
    if len(np.unique(picks)) != len(picks) or labeled[picks].any():
      raise RuntimeError(f'strategy {strategy.name} picked labeled or repeated points: {picks}')
    return picks


def initial_state(exp: Experiment, strategy_name: str, seed: int) -> checkpoints.LoopState:
  """The state of a run before its round 0: the warmup set labeled (`warmup_indices`,
  the same for every strategy at a seed) and recorded as the selection of round 0."""
  key = np.asarray(seed_key(exp.config.seed, seed))
  warmup = warmup_indices(key, exp.n, exp.config.warmup_size)
  label_round = np.full((exp.n,), -1, np.int32)
  label_round[warmup] = 0
  return checkpoints.LoopState(
      label_round=label_round,
      key=key,
      round=-1,
      metrics=[],
      timings=[],
      selections=[
          {'strategy': strategy_name, 'seed': seed, 'round': 0, 'indices': warmup.tolist()}
      ],
  )


# The parts of a round, timed in timings.jsonl as `<part>_seconds` and `<part>_compile_seconds`.
ROUND_PARTS = ('train', 'eval', 'score', 'select')


def run_round(
    exp: Experiment,
    strategy,
    seed: int,
    state: checkpoints.LoopState,
    fit_progress: checkpoints.FitProgress | None = None,
) -> checkpoints.LoopState:
  """Runs round `state.round + 1` of one (strategy, seed) run; returns the state after it.

  A round trains a fresh ensemble on the labeled points, evaluates it on the
  test set and, unless it is the last round, scores the pool and labels the
  strategy's `query_size` picks. It appends one row each to the state's
  metrics and timings and, but in the last round, one to its selections.

  Args:
    exp: the shared Experiment.
    strategy: the registered Strategy.
    seed: the seed the rows name.
    state: the state after the previous round (`initial_state` before round 0).
    fit_progress: where the fit saves and resumes its progress, or None.

  Raises:
    Diverged: the fit diverged; the message names the strategy, seed and round.
  """
  r = state.round + 1
  ids = {'strategy': strategy.name, 'seed': seed, 'round': r}
  labeled_idx = np.flatnonzero(state.labeled).astype(np.int32)
  watch = runtime.Stopwatch()
  try:
    states = jax.block_until_ready(exp.fit(state.key, labeled_idx, r, fit_progress))
    watch.lap('train')
    test_metrics = exp.evaluate(states)
  except Diverged as e:
    raise e.at(f'{strategy.name} seed {seed} round {r}') from None
  row = {**ids, 'n_labeled': len(labeled_idx), **test_metrics}
  if exp.dataset.positive_class is not None and r > 0:
    queried = next(s['indices'] for s in state.selections if s['round'] == r)
    row['minority_fraction_queried'] = metrics_lib.minority_fraction_queried(
        exp.dataset.y_train, queried, exp.dataset.positive_class
    )
  watch.lap('eval')
  label_round, selections = state.label_round, state.selections
  if r < exp.config.num_rounds:
    round_key = select_key(state.key, strategy.name, r)
    inputs = exp.score(strategy, states, state.labeled, round_key)
    watch.lap('score')
    picks = exp.select(strategy, inputs, round_key)
    label_round = label_round.copy()
    label_round[picks] = r + 1
    selections = selections + [{**ids, 'round': r + 1, 'indices': picks.tolist()}]
  watch.lap('select')
  timing = {**ids, **watch.seconds(ROUND_PARTS), 'plan': exp.plan.as_dict()}
  if fit_progress is not None and fit_progress.resumed:
    # Trained by several processes: the seconds of each are summed.
    timing['train_seconds'] += fit_progress.resumed_seconds
    timing['train_resumed'] = True
  return state.replace(
      label_round=label_round,
      round=r,
      metrics=state.metrics + [row],
      selections=selections,
      timings=state.timings + [timing],
  )


def run_one(
    exp: Experiment,
    strategy_name: str,
    seed: int,
    ckpt: checkpoints.RoundCheckpoints,
    progress,
    on_round=None,
    stop_after_round=None,
) -> checkpoints.LoopState:
  """Runs (or resumes) one strategy at one seed to the last round.

  After each round (`run_round`) the state is saved, and then the round's
  fit progress dropped.

  Args:
    exp: the shared Experiment.
    strategy_name: registry name.
    seed: the seed folded into the root key.
    ckpt: this run's checkpoints.
    progress: Progress, told about each finished round.
    on_round: optional callback `(state) -> None` after each saved round.
    stop_after_round: for tests, return after saving this round.

  Returns:
    The final LoopState.
  """
  config = exp.config
  strategy = strategies_lib.get_strategy(strategy_name)
  state = ckpt.latest()
  if state is None:
    state = initial_state(exp, strategy_name, seed)
  elif not np.array_equal(state.key, np.asarray(seed_key(config.seed, seed))):
    raise ValueError(f'checkpoint of {strategy_name} seed {seed} was made with another key')
  while state.round < config.num_rounds:
    r = state.round + 1
    fit_progress = checkpoints.FitProgress(
        ckpt.fit_directory,
        checkpoints.fit_tag(r, np.flatnonzero(state.labeled), state.key),
        config.fit_checkpoint_seconds,
    )
    state = run_round(exp, strategy, seed, state, fit_progress)
    if jax.process_index() == 0:
      ckpt.save(state)
    fit_progress.clear()
    row = state.metrics[-1]
    headline = report.headline_metric([row])
    progress.update(
        f'{strategy_name} seed {seed} round {r}: n_labeled={row["n_labeled"]} '
        f'{headline}={row[headline]:.4f}'
    )
    if on_round is not None:
      on_round(state)
    if stop_after_round is not None and r >= stop_after_round:
      break
  return state


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
      raise ValueError(
          f'workdir {workdir} holds a different experiment ({diff}); use another --workdir'
      )
  elif jax.process_index() == 0:
    checkpoints.atomic_write(path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def write_outputs(workdir: str, config, settings: config_lib.Settings, states: dict) -> str:
  """Rewrites metrics/selections/timings/results.md from the runs' LoopStates, keyed by
  (strategy, seed)."""
  done = [states[k] for k in settings.runs if k in states]
  rows = [r for st in done for r in st.metrics]
  table = report.results_table(rows, config, settings.strategies)
  if jax.process_index() == 0:
    write = checkpoints.atomic_write
    write(os.path.join(workdir, 'metrics.jsonl'), _jsonl(rows))
    write(
        os.path.join(workdir, 'selections.jsonl'), _jsonl(s for st in done for s in st.selections)
    )
    write(os.path.join(workdir, 'timings.jsonl'), _jsonl(t for st in done for t in st.timings))
    write(os.path.join(workdir, 'results.md'), table)
  return table


def load_and_check(config):
  """Validates the config, loads the data, and validates sizes against it."""
  config_lib.validate(config)
  dataset = data_lib.load_dataset(
      config.data, data_dir=data_lib.resolve_data_dir(config.data_dir), seed=config.seed
  )
  config_lib.validate_against_data(config, dataset)
  return dataset


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after_round=None
) -> str:
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
  settings = config_lib.validate(config)  # needs no workdir: a bad config leaves none behind
  # Process 0 writes the workdir (see jal.workdir): it alone holds the lock.
  with workdir_lib.claimed(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, settings, workdir, stop_after_round)


def _train_and_evaluate(
    config, settings: config_lib.Settings, workdir: str, stop_after_round
) -> str:
  """`train_and_evaluate` once the workdir is this process's."""
  dataset = load_and_check(config)
  prepare_workdir(workdir, config)
  exp = Experiment(config, dataset, settings)
  runs = settings.runs
  ckpts = {
      r: checkpoints.RoundCheckpoints(os.path.join(workdir, 'checkpoints', f'{r[0]}_seed{r[1]}'))
      for r in runs
  }
  states = {r: st for r, st in ((r, c.latest()) for r, c in ckpts.items()) if st is not None}
  done = sum(st.round + 1 for st in states.values())
  progress = logs.Progress(len(runs) * (config.num_rounds + 1), done)
  if done:
    logging.info('Resuming: %d of %d rounds already done in %s', done, progress.total, workdir)
  for run in runs:

    def on_round(state, run=run):
      states[run] = state
      write_outputs(workdir, config, settings, states)

    states[run] = run_one(exp, run[0], run[1], ckpts[run], progress, on_round, stop_after_round)
  return write_outputs(workdir, config, settings, states)
