"""jal.report.verdict on hand-made workdirs whose per-seed improvements are known.

Each workdir has rounds 0..2; random's metric at seed k, round r is
0.5 + 0.1 r + 0.01 k and a strategy's is random's plus d[k] at rounds 1 and
2, so its per-seed average improvement over the selections is d[k]:

  mnist_low   ensembles d = [.02, .03, .04]: mean 3 pp, t half-width
              T2 * 1 / sqrt(3) = 2.484 pp: [0.516, 5.484], excludes 0 and
              has the study's sign (+4.584): agrees. Paired t = 3 sqrt(3),
              2 df: p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(27 / 29).
              coreset the same d, the study's -13.388: disagrees.
  mnist_high  ensembles d = [.01, .02, .03]: 2 pp, [-0.484, 4.484]:
              inconclusive (t = 2 sqrt(3): p = 1 - sqrt(12 / 14) > 0.05).
              coreset d = [-.04, -.03, -.02]: [-5.484, -0.516] against the
              study's +0.725: disagrees.
  imbalance   AP, one seed, random and ensembles only: ensembles has no
              interval (inconclusive); coreset was not run.
  mnist_imbalance_digit3 (beyond the study, relates to `imbalance`): AP,
              balanced_uncertainty d = [.10, .11, .12]: [.0851586, .1348414]:
              beats random (the study has no such row); ensembles d =
              [.1, .2, .3]: [-.0484, .4484]: inconclusive.
"""

import csv
import json
import math
import pathlib
import subprocess
import sys

import pytest

from jal import stats, study
from jal.label import advise
from jal.label import evidence
from jal.report import loading
from jal.report import verdict
from tests.conftest import REPO

T2 = 4.302652729749462  # t_{0.975, 2}
HALF = T2 / math.sqrt(3)  # half-width for a per-seed sd of 1 (pp or 0.01 AP)


def _workdir(
    path: pathlib.Path,
    name: str,
    query: int,
    d: dict,
    metric='accuracy',
    seeds=(0, 1, 2),
    config=None,
) -> str:
  """A workdir with random and the strategies of `d` (strategy -> d per seed)."""
  path.mkdir(parents=True)
  cfg = {
      'name': name,
      'query_size': query,
      'data': {'name': 'mnist'},
      'model': {'name': 'lenet'},
  } | (config or {})
  (path / 'config.json').write_text(json.dumps(cfg))
  rows = []
  for strategy, offsets in {'random': [0.0] * len(seeds), **d}.items():
    for k, seed in enumerate(seeds):
      for r in range(3):
        value = 0.5 + 0.1 * r + 0.01 * seed + (offsets[k] if r else 0.0)
        row = {
            'strategy': strategy,
            'seed': seed,
            'round': r,
            'n_labeled': query * (r + 1),
            'accuracy': value,
            'per_class_accuracy': [value, value],
        }
        if metric == 'average_precision':
          row['average_precision'] = value
        rows.append(row)
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


@pytest.fixture(name='runs')
def fixture_runs(tmp_path):
  ap = {'data': {'name': 'mnist', 'positive_classes': [3], 'minority_fraction': 0.05}}
  return [
      _workdir(
          tmp_path / 'mnist_low',
          'mnist_low',
          10,
          {'coreset': [0.02, 0.03, 0.04], 'ensembles': [0.02, 0.03, 0.04]},
      ),
      _workdir(
          tmp_path / 'mnist_high',
          'mnist_high',
          600,
          {'coreset': [-0.04, -0.03, -0.02], 'ensembles': [0.01, 0.02, 0.03]},
      ),
      _workdir(
          tmp_path / 'imbalance',
          'imbalance',
          50,
          {'ensembles': [0.05]},
          metric='average_precision',
          seeds=(0,),
          config=ap,
      ),
      _workdir(
          tmp_path / 'digit3',
          'mnist_imbalance_digit3',
          50,
          {'ensembles': [0.1, 0.2, 0.3], 'balanced_uncertainty': [0.10, 0.11, 0.12]},
          metric='average_precision',
          config=ap,
      ),
  ]


def _row(rows, setting, strategy, run=''):
  found = [r for r in rows if (r['setting'], r['strategy'], r['run']) == (setting, strategy, run)]
  assert len(found) == 1, (setting, strategy, run, found)
  return found[0]


def test_paired_t_pvalue():
  t = 3 * math.sqrt(3)  # d = [.02, .03, .04]
  assert stats.paired_t_pvalue([0.02, 0.03, 0.04]) == pytest.approx(1 - t / math.sqrt(2 + t * t))
  assert stats.paired_t_pvalue([0.01, 0.02, 0.03]) == pytest.approx(1 - math.sqrt(12 / 14))
  assert stats.paired_t_pvalue([-0.04, -0.03, -0.02]) == pytest.approx(
      stats.paired_t_pvalue([0.02, 0.03, 0.04])
  )
  # p < 0.05 exactly when the 95% t interval excludes 0.
  for x in ([0.02, 0.03, 0.04], [0.01, 0.02, 0.03], [0.1, -0.3, 0.5, 0.2]):
    assert (stats.paired_t_pvalue(x) < 0.05) == stats.summarize(x)['excludes_zero']
  assert math.isnan(stats.paired_t_pvalue([0.3]))
  assert math.isnan(stats.paired_t_pvalue([0.2, 0.2, float('nan')]))


def test_rows_match_hand_computed_values(runs):
  rows = verdict.verdict_rows(runs)
  r = _row(rows, 'mnist_low', 'ensembles')
  assert (r['table'], r['study_row'], r['study_value']) == (
      'Table 3.2',
      'MNIST, low query size',
      4.584,
  )
  assert (r['jal_mean'], r['jal_lo'], r['jal_hi']) == pytest.approx((3, 3 - HALF, 3 + HALF))
  assert (r['n_seeds'], r['seeds'], r['unit']) == (3, '0 1 2', 'pp')
  assert r['p_value'] == pytest.approx(1 - math.sqrt(27 / 29))
  assert r['verdict'] == 'agrees'
  assert _row(rows, 'mnist_low', 'coreset')['verdict'] == 'disagrees'
  r = _row(rows, 'mnist_high', 'ensembles')
  assert (r['jal_mean'], r['jal_lo'], r['jal_hi']) == pytest.approx((2, 2 - HALF, 2 + HALF))
  assert r['verdict'] == 'inconclusive' and r['p_value'] > 0.05
  r = _row(rows, 'mnist_high', 'coreset')
  assert (r['jal_lo'], r['jal_hi']) == pytest.approx((-3 - HALF, -3 + HALF))
  assert r['verdict'] == 'disagrees'
  # One seed: a mean and no interval.
  r = _row(rows, 'imbalance', 'ensembles')
  assert (r['unit'], r['study_value'], r['n_seeds']) == ('AP', 0.0325, 1)
  assert r['jal_mean'] == pytest.approx(0.05) and math.isnan(r['jal_lo'])
  assert r['verdict'] == 'inconclusive'
  r = _row(rows, 'imbalance', 'coreset')
  assert r['verdict'] == 'not run here' and 'coreset was not run in' in r['reason']
  assert {r['verdict'] for r in rows} == {
      'agrees',
      'disagrees',
      'inconclusive',
      'not run here',
      'beats random',
  }


def test_every_study_row_once_and_absent_ones_say_why(runs):
  rows = verdict.verdict_rows(runs)
  assert set(verdict.SETTINGS) == set(study.SETTINGS)
  study_rows = [r for r in rows if r['section'] == 'study']
  assert [(r['setting'], r['strategy']) for r in study_rows] == [
      (s, k) for s in study.SETTINGS for k in study.lookup(s).improvement
  ]
  reasons = {
      r['setting']: r['reason']
      for r in study_rows
      if r['verdict'] == 'not run here' and r['setting'] != 'imbalance'
  }
  assert reasons['gaussian'] == 'no given workdir holds this setting'
  assert reasons['cifar100_low'] == 'CIFAR-100 data not available here'
  assert 'no ImageNet ResNet-18 weights here' in reasons['cifar100_high_pretrained']
  assert 'no ImageNet ResNet-18 weights here' in reasons['imbalance_pretrained']
  assert reasons['retinopathy'].startswith('diabetic retinopathy data not available here')
  assert 'no accelerator is lent' in reasons['cifar10_2class_high']
  assert 'launch.accelerator' in reasons['cifar10_2class_low']
  assert all(
      math.isnan(r['jal_mean']) and r['n_seeds'] == 0 for r in study_rows if r['setting'] in reasons
  )
  # Table 3.1's derived value for gaussian.
  assert _row(rows, 'gaussian', 'ensembles')['study_value'] == pytest.approx(7 / 3)


def test_beyond_the_study(runs):
  rows = [r for r in verdict.verdict_rows(runs) if r['section'] == 'beyond']
  assert [r['strategy'] for r in rows] == ['ensembles', 'balanced_uncertainty']
  r = _row(rows, 'mnist_imbalance_digit3', 'balanced_uncertainty')
  assert (r['related_setting'], r['table'], r['study_value']) == ('imbalance', 'Table 4.2', '')
  assert (r['jal_mean'], r['jal_lo'], r['jal_hi']) == pytest.approx(
      (0.11, 0.11 - 0.01 * HALF, 0.11 + 0.01 * HALF)
  )
  assert r['verdict'] == 'beats random' and r['unit'] == 'AP'
  assert r['departs'] == (
      "It departs from the study's Table 4.2 setting in data and model: an MNIST digit against"
      ' the other nine instead of CIFAR-10 automobile + truck against the rest, and LeNet with'
      ' the MNIST recipe instead of ResNet-18 with SGD.'
  )
  assert (r['num_classes'], r['imbalanced'], r['pretrained']) == (2, True, False)
  r = _row(rows, 'mnist_imbalance_digit3', 'ensembles')
  assert (r['study_value'], r['verdict']) == (0.0325, 'inconclusive')
  assert verdict.related_setting('mnist_low_smoke') == 'mnist_low'
  assert verdict.related_setting('cifar100_high_warmup_low_x') == 'cifar100_high_warmup_low'
  assert verdict.related_setting('svhn') is None
  assert loading.departs('x', {'departs': 'fewer epochs'}) == 'fewer epochs'
  # A variant's own paragraph of its config's docstring, else one that begins
  # "It departs", else the first one.
  cpu = loading.departs('imbalance_cpu', {})
  assert cpu.startswith("`:cpu` is the same task at a 2-core CPU's scale (setting `imbalance_cpu`)")
  assert '- model: LeNet' in cpu and 'It cannot be combined with `:pretrained`.' in cpu
  assert loading.departs('imbalance', {}).startswith('Imbalanced CIFAR-10, car vs rest at 1:19')
  assert loading.departs('mnist_imbalance_digit3', {}) == r['departs']


def test_independent_runs_of_a_setting_need_a_label(runs, tmp_path):
  again = _workdir(
      tmp_path / 'mnist_low_cpu',
      'mnist_low',
      10,
      {'coreset': [-0.02, -0.03, -0.04], 'ensembles': [0.01, 0.02, 0.03]},
  )
  with pytest.raises(ValueError, match='conflicting metrics'):
    verdict.verdict_rows(runs + [again])
  rows = verdict.verdict_rows(runs + [f'cpu={again}'])
  assert _row(rows, 'mnist_low', 'coreset', 'cpu')['verdict'] == 'agrees'
  assert _row(rows, 'mnist_low', 'coreset')['verdict'] == 'disagrees'
  assert verdict.split_label(f'cpu={again}') == ('cpu', again)
  assert verdict.split_label(again) == ('', again)
  with pytest.raises(FileNotFoundError, match='no such workdir'):
    verdict.verdict_rows([str(tmp_path / 'missing')])


def test_files_and_marked_sections(runs, tmp_path):
  v = verdict.write_verdict(runs, tmp_path / 'out')
  md = (tmp_path / 'out' / 'verdict.md').read_text()
  assert md == v['markdown']
  assert "**inconclusive** when jal's interval contains 0" in md
  assert (
      '| Table 3.2 | MNIST, low query size | ensembles | +4.584 pp | +3.000 [+0.516, '
      '+5.484] pp | 3 | 0.035 | **agrees** |  |'
  ) in md
  assert (
      '| Table 4.1 | CIFAR-100 vanilla, low query size | coreset | -0.309 pp | – | 0 | – | '
      '**not run here** | CIFAR-100 data not available here |'
  ) in md
  assert '**Beyond the study.**' in md
  assert '| mnist_imbalance_digit3 | Table 4.2, vanilla CIFAR-10 (1:19 imbalance) | ' in md
  with open(tmp_path / 'out' / 'verdict.csv', newline='') as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(v['rows']) == 2 * len(study.SETTINGS) + 2
  ens = [r for r in table if (r['setting'], r['strategy']) == ('mnist_low', 'ensembles')][0]
  assert float(ens['jal_lo']) == pytest.approx(3 - HALF) and ens['verdict'] == 'agrees'
  assert ens['imbalanced'] == 'no' and ens['query_size'] == '10'

  readme = tmp_path / 'README.md'
  readme.write_text(f'# x\n\n{verdict.START}\nold table\n{verdict.END}\n\nrest\n')
  verdict.update_marked(str(readme), md)
  assert readme.read_text() == f'# x\n\n{verdict.START}\n{md}{verdict.END}\n\nrest\n'
  verdict.update_marked(str(readme), md)  # idempotent
  assert readme.read_text() == f'# x\n\n{verdict.START}\n{md}{verdict.END}\n\nrest\n'
  (tmp_path / 'plain.md').write_text('no markers\n')
  with pytest.raises(ValueError, match='no <!-- verdict:start -->'):
    verdict.update_marked(str(tmp_path / 'plain.md'), md)


def test_cli(runs, tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text(f'{verdict.START}\n{verdict.END}\n')
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.report',
          '--verdict',
          *[f'--workdir={w}' for w in runs],
          f'--out={tmp_path / "v"}',
          f'--verdict_into={readme}',
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == f'Verdict: {tmp_path / "v" / "verdict.md"}'
  assert (tmp_path / 'v' / 'verdict.md').read_text() in readme.read_text()
  assert not (tmp_path / 'v' / 'report.md').exists()


def test_advise_cites_the_verdict_rows_of_its_regime(runs, tmp_path):
  results = tmp_path / 'results'
  verdict.write_verdict(runs, results / 'verdict')
  labels = tmp_path / 'labels.csv'
  labels.write_text('filename,label\n' + ''.join(f'{i}.png,{i % 10}\n' for i in range(30)))
  text, adv, sit = advise.advise(str(labels), query=10, results_dir=str(results))
  assert sit.regime() == advise.Regime(True, False, False)
  cited = {(v.row['setting'], v.row['strategy']) for v in adv.verdicts}
  # Low query, balanced, from scratch: MNIST low (1 per class), CIFAR-10 2-class low
  # (5), CIFAR-100 low (0.5) and high warmup (0.5, 5), the Gaussians (2.5).
  assert {s for s, _ in cited} == {
      'gaussian',
      'mnist_low',
      'cifar10_2class_low',
      'cifar100_low',
      'cifar100_high_warmup_low',
      'cifar100_high_warmup_high',
  }
  assert "The study's claims for this regime, tested here (the verdict table):" in text
  line = [
      v
      for v in adv.verdicts
      if v.row['setting'] == 'mnist_low' and v.row['strategy'] == 'ensembles'
  ][0]
  assert line.source == 'results/verdict/verdict.csv:5'
  assert line.text() == (
      'results/verdict/verdict.csv:5: Table 3.2, MNIST, low query size: ensembles vs random: '
      f'study +4.584 pp; jal +3.000 pp, 95% CI [{3 - HALF:+.3f}, {3 + HALF:+.3f}], 3 seeds, '
      'paired t-test p = 0.035 -> agrees'
  )
  assert line.text() in text
  assert (
      'Table 4.1, CIFAR-100 vanilla, low query size: coreset vs random: study -0.309 pp; '
      'jal: not run here (CIFAR-100 data not available here)'
  ) in text
  # AP rows to 4 decimals, as the verdict table prints them. With 3 seeds of mean
  # 0.11 and sd 0.01, t = 0.11 / (0.01 / sqrt(3)) and p = 1 - |t| / sqrt(2 + t^2).
  t = 0.11 / (0.01 / math.sqrt(3))
  assert f'{1 - t / math.sqrt(2 + t * t):.3f}' == '0.003'
  (bu,) = [
      v for v in evidence.load_verdicts(str(results)) if v.row['strategy'] == 'balanced_uncertainty'
  ]
  assert bu.text().endswith(
      'mnist_imbalance_digit3 (beyond the study; relates to Table 4.2, vanilla CIFAR-10 '
      '(1:19 imbalance)): balanced_uncertainty vs random: no study value; jal +0.1100 AP, '
      f'95% CI [{0.11 - 0.01 * HALF:+.4f}, {0.11 + 0.01 * HALF:+.4f}], 3 seeds, '
      'paired t-test p = 0.003 -> beats random'
  )
  small = evidence.Verdict('v.csv:2', dict(bu.row, p_value='0.0004'))
  assert small.text().endswith('3 seeds, paired t-test p < 0.001 -> beats random')
  # Without verdict.csv nothing is cited from it.
  (results / 'verdict' / 'verdict.csv').unlink()
  assert advise.advise(str(labels), query=10, results_dir=str(results))[1].verdicts == []


def test_the_readmes_hold_the_generated_table():
  """results/README.md and README.md show results/verdict/verdict.md verbatim
  (regenerated by the command in results/README.md, never edited)."""
  table = (REPO / 'results' / 'verdict' / 'verdict.md').read_text()
  for readme in ('results/README.md', 'README.md'):
    text = (REPO / readme).read_text()
    start, end = text.index(verdict.START) + len(verdict.START), text.index(verdict.END)
    assert text[start:end] == '\n' + table, readme
  assert '--out=results/verdict' in (REPO / 'results' / 'README.md').read_text()
