r"""The study's ResNet-18 CIFAR-10 rows on one accelerator, in resumable chunks.

    python -m launch.accelerator --root=workdirs/accelerator --out=$OUT
    python -m launch.accelerator --root=/tmp/acc --out=/tmp/acc_out --smoke

Runs `python -m jal.main` for configs/cifar10_2class.py:low and :high (Table
3.2, CIFAR-10 2-class rows) and configs/imbalance.py (Table 4.2, vanilla
CIFAR-10), in that order, one workdir each under --root. A chunk lasts at
most --chunk_seconds (default 540 s: under the device machine's 10-minute
command limit, with time to copy): the settings' processes run one after
another within it, and the one running when time is up gets SIGINT (jal's
Ctrl-C: it exits 130, and a rerun resumes from its last checkpoint), then
SIGTERM and SIGKILL if it lingers, all before the chunk ends. Each process
saves a round's training in progress every --chunk_seconds / 4 seconds
(`fit_checkpoint_seconds`, CPU fits only; a GPU round trains in seconds), so
a chunk always keeps its work. After every process the workdir's small files
(`SMALL_FILES`, never checkpoints) are copied to --out/<setting>/, with
chunks.jsonl, one line per process: setting, outcome, seconds, rows.

Rerunning the same command continues where the last stopped: finished
settings (their last process exited 0) are skipped and jal resumes the
others. --chunks=N runs N chunks in one call (0: until every setting is
done). A chunk in which a setting makes no progress (no file of its workdir
changes) is an error: the chunk is shorter than jal's start-up.

`:smoke` (`--smoke`) passes `smoke` to the configs: seconds-long runs on a
300-image pool, for a CPU test of the chunking (tests/test_accelerator.py).
CIFAR-10 comes from $JAL_DATA_DIR or --data_dir. `run_chunks` does the
work; `main` only parses flags.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import NamedTuple, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_FILES = ('config.json', 'metrics.jsonl', 'selections.jsonl', 'timings.jsonl', 'results.md')
LOG = 'chunks.jsonl'


class ChunkError(ValueError):
  """A one-line error: a jal process failed, or a chunk made no progress."""


class Setting(NamedTuple):
  name: str  # the workdir's name under --root (the config's `name`)
  config: str  # relative to the repository
  arg: Optional[str]


SETTINGS = (
    Setting('cifar10_2class_low', 'configs/cifar10_2class.py', 'low'),
    Setting('cifar10_2class_high', 'configs/cifar10_2class.py', 'high'),
    Setting('imbalance', 'configs/imbalance.py', None),
)


def command(
    setting: Setting,
    workdir: str,
    smoke: bool,
    fit_checkpoint_seconds: float,
    data_dir: Optional[str] = None,
    extra: Sequence[str] = (),
) -> list[str]:
  """The `python -m jal.main` command line of one setting's process."""
  arg = ','.join(a for a in (setting.arg, 'smoke' if smoke else None) if a)
  cmd = [
      sys.executable,
      '-m',
      'jal.main',
      f'--config={os.path.join(REPO, setting.config)}' + (f':{arg}' if arg else ''),
      f'--workdir={os.path.abspath(workdir)}',
      f'--config.fit_checkpoint_seconds={fit_checkpoint_seconds:g}',
  ]
  if data_dir:
    cmd.append(f'--config.data_dir={os.path.abspath(data_dir)}')
  return cmd + list(extra)


def _rows(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return sum(1 for line in f if line.strip())
  except FileNotFoundError:
    return 0


def _fingerprint(workdir: str) -> set:
  """(path, size, mtime) of the workdir's files but its lock and config: what
  changes when a process makes progress (a round or a fit's saved progress)."""
  out = set()
  for d, _, files in os.walk(workdir):
    for f in files:
      if f in ('.lock', 'config.json'):
        continue
      p = os.path.join(d, f)
      with contextlib.suppress(FileNotFoundError):
        st = os.stat(p)
        out.add((os.path.relpath(p, workdir), st.st_size, st.st_mtime_ns))
  return out


def _default_sigint():
  # A background job's children inherit an ignored SIGINT; jal's Ctrl-C path needs it.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_process(
    cmd: Sequence[str],
    seconds: float,
    log_path: str,
    grace: float = 30.0,
    rows_of: Optional[str] = None,
    stop_at_rows: int = 0,
    poll: float = 0.2,
) -> tuple[str, int]:
  """Runs `cmd` for at most `seconds`, then stops it as Ctrl-C would.

  SIGINT at `seconds - grace`, SIGTERM at `seconds - grace / 3`, SIGKILL at
  `seconds`. With `stop_at_rows` (for tests), SIGINT also goes once the
  metrics.jsonl of workdir `rows_of` reaches that many rows, if it started below.

  Returns:
    (outcome, returncode): outcome 'finished' (exit 0), 'stopped' (it exited
    after the SIGINT), 'killed' (SIGTERM or SIGKILL needed) or 'failed'.
  """
  start = time.monotonic()
  rows0 = _rows(rows_of) if rows_of else 0
  sent = None
  with open(log_path, 'a') as log:
    # pylint: disable-next=subprocess-popen-preexec-fn
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
        start_new_session=True,
    )
    try:
      while proc.poll() is None:
        elapsed = time.monotonic() - start
        rows_done = stop_at_rows and rows0 < stop_at_rows <= _rows(rows_of)
        if elapsed >= seconds:
          proc.kill()
          sent = signal.SIGKILL
        elif elapsed >= seconds - grace / 3 and sent == signal.SIGINT:
          proc.terminate()
          sent = signal.SIGTERM
        elif (elapsed >= seconds - grace or rows_done) and sent is None:
          proc.send_signal(signal.SIGINT)
          sent = signal.SIGINT
        time.sleep(poll)
    except BaseException:  # Ctrl-C of the launcher: stop jal the same way
      proc.send_signal(signal.SIGINT)
      try:
        proc.wait(grace)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      raise
  rc = proc.returncode
  if rc == 0:
    return 'finished', rc
  if sent is None:
    return 'failed', rc
  # 130: jal's Ctrl-C exit; -SIGINT: interrupted before jal's handler was set.
  stopped = sent == signal.SIGINT and rc in (130, -signal.SIGINT)
  return ('stopped' if stopped else 'killed'), rc


def _tail(path: str, n: int = 3) -> str:
  with open(path, errors='replace') as f:
    lines = [line.rstrip() for line in f if line.strip()]
  return ' | '.join(lines[-n:])


def _finished(root: str) -> set:
  """Settings whose last process exited 0, from <root>/chunks.jsonl."""
  last = {}
  with contextlib.suppress(FileNotFoundError), open(os.path.join(root, LOG)) as f:
    for line in f:
      rec = json.loads(line)
      last[rec['setting']] = rec['outcome']
  return {k for k, v in last.items() if v == 'finished'}


def copy_small_files(workdir: str, out: str) -> list[str]:
  """Copies SMALL_FILES that exist from `workdir` to `out` (created)."""
  os.makedirs(out, exist_ok=True)
  copied = []
  for f in SMALL_FILES:
    src = os.path.join(workdir, f)
    if os.path.isfile(src):
      shutil.copy2(src, os.path.join(out, f))
      copied.append(f)
  return copied


def _record(root: str, out: str, rec: dict) -> None:
  for folder in {os.path.abspath(root), os.path.abspath(out)}:
    with open(os.path.join(folder, LOG), 'a') as f:
      f.write(json.dumps(rec) + '\n')


def run_chunks(
    root: str,
    out: str,
    chunk_seconds: float = 540.0,
    chunks: int = 1,
    smoke: bool = False,
    only: Sequence[str] = (),
    data_dir: Optional[str] = None,
    extra: Sequence[str] = (),
    grace: Optional[float] = None,
    stop_at_rows: int = 0,
    say=print,
) -> list[dict]:
  """Runs chunks until `chunks` are done (0: until every setting is finished).

  Args:
    root: one workdir per setting, <root>/<setting name>; kept between calls.
    out: where the small files and chunks.jsonl are copied after each process.
    chunk_seconds: wall time of one chunk, every process and copy included.
    chunks: chunks to run in this call; 0 runs until all settings finish.
    smoke: pass `smoke` to the configs.
    only: setting names to run (default: all of SETTINGS).
    data_dir: --config.data_dir (else jal reads $JAL_DATA_DIR).
    extra: more jal.main flags, e.g. ['--config.seeds=0,1'].
    grace: seconds between SIGINT and the chunk's end (default:
      min(30, chunk_seconds / 10)).
    stop_at_rows: for tests: also stop the process that brings metrics.jsonl
      to this many rows.
    say: progress lines go here.

  Returns:
    the chunks.jsonl records of this call.

  Raises:
    ValueError: an unknown setting name, or too short a chunk.
    ChunkError: a jal process failed (its log's last lines), or one made no
      progress in its time.
  """
  known = {s.name: s for s in SETTINGS}
  unknown = [n for n in only if n not in known]
  if unknown:
    raise ValueError(f'unknown setting(s) {unknown}; choose from {sorted(known)}')
  todo = [known[n] for n in only] if only else list(SETTINGS)
  grace = min(30.0, chunk_seconds / 10) if grace is None else grace
  if chunk_seconds - 1.0 < 2 * grace:
    raise ValueError(f'a chunk of {chunk_seconds:g} s leaves no time for a process')
  os.makedirs(root, exist_ok=True)
  os.makedirs(out, exist_ok=True)
  records, done_chunks = [], 0
  while chunks == 0 or done_chunks < chunks:
    pending = [s for s in todo if s.name not in _finished(root)]
    if not pending:
      say(f'all done: {", ".join(s.name for s in todo)}')
      break
    chunk_end = time.monotonic() + chunk_seconds
    for setting in pending:
      left = chunk_end - time.monotonic() - 1.0  # a second for the copy
      if left < 2 * grace:
        break
      workdir = os.path.join(root, setting.name)
      before, rows0, t0 = _fingerprint(workdir), _rows(workdir), time.monotonic()
      cmd = command(setting, workdir, smoke, chunk_seconds / 4, data_dir, extra)
      log_path = os.path.join(root, f'{setting.name}.log')
      say(f'{setting.name}: {" ".join(cmd[1:])} (at most {left:.0f} s)')
      outcome, rc = run_process(cmd, left, log_path, grace, workdir, stop_at_rows)
      rec = {
          'setting': setting.name,
          'chunk': done_chunks,
          'outcome': outcome,
          'returncode': rc,
          'seconds': round(time.monotonic() - t0, 1),
          'rows_before': rows0,
          'rows_after': _rows(workdir),
      }
      _record(root, out, rec)
      records.append(rec)
      copy_small_files(workdir, os.path.join(out, setting.name))
      shutil.copy2(log_path, os.path.join(out, setting.name, 'jal.log'))
      say(
          f'{setting.name}: {outcome} after {rec["seconds"]} s, metrics rows '
          f'{rows0} -> {rec["rows_after"]}'
      )
      if outcome == 'failed':
        raise ChunkError(f'{setting.name}: jal.main exited {rc}: {_tail(log_path)}')
      if outcome != 'finished':
        if _fingerprint(workdir) == before:
          raise ChunkError(
              f'{setting.name}: a {left:.0f} s process made no progress; '
              'give a longer --chunk_seconds'
          )
        break  # the chunk's time is up
    done_chunks += 1
  with contextlib.suppress(FileNotFoundError):
    shutil.copy2(os.path.join(root, LOG), os.path.join(out, 'chunks_all.jsonl'))
  return records


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string(
      'root',
      os.path.join(REPO, 'workdirs', 'accelerator'),
      'One workdir per setting; keep it between calls to resume.',
  )
  flags.DEFINE_string('out', None, 'Where the small files go (e.g. $OUT on a device machine).')
  flags.DEFINE_float('chunk_seconds', 540.0, 'Wall time of one chunk, everything included.')
  flags.DEFINE_integer('chunks', 1, 'Chunks in this call; 0: until every setting is done.')
  flags.DEFINE_bool('smoke', False, 'Pass `smoke` to the configs (a CPU test).')
  flags.DEFINE_list(
      'only', [], f'Settings to run (default all: {",".join(s.name for s in SETTINGS)}).'
  )
  flags.DEFINE_string('data_dir', None, 'CIFAR-10 folder parent; default $JAL_DATA_DIR.')
  flags.DEFINE_multi_string('jal_flag', [], 'More jal.main flags, e.g. --jal_flag=--config.seeds=0')
  flags.mark_flags_as_required(['out'])


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from jal import logs  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  with logs.one_line_errors('interrupted; rerun the same command to resume'):
    run_chunks(
        f.root,
        f.out,
        f.chunk_seconds,
        f.chunks,
        f.smoke,
        f.only,
        f.data_dir,
        f.jal_flag,
        say=lambda m: print(m, flush=True),
    )


if __name__ == '__main__':
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  from jal import logs as _logs  # pylint: disable=g-import-not-at-top

  _define_flags()
  _app.run(main, flags_parser=_logs.parse_flags)
