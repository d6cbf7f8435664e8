r"""Plays the adversary against jal's commands and prints one line per probe.

    python -m launch.adversary [--root=/tmp/jal_adversary] [--only=pickle,lock]

Each probe runs jal's real command lines in subprocesses (as a user would) on
inputs built to break them, and checks the outcome a researcher relies on:

  pickle      a CIFAR batch whose extra key unpickles to `os.system(...)`: the
              command must not run, and the load stops with one line naming the file
  lock        two `jal.main` processes on one workdir with different configs: the
              second is refused at once naming the first; after a `kill -9` of the
              first, its lock is gone (the next refusal says "different experiment")
  config_arg  `configs/gaussian.py:smok`: one line listing the valid args, no work
  divergence  a learning rate of 1e6 trains to garbage: one line naming strategy,
              seed and round; `learning_rate=inf` is refused before any compute
  dev_zero    `jal.label` on a folder with `x.png -> /dev/zero` and a FIFO `y.png`:
              no hang, one line naming the file
  bitflip     flipped bytes in a finished run's latest loop-state checkpoint: the
              rerun reports the step, resumes from the intact one and ends with
              metrics and selections byte-equal to an uninterrupted run

Exits 1 if any probe fails. `tests/test_adversary.py` runs it in CI.
"""

import dataclasses
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from absl import app
from absl import flags

_ROOT = flags.DEFINE_string('root', None, 'Scratch folder (default: a new temporary one).')
_ONLY = flags.DEFINE_list('only', None, 'Probes to run (default: all).')

REPO = pathlib.Path(__file__).resolve().parents[1]
# Generous: a probe that takes this long has hung.
_TIMEOUT_S = 300


@dataclasses.dataclass
class Outcome:
  passed: bool
  detail: str


def _run(args: list[str], timeout: float = _TIMEOUT_S, cwd=REPO) -> subprocess.CompletedProcess:
  """Runs `python -m <args>` and returns it; a hang comes back as rc None."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.pop('JAL_DATA_DIR', None)  # probes name their own data
  try:
    return subprocess.run(
        [sys.executable, '-m', *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
  except subprocess.TimeoutExpired as e:
    return subprocess.CompletedProcess(
        e.cmd, None, _text(e.stdout), _text(e.stderr) + f'\n(killed after {timeout:.0f} s)'
    )


def _text(out) -> str:
  return out.decode(errors='replace') if isinstance(out, bytes) else (out or '')


def error_lines(stderr: str) -> list[str]:
  """The lines of `stderr` that report an error: `error: ...` or absl's E-lines."""
  return [l for l in stderr.splitlines() if l.startswith('error:') or re.match(r'E\d{4} ', l)]


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> Outcome:
  """Passes if `proc` failed fast with one error line holding every needle, no traceback."""
  if proc.returncode is None:
    return Outcome(False, proc.stderr.strip().splitlines()[-1].strip('()'))
  out = proc.stderr + proc.stdout
  errors = error_lines(proc.stderr)
  line = errors[0] if errors else (proc.stderr.strip().splitlines() or [''])[-1]
  if proc.returncode == 0:
    return Outcome(False, f'exit 0; last line: {line[:200]}')
  if 'Traceback' in out:
    return Outcome(
        False,
        f'a traceback of {out.count(chr(10))} lines; last: '
        f'{out.strip().splitlines()[-1][:200]}',
    )
  if len(errors) != 1:
    return Outcome(False, f'{len(errors)} error lines: {" | ".join(e[:120] for e in errors)}')
  missing = [n for n in needles if n not in line]
  if missing:
    return Outcome(False, f'the error line lacks {missing}: {line[:200]}')
  return Outcome(True, line[:200])


# ----------------------------------------------------------------------------
# Probes. Each takes a fresh scratch folder and returns an Outcome.


class _Payload:
  """Unpickles to a call of os.system: what a tampered data file could hold."""

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def probe_pickle(tmp: pathlib.Path) -> Outcome:
  marker = tmp / 'PWNED'
  folder = tmp / 'data' / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  batch = {b'data': bytes(3072), b'labels': [0], b'extra': _Payload(f'touch {marker}')}
  (folder / 'data_batch_1').write_bytes(pickle.dumps(batch, protocol=2))
  for name in (
      'data_batch_2',
      'data_batch_3',
      'data_batch_4',
      'data_batch_5',
      'test_batch',
      'batches.meta',
  ):
    (folder / name).write_bytes(b'')
  proc = _run(
      [
          'jal.main',
          '--config=configs/imbalance.py:smoke',
          f'--workdir={tmp / "w"}',
          f'--config.data_dir={tmp / "data"}',
      ]
  )
  if marker.exists():
    return Outcome(False, 'the payload ran (the marker file exists)')
  return _one_line_error(proc, 'data_batch_1')


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    if path.exists():
      return True
    time.sleep(0.1)
  return False


def probe_lock(tmp: pathlib.Path) -> Outcome:
  work = tmp / 'w'
  base = [
      'jal.main',
      '--config=configs/gaussian.py',
      f'--workdir={work}',
      '--config.seeds=0,1,2,3,4,5,6,7,8,9',
  ]
  first = subprocess.Popen(
      [sys.executable, '-m', *base, '--config.train.learning_rate=0.01'],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    if not _wait_for(work / 'config.json', first, _TIMEOUT_S):
      return Outcome(False, 'the first run never wrote config.json')
    # The same experiment: no identity check can stop it, only the lock.
    second = _run(base + ['--config.train.learning_rate=0.01'])
    still_running = first.poll() is None
    result = _one_line_error(second, str(first.pid))
    if not result.passed:
      return Outcome(False, f'the second run on the busy workdir: {result.detail}')
    if not still_running:
      return Outcome(
          False, 'the first run ended before the second was refused; rerun with more seeds'
      )
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The kernel dropped the killed holder's lock: a third run now meets the
  # workdir's identity check, not the lock.
  third = _run(base + ['--config.train.learning_rate=0.02'])
  after = _one_line_error(third, 'different experiment')
  if not after.passed:
    return Outcome(False, f'after kill -9 of the holder: {after.detail}')
  return Outcome(True, f'{result.detail} || after kill -9: {after.detail}')


def probe_config_arg(tmp: pathlib.Path) -> Outcome:
  work = tmp / 'w'
  proc = _run(['jal.main', '--config=configs/gaussian.py:smok', f'--workdir={work}'])
  result = _one_line_error(proc, 'smok', 'smoke')
  if result.passed and (work / 'config.json').exists():
    return Outcome(False, 'refused, but only after writing the workdir')
  return result


def probe_divergence(tmp: pathlib.Path) -> Outcome:
  proc = _run(
      [
          'jal.main',
          '--config=configs/gaussian.py:smoke',
          f'--workdir={tmp / "w"}',
          '--config.strategies=coreset',
          '--config.train.learning_rate=1e6',
      ]
  )
  diverged = _one_line_error(proc, 'diverged', 'seed', 'round')
  if not diverged.passed:
    return diverged
  proc = _run(
      [
          'jal.main',
          '--config=configs/gaussian.py:smoke',
          f'--workdir={tmp / "inf"}',
          '--config.train.learning_rate=inf',
      ]
  )
  refused = _one_line_error(proc, 'learning_rate')
  if not refused.passed:
    return Outcome(False, f'learning_rate=inf: {refused.detail}')
  if (tmp / 'inf' / 'config.json').exists():
    return Outcome(False, 'learning_rate=inf refused only after writing the workdir')
  return Outcome(True, f'{diverged.detail} || inf: {refused.detail}')


def _label_folder(tmp: pathlib.Path) -> pathlib.Path:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = tmp / 'images'
  images.mkdir()
  for i in range(4):
    Image.new('L', (28, 28), color=40 * i).save(images / f'img{i}.png')
  (tmp / 'labels.csv').write_text('filename,label\n')
  return images


def probe_dev_zero(tmp: pathlib.Path) -> Outcome:
  details = []
  for name, make in (
      ('x.png', lambda p: p.symlink_to('/dev/zero')),
      ('y.png', lambda p: os.mkfifo(p)),
  ):
    case = tmp / name.split('.')[0]
    case.mkdir()
    images = _label_folder(case)
    make(images / name)
    proc = _run(
        [
            'jal.label',
            f'--images={images}',
            f'--labels={case / "labels.csv"}',
            f'--workdir={case / "w"}',
            '--query=2',
            '--classes=a,b',
        ],
        timeout=120,
    )
    result = _one_line_error(proc, name)
    if not result.passed:
      return Outcome(False, f'{name}: {result.detail}')
    details.append(result.detail)
  return Outcome(True, ' || '.join(details))


def _flip_bytes(step_dir: pathlib.Path) -> int:
  """Flips one byte in the middle of every file of `step_dir`; returns how many."""
  count = 0
  for path in sorted(p for p in step_dir.rglob('*') if p.is_file() and p.stat().st_size > 0):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    count += 1
  return count


def probe_bitflip(tmp: pathlib.Path) -> Outcome:
  base = [
      'jal.main',
      '--config=configs/gaussian.py:smoke',
      '--config.seeds=0',
      '--config.strategies=random',
  ]
  reference = _run(base + [f'--workdir={tmp / "ref"}'])
  if reference.returncode != 0:
    return Outcome(False, f'the reference run failed: {reference.stderr[-300:]}')
  work = tmp / 'w'
  if _run(base + [f'--workdir={work}']).returncode != 0:
    return Outcome(False, 'the run to damage failed')
  run_dir = work / 'checkpoints' / 'random_seed0'
  steps = sorted((p for p in run_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  latest = steps[-1]
  flipped = _flip_bytes(latest)
  rerun = _run(base + [f'--workdir={work}'])
  if rerun.returncode != 0:
    return Outcome(
        False,
        f'the rerun failed (exit {rerun.returncode}): '
        f'{rerun.stderr.strip().splitlines()[-1][:200]}',
    )
  warned = [l for l in rerun.stderr.splitlines() if str(latest) in l and 'damaged' in l]
  if not warned:
    return Outcome(False, f'the rerun never named the damaged step {latest}')
  # absl's INFO lines aside, the one warning is all the rerun prints.
  said = [l for l in rerun.stderr.splitlines() if l.strip() and not re.match(r'I\d{4} ', l)]
  if said != warned[:1]:
    return Outcome(
        False,
        f'the rerun printed {len(said)} lines besides INFO: '
        f'{" | ".join(l[:120] for l in said)}',
    )
  for name in ('metrics.jsonl', 'selections.jsonl'):
    if (work / name).read_bytes() != (tmp / 'ref' / name).read_bytes():
      return Outcome(False, f'{name} differs from the uninterrupted run')
  return Outcome(
      True,
      f'{flipped} files flipped in step {latest.name}; warned: '
      f'{warned[0][-160:]}; metrics and selections byte-equal',
  )


PROBES: dict[str, Callable[[pathlib.Path], Outcome]] = {
    'pickle': probe_pickle,
    'lock': probe_lock,
    'config_arg': probe_config_arg,
    'divergence': probe_divergence,
    'dev_zero': probe_dev_zero,
    'bitflip': probe_bitflip,
}


def run_probes(names: list[str], root: pathlib.Path) -> dict[str, Outcome]:
  """Runs the named probes, each in its own folder under `root`; prints one line each."""
  outcomes = {}
  for name in names:
    tmp = root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    try:
      outcome = PROBES[name](tmp)
    except Exception as e:  # pylint: disable=broad-except
      outcome = Outcome(False, f'the probe itself failed: {type(e).__name__}: {e}')
    outcomes[name] = outcome
    print(
        f'{"PASS" if outcome.passed else "FAIL"} {name} ({time.monotonic() - t0:.0f} s): '
        f'{outcome.detail}',
        flush=True,
    )
  return outcomes


def main(argv):
  del argv
  names = _ONLY.value or list(PROBES)
  unknown = [n for n in names if n not in PROBES]
  if unknown:
    sys.exit(f'error: unknown probe {unknown[0]!r}; valid: {", ".join(PROBES)}')
  root = pathlib.Path(_ROOT.value or tempfile.mkdtemp(prefix='jal_adversary_'))
  outcomes = run_probes(names, root)
  failed = [n for n, o in outcomes.items() if not o.passed]
  print(
      f'probes: {len(outcomes) - len(failed)} of {len(outcomes)} held'
      + (f'; failed: {", ".join(failed)}' if failed else '')
  )
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  app.run(main)
