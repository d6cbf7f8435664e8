"""`write_report`: workdirs in, report.md, the CSVs and the PNGs out.

It reads the workdirs (`loading`), computes each setting's statistics and
sets them beside the study (`analysis`), then writes the text (`tables`) and
the figures (`plots`).
"""

import os

from absl import logging

from jal import study
from jal.report import analysis
from jal.report import loading
from jal.report import plots
from jal.report import tables


def write_report(
    workdirs,
    out,
    metric=None,
    baseline='random',
    ci='t',
    confidence=0.95,
    num_resamples=10000,
    bootstrap_seed=0,
    figures=True,
):
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
  if metric is not None and metric not in analysis.METRICS:
    raise ValueError(f'unknown metric {metric!r}; choose from {analysis.METRICS}')
  if ci not in ('t', 'bootstrap'):
    raise ValueError(f"unknown ci {ci!r}; choose 't' or 'bootstrap'")
  ci_kwargs = {'num_resamples': num_resamples, 'seed': bootstrap_seed} if ci == 'bootstrap' else {}
  os.makedirs(out, exist_ok=True)
  settings = loading.load_settings([os.fspath(w) for w in workdirs])
  results = {}
  for setting in settings:
    if setting.key in results:
      raise ValueError(f'two settings map to the same name {setting.key}')
    res = analysis.analyse(setting, metric, baseline, ci, confidence, ci_kwargs)
    res['study'] = analysis.compare_with_study(res, ci, confidence)
    # A setting that is not one of the study's says how it departs from the one it stands for.
    res['departs'] = (
        '' if setting.name in study.SETTINGS else loading.departs(setting.name, setting.config)
    )
    results[setting.key] = res
  colours = plots.strategy_colours({s for r in results.values() for s in r['strategies']})

  files = []
  markdown = ['# jal active learning report', '']
  markdown.append(
      f'{len(results)} setting(s) from {len(workdirs)} workdir(s). Every '
      f'interval is a {100 * confidence:g}% '
      f'{"Student-t" if ci == "t" else "percentile bootstrap"} interval over '
      'seeds; improvements are paired (same seed, same round) against '
      f"`{baseline}`. CSV files hold the same numbers in the metric's own "
      'units (accuracy as a fraction).'
  )
  markdown.append('')
  if len(results) > 1:
    markdown += tables.markdown_overview(results, baseline, confidence)
  for setting in settings:
    res = results[setting.key]
    written = []
    if figures:
      path = os.path.join(out, f'{setting.key}_curves.png')
      plots.plot_curves(res, colours, ci, confidence, path)
      written.append(path)
      if res['minority_fraction']:
        path = os.path.join(out, f'{setting.key}_minority.png')
        plots.plot_minority(res, colours, ci, confidence, path)
        written.append(path)
      path = os.path.join(out, f'{setting.key}_selections.png')
      if plots.selection_figure(setting, res, colours, path):
        written.append(path)
    res['figures'] = written
    files += written
    markdown += tables.markdown_setting(res, ci, confidence, ci_kwargs, written)

  report_path = os.path.join(out, 'report.md')
  with open(report_path, 'w') as f:
    f.write('\n'.join(markdown).rstrip() + '\n')
  study_rows = tables.study_rows(results)
  files = (
      [report_path]
      + tables.write_csvs(results, out)
      + tables.write_study_csv(study_rows, out)
      + files
  )
  logging.info('report for %d setting(s) written to %s', len(results), out)
  return {
      'settings': results,
      'files': files,
      'ci': ci,
      'confidence': confidence,
      'colours': colours,
      'study_comparison': study_rows,
  }
