"""The active learning loop end to end: outputs, resume, validation."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import optax
import pytest

from jal import config_lib, experiment, metrics, strategies

VALID_STRATEGIES = ', '.join(sorted(strategies.STRATEGIES))  # as the error lists them
from tests.conftest import REPO, load_config


def smoke(**overrides):
  c = load_config('gaussian', 'smoke')
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


def read(workdir, name):
  return (pathlib.Path(workdir) / name).read_text()


def rows(workdir, name='metrics.jsonl'):
  return [json.loads(l) for l in read(workdir, name).splitlines()]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('full')
  table = experiment.train_and_evaluate(smoke(), str(workdir))
  return workdir, table


def test_smoke_run_writes_every_output(full_run):
  workdir, table = full_run
  c = smoke()
  metrics = rows(workdir)
  # 3 strategies x 2 seeds x (warmup + 2 selections)
  assert len(metrics) == 3 * 2 * 3
  for m in metrics:
    assert m['n_labeled'] == c.warmup_size + m['round'] * c.query_size
    assert 0.0 <= m['accuracy'] <= 1.0
  # The same warmup set, and so the same round-0 model, for every strategy.
  for seed in (0, 1):
    r0 = {m['strategy']: m['accuracy'] for m in metrics if m['seed'] == seed and m['round'] == 0}
    assert len(set(r0.values())) == 1
  sel = rows(workdir, 'selections.jsonl')
  for strategy in ('random', 'coreset', 'ensembles'):
    for seed in (0, 1):
      picked = [s for s in sel if s['strategy'] == strategy and s['seed'] == seed]
      assert [s['round'] for s in picked] == [0, 1, 2]
      assert [len(s['indices']) for s in picked] == [5, 5, 5]
      flat = [i for s in picked for i in s['indices']]
      assert len(set(flat)) == len(flat)
  warm = {tuple(s['indices']) for s in sel if s['round'] == 0 and s['seed'] == 0}
  assert len(warm) == 1
  assert json.loads(read(workdir, 'config.json'))['name'] == 'gaussian'
  # Every round's timings name the training plan: the MLP on a CPU, vmapped, step by step.
  timings = rows(workdir, 'timings.jsonl')
  assert len(timings) == len(metrics)
  assert all(t['plan'] == {'members': 'vmap', 'dispatch': 'step', 'devices': 1} for t in timings)
  # Each part's compile seconds are within its wall seconds (0 where this
  # process had compiled the programs already, e.g. in an earlier test).
  for t in timings:
    for part in ('train', 'eval', 'score', 'select'):
      assert 0.0 <= t[f'{part}_compile_seconds'] <= t[f'{part}_seconds'], (part, t)
  assert read(workdir, 'results.md') == table
  assert '| random |' in table and 'Selection 2 (n=15)' in table


def test_coreset_and_ensembles_selections_follow_their_rules(full_run):
  workdir, _ = full_run
  sel = rows(workdir, 'selections.jsonl')
  c = smoke()
  from jal import data  # pylint: disable=g-import-not-at-top

  ds = data.load_dataset(c.data, data_dir=None, seed=c.seed)

  # Coreset picks spread out: its queries lie farther from the labeled set
  # than random queries do, on average over seeds and rounds.
  def mean_dist(strategy):
    out = []
    for s in sel:
      if s['strategy'] != strategy or s['round'] == 0:
        continue
      before = [
          i
          for t in sel
          if t['strategy'] == strategy and t['seed'] == s['seed'] and t['round'] < s['round']
          for i in t['indices']
      ]
      d = np.linalg.norm(ds.x_train[s['indices']][:, None] - ds.x_train[before][None], axis=-1)
      out.append(d.min(axis=1).mean())
    return np.mean(out)

  assert mean_dist('coreset') > mean_dist('random')

  # Ensembles picks near the boundary x=0 compared with random.
  def mean_abs_x(strategy):
    return np.mean(
        [
            np.abs(ds.x_train[s['indices'], 0]).mean()
            for s in sel
            if s['strategy'] == strategy and s['round'] > 0
        ]
    )

  assert mean_abs_x('ensembles') < mean_abs_x('random')


def test_resume_in_process_equals_uninterrupted(full_run, tmp_path):
  workdir, table = full_run
  experiment.train_and_evaluate(smoke(), str(tmp_path), stop_after_round=1)
  partial = rows(tmp_path)
  assert max(m['round'] for m in partial) == 1
  resumed = experiment.train_and_evaluate(smoke(), str(tmp_path))
  assert read(tmp_path, 'metrics.jsonl') == read(workdir, 'metrics.jsonl')
  assert read(tmp_path, 'selections.jsonl') == read(workdir, 'selections.jsonl')
  assert resumed == table


def test_rerun_of_finished_run_does_no_work(full_run):
  workdir, table = full_run
  stamp = os.path.getmtime(pathlib.Path(workdir) / 'checkpoints' / 'random_seed0')
  before = read(workdir, 'metrics.jsonl')
  t0 = time.perf_counter()
  again = experiment.train_and_evaluate(smoke(), str(workdir))
  assert again == table and read(workdir, 'metrics.jsonl') == before
  assert os.path.getmtime(pathlib.Path(workdir) / 'checkpoints' / 'random_seed0') == stamp
  assert time.perf_counter() - t0 < 30


def test_kill_9_mid_run_then_resume_equals_uninterrupted(full_run, tmp_path):
  workdir, _ = full_run
  cmd = [
      sys.executable,
      '-m',
      'jal.main',
      f'--config={REPO}/configs/gaussian.py:smoke',
      f'--workdir={tmp_path}',
  ]
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  # Kill it as soon as the first coreset round is checkpointed: in the middle
  # of the run, after some runs finished and before others started.
  target = pathlib.Path(tmp_path) / 'checkpoints' / 'coreset_seed0' / '0'
  deadline = time.time() + 120
  while not target.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert target.exists(), 'the run ended before it could be killed mid-way'
  done = rows(tmp_path)
  assert 0 < len(done) < 18
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert read(tmp_path, 'metrics.jsonl') == read(workdir, 'metrics.jsonl')
  assert read(tmp_path, 'selections.jsonl') == read(workdir, 'selections.jsonl')
  assert [t['plan'] for t in rows(tmp_path, 'timings.jsonl')] == [
      {'members': 'vmap', 'dispatch': 'step', 'devices': 1}
  ] * 18
  assert '| ensembles |' in out.stdout


@pytest.mark.parametrize(
    'overrides,message',
    [
        (
            {'strategies': ('random', 'bogus')},
            f"unknown strategy 'bogus'; valid: {VALID_STRATEGIES}",
        ),
        ({'data.name': 'imagenet'}, "unknown dataset 'imagenet'; valid: "),
        ({'model.name': 'vgg'}, "unknown model 'vgg'; valid: lenet, mlp, resnet18"),
        ({'query_size': 0}, 'config.query_size must be positive, got 0'),
        ({'num_rounds': -1}, 'config.num_rounds must be positive'),
        ({'train.members': 0}, 'config.train.members must be positive'),
        ({'train.learning_rate': -0.1}, 'config.train.learning_rate must be positive'),
        ({'train.members': 1}, "strategy 'ensembles' needs train.members >= 2"),
        ({'train.optimizer': 'lion'}, "unknown train.optimizer 'lion'; valid: adam, adamw, sgd"),
        (
            {'train.members_plan': 'map'},
            "unknown train.members_plan 'map'; valid: auto, vmap, in_turn",
        ),
        ({'train.dispatch': 'scan'}, "unknown train.dispatch 'scan'; valid: auto, program, step"),
        ({'seeds': (1, 1)}, 'config.seeds must be a non-empty list of distinct ints'),
        ({'warmup_size': 501}, 'config.warmup_size=501 is larger than the pool (500)'),
        (
            {'query_size': 300},
            'warmup_size + num_rounds * query_size = 605 is larger than the pool (500)',
        ),
        (
            {'train.learning_rate': float('inf')},
            'config.train.learning_rate must be finite, got inf',
        ),
        (
            {'strategy_options.beta': float('nan')},
            'config.strategy_options.beta must be finite, got nan',
        ),
        ({'data.std': float('-inf')}, 'config.data.std must be finite, got -inf'),
    ],
)
def test_bad_config_fails_before_any_compute(overrides, message, tmp_path):
  with pytest.raises(ValueError, match=None) as e:
    experiment.train_and_evaluate(smoke(**overrides), str(tmp_path / 'w'))
  assert message in str(e.value) and '\n' not in str(e.value)
  assert not (tmp_path / 'w').exists()  # nothing was written


def test_diverging_training_stops_with_a_clear_error(tmp_path):
  with pytest.raises(FloatingPointError) as e:
    experiment.train_and_evaluate(smoke(**{'train.learning_rate': 1e30}), str(tmp_path))
  assert str(e.value) == (
      'training diverged: random seed 0 round 0: the parameters are not '
      'finite; lower config.train.learning_rate (1e+30)'
  )


def test_exploding_logits_with_finite_parameters_stop_the_run(tmp_path):
  # Adam at 1e6 leaves the MLP's parameters finite and its 5 labels separated
  # (loss 0), but its logits reach ~1e23.
  with pytest.raises(experiment.Diverged) as e:
    experiment.train_and_evaluate(smoke(**{'train.learning_rate': 1e6}), str(tmp_path))
  m = re.fullmatch(
      r'training diverged: random seed 0 round 0: the labeled-set logits reach '
      r'(\S+) \(limit 1e\+06\); lower config.train.learning_rate \(1000000.0\)',
      str(e.value),
  )
  assert m, str(e.value)
  assert float(m.group(1)) > metrics.LOGIT_LIMIT
  assert not (tmp_path / 'metrics.jsonl').exists()  # no round was recorded


def test_divergence_criterion():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 40, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 40)
  assert metrics.divergence(logits, labels, 'labeled') is None
  np.testing.assert_allclose(  # optax's cross-entropy, per member
      metrics.member_losses(logits, labels),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels[None]).mean(-1),
      rtol=1e-5,
  )
  # Overconfident and wrong: a high loss with logits below their limit.
  wrong = 300.0 * np.eye(10, dtype=np.float32)[(labels + 1) % 10][None].repeat(3, 0)
  assert metrics.divergence(wrong, labels, 'labeled') == (
      'the labeled-set loss is 3e+02 (member 0; chance is 2.30, limit 100x chance)'
  )
  assert metrics.divergence(wrong) is None  # on the test set only the logits count
  assert metrics.divergence(logits * 1e7) == 'the test-set logits reach 3.9e+07 (limit 1e+06)'
  logits[1, 2, 3] = np.nan
  assert metrics.divergence(logits, labels) == 'the test-set logits are not finite'


def test_minority_fraction_queried_is_the_share_of_the_positive_class():
  labels = np.array([0, 1, 1, 0, 1, 0])
  assert metrics.minority_fraction_queried(labels, [1, 3, 4, 5], 1) == 0.5
  assert metrics.minority_fraction_queried(labels, np.array([0, 3]), 1) == 0.0
  assert metrics.minority_fraction_queried(labels, [2], 1) == 1.0


def test_mnist_diverging_at_a_huge_learning_rate_names_the_run_and_its_loss(data_dir, tmp_path):
  c = load_config('mnist', 'low,smoke')
  c.data_dir = data_dir
  c.strategies = ('ensembles',)
  c.train.learning_rate = 1e6
  with pytest.raises(experiment.Diverged) as e:
    experiment.train_and_evaluate(c, str(tmp_path))
  m = re.fullmatch(
      r'training diverged: ensembles seed 0 round 0: the labeled-set loss is (\S+) '
      r'\(member \d; chance is 2.30, limit 100x chance\); lower '
      r'config.train.learning_rate \(1000000.0\)',
      str(e.value),
  )
  assert m, str(e.value)
  assert float(m.group(1)) > metrics.LOSS_LIMIT * np.log(10)


def test_comma_separated_strategies_are_split():
  settings = config_lib.parse(smoke(strategies=('random,coreset',), seeds=(2, 0)))
  assert settings == config_lib.Settings(
      strategies=('random', 'coreset'), seeds=(2, 0), embedding_source='model'
  )
  assert settings.runs == (('random', 2), ('random', 0), ('coreset', 2), ('coreset', 0))


def test_workdir_of_another_experiment_is_refused(full_run):
  workdir, _ = full_run
  with pytest.raises(
      ValueError, match='holds a different experiment .*query_size: 5 there vs 4 now'
  ):
    experiment.train_and_evaluate(smoke(query_size=4), str(workdir))
  # data_dir does not change results, so it may differ.
  experiment.train_and_evaluate(smoke(data_dir='/elsewhere'), str(workdir))


def test_workdir_from_before_a_new_field_is_the_same_experiment(tmp_path):
  # A config.json written before `model.dropout` and the strategy options
  # existed: absent fields count as their (behaviour-preserving) defaults.
  config = smoke()
  stored = json.loads(config.to_json_best_effort())
  del stored['model']['dropout']
  # Only the options the smoke config shrinks (see config_lib.shrink_strategy_options).
  defaults = config_lib.base_config().strategy_options
  stored['strategy_options'] = {
      k: v for k, v in stored['strategy_options'].items() if v != defaults[k]
  }
  assert 'beta' not in stored['strategy_options'] and 'mc_samples' in stored['strategy_options']
  # Before the training plan's two fields: one `train.loop`, here 'auto'.
  del stored['train']['members_plan'], stored['train']['dispatch']
  stored['train']['loop'] = 'auto'
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  experiment.prepare_workdir(str(tmp_path), config)
  with pytest.raises(ValueError, match=r'model.dropout: 0.0 there vs 0.5 now'):
    experiment.prepare_workdir(str(tmp_path), smoke(**{'model.dropout': 0.5}))
  # Each old loop is the plan it ran.
  stored['train']['loop'] = 'member_step'
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  experiment.prepare_workdir(
      str(tmp_path), smoke(**{'train.members_plan': 'in_turn', 'train.dispatch': 'step'})
  )
  with pytest.raises(ValueError, match=r"train.dispatch: 'step' there vs 'auto' now"):
    experiment.prepare_workdir(str(tmp_path), smoke(**{'train.members_plan': 'in_turn'}))


def test_cli_reports_errors_in_one_line(tmp_path):
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.main',
          f'--config={REPO}/configs/gaussian.py:smoke',
          f'--workdir={tmp_path}',
          '--config.strategies=random,nope',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: unknown strategy 'nope'; valid: {VALID_STRATEGIES}"
  )
  typo = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.main',
          f'--config={REPO}/configs/gaussian.py:smoke',
          f'--workdir={tmp_path}',
          '--config.query_sise=3',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert typo.returncode != 0 and 'query_size' in typo.stderr


def test_mnist_smoke_on_real_data(data_dir, tmp_path):
  c = load_config('mnist', 'low,smoke')
  c.data_dir = data_dir
  table = experiment.train_and_evaluate(c, str(tmp_path))
  metrics = rows(tmp_path)
  assert len(metrics) == 3 * 1 * 3
  assert [m['n_labeled'] for m in metrics if m['strategy'] == 'random'] == [10, 20, 30]
  # LeNet on 30 real MNIST labels is far above chance (10%).
  assert max(m['accuracy'] for m in metrics) > 0.3
  assert 'mnist_low_smoke' in table
