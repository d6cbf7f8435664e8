"""launch/: grid expansion, a submitit sweep end to end, skip/resume, bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from launch import grid
from launch import sweep
from tests.conftest import REPO, load_config


def write_grid(directory, body, name='grid.py'):
  path = pathlib.Path(directory) / name
  path.write_text('from launch import grid\n\n' + textwrap.dedent(body))
  return str(path)


def metrics(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


# ----------------------------------------------------------------------------
# Expansion.


def test_expansion_is_content_named_and_ordered(tmp_path):
  path = write_grid(
      tmp_path,
      """
      def get_grid(arg=None):
        return [
            grid.spec('configs/gaussian.py', arg, strategies=('random', 'coreset'), seeds=(0, 1)),
            grid.spec('configs/gaussian.py', arg, strategies='ensembles', seeds=(3,),
                      overrides={'train': {'epochs': 5}}),
            grid.spec('configs/mnist.py', 'smoke,low', strategies=('random', 'ensembles'),
                      seeds=(0, 1), split=False),
        ]
  """,
  )
  runs = grid.expand(grid.load_grid(f'{path}:smoke'))
  assert [r.name for r in runs] == [
      'gaussian-smoke/random-seed0',
      'gaussian-smoke/random-seed1',
      'gaussian-smoke/coreset-seed0',
      'gaussian-smoke/coreset-seed1',
      'gaussian-smoke-train.epochs=5/ensembles-seed3',
      'mnist-low_smoke/random+ensembles-seed0+1',
  ]
  assert [r.overrides for r in runs] == [
      {'seeds': (0,), 'strategies': ('random',)},
      {'seeds': (1,), 'strategies': ('random',)},
      {'seeds': (0,), 'strategies': ('coreset',)},
      {'seeds': (1,), 'strategies': ('coreset',)},
      {'seeds': (3,), 'strategies': ('ensembles',), 'train.epochs': 5},
      {'seeds': (0, 1), 'strategies': ('random', 'ensembles')},
  ]
  assert [r.arg for r in runs] == ['smoke'] * 5 + ['smoke,low']
  assert runs[0].workdir('/r') == '/r/gaussian-smoke/random-seed0'
  # Each run's config is the config file + arg + overrides.
  c = grid.build_config(runs[4].config_path, runs[4].arg, runs[4].overrides)
  want = load_config('gaussian', 'smoke')
  assert (c.train.epochs, c.seeds, c.strategies, c.train.members) == (
      5,
      (3,),
      ('ensembles',),
      want.train.members,
  )
  # The same flags for `python -m jal.main` (the local subprocess executor).
  assert grid.jal_main_flags(runs[4]) == [
      f'--config={REPO / "configs" / "gaussian.py"}:smoke',
      '--config.seeds=(3,)',
      "--config.strategies=('ensembles',)",
      '--config.train.epochs=5',
  ]
  # Deterministic: expanding again gives the same runs.
  assert grid.expand(grid.load_grid(f'{path}:smoke')) == runs


def test_shipped_grids():
  full = grid.expand(grid.load_grid('launch/grids/gaussian.py'))
  assert [r.name for r in full] == [
      f'gaussian/{s}-seed{i}' for s in ('random', 'coreset', 'ensembles') for i in (0, 1, 2)
  ]
  smoke = grid.expand(grid.load_grid('launch/grids/gaussian.py:smoke'))
  seeds = load_config('gaussian', 'smoke').seeds
  assert [r.name for r in smoke] == [
      f'gaussian-smoke/{s}-seed{i}' for s in ('random', 'coreset', 'ensembles') for i in seeds
  ]
  study = grid.expand(grid.load_grid('launch/grids/study.py'))
  assert {r.name.split('/')[0] for r in study} >= {'gaussian', 'mnist-low', 'mnist-high'}
  assert len(study) % 9 == 0
  imbalance = grid.expand(grid.load_grid('launch/grids/mnist_imbalance.py'))
  assert [r.name for r in imbalance] == [
      f'mnist_imbalance-digit{d}/{s}-seed{i}'
      for d in (1, 5, 8)
      for s in ('random', 'coreset', 'ensembles', 'balanced_uncertainty')
      for i in range(10)
  ]
  assert {r.num_rounds for r in imbalance} == {10}


@pytest.mark.parametrize('name', ['gaussian', 'mnist_imbalance', 'study'])
def test_shipped_grids_take_only_smoke(name):
  for arg in ('smoke', ' smoke '):
    assert all('smoke' in r['arg'] for r in grid.load_grid(f'launch/grids/{name}.py:{arg}'))
  with pytest.raises(
      grid.GridError, match=rf"^{name} grid: unknown arg\(s\) \['big'\]; " 'valid: smoke$'
  ):
    grid.load_grid(f'launch/grids/{name}.py:smoke,big')


# ----------------------------------------------------------------------------
# A sweep through submitit's local executor, then a rerun.


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  pytest.importorskip('submitit')
  base = tmp_path_factory.mktemp('sweep')
  path = write_grid(
      base,
      """
      def get_grid(arg=None):
        return [grid.spec('configs/gaussian.py', 'smoke', strategies=('random', 'ensembles'),
                          seeds=(0,))]
  """,
  )
  root = base / 'root'
  result = sweep.run_sweep(path, str(root), executor='submitit_local', max_parallel=2)
  return path, root, result


def test_submitit_local_sweep_end_to_end(tiny_sweep):
  _, root, result = tiny_sweep
  c = load_config('gaussian', 'smoke')
  assert result.failed == {}
  assert result.actions == {
      'gaussian-smoke/random-seed0': 'started',
      'gaussian-smoke/ensembles-seed0': 'started',
  }
  for strategy in ('random', 'ensembles'):
    workdir = root / 'gaussian-smoke' / f'{strategy}-seed0'
    rows = metrics(workdir)
    assert [(r['strategy'], r['seed'], r['round']) for r in rows] == [
        (strategy, 0, r) for r in range(c.num_rounds + 1)
    ]
    for r in rows:
      assert r['n_labeled'] == c.warmup_size + r['round'] * c.query_size
    stored = json.loads((workdir / 'config.json').read_text())
    assert stored['strategies'] == [strategy] and stored['seeds'] == [0]
  assert list((root / 'submitit').iterdir())  # submitit's job folders
  report = pathlib.Path(result.report)
  assert report == root / 'report' / 'report.md'
  text = report.read_text()
  assert '| random |' in text and '| ensembles |' in text
  assert len(result.workdirs) == 2


def test_rerun_skips_finished_runs(tiny_sweep, capsys, tmp_path):
  path, root, _ = tiny_sweep
  before = {p: p.read_bytes() for p in root.glob('gaussian-smoke/*/*.jsonl')}
  out = tmp_path / 'merged'
  result = sweep.run_sweep(path, str(root), executor='submitit_local', report_out=str(out))
  assert set(result.actions.values()) == {'skipped'} and result.failed == {}
  assert 'skipped  gaussian-smoke/random-seed0 (3/3 rounds)' in capsys.readouterr().out
  assert {p: p.read_bytes() for p in root.glob('gaussian-smoke/*/*.jsonl')} == before
  assert (out / 'report.md').exists()


def test_rerun_resumes_an_interrupted_run(tiny_sweep, tmp_path, capsys):
  path, root, _ = tiny_sweep
  copy = tmp_path / 'root'
  shutil.copytree(root / 'gaussian-smoke', copy / 'gaussian-smoke')
  workdir = copy / 'gaussian-smoke' / 'random-seed0'
  full = (workdir / 'metrics.jsonl').read_text()
  # As if killed after round 1: the last checkpoint and metrics row are gone.
  last = max(int(p.name) for p in (workdir / 'checkpoints' / 'random_seed0').iterdir())
  shutil.rmtree(workdir / 'checkpoints' / 'random_seed0' / str(last))
  (workdir / 'metrics.jsonl').write_text(''.join(full.splitlines(True)[:last]))
  result = sweep.run_sweep(path, str(copy), executor='local')
  assert result.actions == {
      'gaussian-smoke/random-seed0': 'resumed',
      'gaussian-smoke/ensembles-seed0': 'skipped',
  }
  assert 'resumed  gaussian-smoke/random-seed0 (2/3 rounds)' in capsys.readouterr().out
  assert (workdir / 'metrics.jsonl').read_text() == full


# ----------------------------------------------------------------------------
# Bad input: one line, before any compute.


def one_line_error(match, **kwargs):
  with pytest.raises(grid.GridError, match=match) as e:
    sweep.run_sweep(**kwargs)
  assert '\n' not in str(e.value)
  return str(e.value)


def test_unknown_executor(tmp_path):
  msg = one_line_error(
      'unknown executor', grid='launch/grids/gaussian.py', root=str(tmp_path), executor='kubernetes'
  )
  assert 'local, submitit_local, slurm' in msg
  assert not list(tmp_path.iterdir())


def test_missing_grid_file(tmp_path):
  one_line_error('grid file not found: nope/grid.py', grid='nope/grid.py:smoke', root=str(tmp_path))


def test_grid_entry_with_missing_config(tmp_path):
  path = write_grid(
      tmp_path,
      """
      def get_grid(arg=None):
        return [grid.spec('configs/gaussian.py', 'smoke'), grid.spec('configs/nope.py')]
  """,
  )
  one_line_error(
      r'config file of grid entry 1 not found: configs/nope.py',
      grid=path,
      root=str(tmp_path / 'root'),
  )
  assert not (tmp_path / 'root').exists()


def test_grid_entry_with_bad_fields(tmp_path):
  path = write_grid(
      tmp_path,
      """
      def get_grid(arg=None):
        return [grid.spec('configs/gaussian.py', 'smoke', overrides={'train.epochz': 3})]
  """,
  )
  one_line_error("unknown config field 'train.epochz'", grid=path, root=str(tmp_path))
  path = write_grid(
      tmp_path,
      """
      def get_grid(arg=None):
        return [grid.spec('configs/gaussian.py', 'smoke', strategies=('random', 'bald'))]
  """,
      name='bad_strategy.py',
  )
  one_line_error('bald', grid=path, root=str(tmp_path))


def test_slurm_without_submitit(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'submitit', None)  # import submitit -> ImportError
  one_line_error(
      'executor slurm needs submitit',
      grid='launch/grids/gaussian.py',
      root=str(tmp_path),
      executor='slurm',
  )


def test_workdir_of_another_experiment(tmp_path):
  c = load_config('gaussian', 'smoke')
  c.strategies, c.seeds, c.train.epochs = ('random',), (0,), 7
  workdir = tmp_path / 'gaussian-smoke' / 'random-seed0'
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(c.to_json_best_effort())
  one_line_error(
      'holds a different experiment', grid='launch/grids/gaussian.py:smoke', root=str(tmp_path)
  )


def test_cli_error_is_one_line(tmp_path):
  env = dict(
      os.environ,
      PYTHONPATH=os.pathsep.join(
          [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
      ),
  )
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'launch.sweep',
          '--grid=launch/grids/gaussian.py:smoke',
          f'--root={tmp_path}',
          '--executor=kubernetes',
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: unknown executor 'kubernetes'; valid: local, submitit_local, slurm"
  ]


def test_local_runs_are_spread_over_devices_one_per_device(tmp_path, monkeypatch):
  # Record each subprocess's CUDA_VISIBLE_DEVICES and which devices are busy
  # at once, without running jal: each fake process ends after a few polls.
  started, busy, peak = [], set(), []

  class FakeProc:

    def __init__(self, cmd, env, **kwargs):
      del kwargs
      self.device, self.polls, self.returncode = env['CUDA_VISIBLE_DEVICES'], 0, None
      self.pid = len(started)
      assert self.device not in busy, 'two runs on one device'
      busy.add(self.device)
      peak.append(len(busy))
      started.append((cmd, self.device))

    def poll(self):
      self.polls += 1
      if self.polls >= 3 and self.returncode is None:
        self.returncode = 0
        busy.discard(self.device)
      return self.returncode

  monkeypatch.setattr(sweep.subprocess, 'Popen', FakeProc)
  monkeypatch.setattr(sweep.time, 'sleep', lambda s: None)
  runs, _, _ = sweep.plan('launch/grids/gaussian.py', str(tmp_path))
  failed = sweep._run_subprocesses(runs, str(tmp_path), max_parallel=8, devices=('0', '1'))
  assert not failed
  assert len(started) == len(runs) == 9
  assert {d for _, d in started} == {'0', '1'} and max(peak) == 2
  assert all('jal.main' in ' '.join(cmd) for cmd, _ in started)


def test_slurm_nodes_only_with_slurm(tmp_path):
  one_line_error(
      '--slurm_nodes=2: must be 1, or more with --executor=slurm',
      grid='launch/grids/gaussian.py',
      root=str(tmp_path),
      executor='local',
      options=sweep.ClusterOptions(nodes=2),
  )


class _FakeJob:
  job_id = '7'

  def result(self):
    return {}


class _FakeExecutor:
  """Records what the sweep asks of submitit, runs nothing."""

  seen = {}

  def __init__(self, folder, cluster):
    self.seen['cluster'] = cluster

  def update_parameters(self, **params):
    self.seen['params'] = params

  def map_array(self, fn, jobs):
    self.seen['jobs'] = jobs
    return [_FakeJob() for _ in jobs]


@pytest.mark.parametrize('nodes', [1, 2])
def test_multi_node_slurm_jobs_run_one_process_per_host(nodes, tmp_path, monkeypatch):
  fake = type('submitit', (), {'AutoExecutor': _FakeExecutor})
  monkeypatch.setattr(sweep, 'import_submitit', lambda executor: fake)
  runs = grid.expand(grid.load_grid('launch/grids/gaussian.py:smoke'))[:2]
  failed = sweep._run_submitit(
      runs, str(tmp_path), 'slurm', 0, sweep.ClusterOptions(nodes=nodes), str(tmp_path / 'logs')
  )
  assert failed == {}
  params, jobs = _FakeExecutor.seen['params'], _FakeExecutor.seen['jobs']
  if nodes == 1:
    assert 'nodes' not in params and [j['distributed'] for j in jobs] == [False, False]
  else:
    assert (params['nodes'], params['tasks_per_node']) == (2, 1)
    assert [j['distributed'] for j in jobs] == [True, True]


def test_distributed_job_initialises_jax_distributed_first(tmp_path, monkeypatch):
  from jal import experiment, sharding  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(sharding, 'initialize_distributed', lambda: calls.append('init'))
  monkeypatch.setattr(
      experiment, 'train_and_evaluate', lambda config, workdir: calls.append('train') or 'table'
  )
  run = grid.expand(grid.load_grid('launch/grids/gaussian.py:smoke'))[0]
  assert grid.run_one({**run.job(str(tmp_path)), 'distributed': True})['table'] == 'table'
  assert calls == ['init', 'train']
  calls.clear()
  grid.run_one(run.job(str(tmp_path)))
  assert calls == ['train']
