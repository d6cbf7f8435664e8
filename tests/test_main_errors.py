"""What a person sees when a command fails: one line, `error: ...`, no traceback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from jal import config_lib
from jal import checkpoints
from jal import logs
from jal import report
from jal import workdir
from tests.conftest import REPO, load_config
from tests.test_data import fake_cifar10_files, write_folder

ENV = {**os.environ, 'PYTHONPATH': str(REPO)}
SMOKE = f'--config={REPO}/configs/gaussian.py:smoke'
# Runs jal.main after the statements of argv[1] (a patch standing in for the machine).
PATCHED_MAIN = (
    'import runpy, sys; exec(sys.argv.pop(1)); sys.argv[0] = "jal.main"; '
    'runpy.run_module("jal.main", run_name="__main__")'
)


def run(args, module='jal.main', patch=None, timeout=120):
  cmd = [sys.executable, '-c', PATCHED_MAIN, patch] if patch else [sys.executable, '-m', module]
  return subprocess.run(
      cmd + [str(a) for a in args],
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def told(proc) -> list[str]:
  """stderr without absl's INFO lines (progress): what the person is told."""
  return [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith('I')]


def assert_one_line(proc, line, code=1):
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert told(proc) == [line], proc.stderr[-3000:]
  assert proc.returncode == code


# ----------------------------------------------------------------------------
# While absl parses the flags: the config file and its overrides.


def test_missing_config_file(tmp_path):
  assert_one_line(
      run([f'--config={tmp_path}/nope.py', f'--workdir={tmp_path}/w']),
      f'error: config file {tmp_path}/nope.py: No such file or directory',
  )
  # With an override it fails elsewhere in ml_collections, the same way.
  assert_one_line(
      run([f'--config={tmp_path}/nope.py:smoke', f'--workdir={tmp_path}/w', '--config.seeds=1']),
      f'error: config file {tmp_path}/nope.py: No such file or directory',
  )


def test_config_file_that_raises(tmp_path):
  path = tmp_path / 'raises.py'
  path.write_text('def get_config(arg=None):\n  raise RuntimeError("no config today")\n')
  assert_one_line(
      run([f'--config={path}', f'--workdir={tmp_path}/w']),
      f'error: config file {path}, line 2: RuntimeError: no config today',
  )
  # A ValueError (jal's config checks raise them) is its message alone.
  path.write_text('def get_config(arg=None):\n  raise ValueError(f"unknown arg {arg!r}")\n')
  assert_one_line(
      run([f'--config={path}:big', f'--workdir={tmp_path}/w']), "error: unknown arg 'big'"
  )


def test_config_file_with_a_syntax_error(tmp_path):
  path = tmp_path / 'broken.py'
  path.write_text('def get_config(arg=None):\n  return dict(a=1,,)\n')
  try:
    compile(path.read_text(), str(path), 'exec')
  except SyntaxError as e:
    expected = f'error: config file {path}, line 2: SyntaxError: {e.msg}'
  assert_one_line(run([f'--config={path}', f'--workdir={tmp_path}/w']), expected)


def test_override_typo_keeps_the_hint(tmp_path):
  assert_one_line(
      run([SMOKE, f'--workdir={tmp_path}/w', '--config.trian.members=3']),
      "error: --config.trian.members: no config field 'trian'; "
      'Did you mean "train" instead of "trian"?',
  )


def test_empty_seeds_name_the_field(tmp_path):
  assert_one_line(
      run([SMOKE, f'--workdir={tmp_path}/w', '--config.seeds=']),
      "error: config.seeds must be a non-empty list of distinct ints, got ['']",
  )
  assert not (tmp_path / 'w').exists()


def test_missing_flag(tmp_path):
  assert_one_line(
      run([SMOKE]), 'error: flag --workdir=None: Flag --workdir must have a value other than None.'
  )


# ----------------------------------------------------------------------------
# While it runs.


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'f').write_text('')
  assert_one_line(
      run([SMOKE, f'--workdir={tmp_path}/f']),
      f'error: workdir {tmp_path}/f is a file, not a folder',
  )


def test_read_only_workdir(tmp_path):
  w = tmp_path / 'ro'
  w.mkdir()
  # Root writes anywhere: deny the workdir's writes as a read-only folder would.
  deny = (
      'import errno, os; real = os.open\n'
      'def ro(p, flags, *a, **k):\n'
      f'  if str(p).startswith("{w}") and flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):\n'
      '    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))\n'
      '  return real(p, flags, *a, **k)\n'
      'os.open = ro'
  )
  assert_one_line(
      run([SMOKE, f'--workdir={w}'], patch=deny),
      f'error: cannot write to workdir {w}: Permission denied',
  )


def test_full_disk(tmp_path):
  w = tmp_path / 'w'
  full = (
      'import errno, os\n'
      'def full(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n'
      'os.fsync = full'
  )
  assert_one_line(
      run([SMOKE, f'--workdir={w}'], patch=full),
      f'error: no space left on device writing {w}/config.json; '
      'free some space and rerun the same command',
  )
  assert not w.exists()  # nothing half-written is left (the folder was this run's)


def test_atomic_write_names_the_path_and_leaves_no_temporary(tmp_path, monkeypatch):
  def full(fd):
    raise OSError(28, os.strerror(28))

  monkeypatch.setattr(os, 'fsync', full)
  path = tmp_path / 'metrics.jsonl'
  try:
    checkpoints.atomic_write(str(path), 'x')
  except OSError as e:
    assert logs.error_line(e) == (
        f'no space left on device writing {path}; free some space and rerun the same command'
    )
  else:
    raise AssertionError('no error')
  assert os.listdir(tmp_path) == []


def test_ctrl_c(tmp_path):
  w = tmp_path / 'w'
  # A shell's background job ignores SIGINT; a terminal's does not.
  default = 'import signal; signal.signal(signal.SIGINT, signal.default_int_handler)'
  cmd = [sys.executable, '-c', PATCHED_MAIN, default, SMOKE, f'--workdir={w}']
  proc = subprocess.Popen(
      cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 120
  while not (w / 'metrics.jsonl').exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=120)
  assert (w / 'metrics.jsonl').exists()
  assert_one_line(
      subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr),
      'interrupted; rerun the same command to resume',
      code=130,
  )


def test_pth_weights_without_torch(tmp_path):
  write_folder(tmp_path / 'data' / 'cifar-10-batches-py', fake_cifar10_files(n_per_batch=200)[0])
  weights = tmp_path / 'r18.pth'
  weights.write_bytes(b'')
  no_torch = 'import sys; sys.modules["torch"] = None'
  assert_one_line(
      run(
          [
              f'--config={REPO}/configs/imbalance.py:pretrained,smoke',
              f'--workdir={tmp_path}/w',
              f'--config.data_dir={tmp_path}/data',
              f'--config.model.pretrained_path={weights}',
          ],
          patch=no_torch,
      ),
      f'error: pretrained weights: reading {weights} needs torch; install torch or convert '
      'the file to .npz or .safetensors',
  )


def test_report_on_a_missing_workdir(tmp_path):
  assert_one_line(
      run([f'--workdir={tmp_path}/missing', f'--out={tmp_path}/out'], module='jal.report'),
      f'error: no such workdir: {tmp_path}/missing',
  )


def test_advise_error_is_printed_once(tmp_path):
  assert_one_line(
      run([f'--labels={tmp_path}/labels.csv', '--query=5'], module='jal.label.advise'),
      f'error: labels file not found: {tmp_path}/labels.csv (create it with the '
      'header line filename,label)',
  )


def label_args(tmp_path):
  (tmp_path / 'images').mkdir(exist_ok=True)
  (tmp_path / 'images' / 'a.png').write_bytes(b'')  # listed, never read here
  return [
      f'--images={tmp_path}/images',
      f'--labels={tmp_path}/labels.csv',
      f'--workdir={tmp_path}/w',
      f'--config={REPO}/configs/label.py:smoke',
  ]


def test_label_error_is_printed_once(tmp_path):
  proc = run(label_args(tmp_path), module='jal.label')
  # The message is jal.label's own (tests/test_label.py); here: once, alone.
  assert_one_line(proc, told(proc)[0])
  assert told(proc)[0].startswith(f'error: labels file not found: {tmp_path}/labels.csv')
  assert not (tmp_path / 'w').exists()


def test_label_on_a_busy_workdir(tmp_path):
  with workdir.locked(str(tmp_path / 'w')):
    info = json.loads((tmp_path / 'w' / '.lock').read_text())
    assert_one_line(
        run(label_args(tmp_path), module='jal.label'),
        f'error: workdir {tmp_path}/w is in use by pid {os.getpid()} on host '
        f'{socket.gethostname()} (started {info["started"]}: {info["command"]}); '
        'wait for it to end or stop it, then rerun',
    )


# ----------------------------------------------------------------------------
# results.md mid-run.


def test_results_table_says_when_a_cell_has_fewer_seeds():
  c = load_config('gaussian')
  # Mid-run: random has seeds 0-2 at rounds 0 and 1; coreset only seed 0, and
  # seed 1 at round 0.
  rows = [
      {'strategy': 'random', 'seed': s, 'round': r, 'accuracy': a}
      for r, accs in ((0, (0.80, 0.82, 0.84)), (1, (0.81, 0.83, 0.85)))
      for s, a in enumerate(accs)
  ]
  rows += [
      {'strategy': 'coreset', 'seed': 0, 'round': 0, 'accuracy': 0.80},
      {'strategy': 'coreset', 'seed': 1, 'round': 0, 'accuracy': 0.82},
      {'strategy': 'coreset', 'seed': 0, 'round': 1, 'accuracy': 0.86},
  ]
  strategies = config_lib.parse(c).strategies
  assert report.results_table(rows, c, strategies) == (
      'gaussian: test accuracy (%), mean ± std over 3 seed(s) [0, 1, 2] (fewer where a cell '
      'says so); query size 5, warmup 5, 5-member ensemble\n\n'
      '| Strategy | Warmup (n=5) | Selection 1 (n=10) |\n'
      '|---|---|---|\n'
      '| random | 82.0 ± 2.0 | 83.0 ± 2.0 |\n'
      '| coreset | 81.0 ± 1.4 (2 seeds) | 86.0 (1 seed) |\n'
      '| ensembles |  |  |\n'
  )
  # Every cell over every seed: no counts.
  full = [r for r in rows if r['strategy'] == 'random']
  assert report.results_table(full, c, strategies).endswith(
      'ensemble\n\n| Strategy | Warmup (n=5) | Selection 1 (n=10) |\n|---|---|---|\n'
      '| random | 82.0 ± 2.0 | 83.0 ± 2.0 |\n| coreset |  |  |\n| ensembles |  |  |\n'
  )
  assert 'fewer' not in report.results_table(full, c, strategies)


def test_results_table_of_an_imbalanced_task_shows_average_precision():
  c = load_config('gaussian')
  rows = [
      {'strategy': 'random', 'seed': s, 'round': 0, 'accuracy': 0.9, 'average_precision': ap}
      for s, ap in ((0, 0.5), (1, 0.7))
  ]
  rows.append(
      {'strategy': 'coreset', 'seed': 0, 'round': 0, 'accuracy': 0.9, 'average_precision': 0.25}
  )
  assert report.results_table(rows, c, ('random', 'coreset')) == (
      'gaussian: minority-class test average precision, mean ± std over 2 seed(s) [0, 1] (fewer '
      'where a cell says so); query size 5, warmup 5, 5-member ensemble\n\n'
      '| Strategy | Warmup (n=5) |\n'
      '|---|---|\n'
      '| random | 0.6000 ± 0.1414 |\n'
      '| coreset | 0.2500 (1 seed) |\n'
  )
  # One metric choice for results.md, the progress line and jal.report.
  assert report.headline_metric(rows) == 'average_precision'
  assert report.headline_metric([{'accuracy': 0.9}]) == 'accuracy'
  assert report.headline_metric([{'accuracy': 0.9, 'average_precision': None}]) == 'accuracy'


def test_error_line_of_os_errors():
  assert logs.error_line(PermissionError(13, 'Permission denied', '/w/x')) == (
      '/w/x: Permission denied'
  )
  assert logs.error_line(FileNotFoundError('no config.json in workdir /w')) == (
      'no config.json in workdir /w'
  )
  assert logs.error_line(ValueError('two\nlines')) == 'two; lines'
