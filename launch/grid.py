"""Grids of jal runs: specs, their expansion into runs, and running one run.

A grid file (`launch/grids/<name>.py`) defines `get_grid(arg=None)` and
returns a list of specs, plain dicts:

    {'config': 'configs/gaussian.py',   # config file (relative to the cwd or
                                        # to the repository root)
     'arg': 'smoke',                    # the `:arg` of --config (optional)
     'overrides': {'strategies': ('random', 'coreset'), 'seeds': (0, 1),
                   'train.epochs': 10},  # config fields (optional)
     'split': True}                     # one run per strategy x seed (default)

`spec()` and `product()` build them. `expand()` turns specs into `Run`s, one
workdir each, split by default per (strategy, seed) so that a cluster
parallelises the finest grain. Run names derive from their content only:

    <config stem>[-<arg>][-<field>=<value>...]/<strategy>-seed<seed>

e.g. `gaussian-smoke/random-seed0`, `mnist-low/ensembles-seed2`.

`run_one(job)` is what every executor runs for one run: it builds the config
(file + arg + overrides) and calls `jal.experiment.train_and_evaluate`.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
from typing import Optional

from absl import logging
import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]

# Overrides that do not change results (see jal.config_lib): not in run names.
_NOT_IN_NAME = ('data_dir',)


class GridError(ValueError):
  """A one-line error about a grid, raised before any compute."""


# ----------------------------------------------------------------------------
# Building specs.


def smoke_only(arg: Optional[str], grid_name: str) -> bool:
  """Whether a grid file's arg is 'smoke' (its only arg); anything else is a GridError."""
  args = {a.strip() for a in (arg or '').split(',') if a.strip()}
  unknown = args - {'smoke'}
  if unknown:
    raise GridError(f'{grid_name} grid: unknown arg(s) {sorted(unknown)}; valid: smoke')
  return 'smoke' in args


def spec(
    config: str,
    arg: Optional[str] = None,
    strategies=None,
    seeds=None,
    overrides: Optional[dict] = None,
    split: bool = True,
) -> dict:
  """One grid entry. strategies/seeds None: the config's own lists."""
  o = dict(overrides or {})
  if strategies is not None:
    o['strategies'] = _as_tuple(strategies)
  if seeds is not None:
    o['seeds'] = _as_tuple(seeds)
  return {'config': config, 'arg': arg, 'overrides': o, 'split': split}


def product(settings, strategies=None, seeds=None, overrides=None) -> list[dict]:
  """Specs for settings x strategies x seeds (split into runs by `expand`).

  Args:
    settings: a list of config files or (config file, arg) pairs.
    strategies, seeds: shared by all settings; None takes each config's own.
    overrides: config fields set in every setting.
  """
  out = []
  for s in settings:
    config, arg = (s, None) if isinstance(s, (str, os.PathLike)) else s
    out.append(spec(os.fspath(config), arg, strategies, seeds, overrides))
  return out


# ----------------------------------------------------------------------------
# Loading files.


def _load_module(path: pathlib.Path, prefix: str):
  name = f'{prefix}_{re.sub(r"[^A-Za-z0-9_]", "_", str(path))}'
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def split_arg(path_and_arg: str) -> tuple[str, Optional[str]]:
  """'launch/grids/gaussian.py:smoke' -> ('launch/grids/gaussian.py', 'smoke')."""
  path, sep, arg = str(path_and_arg).rpartition(':')
  if not sep or '/' in arg or not path:
    return str(path_and_arg), None
  return path, arg


def resolve_file(path: str, what: str) -> pathlib.Path:
  """`path` as given (absolute or from the cwd), else from the repo root."""
  p = pathlib.Path(path).expanduser()
  for candidate in ((p,) if p.is_absolute() else (p, REPO / p)):
    if candidate.is_file():
      return candidate.resolve()
  raise GridError(f'{what} not found: {path}')


def load_grid(path_and_arg: str) -> list[dict]:
  """Calls `get_grid(arg)` of a grid file given as `path[:arg]`."""
  path, arg = split_arg(path_and_arg)
  module = _load_module(resolve_file(path, 'grid file'), 'jal_grid')
  if not hasattr(module, 'get_grid'):
    raise GridError(f'grid file {path} defines no get_grid(arg=None)')
  specs = module.get_grid(arg) if arg is not None else module.get_grid()
  if not isinstance(specs, (list, tuple)) or not specs:
    raise GridError(f'grid file {path}: get_grid returned no specs')
  return list(specs)


def load_config(config_path: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as ml_collections' --config does."""
  module = _load_module(pathlib.Path(config_path), 'jal_config')
  return module.get_config(arg) if arg is not None else module.get_config()


# ----------------------------------------------------------------------------
# Overrides.


def _as_tuple(v):
  if isinstance(v, (list, tuple)):
    return tuple(v)
  return (v,)


def _flatten(overrides: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in overrides.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict, where: str = 'config'
) -> ml_collections.ConfigDict:
  """Sets dotted fields of `config` (unlocked); unknown fields are an error."""
  for key, value in _flatten(overrides).items():
    node = config
    *path, last = key.split('.')
    for p in path:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise GridError(f'{where}: unknown config field {key!r}')
      node = node[p]
    if last not in node:
      raise GridError(f'{where}: unknown config field {key!r}')
    if isinstance(node[last], (tuple, list)) and not isinstance(value, (tuple, list)):
      value = (value,)
    with config.unlocked():
      try:
        node[last] = value
      except (TypeError, ValueError) as e:
        raise GridError(f'{where}: cannot set {key}={value!r} ({str(e).splitlines()[0]})') from None
  return config


def build_config(config_path: str, arg: Optional[str], overrides: dict):
  """The config of one run: file + arg + overrides."""
  return apply_overrides(
      load_config(config_path, arg), overrides, f'{config_path}{":" + arg if arg else ""}'
  )


# ----------------------------------------------------------------------------
# Runs.


@dataclasses.dataclass(frozen=True, eq=True)
class Run:
  """One (config, arg, overrides) -> one workdir `<root>/<name>`."""

  name: str
  config: str  # as the grid gave it
  config_path: str  # absolute
  arg: Optional[str]
  overrides: dict  # flattened, sorted; always holds strategies and seeds
  strategies: tuple
  seeds: tuple
  num_rounds: int

  def workdir(self, root: str) -> str:
    return os.path.join(root, *self.name.split('/'))

  def job(self, root: str) -> dict:
    """Everything a job needs, as a plain (picklable) dict."""
    return {
        'name': self.name,
        'config_path': self.config_path,
        'arg': self.arg,
        'overrides': dict(self.overrides),
        'workdir': os.path.abspath(self.workdir(root)),
    }

  def flag_string(self) -> str:
    """The `--config=... --config.k=v` part of a `python -m jal.main` command."""
    return ' '.join(jal_main_flags(self))


def _fmt_value(v) -> str:
  if isinstance(v, tuple):
    return '+'.join(_fmt_value(x) for x in v)
  return str(v)


def _sanitise(s: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.=+-]+', '_', s).strip('_') or '_'


def run_name(config_path: str, arg: Optional[str], overrides: dict) -> str:
  setting = [pathlib.Path(config_path).stem]
  if arg:
    setting.append('_'.join(sorted(a.strip() for a in arg.split(',') if a.strip())))
  for k, v in sorted(overrides.items()):
    if k not in ('strategies', 'seeds') and k not in _NOT_IN_NAME:
      setting.append(f'{k}={_fmt_value(v)}')
  strategies = '+'.join(str(s) for s in overrides['strategies'])
  seeds = '+'.join(str(s) for s in overrides['seeds'])
  return f'{_sanitise("-".join(setting))}/{_sanitise(f"{strategies}-seed{seeds}")}'


def _check_spec(entry, i) -> dict:
  if isinstance(entry, str):
    entry = {'config': entry}
  if not isinstance(entry, dict) or 'config' not in entry:
    raise GridError(f'grid entry {i} is not a dict with a "config" key: {entry!r}')
  unknown = set(entry) - {'config', 'arg', 'overrides', 'split', 'strategies', 'seeds'}
  if unknown:
    raise GridError(f'grid entry {i}: unknown keys {sorted(unknown)}')
  return entry


def expand(specs) -> list[Run]:
  """Specs -> runs, in spec order, then strategy order, then seed order.

  Every run's config is built and validated here (config file exists, fields
  exist, strategy names are known), so bad grids fail before any compute.
  """
  from jal import config_lib  # pylint: disable=g-import-not-at-top

  runs = []
  for i, entry in enumerate(specs):
    entry = _check_spec(entry, i)
    path = str(resolve_file(entry['config'], f'config file of grid entry {i}'))
    arg = entry.get('arg') or None
    overrides = _flatten(dict(entry.get('overrides') or {}))
    for key in ('strategies', 'seeds'):
      if entry.get(key) is not None:
        overrides[key] = _as_tuple(entry[key])
    where = f'grid entry {i} ({entry["config"]}{":" + arg if arg else ""})'
    try:
      base = apply_overrides(load_config(path, arg), overrides, where)
      parsed = config_lib.parse(base)
      strategies, seeds = parsed.strategies, parsed.seeds
    except GridError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise GridError(
          f'{where}: could not build the config '
          f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
      ) from None
    if entry.get('split', True):
      groups = [((s,), (seed,)) for s in strategies for seed in seeds]
    else:
      groups = [(strategies, seeds)]
    for ss, sd in groups:
      o = dict(overrides, strategies=ss, seeds=sd)
      o = {k: o[k] for k in sorted(o)}
      config = apply_overrides(load_config(path, arg), o, where)
      try:
        config_lib.validate(config)
      except ValueError as e:
        raise GridError(f'{where}: {str(e).splitlines()[0]}') from None
      runs.append(
          Run(run_name(path, arg, o), entry['config'], path, arg, o, ss, sd, int(config.num_rounds))
      )
  names = [r.name for r in runs]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise GridError(f'the grid names {len(dupes)} run(s) twice, e.g. {dupes[0]}')
  return runs


def jal_main_flags(run: Run) -> list[str]:
  """Flags of `python -m jal.main` that build the same config as the run."""
  config = run.config_path + (f':{run.arg}' if run.arg else '')
  out = [f'--config={config}']
  for k, v in run.overrides.items():
    if isinstance(v, tuple):
      v = '(' + ''.join(f'{x!r},' for x in v) + ')'
    out.append(f'--config.{k}={v}')
  return out


# ----------------------------------------------------------------------------
# Workdir state.


def workdir_state(run: Run, root: str) -> tuple[str, str]:
  """('finished' | 'partial' | 'new', detail) of a run's workdir.

  Raises:
    GridError: the workdir holds a different experiment.
  """
  from jal import config_lib  # pylint: disable=g-import-not-at-top

  workdir = run.workdir(root)
  config_json = os.path.join(workdir, 'config.json')
  ckpts = os.path.join(workdir, 'checkpoints')
  if not os.path.exists(config_json):
    if os.path.isdir(ckpts) and os.listdir(ckpts):
      return 'partial', 'checkpoints without config.json'
    return 'new', ''
  config = build_config(run.config_path, run.arg, run.overrides)
  try:
    with open(config_json) as f:
      stored = config_lib.identity(ml_collections.ConfigDict(json.load(f)))
  except (OSError, ValueError) as e:
    raise GridError(f'workdir {workdir}: unreadable config.json ({e})') from None
  current = config_lib.identity(config)
  if stored != current:
    raise GridError(
        f'workdir {workdir} holds a different experiment '
        f'({config_lib.diff(stored, current)}); use another --root'
    )
  done = set()
  metrics = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics):
    with open(metrics) as f:
      for line in f:
        try:
          row = json.loads(line)
          done.add((str(row['strategy']), int(row['seed']), int(row['round'])))
        except (ValueError, KeyError, TypeError):
          continue  # a torn last line: the run is not finished
  want = {
      (s, seed, r) for s in run.strategies for seed in run.seeds for r in range(run.num_rounds + 1)
  }
  have = len(want & done)
  detail = f'{have}/{len(want)} rounds'
  return ('finished' if have == len(want) else 'partial'), detail


# ----------------------------------------------------------------------------
# One run.


def run_one(job: dict) -> dict:
  """Builds the run's config and trains/evaluates it in its workdir (resuming).

  This is the function every executor calls (in-process, or in a submitit
  job). Returns {'name', 'workdir', 'table'}.
  """
  from jal import experiment, logs, sharding  # pylint: disable=g-import-not-at-top

  logs.quiet_libraries()
  if job.get('distributed'):  # one process per host (see sweep's --slurm_nodes)
    sharding.initialize_distributed()
  if logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)
  config = build_config(job['config_path'], job['arg'], job['overrides'])
  logging.info('run %s in %s', job['name'], job['workdir'])
  table = experiment.train_and_evaluate(config, job['workdir'])
  return {'name': job['name'], 'workdir': job['workdir'], 'table': table}
