"""Every registered strategy runs through the loop: gaussian and MNIST smokes.

One run per setting holds every strategy (a run shares its compiled programs
across strategies, which keeps this affordable on CI's 2 cores). The model has
dropout so that the MC strategies qualify; every strategy then sees the same
warmup model, so their round-0 metrics must agree exactly.
"""

import json
import pathlib

import numpy as np

from jal import experiment, strategies
from tests.conftest import load_config

ALL = sorted(strategies.STRATEGIES)


def _rows(workdir, name):
  return [json.loads(l) for l in (pathlib.Path(workdir) / name).read_text().splitlines()]


def _check_run(workdir, config, n_pool):
  metrics = _rows(workdir, 'metrics.jsonl')
  selections = _rows(workdir, 'selections.jsonl')
  assert sorted({m['strategy'] for m in metrics}) == ALL
  for name in ALL:
    mine = [m for m in metrics if m['strategy'] == name]
    assert [m['n_labeled'] for m in mine] == [
        config.warmup_size + r * config.query_size for r in range(config.num_rounds + 1)
    ], name
    picked = [i for s in selections if s['strategy'] == name for i in s['indices']]
    assert (
        len(picked)
        == len(set(picked))
        == config.warmup_size + (config.num_rounds * config.query_size)
    ), name
    assert 0 <= min(picked) and max(picked) < n_pool
  # Common random numbers: the same warmup set and warmup ensemble for all.
  round0 = {
      json.dumps({k: v for k, v in m.items() if k != 'strategy'}, sort_keys=True)
      for m in metrics
      if m['round'] == 0
  }
  assert len(round0) == 1
  warm = {tuple(s['indices']) for s in selections if s['round'] == 0}
  assert len(warm) == 1
  # Round 1 differs between strategies: they do not all pick the same points.
  firsts = {tuple(sorted(s['indices'])) for s in selections if s['round'] == 1}
  assert len(firsts) > len(ALL) // 2
  return metrics


def _all_strategies(config):
  config.strategies = tuple(ALL)
  config.seeds = (0,)
  config.num_rounds = 1
  config.model.dropout = 0.1
  return config


def test_every_strategy_on_gaussian_smoke(tmp_path):
  config = _all_strategies(load_config('gaussian', 'smoke'))
  experiment.train_and_evaluate(config, str(tmp_path))
  metrics = _check_run(tmp_path, config, config.data.num_train)
  # 10 labels of two blobs 2 std apart: every strategy's model is far above chance.
  assert min(m['accuracy'] for m in metrics) > 0.6


def test_every_strategy_on_mnist_smoke(data_dir, tmp_path):
  config = _all_strategies(load_config('mnist', 'low,smoke'))
  config.data_dir = data_dir
  experiment.train_and_evaluate(config, str(tmp_path))
  metrics = _check_run(tmp_path, config, config.data.max_train)
  # 20 real MNIST labels and a 10-step smoke model: above chance (10%).
  assert np.median([m['accuracy'] for m in metrics if m['round'] == 1]) > 0.15
