r"""Which strategy to use for a labelling project, and how sure one can be.

    python -m jal.label.advise --labels=labels.csv --query=50 [--pretrained]
    python -m jal.label.advise --workdir=W       # after a few `jal.label` calls

It estimates three things and places the project in a regime:

- class imbalance: largest / smallest class count among the labels (and,
  with --workdir, among the ensemble's predictions for the unlabeled
  images), imbalanced from `IMBALANCE_RATIO`; the smallest class's share
  gets a Wilson interval;
- budget per round: query size per class, low below `LOW_QUERY_PER_CLASS`
  (the study's low settings ask 0.5-5 labels per class per round, its high
  ones 25-250);
- representation: pretrained or trained from scratch;

and, with --workdir, the trend of the validation estimates of past calls.

The recommendation combines the study's three findings (imbalance favours
Ensembles; low query sizes hurt Coreset; pretrained representations can
mislead Coreset) with jal's own measured tables, read at run time from
`results/*/report/improvement.csv` (or computed by `jal.report` from a
results folder's metrics.jsonl when it has no report). A table row is
evidence for the project when its setting is in the same regime. A strategy
is recommended on measured grounds only when every such row's interval of
its average improvement over random lies above zero; a row whose interval
spans zero, or that has no interval (one seed), is reported as
inconclusive, and the advice then says that it rests on the study's finding
alone, or recommends random sampling when no finding favours a strategy.
When `results/verdict/verdict.csv` exists (`jal.report --verdict`), its rows
in the project's regime are cited too: the study's value beside jal's and
whether they agree (cited, not weighed: the same numbers already count).
"""

import dataclasses
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags

from jal import stats
from jal.label.evidence import IMBALANCE_RATIO, LOW_QUERY_PER_CLASS
from jal.label.evidence import Evidence, Regime, Verdict, load_evidence, load_verdicts, regime_of

DEFAULT_QUERY = 50

FINDINGS = {
    'imbalanced': (
        'the study found that class imbalance favours Ensembles: on its imbalanced '
        'tasks (Section 4.4) Ensembles queried the minority class more often and '
        'beat random and Coreset'
    ),
    'low_query': (
        'the study found that low query sizes hurt Coreset (Section 3.4, Table 3.2): '
        'k-Center on few points picks outliers'
    ),
    'pretrained': (
        'the study found that pretrained representations can mislead Coreset '
        '(Section 4.3, Table 4.1): distances in an ImageNet embedding need not '
        'reflect the task'
    ),
}


# ----------------------------------------------------------------------------
# The project's situation.


def class_balance(counts: dict[str, int], confidence: float = 0.95) -> dict[str, Any]:
  """How unequal the class counts are, and whether the counts show it.

  The classes count as imbalanced when largest / smallest >= IMBALANCE_RATIO
  and the smallest class's share is shown to be below the balanced share
  1/K: the upper end of its Wilson interval, at confidence 1 - (1 -
  confidence) / K (Bonferroni, since it is the smallest of K), is below 1/K.
  So 1 label of 30 in 10 classes is not evidence of imbalance; 5 of 100 in
  2 classes is.

  Args:
    counts: class -> count (classes with 0 included).
    confidence: of the interval on the smallest class's share.

  Returns:
    dict with n, num_classes, smallest (class), smallest_count, share and
    share_lo/share_hi (its Wilson interval at `confidence`), share_hi_adjusted
    (at the Bonferroni level), largest, largest_count, ratio (largest /
    smallest count; inf when a class has no label), unseen (classes with no
    label) and imbalanced (bool).
  """
  n = int(sum(counts.values()))
  k = len(counts)
  if not counts or n == 0:
    return {
        'n': n,
        'num_classes': k,
        'ratio': math.nan,
        'unseen': list(counts),
        'imbalanced': False,
    }
  smallest = min(counts, key=lambda c: (counts[c], str(c)))
  largest = max(counts, key=lambda c: (counts[c], str(c)))
  share, lo, hi = stats.wilson_interval(counts[smallest], n, confidence)
  hi_adjusted = stats.wilson_interval(counts[smallest], n, 1 - (1 - confidence) / k)[2]
  ratio = counts[largest] / counts[smallest] if counts[smallest] else math.inf
  return {
      'n': n,
      'num_classes': k,
      'smallest': smallest,
      'smallest_count': counts[smallest],
      'share': share,
      'share_lo': lo,
      'share_hi': hi,
      'share_hi_adjusted': hi_adjusted,
      'largest': largest,
      'largest_count': counts[largest],
      'ratio': ratio,
      'unseen': [c for c, v in counts.items() if v == 0],
      'imbalanced': bool(ratio >= IMBALANCE_RATIO and hi_adjusted < 1.0 / k),
  }


def validation_trend(points: list[tuple[int, float, float, float]]) -> dict[str, Any]:
  """The direction of the validation curve of past calls.

  Args:
    points: (n_labeled, accuracy, lo, hi) per call with an estimate, in call
      order.

  Returns:
    dict with `trend`: 'too few points', 'rising' / 'falling' (the last two
    intervals do not overlap) or 'within noise' (they do), `slope_pp_per_100`
    (least-squares slope over all points, accuracy points per 100 labels) and
    `last_change_pp`.
  """
  if len(points) < 2:
    return {'trend': 'too few points', 'points': len(points)}
  n = [p[0] for p in points]
  acc = [p[1] for p in points]
  slope = math.nan
  if len(set(n)) > 1:
    mn, ma = sum(n) / len(n), sum(acc) / len(acc)
    slope = (
        (sum((a - mn) * (b - ma) for a, b in zip(n, acc)) / sum((a - mn) ** 2 for a in n))
        * 100
        * 100
    )
  (_, a0, lo0, hi0), (_, a1, lo1, hi1) = points[-2], points[-1]
  if lo1 > hi0:
    trend = 'rising'
  elif hi1 < lo0:
    trend = 'falling'
  else:
    trend = 'within noise'
  return {
      'trend': trend,
      'points': len(points),
      'slope_pp_per_100': slope,
      'last_change_pp': 100 * (a1 - a0),
  }


@dataclasses.dataclass
class Situation:
  """What the advice is about.

  Attributes:
    counts: labeled count per class.
    source: where the counts come from (for the text).
    query: labels asked per round.
    pretrained: whether the model starts from pretrained weights.
    predicted_counts: the ensemble's predicted class counts over the
      unlabeled images (from a workdir), or None.
    history: (n_labeled, accuracy, lo, hi) of past calls with an estimate.
    selected_by: the non-random strategies that chose past batches.
  """

  counts: dict[str, int]
  source: str
  query: int
  pretrained: bool
  predicted_counts: dict[str, int] | None = None
  history: list = dataclasses.field(default_factory=list)
  selected_by: list = dataclasses.field(default_factory=list)

  def balance(self):
    return class_balance(self.counts)

  def pool_balance(self):
    return class_balance(self.predicted_counts) if self.predicted_counts else None

  def query_per_class(self) -> float:
    return self.query / max(1, len(self.counts))

  def regime(self) -> Regime:
    return regime_of(self.query_per_class(), self.balance()['imbalanced'], self.pretrained)


def situation_from_labels(
    path: str, query: int | None, pretrained: bool | None, classes=None
) -> Situation:
  """Counts from a labels CSV; classes are those of the file (or `classes`)."""
  from jal.label import project  # pylint: disable=g-import-not-at-top

  labels = project.read_labels(path)
  names = project.resolve_classes(None, classes, labels, path) or []
  counts = {c: 0 for c in names}
  for v in labels.labels.values():
    counts[v] += 1
  return Situation(counts, path, query or DEFAULT_QUERY, bool(pretrained))


def situation_from_workdir(
    workdir: str, query: int | None, pretrained: bool | None, labels_path: str | None = None
) -> Situation:
  """Counts, query, pretraining and history from a `jal.label` workdir."""
  from jal.label import project  # pylint: disable=g-import-not-at-top

  state = project.load_state(workdir)
  if state is None:
    raise FileNotFoundError(f'no {project.STATE_FILE} in {workdir}: run jal.label first')
  calls = state['calls']
  if labels_path:
    sit = situation_from_labels(labels_path, query, pretrained, state.get('classes'))
    counts, source = sit.counts, labels_path
  else:
    counts = {c: 0 for c in state.get('classes') or []}
    for v in state['labels'].values():
      counts[v] = counts.get(v, 0) + 1
    source = f'{workdir} (labels at call {len(calls)})'
  if pretrained is None:
    pretrained = bool((state['config'].get('model') or {}).get('pretrained_path'))
  history = [
      (c['n_labeled'], c['validation']['accuracy'], c['validation']['lo'], c['validation']['hi'])
      for c in calls
      if c.get('validation')
  ]
  last = calls[-1] if calls else {}
  selected_by = sorted(
      {c['strategy'] for c in calls[:-1] if c['batch'] and not c['strategy'].startswith('random')}
  )
  return Situation(
      counts,
      source,
      query or last.get('query') or DEFAULT_QUERY,
      pretrained,
      last.get('predicted_counts') or None,
      history,
      selected_by,
  )


# ----------------------------------------------------------------------------
# The recommendation.


@dataclasses.dataclass
class Advice:
  """The recommendation and the grounds for it.

  Attributes:
    strategy: 'ensembles', 'coreset' or 'random'.
    basis: 'measured' (jal's rows for this regime show a gain), 'study'
      (the study's finding; jal's rows absent or inconclusive) or 'default'
      (nothing shows a gain over random).
    reasons: sentences, in order.
    cited: the table rows relied on (this regime's).
    nearest: when no row is in this regime, the rows of the nearest one.
    verdicts: the verdict table's rows of this regime (cited, not weighed).
  """

  strategy: str
  basis: str
  reasons: list[str]
  cited: list[Evidence]
  nearest: list[Evidence]
  verdicts: list['Verdict'] = dataclasses.field(default_factory=list)


def _nearest(rows: list[Evidence], regime: Regime) -> list[Evidence]:
  def distance(e):
    return sum(a != b for a, b in zip(e.regime, regime))

  if not rows:
    return []
  best = min(distance(e) for e in rows)
  return [e for e in rows if distance(e) == best]


def _unsettled(strategy: str, rows: list[Evidence]) -> str:
  """Why `rows` (none worse than random, not all better) do not establish `strategy`."""
  better = [e for e in rows if e.verdict == 'better']
  if not better:
    return (
        f"jal's rows for {strategy} in this regime are inconclusive (the interval spans "
        'zero or there is only one seed): they cannot tell whether it beats random.'
    )
  others = [e for e in rows if e.verdict != 'better']
  return (
      f"jal's rows for {strategy} in this regime are mixed: {len(better)} of {len(rows)} "
      f'show it better than random ({", ".join(e.setting for e in better)}) and '
      f'{len(others)} cannot tell (the interval spans zero or there is only one seed: '
      f'{", ".join(e.setting for e in others)}); only a gain on every row counts as measured.'
  )


def recommend(regime: Regime, evidence: list[Evidence]) -> Advice:
  """Picks ensembles, coreset or random for `regime`.

  1. Coreset is ruled out by a low query or pretraining (the study), or by a
     row of this regime showing it worse than random.
  2. A strategy every row of this regime shows better than random (and none
     worse) is recommended on measured grounds; with two, the one with the
     higher lowest lower bound.
  3. Else, in an imbalanced regime, Ensembles on the study's finding, unless
     a row of this regime shows Ensembles worse than random.
  4. Else random sampling.
  """
  rows = [e for e in evidence if e.regime == regime and e.strategy in ('ensembles', 'coreset')]
  reasons = []
  excluded = set()
  if regime.low_query:
    reasons.append(FINDINGS['low_query'] + '; Coreset is ruled out.')
    excluded.add('coreset')
  if regime.pretrained:
    reasons.append(FINDINGS['pretrained'] + '; Coreset is ruled out.')
    excluded.add('coreset')
  by = {s: [e for e in rows if e.strategy == s] for s in ('ensembles', 'coreset')}
  for s, es in by.items():
    worse = [e for e in es if e.verdict == 'worse']
    if worse:
      excluded.add(s)
      reasons.append(
          f'jal measured {s} worse than random in this regime ('
          + '; '.join(e.source for e in worse)
          + f'); {s} is ruled out.'
      )
  if not rows:
    reasons.append(f'jal has no measured table for this regime ({regime.describe()}).')
  measured = {
      s: es
      for s, es in by.items()
      if s not in excluded and es and all(e.verdict == 'better' for e in es)
  }
  if measured:
    best = max(measured, key=lambda s: min(e.lo for e in measured[s]))
    reasons.append(
        f'every jal table row for this regime shows {best} better than random, '
        'with 95% intervals above zero.'
    )
    for other in measured:
      if other != best:
        reasons.append(
            f'{other} is better than random there too, but the lowest lower '
            f'bound of its gain is below that of {best}.'
        )
    datasets = sorted({e.dataset for e in measured[best]})
    reasons.append(
        f'these rows were measured on {", ".join(datasets)}; whether the gain '
        'carries over to your images is not measured.'
    )
    if regime.imbalanced:
      reasons.append(FINDINGS['imbalanced'] + '.')
    return Advice(best, 'measured', reasons, rows, [])
  for s, es in by.items():
    if es and s not in excluded:
      reasons.append(_unsettled(s, es))
  nearest = (
      []
      if rows
      else _nearest([e for e in evidence if e.strategy in ('ensembles', 'coreset')], regime)
  )
  if regime.imbalanced and 'ensembles' not in excluded:
    reasons.append(
        FINDINGS['imbalanced'] + '; the recommendation rests on that finding, '
        "not on jal's own measurements."
    )
    return Advice('ensembles', 'study', reasons, rows, nearest)
  reasons.append(
      'no strategy has shown a gain over random in this regime, so random '
      'sampling is recommended: it costs nothing extra and keeps the labeled set '
      'an unbiased sample of the folder, which keeps the validation estimate '
      'honest.'
  )
  return Advice('random', 'default', reasons, rows, nearest)


# ----------------------------------------------------------------------------
# Text.


def _pct(v) -> str:
  return f'{100 * v:.1f}%'


def format_advice(sit: Situation, advice: Advice) -> str:
  """The text `jal.label.advise` prints."""
  lines = ['Situation']
  b = sit.balance()
  if b['n'] == 0:
    lines.append(f'  labels: none yet ({sit.source}); imbalance unknown')
  else:
    lines.append(
        f'  labels: {b["n"]} in {b["num_classes"]} classes ({sit.source}); smallest class '
        f'{b["smallest"]!r} has {b["smallest_count"]} ({_pct(b["share"])}, 95% CI '
        f'{_pct(b["share_lo"])}-{_pct(b["share_hi"])}); largest/smallest = '
        + (f'{b["ratio"]:.1f}' if math.isfinite(b['ratio']) else 'inf (a class has no label)')
    )
  r = sit.regime()
  if b['n']:
    if r.imbalanced:
      why = (
          f'the share interval lies below the balanced share {_pct(1 / b["num_classes"])}'
          ' (Bonferroni-adjusted upper end '
          f'{_pct(b["share_hi_adjusted"])})'
      )
    elif b['ratio'] >= IMBALANCE_RATIO:
      why = (
          f'{b["n"]} labels cannot tell it from balanced: the smallest share could be '
          f'{_pct(b["share_hi_adjusted"])} (Bonferroni-adjusted upper end), not below '
          f'the balanced {_pct(1 / b["num_classes"])}'
      )
    else:
      why = f'below the ratio {IMBALANCE_RATIO:g} that counts as imbalanced'
    lines.append(f'  -> {"imbalanced" if r.imbalanced else "balanced"}: {why}')
  if sit.selected_by:
    lines.append(
        f'  note: some labels were chosen by {", ".join(sit.selected_by)}, which '
        'favours uncertain and often rare classes; the folder may be more '
        'imbalanced than these counts, and validation on such labels tends to be '
        'pessimistic'
    )
  pb = sit.pool_balance()
  if pb is not None and pb['n']:
    lines.append(
        '  unlabeled images by predicted class (a model guess, not used for the '
        'decision): ' + ', '.join(f'{c}: {v}' for c, v in sit.predicted_counts.items())
    )
  lines.append(
      f'  budget: {sit.query} labels per round = {sit.query_per_class():.1f} per class'
      f' -> {"low" if r.low_query else "high"} (low below '
      f'{LOW_QUERY_PER_CLASS:g} per class)'
  )
  lines.append(f'  representation: {"pretrained" if r.pretrained else "trained from scratch"}')
  t = validation_trend(sit.history)
  if t['trend'] == 'too few points':
    lines.append(f'  validation trend: too few calls with an estimate ({t["points"]})')
  else:
    curve = ' -> '.join(f'{n}:{a:.3f}' for n, a, _, _ in sit.history)
    lines.append(f'  validation curve (labels:accuracy): {curve}')
    lines.append(
        f'  validation trend: {t["trend"]} (last change {t["last_change_pp"]:+.1f} pp; '
        f'slope {t["slope_pp_per_100"]:+.1f} pp per 100 labels)'
        + (
            '; the last two intervals overlap, so the change may be noise'
            if t['trend'] == 'within noise'
            else ''
        )
    )
  name = {
      'random': 'random sampling (--strategy=random)',
      'ensembles': 'ensembles (--strategy=ensembles)',
      'coreset': 'coreset (--strategy=coreset)',
  }[advice.strategy]
  basis = {
      'measured': "measured: jal's own tables for this regime show the gain",
      'study': "the study's finding only: jal's own tables do not establish it",
      'default': 'inconclusive: no strategy has shown a gain over random here',
  }
  lines += ['', f'Recommendation: {name}', f'Basis: {basis[advice.basis]}', 'Why:']
  lines += [f'  - {s}' for s in advice.reasons]
  lines.append(f'Rows relied on (regime: {r.describe()}):')
  lines += [f'  {e.text()}' for e in advice.cited] or ['  none']
  if advice.nearest:
    lines.append('Nearest measured regime (a different regime: shown, not relied on):')
    lines += [f'  {e.text()}' for e in advice.nearest]
  if advice.verdicts:
    lines.append("The study's claims for this regime, tested here (the verdict table):")
    lines += [f'  {v.text()}' for v in advice.verdicts]
  return '\n'.join(lines) + '\n'


def advise(
    labels_path=None, workdir=None, query=None, pretrained=None, results_dir=None
) -> tuple[str, Advice, Situation]:
  """The whole command: returns (text, advice, situation)."""
  if not labels_path and not workdir:
    raise ValueError('give --labels=labels.csv or --workdir=W (of jal.label)')
  if query is not None and query < 1:
    raise ValueError(f'--query must be positive, got {query}')
  if workdir:
    sit = situation_from_workdir(workdir, query, pretrained, labels_path)
  else:
    sit = situation_from_labels(labels_path, query, pretrained)
  results_dir = results_dir or default_results_dir()
  advice = recommend(sit.regime(), load_evidence(results_dir))
  advice.verdicts = [v for v in load_verdicts(results_dir) if v.regime == sit.regime()]
  return format_advice(sit, advice), advice, sit


def default_results_dir() -> str:
  """The repository's results/."""
  here = os.path.dirname(os.path.abspath(__file__))
  return os.path.join(os.path.dirname(os.path.dirname(here)), 'results')


def _define_flags():
  flags.DEFINE_string('labels', None, 'CSV with the header filename,label.')
  flags.DEFINE_string('workdir', None, 'A jal.label workdir (counts, query, history).')
  flags.DEFINE_integer(
      'query', None, f"Labels per round (default: the workdir's last, " f'else {DEFAULT_QUERY}).'
  )
  flags.DEFINE_bool('pretrained', None, 'The model starts from pretrained weights.')
  flags.DEFINE_string('results', None, "jal's measured results (default: the repo's results/).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from jal import logs  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  with logs.one_line_errors('interrupted'):
    text, _, _ = advise(f.labels, f.workdir, f.query, f.pretrained, f.results)
  sys.stdout.write(text)


if __name__ == '__main__':
  _define_flags()
  from jal import logs as _logs  # pylint: disable=g-import-not-at-top

  app.run(main, flags_parser=_logs.parse_flags)
