r"""Tables, CSVs and figures for finished (or running) jal workdirs.

    python -m jal.report --workdir=workdirs/gaussian --out=reports/gaussian
    python -m jal.report --workdir=A --workdir=B --out=OUT --ci=bootstrap
    python -m jal.report --verdict --workdir=A --out=OUT   # jal.verdict's table only

Reads `config.json`, `metrics.jsonl` and `selections.jsonl` from each workdir,
groups workdirs by setting (config `name` + `query_size`) and writes into OUT:

  report.md        per setting: the metric at each selection (the shape of the
                   study's Table 3.1), the average improvement over random over
                   all selections (Tables 3.2, 4.1, 4.2) and the area under the
                   learning curve, each with a confidence interval over seeds.
  summary.csv      one row per (setting, strategy, round): mean, lo, hi,
                   n_seeds, n_labeled, and the paired improvement over random.
  improvement.csv  one row per (setting, strategy): the average improvement.
  aulc.csv         one row per (setting, strategy): the normalised AULC.
  study_comparison.csv   when a setting is one of the study's (`jal.study`):
                   one row per compared number, the study's published value
                   beside jal's mean and interval, in the study's units (the
                   `unit` column: pp, % or AP). report.md then has a section
                   "Beside the study" per such setting with the same rows.
  <setting>_curves.png     metric and improvement vs labels (Figs 3.2-4.4).
  <setting>_minority.png   minority fraction of each query (Fig 4.5), when the
                           metrics carry `minority_fraction_queried`.
  <setting>_selections.png queries on the 2-D point cloud (Fig 3.1), when the
                           data is 2-D and `jal.data` can rebuild it.

CSV values are in the metric's own units (accuracy as a fraction); report.md
shows accuracy in percent. `write_report` does the work and returns the
statistics; `main` only parses flags. The loop's own results.md
(`results_table`) is written with the same table writer and metric choice.
"""

import collections
import csv
import importlib
import json
import math
import os
import re

from absl import app
from absl import flags
from absl import logging
import numpy as np

from jal import logs
from jal import stats
from jal import study

_METRICS = ('accuracy', 'average_precision')

# One colour per strategy, the same in every figure of every report.
_FIXED_COLOURS = {
    'random': '#404040',
    'coreset': '#1f77b4',
    'ensembles': '#d62728',
}
# Other strategies take these in sorted-name order.
_PALETTE = ('#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf',
            '#bcbd22', '#7f7f7f', '#393b79', '#637939')
_STRATEGY_ORDER = ('random', 'coreset', 'ensembles')

# Pale class colours for the point cloud; orange/red are kept for queries.
_CLASS_COLOURS = ('#9ecae1', '#a1d99b', '#bcbddc', '#d9d9d9', '#c6dbef',
                  '#c7e9c0', '#dadaeb', '#fdd0a2')
_LABELED_COLOUR = '#ff9f1c'
_QUERY_COLOUR = '#d00000'

# Fields that may legitimately differ between two copies of the same result.
_VOLATILE_SUFFIXES = ('_seconds', '_time', 'timestamp')

# Datasets that are never 2-D: do not load them just to find that out.
_IMAGE_DATA = re.compile(r'mnist|cifar|retino|imagenet|svhn', re.IGNORECASE)


# ----------------------------------------------------------------------------
# Reading workdirs.


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
  return {k: v for k, v in row.items()
          if not any(k.endswith(s) for s in _VOLATILE_SUFFIXES)}


def _put(table, key, value, source, what):
  """table[key] = value, refusing a conflicting duplicate."""
  if key in table:
    old_value, old_source = table[key]
    if old_value != value:
      strategy, seed, rnd = key
      raise ValueError(
          f'conflicting {what} for strategy={strategy!r} seed={seed} '
          f'round={rnd}: {old_source} and {source} disagree')
    return
  table[key] = (value, source)


class _Setting:
  """All rows of one setting (config name + query size), over workdirs."""

  def __init__(self, name, query_size, config):
    self.name = name
    self.query_size = query_size
    self.config = config
    self.workdirs = []
    self.metrics = {}  # (strategy, seed, round) -> (row, source)
    self.selections = {}  # (strategy, seed, round) -> (indices, source)

  @property
  def key(self):
    q = 'NA' if self.query_size is None else self.query_size
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', f'{self.name}_q{q}')

  @property
  def title(self):
    if self.query_size is None:
      return self.name
    return f'{self.name}, query size {self.query_size}'


def load_settings(workdirs):
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
    name = config.get('name') or data_name or os.path.basename(
        os.path.normpath(workdir))
    query_size = config.get('query_size')
    setting = settings.setdefault((name, query_size),
                                  _Setting(name, query_size, config))
    setting.workdirs.append(workdir)
    for row in _read_json_lines(metrics_path):
      key = (str(row['strategy']), int(row['seed']), int(row['round']))
      _put(setting.metrics, key, _stable_part(row), metrics_path, 'metrics')
    selections_path = os.path.join(workdir, 'selections.jsonl')
    if os.path.exists(selections_path):
      for row in _read_json_lines(selections_path):
        key = (str(row['strategy']), int(row['seed']), int(row['round']))
        _put(setting.selections, key, [int(i) for i in row['indices']],
             selections_path, 'selections')
  return list(settings.values())


# ----------------------------------------------------------------------------
# Statistics per setting.


def order_strategies(names, baseline='random'):
  """Baseline first, then random/coreset/ensembles, then the rest sorted."""
  names = set(names)
  head = [baseline] if baseline in names else []
  head += [n for n in _STRATEGY_ORDER if n in names and n not in head]
  return head + sorted(names - set(head))


def strategy_colours(names):
  """Fixed colours for known strategies, then the palette in sorted order."""
  colours = {n: _FIXED_COLOURS[n] for n in names if n in _FIXED_COLOURS}
  others = sorted(n for n in set(names) if n not in _FIXED_COLOURS)
  for i, n in enumerate(others):
    colours[n] = _PALETTE[i % len(_PALETTE)]
  return colours


def _value(row, field):
  v = row.get(field)
  return math.nan if v is None else float(v)


def _has_field(rows, field):
  return any(row.get(field) is not None for row in rows)


def _summary(per_seed, ci, confidence, ci_kwargs):
  out = stats.summarize(per_seed, confidence, ci, **ci_kwargs)
  out['per_seed'] = [float(v) for v in per_seed]
  return out


def analyse(setting, metric, baseline, ci, confidence, ci_kwargs):
  """The statistics of one setting as plain lists and floats."""
  rows = {k: row for k, (row, _) in setting.metrics.items()}
  if not rows:
    raise ValueError(f'setting {setting.title}: metrics.jsonl has no rows')
  if metric is None:
    metric = headline_metric(rows.values())
  if not _has_field(rows.values(), metric):
    raise ValueError(f'setting {setting.title}: no {metric!r} in metrics of '
                     f'{setting.workdirs}')
  strategies = order_strategies({k[0] for k in rows}, baseline)
  rounds = sorted({k[2] for k in rows})
  col = {r: j for j, r in enumerate(rounds)}

  n_by_round = collections.defaultdict(collections.Counter)
  for (_, _, r), row in rows.items():
    if row.get('n_labeled') is not None:
      n_by_round[r][int(row['n_labeled'])] += 1
  n_labeled = []
  for r in rounds:
    if not n_by_round[r]:
      raise ValueError(f'setting {setting.title}: no n_labeled at round {r}')
    if len(n_by_round[r]) > 1:
      logging.warning('%s: round %d has several n_labeled %s; using the most '
                      'common', setting.title, r, dict(n_by_round[r]))
    n_labeled.append(n_by_round[r].most_common(1)[0][0])

  seeds, values, minority = {}, {}, {}
  has_minority = _has_field(rows.values(), 'minority_fraction_queried')
  for s in strategies:
    seeds[s] = sorted({k[1] for k in rows if k[0] == s})
    v = np.full((len(seeds[s]), len(rounds)), np.nan)
    m = np.full_like(v, np.nan)
    for i, seed in enumerate(seeds[s]):
      for r in rounds:
        row = rows.get((s, seed, r))
        if row is not None:
          v[i, col[r]] = _value(row, metric)
          m[i, col[r]] = _value(row, 'minority_fraction_queried')
    values[s], minority[s] = v, m

  def per_round(v):
    mean, lo, hi, n = stats.interval_per_round(v, confidence, ci, **ci_kwargs)
    return {'mean': mean.tolist(), 'lo': lo.tolist(), 'hi': hi.tolist(),
            'n_seeds': n.tolist()}

  result = {
      'name': setting.name,
      'query_size': setting.query_size,
      'title': setting.title,
      'workdirs': list(setting.workdirs),
      'metric': metric,
      'baseline': baseline,
      'rounds': rounds,
      'n_labeled': n_labeled,
      'strategies': strategies,
      'seeds': seeds,
      'values': {s: values[s].tolist() for s in strategies},
      'curves': {s: per_round(values[s]) for s in strategies},
      'improvement': {},
      'aulc': {},
      'minority_fraction': None,
      'notes': [],
  }

  # Paired improvement over the baseline, on the seeds both strategies ran.
  if baseline not in values:
    result['notes'].append(f'No {baseline!r} runs: no improvement over the '
                           'baseline can be computed.')
  elif len(rounds) < 2 or rounds[0] != 0:
    result['notes'].append('Need the warmup round 0 and at least one selection '
                           'for the average improvement.')
  else:
    for s in strategies:
      if s == baseline:
        continue
      common = sorted(set(seeds[s]) & set(seeds[baseline]))
      if not common:
        result['notes'].append(f'{s}: no seed in common with {baseline}; no '
                               'paired improvement.')
        continue
      pick = lambda name: values[name][[seeds[name].index(x) for x in common]]
      diff = stats.paired_improvement(
          {baseline: pick(baseline), s: pick(s)}, baseline,
          seeds={baseline: common, s: common})[s]
      complete = ~np.any(np.isnan(diff), axis=1)
      if not np.all(complete):
        dropped = [x for x, c in zip(common, complete) if not c]
        result['notes'].append(
            f'{s}: seeds {dropped} lack some rounds (for {s} or {baseline}); '
            'they count in the per-round curves but not in the average.')
      entry = {'seeds': [x for x, c in zip(common, complete) if c],
               'per_round': per_round(diff)}
      if np.any(complete):
        entry.update(_summary(stats.average_improvement(diff[complete]), ci,
                              confidence, ci_kwargs))
      else:
        entry.update(_summary(np.array([]), ci, confidence, ci_kwargs))
      result['improvement'][s] = entry

  # Normalised area under each seed's complete learning curve.
  for s in strategies:
    complete = ~np.any(np.isnan(values[s]), axis=1)
    per_seed = (stats.area_under_curve(n_labeled, values[s][complete])
                if len(rounds) else np.array([]))
    entry = _summary(per_seed, ci, confidence, ci_kwargs)
    entry['seeds'] = [x for x, c in zip(seeds[s], complete) if c]
    result['aulc'][s] = entry

  if has_minority:
    result['minority_fraction'] = {s: per_round(minority[s])
                                   for s in strategies}
  return result


# ----------------------------------------------------------------------------
# Formatting.


def _scale(metric):
  return 100.0 if metric == 'accuracy' else 1.0


def _metric_label(metric):
  return {'accuracy': 'Test accuracy (%)',
          'average_precision': 'Test average precision (minority class)'
         }.get(metric, metric)


def _improvement_label(metric, baseline):
  if metric == 'accuracy':
    return f'Accuracy improvement over {baseline}\n(percentage points)'
  return f'AP improvement over {baseline}\n(difference in AP)'


def _num(v, decimals, sign=False):
  if v is None or math.isnan(v):
    return 'n/a'
  return f'{v:+.{decimals}f}' if sign else f'{v:.{decimals}f}'


def _ci_sentence(ci, confidence, n_seeds, ci_kwargs):
  pct = f'{100 * confidence:g}%'
  if ci == 't':
    text = (f'{pct} Student-t intervals over seeds: mean ± '
            f't_(n-1) · sd / √n')
    if n_seeds >= 2:
      t = stats.t_quantile(0.5 * (1 + confidence), n_seeds - 1)
      text += f' (with {n_seeds} seeds t = {t:.3f})'
    return text + '; "±" gives the half-width.'
  return (f'{pct} percentile bootstrap intervals over seeds '
          f'({ci_kwargs.get("num_resamples", 10000)} resamples, seed '
          f'{ci_kwargs.get("seed", 0)}); "±" gives half the interval width. '
          'With few seeds the bootstrap interval is too narrow (3 seeds allow '
          'only 10 distinct resamples); prefer --ci=t there.')


def _seed_sentence(res):
  counts = {s: len(res['seeds'][s]) for s in res['strategies']}
  if len(set(counts.values())) == 1:
    n = next(iter(counts.values()))
    seeds = next(iter(res['seeds'].values()))
    listed = ', '.join(map(str, seeds))
    return (f'{n} seed{"s" if n != 1 else ""} per strategy '
            f'(seed{"s" if n != 1 else ""} {listed})', n)
  parts = ', '.join(f'{s}: {counts[s]} {res["seeds"][s]}'
                    for s in res['strategies'])
  return f'seeds per strategy differ ({parts})', max(counts.values())


def headline_metric(rows) -> str:
  """'average_precision' where a row has it (binary imbalanced tasks), else 'accuracy'."""
  return 'average_precision' if _has_field(rows, 'average_precision') else 'accuracy'


def markdown_table(header, rows) -> list[str]:
  """The lines of a Markdown table: the header, its rule, one line per row of cells."""
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def _round_column(r, n):
  return f'Warmup (n={n})' if r == 0 else f'Selection {r} (n={n})'


def _cell(mean, spread, n, n_max, decimals):
  """'mean ± spread' (no ± when `spread` is NaN), with the seed count `n` when
  it is fewer than the table's `n_max` (a run still in progress)."""
  text = _num(mean, decimals)
  if not math.isnan(spread):
    text += f' ± {_num(spread, decimals)}'
  if 0 < n < n_max:
    text += f' ({n} seed{"s" if n != 1 else ""})'
  return text


def results_table(rows: list[dict], config, strategies) -> str:
  """The loop's results.md: its table in the shape of the study's Table 3.1.

  Rows are `strategies` (in run order), columns the warmup and each
  selection (with the number of labels); cells are the mean over seeds ± the
  sample standard deviation, and say how many seeds where fewer than the
  table's (mid-run). Accuracy is in percent. Confidence intervals are
  `write_report`'s.

  Args:
    rows: metrics.jsonl rows so far.
    config: the run's config (name, sizes, members).
    strategies: the run's strategy names, in order.
  """
  if not rows:
    return 'No finished rounds yet.\n'
  metric = headline_metric(rows)
  scale, decimals = (100.0, 1) if metric == 'accuracy' else (1.0, 4)
  rounds = sorted({r['round'] for r in rows})
  seeds = sorted({x['seed'] for x in rows})
  header = ['Strategy'] + [
      _round_column(r, config.warmup_size + r * config.query_size) for r in rounds]
  table, partial = [], False
  for s in strategies:
    cells = [s]
    for r in rounds:
      v = np.array([x[metric] for x in rows if x['strategy'] == s and x['round'] == r]) * scale
      cells.append(_cell(v.mean(), v.std(ddof=1) if len(v) > 1 else math.nan, len(v),
                         len(seeds), decimals) if len(v) else '')
      partial |= 0 < len(v) < len(seeds)
    table.append(cells)
  unit = 'test accuracy (%)' if metric == 'accuracy' else 'minority-class test average precision'
  fewer = ' (fewer where a cell says so)' if partial else ''
  title = (f'{config.name}: {unit}, mean ± std over {len(seeds)} seed(s) {seeds}{fewer}; '
           f'query size {config.query_size}, warmup {config.warmup_size}, '
           f'{config.train.members}-member ensemble\n\n')
  return title + '\n'.join(markdown_table(header, table)) + '\n'


def _markdown_setting(res, ci, confidence, ci_kwargs, figures):
  metric, baseline = res['metric'], res['baseline']
  scale = _scale(metric)
  dec = 2 if metric == 'accuracy' else 4
  imp_dec = 3 if metric == 'accuracy' else 4
  unit = '%' if metric == 'accuracy' else 'AP'
  imp_unit = 'pp' if metric == 'accuracy' else 'AP'
  pct = f'{100 * confidence:g}%'
  seed_text, n_seeds = _seed_sentence(res)
  lines = [f'## {res["title"]}', '']
  lines.append(f'Workdirs: {", ".join(f"`{w}`" for w in res["workdirs"])}. '
               f'Metric: {_metric_label(metric).lower()}. '
               f'Seeds: {seed_text}.')
  lines.append('')
  if n_seeds <= 1:
    lines.append('Only one seed per strategy: no confidence interval is '
                 'possible, so the numbers below are single runs and say '
                 'nothing about how much they would move with another seed.')
  else:
    lines.append('Intervals: ' + _ci_sentence(ci, confidence, n_seeds,
                                               ci_kwargs))
  lines.append('')

  # (1) The metric at each selection (Table 3.1).
  lines.append(f'### {_metric_label(metric)} at each selection '
               '(cf. Table 3.1)')
  lines.append('')
  header = ['Strategy'] + [_round_column(r, n)
                           for r, n in zip(res['rounds'], res['n_labeled'])]
  table = []
  for s in res['strategies']:
    c = res['curves'][s]
    n_max = len(res['seeds'][s])
    table.append([s] + [_cell(m * scale, 0.5 * (hi - lo) * scale, n, n_max, dec)
                        for m, lo, hi, n in
                        zip(c['mean'], c['lo'], c['hi'], c['n_seeds'])])
  lines += markdown_table(header, table)
  lines.append('')

  # (2) Average improvement over the baseline (Tables 3.2, 4.1, 4.2).
  if res['improvement']:
    lines.append(f'### Average improvement over {baseline} over all selections '
                 '(cf. Tables 3.2, 4.1, 4.2)')
    lines.append('')
    lines.append(f'Per seed: the mean over selections 1..{res["rounds"][-1]} '
                 f'of (strategy − {baseline}) at the same seed and round, in '
                 f'{"percentage points" if metric == "accuracy" else "AP"}; '
                 f'then the mean and {pct} interval over seeds. "Excludes 0?" '
                 'is yes when the interval lies entirely on one side of zero; '
                 'no means these seeds cannot tell the sign of the effect.')
    lines.append('')
    table = []
    for s, e in res['improvement'].items():
      if e['n'] >= 2:
        interval = (f'[{_num(e["lo"] * scale, imp_dec, True)}, '
                    f'{_num(e["hi"] * scale, imp_dec, True)}]')
        excludes = 'yes' if e['excludes_zero'] else 'no'
      else:
        interval = f'n/a ({e["n"]} seed{"s" if e["n"] != 1 else ""})'
        excludes = 'n/a'
      table.append([s, _num(e['mean'] * scale, imp_dec, True), interval, excludes,
                    e['n']])
    lines += markdown_table(['Strategy', f'Avg. improvement ({imp_unit})',
                             f'{pct} CI', 'Excludes 0?', 'Seeds'], table)
    lines.append('')

  # (3) Area under the learning curve.
  lines.append('### Area under the learning curve')
  lines.append('')
  n0, n1 = res['n_labeled'][0], res['n_labeled'][-1]
  lines.append(f'Trapezoid over n_labeled from {n0} to {n1} (warmup '
               'included), divided by the range: the curve\'s mean level '
               f'({unit}).')
  lines.append('')
  table = []
  for s in res['strategies']:
    e = res['aulc'][s]
    if e['n'] >= 2:
      interval = (f'[{_num(e["lo"] * scale, dec)}, '
                  f'{_num(e["hi"] * scale, dec)}]')
    else:
      interval = f'n/a ({e["n"]} seed{"s" if e["n"] != 1 else ""})'
    table.append([s, _num(e['mean'] * scale, dec), interval, e['n']])
  lines += markdown_table(['Strategy', f'AULC ({unit})', f'{pct} CI', 'Seeds'],
                          table)
  lines.append('')

  if res['minority_fraction']:
    lines.append('### Minority-class fraction of each query (cf. Figure 4.5)')
    lines.append('')
    header = ['Strategy'] + [_round_column(r, n) for r, n in
                             zip(res['rounds'], res['n_labeled']) if r > 0]
    table = []
    for s in res['strategies']:
      c = res['minority_fraction'][s]
      n_max = len(res['seeds'][s])
      table.append([s] + [_cell(m, 0.5 * (hi - lo), n, n_max, 3)
                          for r, m, lo, hi, n in
                          zip(res['rounds'], c['mean'], c['lo'], c['hi'],
                              c['n_seeds']) if r > 0])
    lines += markdown_table(header, table)
    lines.append('')

  if res.get('study'):
    lines += _markdown_study(res, res['study'], ci, confidence)

  for note in res['notes']:
    lines.append(f'Note: {note}')
  if res['notes']:
    lines.append('')
  for path in figures:
    lines.append(f'![{os.path.basename(path)}]({os.path.basename(path)})')
    lines.append('')
  return lines


# ----------------------------------------------------------------------------
# Beside the study's published numbers.


def _contains(value, lo, hi):
  """True/False: the interval [lo, hi] holds value; None without interval."""
  if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
    return None
  return bool(lo <= value <= hi)


def _sign_agrees(mean, value):
  if mean is None or math.isnan(mean):
    return None
  return bool(np.sign(mean) == np.sign(value))


def _compare_with_study(res, ci, confidence):
  """jal's statistics beside `study.lookup(res['name'])`; None if unknown.

  Returns a dict: label, metric, unit, study_seeds, study_query_size, notes,
  and rows (dicts) under 'improvement' (average improvement over random,
  study units: pp or AP) and 'per_selection' (accuracy in % at each
  selection, Table 3.1 only).
  """
  numbers = study.lookup(res['name'])
  if numbers is None:
    return None
  out = {'setting': numbers.setting, 'label': numbers.label,
         'metric': numbers.metric, 'unit': numbers.unit,
         'study_seeds': numbers.num_seeds,
         'study_query_size': numbers.query_size,
         'notes': [], 'improvement': [], 'per_selection': []}
  if res['query_size'] != numbers.query_size:
    out['notes'].append(
        f'the study\'s query size here is {numbers.query_size}; jal\'s is '
        f'{res["query_size"]}.')
  if res['metric'] != numbers.metric:
    out['notes'].append(
        f'the study reports {numbers.metric} here and this report\'s metric '
        f'is {res["metric"]}: nothing to compare.')
    return out
  scale = _scale(res['metric'])
  common = {'confidence': confidence, 'ci_method': ci,
            'study_seeds': numbers.num_seeds}
  if res['baseline'] != 'random':
    out['notes'].append(
        f'the study\'s improvements are over random; this report\'s are over '
        f'{res["baseline"]}: average improvements not compared.')
  else:
    for s in order_strategies(numbers.improvement):
      value = numbers.improvement[s]
      e = res['improvement'].get(s)
      row = {'table': 'average_improvement', 'strategy': s,
             'selection': None, 'n_labeled': None, 'unit': numbers.unit,
             'study_value': value, 'study_label': numbers.improvement_label,
             'jal_mean': math.nan, 'jal_lo': math.nan, 'jal_hi': math.nan,
             'jal_n_seeds': 0, 'ci_contains_study': None,
             'sign_agrees': None, 'jal_ci_excludes_zero': None, **common}
      if e is not None:
        row.update(jal_mean=e['mean'] * scale, jal_lo=e['lo'] * scale,
                   jal_hi=e['hi'] * scale, jal_n_seeds=e['n'])
        row['ci_contains_study'] = _contains(value, row['jal_lo'],
                                             row['jal_hi'])
        row['sign_agrees'] = _sign_agrees(row['jal_mean'], value)
        if e['n'] >= 2:
          row['jal_ci_excludes_zero'] = bool(e['excludes_zero'])
      out['improvement'].append(row)
  if numbers.per_selection and res['metric'] == 'accuracy':
    col = {r: j for j, r in enumerate(res['rounds'])}
    for s in order_strategies(numbers.per_selection):
      curve = res['curves'].get(s)
      for k, value in enumerate(numbers.per_selection[s], 1):
        row = {'table': 'per_selection', 'strategy': s, 'selection': k,
               'n_labeled': None, 'unit': '%', 'study_value': value,
               'study_label': numbers.per_selection_label,
               'jal_mean': math.nan, 'jal_lo': math.nan, 'jal_hi': math.nan,
               'jal_n_seeds': 0, 'ci_contains_study': None,
               'sign_agrees': None, 'jal_ci_excludes_zero': None, **common}
        j = col.get(k)
        if j is not None:
          row['n_labeled'] = res['n_labeled'][j]
        if curve is not None and j is not None:
          row.update(jal_mean=curve['mean'][j] * scale,
                     jal_lo=curve['lo'][j] * scale,
                     jal_hi=curve['hi'][j] * scale,
                     jal_n_seeds=curve['n_seeds'][j])
          row['ci_contains_study'] = _contains(value, row['jal_lo'],
                                               row['jal_hi'])
        out['per_selection'].append(row)
  return out


def _yes_no(flag, n):
  if flag is None:
    return 'n/a' if n >= 2 or n == 0 else f'n/a ({n} seed)'
  return 'yes' if flag else 'no'


def _markdown_study(res, comparison, ci, confidence):
  pct = f'{100 * confidence:g}%'
  imp_dec = 3 if comparison['metric'] == 'accuracy' else 4
  imp_unit = comparison['unit']
  lines = ['### Beside the study', '']
  lines.append(
      f'The study\'s published numbers ({comparison["label"]}) beside jal\'s. '
      f'The study reports means of {comparison["study_seeds"]} seeds and no '
      f'intervals; the {pct} intervals are jal\'s, over jal\'s seeds. "CI '
      'contains" asks whether the study\'s mean lies in jal\'s interval; it '
      'ignores the study\'s own seed noise, which it does not report. "Sign '
      'agrees" compares the sign of jal\'s mean with the study\'s; "(jal CI '
      'spans 0)" marks signs that jal\'s seeds do not establish.')
  lines.append('')
  if comparison['improvement']:
    lines.append(f'Average improvement over random over all selections '
                 f'({"percentage points" if imp_unit == "pp" else "AP"}):')
    lines.append('')
    table = []
    for row in comparison['improvement']:
      n = row['jal_n_seeds']
      study_cell = (f'{_num(row["study_value"], imp_dec, True)} '
                    f'({row["study_label"]})')
      if n == 0:
        table.append([row['strategy'], study_cell, 'not run', 'n/a', 'n/a',
                      'n/a'])
        continue
      interval = (f'[{_num(row["jal_lo"], imp_dec, True)}, '
                  f'{_num(row["jal_hi"], imp_dec, True)}]' if n >= 2 else
                  f'n/a ({n} seed{"s" if n != 1 else ""})')
      sign = _yes_no(row['sign_agrees'], n)
      if row['jal_ci_excludes_zero'] is False:
        sign += ' (jal CI spans 0)'
      table.append([row['strategy'], study_cell,
                    _num(row['jal_mean'], imp_dec, True), interval,
                    _yes_no(row['ci_contains_study'], n), sign])
    lines += markdown_table(
        ['Strategy', f'study ({imp_unit})', f'jal mean ({imp_unit})',
         f'jal {pct} CI', 'CI contains the study\'s value?',
         'jal sign agrees with the study?'], table)
    lines.append('')
  if comparison['per_selection']:
    label = comparison['per_selection'][0]['study_label']
    lines.append(f'Test accuracy (%) at each selection ({label}):')
    lines.append('')
    table = []
    for row in comparison['per_selection']:
      n = row['jal_n_seeds']
      where = f'{row["selection"]}' + (f' (n={row["n_labeled"]})'
                                        if row['n_labeled'] is not None else '')
      if n == 0:
        table.append([row['strategy'], where, _num(row['study_value'], 1),
                      'not run', 'n/a', 'n/a'])
        continue
      interval = (f'[{_num(row["jal_lo"], 2)}, {_num(row["jal_hi"], 2)}]'
                  if n >= 2 else f'n/a ({n} seed{"s" if n != 1 else ""})')
      table.append([row['strategy'], where, _num(row['study_value'], 1),
                    _num(row['jal_mean'], 2), interval,
                    _yes_no(row['ci_contains_study'], n)])
    lines += markdown_table(
        ['Strategy', 'Selection', 'study (%)', 'jal mean (%)', f'jal {pct} CI',
         'CI contains the study\'s value?'], table)
    lines.append('')
  for note in comparison['notes']:
    lines.append(f'Note: {note[0].upper() + note[1:]}')
  if comparison['notes']:
    lines.append('')
  return lines


_STUDY_COLUMNS = ('setting', 'name', 'query_size', 'metric', 'table',
                  'strategy', 'selection', 'n_labeled', 'unit', 'study_value',
                  'study_label', 'study_seeds', 'jal_mean', 'jal_lo', 'jal_hi',
                  'jal_n_seeds', 'confidence', 'ci_method',
                  'ci_contains_study', 'sign_agrees', 'jal_ci_excludes_zero')


def _study_rows(results):
  """Flat rows of every setting's comparison, the columns of the CSV."""
  rows = []
  for key, res in results.items():
    comparison = res.get('study')
    if not comparison:
      continue
    for row in comparison['improvement'] + comparison['per_selection']:
      rows.append({'setting': key, 'name': res['name'],
                   'query_size': res['query_size'], 'metric': res['metric'],
                   **row})
  return rows


def _write_study_csv(rows, out):
  if not rows:
    return []
  path = os.path.join(out, 'study_comparison.csv')

  def fmt(v):
    if isinstance(v, bool):
      return 'yes' if v else 'no'
    return _csv_num(v)

  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(_STUDY_COLUMNS)
    for row in rows:
      w.writerow([fmt(row[c]) for c in _STUDY_COLUMNS])
  return [path]


def _csv_num(v):
  return '' if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _write_csvs(results, out):
  summary_path = os.path.join(out, 'summary.csv')
  with open(summary_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['setting', 'name', 'query_size', 'metric', 'strategy', 'round',
                'n_labeled', 'mean', 'lo', 'hi', 'n_seeds',
                'improvement_mean', 'improvement_lo', 'improvement_hi',
                'improvement_n_seeds'])
    for key, res in results.items():
      for s in res['strategies']:
        c = res['curves'][s]
        imp = res['improvement'].get(s, {}).get('per_round')
        for j, (r, n) in enumerate(zip(res['rounds'], res['n_labeled'])):
          extra = (['', '', '', ''] if imp is None else
                   [_csv_num(imp['mean'][j]), _csv_num(imp['lo'][j]),
                    _csv_num(imp['hi'][j]), imp['n_seeds'][j]])
          w.writerow([key, res['name'], _csv_num(res['query_size']),
                      res['metric'], s, r, n, _csv_num(c['mean'][j]),
                      _csv_num(c['lo'][j]), _csv_num(c['hi'][j]),
                      c['n_seeds'][j]] + extra)
  improvement_path = os.path.join(out, 'improvement.csv')
  aulc_path = os.path.join(out, 'aulc.csv')
  head = ['setting', 'name', 'query_size', 'metric', 'strategy']
  stat_cols = ['mean', 'lo', 'hi', 'half_width', 'n_seeds', 'confidence',
               'ci_method']
  with open(improvement_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(head + ['baseline'] + stat_cols +
               ['excludes_zero', 'seeds', 'per_seed'])
    for key, res in results.items():
      for s, e in res['improvement'].items():
        w.writerow([key, res['name'], _csv_num(res['query_size']),
                    res['metric'], s, res['baseline'],
                    _csv_num(e['mean']), _csv_num(e['lo']), _csv_num(e['hi']),
                    _csv_num(e['half_width']), e['n'], e['confidence'],
                    e['method'], 'yes' if e['excludes_zero'] else 'no',
                    ' '.join(map(str, e['seeds'])),
                    ' '.join(repr(v) for v in e['per_seed'])])
  with open(aulc_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(head + stat_cols + ['seeds', 'per_seed'])
    for key, res in results.items():
      for s in res['strategies']:
        e = res['aulc'][s]
        w.writerow([key, res['name'], _csv_num(res['query_size']),
                    res['metric'], s, _csv_num(e['mean']), _csv_num(e['lo']),
                    _csv_num(e['hi']), _csv_num(e['half_width']), e['n'],
                    e['confidence'], e['method'],
                    ' '.join(map(str, e['seeds'])),
                    ' '.join(repr(v) for v in e['per_seed'])])
  return [summary_path, improvement_path, aulc_path]


# ----------------------------------------------------------------------------
# Figures.


def _pyplot():
  """matplotlib.pyplot on the Agg backend, imported at the first figure: the
  loop imports this module for `results_table` only."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _band(ax, x, curve, colour, label, scale=1.0, marker='o'):
  x = np.asarray(x, dtype=np.float64)
  mean = np.asarray(curve['mean'], dtype=np.float64) * scale
  lo = np.asarray(curve['lo'], dtype=np.float64) * scale
  hi = np.asarray(curve['hi'], dtype=np.float64) * scale
  ax.plot(x, mean, color=colour, marker=marker, markersize=4, linewidth=2,
          label=label)
  ok = ~(np.isnan(lo) | np.isnan(hi))
  if np.any(ok):
    ax.fill_between(x, np.where(ok, lo, mean), np.where(ok, hi, mean),
                    where=ok, color=colour, alpha=0.18, linewidth=0)


_LEGEND = {'fontsize': 10, 'framealpha': 0.85, 'edgecolor': 'none'}


def _style(ax, xlabel, ylabel):
  ax.set_xlabel(xlabel, fontsize=11)
  ax.set_ylabel(ylabel, fontsize=11)
  ax.grid(True, alpha=0.3)
  ax.tick_params(labelsize=10)
  for side in ('top', 'right'):
    ax.spines[side].set_visible(False)


def _band_caption(res, ci, confidence):
  _, n = _seed_sentence(res)
  if n <= 1:
    return 'single seed, no interval'
  method = 'Student-t' if ci == 't' else 'bootstrap'
  return f'mean of {n} seeds, shaded: {100 * confidence:g}% {method} CI'


def _plot_curves(res, colours, ci, confidence, path):
  metric, baseline = res['metric'], res['baseline']
  scale = _scale(metric)
  x = res['n_labeled']
  plt = _pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
  for s in res['strategies']:
    n = len(res['seeds'][s])
    _band(left, x, res['curves'][s], colours[s],
          f'{s} ({n} seed{"s" if n != 1 else ""})', scale)
  _style(left, 'Number of labeled examples', _metric_label(metric))
  left.set_title(_metric_label(metric).split(' (')[0] + ' vs labels',
                 fontsize=12)

  right.axhline(0.0, color=colours.get(baseline, 'k'), linestyle='--',
                linewidth=1.5, label=f'{baseline} = 0 (baseline, right)')
  for s, e in res['improvement'].items():
    _band(right, x, e['per_round'], colours[s], f'{s} − {baseline}', scale)
  _style(right, 'Number of labeled examples',
         _improvement_label(metric, baseline))
  right.set_title(f'Paired improvement over {baseline} (same seed and round)',
                  fontsize=12)
  for ax in (left, right):
    if len(x) <= 8:
      ax.set_xticks(x)
    span = (x[-1] - x[0]) or 1
    ax.set_xlim(x[0] - 0.03 * span, x[-1] + 0.03 * span)
  # One legend for both panels, below them, so it never covers a curve.
  handles, labels = left.get_legend_handles_labels()
  extra_h, extra_l = right.get_legend_handles_labels()
  handles.append(extra_h[0])
  labels.append(extra_l[0])
  ncol = min(len(handles), 6)
  rows = -(-len(handles) // ncol)
  fig.legend(handles, labels, loc='lower center', ncol=ncol, **_LEGEND)
  fig.suptitle(f'{res["title"]}: {_band_caption(res, ci, confidence)}',
               fontsize=13)
  fig.tight_layout(rect=(0, 0.045 + 0.05 * rows, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_minority(res, colours, ci, confidence, path):
  keep = [j for j, r in enumerate(res['rounds']) if r > 0]
  x = [res['n_labeled'][j] for j in keep]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for s in res['strategies']:
    c = res['minority_fraction'][s]
    curve = {k: [c[k][j] for j in keep] for k in ('mean', 'lo', 'hi')}
    _band(ax, x, curve, colours[s], s)
  _style(ax, 'Number of labeled examples after the selection',
         'Minority-class fraction of queried labels')
  ax.set_ylim(bottom=0)
  if len(x) <= 8:
    ax.set_xticks(x)
  ax.legend(**_LEGEND)
  ax.set_title(f'{res["title"]}: minority class queried\n'
               f'({_band_caption(res, ci, confidence)})', fontsize=12)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_selection_grid(x, y, selections, n_labeled, colours, title, path,
                        max_columns=6):
  """Queries on a 2-D point cloud, one row per strategy (the study's Fig 3.1).

  Args:
    x: f[n, 2], the training pool.
    y: i[n], its labels.
    selections: dict strategy -> dict round -> i[k] indices into x; round 0
      holds the warmup set.
    n_labeled: dict round -> labels after that round (for column titles).
    colours: dict strategy -> colour (row labels).
    title: figure title.
    path: where the PNG goes.
    max_columns: at most this many selections, evenly spaced, are drawn.
  """
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y)
  strategies = list(selections)
  rounds = sorted({r for s in strategies for r in selections[s] if r > 0})
  if len(rounds) > max_columns:
    rounds = [rounds[int(round(i))] for i in
              np.linspace(0, len(rounds) - 1, max_columns)]
  n_rows, n_cols = len(strategies), len(rounds)
  plt = _pyplot()
  from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols + 0.6,
                                                    3.0 * n_rows + 0.9),
                           squeeze=False)
  pad = 0.04 * (x.max(axis=0) - x.min(axis=0))
  lims = np.stack([x.min(axis=0) - pad, x.max(axis=0) + pad])
  classes = np.unique(y)
  palette = np.array(_CLASS_COLOURS)
  point_colours = palette[np.searchsorted(classes, y) % len(palette)]
  # A fixed shuffle, so no class is drawn over the other where they overlap.
  order = np.random.default_rng(0).permutation(len(x))
  for i, s in enumerate(strategies):
    for j, r in enumerate(rounds):
      ax = axes[i, j]
      ax.scatter(x[order, 0], x[order, 1], s=3, c=point_colours[order],
                 linewidths=0, rasterized=True)
      before = [idx for q, idx in selections[s].items() if q < r]
      before = np.concatenate(before).astype(int) if before else np.zeros(
          0, int)
      now = np.asarray(selections[s].get(r, []), dtype=int)
      ax.scatter(x[before, 0], x[before, 1], s=18, color=_LABELED_COLOUR,
                 edgecolors='none')
      ax.scatter(x[now, 0], x[now, 1], s=42, color=_QUERY_COLOUR,
                 edgecolors='black', linewidths=0.6)
      ax.set_xlim(lims[:, 0])
      ax.set_ylim(lims[:, 1])
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        n = n_labeled.get(r)
        ax.set_title(f'Selection {r}' + (f' (n={n})' if n else ''),
                     fontsize=11)
      if j == 0:
        ax.set_ylabel(s, fontsize=13, fontweight='bold',
                      color=colours.get(s, 'k'))
  handles = [
      mlines.Line2D([], [], linestyle='', marker='o', markersize=6,
                              color=_CLASS_COLOURS[k % len(_CLASS_COLOURS)],
                              label=f'class {c}')
      for k, c in enumerate(classes)
  ] + [
      mlines.Line2D([], [], linestyle='', marker='o', markersize=6,
                              color=_LABELED_COLOUR, label='labeled so far'),
      mlines.Line2D([], [], linestyle='', marker='o', markersize=8,
                              color=_QUERY_COLOUR, markeredgecolor='black',
                              label='queried this round'),
  ]
  fig.legend(handles=handles, loc='lower center', ncol=len(handles),
             frameon=False, fontsize=10)
  fig.suptitle(title, fontsize=13)
  fig.tight_layout(rect=(0, 0.06, 1, 0.97))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _load_points(config):
  """(x_train f[n, 2], y_train i[n]) via jal.data, or None with a log line."""
  data = config.get('data') or {}
  if _IMAGE_DATA.search(str(data.get('name', ''))):
    return None
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top
    jal_data = importlib.import_module('jal.data')
    ds = jal_data.load_dataset(ml_collections.ConfigDict(data),
                               data_dir=config.get('data_dir'),
                               seed=config.get('seed', 0))
  except Exception as e:  # pylint: disable=broad-except
    logging.info('selection figure skipped: could not load %s via jal.data '
                 '(%s: %s)', data.get('name'), type(e).__name__, e)
    return None
  x = np.asarray(ds.x_train)
  if x.ndim != 2 or x.shape[1] != 2:
    logging.info('selection figure skipped: data %s is not 2-D (x_train %s)',
                 data.get('name'), x.shape)
    return None
  return x, np.asarray(ds.y_train)


def _selection_figure(setting, res, colours, path):
  if not setting.selections:
    return False
  by_strategy = collections.defaultdict(dict)
  for (s, seed, r), (idx, _) in setting.selections.items():
    by_strategy[s].setdefault(seed, {})[r] = np.asarray(idx, dtype=int)
  common = set.intersection(*(set(v) for v in by_strategy.values()))
  seed = min(common) if common else None
  points = _load_points(setting.config)
  if points is None:
    return False
  x, y = points
  selections = {}
  for s in order_strategies(by_strategy, res['baseline']):
    own = seed if seed is not None else min(by_strategy[s])
    selections[s] = by_strategy[s][own]
    top = max(int(np.max(v, initial=-1)) for v in selections[s].values())
    if top >= len(x):
      logging.warning('selection figure skipped: indices exceed the pool of %d '
                      'points', len(x))
      return False
  plot_selection_grid(
      x, y, selections, dict(zip(res['rounds'], res['n_labeled'])), colours,
      f'{res["title"]}: queries at each selection (seed '
      f'{seed if seed is not None else "first per strategy"})', path)
  return True


# ----------------------------------------------------------------------------
# Entry points.


def write_report(workdirs, out, metric=None, baseline='random', ci='t',
                 confidence=0.95, num_resamples=10000, bootstrap_seed=0,
                 figures=True):
  """Reads workdirs, writes report.md, CSVs and PNGs into `out`.

  Args:
    workdirs: a workdir or list of them; grouped by (config name, query_size).
      The same (strategy, seed, round) in two workdirs is an error unless the
      rows agree (timing fields aside).
    out: output directory (created).
    metric: 'accuracy' | 'average_precision' | None (per setting:
      average_precision when the metrics have it, else accuracy).
    baseline: strategy the improvements are paired against.
    ci: 't' (Student t over seeds) or 'bootstrap' (percentile).
    confidence: two-sided coverage of every interval.
    num_resamples, bootstrap_seed: for ci='bootstrap'.
    figures: write the PNGs.

  Returns:
    dict with 'settings': {setting key (e.g. 'gaussian_q5') -> statistics:
    rounds, n_labeled, strategies, seeds, values, curves (per-round mean, lo,
    hi, n_seeds), improvement (per strategy: mean, lo, hi, half_width, n,
    excludes_zero, per_seed, seeds, per_round), aulc, minority_fraction,
    figures, study (None, or the setting beside `jal.study`: label, metric,
    unit, study_seeds, study_query_size, notes and rows under 'improvement'
    and 'per_selection')}, plus 'files' (everything written), 'ci',
    'confidence', 'colours' and 'study_comparison' (the rows of
    study_comparison.csv, values in the study's units).
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  if not workdirs:
    raise ValueError('write_report: no workdirs given')
  if metric is not None and metric not in _METRICS:
    raise ValueError(f'unknown metric {metric!r}; choose from {_METRICS}')
  if ci not in ('t', 'bootstrap'):
    raise ValueError(f"unknown ci {ci!r}; choose 't' or 'bootstrap'")
  ci_kwargs = ({'num_resamples': num_resamples, 'seed': bootstrap_seed}
               if ci == 'bootstrap' else {})
  os.makedirs(out, exist_ok=True)
  settings = load_settings([os.fspath(w) for w in workdirs])
  results = {}
  for setting in settings:
    if setting.key in results:
      raise ValueError(f'two settings map to the same name {setting.key}')
    results[setting.key] = analyse(setting, metric, baseline, ci, confidence,
                                    ci_kwargs)
    results[setting.key]['study'] = _compare_with_study(results[setting.key],
                                                        ci, confidence)
  colours = strategy_colours({s for r in results.values()
                              for s in r['strategies']})

  files = []
  markdown = ['# jal active learning report', '']
  markdown.append(
      f'{len(results)} setting(s) from {len(workdirs)} workdir(s). Every '
      f'interval is a {100 * confidence:g}% '
      f'{"Student-t" if ci == "t" else "percentile bootstrap"} interval over '
      'seeds; improvements are paired (same seed, same round) against '
      f'`{baseline}`. CSV files hold the same numbers in the metric\'s own '
      'units (accuracy as a fraction).')
  markdown.append('')
  for setting in settings:
    res = results[setting.key]
    written = []
    if figures:
      path = os.path.join(out, f'{setting.key}_curves.png')
      _plot_curves(res, colours, ci, confidence, path)
      written.append(path)
      if res['minority_fraction']:
        path = os.path.join(out, f'{setting.key}_minority.png')
        _plot_minority(res, colours, ci, confidence, path)
        written.append(path)
      path = os.path.join(out, f'{setting.key}_selections.png')
      if _selection_figure(setting, res, colours, path):
        written.append(path)
    res['figures'] = written
    files += written
    markdown += _markdown_setting(res, ci, confidence, ci_kwargs, written)

  report_path = os.path.join(out, 'report.md')
  with open(report_path, 'w') as f:
    f.write('\n'.join(markdown).rstrip() + '\n')
  study_rows = _study_rows(results)
  files = ([report_path] + _write_csvs(results, out) +
           _write_study_csv(study_rows, out) + files)
  logging.info('report for %d setting(s) written to %s', len(results), out)
  return {'settings': results, 'files': files, 'ci': ci,
          'confidence': confidence, 'colours': colours,
          'study_comparison': study_rows}


def _define_flags():
  # Defined only when run as a program, so importing jal.report next to other
  # entry points (jal.main also has --workdir) never clashes.
  flags.DEFINE_multi_string('workdir', None, 'jal workdir(s) to report on.')
  flags.DEFINE_string('out', None, 'Directory for report.md, CSVs and PNGs.')
  flags.DEFINE_enum('metric', None, list(_METRICS),
                    'Headline metric; default average_precision if present.')
  flags.DEFINE_string('baseline', 'random', 'Strategy improvements are over.')
  flags.DEFINE_enum('ci', 't', ['t', 'bootstrap'], 'Interval over seeds.')
  flags.DEFINE_float('confidence', 0.95, 'Two-sided interval coverage.')
  flags.DEFINE_bool('verdict', False, 'Write only verdict.md and verdict.csv (jal.verdict): '
                    'the study\'s table rows against these workdirs (LABEL=PATH keeps a '
                    'workdir apart from others of its setting); t intervals.')
  flags.DEFINE_multi_string('verdict_into', None, 'With --verdict: files whose '
                            '<!-- verdict:start/end --> section gets verdict.md.')
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if f.verdict:
    from jal import verdict  # pylint: disable=g-import-not-at-top
    with logs.one_line_errors('interrupted'):
      v = verdict.write_verdict(f.workdir, f.out, confidence=f.confidence)
      for path in f.verdict_into or ():
        verdict.update_marked(path, v['markdown'])
    print(f'Verdict: {v["files"][0]}')
    return
  with logs.one_line_errors('interrupted'):
    for workdir in f.workdir:
      if not os.path.isdir(workdir):
        raise FileNotFoundError(f'no such workdir: {workdir}')
    report = write_report(f.workdir, f.out, metric=f.metric, baseline=f.baseline,
                          ci=f.ci, confidence=f.confidence)
  print(f'Report: {report["files"][0]}')


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=logs.parse_flags)
