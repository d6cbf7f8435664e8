r"""Runs a grid of jal experiments, one workdir per run, then merges the results.

    python -m launch.sweep --grid=launch/grids/gaussian.py:smoke --root=/tmp/sweep
    python -m launch.sweep --grid=launch/grids/study.py --root=$SCRATCH/study \
        --executor=slurm --slurm_partition=gpu --slurm_gpus_per_node=1 \
        --slurm_time_min=240 --slurm_cpus_per_task=8

Executors:
  local           one run after another in this process; with --max_parallel>1,
                  up to that many `python -m jal.main` subprocesses at a time
                  (logs in <root>/logs/).
  submitit_local  submitit's local executor: each run is a submitit job (a
                  subprocess running `launch.grid.run_one`), up to
                  --max_parallel at a time (default: the CPU count).
  slurm           submitit's SLURM executor: one job array, at most
                  --max_parallel tasks at a time (default: all).

A rerun skips runs whose workdir holds every round of every (strategy, seed),
resumes the others from their checkpoints, and merges all workdirs into one
report (`jal.report.write_report`) in --report_out (default <root>/report).
Bad input (unknown executor or grid file, a missing config, slurm without
submitit, a workdir of another experiment) is a one-line error before any
compute. A sweep holds its root's lock (jal.workdir), so a second sweep on it
is refused at once (a --dry_run is not: it only reads); each run locks its
own workdir, whichever executor runs it. `run_sweep` does the work; `main`
only parses flags.
"""

import collections
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

from absl import logging

from launch import grid as grid_lib
from launch.grid import GridError, Run  # pylint: disable=g-importing-member

EXECUTORS = ('local', 'submitit_local', 'slurm')


class SweepError(GridError):
  """A one-line error about a sweep."""


@dataclasses.dataclass
class ClusterOptions:
  """Resources of each submitit job (slurm; timeout and GPUs also for local)."""

  partition: Optional[str] = None
  gpus_per_node: Optional[int] = None  # None: 1 on slurm, 0 on submitit_local
  time_min: int = 240  # per job; a requeued job resumes
  cpus_per_task: Optional[int] = None
  mem_gb: Optional[int] = None
  account: Optional[str] = None
  nodes: int = 1  # slurm: >1 runs each job on that many hosts


@dataclasses.dataclass
class SweepResult:
  runs: list  # [Run], grid order
  actions: dict  # name -> 'skipped' | 'resumed' | 'started'
  failed: dict  # name -> one-line reason
  workdirs: list  # the workdirs merged into the report
  report: Optional[str]  # path of report.md, None if nothing to merge
  root: str = ''

  @property
  def counts(self):
    return collections.Counter(self.actions.values())


def _say(msg: str) -> None:
  print(msg, flush=True)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'.rstrip(': ')


def import_submitit(executor: str):
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SweepError(
        f'executor {executor} needs submitit, which is not installed (pip install submitit)'
    ) from None
  return submitit


def check_executor(executor: str, dry_run: bool = False) -> None:
  if executor not in EXECUTORS:
    raise SweepError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
  if executor != 'local':
    import_submitit(executor)
  if executor == 'slurm' and not dry_run and not (shutil.which('srun') and shutil.which('sbatch')):
    raise SweepError(
        'executor slurm needs srun and sbatch on PATH; run the sweep on a SLURM '
        'login node (or use --executor=submitit_local)'
    )


def plan(grid: str, root: str) -> tuple[list, dict, dict]:
  """Expands the grid and classifies each run by its workdir.

  Returns:
    (runs, actions {name: skipped|resumed|started}, details {name: text}).
  """
  runs = grid_lib.expand(grid_lib.load_grid(grid))
  actions, details = {}, {}
  for run in runs:
    state, detail = grid_lib.workdir_state(run, root)
    actions[run.name] = {'finished': 'skipped', 'partial': 'resumed', 'new': 'started'}[state]
    details[run.name] = detail
  return runs, actions, details


@contextlib.contextmanager
def _repo_importable():
  """Puts the repo root on PYTHONPATH, so subprocesses import jal and launch."""
  old = os.environ.get('PYTHONPATH')
  parts = [p for p in (old or '').split(os.pathsep) if p]
  if str(grid_lib.REPO) not in parts:
    os.environ['PYTHONPATH'] = os.pathsep.join([str(grid_lib.REPO)] + parts)
  try:
    yield
  finally:
    if old is None:
      os.environ.pop('PYTHONPATH', None)
    else:
      os.environ['PYTHONPATH'] = old


# ----------------------------------------------------------------------------
# Executors. Each takes the runs to do and returns {name: failure reason}.


def _run_in_process(runs, root):
  from jal import logs  # pylint: disable=g-import-not-at-top

  failed = {}
  for i, run in enumerate(runs, 1):
    _say(f'[{i}/{len(runs)}] running {run.name}')
    try:
      grid_lib.run_one(run.job(root))
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, logs.USER_ERRORS):  # one line says it (a busy workdir, a full disk)
        logging.warning('run %s failed: %s', run.name, e)
      else:
        logging.exception('run %s failed', run.name)
      failed[run.name] = _first_line(e)
  return failed


def _log_path(root, run):
  return os.path.join(root, 'logs', run.name.replace('/', '__') + '.log')


def jal_main_command(run: Run, root: str) -> list[str]:
  """The `python -m jal.main` command line of one run."""
  return [
      sys.executable,
      '-m',
      'jal.main',
      *grid_lib.jal_main_flags(run),
      f'--workdir={os.path.abspath(run.workdir(root))}',
  ]


def _run_subprocesses(runs, root, max_parallel, devices=()):
  """Runs `python -m jal.main` subprocesses, at most `max_parallel` at a time.

  With `devices` (accelerator ids), each subprocess sees only one free device
  (CUDA_VISIBLE_DEVICES) and at most one run holds a device at a time.
  """
  os.makedirs(os.path.join(root, 'logs'), exist_ok=True)
  pending, running, failed = collections.deque(runs), {}, {}
  free = collections.deque(devices)
  if devices:
    max_parallel = len(devices)
  while pending or running:
    while pending and len(running) < max_parallel:
      run = pending.popleft()
      device = free.popleft() if devices else None
      env = dict(os.environ)
      if device is not None:
        env['CUDA_VISIBLE_DEVICES'] = device
      log = open(_log_path(root, run), 'a')  # pylint: disable=consider-using-with
      proc = subprocess.Popen(
          jal_main_command(run, root),
          stdout=log,
          env=env,
          stderr=subprocess.STDOUT,
          cwd=str(grid_lib.REPO),
      )
      on = f', device {device}' if device is not None else ''
      _say(f'started {run.name} (pid {proc.pid}{on}, log {_log_path(root, run)})')
      running[run.name] = (proc, log, run, device)
    for name, (proc, log, run, device) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        del running[name]
        if device is not None:
          free.append(device)
        if proc.returncode:
          failed[name] = f'exit status {proc.returncode}; see {_log_path(root, run)}'
        _say(f'{"FAILED" if proc.returncode else "finished"} {name}')
    time.sleep(0.2)
  return failed


def _job_failure(e, job) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  # submitit's message holds the job's traceback; its last error line says why.
  errors = [l for l in lines if l.split(':')[0].endswith(('Error', 'Exception', 'Interrupt'))]
  reason = errors[-1] if errors else _first_line(e)
  try:
    where = f'; logs: {job.paths.stderr}'
  except Exception:  # pylint: disable=broad-except
    where = ''
  return f'{reason}{where}'


def _run_submitit(runs, root, cluster, max_parallel, options, folder):
  submitit = import_submitit('slurm' if cluster == 'slurm' else 'submitit_local')
  from launch import job as job_lib  # pylint: disable=g-import-not-at-top

  try:
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  except RuntimeError as e:
    raise SweepError(f'submitit {cluster} executor: {_first_line(e)}') from None
  params = {'name': 'jal-sweep', 'timeout_min': int(options.time_min)}
  if cluster == 'slurm':
    params['gpus_per_node'] = 1 if options.gpus_per_node is None else options.gpus_per_node
    params['slurm_array_parallelism'] = max_parallel or len(runs)
    for key, value in (
        ('slurm_partition', options.partition),
        ('cpus_per_task', options.cpus_per_task),
        ('mem_gb', options.mem_gb),
        ('slurm_account', options.account),
    ):
      if value is not None:
        params[key] = value
    if options.nodes > 1:
      # One process per host; each calls jax.distributed.initialize() (its
      # coordinator from SLURM's environment) and shards over every host's GPUs.
      params.update(nodes=options.nodes, tasks_per_node=1)
  else:
    params['gpus_per_node'] = options.gpus_per_node or 0
  executor.update_parameters(**params)
  fn = job_lib.RunJob()
  jobs = [{**r.job(root), 'distributed': cluster == 'slurm' and options.nodes > 1} for r in runs]
  failed = {}

  def collect(run, job):
    try:
      job.result()
      _say(f'finished {run.name} (job {job.job_id})')
    except Exception as e:  # pylint: disable=broad-except
      failed[run.name] = _job_failure(e, job)
      _say(f'FAILED {run.name} (job {job.job_id}): {failed[run.name]}')

  limit = max_parallel or (len(runs) if cluster == 'slurm' else (os.cpu_count() or 1))
  if cluster == 'slurm' or limit >= len(runs):
    submitted = executor.map_array(fn, jobs)
    for run, job in zip(runs, submitted):
      _say(f'submitted {run.name} as job {job.job_id}')
    for run, job in zip(runs, submitted):
      collect(run, job)
    return failed
  # submitit's local executor starts every job at once: keep `limit` in flight.
  pending, running = collections.deque(zip(runs, jobs)), []
  while pending or running:
    while pending and len(running) < limit:
      run, spec = pending.popleft()
      job = executor.submit(fn, spec)
      _say(f'submitted {run.name} as job {job.job_id}')
      running.append((run, job))
    for run, job in list(running):
      if job.done():
        running.remove((run, job))
        collect(run, job)
    time.sleep(0.2)
  return failed


# ----------------------------------------------------------------------------
# The sweep.


def run_sweep(
    grid: str,
    root: str,
    executor: str = 'local',
    max_parallel: int = 0,
    report_out: Optional[str] = None,
    options: Optional[ClusterOptions] = None,
    submitit_folder: Optional[str] = None,
    dry_run: bool = False,
    devices: Sequence[str] = (),
) -> SweepResult:
  """Runs (or resumes, or skips) every run of a grid, then merges the report.

  Args:
    grid: grid file, `path[:arg]`.
    root: the runs' workdirs go to `<root>/<run name>`.
    executor: one of EXECUTORS.
    max_parallel: runs at a time; 0: the executor's default (local: 1 in this
      process; submitit_local: the CPU count; slurm: all).
    report_out: where the merged report goes (default `<root>/report`).
    options: submitit job resources.
    submitit_folder: submitit's logs and pickles (default `<root>/submitit`).
    dry_run: only print the plan.
    devices: local accelerator ids to spread `local` runs over, one run per
      device at a time (each subprocess sees only its CUDA_VISIBLE_DEVICES).

  Returns:
    A SweepResult. Runs that fail are in `failed`; the others are still merged.

  Raises:
    GridError / SweepError: bad input, before any compute.
  """
  check_executor(executor, dry_run)
  if max_parallel < 0:
    raise SweepError(f'--max_parallel must be >= 0, got {max_parallel}')
  if not root:
    raise SweepError('--root is required')
  root = os.path.abspath(os.path.expanduser(root))
  options = options or ClusterOptions()
  if options.nodes < 1 or (options.nodes > 1 and executor != 'slurm'):
    raise SweepError(f'--slurm_nodes={options.nodes}: must be 1, or more with --executor=slurm')
  if dry_run:
    runs, actions = _announce(grid, root, executor)
    return SweepResult(runs, actions, {}, [], None, root)
  from jal import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  # One sweep per root at a time (a second is refused at once); each run
  # locks its own workdir (jal.workdir), whichever executor runs it.
  with workdir_lib.locked(root, 'sweep root'):
    return _sweep(grid, root, executor, max_parallel, report_out, options, submitit_folder, devices)


def _announce(grid: str, root: str, executor: str):
  """Classifies the grid's runs by their workdirs and prints the plan."""
  runs, actions, details = plan(grid, root)
  for run in runs:
    detail = f' ({details[run.name]})' if details[run.name] else ''
    _say(f'{actions[run.name]:8s} {run.name}{detail}')
  counts = collections.Counter(actions.values())
  _say(
      f'{len(runs)} run(s): {counts["skipped"]} skipped (finished), '
      f'{counts["resumed"]} to resume, {counts["started"]} to start; executor {executor}'
  )
  return runs, actions


def _sweep(
    grid, root, executor, max_parallel, report_out, options, submitit_folder, devices
) -> SweepResult:
  """`run_sweep` once the root is this process's."""
  runs, actions = _announce(grid, root, executor)
  todo = [r for r in runs if actions[r.name] != 'skipped']
  failed = {}
  if todo:
    with _repo_importable():
      if executor == 'local' and max_parallel <= 1 and not devices:
        failed = _run_in_process(todo, root)
      elif executor == 'local':
        failed = _run_subprocesses(todo, root, max_parallel, tuple(devices))
      else:
        failed = _run_submitit(
            todo,
            root,
            'slurm' if executor == 'slurm' else 'local',
            max_parallel,
            options,
            submitit_folder or os.path.join(root, 'submitit', '%j'),
        )

  workdirs = [
      r.workdir(root)
      for r in runs
      if os.path.exists(os.path.join(r.workdir(root), 'metrics.jsonl'))
      and os.path.getsize(os.path.join(r.workdir(root), 'metrics.jsonl'))
  ]
  report = None
  if workdirs:
    from jal import report as report_lib  # pylint: disable=g-import-not-at-top

    out = os.path.abspath(report_out or os.path.join(root, 'report'))
    try:
      report_lib.write_report(workdirs, out)
    except (ValueError, OSError) as e:
      raise SweepError(f'merging {len(workdirs)} workdir(s) failed: {_first_line(e)}') from None
    report = os.path.join(out, 'report.md')
    _say(f'report of {len(workdirs)} workdir(s): {report}')
  else:
    _say('no finished rounds to report')
  if failed:
    for name, reason in failed.items():
      _say(f'FAILED {name}: {reason}')
  return SweepResult(runs, actions, failed, workdirs, report, root)


# ----------------------------------------------------------------------------
# Command line.


def _define_flags():
  # Defined only when run as a program, so importing launch.sweep next to other
  # entry points never clashes with their flags.
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('grid', None, 'Grid file, path[:arg], e.g. launch/grids/gaussian.py:smoke.')
  flags.DEFINE_string('root', None, 'Directory holding one workdir per run.')
  flags.DEFINE_string('executor', 'local', f'One of: {", ".join(EXECUTORS)}.')
  flags.DEFINE_integer(
      'max_parallel',
      0,
      'Runs at a time; 0: the executor default (local 1, submitit_local CPU count, slurm all).',
  )
  flags.DEFINE_string('report_out', None, 'Merged report directory; default <root>/report.')
  flags.DEFINE_string('submitit_folder', None, 'submitit logs; default <root>/submitit/%j.')
  flags.DEFINE_boolean('dry_run', False, 'Only print what would run.')
  flags.DEFINE_list(
      'devices',
      [],
      'Local accelerator ids (e.g. 0,1,2,3): the local '
      'executor runs one job per device, each seeing only its own.',
  )
  flags.DEFINE_string('slurm_partition', None, 'SLURM partition.')
  flags.DEFINE_string('slurm_account', None, 'SLURM account.')
  flags.DEFINE_integer(
      'slurm_gpus_per_node', None, 'GPUs per job (default 1 on slurm, 0 on submitit_local).'
  )
  flags.DEFINE_integer(
      'slurm_time_min',
      240,
      'Time limit of each job, minutes (also '
      'submitit_local); a job that hits it is requeued and resumes.',
  )
  flags.DEFINE_integer('slurm_cpus_per_task', None, 'CPUs per job.')
  flags.DEFINE_integer('slurm_mem_gb', None, 'Memory per job, GB.')
  flags.DEFINE_integer(
      'slurm_nodes',
      1,
      'Hosts per job; above 1 each job runs one process per '
      'host with jax.distributed and shards members and pools over all GPUs.',
  )
  flags.mark_flags_as_required(['grid', 'root'])


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  options = ClusterOptions(
      partition=f.slurm_partition,
      gpus_per_node=f.slurm_gpus_per_node,
      time_min=f.slurm_time_min,
      cpus_per_task=f.slurm_cpus_per_task,
      mem_gb=f.slurm_mem_gb,
      account=f.slurm_account,
      nodes=f.slurm_nodes,
  )
  from jal import logs, runtime  # pylint: disable=g-import-not-at-top,g-multiple-import

  runtime.configure()
  with logs.one_line_errors():
    result = run_sweep(
        f.grid,
        f.root,
        f.executor,
        f.max_parallel,
        f.report_out,
        options,
        f.submitit_folder,
        f.dry_run,
        f.devices,
    )
  if result.failed:
    sys.exit(
        f'error: {len(result.failed)} of {len(result.runs)} run(s) failed: '
        + '; '.join(f'{k} ({v})' for k, v in result.failed.items())
    )


if __name__ == '__main__':
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  from jal import logs as _logs  # pylint: disable=g-import-not-at-top

  _define_flags()
  _app.run(main, flags_parser=_logs.parse_flags)
