"""Damaged checkpoints: reported in one warning, moved aside or dropped, and the run
resumes from what is intact to the results of an uninterrupted run."""

import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jal import checkpoints, experiment
from tests.test_experiment import read, smoke


class Killed(Exception):
  pass


def config(**overrides):
  return smoke(strategies=('random',), seeds=(0,), **overrides)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  experiment.train_and_evaluate(config(), str(workdir))
  return workdir


def assert_equal_results(workdir, reference):
  for name in ('metrics.jsonl', 'selections.jsonl'):
    assert read(workdir, name) == read(reference, name), name


def flip(path: pathlib.Path) -> None:
  """Inverts 4 bytes in the middle of the file."""
  data = bytearray(path.read_bytes())
  mid = len(data) // 2
  data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
  path.write_bytes(bytes(data))


def warnings_of(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def run_dir(workdir):
  return pathlib.Path(workdir) / 'checkpoints' / 'random_seed0'


def stopped_after_round_1(tmp_path):
  workdir = tmp_path / 'w'
  experiment.train_and_evaluate(config(), str(workdir), stop_after_round=1)
  assert sorted(p.name for p in run_dir(workdir).iterdir()) == ['0', '1']
  return workdir


def flip_array_data(step):
  files = sorted(p for p in (step / 'arrays').rglob('*') if p.is_file() and p.parent.name == 'd')
  assert files, 'orbax wrote no array data files where expected'
  for p in files:
    flip(p)


def flip_history(step):
  flip(step / 'history' / 'metadata')


def truncate_history(step):
  path = step / 'history' / 'metadata'
  path.write_text(path.read_text()[:100])


def edit_a_metric(step):
  """A hand edit that still parses: an accuracy changed, the seal left as it was."""
  path = step / 'history' / 'metadata'
  history = json.loads(path.read_text())
  history['metrics'][1]['accuracy'] = 0.99
  path.write_text(json.dumps(history))


def edit_a_metric_and_drop_the_seal(step):
  """The same edit in a step without its sha256sums.json: the digest in the history is
  what catches it."""
  edit_a_metric(step)
  (step / 'sha256sums.json').unlink(missing_ok=True)


@pytest.mark.parametrize(
    'damage',
    [
        flip_array_data,
        flip_history,
        truncate_history,
        edit_a_metric,
        edit_a_metric_and_drop_the_seal,
    ],
)
def test_damaged_latest_step_is_moved_aside_and_rounds_after_it_retrained(
    reference, tmp_path, caplog, damage
):
  workdir = stopped_after_round_1(tmp_path)
  step = run_dir(workdir) / '1'
  damage(step)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    experiment.train_and_evaluate(config(), str(workdir))
  warnings = warnings_of(caplog)
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert f'checkpoint {step} is damaged' in warnings[0] and 'moved it to 1.damaged' in warnings[0]
  assert (run_dir(workdir) / '1.damaged' / 'history').is_dir()
  # Orbax lists only the steps the resumed run saved, and keeps the damaged one where it is.
  assert checkpoints.RoundCheckpoints(str(run_dir(workdir))).manager.all_steps() == [1, 2]
  assert_equal_results(workdir, reference)


def test_no_intact_step_starts_the_run_over(reference, tmp_path, caplog):
  workdir = stopped_after_round_1(tmp_path)
  truncate_history(run_dir(workdir) / '1')
  flip_array_data(run_dir(workdir) / '0')
  with caplog.at_level(logging.INFO):
    experiment.train_and_evaluate(config(), str(workdir))
  warnings = warnings_of(caplog)
  assert len(warnings) == 3, warnings
  assert 'no intact checkpoint left' in warnings[2] and 'from round 0' in warnings[2]
  assert {'0.damaged', '1.damaged'} <= {p.name for p in run_dir(workdir).iterdir()}
  assert_equal_results(workdir, reference)


def test_step_from_before_digests_resumes_without_a_warning(reference, tmp_path, caplog):
  # Workdirs written before digests existed: no sha256sums.json, no sha256 in the history.
  workdir = stopped_after_round_1(tmp_path)
  for step in run_dir(workdir).iterdir():
    (step / 'sha256sums.json').unlink()
    path = step / 'history' / 'metadata'
    history = json.loads(path.read_text())
    del history['sha256']
    path.write_text(json.dumps(history))
  with caplog.at_level(logging.INFO):
    experiment.train_and_evaluate(config(), str(workdir))
  assert not warnings_of(caplog)
  assert not list(run_dir(workdir).glob('*.damaged'))
  assert_equal_results(workdir, reference)


# The checkpoints of `config()` stopped after round 1, as jal before LoopState saved them
# (commit 3c35c56: a dict state, orbax's `max_to_keep` and `item_names`).
BEFORE_LOOP_STATE = pathlib.Path(__file__).parent / 'fixtures' / 'before_loop_state'


def test_checkpoints_saved_before_loop_state_resume_to_the_same_results(
    reference, tmp_path, caplog
):
  workdir = tmp_path / 'w'
  shutil.copytree(BEFORE_LOOP_STATE, workdir)
  saved = checkpoints.RoundCheckpoints(str(run_dir(workdir))).latest()
  assert saved.round == 1 and [m['round'] for m in saved.metrics] == [0, 1]
  assert [s['round'] for s in saved.selections] == [0, 1, 2]
  assert np.array_equal(saved.key, experiment.seed_key(config().seed, 0))
  with caplog.at_level(logging.INFO):
    experiment.train_and_evaluate(config(), str(workdir))
  assert not warnings_of(caplog)
  assert 'Resuming: 2 of 3 rounds already done' in caplog.text
  # Rounds 0 and 1 were restored, not run again; random's picks use no model.
  timings = [json.loads(line) for line in read(workdir, 'timings.jsonl').splitlines()]
  assert timings[:2] == saved.timings
  assert read(workdir, 'selections.jsonl') == read(reference, 'selections.jsonl')
  ours = [json.loads(line) for line in read(reference, 'metrics.jsonl').splitlines()]
  if ours[:2] != saved.metrics:
    pytest.skip(
        'this platform trains the smoke MLP to other numbers than the fixture was '
        'made with; only the selections were compared'
    )
  assert read(workdir, 'metrics.jsonl') == read(reference, 'metrics.jsonl')


# Loop states saved by RoundCheckpoints itself, without training: fast.

KEY = np.asarray(jax.random.PRNGKey(3))


def loop_state(round_):
  label_round = np.full((40,), -1, np.int32)
  selections = []
  for r in range(round_ + 2):
    label_round[3 * r : 3 * r + 3] = r
    selections.append(
        {'strategy': 's', 'seed': 0, 'round': r, 'indices': list(range(3 * r, 3 * r + 3))}
    )
  return checkpoints.LoopState(
      label_round=label_round,
      key=KEY,
      round=round_,
      selections=selections,
      metrics=[{'round': r, 'accuracy': 0.5 + r / 7} for r in range(round_ + 1)],
      timings=[{'round': r, 'train_seconds': 1.5} for r in range(round_ + 1)],
  )


@pytest.fixture
def two_steps(tmp_path):
  directory = tmp_path / 'run'
  ckpt = checkpoints.RoundCheckpoints(str(directory))
  ckpt.save(loop_state(0))
  ckpt.save(loop_state(1))
  return directory


@pytest.mark.parametrize('how', ['flip', 'truncate', 'delete'])
def test_any_damaged_file_falls_back_to_the_step_before(two_steps, tmp_path, how, caplog):
  files = sorted(
      p.relative_to(two_steps / '1') for p in (two_steps / '1').rglob('*') if p.is_file()
  )
  assert len(files) > 10
  for name in files:
    directory = tmp_path / 'damaged' / str(name)
    shutil.copytree(two_steps, directory)
    path = directory / '1' / name
    if how == 'flip':
      flip(path)
    elif how == 'truncate':
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
      path.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      state = checkpoints.RoundCheckpoints(str(directory)).latest()
    if str(name) == 'sha256sums.json' and how == 'delete':
      assert state.round == 1  # unsealed: its contents are checked, and intact
      continue
    assert state.round == 0, name
    assert np.array_equal(state.label_round, loop_state(0).label_round)
    assert f'checkpoint {directory / "1"} is damaged' in ' '.join(warnings_of(caplog)), name


def test_array_change_that_decodes_fine_is_caught_by_the_digest(two_steps, caplog):
  # Another key written as valid array data, as a bit flip in uncompressed data would be.
  step = two_steps / '1'
  (step / 'sha256sums.json').unlink()
  other = {'label_round': loop_state(1).label_round, 'key': KEY ^ np.uint32(1)}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(step / 'arrays', other, force=True)
  with caplog.at_level(logging.WARNING):
    state = checkpoints.RoundCheckpoints(str(two_steps)).latest()
  assert state.round == 0
  assert 'do not match the sha256 saved with them' in caplog.text


def test_label_round_disagreeing_with_selections_is_damage(tmp_path, caplog):
  # Saved so, its digest and seal agree: the state itself is checked for consistency.
  bad = loop_state(1)
  bad.label_round[30] = 1
  ckpt = checkpoints.RoundCheckpoints(str(tmp_path / 'run'))
  ckpt.save(loop_state(0))
  ckpt.save(bad)
  with caplog.at_level(logging.WARNING):
    assert checkpoints.RoundCheckpoints(str(tmp_path / 'run')).latest().round == 0
  assert 'disagrees with its selections' in caplog.text


@pytest.mark.parametrize('error', [KeyboardInterrupt, RuntimeError])
def test_other_errors_in_restore_are_not_taken_for_damage(two_steps, monkeypatch, error):
  def raises(self, step):
    raise error('not damage')

  monkeypatch.setattr(checkpoints.RoundCheckpoints, '_restore', raises)
  with pytest.raises(error):
    checkpoints.RoundCheckpoints(str(two_steps)).latest()
  assert (two_steps / '1').is_dir() and not (two_steps / '1.damaged').exists()


# The fit in progress.


def flip_state_data(progress):
  for p in progress.rglob('*'):
    if p.is_file() and p.parent.name == 'd':
      flip(p)


def truncate_position(progress):
  for p in progress.glob('*/position/metadata'):
    p.write_text(p.read_text()[:20])


@pytest.mark.parametrize('damage', [flip_state_data, truncate_position])
def test_damaged_fit_progress_is_dropped_and_the_round_retrained(
    reference, tmp_path, monkeypatch, caplog, damage
):
  original = checkpoints.FitProgress.after_step

  def dies_in_round_0(self, group, step, finished, state):
    original(self, group, step, finished, state)
    if step == 7:
      raise Killed

  # Saves after every step; killed after 7 steps, with 7 steps saved.
  monkeypatch.setattr(checkpoints.FitProgress, 'after_step', dies_in_round_0)
  workdir = tmp_path / 'w'
  with pytest.raises(Killed):
    experiment.train_and_evaluate(config(fit_checkpoint_seconds=0.0), str(workdir))
  monkeypatch.setattr(checkpoints.FitProgress, 'after_step', original)
  fit_dir = workdir / 'checkpoints' / 'fit' / 'random_seed0'
  assert [p.name for p in (fit_dir / 'progress').iterdir()] == ['7']
  damage(fit_dir / 'progress')
  with caplog.at_level(logging.INFO):
    experiment.train_and_evaluate(config(), str(workdir))
  warnings = warnings_of(caplog)
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert f'dropped the damaged fit progress in {fit_dir}' in warnings[0]
  assert 'training the fit (round 0 ' in warnings[0]
  assert 'resuming the fit' not in caplog.text
  timings = [json.loads(line) for line in read(workdir, 'timings.jsonl').splitlines()]
  assert not [t for t in timings if t.get('train_resumed')]
  assert_equal_results(workdir, reference)


def test_fit_checkpoints_log_at_info_only_a_resumed_fit(tmp_path, caplog):
  state = {'w': np.arange(3.0, dtype=np.float32)}
  directory = str(tmp_path / 'fit')
  with caplog.at_level(logging.DEBUG):
    saving = checkpoints.FitProgress(directory, 'round 1 aaa', every_seconds=0)
    saving.after_step(0, 1, [], state)
    saving.fit_done([state])
    checkpoints.FitProgress(directory, 'round 1 aaa', 0).restore(state)
    checkpoints.FitProgress(directory, 'round 2 bbb', 0).restore(state)  # another fit's
  ours = [(r.levelno, r.getMessage()) for r in caplog.records if r.pathname == checkpoints.__file__]
  assert [m for level, m in ours if level >= logging.INFO] == [
      'resuming the fit (round 1 aaa) at group 1, step 0, after 0 s of training'
  ]
  assert {m.split(' ')[0] for level, m in ours if level == logging.DEBUG} == {'saved', 'dropping'}
