"""The report's text: report.md, the loop's results.md and the CSV files.

report.md and the CSVs format what `analysis.analyse` and
`analysis.compare_with_study` computed; results.md (`results_table`, the
loop's own table while it runs) is the mean ± std over seeds of the metrics
rows so far. Text shows accuracy in percent (`analysis.metric_scale`); the
CSVs hold the metric's own units, except study_comparison.csv, which is in
the study's (pp, % or AP).
"""

import csv
import math
import os

import numpy as np

from jal import stats
from jal import study
from jal.report import analysis

# ----------------------------------------------------------------------------
# Cells and sentences.


def metric_label(metric: str) -> str:
  """The axis label and heading of `metric`, e.g. 'Test accuracy (%)'."""
  return {
      'accuracy': 'Test accuracy (%)',
      'average_precision': 'Test average precision (minority class)',
  }.get(metric, metric)


def _num(v, decimals, sign=False):
  """`v` with `decimals` decimals (and a sign when `sign`); 'n/a' for None or NaN."""
  if v is None or math.isnan(v):
    return 'n/a'
  return f'{v:+.{decimals}f}' if sign else f'{v:.{decimals}f}'


def _ci_sentence(ci, confidence, n_seeds, ci_kwargs):
  """How the intervals of report.md are computed, in one sentence."""
  pct = f'{100 * confidence:g}%'
  if ci == 't':
    text = f'{pct} Student-t intervals over seeds: mean ± t_(n-1) · sd / √n'
    if n_seeds >= 2:
      t = stats.t_quantile(0.5 * (1 + confidence), n_seeds - 1)
      text += f' (with {n_seeds} seeds t = {t:.3f})'
    return text + '; "±" gives the half-width.'
  return (
      f'{pct} percentile bootstrap intervals over seeds '
      f'({ci_kwargs.get("num_resamples", 10000)} resamples, seed '
      f'{ci_kwargs.get("seed", 0)}); "±" gives half the interval width. '
      'With few seeds the bootstrap interval is too narrow (3 seeds allow '
      'only 10 distinct resamples); prefer --ci=t there.'
  )


def seed_sentence(res) -> tuple[str, int]:
  """(The seeds of `res` in words, the most seeds of any strategy)."""
  counts = {s: len(res['seeds'][s]) for s in res['strategies']}
  if len(set(counts.values())) == 1:
    n = next(iter(counts.values()))
    seeds = next(iter(res['seeds'].values()))
    listed = ', '.join(map(str, seeds))
    return (
        f'{n} seed{"s" if n != 1 else ""} per strategy (seed{"s" if n != 1 else ""} {listed})',
        n,
    )
  parts = ', '.join(f'{s}: {counts[s]} {res["seeds"][s]}' for s in res['strategies'])
  return f'seeds per strategy differ ({parts})', max(counts.values())


def markdown_table(header, rows) -> list[str]:
  """The lines of a Markdown table: the header, its rule, one line per row of cells."""
  return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + [
      '| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows
  ]


def _round_column(r, n):
  """The column heading of round `r` with `n` labels."""
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


# ----------------------------------------------------------------------------
# Markdown: results.md and report.md.


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
  metric = analysis.headline_metric(rows)
  scale, decimals = (100.0, 1) if metric == 'accuracy' else (1.0, 4)
  rounds = sorted({r['round'] for r in rows})
  seeds = sorted({x['seed'] for x in rows})
  header = ['Strategy'] + [
      _round_column(r, config.warmup_size + r * config.query_size) for r in rounds
  ]
  table, partial = [], False
  for s in strategies:
    cells = [s]
    for r in rounds:
      v = np.array([x[metric] for x in rows if x['strategy'] == s and x['round'] == r]) * scale
      cells.append(
          _cell(v.mean(), v.std(ddof=1) if len(v) > 1 else math.nan, len(v), len(seeds), decimals)
          if len(v)
          else ''
      )
      partial |= 0 < len(v) < len(seeds)
    table.append(cells)
  unit = 'test accuracy (%)' if metric == 'accuracy' else 'minority-class test average precision'
  fewer = ' (fewer where a cell says so)' if partial else ''
  title = (
      f'{config.name}: {unit}, mean ± std over {len(seeds)} seed(s) {seeds}{fewer}; '
      f'query size {config.query_size}, warmup {config.warmup_size}, '
      f'{config.train.members}-member ensemble\n\n'
  )
  return title + '\n'.join(markdown_table(header, table)) + '\n'


def _improvement_format(metric: str) -> tuple[int, str]:
  """(Decimals, unit) of an improvement in `metric`: (3, 'pp') for accuracy, else (4, 'AP')."""
  return (3, 'pp') if metric == 'accuracy' else (4, 'AP')


def _gain_cell(mean, lo, hi, scale, decimals) -> str:
  """'mean [lo, hi]' of a gain in the report's units (`scale`), bold when the interval
  excludes 0 (`stats.summarize`'s rule); the mean alone when there is no interval (NaN)."""
  text = _num(mean * scale, decimals, True)
  if math.isnan(lo) or math.isnan(hi):
    return text
  text += f' [{_num(lo * scale, decimals, True)}, {_num(hi * scale, decimals, True)}]'
  return f'**{text}**' if lo > 0 or hi < 0 else text


def _improvement_cells(e, scale, decimals) -> tuple[str, str, str]:
  """(Mean, '[lo, hi]', 'yes' | 'no') of an `analysis` improvement entry `e`, in the
  report's units (`scale`); the interval is 'n/a (1 seed)' and the last 'n/a' below 2 seeds."""
  mean = _num(e['mean'] * scale, decimals, True)
  if e['n'] < 2:
    return mean, f'n/a ({e["n"]} seed{"s" if e["n"] != 1 else ""})', 'n/a'
  interval = f'[{_num(e["lo"] * scale, decimals, True)}, {_num(e["hi"] * scale, decimals, True)}]'
  return mean, interval, 'yes' if e['excludes_zero'] else 'no'


def markdown_overview(results, baseline, confidence) -> list[str]:
  """The lines of report.md's overview of several settings: one row per setting, one
  column per strategy other than `baseline`, each cell its average improvement over
  `baseline` ('mean [lo, hi] (seeds)', bold when the interval excludes 0; '–' where
  the setting did not run the strategy).

  Args:
    results: {setting key -> `analysis.analyse`'s dict}, in report order.
    baseline: the strategy the improvements are paired against.
    confidence: the intervals' two-sided coverage.
  """
  strategies = []
  for res in results.values():
    strategies += [s for s in res['improvement'] if s not in strategies]
  if not strategies:
    return []
  table = []
  for res in results.values():
    scale = analysis.metric_scale(res['metric'])
    decimals, unit = _improvement_format(res['metric'])
    row = [res['title'], unit]
    for s in strategies:
      e = res['improvement'].get(s)
      if e is None:
        row.append('–')
        continue
      n = e['n']
      count = f' ({n})' if n >= 2 else f' ({n} seed{"s" if n != 1 else ""}, no interval)'
      row.append(_gain_cell(e['mean'], e['lo'], e['hi'], scale, decimals) + count)
    table.append(row)
  lines = [f'## Overview: average improvement over {baseline}, by setting', '']
  lines.append(
      'One row per setting below. Each cell: the mean over seeds of the per-seed average '
      f'over all selections of (strategy − {baseline}), its {100 * confidence:g}% interval '
      'and the number of seeds; **bold** where the interval excludes 0. Units: percentage '
      'points of accuracy (pp) or minority-class average precision (AP). Each setting is '
      'tested on its own: no interval here pools settings.'
  )
  lines.append('')
  return lines + markdown_table(['Setting', 'Unit'] + strategies, table) + ['']


def _per_selection_improvement(res, scale, decimals, unit, pct) -> list[str]:
  """The lines of the table of paired improvements over the baseline at each selection:
  'mean [lo, hi]' per strategy and selection, bold where the interval excludes 0."""
  baseline = res['baseline']
  selections = [(i, r, n) for i, (r, n) in enumerate(zip(res['rounds'], res['n_labeled'])) if r > 0]
  table = []
  for s, e in res['improvement'].items():
    row = [s]
    n_max = max(e['per_round']['n_seeds'], default=0)
    for i, _, _ in selections:
      mean, lo, hi = (e['per_round'][k][i] for k in ('mean', 'lo', 'hi'))
      n = e['per_round']['n_seeds'][i]
      partial = 0 < n < n_max and not (math.isnan(lo) or math.isnan(hi))
      row.append(_gain_cell(mean, lo, hi, scale, decimals) + (f' ({n} seeds)' if partial else ''))
    table.append(row)
  lines = [f'### Improvement over {baseline} at each selection ({unit})', '']
  lines.append(
      f'Per selection: the mean over seeds of (strategy − {baseline}) at the same seed, with '
      f'its {pct} interval; **bold** where the interval excludes 0. Each column is a test of '
      'its own: over many columns some intervals exclude 0 by chance alone (about 1 in 20 at '
      "95% where there is no effect), so the average above is the setting's one test."
  )
  lines.append('')
  header = ['Strategy'] + [_round_column(r, n) for _, r, n in selections]
  return lines + markdown_table(header, table) + ['']


def markdown_setting(res, ci, confidence, ci_kwargs, figures) -> list[str]:
  """The lines of report.md for one setting.

  Args:
    res: `analysis.analyse`'s dict, with 'study' (`compare_with_study`) and 'departs'
      (`loading.departs`; '' for a study setting).
    ci, confidence, ci_kwargs: how its intervals were computed.
    figures: paths of the PNGs of the setting, linked at the end.
  """
  metric, baseline = res['metric'], res['baseline']
  scale = analysis.metric_scale(metric)
  dec = 2 if metric == 'accuracy' else 4
  unit = '%' if metric == 'accuracy' else 'AP'
  imp_dec, imp_unit = _improvement_format(metric)
  pct = f'{100 * confidence:g}%'
  seed_text, n_seeds = seed_sentence(res)
  lines = [f'## {res["title"]}', '']
  lines.append(
      f'Workdirs: {", ".join(f"`{w}`" for w in res["workdirs"])}. '
      f'Metric: {metric_label(metric).lower()}. '
      f'Seeds: {seed_text}.'
  )
  lines.append('')
  if res.get('departs'):
    lines += [f'Not the study\'s setting; how it departs: {res["departs"]}', '']
  if n_seeds <= 1:
    lines.append(
        'Only one seed per strategy: no confidence interval is '
        'possible, so the numbers below are single runs and say '
        'nothing about how much they would move with another seed.'
    )
  else:
    lines.append('Intervals: ' + _ci_sentence(ci, confidence, n_seeds, ci_kwargs))
  lines.append('')

  # (1) The metric at each selection (Table 3.1).
  lines.append(f'### {metric_label(metric)} at each selection (cf. Table 3.1)')
  lines.append('')
  header = ['Strategy'] + [_round_column(r, n) for r, n in zip(res['rounds'], res['n_labeled'])]
  table = []
  for s in res['strategies']:
    c = res['curves'][s]
    n_max = len(res['seeds'][s])
    table.append(
        [s]
        + [
            _cell(m * scale, 0.5 * (hi - lo) * scale, n, n_max, dec)
            for m, lo, hi, n in zip(c['mean'], c['lo'], c['hi'], c['n_seeds'])
        ]
    )
  lines += markdown_table(header, table)
  lines.append('')

  # (2) Average improvement over the baseline (Tables 3.2, 4.1, 4.2).
  if res['improvement']:
    cf = ' (cf. Tables 3.2, 4.1, 4.2)' if baseline == study.BASELINE else ''
    lines.append(f'### Average improvement over {baseline} over all selections{cf}')
    lines.append('')
    lines.append(
        f'Per seed: the mean over selections 1..{res["rounds"][-1]} '
        f'of (strategy − {baseline}) at the same seed and round, in '
        f'{"percentage points" if metric == "accuracy" else "AP"}; '
        f'then the mean and {pct} interval over seeds. "Excludes 0?" '
        'is yes when the interval lies entirely on one side of zero; '
        'no means these seeds cannot tell the sign of the effect.'
    )
    lines.append('')
    table = [
        [s, *_improvement_cells(e, scale, imp_dec), e['n']] for s, e in res['improvement'].items()
    ]
    lines += markdown_table(
        ['Strategy', f'Avg. improvement ({imp_unit})', f'{pct} CI', 'Excludes 0?', 'Seeds'], table
    )
    lines.append('')
    lines += _per_selection_improvement(res, scale, imp_dec, imp_unit, pct)

  # (3) Area under the learning curve.
  lines.append('### Area under the learning curve')
  lines.append('')
  n0, n1 = res['n_labeled'][0], res['n_labeled'][-1]
  lines.append(
      f'Trapezoid over n_labeled from {n0} to {n1} (warmup '
      "included), divided by the range: the curve's mean level "
      f'({unit}).'
  )
  lines.append('')
  table = []
  for s in res['strategies']:
    e = res['aulc'][s]
    if e['n'] >= 2:
      interval = f'[{_num(e["lo"] * scale, dec)}, {_num(e["hi"] * scale, dec)}]'
    else:
      interval = f'n/a ({e["n"]} seed{"s" if e["n"] != 1 else ""})'
    table.append([s, _num(e['mean'] * scale, dec), interval, e['n']])
  lines += markdown_table(['Strategy', f'AULC ({unit})', f'{pct} CI', 'Seeds'], table)
  lines.append('')

  if res['minority_fraction']:
    lines.append('### Minority-class fraction of each query (cf. Figure 4.5)')
    lines.append('')
    header = ['Strategy'] + [
        _round_column(r, n) for r, n in zip(res['rounds'], res['n_labeled']) if r > 0
    ]
    table = []
    for s in res['strategies']:
      c = res['minority_fraction'][s]
      n_max = len(res['seeds'][s])
      table.append(
          [s]
          + [
              _cell(m, 0.5 * (hi - lo), n, n_max, 3)
              for r, m, lo, hi, n in zip(res['rounds'], c['mean'], c['lo'], c['hi'], c['n_seeds'])
              if r > 0
          ]
      )
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


def _yes_no(flag, n):
  """'yes' | 'no' for a flag of jal's `n` seeds; 'n/a' when there is none."""
  if flag is None:
    return 'n/a' if n >= 2 or n == 0 else f'n/a ({n} seed)'
  return 'yes' if flag else 'no'


def _markdown_study(res, comparison, ci, confidence):
  """The lines of the section "Beside the study" for one setting."""
  pct = f'{100 * confidence:g}%'
  imp_dec, imp_unit = _improvement_format(comparison['metric'])
  lines = ['### Beside the study', '']
  lines.append(
      f'The study\'s published numbers ({comparison["label"]}) beside jal\'s. '
      f'The study reports means of {comparison["study_seeds"]} seeds and no '
      f"intervals; the {pct} intervals are jal's, over jal's seeds. \"CI "
      "contains\" asks whether the study's mean lies in jal's interval; it "
      'ignores the study\'s own seed noise, which it does not report. "Sign '
      'agrees" compares the sign of jal\'s mean with the study\'s; "(jal CI '
      'spans 0)" marks signs that jal\'s seeds do not establish.'
  )
  lines.append('')
  if comparison['improvement']:
    lines.append(
        f'Average improvement over random over all selections '
        f'({"percentage points" if imp_unit == "pp" else "AP"}):'
    )
    lines.append('')
    table = []
    for row in comparison['improvement']:
      n = row['jal_n_seeds']
      study_cell = f'{_num(row["study_value"], imp_dec, True)} ({row["study_label"]})'
      if n == 0:
        table.append([row['strategy'], study_cell, 'not run', 'n/a', 'n/a', 'n/a'])
        continue
      interval = (
          f'[{_num(row["jal_lo"], imp_dec, True)}, {_num(row["jal_hi"], imp_dec, True)}]'
          if n >= 2
          else f'n/a ({n} seed{"s" if n != 1 else ""})'
      )
      sign = _yes_no(row['sign_agrees'], n)
      if row['jal_ci_excludes_zero'] is False:
        sign += ' (jal CI spans 0)'
      table.append(
          [
              row['strategy'],
              study_cell,
              _num(row['jal_mean'], imp_dec, True),
              interval,
              _yes_no(row['ci_contains_study'], n),
              sign,
          ]
      )
    lines += markdown_table(
        [
            'Strategy',
            f'study ({imp_unit})',
            f'jal mean ({imp_unit})',
            f'jal {pct} CI',
            "CI contains the study's value?",
            'jal sign agrees with the study?',
        ],
        table,
    )
    lines.append('')
  if comparison['per_selection']:
    label = comparison['per_selection'][0]['study_label']
    lines.append(f'Test accuracy (%) at each selection ({label}):')
    lines.append('')
    table = []
    for row in comparison['per_selection']:
      n = row['jal_n_seeds']
      where = f'{row["selection"]}' + (
          f' (n={row["n_labeled"]})' if row['n_labeled'] is not None else ''
      )
      if n == 0:
        table.append([row['strategy'], where, _num(row['study_value'], 1), 'not run', 'n/a', 'n/a'])
        continue
      interval = (
          f'[{_num(row["jal_lo"], 2)}, {_num(row["jal_hi"], 2)}]'
          if n >= 2
          else f'n/a ({n} seed{"s" if n != 1 else ""})'
      )
      table.append(
          [
              row['strategy'],
              where,
              _num(row['study_value'], 1),
              _num(row['jal_mean'], 2),
              interval,
              _yes_no(row['ci_contains_study'], n),
          ]
      )
    lines += markdown_table(
        [
            'Strategy',
            'Selection',
            'study (%)',
            'jal mean (%)',
            f'jal {pct} CI',
            "CI contains the study's value?",
        ],
        table,
    )
    lines.append('')
  for note in comparison['notes']:
    lines.append(f'Note: {note[0].upper() + note[1:]}')
  if comparison['notes']:
    lines.append('')
  return lines


# ----------------------------------------------------------------------------
# CSV files.


_STUDY_COLUMNS = (
    'setting',
    'name',
    'query_size',
    'metric',
    'table',
    'strategy',
    'selection',
    'n_labeled',
    'unit',
    'study_value',
    'study_label',
    'study_seeds',
    'jal_mean',
    'jal_lo',
    'jal_hi',
    'jal_n_seeds',
    'confidence',
    'ci_method',
    'ci_contains_study',
    'sign_agrees',
    'jal_ci_excludes_zero',
)


def study_rows(results) -> list[dict]:
  """Flat rows of every setting's comparison, the columns of the CSV.

  Args:
    results: dict setting key -> `analysis.analyse`'s dict with 'study'.
  """
  rows = []
  for key, res in results.items():
    comparison = res.get('study')
    if not comparison:
      continue
    for row in comparison['improvement'] + comparison['per_selection']:
      rows.append(
          {
              'setting': key,
              'name': res['name'],
              'query_size': res['query_size'],
              'metric': res['metric'],
              **row,
          }
      )
  return rows


def write_study_csv(rows, out) -> list[str]:
  """Writes `study_rows` into out/study_comparison.csv; [its path], or [] without rows."""
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
  """`v` for a CSV cell: '' for None or NaN."""
  return '' if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _setting_cells(key, res, strategy) -> list:
  """The CSV cells that name a row's setting and strategy (the `head` columns)."""
  return [key, res['name'], _csv_num(res['query_size']), res['metric'], strategy]


def _stat_cells(e) -> list:
  """The cells of one interval over seeds (the `stat_cols` columns)."""
  return [
      _csv_num(e['mean']),
      _csv_num(e['lo']),
      _csv_num(e['hi']),
      _csv_num(e['half_width']),
      e['n'],
      e['confidence'],
      e['method'],
  ]


def _seed_cells(e) -> list:
  """The seeds and their per-seed values, space-separated."""
  return [' '.join(map(str, e['seeds'])), ' '.join(repr(v) for v in e['per_seed'])]


def write_csvs(results, out) -> list[str]:
  """Writes summary.csv, improvement.csv and aulc.csv into `out`; their paths.

  Args:
    results: dict setting key -> `analysis.analyse`'s dict.
    out: an existing directory.
  """
  summary_path = os.path.join(out, 'summary.csv')
  with open(summary_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(
        [
            'setting',
            'name',
            'query_size',
            'metric',
            'strategy',
            'round',
            'n_labeled',
            'mean',
            'lo',
            'hi',
            'n_seeds',
            'improvement_mean',
            'improvement_lo',
            'improvement_hi',
            'improvement_n_seeds',
        ]
    )
    for key, res in results.items():
      for s in res['strategies']:
        c = res['curves'][s]
        imp = res['improvement'].get(s, {}).get('per_round')
        for j, (r, n) in enumerate(zip(res['rounds'], res['n_labeled'])):
          extra = (
              ['', '', '', '']
              if imp is None
              else [
                  _csv_num(imp['mean'][j]),
                  _csv_num(imp['lo'][j]),
                  _csv_num(imp['hi'][j]),
                  imp['n_seeds'][j],
              ]
          )
          w.writerow(
              _setting_cells(key, res, s)
              + [
                  r,
                  n,
                  _csv_num(c['mean'][j]),
                  _csv_num(c['lo'][j]),
                  _csv_num(c['hi'][j]),
                  c['n_seeds'][j],
              ]
              + extra
          )
  improvement_path = os.path.join(out, 'improvement.csv')
  aulc_path = os.path.join(out, 'aulc.csv')
  head = ['setting', 'name', 'query_size', 'metric', 'strategy']
  stat_cols = ['mean', 'lo', 'hi', 'half_width', 'n_seeds', 'confidence', 'ci_method']
  with open(improvement_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(head + ['baseline'] + stat_cols + ['excludes_zero', 'seeds', 'per_seed'])
    for key, res in results.items():
      for s, e in res['improvement'].items():
        w.writerow(
            _setting_cells(key, res, s)
            + [res['baseline']]
            + _stat_cells(e)
            + ['yes' if e['excludes_zero'] else 'no']
            + _seed_cells(e)
        )
  with open(aulc_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(head + stat_cols + ['seeds', 'per_seed'])
    for key, res in results.items():
      for s in res['strategies']:
        e = res['aulc'][s]
        w.writerow(_setting_cells(key, res, s) + _stat_cells(e) + _seed_cells(e))
  return [summary_path, improvement_path, aulc_path]
