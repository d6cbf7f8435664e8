"""What every jal.bench case shares: the run's shapes and settings (`Params`),
the one place that times calls, profile records, the fields every record
carries, and the random inputs the cases time on."""

import collections
import dataclasses
import pathlib
import statistics
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jal import member_conv
from jal import models
from jal.bench import profiling

SIZES = ('small', 'full')
TRAIN_MODELS = ('resnet18', 'lenet')
# The training plans ensemble_train times: see `cases.mode_plan`.
TRAIN_MODES = ('vmap_program', 'in_turn_program', 'sharded', 'auto')


@dataclasses.dataclass(frozen=True)
class Params:
  """Shapes and settings of one benchmark run (see `params_for`)."""

  size: str
  members: tuple[int, ...] = (1, 5)
  steps: int = 64
  resnet_width: int = 64
  resnet_batch: int = 128
  lenet_batch: int = 64
  train_models: tuple[str, ...] = TRAIN_MODELS
  kc_n: int = 50_000
  kc_d: int = 512
  kc_labeled: int = 1_000
  kc_k: int = 2_500
  bandwidth_bytes: int = 4_000_000_000
  pool: int = 50_000
  score_chunk: int = 1_000
  config_arg: str | None = None
  dtype: str = 'auto'
  repeats: int = 3
  warmup: int = 1
  seed: int = 0
  devices: int = 1  # >1: also split members (ensemble_train) and the pool (k_center)
  profile_dir: str | None = None  # set: also trace one call of each timed program
  member_conv: str = 'grouped'  # how vmapped members' convolutions run (jal.member_conv)
  train_modes: tuple[str, ...] = TRAIN_MODES  # ensemble_train plans to time


# Small: seconds on a CPU. Two members, not five: XLA:CPU runs vmapped
# (grouped) convolutions slowly, and the point here is that every path runs.
_SMALL = dict(
    members=(1, 2),
    steps=4,
    resnet_width=8,
    resnet_batch=8,
    lenet_batch=16,
    kc_n=2_000,
    kc_d=64,
    kc_labeled=100,
    kc_k=50,
    bandwidth_bytes=100_000_000,
    pool=256,
    score_chunk=128,
    config_arg='smoke',
    repeats=2,
)


def params_for(size: str, **overrides) -> Params:
  """The shapes of `size` ('small' or 'full'), with non-None overrides applied."""
  if size not in SIZES:
    raise ValueError(f"unknown size '{size}'; valid: {', '.join(SIZES)}")
  base = dict(_SMALL) if size == 'small' else {}
  base.update({k: v for k, v in overrides.items() if v is not None})
  for k in ('members', 'train_models', 'train_modes'):
    if k in base:
      base[k] = tuple(base[k])
  for k, valid in (('train_models', TRAIN_MODELS), ('train_modes', TRAIN_MODES)):
    unknown = [v for v in base.get(k, ()) if v not in valid]
    if unknown or (k in base and not base[k]):
      raise ValueError(f"{k}={','.join(base[k])}: unknown {unknown}; valid: {', '.join(valid)}")
  member_conv.check(base.get('member_conv', 'grouped'))
  devices = base.get('devices', 1)
  if not 1 <= devices <= jax.device_count():
    raise ValueError(f'devices={devices}: between 1 and the {jax.device_count()} visible')
  return Params(size=size, **base)


# --------------------------------------------------------------------------
# Measurement: the one place that times things.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall times of repeated calls of a function."""

  seconds: tuple[float, ...]
  first_call_seconds: float
  warmup: int

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  def fields(self, prefix: str = '') -> dict[str, Any]:
    """The timing method and its figures, for a record."""
    return {
        f'{prefix}seconds': self.median,
        f'{prefix}seconds_min': min(self.seconds),
        f'{prefix}seconds_max': max(self.seconds),
        f'{prefix}repeats': len(self.seconds),
        f'{prefix}timing': (
            f'median of {len(self.seconds)} calls after {self.warmup} '
            'warm-up call(s), each ended by jax.block_until_ready'
        ),
    }


def time_once(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(fn(), wall seconds of the call including `jax.block_until_ready`)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
  """Times `repeats` calls of `fn` after `warmup` untimed ones (at least one)."""
  warmup = max(1, warmup)
  first = [time_once(fn)[1] for _ in range(warmup)][0]
  return Timing(tuple(time_once(fn)[1] for _ in range(max(1, repeats))), first, warmup)


def aot_compile(jitted, *args, **kwargs):
  """(compiled program, seconds to trace, lower and compile it).

  The compiled program takes the dynamic arguments only (static ones were
  fixed by `lower`).
  """
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return compiled, time.perf_counter() - t0


def profile_records(
    p: Params, label: str, fn: Callable[[], Any], compiled=None, **fields
) -> list[dict]:
  """[] without `p.profile_dir`; else one 'profile' record of a traced call of
  `fn` (already warm), its ops classified by `compiled`'s optimised HLO.

  The trace is kept under `<profile_dir>/<label>` for TensorBoard/Perfetto.
  """
  if not p.profile_dir:
    return []
  texts = [compiled.as_text()] if compiled is not None else []
  rec = profiling.profile(fn, str(pathlib.Path(p.profile_dir) / label), texts)
  logging.info(
      'profile %s: %s', label, {k: round(v, 3) for k, v in rec['by_category_fraction'].items()}
  )
  return [
      {
          **fields,
          'mode': 'profile',
          'label': label,
          **rec,
          'note': 'one call traced by jax.profiler after the timed calls; op seconds '
          'summed per HLO op (on a CPU over threads); categories from the '
          'optimised HLO' + ('' if texts else ' not available here: from op names'),
      }
  ]


# --------------------------------------------------------------------------
# Record fields and random inputs.
# --------------------------------------------------------------------------


def environment(p: Params) -> dict[str, Any]:
  """Fields every record carries."""
  dev = jax.devices()[0]
  return {
      'device': dev.device_kind,
      'device_count': jax.device_count(),
      'backend': jax.default_backend(),
      'jax_version': jax.__version__,
      'size': p.size,
      'compute_dtype': jnp.dtype(models.compute_dtype(p.dtype)).name,
  }


def random_images(seed: int, n: int, shape) -> np.ndarray:
  """u8[n, *shape] uniform noise."""
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def random_labels(seed: int, n: int, num_classes: int) -> np.ndarray:
  """i32[n] uniform labels in [0, num_classes), from seed + 1."""
  return np.random.default_rng(seed + 1).integers(0, num_classes, (n,), dtype=np.int32)


def member_keys(seed: int, members: int):
  """u32[members, 2]: one PRNG key per member, split from `seed`."""
  return jax.random.split(jax.random.PRNGKey(seed), members)


# --------------------------------------------------------------------------
# Several `--vs=torch` runs, one table.
# --------------------------------------------------------------------------


def _median_range(values: list[float], fmt: str) -> str:
  """'median [min-max]' of `values`, or the one value."""
  if len(values) == 1:
    return format(values[0], fmt)
  return (
      f'{format(statistics.median(values), fmt)} '
      f'[{format(min(values), fmt)}-{format(max(values), fmt)}]'
  )


def versus_table(records: list[dict]) -> str:
  """A Markdown table of `--vs=torch` records from one or more runs, a row per case.

  Per case, over the runs (one record each): the ratio (jal median / best
  PyTorch format's median, < 1: jal faster) as median [min-max] over runs; jal's
  and PyTorch's median seconds likewise; the PyTorch format that won in each
  run; the range of the alternated pairs' ratios over all runs; and the
  highest 1-minute load average seen before a case (the machine has `cpus`).
  Records without a `ratio` (a skipped case, `profile` records) are left out.

  Args:
    records: the JSON objects `python -m jal.bench --vs=torch` printed, in order.

  Returns:
    The table, cases in order of first appearance.
  """
  by_case: dict[str, list[dict]] = {}
  for rec in records:
    if rec.get('vs') == 'torch' and 'ratio' in rec:
      by_case.setdefault(rec['case'], []).append(rec)
  lines = [
      '| case | runs | jal / PyTorch | jal s | PyTorch s (best format) | formats won | '
      'pair ratios | max load before |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for case, recs in by_case.items():
    won = collections.Counter(r['torch_best_format'] for r in recs)
    lines.append(
        f'| {case} | {len(recs)} | {_median_range([r["ratio"] for r in recs], ".2f")} | '
        f'{_median_range([r["jal_seconds"] for r in recs], ".3g")} | '
        f'{_median_range([r["torch_seconds"] for r in recs], ".3g")} | '
        + ', '.join(f'{fmt} {n}' for fmt, n in sorted(won.items()))
        + f' | {min(r["pair_ratio_min"] for r in recs):.2f}-'
        f'{max(r["pair_ratio_max"] for r in recs):.2f} | '
        f'{max(r["loadavg_1min_before"] for r in recs):.2f} of {recs[0]["cpus"]} CPUs |'
    )
  return '\n'.join(lines) + '\n'
