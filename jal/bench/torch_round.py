"""The mnist_round case of `jal.bench.torch_cases`: one MNIST round as a whole
process on each side, `python -m jal.main` against `python -m
jal.bench.torch_cases round` (whose body is `round_main`).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Callable

import torch

from jal.bench import torch_models

if TYPE_CHECKING:
  from jal.bench.torch_cases import Shapes


def round_main(
    data_dir: str | None,
    config_arg: str,
    seed: int,
    memory_format: str,
    threads: int | None,
    out: str | None,
    launched_at: float | None,
) -> dict:
  """`python -m jal.bench.torch_cases round`: loads MNIST (jal.data), runs
  `torch_models.run_round` once with 'ensembles' and num_rounds=1, writes the summary
  to `out` (if set), returns it."""
  t_start = time.time()
  from jal import data as data_lib  # pylint: disable=g-import-not-at-top

  threads = torch_models.set_threads(threads)
  config = torch_models.load_mnist_config(config_arg)
  config.num_rounds = 1
  data_dir = data_lib.resolve_data_dir(data_dir or config.get('data_dir'))
  t0 = time.perf_counter()
  dataset = data_lib.load_dataset(config.data, data_dir=data_dir, seed=config.seed)
  load_s = time.perf_counter() - t0
  summary = torch_models.run_round(config, dataset, memory_format, seed)
  summary.update(
      config=f'mnist:{config_arg}',
      strategy='ensembles',
      seed=seed,
      num_rounds=1,
      memory_format=memory_format,
      threads=threads,
      torch_version=torch.__version__,
      load_seconds=load_s,
      pool=int(dataset.x_train.shape[0]),
      test=int(dataset.x_test.shape[0]),
      members=int(config.train.members),
  )
  if launched_at is not None:
    # From the parent's launch to here: interpreter start, imports (torch, and jax through
    # the jal package), config.
    summary['startup_seconds'] = t_start - launched_at
    summary['process_seconds'] = time.time() - launched_at
  if out:
    pathlib.Path(out).write_text(json.dumps(summary, sort_keys=True, indent=1) + '\n')
  return summary


def resolve_data_dir(data_dir: str | None) -> str | None:
  return data_dir or os.environ.get('JAL_DATA_DIR') or None


def _run(cmd: list[str], what: str) -> float:
  """Runs `cmd` in the repository; returns its wall seconds, raises with its stderr's tail."""
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=torch_models.REPO, capture_output=True, text=True, check=False)
  if proc.returncode:
    tail = '\n'.join(proc.stderr.strip().splitlines()[-5:])
    raise RuntimeError(f'{what} exited {proc.returncode}: {" ".join(cmd)}\n{tail}')
  return time.perf_counter() - t0


def torch_round_fn(s: Shapes, memory_format: str) -> Callable[[], dict]:
  """One call: `python -m jal.bench.torch_cases round` as a process; its summary's figures."""

  def call():
    with tempfile.TemporaryDirectory(prefix='jal_torch_round_') as tmp:
      out = os.path.join(tmp, 'summary.json')
      data_dir = resolve_data_dir(s.data_dir)
      _run(
          [
              sys.executable,
              '-m',
              'jal.bench.torch_cases',
              'round',
              f'--config={s.round_config}',
              *([f'--data_dir={data_dir}'] if data_dir else []),
              f'--seed={s.seed}',
              f'--memory_format={memory_format}',
              f'--threads={torch.get_num_threads()}',
              f'--out={out}',
              f'--launched_at={time.time()!r}',
          ],
          'the PyTorch round',
      )
      summary = json.loads(pathlib.Path(out).read_text())
    return {
        k: summary[k]
        for k in (
            *torch_models.PHASES,
            'rounds_seconds',
            'accuracy',
            'load_seconds',
            'startup_seconds',
        )
    }

  return call


def jal_round_fn(s: Shapes) -> Callable[[], dict]:
  """One call: `python -m jal.main` (configs/mnist.py:<round_config>, one seed, ensembles,
  num_rounds=1) in a fresh workdir, as a process; its timings.jsonl summed."""

  def call():
    with tempfile.TemporaryDirectory(prefix='jal_round_') as tmp:
      workdir = os.path.join(tmp, 'work')
      data_dir = resolve_data_dir(s.data_dir)
      _run(
          [
              sys.executable,
              '-m',
              'jal.main',
              f'--config={torch_models.MNIST_CONFIG}:{s.round_config}',
              f'--config.seeds={s.seed}',
              '--config.strategies=ensembles',
              '--config.num_rounds=1',
              *([f'--config.data_dir={data_dir}'] if data_dir else []),
              f'--workdir={workdir}',
          ],
          'the jal round',
      )
      rounds = [
          json.loads(line)
          for line in pathlib.Path(workdir, 'timings.jsonl').read_text().splitlines()
      ]
      metrics = [
          json.loads(line)
          for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()
      ]
    return {**torch_models.phase_sums(rounds), 'accuracy': metrics[-1]['accuracy']}

  return call
