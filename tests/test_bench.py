"""jal.bench.cases at its small size: every case yields sane records (no speed
targets), and `python -m jal.bench` prints them as JSON lines."""

import json
import math
import re
import subprocess
import sys

import pytest

from jal.bench import cases
from jal.bench import core
from tests.conftest import REPO

ENV_KEYS = ('case', 'device', 'backend', 'jax_version', 'size', 'compute_dtype')


@pytest.fixture(scope='module')
def records():
  # ResNet-18 training is left to the full run: its three compilations (N=1,
  # N=2, in turn) take most of a minute on a CPU. LeNet runs the same code.
  return cases.run(cases.CASES, size='small', train_models=('lenet',), repeats=1)


def of(records, case, **match):
  return [r for r in records if r['case'] == case and all(r.get(k) == v for k, v in match.items())]


def positive(rec, *keys):
  for k in keys:
    assert isinstance(rec[k], (int, float)) and math.isfinite(rec[k]) and rec[k] > 0, (k, rec)


def test_every_record_is_json_with_environment(records):
  assert {r['case'] for r in records} == set(cases.CASES)
  for r in records:
    json.dumps(r, allow_nan=False)
    for k in ENV_KEYS:
      assert r[k], (k, r)
    assert r['size'] == 'small'


IN_TURN_STEP = {'members': 'in_turn', 'dispatch': 'step', 'devices': 1}


def test_ensemble_train(records):
  vmap = of(records, 'ensemble_train', model='lenet', mode='vmap_program')
  assert sorted(r['members'] for r in vmap) == [1, 2]
  (in_turn,) = of(records, 'ensemble_train', model='lenet', mode='in_turn_program')
  assert in_turn['members'] == 2
  for r in vmap + [in_turn]:
    positive(r, 'images_per_second', 'seconds', 'compile_seconds', 'steps_per_second')
    assert r['repeats'] >= 1 and 'median' in r['timing']
    assert r['compile_timing'] == 'jit lower().compile()'
  assert vmap[0]['plan'] == {'members': 'vmap', 'dispatch': 'program', 'devices': 1}
  assert in_turn['plan'] == {'members': 'in_turn', 'dispatch': 'program', 'devices': 1}
  (summary,) = of(records, 'ensemble_train', model='lenet', mode='summary')
  assert (summary['members_numerator'], summary['members_denominator']) == (2, 1)
  positive(summary, 'aggregate_images_per_second_ratio', 'vmap_over_in_turn_ratio')
  # On a CPU jal's loop trains LeNet members in turn, step by step: timed too.
  (auto,) = of(records, 'ensemble_train', model='lenet', mode='auto')
  assert auto['plan'] == summary['auto_plan'] == IN_TURN_STEP
  assert auto['members'] == 2
  positive(auto, 'images_per_second')
  assert summary['auto_over_in_turn_ratio'] == pytest.approx(
      auto['images_per_second'] / in_turn['images_per_second']
  )
  assert summary['members_mode'] == 'vmap_program'
  assert summary['aggregate_images_per_second_ratio'] == pytest.approx(
      vmap[1]['images_per_second'] / vmap[0]['images_per_second']
  )


def test_ensemble_train_auto_only():
  # What a CPU run of ResNet-18 asks for: only the loop's own plan (one
  # dispatch per step), for every N, and its N-scaling.
  recs = cases.run(
      ('ensemble_train',), size='small', train_models=('lenet',), train_modes=('auto',), repeats=1
  )
  auto = of(recs, 'ensemble_train', mode='auto')
  assert [(r['members'], r['plan']) for r in auto] == [(1, IN_TURN_STEP), (2, IN_TURN_STEP)]
  (summary,) = of(recs, 'ensemble_train', mode='summary')
  assert (
      summary['members_mode'],
      summary['members_numerator'],
      summary['members_denominator'],
  ) == ('auto', 2, 1)
  assert summary['aggregate_images_per_second_ratio'] == pytest.approx(
      auto[1]['images_per_second'] / auto[0]['images_per_second']
  )
  assert 'vmap_over_in_turn_ratio' not in summary
  assert len(recs) == 3
  # N=2 reuses N=1's compiled step: timing noise, never a negative compile.
  assert all(r['compile_seconds'] >= 0 for r in auto)


@pytest.mark.parametrize(
    'overrides, message',
    [
        (
            dict(train_modes=('auto', 'eager')),
            "unknown ['eager']; valid: vmap_program, " 'in_turn_program, sharded, auto',
        ),
        (dict(train_models=('vgg',)), "unknown ['vgg']; valid: resnet18, lenet"),
    ],
)
def test_unknown_plan_or_model_is_refused_before_compute(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    core.params_for('small', **overrides)


def test_k_center(records):
  (r,) = of(records, 'k_center')
  assert (r['n'], r['d'], r['labeled'], r['k']) == (2_000, 64, 100, 50)
  positive(
      r,
      'seconds',
      'compile_seconds',
      'bandwidth_bytes_per_second',
      'bound_seconds',
      'seconds_over_bandwidth_bound',
  )
  # Beating the bandwidth bound 20x would mean a broken measurement.
  assert r['seconds_over_bandwidth_bound'] > 0.05
  assert r['bound_seconds'] == pytest.approx(
      r['n'] * r['d'] * 4 * r['k'] / r['bandwidth_bytes_per_second']
  )


def test_score_pool(records):
  recs = of(records, 'score_pool')
  assert sorted(r['members'] for r in recs) == [1, 2]
  for r in recs:
    assert r['pool'] == 256
    positive(r, 'images_per_second', 'member_images_per_second', 'seconds', 'first_call_seconds')
    assert r['compile_seconds'] >= 0
    assert r['members_in_turn']  # as the loop's plan runs ResNet-18 on a CPU


def test_round(records):
  recs = of(records, 'round')
  assert [r['strategy'] for r in recs] == list(cases.ROUND_STRATEGIES)
  for r in recs:
    assert (r['pool'], r['test'], r['n_labeled']) == (300, 100, 100)
    assert r['plan'] == IN_TURN_STEP  # the config's ResNet-18 on a CPU
    positive(
        r,
        'train_seconds',
        'eval_seconds',
        'score_seconds',
        'select_seconds',
        'round_seconds',
        'round0_seconds',
        'round0_train_seconds',
    )
    assert r['round_seconds'] == pytest.approx(
        r['train_seconds'] + r['eval_seconds'] + r['score_seconds'] + r['select_seconds']
    )


def test_imbalance_counts_match_the_real_task():
  full = cases.load_config('imbalance')
  assert cases.imbalance_counts(full.data) == {'train': (40_000, 2_105), 'test': (8_000, 2_000)}
  smoke = cases.load_config('imbalance', 'smoke')
  counts = cases.imbalance_counts(smoke.data)
  assert sum(counts['train']) == 300 and sum(counts['test']) == 100


def test_cli_prints_only_json_lines():
  proc = subprocess.run(
      [sys.executable, '-m', 'jal.bench', '--cases=k_center', '--size=small'],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  )
  lines = proc.stdout.splitlines()
  assert lines
  for line in lines:
    rec = json.loads(line)
    assert rec['case'] == 'k_center' and rec['seconds'] > 0


def _vs(case, ratio, jal, torch, fmt, pairs, load):
  return {
      'case': case,
      'vs': 'torch',
      'ratio': ratio,
      'jal_seconds': jal,
      'torch_seconds': torch,
      'torch_best_format': fmt,
      'pair_ratio_min': pairs[0],
      'pair_ratio_max': pairs[1],
      'loadavg_1min_before': load,
      'cpus': 2,
  }


def test_versus_table_gives_each_case_its_spread_over_runs(tmp_path):
  runs = [
      _vs('resnet18_inference', 1.19, 1.08, 0.913, 'channels_last', (1.0, 1.31), 0.4),
      _vs('mnist_round', 0.66, 30.0, 45.0, 'contiguous', (0.61, 0.7), 0.5),
      {'case': 'mnist_round', 'vs': 'torch', 'skipped': 'no MNIST'},
      {'case': 'resnet18_inference', 'vs': 'torch', 'mode': 'profile'},
      _vs('resnet18_inference', 0.83, 1.08, 1.3, 'channels_last', (0.78, 0.99), 0.79),
      _vs('resnet18_inference', 0.86, 1.1, 1.28, 'contiguous', (0.63, 1.29), 1.48),
  ]
  assert core.versus_table(runs).splitlines()[2:] == [
      '| resnet18_inference | 3 | 0.86 [0.83-1.19] | 1.08 [1.08-1.1] | 1.28 [0.913-1.3] | '
      'channels_last 2, contiguous 1 | 0.63-1.31 | 1.48 of 2 CPUs |',
      '| mnist_round | 1 | 0.66 | 30 | 45 | contiguous 1 | 0.61-0.70 | 0.50 of 2 CPUs |',
  ]
  path = tmp_path / 'vs.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in runs))
  proc = subprocess.run(
      [sys.executable, '-m', 'jal.bench', f'--vs_summary={path}'],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  )
  assert proc.stdout == core.versus_table(runs)
