"""`jal.label.advise` on synthetic label files with known imbalance and on results tables."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import pytest

from jal import stats
from jal.label import advise, evidence, project
from tests.conftest import REPO

HEADER = (
    'setting,name,query_size,metric,strategy,baseline,mean,lo,hi,half_width,n_seeds,'
    'confidence,ci_method,excludes_zero,seeds,per_seed'
)


def _labels_file(path: pathlib.Path, counts: dict[str, int]) -> str:
  lines = ['filename,label']
  for c, n in counts.items():
    lines += [f'{c}_{i}.png,{c}' for i in range(n)]
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def _fake_result(
    root: pathlib.Path,
    name: str,
    *,
    query: int,
    classes: int,
    rows: list[tuple],
    minority_fraction=None,
    pretrained=False,
    report=True,
):
  """A results folder as jal writes it; rows: (strategy, metric, mean, lo, hi, n_seeds)."""
  folder = root / name
  (folder / 'report').mkdir(parents=True)
  data = {'name': 'cifar10'}
  if minority_fraction:
    data.update(positive_classes=[1, 9], minority_fraction=minority_fraction)
  config = {
      'name': name,
      'query_size': query,
      'data': data,
      'model': {
          'name': 'resnet18',
          'pretrained_path': '/w/r18.pth' if pretrained else None,
          'stem': 'imagenet' if pretrained else 'cifar',
      },
  }
  (folder / 'config.json').write_text(json.dumps(config))
  (folder / 'metrics.jsonl').write_text(
      json.dumps(
          {
              'strategy': 'random',
              'seed': 0,
              'round': 0,
              'n_labeled': query,
              'accuracy': 0.5,
              'per_class_accuracy': [0.5] * classes,
          }
      )
      + '\n'
  )
  if report:
    lines = [HEADER] + [
        f'{name}_q{query},{name},{query},{metric},{s},random,{m},{lo},{hi},,{n},0.95,t,,0 1 2,'
        for s, metric, m, lo, hi, n in rows
    ]
    (folder / 'report' / 'improvement.csv').write_text('\n'.join(lines) + '\n')
  return folder


# ----------------------------------------------------------------------------
# Estimates.


def test_wilson_interval_known_values():
  assert stats.wilson_interval(45, 50) == pytest.approx((0.9, 0.786398, 0.956524), abs=1e-6)
  assert stats.wilson_interval(5, 100) == pytest.approx((0.05, 0.021543, 0.111750), abs=1e-6)
  assert stats.wilson_interval(0, 10)[:2] == (0.0, 0.0)
  assert stats.wilson_interval(10, 10)[2] == 1.0
  assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
  with pytest.raises(ValueError, match='successes <= trials'):
    stats.wilson_interval(3, 2)


def test_class_balance_of_synthetic_label_files(tmp_path):
  # 1:19, binary: imbalanced, and 100 labels show it.
  sit = advise.situation_from_labels(
      _labels_file(tmp_path / 'a.csv', {'neg': 95, 'pos': 5}), None, None
  )
  b = sit.balance()
  assert (b['smallest'], b['smallest_count'], b['largest_count'], b['ratio']) == ('pos', 5, 95, 19)
  assert (b['share'], b['share_lo'], b['share_hi']) == pytest.approx(
      (0.05, 0.021543, 0.11175), abs=1e-5
  )
  assert b['imbalanced'] and sit.regime().imbalanced
  assert sit.query == advise.DEFAULT_QUERY and sit.query_per_class() == 25.0
  # 10 balanced classes of 30, one of 6: 1:5, shown with 276 labels.
  counts = {str(i): 30 for i in range(9)} | {'9': 6}
  b = advise.class_balance(counts)
  assert b['ratio'] == 5 and b['imbalanced']
  # The same 1:5 ratio with 23 labels cannot be told from balance.
  counts = {str(i): 5 for i in range(4)} | {'4': 1, '5': 2}
  b = advise.class_balance(counts)
  assert b['ratio'] == 5 and b['share_hi_adjusted'] > 1 / 6 and not b['imbalanced']
  # Balanced classes are balanced.
  assert not advise.class_balance({'a': 50, 'b': 45}).get('imbalanced')


def test_validation_trend():
  assert advise.validation_trend([(20, 0.5, 0.3, 0.7)])['trend'] == 'too few points'
  t = advise.validation_trend([(20, 0.40, 0.30, 0.50), (40, 0.80, 0.70, 0.90)])
  assert t['trend'] == 'rising' and t['last_change_pp'] == pytest.approx(40)
  assert t['slope_pp_per_100'] == pytest.approx(200)  # 40 pp over 20 labels
  t = advise.validation_trend([(20, 0.5, 0.3, 0.7), (40, 0.6, 0.4, 0.8), (60, 0.55, 0.4, 0.7)])
  assert t['trend'] == 'within noise' and t['slope_pp_per_100'] == pytest.approx(12.5)
  assert advise.validation_trend([(20, 0.9, 0.85, 0.95), (40, 0.6, 0.5, 0.7)])['trend'] == 'falling'


# ----------------------------------------------------------------------------
# Recommendations from synthetic tables.


def test_measured_gain_in_the_same_regime_recommends_it(tmp_path):
  results = tmp_path / 'results'
  _fake_result(
      results,
      'bal_high',
      query=500,
      classes=10,
      rows=[
          ('coreset', 'accuracy', 0.008, 0.006, 0.010, 3),
          ('ensembles', 'accuracy', 0.013, 0.012, 0.014, 3),
      ],
  )
  labels = _labels_file(tmp_path / 'l.csv', {str(i): 20 for i in range(10)})
  text, adv, sit = advise.advise(labels, query=500, results_dir=str(results))
  assert sit.regime() == advise.Regime(False, False, False)
  assert (adv.strategy, adv.basis) == ('ensembles', 'measured')
  assert [e.source for e in adv.cited] == [
      'results/bal_high/report/improvement.csv:2',
      'results/bal_high/report/improvement.csv:3',
  ]
  assert 'Recommendation: ensembles' in text
  assert (
      'results/bal_high/report/improvement.csv:3: bal_high_q500 (cifar10, query 500, '
      'high query, balanced, from scratch): ensembles vs random +1.30 pp, 95% CI '
      '[+1.20, +1.40], 3 seeds -> better than random'
  ) in text


def test_low_query_rules_out_coreset_and_inconclusive_rows_say_so(tmp_path):
  results = tmp_path / 'results'
  _fake_result(
      results,
      'bal_low',
      query=10,
      classes=10,
      rows=[
          ('coreset', 'accuracy', -0.06, -0.11, -0.01, 3),
          ('ensembles', 'accuracy', -0.003, -0.09, 0.08, 3),
      ],
  )
  labels = _labels_file(tmp_path / 'l.csv', {str(i): 3 for i in range(10)})
  text, adv, _ = advise.advise(labels, query=10, results_dir=str(results))
  assert (adv.strategy, adv.basis) == ('random', 'default')
  assert 'low query sizes hurt Coreset' in text
  assert 'jal measured coreset worse than random in this regime' in text
  assert "jal's rows for ensembles in this regime are inconclusive" in text
  assert 'Basis: inconclusive: no strategy has shown a gain over random here' in text
  assert 'ensembles vs random -0.30 pp, 95% CI [-9.00, +8.00], 3 seeds -> inconclusive' in text


def test_imbalance_favours_ensembles_on_the_study_finding_when_tables_are_inconclusive(tmp_path):
  results = tmp_path / 'results'
  _fake_result(results, 'imb', query=50, classes=2, minority_fraction=0.05, report=False, rows=[])
  # One seed in metrics.jsonl only: jal.report gives a mean and no interval.
  rows = [
      {
          'strategy': s,
          'seed': 0,
          'round': r,
          'n_labeled': 50 * (r + 1),
          'accuracy': 0.8,
          'average_precision': ap,
          'per_class_accuracy': [0.9, 0.2],
      }
      for s, aps in (
          ('random', (0.30, 0.50, 0.55)),
          ('ensembles', (0.30, 0.45, 0.60)),
          ('coreset', (0.30, 0.40, 0.45)),
      )
      for r, ap in enumerate(aps)
  ]
  (results / 'imb' / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  labels = _labels_file(tmp_path / 'l.csv', {'rest': 95, 'minority': 5})
  text, adv, sit = advise.advise(labels, query=50, results_dir=str(results))
  assert sit.regime() == advise.Regime(False, True, False)
  assert (adv.strategy, adv.basis) == ('ensembles', 'study')
  ens = [e for e in adv.cited if e.strategy == 'ensembles']
  assert len(ens) == 1 and ens[0].mean == pytest.approx(0.0) and math.isnan(ens[0].lo)
  assert 'results/imb/metrics.jsonl (via jal.report)' in ens[0].source
  assert 'no interval (1 seed) -> inconclusive' in text
  assert "rests on that finding, not on jal's own measurements" in text
  assert "Basis: the study's finding only" in text and 'measured:' not in text


def test_imbalanced_but_ensembles_measured_worse_is_not_recommended(tmp_path):
  results = tmp_path / 'results'
  _fake_result(
      results,
      'imb',
      query=50,
      classes=2,
      minority_fraction=0.05,
      rows=[('ensembles', 'average_precision', -0.05, -0.08, -0.02, 5)],
  )
  labels = _labels_file(tmp_path / 'l.csv', {'rest': 190, 'minority': 10})
  text, adv, _ = advise.advise(labels, query=50, results_dir=str(results))
  assert adv.strategy == 'random'
  assert any('jal measured ensembles worse than random' in r for r in adv.reasons)
  # AP to 4 decimals: minority-AP gains can be about 0.01.
  assert (
      'ensembles vs random -0.0500 AP, 95% CI [-0.0800, -0.0200], 5 seeds -> worse than random'
  ) in text


def test_pretrained_rules_out_coreset_and_other_regimes_are_not_relied_on(tmp_path):
  results = tmp_path / 'results'
  _fake_result(
      results,
      'bal_high',
      query=500,
      classes=10,
      rows=[
          ('coreset', 'accuracy', 0.008, 0.006, 0.010, 3),
          ('ensembles', 'accuracy', 0.013, 0.012, 0.014, 3),
      ],
  )
  labels = _labels_file(tmp_path / 'l.csv', {str(i): 20 for i in range(10)})
  text, adv, _ = advise.advise(labels, query=500, pretrained=True, results_dir=str(results))
  assert (adv.strategy, adv.basis) == ('random', 'default')
  assert adv.cited == [] and len(adv.nearest) == 2
  assert 'pretrained representations can mislead Coreset' in text
  assert 'jal has no measured table for this regime (high query, balanced, pretrained)' in text
  assert 'Nearest measured regime (a different regime: shown, not relied on)' in text


def test_workdir_gives_query_pretraining_and_trend(tmp_path):
  w = tmp_path / 'w'
  w.mkdir()
  calls = [
      {
          'n_labeled': 0,
          'validation': None,
          'query': 30,
          'strategy': 'random (no labels yet)',
          'batch': ['x'] * 30,
          'predicted_counts': {},
      },
      {
          'n_labeled': 30,
          'validation': {'accuracy': 0.5, 'lo': 0.33, 'hi': 0.67},
          'query': 30,
          'strategy': 'ensembles',
          'batch': ['x'] * 30,
          'predicted_counts': {},
      },
      {
          'n_labeled': 60,
          'validation': {'accuracy': 0.9, 'lo': 0.8, 'hi': 0.95},
          'query': 40,
          'strategy': 'ensembles',
          'batch': ['x'] * 40,
          'predicted_counts': {'a': 70, 'b': 30},
      },
  ]
  state = {
      'version': 1,
      'classes': ['a', 'b'],
      'labels': {f'f{i}': 'ab'[i % 2] for i in range(60)},
      'config': {'model': {'pretrained_path': '/w/r18.pth'}},
      'calls': calls,
  }
  (w / project.STATE_FILE).write_text(json.dumps(state))
  text, adv, sit = advise.advise(workdir=str(w), results_dir=str(tmp_path / 'none'))
  assert (sit.query, sit.pretrained, sit.counts) == (40, True, {'a': 30, 'b': 30})
  assert sit.history == [(30, 0.5, 0.33, 0.67), (60, 0.9, 0.8, 0.95)]
  assert sit.selected_by == ['ensembles']
  assert 'validation curve (labels:accuracy): 30:0.500 -> 60:0.900' in text
  assert 'validation trend: rising (last change +40.0 pp' in text
  assert 'some labels were chosen by ensembles' in text
  assert 'a: 70, b: 30' in text
  assert adv.strategy == 'random' and 'Coreset is ruled out' in text


# ----------------------------------------------------------------------------
# jal's own tables, read at run time.


def test_cites_the_repository_tables_with_their_own_numbers(tmp_path):
  labels = _labels_file(tmp_path / 'l.csv', {str(i): 3 for i in range(10)})
  text, adv, _ = advise.advise(labels, query=10)
  rows_read = 0
  for e in adv.cited + adv.nearest:
    if not e.source.endswith(tuple(f':{i}' for i in range(2, 50))):
      continue
    path, line = e.source.rsplit(':', 1)
    with open(REPO / path, newline='') as f:
      row = list(csv.DictReader(f))[int(line) - 2]
    assert row['strategy'] == e.strategy
    assert (e.mean, e.lo, e.hi) == (float(row['mean']), float(row['lo']), float(row['hi']))
    expect = (
        'better' if float(row['lo']) > 0 else 'worse' if float(row['hi']) < 0 else 'inconclusive'
    )
    assert e.verdict == expect and (row['excludes_zero'] == 'yes') == (expect != 'inconclusive')
    assert e.text() in text
    rows_read += 1
  assert rows_read >= 1
  assert adv.basis != 'measured' or all(
      e.verdict == 'better' for e in adv.cited if e.strategy == adv.strategy
  )


def test_cli(tmp_path):
  labels = _labels_file(tmp_path / 'l.csv', {'a': 95, 'b': 5})
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.label.advise',
          f'--labels={labels}',
          '--query=50',
          f'--results={tmp_path / "none"}',
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert 'Recommendation: ensembles (--strategy=ensembles)' in proc.stdout
  proc = subprocess.run(
      [sys.executable, '-m', 'jal.label.advise'],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=120,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: give --labels=labels.csv or --workdir=W (of jal.label)'
  )


def test_mixed_rows_say_which_show_a_gain(tmp_path):
  results = tmp_path / 'results'
  rows = lambda m, lo, hi: [('ensembles', 'average_precision', m, lo, hi, 10)]
  _fake_result(
      results, 'imb_a', query=50, classes=2, minority_fraction=0.05, rows=rows(0.01, 0.006, 0.014)
  )
  _fake_result(
      results, 'imb_b', query=50, classes=2, minority_fraction=0.05, rows=rows(0.03, -0.002, 0.06)
  )
  labels = _labels_file(tmp_path / 'l.csv', {'rest': 95, 'minority': 5})
  text, adv, _ = advise.advise(labels, query=50, results_dir=str(results))
  # One row better, one inconclusive: not measured, so the study's finding decides.
  assert (adv.strategy, adv.basis) == ('ensembles', 'study')
  assert (
      "jal's rows for ensembles in this regime are mixed: 1 of 2 show it better than random "
      '(imb_a_q50) and 1 cannot tell (the interval spans zero or there is only one seed: '
      'imb_b_q50); only a gain on every row counts as measured.'
  ) in text
  assert 'are inconclusive' not in text


def _split_run(folder: pathlib.Path, part: str, strategy: str, offsets, query=500):
  """One workdir of a run split by strategy: seeds 0..n-1, rounds 0-2, 10 classes;
  accuracy 0.5 + 0.1 r, plus offsets[seed] from round 1 on."""
  d = folder / part
  d.mkdir(parents=True)
  (d / 'config.json').write_text(
      json.dumps({'name': 'high', 'query_size': query, 'data': {'name': 'mnist'}, 'model': {}})
  )
  rows = [
      {
          'strategy': strategy,
          'seed': k,
          'round': r,
          'n_labeled': query * (r + 1),
          'accuracy': 0.5 + 0.1 * r + (off if r else 0.0),
          'per_class_accuracy': [0.5] * 10,
      }
      for k, off in enumerate(offsets)
      for r in range(3)
  ]
  (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


def test_a_run_split_over_workdirs_is_one_setting(tmp_path):
  """A results folder whose workdirs lie below it (one per strategy group, one
  report over all) is one setting: its report's rows, else jal.report over all of them."""
  results = tmp_path / 'results'
  _split_run(results / 'high', 'seeds0_1/random', 'random', (0.0, 0.0))
  _split_run(results / 'high', 'seeds0_1/ensembles', 'ensembles', (0.02, 0.04))
  assert [p.rsplit('/', 2)[-2:] for p in evidence.run_dirs(str(results / 'high'))] == [
      ['seeds0_1', 'ensembles'],
      ['seeds0_1', 'random'],
  ]
  # No report: jal.report merges the two. Ensembles − random per seed: 0.02 and
  # 0.04 (mean 0.03, sd 0.02 / sqrt 2, t(1) half-width 12.706 * 0.01).
  (ens,) = evidence.load_evidence(str(results))
  assert (ens.setting, ens.strategy, ens.n_seeds) == ('high_q500', 'ensembles', 2)
  assert ens.mean == pytest.approx(0.03)
  assert ens.hi - ens.mean == pytest.approx(12.7062047 * 0.01, rel=1e-6)
  assert ens.source == (
      'results/high/seeds0_1/ensembles/metrics.jsonl + '
      'results/high/seeds0_1/random/metrics.jsonl (via jal.report)'
  )
  assert ens.regime == advise.Regime(False, False, False)
  # With report/: its rows, cited by line.
  (results / 'high' / 'report').mkdir()
  (results / 'high' / 'report' / 'improvement.csv').write_text(
      f'{HEADER}\nhigh_q500,high,500,accuracy,ensembles,random,0.03,0.01,0.05,,2,0.95,t,,0 1,\n'
  )
  (ens,) = evidence.load_evidence(str(results))
  assert (ens.source, ens.lo, ens.hi) == ('results/high/report/improvement.csv:2', 0.01, 0.05)
  # Workdirs of different settings under one folder are not one setting: skipped.
  _split_run(results / 'high', 'seeds2/random', 'random', (0.0,), query=10)
  assert evidence.load_evidence(str(results)) == []
