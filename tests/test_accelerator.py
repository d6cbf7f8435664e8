"""launch.accelerator: chunks that stop and resume end with the results of one run.

The smoke test runs configs/cifar10_2class.py:low,smoke on a made-up CIFAR-10,
cut to ensembles and one selection (rounds 0 and 1: 2 metrics rows, about 20 s
a process on the 2-core CPU, most of it start-up and compilation), once
uninterrupted and once stopped with SIGINT when round 0's row is written, so
the second process resumes in round 1, and compares the files.
"""

import json
import pathlib
import signal
import sys
import time

import pytest

from launch import accelerator
from tests.test_configs import _write_fake_cifar

SLEEPER = (
    'import signal, sys, time\n'
    'if sys.argv[1] == "ignore":\n'
    '  signal.signal(signal.SIGINT, signal.SIG_IGN)\n'
    'try:\n'
    '  time.sleep(60)\n'
    'except KeyboardInterrupt:\n'
    '  sys.exit(130)\n'
)


@pytest.mark.parametrize(
    'mode,outcome,rc', [('default', 'stopped', 130), ('ignore', 'killed', -signal.SIGTERM)]
)
def test_a_process_is_stopped_within_its_time(mode, outcome, rc, tmp_path):
  t0 = time.monotonic()
  got = accelerator.run_process(
      [sys.executable, '-c', SLEEPER, mode],
      seconds=2.0,
      log_path=str(tmp_path / 'log'),
      grace=1.2,
      poll=0.05,
  )
  assert got == (outcome, rc)
  assert time.monotonic() - t0 < 3.0


def test_command():
  s = accelerator.SETTINGS[0]
  cmd = accelerator.command(
      s, '/w', smoke=True, fit_checkpoint_seconds=135.0, data_dir='/d', extra=['--config.seeds=0']
  )
  assert cmd[1:] == [
      '-m',
      'jal.main',
      f'--config={accelerator.REPO}/configs/cifar10_2class.py:low,smoke',
      '--workdir=/w',
      '--config.fit_checkpoint_seconds=135',
      '--config.data_dir=/d',
      '--config.seeds=0',
  ]
  assert [x.name for x in accelerator.SETTINGS] == [
      'cifar10_2class_low',
      'cifar10_2class_high',
      'imbalance',
  ]
  assert accelerator.command(accelerator.SETTINGS[2], '/w', False, 60)[3] == (
      f'--config={accelerator.REPO}/configs/imbalance.py'
  )


def test_smoke_in_chunks_equals_one_run(tmp_path):
  data = _write_fake_cifar(tmp_path / 'data', 10)
  kw = dict(
      smoke=True,
      only=['cifar10_2class_low'],
      data_dir=data,
      chunks=0,
      extra=['--config.strategies=ensembles', '--config.num_rounds=1'],
      say=lambda m: None,
  )
  one = accelerator.run_chunks(
      str(tmp_path / 'one'), str(tmp_path / 'one_out'), chunk_seconds=300, **kw
  )
  assert [(r['outcome'], r['rows_after']) for r in one] == [('finished', 2)]

  many = accelerator.run_chunks(
      str(tmp_path / 'many'), str(tmp_path / 'many_out'), chunk_seconds=300, stop_at_rows=1, **kw
  )
  assert [
      (r['chunk'], r['outcome'], r['returncode'], r['rows_before'], r['rows_after']) for r in many
  ] == [(0, 'stopped', 130, 0, 1), (1, 'finished', 0, 1, 2)]
  a, b = tmp_path / 'one_out' / 'cifar10_2class_low', tmp_path / 'many_out' / 'cifar10_2class_low'
  for name in ('metrics.jsonl', 'selections.jsonl', 'config.json'):
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  assert sorted(p.name for p in b.iterdir()) == [
      'config.json',
      'jal.log',
      'metrics.jsonl',
      'results.md',
      'selections.jsonl',
      'timings.jsonl',
  ]
  assert not any(p.name == 'checkpoints' for p in (tmp_path / 'many_out').rglob('*'))
  logged = [
      json.loads(l) for l in (tmp_path / 'many_out' / 'chunks.jsonl').read_text().splitlines()
  ]
  assert logged == many
  # A rerun finds the setting finished and starts nothing.
  said = []
  assert (
      accelerator.run_chunks(
          str(tmp_path / 'many'),
          str(tmp_path / 'again'),
          chunk_seconds=300,
          **(kw | {'say': said.append}),
      )
      == []
  )
  assert said == ['all done: cifar10_2class_low']


def test_a_chunk_shorter_than_start_up_is_an_error(tmp_path):
  with pytest.raises(accelerator.ChunkError, match='made no progress; give a longer'):
    # SIGINT 0.8 s after the start: jal is still importing.
    accelerator.run_chunks(
        str(tmp_path / 'r'),
        str(tmp_path / 'o'),
        chunk_seconds=2.0,
        smoke=True,
        only=['imbalance'],
        data_dir=str(tmp_path),
        say=lambda m: None,
    )
  with pytest.raises(ValueError, match='a chunk of 1 s leaves no time for a process'):
    accelerator.run_chunks(str(tmp_path / 'r'), str(tmp_path / 'o'), chunk_seconds=1)
  with pytest.raises(ValueError, match='unknown setting'):
    accelerator.run_chunks(str(tmp_path / 'r'), str(tmp_path / 'o'), only=['cifar100_low'])
  assert pathlib.Path(tmp_path / 'o' / 'chunks.jsonl').exists()
