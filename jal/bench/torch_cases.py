r"""jal against the plain PyTorch of `jal.bench.torch_models`: the same models,
batches and optimisers, the two sides timed alternately in one process.

    python -m jal.bench --vs=torch                          # through jal.bench (issue 16)
    python -m jal.bench.torch_cases versus --size=small     # the same, without jal.bench
    python -m jal.bench.torch_cases round --data_dir=DIR --out=/tmp/torch_round.json
    python -m jal.bench.torch_cases repeat --cases=resnet18_inference --side=jal --calls=40

Needs PyTorch (`pip install -e ".[bench]"`); `python -m jal.bench` imports
this module only with --vs=torch. What is the same on both sides, and what
differs: `jal.bench.torch_models`. A training call includes the members'
init on both sides (jal's fit drivers init and train in one call). The
round's PyTorch process (`torch_round.round_main`) imports jax too (the `jal`
package does, for jal.data): its record's `startup_seconds` says how long
that took, `rounds_seconds` the rounds alone.

Cases (`CASES`); one call of a case is one timed unit of work:
  lenet_ensemble_train  M fresh LeNets (MNIST recipe), each trained for S
                        steps of batch B on its own shuffle of S * B images.
  resnet18_train        one fresh ResNet-18 (CIFAR recipe, crop_flip) trained
                        for S steps of batch B.
  resnet18_inference    logits of one ResNet-18 on B images (eval mode).
  lenet_score_pool      every member's logits over a pool of MNIST-shaped
                        images, in chunks of the eval batch size (what the
                        ensembles strategy scores).
  mnist_round           `python -m jal.main --config=configs/mnist.py:low`
                        with one seed, strategy ensembles, num_rounds=1,
                        against `python -m jal.bench.torch_cases round`:
                        whole processes (imports, data loading, rounds 0 and 1).

`versus` alternates the sides (jal, torch contiguous, torch channels_last,
jal, ...) after one warm-up call each, and returns one record per case: each
side's min / median / max seconds and spread (max / min), the best torch
format, `ratio` = jal median / best torch median, and the ratios of the
alternated pairs. Every jal training and inference call is in `jal_cases`, so
a change of jal's training API changes that one function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any, Callable

from absl import logging
import numpy as np
import torch

from jal.bench import torch_models
from jal.bench import torch_round

CASES = (
    'lenet_ensemble_train',
    'resnet18_train',
    'resnet18_inference',
    'lenet_score_pool',
    'mnist_round',
)


# --------------------------------------------------------------------------
# Shapes of the cases.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What one call of each case does (see the module docstring)."""

  members: int = 5
  lenet_batch: int = 64
  lenet_steps: int = 64  # per member and call
  resnet_width: int = 64
  resnet_batch: int = 128
  resnet_steps: int = 2  # per call
  pool: int = 50_000  # lenet_score_pool
  score_chunk: int = 1_000  # configs/mnist.py's eval_batch_size
  seed: int = 0
  round_config: str = 'low'  # configs/mnist.py:<this> for mnist_round
  data_dir: str | None = None  # MNIST for mnist_round; else $JAL_DATA_DIR


SMALL = Shapes(
    members=2,
    lenet_batch=16,
    lenet_steps=4,
    resnet_width=8,
    resnet_batch=8,
    resnet_steps=1,
    pool=256,
    score_chunk=128,
    round_config='smoke',
)


def shapes_for(p, data_dir: str | None = None) -> Shapes:
  """The Shapes of a jal.bench.core `Params`: its largest member count, batches, steps,
  ResNet width, pool, score chunk and seed; ResNet steps and round config by its size."""
  base = SMALL if p.size == 'small' else Shapes()
  return dataclasses.replace(
      base,
      members=max(p.members),
      lenet_batch=p.lenet_batch,
      lenet_steps=p.steps,
      resnet_width=p.resnet_width,
      resnet_batch=p.resnet_batch,
      pool=p.pool,
      score_chunk=p.score_chunk,
      seed=p.seed,
      data_dir=data_dir,
  )


def random_images(seed: int, n: int, shape) -> np.ndarray:
  """u8[n, *shape] uniform noise, as jal.bench.core draws it."""
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def random_labels(seed: int, n: int, num_classes: int) -> np.ndarray:
  """i32[n], as jal.bench.core draws them."""
  return np.random.default_rng(seed + 1).integers(0, num_classes, (n,), dtype=np.int32)


def recipes(s: Shapes) -> dict[str, torch_models.Recipe]:
  """The two recipes at the Shapes' batch sizes and width."""
  return {
      'lenet': torch_models.lenet_mnist(batch_size=s.lenet_batch),
      'resnet18': torch_models.resnet_cifar(batch_size=s.resnet_batch, width=s.resnet_width),
  }


def case_info(s: Shapes) -> dict[str, dict[str, Any]]:
  """Per case: what one call does, and the images it processes (None: a whole round)."""
  return {
      'lenet_ensemble_train': {
          'work': f'{s.members} fresh LeNets (MNIST recipe, Adam) x {s.lenet_steps} steps of '
          f'batch {s.lenet_batch}, one member after another',
          'images': s.members * s.lenet_steps * s.lenet_batch,
      },
      'resnet18_train': {
          'work': f'one fresh ResNet-18 (CIFAR stem, width {s.resnet_width}; SGD Nesterov, '
          f'cosine, crop_flip) x {s.resnet_steps} steps of batch {s.resnet_batch}',
          'images': s.resnet_steps * s.resnet_batch,
      },
      'resnet18_inference': {
          'work': f'eval-mode logits of one ResNet-18 (width {s.resnet_width}) on '
          f'{s.resnet_batch} images',
          'images': s.resnet_batch,
      },
      'lenet_score_pool': {
          'work': f'logits of {s.members} LeNets over {s.pool} images in chunks of '
          f'{s.score_chunk}, members in turn',
          'images': s.members * s.pool,
      },
      'mnist_round': {
          'work': f'one process: configs/mnist.py:{s.round_config}, seed {s.seed}, ensembles, '
          'num_rounds=1 (fit, evaluate, score, select; fit, evaluate)',
          'images': None,
      },
  }


def _check_cases(cases) -> tuple[str, ...]:
  unknown = [c for c in cases if c not in CASES]
  if unknown or not cases:
    raise ValueError(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
  return tuple(cases)


# --------------------------------------------------------------------------
# The two sides of each case.
# --------------------------------------------------------------------------


def torch_cases(
    s: Shapes, cases=CASES, formats=torch_models.FORMATS
) -> dict[str, dict[str, Callable]]:
  """{case: {memory format: zero-argument callable doing one call's work}}."""
  cases = _check_cases(cases)
  r = recipes(s)
  out = {}
  for case in cases:
    fns = {}
    for fmt in formats:
      if case == 'lenet_ensemble_train':
        fns[fmt] = _torch_train_fn(r['lenet'], s.members, s.lenet_steps, fmt, s.seed)
      elif case == 'resnet18_train':
        fns[fmt] = _torch_train_fn(r['resnet18'], 1, s.resnet_steps, fmt, s.seed)
      elif case == 'resnet18_inference':
        fns[fmt] = _torch_predict_fn(r['resnet18'], 1, s.resnet_batch, s.resnet_batch, fmt, s.seed)
      elif case == 'lenet_score_pool':
        fns[fmt] = _torch_predict_fn(r['lenet'], s.members, s.pool, s.score_chunk, fmt, s.seed)
      else:
        fns[fmt] = torch_round.torch_round_fn(s, fmt)
    out[case] = fns
  return out


def _torch_train_fn(recipe: torch_models.Recipe, members: int, steps: int, fmt: str, seed: int):
  """One call: `members` fresh models, one epoch of `steps` steps over as many batches."""
  n = steps * recipe.batch_size
  x = torch.from_numpy(random_images(seed, n, recipe.image_shape))
  y = torch.from_numpy(random_labels(seed, n, recipe.num_classes)).long()
  labeled = torch.arange(n)
  return lambda: torch_models.fit_members(recipe, members, x, y, labeled, 1, fmt, seed)


def _torch_predict_fn(
    recipe: torch_models.Recipe, members: int, n: int, chunk: int, fmt: str, seed: int
):
  """One call: every member's logits on n random images, `chunk` at a time."""
  x = torch.from_numpy(random_images(seed, n, recipe.image_shape))
  models = [torch_models.build_model(recipe, fmt, seed * 1000 + i).eval() for i in range(members)]
  return lambda: torch_models.predict(models, x, recipe, chunk, fmt)


def jal_cases(s: Shapes, cases=CASES) -> dict[str, Callable]:
  """ADAPTER: {case: zero-argument callable} of jal's side, through jal's training API.

  Every call into jal.train is in this function: when that API changes
  (e.g. to `train.fit(trainer, ..., plan=...)`), change `fit_fn` and
  `predict_fn` here. Training runs the driver jal's loop runs
  (`train.fit` with `train.resolve_plan`'s 'auto' plan: on a CPU, members in
  turn, one dispatch per step), inference `infer.predict` as the loop calls it
  (members in turn on a CPU); models built by `models.get_model` as configs do;
  each call ends with `jax.block_until_ready`. The same recipes, shapes and
  images as `torch_cases`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jal import infer  # pylint: disable=g-import-not-at-top
  from jal import models  # pylint: disable=g-import-not-at-top
  from jal import train  # pylint: disable=g-import-not-at-top

  cases = _check_cases(cases)

  def setup(recipe: torch_models.Recipe, augment: bool):
    # As jal's configs build them: models.get_model resolves LeNet's conv_pool
    # form ('auto': space-to-depth on a CPU).
    model = models.get_model(
        ml_collections.ConfigDict(
            dict(
                name=recipe.model,
                compute_dtype='float32',
                width=recipe.width,
                stem='cifar' if recipe.model == 'resnet18' else None,
            )
        ),
        recipe.num_classes,
    )
    spec = train.InputSpec(recipe.mean, recipe.std, recipe.augment if augment else 'none')
    trainer = train.Trainer.from_config(
        ml_collections.ConfigDict(
            dict(
                optimizer=recipe.optimizer,
                learning_rate=recipe.learning_rate,
                weight_decay=recipe.weight_decay,
                momentum=recipe.momentum,
                batch_size=recipe.batch_size,
                schedule=recipe.schedule,
            )
        ),
        model,
        spec,
    )
    return trainer, train.resolve_plan(
        trainer=trainer, sample_x=np.zeros((1, *recipe.image_shape), np.float32)
    )

  def fit_fn(recipe: torch_models.Recipe, members: int, steps: int):
    trainer, plan = setup(recipe, True)
    n = steps * recipe.batch_size
    x = jax.device_put(random_images(s.seed, n, recipe.image_shape))
    y = jax.device_put(random_labels(s.seed, n, recipe.num_classes))
    idx = np.zeros((train.capacity_for(n, recipe.batch_size),), np.int32)
    idx[:n] = np.arange(n)
    idx = jnp.asarray(idx)
    keys = jax.random.split(jax.random.PRNGKey(s.seed), members)
    return lambda: jax.block_until_ready(
        train.fit(trainer, keys, x, y, idx, jnp.int32(n), jnp.int32(1), plan=plan)
    )

  def predict_fn(recipe: torch_models.Recipe, members: int, n: int, chunk: int):
    trainer, plan = setup(recipe, False)
    x = jax.device_put(random_images(s.seed, n, recipe.image_shape))
    states = train.init_ensemble(trainer, jax.random.split(jax.random.PRNGKey(s.seed), members), x)
    return lambda: jax.block_until_ready(
        infer.predict(
            trainer.model,
            trainer.spec,
            chunk,
            False,
            states,
            x,
            in_turn=infer.members_in_turn(plan),
        ).logits
    )

  r = recipes(s)
  builders = {
      'lenet_ensemble_train': lambda: fit_fn(r['lenet'], s.members, s.lenet_steps),
      'resnet18_train': lambda: fit_fn(r['resnet18'], 1, s.resnet_steps),
      'resnet18_inference': lambda: predict_fn(r['resnet18'], 1, s.resnet_batch, s.resnet_batch),
      'lenet_score_pool': lambda: predict_fn(r['lenet'], s.members, s.pool, s.score_chunk),
      'mnist_round': lambda: torch_round.jal_round_fn(s),
  }
  return {case: builders[case]() for case in cases}


# --------------------------------------------------------------------------
# Alternated timing.
# --------------------------------------------------------------------------


def versus(
    jal_fns: dict[str, Callable],
    torch_fns: dict[str, dict[str, Callable]],
    repeats: int = 3,
    warmup: int = 1,
    info: dict[str, dict] | None = None,
) -> list[dict]:
  """Times every case both sides have, alternating; one record per case.

  Per case: `warmup` (at least 1) untimed calls of each side, then `repeats`
  rounds of one timed call of each side in turn (jal, torch in each memory
  format). A call that returns a dict of numbers (the round's phases) also
  gives `<side>_<key>`, the median of each over the repeats.

  Record fields: `case`, `vs` ('torch'); per side (`jal`, `torch_<format>`)
  `<side>_seconds` (median), `_seconds_min`, `_seconds_max`, `_spread`
  (max / min) and, given `info[case]['images']`, `_images_per_second`;
  `torch_best_format` and `torch_seconds` (the lower median); `ratio` = jal
  median / best torch median (> 1: jal slower); `pair_ratio_min/median/max`
  over the alternated pairs (jal / best format); `repeats`, `warmup`, `timing`;
  `loadavg_1min_before/after` the case (above the threads used: not alone).
  """
  info = info or {}
  records = []
  for case, jal_fn in jal_fns.items():
    if case not in torch_fns:
      continue
    sides = {'jal': jal_fn, **{f'torch_{fmt}': fn for fmt, fn in torch_fns[case].items()}}
    load_before = os.getloadavg()[0]
    for _ in range(max(1, warmup)):
      for fn in sides.values():
        fn()
    seconds = {side: [] for side in sides}
    details = {side: [] for side in sides}
    for _ in range(max(1, repeats)):
      for side, fn in sides.items():
        t0 = time.perf_counter()
        out = fn()
        seconds[side].append(time.perf_counter() - t0)
        if isinstance(out, dict):
          details[side].append(out)
    rec = versus_record(case, seconds, details, info.get(case, {}), max(1, warmup))
    # Another process on one of its cores slows multi-threaded PyTorch many times over (its
    # threads wait for each other at every op); the load says whether a run was alone.
    rec.update(
        loadavg_1min_before=load_before, loadavg_1min_after=os.getloadavg()[0], cpus=os.cpu_count()
    )
    logging.info('%s', summary_line(rec))
    records.append(rec)
  return records


def versus_record(
    case: str,
    seconds: dict[str, list[float]],
    details: dict[str, list[dict]],
    info: dict,
    warmup: int,
) -> dict[str, Any]:
  """The record of one case from each side's timed seconds (see `versus`)."""
  images = info.get('images')
  rec = {'case': case, 'vs': 'torch', **{k: v for k, v in info.items() if v is not None}}
  for side, ts in seconds.items():
    rec.update(
        {
            f'{side}_seconds': statistics.median(ts),
            f'{side}_seconds_min': min(ts),
            f'{side}_seconds_max': max(ts),
            f'{side}_spread': max(ts) / min(ts),
        }
    )
    if images:
      rec[f'{side}_images_per_second'] = images / statistics.median(ts)
    for key in sorted(
        {k for d in details[side] for k, v in d.items() if isinstance(v, (int, float))}
    ):
      rec[f'{side}_{key}'] = statistics.median(d[key] for d in details[side] if key in d)
  torch_sides = [s for s in seconds if s != 'jal']
  best = min(torch_sides, key=lambda s: statistics.median(seconds[s]))
  pairs = [j / t for j, t in zip(seconds['jal'], seconds[best])]
  rec.update(
      {
          'torch_best_format': best[len('torch_') :],
          'torch_seconds': rec[f'{best}_seconds'],
          'ratio': rec['jal_seconds'] / rec[f'{best}_seconds'],
          'pair_ratio_min': min(pairs),
          'pair_ratio_median': statistics.median(pairs),
          'pair_ratio_max': max(pairs),
          'repeats': len(seconds['jal']),
          'warmup': warmup,
          'timing': (
              f'wall seconds per call, sides alternated ({", ".join(seconds)}) for '
              f'{len(seconds["jal"])} rounds after {warmup} warm-up call(s) each; jal calls '
              'end with jax.block_until_ready'
          ),
          'torch_version': torch.__version__,
          'torch_threads': torch.get_num_threads(),
      }
  )
  return rec


def summary_line(rec: dict) -> str:
  """One line: the case, each side's median [min, max], the ratio and its pair range."""
  sides = [k[: -len('_seconds')] for k in rec if k.endswith('_seconds') and f'{k}_min' in rec]
  parts = [
      f'{s} {rec[f"{s}_seconds"]:.3g} s [{rec[f"{s}_seconds_min"]:.3g}, '
      f'{rec[f"{s}_seconds_max"]:.3g}]'
      for s in sides
  ]
  return (
      f'{rec["case"]}: {"; ".join(parts)}; jal / torch ({rec["torch_best_format"]}) = '
      f'{rec["ratio"]:.2f}x (pairs {rec["pair_ratio_min"]:.2f}-{rec["pair_ratio_max"]:.2f})'
  )


def run_versus(
    s: Shapes,
    cases=CASES,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    formats=torch_models.FORMATS,
) -> list[dict]:
  """`--vs=torch`: sets PyTorch's threads, builds both sides' cases and times them.

  Both sides run on the CPU in float32 (refused if JAX's backend is not the
  CPU). 'mnist_round' without MNIST (no `s.data_dir`, no $JAL_DATA_DIR)
  gives a record with `skipped` instead of times.
  """
  import jax  # pylint: disable=g-import-not-at-top

  cases = _check_cases(cases)
  if jax.default_backend() != 'cpu':
    raise ValueError(
        f"--vs=torch compares on the CPU; JAX's backend is "
        f'{jax.default_backend()} (run with JAX_PLATFORMS=cpu)'
    )
  threads = torch_models.set_threads(threads)
  out = []
  if 'mnist_round' in cases and not torch_round.resolve_data_dir(s.data_dir):
    cases = tuple(c for c in cases if c != 'mnist_round')
    out.append(
        {
            'case': 'mnist_round',
            'vs': 'torch',
            'skipped': 'no MNIST: pass --data_dir or set JAL_DATA_DIR',
        }
    )
  if cases:
    jal_fns = jal_cases(s, cases)
    torch_fns = torch_cases(s, cases, formats)
    out = versus(jal_fns, torch_fns, repeats, warmup, case_info(s)) + out
  return [
      {**rec, 'torch_threads': threads, 'torch_device': 'cpu', 'compute_dtype': 'float32'}
      for rec in out
  ]


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('data_dir', None, 'MNIST (jal.data layout); else $JAL_DATA_DIR.')
  flags.DEFINE_integer(
      'threads',
      None,
      'PyTorch intra-op threads (default: the CPUs this process may use, at most 32).',
  )
  flags.DEFINE_integer('seed', 0, 'Seed.')
  # round
  flags.DEFINE_string('config', 'low', 'round: configs/mnist.py:<this> (low, high, smoke).')
  flags.DEFINE_enum('memory_format', 'contiguous', torch_models.FORMATS, 'round: memory format.')
  flags.DEFINE_string('out', None, 'round: write the JSON summary here.')
  flags.DEFINE_float(
      'launched_at',
      None,
      'round: time.time() when the parent started this process, to time its startup.',
  )
  # versus
  flags.DEFINE_enum(
      'size', 'small', ('small', 'full'), 'versus, repeat: Shapes (small) or Shapes().'
  )
  flags.DEFINE_list('cases', list(CASES), f'versus (repeat: one): cases ({", ".join(CASES)}).')
  flags.DEFINE_list('formats', list(torch_models.FORMATS), 'versus: torch memory formats.')
  flags.DEFINE_integer('repeats', 3, 'versus: timed calls per side.')
  # repeat
  flags.DEFINE_enum(
      'side', 'jal', ('jal',) + torch_models.FORMATS, 'repeat: jal, or PyTorch in this format.'
  )
  flags.DEFINE_integer('calls', 40, 'repeat: calls after one warm-up call.')
  return flags.FLAGS


def repeat(s: Shapes, case: str, side: str, calls: int) -> list[float]:
  """One side of one case, called `calls` times after a warm-up call; the seconds of each.

  For an outside profiler (`perf record -p`, py-spy) to sample the steady state of
  exactly what `versus` times, without the other side in the same process.
  """
  (case,) = _check_cases([case])
  if case == 'mnist_round':
    raise ValueError('repeat times calls within one process; mnist_round is whole processes')
  if side == 'jal':
    fn = jal_cases(s, [case])[case]
  else:
    fn = torch_cases(s, [case], (side,))[case][side]
  fn()
  seconds = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - t0)
  return seconds


def _shapes(flags_) -> Shapes:
  """versus and repeat: the Shapes --size names, with --seed and --data_dir."""
  return dataclasses.replace(
      SMALL if flags_.size == 'small' else Shapes(), seed=flags_.seed, data_dir=flags_.data_dir
  )


def _main(argv, flags_):
  from jal import runtime  # pylint: disable=g-import-not-at-top

  # jal's side runs with the XLA:CPU flags every jal command sets, as under `jal.bench --vs=torch`.
  runtime.set_cpu_xla_flags()
  if argv[1:] == ['round']:
    summary = torch_round.round_main(
        flags_.data_dir,
        flags_.config,
        flags_.seed,
        flags_.memory_format,
        flags_.threads,
        flags_.out,
        flags_.launched_at,
    )
    logging.info('round: %s', {k: v for k, v in summary.items() if k != 'rounds'})
  elif argv[1:] == ['versus']:
    for rec in run_versus(
        _shapes(flags_), flags_.cases, flags_.repeats, 1, flags_.threads, tuple(flags_.formats)
    ):
      print(json.dumps(rec, sort_keys=True), flush=True)
  elif argv[1:] == ['repeat']:
    if len(flags_.cases) != 1:
      raise ValueError(f'repeat: give one case with --cases, got {flags_.cases}')
    (case,) = flags_.cases
    torch_models.set_threads(flags_.threads)
    seconds = repeat(_shapes(flags_), case, flags_.side, flags_.calls)
    print(
        json.dumps(
            {
                'case': case,
                'side': flags_.side,
                'calls': len(seconds),
                'seconds_median': statistics.median(seconds),
                'seconds_min': min(seconds),
                'seconds_max': max(seconds),
            },
            sort_keys=True,
        ),
        flush=True,
    )
  else:
    raise ValueError(
        f'usage: python -m jal.bench.torch_cases round|versus|repeat [flags], got {argv[1:]}'
    )


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top

  _FLAGS = _define_flags()
  app.run(lambda argv: _main(argv, _FLAGS))
