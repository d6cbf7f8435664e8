"""A fit killed mid-way resumes from its FitProgress and ends bitwise equal."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import checkpoints, data, experiment, models, train
from tests.test_experiment import read, smoke

TRAIN = ml_collections.ConfigDict(dict(optimizer='adam', learning_rate=1e-2, weight_decay=0.0))


class Killed(Exception):
  pass


class KillAfter(checkpoints.FitProgress):
  """Saves after every step, then dies (as a SIGKILL would) after `steps`."""

  def __init__(self, directory, tag, steps):
    super().__init__(directory, tag, every_seconds=0)
    self.left = steps

  def after_step(self, group, step, finished, state):
    super().after_step(group, step, finished, state)
    self.left -= 1
    if self.left == 0:
      raise Killed


IN_TURN, VMAP = train.Plan('in_turn', 'step'), train.Plan('vmap', 'step')


@pytest.fixture(scope='module')
def problem():
  ds = data.gaussian_blobs(num_train=200, num_test=10, seed=0)
  x = jnp.tile(jnp.asarray(ds.x_train)[:, None, None, :1], (1, 12, 12, 1))
  idx = np.zeros(32, np.int32)
  idx[:20] = np.arange(20)
  keys = jax.random.split(jax.random.PRNGKey(5), 3)
  # 3 members x (3 steps x 2 epochs) = 18 steps when members run in turn.
  return (
      train.Trainer(
          models.LeNet(2), train.make_optimizer(TRAIN), train.InputSpec(), 8, 'cosine', 1e-2
      ),
      keys,
      x,
      jnp.asarray(ds.y_train),
      jnp.asarray(idx),
      jnp.int32(20),
      jnp.int32(2),
  )


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


@pytest.mark.parametrize(
    'plan,kills',
    [
        (IN_TURN, (2,)),  # inside member 0
        (IN_TURN, (6,)),  # at the end of member 0
        (IN_TURN, (7, 5, 4)),  # killed three times, across members
        (VMAP, (4,)),  # one vmapped group, mid-fit
    ],
)
def test_killed_fit_resumes_bitwise_equal(problem, tmp_path, plan, kills):
  uninterrupted = train.fit(*problem, plan=plan)
  directory = str(tmp_path / 'fit')
  done = 0
  for steps in kills:
    with pytest.raises(Killed):
      train.fit(*problem, plan=plan, checkpoint=KillAfter(directory, 'tag', steps))
    done += steps
    # Finished members are on disk once a later save happened.
    groups = sorted(p.name for p in pathlib.Path(directory).glob('group_*'))
    if plan == IN_TURN:
      assert groups == [f'group_{i}' for i in range((done - 1) // 6)]
  ckpt = checkpoints.FitProgress(directory, 'tag', every_seconds=3600)
  resumed = train.fit(*problem, plan=plan, checkpoint=ckpt)
  _assert_bitwise_equal(uninterrupted, resumed)
  assert resumed.opt_state.inner_state[0].count.tolist() == [6, 6, 6]


def test_progress_of_another_fit_is_dropped(problem, tmp_path):
  directory = str(tmp_path / 'fit')
  with pytest.raises(Killed):
    train.fit(*problem, plan=IN_TURN, checkpoint=KillAfter(directory, 'round 1 aaa', 8))
  assert os.path.isdir(os.path.join(directory, 'group_0'))
  other = checkpoints.FitProgress(directory, 'round 2 bbb', every_seconds=3600)
  fresh = train.fit(*problem, plan=IN_TURN, checkpoint=other)
  _assert_bitwise_equal(train.fit(*problem, plan=IN_TURN), fresh)
  # The stale progress was removed; what is there now is this fit, finished.
  again = checkpoints.FitProgress(directory, 'round 2 bbb', every_seconds=3600)
  assert again.restore(jax.tree.map(lambda a: a[0], fresh))[:2] == (3, 0)


class CountSteps(checkpoints.FitProgress):
  steps = 0

  def after_step(self, group, step, finished, state):
    CountSteps.steps += 1
    super().after_step(group, step, finished, state)


@pytest.mark.parametrize('plan', [IN_TURN, VMAP])
def test_finished_fit_is_restored_without_training(problem, tmp_path, plan):
  directory = str(tmp_path / 'fit')
  first = train.fit(*problem, plan=plan, checkpoint=checkpoints.FitProgress(directory, 'tag', 3600))
  groups = 3 if plan == IN_TURN else 1
  assert sorted(p.name for p in pathlib.Path(directory).glob('group_*')) == [
      f'group_{i}' for i in range(groups)
  ]
  CountSteps.steps = 0
  again = train.fit(*problem, plan=plan, checkpoint=CountSteps(directory, 'tag', 3600))
  assert CountSteps.steps == 0
  _assert_bitwise_equal(first, again)


def test_kill_while_clearing_leaves_no_half_deleted_progress(problem, tmp_path, monkeypatch):
  # Seen in a CI run: a kill -9 inside clear()'s delete left progress/<n>/
  # with its 'state' but not its 'position', and the resumed run died in
  # restore (KeyError). The delete now happens aside, after an atomic rename.
  directory = str(tmp_path / 'fit')
  first = train.fit(
      *problem,
      plan=IN_TURN,
      checkpoint=checkpoints.FitProgress(directory, 'round 1 aaa', every_seconds=3600),
  )
  rmtree = checkpoints.shutil.rmtree

  def dies_mid_delete(path, ignore_errors=False):
    positions = sorted(pathlib.Path(path).glob('progress/*/position'))
    if not positions:
      return rmtree(path, ignore_errors=ignore_errors)
    rmtree(positions[0])  # the first item deleted, the rest not yet
    raise Killed

  monkeypatch.setattr(checkpoints.shutil, 'rmtree', dies_mid_delete)
  with pytest.raises(Killed):
    checkpoints.FitProgress(directory, 'round 1 aaa', every_seconds=3600).clear()
  monkeypatch.setattr(checkpoints.shutil, 'rmtree', rmtree)
  assert not os.path.exists(directory)
  # The next round's fit finds nothing saved, trains, and its clear() also
  # removes what the kill left aside.
  after = checkpoints.FitProgress(directory, 'round 2 bbb', every_seconds=3600)
  assert after.restore(jax.tree.map(lambda a: a[0], first)) is None
  after.clear()
  assert not os.path.exists(directory + '.deleting')


def test_saves_wait_for_the_interval(problem, tmp_path):
  now = [0.0]
  ckpt = checkpoints.FitProgress(
      str(tmp_path / 'fit'), 'tag', every_seconds=10, clock=lambda: now[0]
  )
  saved = []
  original = ckpt.manager.save

  def record(step, args):
    saved.append(step)
    return original(step, args=args)

  ckpt.manager.save = record
  state = train.fit(*problem, plan=IN_TURN)
  member = jax.tree.map(lambda a: a[0], state)
  for t in (5.0, 9.9, 10.0, 15.0, 20.5):
    now[0] = t
    ckpt.after_step(1, 3, [member], member)
  assert saved == [10**9 + 3, 10**9 + 3]  # at t=10 and t=20.5 only
  assert os.path.isdir(tmp_path / 'fit' / 'group_0')


def test_training_seconds_add_up_across_processes(problem, tmp_path):
  now = [100.0]
  clock = lambda: now[0]
  member = jax.tree.map(lambda a: a[0], train.fit(*problem, plan=IN_TURN))
  first = checkpoints.FitProgress(str(tmp_path / 'fit'), 'tag', every_seconds=10, clock=clock)
  now[0] = 112.5
  first.after_step(0, 4, [], member)  # saved after 12.5 s of training
  assert (first.resumed, first.resumed_seconds) == (False, 0.0)
  now[0] = 500.0  # killed; a new process starts later
  second = checkpoints.FitProgress(str(tmp_path / 'fit'), 'tag', every_seconds=10, clock=clock)
  assert second.restore(member)[:2] == (0, 4)
  assert (second.resumed, second.resumed_seconds) == (True, 12.5)
  now[0] = 530.0
  second.after_step(1, 2, [member], member)  # 12.5 + 30 s
  third = checkpoints.FitProgress(str(tmp_path / 'fit'), 'tag', every_seconds=10, clock=clock)
  assert third.restore(member)[:2] == (1, 2)
  assert third.resumed_seconds == 42.5


def test_fit_tag_names_round_labeled_set_and_key():
  key = jax.random.PRNGKey(0)
  a = checkpoints.fit_tag(1, np.arange(5), key)
  assert a.startswith('round 1 ')
  assert a == checkpoints.fit_tag(1, np.arange(5), key)
  assert a != checkpoints.fit_tag(2, np.arange(5), key)
  assert a != checkpoints.fit_tag(1, np.arange(1, 6), key)
  assert a != checkpoints.fit_tag(1, np.arange(5), jax.random.PRNGKey(1))


def test_run_killed_mid_fit_resumes_equal_to_uninterrupted(tmp_path, monkeypatch):
  # The Gaussian smoke config's MLP trains with dispatch 'step' on CPU.
  config = smoke(strategies=('ensembles',), seeds=(1,), fit_checkpoint_seconds=0.0)
  table = experiment.train_and_evaluate(config, str(tmp_path / 'whole'))
  calls = {'n': 0}
  original = checkpoints.FitProgress.after_step

  def dies_in_round_1(self, group, step, finished, state):
    original(self, group, step, finished, state)
    calls['n'] += 1
    if self.tag.startswith('round 1 ') and step == 7:
      raise Killed

  monkeypatch.setattr(checkpoints.FitProgress, 'after_step', dies_in_round_1)
  workdir = tmp_path / 'killed'
  with pytest.raises(Killed):
    experiment.train_and_evaluate(config, str(workdir))
  progress = workdir / 'checkpoints' / 'fit' / 'ensembles_seed1' / 'progress'
  saved = [
      json.loads((p / 'position' / 'metadata').read_text())
      for p in progress.iterdir()
      if p.name.isdigit()
  ]
  assert [(s['group'], s['step']) for s in saved] == [(0, 7)]
  monkeypatch.setattr(checkpoints.FitProgress, 'after_step', original)
  resumed_from = calls['n']
  assert experiment.train_and_evaluate(config, str(workdir)) == table
  assert read(workdir, 'metrics.jsonl') == read(tmp_path / 'whole', 'metrics.jsonl')
  assert read(workdir, 'selections.jsonl') == read(tmp_path / 'whole', 'selections.jsonl')
  assert resumed_from > 7
  timings = [json.loads(line) for line in read(workdir, 'timings.jsonl').splitlines()]
  assert [t['round'] for t in timings if t.get('train_resumed')] == [1]
  assert all(t['train_seconds'] > 0 for t in timings)
  # Progress is dropped once each round's loop state is saved.
  assert not (workdir / 'checkpoints' / 'fit' / 'ensembles_seed1').exists()


def test_run_killed_while_scoring_does_not_train_again(tmp_path, monkeypatch):
  config = smoke(strategies=('ensembles',), seeds=(1,))
  table = experiment.train_and_evaluate(config, str(tmp_path / 'whole'))
  original = experiment.Experiment.score
  calls = {'score': 0}

  def dies_in_round_1(self, *args):
    calls['score'] += 1
    if calls['score'] == 2:  # round 1's scoring, after its fit
      raise Killed
    return original(self, *args)

  monkeypatch.setattr(experiment.Experiment, 'score', dies_in_round_1)
  workdir = tmp_path / 'killed'
  with pytest.raises(Killed):
    experiment.train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(experiment.Experiment, 'score', original)
  steps = []
  after_step = checkpoints.FitProgress.after_step
  monkeypatch.setattr(
      checkpoints.FitProgress,
      'after_step',
      lambda self, *a: steps.append(self.tag) or after_step(self, *a),
  )
  assert experiment.train_and_evaluate(config, str(workdir)) == table
  assert read(workdir, 'metrics.jsonl') == read(tmp_path / 'whole', 'metrics.jsonl')
  assert read(workdir, 'selections.jsonl') == read(tmp_path / 'whole', 'selections.jsonl')
  # Round 1 was not trained again; later rounds were trained.
  assert not [t for t in steps if t.startswith('round 1 ')]
  assert [t for t in steps if t.startswith('round 2 ')]


def test_fit_checkpoint_seconds_is_checked_and_not_part_of_identity(tmp_path):
  from jal import config_lib  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match='config.fit_checkpoint_seconds must be non-negative'):
    config_lib.validate(smoke(fit_checkpoint_seconds=-1.0))
  assert config_lib.identity(smoke(fit_checkpoint_seconds=5.0)) == config_lib.identity(smoke())
