"""One process per workdir (jal.workdir): the lock, its message, and the cleanup under it."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from jal import workdir
from launch import sweep
from tests.conftest import REPO

ENV = {**os.environ, 'PYTHONPATH': str(REPO)}


def main_command(w, *overrides):
  """A seconds-long jal.main: the smoke config, one strategy, one seed."""
  return [
      sys.executable,
      '-m',
      'jal.main',
      f'--config={REPO}/configs/gaussian.py:smoke',
      f'--workdir={w}',
      '--config.strategies=random',
      '--config.seeds=0',
      *overrides,
  ]


def _state(pid: int) -> str:
  """The process's state letter from /proc ('T': stopped), or why there is none."""
  try:
    return pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
  except OSError as e:
    return f'no /proc entry ({e.strerror})'


def errors(stderr: str) -> list[str]:
  """stderr without absl's INFO lines: what the person is told."""
  return [l for l in stderr.splitlines() if l.strip() and not l.startswith('I')]


def test_a_second_run_is_refused_at_once_and_a_killed_one_leaves_no_lock(tmp_path):
  w = tmp_path / 'w'
  # The first run: stopped (SIGSTOP) once it has written config.json, so it
  # holds the workdir for as long as the test needs.
  first = subprocess.Popen(
      main_command(w), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  try:
    deadline = time.time() + 120
    while not (w / 'config.json').exists() and first.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)
    assert (w / 'config.json').exists(), 'the first run did not start'
    # A second one is refused at once: with the same config (unlocked, the two
    # crash each other in orbax), and with another learning rate, before it
    # reads config.json (unlocked, results were filed under the wrong config).
    for overrides in ((), ('--config.train.learning_rate=0.5',)):
      t0 = time.time()
      second = subprocess.run(
          main_command(w, *overrides),
          cwd=REPO,
          env=ENV,
          capture_output=True,
          text=True,
          timeout=120,
      )
      assert second.returncode == 1, second.stderr[-2000:]
      assert time.time() - t0 < 60
      holder = json.loads((w / '.lock').read_text())
      # Should this fail: whether the first run was still stopped ('T') or had been
      # resumed from outside the test (e.g. `pkill -CONT -f jal.main`) and ended.
      assert holder['pid'] == first.pid, (holder, first.poll(), _state(first.pid))
      assert holder['host'] == socket.gethostname()
      assert errors(second.stderr) == [
          f'error: workdir {w} is in use by pid {first.pid} on host {holder["host"]} '
          f'(started {holder["started"]}: {holder["command"]}); '
          'wait for it to end or stop it, then rerun'
      ]
      assert 'jal.main' in holder['command'] and str(w) in holder['command']
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # What a kill leaves: an atomic_write temporary and a half-deleted checkpoint.
  (w / 'metrics.jsonl.tmp-999999').write_text('{"torn')
  aside = w / 'checkpoints' / 'fit' / 'random_seed0.deleting'
  (aside / 'progress').mkdir(parents=True)
  third = subprocess.run(
      main_command(w), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
  )
  assert third.returncode == 0, third.stderr[-2000:]
  assert '| random |' in third.stdout
  assert not (w / 'metrics.jsonl.tmp-999999').exists() and not aside.exists()
  # It ends saying where the results are.
  assert third.stdout.endswith(
      f'|\n\nResults: {w}/results.md\nFigures and confidence intervals: '
      f'python -m jal.report --workdir={w} --out={w}/report\n'
  )


def test_the_lock_names_its_holder_and_is_released_after_the_block(tmp_path):
  w = str(tmp_path / 'w')
  with workdir.locked(w):
    info = json.loads(pathlib.Path(w, '.lock').read_text())
    assert info['pid'] == os.getpid()
    # flock conflicts between two opens even in one process.
    with pytest.raises(workdir.WorkdirBusy) as e:
      with workdir.locked(w):
        pass
    assert str(e.value) == (
        f'workdir {w} is in use by pid {os.getpid()} on host {socket.gethostname()} '
        f'(started {info["started"]}: {info["command"]}); wait for it to end or stop it, '
        'then rerun'
    )
  with workdir.locked(w):  # released
    pass
  assert os.listdir(w) == ['.lock']


def test_a_holder_that_has_not_written_who_it_is_yet(tmp_path):
  assert workdir.busy_message('/w', 'workdir', None) == (
      'workdir /w is in use by another process (it has not written who it is yet); '
      'wait for it to end or stop it, then rerun'
  )


def test_a_folder_made_for_a_failing_block_is_removed_again(tmp_path):
  w = tmp_path / 'new'
  with pytest.raises(ValueError, match='bad config'):
    with workdir.claimed(str(w)):
      raise ValueError('bad config')
  assert not w.exists()
  (tmp_path / 'old').mkdir()
  with pytest.raises(ValueError):
    with workdir.claimed(str(tmp_path / 'old')):
      raise ValueError('bad config')
  assert os.listdir(tmp_path / 'old') == ['.lock']  # not this call's to remove


def test_a_file_or_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
  (tmp_path / 'f').write_text('')
  with pytest.raises(workdir.WorkdirError) as e:
    with workdir.locked(str(tmp_path / 'f')):
      pass
  assert str(e.value) == f'workdir {tmp_path / "f"} is a file, not a folder'

  real_open = os.open

  def read_only(path, flags, *args):
    if str(path).startswith(str(tmp_path / 'ro')) and flags & (os.O_CREAT | os.O_RDWR):
      raise PermissionError(13, 'Permission denied', str(path))
    return real_open(path, flags, *args)

  (tmp_path / 'ro').mkdir()
  monkeypatch.setattr(os, 'open', read_only)
  with pytest.raises(workdir.WorkdirError) as e:
    with workdir.locked(str(tmp_path / 'ro'), 'sweep root'):
      pass
  assert str(e.value) == f'cannot write to sweep root {tmp_path / "ro"}: Permission denied'


def test_disabled_does_nothing(tmp_path):
  with workdir.claimed(str(tmp_path / 'w'), enabled=False):
    pass
  assert not (tmp_path / 'w').exists()


def test_remove_leftovers_takes_only_temporaries_and_folders_set_aside(tmp_path):
  keep = [
      'metrics.jsonl',
      'checkpoints/fit/random_seed0/progress/1/x',
      'notes.tmp',
  ]
  drop = [
      'metrics.jsonl.tmp-123',
      'state.json.tmp-4',
      'checkpoints/fit/a.deleting/progress/z',
      'checkpoints/coreset_seed0/1.orbax-checkpoint-tmp-123/y',
      'checkpoints/fit/random_seed0/group_0.orbax-checkpoint-tmp/y',
  ]
  for name in keep + drop:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text('')
  removed = workdir.remove_leftovers(str(tmp_path))
  assert sorted(removed) == sorted(
      str(tmp_path / p)
      for p in [
          'metrics.jsonl.tmp-123',
          'state.json.tmp-4',
          'checkpoints/fit/a.deleting',
          'checkpoints/coreset_seed0/1.orbax-checkpoint-tmp-123',
          'checkpoints/fit/random_seed0/group_0.orbax-checkpoint-tmp',
      ]
  )
  assert all((tmp_path / p).exists() for p in keep)
  assert not (tmp_path / 'checkpoints/fit/a.deleting').exists()


def test_a_second_sweep_on_one_root_is_refused(tmp_path):
  root = str(tmp_path / 'root')
  with workdir.locked(root, 'sweep root'):
    with pytest.raises(
        workdir.WorkdirBusy, match=f'^sweep root {root} is in use by pid {os.getpid()} '
    ):
      sweep.run_sweep('launch/grids/gaussian.py:smoke', root)
    # A dry run only reads: it is not refused.
    assert sweep.run_sweep('launch/grids/gaussian.py:smoke', root, dry_run=True).runs
