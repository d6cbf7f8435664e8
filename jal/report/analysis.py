"""The statistics of one setting: curves, improvement over random, AULC, study.

`analyse` turns a `loading.Setting` into plain lists and floats: per strategy
the metric at each round (mean and interval over seeds), the paired
improvement over the baseline averaged over all selections, and the
normalised area under the learning curve. `compare_with_study` sets those
beside the study's published numbers (`jal.study`). Nothing here writes a
file.
"""

import collections
import math

from absl import logging
import numpy as np

from jal import stats
from jal import study

METRICS = ('accuracy', 'average_precision')

_STRATEGY_ORDER = ('random', 'coreset', 'ensembles')


def headline_metric(rows) -> str:
  """'average_precision' where a row has it (binary imbalanced tasks), else 'accuracy'."""
  return 'average_precision' if _has_field(rows, 'average_precision') else 'accuracy'


def metric_scale(metric: str) -> float:
  """What a value of `metric` is multiplied by for text and figures: accuracy in %."""
  return 100.0 if metric == 'accuracy' else 1.0


def order_strategies(names, baseline='random'):
  """Baseline first, then random/coreset/ensembles, then the rest sorted."""
  names = set(names)
  head = [baseline] if baseline in names else []
  head += [n for n in _STRATEGY_ORDER if n in names and n not in head]
  return head + sorted(names - set(head))


def _value(row, field):
  """row[field] as a float; NaN where the row lacks it."""
  v = row.get(field)
  return math.nan if v is None else float(v)


def _has_field(rows, field):
  """Whether some row of `rows` has a value for `field`."""
  return any(row.get(field) is not None for row in rows)


def _summary(per_seed, ci, confidence, ci_kwargs):
  """`stats.summarize` of per_seed (f[s]), with the per-seed values as floats."""
  out = stats.summarize(per_seed, confidence, ci, **ci_kwargs)
  out['per_seed'] = [float(v) for v in per_seed]
  return out


def analyse(setting, metric, baseline, ci, confidence, ci_kwargs):
  """The statistics of one setting as plain lists and floats.

  Args:
    setting: a `loading.Setting`.
    metric: 'accuracy' | 'average_precision' | None (`headline_metric`).
    baseline: the strategy the improvements are paired against.
    ci: 't' | 'bootstrap', the interval over seeds (`stats.summarize`).
    confidence: two-sided coverage of every interval.
    ci_kwargs: dict, `num_resamples` and `seed` for ci='bootstrap'.

  Returns:
    dict: name, query_size, title, workdirs, metric, baseline, rounds (r[R]),
    n_labeled (n[R]), strategies (in `order_strategies` order), seeds (per
    strategy, sorted), values (per strategy, f[seeds][R] as nested lists, NaN
    where a round is missing), curves (per strategy: per-round mean, lo, hi,
    n_seeds), improvement (per non-baseline strategy: `stats.summarize` of
    the average improvement, per_seed, seeds, per_round), aulc (per
    strategy, likewise), minority_fraction (per-round curves, or None) and
    notes (list[str]).

  Raises:
    ValueError: no rows, no `metric` in them, or a round without n_labeled.
  """
  rows = {k: row for k, (row, _) in setting.metrics.items()}
  if not rows:
    raise ValueError(f'setting {setting.title}: metrics.jsonl has no rows')
  if metric is None:
    metric = headline_metric(rows.values())
  if not _has_field(rows.values(), metric):
    raise ValueError(f'setting {setting.title}: no {metric!r} in metrics of {setting.workdirs}')
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
      logging.warning(
          '%s: round %d has several n_labeled %s; using the most common',
          setting.title,
          r,
          dict(n_by_round[r]),
      )
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
    return {'mean': mean.tolist(), 'lo': lo.tolist(), 'hi': hi.tolist(), 'n_seeds': n.tolist()}

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
    result['notes'].append(
        f'No {baseline!r} runs: no improvement over the baseline can be computed.'
    )
  elif len(rounds) < 2 or rounds[0] != 0:
    result['notes'].append(
        'Need the warmup round 0 and at least one selection for the average improvement.'
    )
  else:
    for s in strategies:
      if s == baseline:
        continue
      common = sorted(set(seeds[s]) & set(seeds[baseline]))
      if not common:
        result['notes'].append(f'{s}: no seed in common with {baseline}; no paired improvement.')
        continue
      pick = lambda name: values[name][[seeds[name].index(x) for x in common]]
      diff = stats.paired_improvement(
          {baseline: pick(baseline), s: pick(s)}, baseline, seeds={baseline: common, s: common}
      )[s]
      complete = ~np.any(np.isnan(diff), axis=1)
      if not np.all(complete):
        dropped = [x for x, c in zip(common, complete) if not c]
        result['notes'].append(
            f'{s}: seeds {dropped} lack some rounds (for {s} or {baseline}); '
            'they count in the per-round curves but not in the average.'
        )
      entry = {'seeds': [x for x, c in zip(common, complete) if c], 'per_round': per_round(diff)}
      if np.any(complete):
        entry.update(_summary(stats.average_improvement(diff[complete]), ci, confidence, ci_kwargs))
      else:
        entry.update(_summary(np.array([]), ci, confidence, ci_kwargs))
      result['improvement'][s] = entry

  # Normalised area under each seed's complete learning curve.
  for s in strategies:
    complete = ~np.any(np.isnan(values[s]), axis=1)
    per_seed = (
        stats.area_under_curve(n_labeled, values[s][complete]) if len(rounds) else np.array([])
    )
    entry = _summary(per_seed, ci, confidence, ci_kwargs)
    entry['seeds'] = [x for x, c in zip(seeds[s], complete) if c]
    result['aulc'][s] = entry

  if has_minority:
    result['minority_fraction'] = {s: per_round(minority[s]) for s in strategies}
  return result


# ----------------------------------------------------------------------------
# Beside the study's published numbers.


def _contains(value, lo, hi):
  """True/False: the interval [lo, hi] holds value; None without interval."""
  if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
    return None
  return bool(lo <= value <= hi)


def _sign_agrees(mean, value):
  """True/False: `mean` has the sign of `value`; None without a mean."""
  if mean is None or math.isnan(mean):
    return None
  return bool(np.sign(mean) == np.sign(value))


def _study_row(table, strategy, selection, unit, value, label, common) -> dict:
  """One row beside the study's published `value`, jal's side still empty (NaN, 0 seeds)."""
  return {
      'table': table,
      'strategy': strategy,
      'selection': selection,
      'n_labeled': None,
      'unit': unit,
      'study_value': value,
      'study_label': label,
      'jal_mean': math.nan,
      'jal_lo': math.nan,
      'jal_hi': math.nan,
      'jal_n_seeds': 0,
      'ci_contains_study': None,
      'sign_agrees': None,
      'jal_ci_excludes_zero': None,
      **common,
  }


def compare_with_study(res, ci, confidence):
  """jal's statistics beside `study.lookup(res['name'])`; None if unknown.

  Returns a dict: label, metric, unit, study_seeds, study_query_size, notes,
  and rows (dicts) under 'improvement' (average improvement over random,
  study units: pp or AP) and 'per_selection' (accuracy in % at each
  selection, Table 3.1 only).
  """
  numbers = study.lookup(res['name'])
  if numbers is None:
    return None
  out = {
      'setting': numbers.setting,
      'label': numbers.label,
      'metric': numbers.metric,
      'unit': numbers.unit,
      'study_seeds': numbers.num_seeds,
      'study_query_size': numbers.query_size,
      'notes': [],
      'improvement': [],
      'per_selection': [],
  }
  if res['query_size'] != numbers.query_size:
    out['notes'].append(
        f"the study's query size here is {numbers.query_size}; jal's is {res['query_size']}."
    )
  if res['metric'] != numbers.metric:
    out['notes'].append(
        f"the study reports {numbers.metric} here and this report's metric "
        f'is {res["metric"]}: nothing to compare.'
    )
    return out
  scale = metric_scale(res['metric'])
  common = {'confidence': confidence, 'ci_method': ci, 'study_seeds': numbers.num_seeds}
  if res['baseline'] != study.BASELINE:
    out['notes'].append(
        f"the study's improvements are over {study.BASELINE}; this report's are over "
        f'{res["baseline"]}: average improvements not compared.'
    )
  else:
    for s in order_strategies(numbers.improvement):
      value = numbers.improvement[s]
      e = res['improvement'].get(s)
      row = _study_row(
          'average_improvement', s, None, numbers.unit, value, numbers.improvement_label, common
      )
      if e is not None:
        row.update(
            jal_mean=e['mean'] * scale,
            jal_lo=e['lo'] * scale,
            jal_hi=e['hi'] * scale,
            jal_n_seeds=e['n'],
        )
        row['ci_contains_study'] = _contains(value, row['jal_lo'], row['jal_hi'])
        row['sign_agrees'] = _sign_agrees(row['jal_mean'], value)
        if e['n'] >= 2:
          row['jal_ci_excludes_zero'] = bool(e['excludes_zero'])
      out['improvement'].append(row)
  if numbers.per_selection and res['metric'] == 'accuracy':
    col = {r: j for j, r in enumerate(res['rounds'])}
    for s in order_strategies(numbers.per_selection):
      curve = res['curves'].get(s)
      for k, value in enumerate(numbers.per_selection[s], 1):
        row = _study_row('per_selection', s, k, '%', value, numbers.per_selection_label, common)
        j = col.get(k)
        if j is not None:
          row['n_labeled'] = res['n_labeled'][j]
        if curve is not None and j is not None:
          row.update(
              jal_mean=curve['mean'][j] * scale,
              jal_lo=curve['lo'][j] * scale,
              jal_hi=curve['hi'][j] * scale,
              jal_n_seeds=curve['n_seeds'][j],
          )
          row['ci_contains_study'] = _contains(value, row['jal_lo'], row['jal_hi'])
        out['per_selection'].append(row)
  return out
