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

E = np.array([[0, .01, .02, .03], [0, .02, .03, .04], [0, .03, .04, .05]])
C = np.array([[0, -.02, .00, .02], [0, -.04, -.02, .00], [0, .00, .02, .04]])


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
        row = {'strategy': strategy, 'seed': k, 'round': r,
               'n_labeled': 10 + 10 * r, 'train_seconds': 0.1 * r + k}
        if ap:
          row['accuracy'] = 0.9
          row['average_precision'] = value
          row['minority_fraction_queried'] = (
              None if r == 0 else minority[strategy] + 0.01 * k + 0.02 * r)
        else:
          row['accuracy'] = value
        rows.append(row)
        indices = list(range(100 * k + 10 * r, 100 * k + 10 * r + 10))
        selections.append({'strategy': strategy, 'seed': k, 'round': r,
                           'indices': indices})
  return rows, selections


def _write_workdir(path, rows, selections, name='toy', data_name='toy_table',
                   query_size=10):
  os.makedirs(path, exist_ok=True)
  config = {'name': name, 'query_size': query_size, 'num_rounds': 3,
            'warmup_size': 10, 'seed': 0,
            'data': {'name': data_name}}
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
  np.testing.assert_allclose(ens['per_seed'], [.02, .03, .04], atol=1e-12)
  assert ens['mean'] == pytest.approx(0.03)
  assert ens['half_width'] == pytest.approx(0.02484138, abs=1e-8)
  assert ens['lo'] == pytest.approx(0.03 - 0.02484138, abs=1e-8)
  assert ens['excludes_zero'] is True
  assert ens['n'] == 3
  np.testing.assert_allclose(ens['per_round']['mean'], [0, .02, .03, .04],
                             atol=1e-12)

  core = res['improvement']['coreset']
  np.testing.assert_allclose(core['per_seed'], [0, -.02, .02], atol=1e-12)
  assert core['mean'] == pytest.approx(0.0, abs=1e-12)
  assert core['half_width'] == pytest.approx(0.04968276, abs=1e-8)
  assert core['excludes_zero'] is False
  assert 'random' not in res['improvement']

  # AULC: random is linear, so its mean level is the midpoint .65 + .02 k;
  # ensembles seed 0 adds (.01 + .02 + .03 / 2) / 3 = .015.
  np.testing.assert_allclose(res['aulc']['random']['per_seed'],
                             [.65, .67, .69], atol=1e-12)
  np.testing.assert_allclose(res['aulc']['ensembles']['per_seed'],
                             [.665, .67 + .07 / 3, .69 + .095 / 3], atol=1e-12)
  assert res['minority_fraction'] is None


def test_markdown_tables(toy):
  out, _ = toy
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  assert ('| Strategy | Warmup (n=10) | Selection 1 (n=20) | '
          'Selection 2 (n=30) | Selection 3 (n=40) |') in text
  # Random: means 52, 62, 72, 82 % with half-width 4.97 pp at every round.
  assert ('| random | 52.00 ± 4.97 | 62.00 ± 4.97 | 72.00 ± 4.97 | '
          '82.00 ± 4.97 |') in text
  assert '| ensembles | +3.000 | [+0.516, +5.484] | yes | 3 |' in text
  assert '| coreset | +0.000 | [-4.968, +4.968] | no | 3 |' in text
  assert '| random | 67.00 | [62.03, 71.97] | 3 |' in text
  assert '95% Student-t' in text and 'with 3 seeds t = 4.303' in text
  assert '3 seeds per strategy' in text
  assert 'nan' not in text.lower()
  assert '![toy_q10_curves.png](toy_q10_curves.png)' in text


def test_csvs(toy):
  out, _ = toy
  summary = _read_csv(os.path.join(out, 'summary.csv'))
  assert len(summary) == 3 * 4
  row = next(r for r in summary
             if r['strategy'] == 'ensembles' and r['round'] == '2')
  assert row['setting'] == 'toy_q10' and row['n_labeled'] == '30'
  # Ensembles at round 2: .72 + .02 k + [.02, .03, .04] -> mean .75, sd .03.
  assert float(row['mean']) == pytest.approx(0.75)
  assert float(row['hi']) == pytest.approx(0.75 + T2 * 0.03 / math.sqrt(3))
  assert row['n_seeds'] == '3'
  assert float(row['improvement_mean']) == pytest.approx(0.03)
  random_row = next(r for r in summary if r['strategy'] == 'random')
  assert random_row['improvement_mean'] == ''

  improvement = {r['strategy']: r for r in
                 _read_csv(os.path.join(out, 'improvement.csv'))}
  assert set(improvement) == {'coreset', 'ensembles'}
  assert float(improvement['ensembles']['mean']) == pytest.approx(0.03)
  assert float(improvement['ensembles']['half_width']) == pytest.approx(
      0.02484138, abs=1e-8)
  assert improvement['ensembles']['excludes_zero'] == 'yes'
  assert improvement['coreset']['excludes_zero'] == 'no'
  assert improvement['coreset']['n_seeds'] == '3'
  aulc = {r['strategy']: r for r in _read_csv(os.path.join(out, 'aulc.csv'))}
  assert float(aulc['random']['mean']) == pytest.approx(0.67)


def test_figures(toy):
  out, result = toy
  assert result['settings']['toy_q10']['figures'] == [
      os.path.join(out, 'toy_q10_curves.png')]
  assert os.path.getsize(os.path.join(out, 'toy_q10_curves.png')) > 20_000
  assert not os.path.exists(os.path.join(out, 'toy_q10_selections.png'))
  colours = result['colours']
  assert colours['random'] == '#404040'
  assert len(set(colours.values())) == 3


def test_average_precision_and_minority_fraction(tmp_path):
  workdir = _write_workdir(tmp_path / 'ap', *_toy_rows(ap=True),
                           name='imbalanced', query_size=50)
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
  assert os.path.getsize(os.path.join(out, 'imbalanced_q50_minority.png')) > (
      15_000)
  # Asking for accuracy explicitly still works.
  acc = report.write_report(workdir, str(tmp_path / 'acc'),
                            metric='accuracy')['settings']['imbalanced_q50']
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
  assert 'nan' not in text.lower()


def test_bootstrap_intervals(tmp_path):
  workdir = _write_workdir(tmp_path / 'run', *_toy_rows())
  result = report.write_report(workdir, str(tmp_path / 'out'), ci='bootstrap',
                               figures=False)
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
  workdir = _write_workdir(tmp_path / 'blobs', *_toy_rows(), name='gaussian',
                           data_name='gaussian_blobs', query_size=5)
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
      [sys.executable, '-m', 'jal.report', f'--workdir={workdir}',
       f'--out={out}', '--metric=accuracy', '--ci=t'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(out, 'report.md')) as f:
    assert '| ensembles | +3.000 | [+0.516, +5.484] | yes | 3 |' in f.read()
  assert os.path.exists(os.path.join(out, 'toy_q10_curves.png'))


def test_incomplete_seed_and_missing_baseline(tmp_path):
  rows, selections = _toy_rows()
  # Ensembles seed 2 has not finished round 3 yet.
  rows = [r for r in rows if (r['strategy'], r['seed'], r['round']) !=
          ('ensembles', 2, 3)]
  workdir = _write_workdir(tmp_path / 'run', rows, selections)
  out = str(tmp_path / 'out')
  res = report.write_report(workdir, out, figures=False)['settings']['toy_q10']
  ens = res['improvement']['ensembles']
  assert ens['seeds'] == [0, 1]
  np.testing.assert_allclose(ens['per_seed'], [.02, .03], atol=1e-12)
  assert ens['per_round']['n_seeds'] == [3, 3, 3, 2]
  assert res['curves']['ensembles']['n_seeds'] == [3, 3, 3, 2]
  assert res['aulc']['ensembles']['seeds'] == [0, 1]
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  # Round 3: .80 + .02 k + E[k, 3] = .83, .86 -> mean 84.50 %, sd .03 / sqrt2,
  # half-width t_{.975,1} * sd / sqrt2 = 12.706205 * .015 = 19.06 pp.
  assert '| 84.50 ± 19.06 (2 seeds) |' in text
  assert 'Note: ensembles: seeds [2] lack some rounds' in text

  no_random = [r for r in rows if r['strategy'] != 'random']
  workdir = _write_workdir(tmp_path / 'norandom', no_random, selections)
  res = report.write_report(workdir, str(tmp_path / 'out2'))
  res = res['settings']['toy_q10']
  assert res['improvement'] == {}
  assert res['strategies'] == ['coreset', 'ensembles']
  assert "No 'random' runs" in res['notes'][0]
