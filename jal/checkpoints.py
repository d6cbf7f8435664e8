"""The loop's state and its checkpoints: one per round, and each fit in progress.

`LoopState` is what one (strategy, seed) run carries from round to round.
`RoundCheckpoints` keeps it with orbax after every round; `FitProgress` (a
`train.FitCheckpointer`) keeps a long round's training in progress, so a
run killed mid-fit loses at most `fit_checkpoint_seconds` of work. Each
saved folder is sealed with the sha256 of its files, so a damaged one is
found before orbax reads it and is moved aside or dropped with one warning.
`atomic_write` replaces a workdir file in one step.

Layout in the workdir:

    checkpoints/<strategy>_seed<seed>/<round>/   RoundCheckpoints: `arrays`
        (label_round, key), `history` (JSON: metrics, selections, timings,
        sha256), sha256sums.json
    checkpoints/fit/<strategy>_seed<seed>/       FitProgress: progress/<n>/,
        group_<i>/
"""

import hashlib
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp


@flax.struct.dataclass
class LoopState:
  """The state of one (strategy, seed) run after its round `round`.

  Attributes:
    label_round: i32[n], the round at which each pool point was labeled
      (0: the warmup set; -1: unlabeled).
    key: u32[2], the run's key (`experiment.seed_key`); every draw of the
      run is a `fold_in` of it.
    round: the last round done; -1 before round 0.
    metrics: one row per round done (metrics.jsonl).
    selections: the indices labeled at each round, the warmup set first,
      then the picks of each round done (selections.jsonl).
    timings: one row per round done (timings.jsonl).

  The arrays are the pytree's leaves; the round and the JSON rows are static
  fields. A checkpoint holds the fields under these names (`_ARRAYS` as
  orbax arrays, `_RECORDS` as JSON, `round` as the step number).
  """

  label_round: np.ndarray
  key: np.ndarray
  round: int = flax.struct.field(pytree_node=False)
  metrics: list = flax.struct.field(pytree_node=False)
  selections: list = flax.struct.field(pytree_node=False)
  timings: list = flax.struct.field(pytree_node=False)

  @property
  def labeled(self) -> np.ndarray:
    """bool[n]: the points labeled so far."""
    return self.label_round >= 0


# How a LoopState is saved: its arrays as the orbax item 'arrays', its rows as the JSON item
# 'history' (the name checkpoints have had since before LoopState).
_ARRAYS = ('label_round', 'key')
_RECORDS = ('metrics', 'selections', 'timings')


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
  atomic_write(
      os.path.join(directory, _SEAL),
      json.dumps(_file_digests(directory), sort_keys=True, indent=0) + '\n',
  )


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


def _manager(
    directory: str, keep: int, items: dict[str, tuple[type, type]]
) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager of `directory` keeping its `keep` latest steps.

  `items` maps each item's name to its (save, restore) `ocp.args` types, e.g.
  `{'history': (ocp.args.JsonSave, ocp.args.JsonRestore)}`. A `LatestN`
  preservation policy and a handler registry replace the `max_to_keep` and
  `item_names` arguments orbax 0.11.14 deprecated; they write the same layout,
  so checkpoints saved either way restore either way.
  """
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for name, arg_types in items.items():
    for args in arg_types:
      registry.add(name, args)
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          preservation_policy=ocp.checkpoint_managers.LatestN(keep),
          enable_async_checkpointing=False,
          # Orbax would delete unfinished saves on a background thread that `close()` does not
          # wait for: it listed a folder `FitProgress.clear` had just moved aside (an ERROR in
          # the log). `jal.workdir.remove_leftovers` deletes them under the workdir's lock.
          cleanup_tmp_directories=False,
      ),
      handler_registry=registry,
  )


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


def _loop_state_digest(records: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
  """sha256 of the canonical JSON of `records`, then of each array's name, dtype, shape and
  bytes: what a loop-state checkpoint holds, independent of how orbax lays it out."""
  h = hashlib.sha256(json.dumps(records, sort_keys=True, separators=(',', ':')).encode())
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f';{name} {a.dtype.str} {a.shape};'.encode() + a.tobytes())
  return h.hexdigest()


def _check_loop_state(state: LoopState) -> None:
  """Raises DamagedCheckpoint unless a restored loop state is one the loop saves: a row per
  round so far, and the labeled points exactly those its selections name."""
  label_round = state.label_round
  if label_round.ndim != 1 or not np.issubdtype(label_round.dtype, np.integer):
    raise DamagedCheckpoint(f'label_round is {label_round.dtype}{list(label_round.shape)}')
  if [m['round'] for m in state.metrics] != list(range(state.round + 1)):
    raise DamagedCheckpoint(f'its metrics are not one row per round 0..{state.round}')
  expected = np.full_like(label_round, -1)
  for s in state.selections:
    expected[np.asarray(s['indices'], np.int64)] = s['round']
  if not np.array_equal(expected, label_round):
    raise DamagedCheckpoint('its label_round disagrees with its selections')


class RoundCheckpoints:
  """Orbax checkpoints of one (strategy, seed) run's LoopState, one per round.

  Step r holds the state after round r: `arrays` (`_ARRAYS`), `history`
  (`_RECORDS` and the sha256 of them all: `_loop_state_digest`) and a
  `sha256sums.json` of its files (`_seal`); the two latest are kept.
  `latest()` restores the newest intact step; a damaged one is moved aside
  with a warning, and the run resumes from the step before it. Steps saved
  before digests existed are accepted unchecked (a debug line), so older
  workdirs resume.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self.set_aside = 0  # damaged steps moved aside
    self._set_aside_unsealed()
    self.manager = _manager(
        self.directory,
        2,
        {
            'arrays': (ocp.args.StandardSave, ocp.args.StandardRestore),
            'history': (ocp.args.JsonSave, ocp.args.JsonRestore),
        },
    )

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
    logging.warning(
        'checkpoint %s is damaged (%s); moved it to %s',
        path,
        _one_line(error),
        os.path.basename(aside),
    )

  @property
  def fit_directory(self) -> str:
    """Where this run's training in progress is saved (see FitProgress)."""
    parent, name = os.path.split(self.directory)
    return os.path.join(parent, 'fit', name)

  def latest(self) -> LoopState | None:
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
      self.manager.reload()  # forgets the steps moved aside
    if state is None and self.set_aside:
      logging.warning(
          'no intact checkpoint left in %s: starting the run over from round 0', self.directory
      )
      self.set_aside = 0  # said once
    return state

  def _restore(self, step: int) -> LoopState:
    path = os.path.join(self.directory, str(step))
    _check_seal(path)
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(arrays=ocp.args.StandardRestore(), history=ocp.args.JsonRestore()),
    )
    arrays = {k: np.asarray(restored.arrays[k]) for k in _ARRAYS}
    records = dict(restored.history)
    claimed = records.pop('sha256', None)
    if claimed is None:
      logging.debug('%s has no sha256 (saved before digests were recorded): not verified', path)
    elif claimed != _loop_state_digest(records, arrays):
      raise DamagedCheckpoint('its contents do not match the sha256 saved with them')
    state = LoopState(round=step, **arrays, **{k: records[k] for k in _RECORDS})
    _check_loop_state(state)
    return state

  def save(self, state: LoopState) -> None:
    arrays = {k: np.asarray(getattr(state, k)) for k in _ARRAYS}
    records = {k: getattr(state, k) for k in _RECORDS}
    history = {**records, 'sha256': _loop_state_digest(records, arrays)}
    self.manager.save(
        state.round,
        args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), history=ocp.args.JsonSave(history)
        ),
    )
    self.manager.wait_until_finished()
    _seal(os.path.join(self.directory, str(state.round)))


def fit_tag(round_: int, labeled_idx: np.ndarray, key) -> str:
  """Names one fit: its round and a digest of its labeled set and root key."""
  digest = hashlib.sha256(
      np.asarray(labeled_idx, np.int32).tobytes() + np.asarray(key).tobytes()
  ).hexdigest()[:16]
  return f'round {round_} {digest}'


class FitProgress:
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
      self._manager = _manager(
          os.path.join(self.directory, 'progress'),
          1,
          {
              'state': (ocp.args.StandardSave, ocp.args.StandardRestore),
              'position': (ocp.args.JsonSave, ocp.args.JsonRestore),
          },
      )
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
      logging.warning(
          'dropped the damaged fit progress in %s (%s); training the fit (%s) from scratch',
          self.directory,
          _one_line(e),
          self.tag,
      )
      self.clear()
      return None

  def _restore(self, template):
    step = self.manager.latest_step()
    if step is None:
      return None
    _check_seal(os.path.join(self.directory, 'progress', str(step)))
    pos = self.manager.restore(
        step, args=ocp.args.Composite(position=ocp.args.JsonRestore())
    ).position
    if pos['tag'] != self.tag:
      logging.debug('dropping the saved progress of another fit (%s)', pos['tag'])
      self.clear()
      return None
    for i in range(pos['group']):
      _check_seal(self._group_path(i))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    ).state
    with ocp.StandardCheckpointer() as ckptr:
      finished = [ckptr.restore(self._group_path(i), abstract) for i in range(pos['group'])]
    self.saved_groups = pos['group']
    self.resumed = True
    # Saves made before this field existed lack it: their time is not known.
    self.resumed_seconds = float(pos.get('elapsed_seconds', 0.0))
    logging.info(
        'resuming the fit (%s) at group %d, step %d, after %.0f s of training',
        self.tag,
        pos['group'],
        pos['step'],
        self.resumed_seconds,
    )
    return pos['group'], pos['step'], finished, state

  def after_step(self, group: int, step: int, finished: list, state) -> None:
    if self.clock() - self.last_save < self.every:
      return
    self._save(
        group,
        step,
        finished,
        state,
        f'the fit in progress ({self.tag}): group {group}, {step} steps done',
    )

  def fit_done(self, finished: list) -> None:
    """Saves every group's final state, whatever the interval: a run killed
    after the fit but before the round's loop state is saved (in evaluation
    or scoring, which take most of an hour for a CIFAR pool on a CPU) then
    resumes without training again."""
    self._save(
        len(finished),
        0,
        finished,
        finished[-1],
        f'the finished fit ({self.tag}): {len(finished)} groups',
    )

  def _save(self, group: int, step: int, finished: list, state, what: str) -> None:
    if jax.process_index() == 0:
      new = range(self.saved_groups, len(finished))
      with ocp.StandardCheckpointer() as ckptr:
        for i in new:
          ckptr.save(self._group_path(i), finished[i], force=True)
      for i in new:  # once the asynchronous saves are done, at the `with`'s end
        _seal(self._group_path(i))
      position = {
          'tag': self.tag,
          'group': group,
          'step': step,
          'elapsed_seconds': self.resumed_seconds + self.clock() - self.started,
      }
      n = group * 10**9 + step
      self.manager.save(
          n,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
          ),
      )
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
