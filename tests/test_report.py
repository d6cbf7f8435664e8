"""Tests for jal.report on hand-made workdirs whose statistics are known.

Toy setting: seeds 0..2, rounds 0..3 (n_labeled 10, 20, 30, 40).
  random[k, r]    = 0.50 + 0.10 r + 0.02 k
  ensembles       = random + E[k, r],  E = [[0, .01, .02, .03],
                                           [0, .02, .03, .04],
                                           [0, .03, .04, .05]]
  coreset         = random + C[k, r],  C = [[0, -.02, .00, .02],
                                           [0, -.04, -.02, .00],
                                           [0,  .00, .02, .04]]
Average improvement over selections per seed: ensembles [.02, .03, .04]
(mean .03, t half-width 4.302653 * .01 / sqrt(3) = .02484138: excludes 0),
coreset [0, -.02, .02] (mean 0, half-width .04968276: does not).
"""

import csv
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from jal import report

T2 = 4.302652729749462  # t_{0.975, 2}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

E = np.array([[0, 0.01, 0.02, 0.03], [0, 0.02, 0.03, 0.04], [0, 0.03, 0.04, 0.05]])
C = np.array([[0, -0.02, 0.00, 0.02], [0, -0.04, -0.02, 0.00], [0, 0.00, 0.02, 0.04]])


def _random(k, r):
  return 0.50 + 0.10 * r + 0.02 * k


def _toy_rows(seeds=(0, 1, 2), ap=False):
  rows, selections = [], []
  offsets = {'random': np.zeros((3, 4)), 'ensembles': E, 'coreset': C}
  minority = {'random': 0.05, 'ensembles': 0.30, 'coreset': 0.10}
  for strategy, off in offsets.items():
    for k in seeds:
      for r in range(4):
        value = _random(k, r) + off[k, r]
        row = {
            'strategy': strategy,
            'seed': k,
            'round': r,
            'n_labeled': 10 + 10 * r,
            'train_seconds': 0.1 * r + k,
        }
        if ap:
          row['accuracy'] = 0.9
          row['average_precision'] = value
          row['minority_fraction_queried'] = (
              None if r == 0 else minority[strategy] + 0.01 * k + 0.02 * r
          )
        else:
          row['accuracy'] = value
        rows.append(row)
        indices = list(range(100 * k + 10 * r, 100 * k + 10 * r + 10))
        selections.append({'strategy': strategy, 'seed': k, 'round': r, 'indices': indices})
  return rows, selections


def _write_workdir(path, rows, selections, name='toy', data_name='toy_table', query_size=10):
  os.makedirs(path, exist_ok=True)
  config = {
      'name': name,
      'query_size': query_size,
      'num_rounds': 3,
      'warmup_size': 10,
      'seed': 0,
      'data': {'name': data_name},
  }
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  with open(os.path.join(path, 'selections.jsonl'), 'w') as f:
    f.writelines(json.dumps(s) + '\n' for s in selections)
  return str(path)


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp('toy')
  workdir = _write_workdir(root / 'run', *_toy_rows())
  out = str(root / 'out')
  return out, report.write_report([workdir], out)


def test_statistics_match_hand_computed_values(toy):
  _, result = toy
  res = result['settings']['toy_q10']
  assert res['metric'] == 'accuracy'
  assert res['strategies'] == ['random', 'coreset', 'ensembles']
  assert res['rounds'] == [0, 1, 2, 3]
  assert res['n_labeled'] == [10, 20, 30, 40]
  assert res['seeds']['random'] == [0, 1, 2]

  # Random at round 1: .60, .62, .64 -> mean .62, sd .02.
  curve = res['curves']['random']
  assert curve['mean'][1] == pytest.approx(0.62)
  assert curve['hi'][1] - 0.62 == pytest.approx(T2 * 0.02 / math.sqrt(3))
  assert curve['n_seeds'] == [3, 3, 3, 3]

  ens = res['improvement']['ensembles']
  np.testing.assert_allclose(ens['per_seed'], [0.02, 0.03, 0.04], atol=1e-12)
  assert ens['mean'] == pytest.approx(0.03)
  assert ens['half_width'] == pytest.approx(0.02484138, abs=1e-8)
  assert ens['lo'] == pytest.approx(0.03 - 0.02484138, abs=1e-8)
  assert ens['excludes_zero'] is True
  assert ens['n'] == 3
  np.testing.assert_allclose(ens['per_round']['mean'], [0, 0.02, 0.03, 0.04], atol=1e-12)

  core = res['improvement']['coreset']
  np.testing.assert_allclose(core['per_seed'], [0, -0.02, 0.02], atol=1e-12)
  assert core['mean'] == pytest.approx(0.0, abs=1e-12)
  assert core['half_width'] == pytest.approx(0.04968276, abs=1e-8)
  assert core['excludes_zero'] is False
  assert 'random' not in res['improvement']

  # AULC: random is linear, so its mean level is the midpoint .65 + .02 k;
  # ensembles seed 0 adds (.01 + .02 + .03 / 2) / 3 = .015.
  np.testing.assert_allclose(res['aulc']['random']['per_seed'], [0.65, 0.67, 0.69], atol=1e-12)
  np.testing.assert_allclose(
      res['aulc']['ensembles']['per_seed'], [0.665, 0.67 + 0.07 / 3, 0.69 + 0.095 / 3], atol=1e-12
  )
  assert res['minority_fraction'] is None


def test_markdown_tables(toy):
  out, _ = toy
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert (
      '| Strategy | Warmup (n=10) | Selection 1 (n=20) | '
      'Selection 2 (n=30) | Selection 3 (n=40) |'
  ) in text
  # Random: means 52, 62, 72, 82 % with half-width 4.97 pp at every round.
  assert ('| random | 52.00 ± 4.97 | 62.00 ± 4.97 | 72.00 ± 4.97 | 82.00 ± 4.97 |') in text
  assert '| ensembles | +3.000 | [+0.516, +5.484] | yes | 3 |' in text
  assert '| coreset | +0.000 | [-4.968, +4.968] | no | 3 |' in text
  assert '| random | 67.00 | [62.03, 71.97] | 3 |' in text
  # Paired at each selection: ensembles' differences are E's columns (sd 1 pp, half-width
  # 4.303 / sqrt 3 = 2.484), coreset's C's (sd 2 pp); bold where the interval excludes 0.
  assert (
      '| ensembles | +2.000 [-0.484, +4.484] | **+3.000 [+0.516, +5.484]** '
      '| **+4.000 [+1.516, +6.484]** |'
  ) in text
  assert (
      '| coreset | -2.000 [-6.968, +2.968] | +0.000 [-4.968, +4.968] | +2.000 [-2.968, +6.968] |'
      in text
  )
  assert '95% Student-t' in text and 'with 3 seeds t = 4.303' in text
  assert '3 seeds per strategy' in text
  assert 'nan' not in text.lower()
  assert '![toy_q10_curves.png](toy_q10_curves.png)' in text


def test_csvs(toy):
  out, _ = toy
  summary = _read_csv(os.path.join(out, 'summary.csv'))
  assert len(summary) == 3 * 4
  row = next(r for r in summary if r['strategy'] == 'ensembles' and r['round'] == '2')
  assert row['setting'] == 'toy_q10' and row['n_labeled'] == '30'
  # Ensembles at round 2: .72 + .02 k + [.02, .03, .04] -> mean .75, sd .03.
  assert float(row['mean']) == pytest.approx(0.75)
  assert float(row['hi']) == pytest.approx(0.75 + T2 * 0.03 / math.sqrt(3))
  assert row['n_seeds'] == '3'
  assert float(row['improvement_mean']) == pytest.approx(0.03)
  random_row = next(r for r in summary if r['strategy'] == 'random')
  assert random_row['improvement_mean'] == ''

  improvement = {r['strategy']: r for r in _read_csv(os.path.join(out, 'improvement.csv'))}
  assert set(improvement) == {'coreset', 'ensembles'}
  assert float(improvement['ensembles']['mean']) == pytest.approx(0.03)
  assert float(improvement['ensembles']['half_width']) == pytest.approx(0.02484138, abs=1e-8)
  assert improvement['ensembles']['excludes_zero'] == 'yes'
  assert improvement['coreset']['excludes_zero'] == 'no'
  assert improvement['coreset']['n_seeds'] == '3'
  aulc = {r['strategy']: r for r in _read_csv(os.path.join(out, 'aulc.csv'))}
  assert float(aulc['random']['mean']) == pytest.approx(0.67)


def test_figures(toy):
  out, result = toy
  assert result['settings']['toy_q10']['figures'] == [os.path.join(out, 'toy_q10_curves.png')]
  assert os.path.getsize(os.path.join(out, 'toy_q10_curves.png')) > 20_000
  assert not os.path.exists(os.path.join(out, 'toy_q10_selections.png'))
  colours = result['colours']
  assert colours['random'] == '#404040'
  assert len(set(colours.values())) == 3


def test_average_precision_and_minority_fraction(tmp_path):
  workdir = _write_workdir(tmp_path / 'ap', *_toy_rows(ap=True), name='imbalanced', query_size=50)
  out = str(tmp_path / 'out')
  result = report.write_report(workdir, out)
  res = result['settings']['imbalanced_q50']
  assert res['metric'] == 'average_precision'
  assert res['improvement']['ensembles']['mean'] == pytest.approx(0.03)
  # Ensembles queried .30 + .01 k + .02 r minority: round 1 mean .33.
  minority = res['minority_fraction']['ensembles']
  assert math.isnan(minority['mean'][0])
  assert minority['mean'][1] == pytest.approx(0.33)
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert '| ensembles | +0.0300 | [+0.0052, +0.0548] | yes | 3 |' in text
  assert '| random | 0.5200 ± 0.0497 |' in text
  assert '| ensembles | 0.330 ± 0.025 |' in text
  assert os.path.getsize(os.path.join(out, 'imbalanced_q50_minority.png')) > (15_000)
  # Asking for accuracy explicitly still works.
  acc = report.write_report(workdir, str(tmp_path / 'acc'), metric='accuracy')['settings'][
      'imbalanced_q50'
  ]
  assert acc['improvement']['ensembles']['mean'] == pytest.approx(0.0)


def test_one_seed_says_no_interval(tmp_path):
  workdir = _write_workdir(tmp_path / 'one', *_toy_rows(seeds=(1,)))
  out = str(tmp_path / 'out')
  res = report.write_report(workdir, out, figures=False)['settings']['toy_q10']
  ens = res['improvement']['ensembles']
  assert ens['mean'] == pytest.approx(0.03) and ens['n'] == 1
  assert math.isnan(ens['lo']) and ens['excludes_zero'] is False
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert 'no confidence interval is possible' in text
  assert '| ensembles | +3.000 | n/a (1 seed) | n/a | 1 |' in text
  assert '| random | 52.00 | 62.00 | 72.00 | 82.00 |' in text
  assert '| ensembles | +2.000 | +3.000 | +4.000 |' in text  # per selection, no interval
  assert 'nan' not in text.lower()


def test_bootstrap_intervals(tmp_path):
  workdir = _write_workdir(tmp_path / 'run', *_toy_rows())
  result = report.write_report(workdir, str(tmp_path / 'out'), ci='bootstrap', figures=False)
  ens = result['settings']['toy_q10']['improvement']['ensembles']
  assert ens['method'] == 'bootstrap'
  # Resample means of {.02, .03, .04} lie in [.02, .04], and each end is
  # hit with probability 1/27 > 2.5%: the interval is [.02, .04].
  assert ens['lo'] == pytest.approx(0.02) and ens['hi'] == pytest.approx(0.04)
  assert ens['mean'] == pytest.approx(0.03)


def test_workdirs_merge_and_conflict(tmp_path):
  rows, selections = _toy_rows()
  first = [r for r in rows if r['seed'] < 2]
  second = [r for r in rows if r['seed'] >= 1]  # Seed 1 twice, identical.
  for r in second:
    r['train_seconds'] = 99.0  # Timings may differ between copies.
  a = _write_workdir(tmp_path / 'a', first, selections)
  b = _write_workdir(tmp_path / 'b', second, selections)
  res = report.write_report([a, b], str(tmp_path / 'out'), figures=False)
  res = res['settings']['toy_q10']
  assert res['seeds']['ensembles'] == [0, 1, 2]
  assert res['improvement']['ensembles']['mean'] == pytest.approx(0.03)

  # Another setting (query size) in the same report is kept apart.
  c = _write_workdir(tmp_path / 'c', rows, selections, query_size=20)
  both = report.write_report([a, c], str(tmp_path / 'out2'), figures=False)
  assert sorted(both['settings']) == ['toy_q10', 'toy_q20']

  changed = [dict(r) for r in second]
  changed[0]['accuracy'] += 0.1
  d = _write_workdir(tmp_path / 'd', changed, selections)
  with pytest.raises(ValueError, match='conflicting metrics'):
    report.write_report([a, d], str(tmp_path / 'out3'), figures=False)


def test_selection_grid_for_2d_data(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  y = np.repeat([0, 1], 150).astype(np.int32)
  x = (rng.normal(size=(300, 2)) + 3.0 * y[:, None]).astype(np.float32)
  calls = []

  def load_dataset(config, data_dir=None, seed=0):
    calls.append((config.name, data_dir, seed))
    return types.SimpleNamespace(x_train=x, y_train=y)

  fake = types.ModuleType('jal.data')
  fake.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, 'jal.data', fake)
  workdir = _write_workdir(
      tmp_path / 'blobs', *_toy_rows(), name='gaussian', data_name='gaussian_blobs', query_size=5
  )
  out = str(tmp_path / 'out')
  res = report.write_report(workdir, out)['settings']['gaussian_q5']
  path = os.path.join(out, 'gaussian_q5_selections.png')
  assert calls == [('gaussian_blobs', None, 0)]
  assert path in res['figures']
  assert os.path.getsize(path) > 30_000


def test_cli(tmp_path):
  workdir = _write_workdir(tmp_path / 'run', *_toy_rows())
  out = str(tmp_path / 'cli')
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.report',
          f'--workdir={workdir}',
          f'--out={out}',
          '--metric=accuracy',
          '--ci=t',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(out, 'report.md')) as f:
    assert '| ensembles | +3.000 | [+0.516, +5.484] | yes | 3 |' in f.read()
  assert os.path.exists(os.path.join(out, 'toy_q10_curves.png'))


def test_incomplete_seed_and_missing_baseline(tmp_path):
  rows, selections = _toy_rows()
  # Ensembles seed 2 has not finished round 3 yet.
  rows = [r for r in rows if (r['strategy'], r['seed'], r['round']) != ('ensembles', 2, 3)]
  workdir = _write_workdir(tmp_path / 'run', rows, selections)
  out = str(tmp_path / 'out')
  res = report.write_report(workdir, out, figures=False)['settings']['toy_q10']
  ens = res['improvement']['ensembles']
  assert ens['seeds'] == [0, 1]
  np.testing.assert_allclose(ens['per_seed'], [0.02, 0.03], atol=1e-12)
  assert ens['per_round']['n_seeds'] == [3, 3, 3, 2]
  assert res['curves']['ensembles']['n_seeds'] == [3, 3, 3, 2]
  assert res['aulc']['ensembles']['seeds'] == [0, 1]
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  # Round 3: .80 + .02 k + E[k, 3] = .83, .86 -> mean 84.50 %, sd .03 / sqrt2,
  # half-width t_{.975,1} * sd / sqrt2 = 12.706205 * .015 = 19.06 pp.
  assert '| 84.50 ± 19.06 (2 seeds) |' in text
  assert 'Note: ensembles: seeds [2] lack some rounds' in text
  # Paired at round 3: E[0, 3], E[1, 3] = 3, 4 pp -> +3.5, half-width 12.706 * .5 = 6.353.
  assert (
      '| ensembles | +2.000 [-0.484, +4.484] | **+3.000 [+0.516, +5.484]** '
      '| +3.500 [-2.853, +9.853] (2 seeds) |'
  ) in text

  no_random = [r for r in rows if r['strategy'] != 'random']
  workdir = _write_workdir(tmp_path / 'norandom', no_random, selections)
  res = report.write_report(workdir, str(tmp_path / 'out2'))
  res = res['settings']['toy_q10']
  assert res['improvement'] == {}
  assert res['strategies'] == ['coreset', 'ensembles']
  assert "No 'random' runs" in res['notes'][0]


# ----------------------------------------------------------------------------
# Beside the study (jal.study).
#
# Synthetic `gaussian` setting: seeds 0..2, rounds 0..3 (n_labeled 5..20).
#   random[k, r]    = R[r] + d[k],  R = [.70, .78, .82, .90], d = [-.01, 0, .01]
#   coreset[k, r]   = random + c[k] for r >= 1,  c = [-.02, -.01, .00]
#   ensembles[k, r] = random + e[k] for r >= 1,  e = [.04, .05, .06]
# Average improvement per seed is c (mean -1.000 pp) and e (mean +5.000 pp),
# both with sd 1 pp: t half-width 4.302653 / sqrt(3) = 2.484 pp. The study
# (derived from Table 3.1): coreset +0.633 pp, ensembles +2.333 pp.

R_G = (0.70, 0.78, 0.82, 0.90)
D_G = (-0.01, 0.0, 0.01)
OFFSETS_G = {
    'random': (0.0, 0.0, 0.0),
    'coreset': (-0.02, -0.01, 0.0),
    'ensembles': (0.04, 0.05, 0.06),
}


def _gaussian_rows(name='gaussian'):
  rows = []
  for strategy, off in OFFSETS_G.items():
    for k in range(3):
      for r in range(4):
        rows.append(
            {
                'strategy': strategy,
                'seed': k,
                'round': r,
                'n_labeled': 5 + 5 * r,
                'accuracy': R_G[r] + D_G[k] + (off[k] if r else 0.0),
            }
        )
  return rows


@pytest.fixture(scope='module')
def gaussian_report(tmp_path_factory):
  root = tmp_path_factory.mktemp('gaussian')
  workdir = _write_workdir(
      root / 'run', _gaussian_rows(), [], name='gaussian', data_name='toy_table', query_size=5
  )
  out = str(root / 'out')
  return out, report.write_report(workdir, out, figures=False)


def test_study_comparison_statistics(gaussian_report):
  _, result = gaussian_report
  comparison = result['settings']['gaussian_q5']['study']
  assert comparison['label'] == 'Table 3.1, 2D Gaussian'
  assert comparison['study_seeds'] == 3 and comparison['notes'] == []
  imp = {r['strategy']: r for r in comparison['improvement']}
  assert list(imp) == ['coreset', 'ensembles']
  half = T2 / math.sqrt(3)  # pp
  core = imp['coreset']
  assert core['study_value'] == pytest.approx(1.9 / 3)
  assert core['jal_mean'] == pytest.approx(-1.0)
  assert core['jal_lo'] == pytest.approx(-1.0 - half)
  assert core['jal_hi'] == pytest.approx(-1.0 + half)
  assert core['ci_contains_study'] is True
  assert core['sign_agrees'] is False
  assert core['jal_ci_excludes_zero'] is False
  ens = imp['ensembles']
  assert ens['jal_mean'] == pytest.approx(5.0)
  assert ens['ci_contains_study'] is False  # 2.333 < 5 - 2.484.
  assert ens['sign_agrees'] is True and ens['jal_ci_excludes_zero'] is True
  assert ens['jal_n_seeds'] == 3 and ens['unit'] == 'pp'

  per = comparison['per_selection']
  assert [(r['strategy'], r['selection']) for r in per] == [
      (s, k) for s in ('random', 'coreset', 'ensembles') for k in (1, 2, 3)
  ]
  first = per[0]  # random, selection 1: 78.00 ± 2.48 vs the study's 77.8.
  assert first['study_value'] == 77.8 and first['n_labeled'] == 10
  assert first['jal_mean'] == pytest.approx(78.0)
  assert first['ci_contains_study'] is True and first['sign_agrees'] is None
  last = per[-1]  # ensembles, selection 3: 95.00, sd 2 pp, vs 85.6.
  assert last['jal_mean'] == pytest.approx(95.0)
  assert last['jal_hi'] == pytest.approx(95.0 + 2 * half)
  assert last['ci_contains_study'] is False
  assert result['study_comparison'] == [
      {'setting': 'gaussian_q5', 'name': 'gaussian', 'query_size': 5, 'metric': 'accuracy', **r}
      for r in comparison['improvement'] + per
  ]


def test_study_comparison_markdown(gaussian_report):
  out, _ = gaussian_report
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert '### Beside the study' in text
  assert 'means of 3 seeds and no intervals' in text
  assert (
      '| Strategy | study (pp) | jal mean (pp) | jal 95% CI | CI contains '
      "the study's value? | jal sign agrees with the study? |"
  ) in text
  derived = 'Table 3.1, 2D Gaussian, derived: mean over selections 1-3 of strategy − random'
  assert (
      f'| coreset | +0.633 ({derived}) | -1.000 | [-3.484, +1.484] | yes | no (jal CI spans 0) |'
  ) in text
  assert (f'| ensembles | +2.333 ({derived}) | +5.000 | [+2.516, +7.484] | no | yes |') in text
  assert '| random | 1 (n=10) | 77.8 | 78.00 | [75.52, 80.48] | yes |' in text
  assert '| ensembles | 3 (n=20) | 85.6 | 95.00 | [90.03, 99.97] | no |' in text
  assert 'nan' not in text.lower()


def test_another_baseline_pairs_with_it_and_drops_the_study_comparison(tmp_path):
  """--baseline=coreset: differences to Coreset by seed and round; no 'cf.' to the study's tables."""
  workdir = _write_workdir(
      tmp_path / 'run', _gaussian_rows(), [], name='gaussian', data_name='toy_table', query_size=5
  )
  out = str(tmp_path / 'out')
  res = report.write_report(workdir, out, baseline='coreset', figures=False)
  imp = res['settings']['gaussian_q5']['improvement']
  assert list(imp) == ['random', 'ensembles']
  assert imp['ensembles']['mean'] == pytest.approx(0.06)
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert '### Average improvement over coreset over all selections\n' in text
  assert 'cf. Tables 3.2' not in text
  # random − coreset per seed: 2, 1, 0 pp (sd 1, half-width 4.303 / sqrt 3); ensembles −
  # coreset: 6 pp at every seed (sd 0).
  assert '| random | +1.000 | [-1.484, +3.484] | no | 3 |' in text
  assert '| ensembles | +6.000 | [+6.000, +6.000] | yes | 3 |' in text
  assert "this report's are over coreset: average improvements not compared" in text


def test_study_comparison_csv(gaussian_report):
  out, result = gaussian_report
  path = os.path.join(out, 'study_comparison.csv')
  assert path in result['files']
  rows = _read_csv(path)
  assert len(rows) == 2 + 9
  ens = next(
      r for r in rows if r['table'] == 'average_improvement' and r['strategy'] == 'ensembles'
  )
  assert ens['setting'] == 'gaussian_q5' and ens['unit'] == 'pp'
  assert float(ens['study_value']) == pytest.approx(7 / 3)
  assert float(ens['jal_mean']) == pytest.approx(5.0)
  assert ens['study_seeds'] == '3' and ens['jal_n_seeds'] == '3'
  assert (ens['ci_contains_study'], ens['sign_agrees'], ens['jal_ci_excludes_zero']) == (
      'no',
      'yes',
      'yes',
  )
  assert ens['selection'] == '' and ens['ci_method'] == 't'
  sel = next(
      r
      for r in rows
      if r['table'] == 'per_selection' and r['strategy'] == 'coreset' and r['selection'] == '3'
  )
  # Coreset, selection 3: .90 + d + c = .87, .89, .91 -> 89 %, vs 80.3.
  assert sel['unit'] == '%' and float(sel['study_value']) == 80.3
  assert float(sel['jal_mean']) == pytest.approx(89.0)
  assert sel['ci_contains_study'] == 'no' and sel['sign_agrees'] == ''


def test_study_comparison_ap_and_query_size_note(tmp_path):
  workdir = _write_workdir(tmp_path / 'ap', *_toy_rows(ap=True), name='imbalance', query_size=10)
  out = str(tmp_path / 'out')
  result = report.write_report(workdir, out, figures=False)
  comparison = result['settings']['imbalance_q10']['study']
  assert comparison['unit'] == 'AP' and comparison['per_selection'] == []
  ens = comparison['improvement'][1]
  assert ens['study_value'] == 0.0325 and ens['jal_mean'] == pytest.approx(0.03)
  assert ens['ci_contains_study'] is True and ens['sign_agrees'] is True
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert (
      '| ensembles | +0.0325 (Table 4.2, vanilla CIFAR-10 (1:19 '
      'imbalance)) | +0.0300 | [+0.0052, +0.0548] | yes | yes |'
  ) in text
  assert "Note: The study's query size here is 50; jal's is 10." in text

  # Accuracy is not what Table 4.2 reports: no rows, a note instead.
  acc = report.write_report(workdir, str(tmp_path / 'acc'), metric='accuracy', figures=False)
  comparison = acc['settings']['imbalance_q10']['study']
  assert comparison['improvement'] == [] and acc['study_comparison'] == []
  assert not os.path.exists(tmp_path / 'acc' / 'study_comparison.csv')
  assert 'nothing to compare' in comparison['notes'][-1]


def test_settings_outside_the_study_get_no_comparison(toy, tmp_path):
  out, result = toy
  assert result['settings']['toy_q10']['study'] is None
  assert result['study_comparison'] == []
  with open(os.path.join(out, 'report.md')) as f:
    assert 'Beside the study' not in f.read()
  assert not os.path.exists(os.path.join(out, 'study_comparison.csv'))

  workdir = _write_workdir(
      tmp_path / 'smoke', _gaussian_rows(), [], name='gaussian_smoke', query_size=5
  )
  smoke = report.write_report(workdir, str(tmp_path / 'out'), figures=False)
  assert smoke['settings']['gaussian_smoke_q5']['study'] is None
  with open(tmp_path / 'out' / 'report.md') as f:
    assert 'Beside the study' not in f.read()


def test_a_setting_not_the_studys_says_how_it_departs_and_a_study_setting_does_not(tmp_path):
  cpu = _write_workdir(tmp_path / 'cpu', *_toy_rows(ap=True), name='imbalance_cpu', query_size=50)
  study_run = _write_workdir(tmp_path / 'st', *_toy_rows(ap=True), name='imbalance', query_size=50)
  texts = {}
  for name, workdir in (('cpu', cpu), ('study', study_run)):
    report.write_report(workdir, str(tmp_path / f'out_{name}'), figures=False)
    with open(tmp_path / f'out_{name}' / 'report.md') as f:
      texts[name] = f.read()
  line = next(l for l in texts['cpu'].splitlines() if l.startswith("Not the study's setting"))
  assert line.startswith(
      "Not the study's setting; how it departs: `:cpu` is the same task at a 2-core CPU's scale"
  )
  assert '- model: LeNet' in line
  assert "Not the study's setting" not in texts['study']


def test_overview_of_several_settings(toy, tmp_path):
  rows, selections = _toy_rows(ap=True)
  keep = lambda rs: [r for r in rs if r['strategy'] != 'coreset']
  ap = _write_workdir(tmp_path / 'ap', keep(rows), keep(selections), name='toy_ap', query_size=50)
  acc = _write_workdir(tmp_path / 'acc', *_toy_rows())
  report.write_report([acc, ap], str(tmp_path / 'out'), figures=False)
  with open(tmp_path / 'out' / 'report.md') as f:
    lines = f.read().splitlines()
  start = lines.index('## Overview: average improvement over random, by setting')
  # The toy's hand-computed improvements (test_markdown_tables), in pp and in AP;
  # coreset's interval spans 0 (not bold), and toy_ap has no coreset run.
  assert lines[start + 4 : start + 8] == [
      '| Setting | Unit | coreset | ensembles |',
      '|---|---|---|---|',
      '| toy, query size 10 | pp | +0.000 [-4.968, +4.968] (3) | **+3.000 [+0.516, +5.484]** (3) |',
      '| toy_ap, query size 50 | AP | – | **+0.0300 [+0.0052, +0.0548]** (3) |',
  ]
  assert lines[start + 8] == '' and lines[start + 9] == '## toy, query size 10'
  # A report of one setting has no overview.
  out, _ = toy
  with open(os.path.join(out, 'report.md')) as f:
    assert '## Overview' not in f.read()
