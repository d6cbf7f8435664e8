r"""The evidence behind `jal.label.advise`: regimes, and jal's measured tables.

A setting (a labelling project, or a measured run under results/) is in a
`Regime`: low or high query per class (`LOW_QUERY_PER_CLASS`), imbalanced or
balanced (`IMBALANCE_RATIO`), pretrained or trained from scratch.

    rows = evidence.load_evidence('results')     # [Evidence], one per (setting, strategy)
    verdicts = evidence.load_verdicts('results')  # [Verdict], rows of verdict/verdict.csv
    [e.text() for e in rows if e.regime == regime]

Each subfolder of results/ is one measured setting: a workdir's files
(config.json and metrics.jsonl), or a run split over several workdirs in
folders below it (`run_dirs`) with one report over them all. Its rows are
those of report/improvement.csv (cited by file and line), else
`jal.report`'s analysis of its metrics.jsonl files. `setting_features`
places a workdir in a regime (`jal.report.verdict` uses it too).
"""

import csv
import dataclasses
import json
import math
import os
from typing import Any, NamedTuple

from absl import logging

from jal import stats

# Largest / smallest class count from which a project counts as imbalanced.
IMBALANCE_RATIO = 3.0
# Queried labels per class per round below which the budget counts as low.
LOW_QUERY_PER_CLASS = 10.0


class Regime(NamedTuple):
  """Where a setting stands on the study's three findings."""

  low_query: bool
  imbalanced: bool
  pretrained: bool

  def describe(self) -> str:
    return ', '.join(
        [
            'low query' if self.low_query else 'high query',
            'imbalanced' if self.imbalanced else 'balanced',
            'pretrained' if self.pretrained else 'from scratch',
        ]
    )


def regime_of(query_per_class: float, imbalanced: bool, pretrained: bool) -> Regime:
  """The regime of a query of `query_per_class` labels per class per round."""
  return Regime(query_per_class < LOW_QUERY_PER_CLASS, bool(imbalanced), bool(pretrained))


# ----------------------------------------------------------------------------
# jal's measured tables.


@dataclasses.dataclass(frozen=True)
class Evidence:
  """One row of jal's measured tables: a strategy's average gain over random.

  `mean`, `lo`, `hi` are in the metric's own units (accuracy as a fraction);
  lo/hi are nan when the row has no interval (one seed).
  """

  source: str
  setting: str
  dataset: str
  strategy: str
  metric: str
  mean: float
  lo: float
  hi: float
  n_seeds: int
  query_size: int
  num_classes: int
  imbalance_ratio: float
  pretrained: bool

  @property
  def regime(self) -> Regime:
    return regime_of(
        self.query_size / max(1, self.num_classes),
        self.imbalance_ratio >= IMBALANCE_RATIO,
        self.pretrained,
    )

  @property
  def verdict(self) -> str:
    """'better' or 'worse' than random when the interval excludes 0, else 'inconclusive'."""
    if math.isnan(self.lo) or math.isnan(self.hi):
      return 'inconclusive'
    return 'better' if self.lo > 0 else 'worse' if self.hi < 0 else 'inconclusive'

  def text(self) -> str:
    scale, unit = (
        (100.0, ' pp')
        if self.metric == 'accuracy'
        else (1.0, ' AP')
        if self.metric == 'average_precision'
        else (1.0, f' {self.metric}')
    )
    d = 2 if scale == 100.0 else 4  # pp to 2 decimals; minority-AP gains can be ~0.01
    if math.isnan(self.lo):
      ci = f'no interval ({self.n_seeds} seed)'
    else:
      ci = f'95% CI [{scale * self.lo:+.{d}f}, {scale * self.hi:+.{d}f}], {self.n_seeds} seeds'
    meaning = {
        'better': 'better than random',
        'worse': 'worse than random',
        'inconclusive': 'inconclusive',
    }[self.verdict]
    return (
        f'{self.source}: {self.setting} ({self.dataset}, query {self.query_size}, '
        f'{self.regime.describe()}): {self.strategy} vs random '
        f'{scale * self.mean:+.{d}f}{unit}, {ci} -> {meaning}'
    )


def _float(v) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return math.nan


def setting_features(folder: str) -> dict[str, Any] | None:
  """Query size, class count, imbalance and pretraining of a results folder."""
  cfg_path = os.path.join(folder, 'config.json')
  metrics_path = os.path.join(folder, 'metrics.jsonl')
  if not (os.path.isfile(cfg_path) and os.path.isfile(metrics_path)):
    return None
  with open(cfg_path) as f:
    cfg = json.load(f)
  num_classes = None
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line)
      if row.get('per_class_accuracy'):
        num_classes = len(row['per_class_accuracy'])
        break
  data = cfg.get('data') or {}
  model = cfg.get('model') or {}
  fraction = data.get('minority_fraction')
  return {
      'dataset': data.get('name', '?'),
      'query_size': int(cfg.get('query_size') or 0),
      'num_classes': num_classes or 2,
      'imbalance_ratio': (1 - fraction) / fraction if fraction else 1.0,
      'pretrained': bool(model.get('pretrained_path')) or model.get('stem') == 'imagenet',
  }


def run_dirs(folder: str) -> list[str]:
  """The workdirs a results folder holds: itself when it has a workdir's
  config.json and metrics.jsonl, else every folder below it that has them
  (sorted; report/ and checkpoints/ are not searched), e.g. one per
  strategy group of a run split to share the cores."""

  def is_run(d):
    return all(os.path.isfile(os.path.join(d, f)) for f in ('config.json', 'metrics.jsonl'))

  found = []
  for root, dirs, _ in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if d not in ('report', 'checkpoints'))
    if is_run(root):
      found.append(root)
      dirs[:] = []
  return sorted(found)


def folder_features(folder: str, dirs: list[str]) -> dict[str, Any] | None:
  """`setting_features` of a results folder's workdirs `dirs` (`run_dirs`);
  None when there are none, or when they differ (not one setting: a warning)."""
  feats = [setting_features(d) for d in dirs]
  if not feats:
    return None
  if any(f != feats[0] for f in feats[1:]):
    logging.warning('Skipping results folder %s: its workdirs are not one setting.', folder)
    return None
  return feats[0]


def load_evidence(results_dir: str) -> list[Evidence]:
  """Every (setting, strategy) row of jal's measured tables under `results_dir`.

  Each subfolder holding a workdir, or several below it (`run_dirs`), is one
  measured setting. Its rows come from report/improvement.csv when present
  (cited by line), else from `jal.report`'s analysis of its metrics.jsonl.
  """
  out = []
  if not os.path.isdir(results_dir):
    logging.warning('No results folder %s: advice rests on the study findings only.', results_dir)
    return out
  for entry in sorted(os.listdir(results_dir)):
    folder = os.path.join(results_dir, entry)
    dirs = run_dirs(folder)
    feats = folder_features(folder, dirs)
    if feats is None:
      continue
    csv_path = os.path.join(folder, 'report', 'improvement.csv')
    rel = os.path.relpath(csv_path, os.path.dirname(os.path.abspath(results_dir)))
    if os.path.isfile(csv_path):
      with open(csv_path, newline='') as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
          out.append(
              Evidence(
                  f'{rel}:{line}',
                  row['setting'],
                  feats['dataset'],
                  row['strategy'],
                  row['metric'],
                  _float(row['mean']),
                  _float(row['lo']),
                  _float(row['hi']),
                  int(row['n_seeds']),
                  feats['query_size'],
                  feats['num_classes'],
                  feats['imbalance_ratio'],
                  feats['pretrained'],
              )
          )
      continue
    out += _evidence_from_metrics(folder, dirs, feats, results_dir)
  return out


def _evidence_from_metrics(folder, dirs, feats, results_dir) -> list[Evidence]:
  from jal import report  # pylint: disable=g-import-not-at-top

  top = os.path.dirname(os.path.abspath(results_dir))
  rel = ' + '.join(os.path.relpath(os.path.join(d, 'metrics.jsonl'), top) for d in dirs)
  out = []
  try:
    for setting in report.load_settings(dirs):
      res = report.analyse(setting, None, 'random', 't', 0.95, {})
      for strategy, imp in res['improvement'].items():
        out.append(
            Evidence(
                f'{rel} (via jal.report)',
                setting.key,
                feats['dataset'],
                strategy,
                res['metric'],
                _float(imp.get('mean')),
                _float(imp.get('lo')),
                _float(imp.get('hi')),
                int(imp.get('n', 0)),
                feats['query_size'],
                feats['num_classes'],
                feats['imbalance_ratio'],
                feats['pretrained'],
            )
        )
  except (ValueError, KeyError, FileNotFoundError) as e:
    logging.warning('Skipping results folder %s: %s', folder, e)
  return out


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One row of the verdict table (jal.report.verdict's verdict.csv): a row
  of the study's tables (or one beyond them), the study's value, jal's and the verdict."""

  source: str
  row: dict

  @property
  def regime(self) -> Regime:
    r = self.row
    q, k = _float(r['query_size']), _float(r['num_classes'])
    return regime_of(
        (0.0 if math.isnan(q) else q) / (2.0 if math.isnan(k) or k < 1 else k),
        r['imbalanced'] == 'yes',
        r['pretrained'] == 'yes',
    )

  def text(self) -> str:
    r = self.row
    if r['section'] == 'study':
      where = f'{r["table"]}, {r["study_row"]}'
    else:
      where = f'{r["setting"]} (beyond the study' + (
          f'; relates to {r["table"]}, {r["study_row"]})' if r['table'] else ')'
      )
    where += f' [run {r["run"]}]' if r['run'] else ''
    study = (
        f'study {_float(r["study_value"]):+g} {r["unit"]}' if r['study_value'] else 'no study value'
    )
    head = f'{self.source}: {where}: {r["strategy"]} vs random: {study}; jal'
    if r['verdict'] == 'not run here':
      return f'{head}: not run here ({r["reason"]})'
    from jal.report import verdict  # pylint: disable=g-import-not-at-top

    def value(key):  # as the verdict table prints it
      return verdict.format_value(_float(r[key]), r['unit'])

    ci = f'95% CI [{value("jal_lo")}, {value("jal_hi")}]' if r['jal_lo'] else 'no interval'
    p = f', paired t-test p {_p_text(_float(r["p_value"]))}' if r['p_value'] else ''
    return (
        f'{head} {value("jal_mean")} {r["unit"]}, {ci}, {r["n_seeds"]} seeds{p} '
        f'-> {r["verdict"]}'
    )


def _p_text(p: float) -> str:
  """'< 0.001' or '= 0.062'."""
  text = stats.format_p(p)
  return f'< {text[1:]}' if text.startswith('<') else f'= {text}'


def load_verdicts(results_dir: str) -> list[Verdict]:
  """The rows of `results_dir`/verdict/verdict.csv (cited by line), or []."""
  path = os.path.join(results_dir, 'verdict', 'verdict.csv')
  if not os.path.isfile(path):
    return []
  rel = os.path.relpath(path, os.path.dirname(os.path.abspath(results_dir)))
  with open(path, newline='') as f:
    return [Verdict(f'{rel}:{line}', row) for line, row in enumerate(csv.DictReader(f), start=2)]
