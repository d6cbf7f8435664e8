"""Reading jal workdirs into settings: the rows of one setting over workdirs.

A setting is a config `name` plus `query_size`; `load_settings` groups the
workdirs by it and reads their `config.json`, `metrics.jsonl` and
`selections.jsonl`. The same (strategy, seed, round) in two workdirs is an
error unless the rows agree (timing fields aside).
"""

import ast
import json
import os
import re

from absl import logging

# configs/, whose docstrings say how each setting departs from the study (`departs`).
_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'configs'
)

# Fields that may legitimately differ between two copies of the same result.
_VOLATILE_SUFFIXES = ('_seconds', '_time', 'timestamp')


def _read_json_lines(path):
  """Rows of a JSON-lines file; a truncated last line (crash) is skipped."""
  rows = []
  with open(path) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines):
        logging.warning('%s:%d: skipping truncated last line (%s)', path, i, e)
        continue
      raise ValueError(f'{path}:{i}: not valid JSON ({e})') from None
  return rows


def _stable_part(row):
  """`row` without the fields that differ between copies of one result (timings)."""
  return {k: v for k, v in row.items() if not any(k.endswith(s) for s in _VOLATILE_SUFFIXES)}


def _put(table, key, value, source, what):
  """table[key] = value, refusing a conflicting duplicate."""
  if key in table:
    old_value, old_source = table[key]
    if old_value != value:
      strategy, seed, rnd = key
      raise ValueError(
          f'conflicting {what} for strategy={strategy!r} seed={seed} '
          f'round={rnd}: {old_source} and {source} disagree'
      )
    return
  table[key] = (value, source)


class Setting:
  """All rows of one setting (config name + query size), over workdirs.

  Attributes:
    name: str, the config `name` (else the data name, else the folder name).
    query_size: int | None, the config `query_size`.
    config: dict, the `config.json` of the first workdir of the setting.
    workdirs: list[str], the workdirs read, in order.
    metrics: dict (strategy, seed, round) -> (metrics row without its timing
      fields, path of the metrics.jsonl it came from).
    selections: dict (strategy, seed, round) -> (list[int] pool indices
      queried, path of the selections.jsonl it came from).
  """

  def __init__(self, name, query_size, config):
    self.name = name
    self.query_size = query_size
    self.config = config
    self.workdirs = []
    self.metrics = {}  # (strategy, seed, round) -> (row, source)
    self.selections = {}  # (strategy, seed, round) -> (indices, source)

  @property
  def key(self) -> str:
    """`name`_q`query_size` made safe for file names, e.g. 'gaussian_q5'."""
    q = 'NA' if self.query_size is None else self.query_size
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', f'{self.name}_q{q}')

  @property
  def title(self) -> str:
    """The heading of the setting in report.md and the figures."""
    if self.query_size is None:
      return self.name
    return f'{self.name}, query size {self.query_size}'


def load_settings(workdirs) -> list[Setting]:
  """The settings of `workdirs` (paths), in the order each first appears.

  Raises FileNotFoundError when a workdir lacks config.json or metrics.jsonl,
  ValueError when two workdirs hold different rows for one (strategy, seed,
  round) or a line other than the last is not JSON.
  """
  settings = {}
  for workdir in workdirs:
    config_path = os.path.join(workdir, 'config.json')
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(config_path):
      raise FileNotFoundError(f'no config.json in workdir {workdir}')
    if not os.path.exists(metrics_path):
      raise FileNotFoundError(f'no metrics.jsonl in workdir {workdir}')
    with open(config_path) as f:
      config = json.load(f)
    data_name = (config.get('data') or {}).get('name')
    name = config.get('name') or data_name or os.path.basename(os.path.normpath(workdir))
    query_size = config.get('query_size')
    setting = settings.setdefault((name, query_size), Setting(name, query_size, config))
    setting.workdirs.append(workdir)
    for row in _read_json_lines(metrics_path):
      key = (str(row['strategy']), int(row['seed']), int(row['round']))
      _put(setting.metrics, key, _stable_part(row), metrics_path, 'metrics')
    selections_path = os.path.join(workdir, 'selections.jsonl')
    if os.path.exists(selections_path):
      for row in _read_json_lines(selections_path):
        key = (str(row['strategy']), int(row['seed']), int(row['round']))
        _put(
            setting.selections, key, [int(i) for i in row['indices']], selections_path, 'selections'
        )
  return list(settings.values())


def departs(name: str, config: dict) -> str:
  """How setting `name` departs from the study, in one line.

  The config's `departs` note; else, from the docstring of configs/<stem>.py for
  the longest stem that begins `name`, the paragraph on the variant the rest of
  the name gives ('imbalance_cpu': the one that begins "`:cpu`"), else the
  first paragraph that begins "It departs", else the first paragraph; else ''.
  """
  if config.get('departs'):
    return str(config['departs'])
  stems = (
      [f[:-3] for f in os.listdir(_CONFIGS) if f.endswith('.py')] if os.path.isdir(_CONFIGS) else []
  )
  stems = [s for s in stems if name == s or name.startswith(s + '_')]
  if not stems:
    return ''
  stem = max(stems, key=len)
  with open(os.path.join(_CONFIGS, stem + '.py')) as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ''
  paragraphs = doc.split('\n\n')
  variant = name[len(stem) + 1 :]
  ours = [p for p in paragraphs if variant and p.lstrip().startswith(f'`:{variant}`')]
  said = [p for p in paragraphs if p.lstrip().startswith('It departs')]
  return ' '.join((ours or said or paragraphs)[0].split())
