"""jal's cases of `python -m jal.bench` (what each measures: `jal.bench`).

Each case is `bench_<case>(p: core.Params) -> list[dict]`, one record per
figure; `run` runs several and adds the fields every record carries. Timing,
profiling and the random inputs are `jal.bench.core`'s.
"""

import dataclasses
import functools
import importlib.util
import math
import pathlib
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jal import data as data_lib
from jal import experiment
from jal import infer
from jal import kernels
from jal import models
from jal import resnet
from jal import sharding
from jal import strategies as strategies_lib
from jal import train
from jal.bench import core

CASES = ('ensemble_train', 'k_center', 'score_pool', 'round')
ROUND_STRATEGIES = ('ensembles', 'coreset')


# --------------------------------------------------------------------------
# ensemble_train
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
  """A Trainer (model and recipe) and the shape of its images."""

  name: str
  trainer: train.Trainer
  image_shape: tuple[int, ...]
  num_classes: int = 10


def _trainer(model, spec: train.InputSpec, **train_config) -> train.Trainer:
  return train.Trainer.from_config(ml_collections.ConfigDict(train_config), model, spec)


def workload(name: str, p: core.Params) -> Workload:
  """The ResNet-18 (CIFAR recipe) or LeNet (MNIST recipe) training workload."""
  dtype = models.compute_dtype(p.dtype)
  if name == 'resnet18':
    return Workload(
        'resnet18',
        _trainer(
            resnet.ResNet18(
                10, stem='cifar', width=p.resnet_width, dtype=dtype, member_conv=p.member_conv
            ),
            train.InputSpec(data_lib.CIFAR10_MEAN, data_lib.CIFAR10_STD, 'crop_flip'),
            optimizer='sgd',
            learning_rate=0.05,
            weight_decay=5e-4,
            momentum=0.9,
            batch_size=p.resnet_batch,
            schedule='cosine',
        ),
        (32, 32, 3),
    )
  if name == 'lenet':
    return Workload(
        'lenet',
        _trainer(
            models.LeNet(10, dtype=dtype, member_conv=p.member_conv),
            train.InputSpec(data_lib.MNIST_MEAN, data_lib.MNIST_STD, 'none'),
            optimizer='adam',
            learning_rate=1e-3,
            batch_size=p.lenet_batch,
            schedule='constant',
        ),
        (28, 28, 1),
    )
  raise ValueError(f"unknown model '{name}'; valid: {', '.join(core.TRAIN_MODELS)}")


def labeled_set(w: Workload, steps: int, seed: int):
  """(x, y, idx, num_valid): one epoch over these is exactly `steps` steps."""
  batch_size = w.trainer.batch_size
  n = steps * batch_size
  capacity = train.capacity_for(n, batch_size)
  idx = np.zeros((capacity,), np.int32)
  idx[:n] = np.arange(n)
  return (
      jax.device_put(core.random_images(seed, n, w.image_shape)),
      jax.device_put(core.random_labels(seed, n, w.num_classes)),
      jnp.asarray(idx),
      jnp.int32(n),
  )


def bench_mesh(p: core.Params):
  """The mesh of the first `p.devices` devices, or None for one device."""
  return None if p.devices <= 1 else sharding.make_mesh(jax.devices()[: p.devices])


_PROGRAM_PLANS = {
    'vmap_program': train.Plan('vmap', 'program'),
    'in_turn_program': train.Plan('in_turn', 'program'),
}


def mode_plan(w: Workload, p: core.Params, mode: str) -> train.Plan:
  """The Plan `mode` times: one of `_PROGRAM_PLANS`, 'sharded' (the loop's plan
  over `p.devices` devices) or 'auto' (the loop's plan on one device)."""
  if mode in _PROGRAM_PLANS:
    return _PROGRAM_PLANS[mode]
  return train.resolve_plan(
      trainer=w.trainer,
      sample_x=jnp.zeros((1, *w.image_shape)),
      mesh=bench_mesh(p) if mode == 'sharded' else None,
  )


def program_mode(plan: train.Plan) -> str | None:
  """The name in `_PROGRAM_PLANS` of a one-device 'program' plan, else None."""
  return next((mode for mode, p in _PROGRAM_PLANS.items() if p == plan), None)


def time_fit(w: Workload, p: core.Params, members: int, mode: str) -> list[dict[str, Any]]:
  """Training throughput of `members` members under `mode_plan(w, p, mode)`.

  A 'program' plan is compiled ahead of time (its compiled HLO classifies
  the profile's ops); a 'step' plan is timed as `train.fit` runs it.

  Returns [the timing record] + [its profile record, with `p.profile_dir`].
  """
  plan = mode_plan(w, p, mode)
  mesh = bench_mesh(p) if plan.devices > 1 else None
  x, y, idx, num_valid = labeled_set(w, p.steps, p.seed)
  dynamic = (core.member_keys(p.seed, members), x, y, idx, num_valid, jnp.int32(1))
  compiled = None
  if plan.dispatch == 'program':
    compiled, compile_s = core.aot_compile(
        jax.jit(functools.partial(train.fit, w.trainer, plan=plan, mesh=mesh)), *dynamic
    )
    compile_how = 'jit lower().compile()'
    fn = lambda: compiled(*dynamic)
  else:
    fn = lambda: train.fit(w.trainer, *dynamic, plan=plan)
  t = core.measure(fn, p.repeats, p.warmup)
  if compiled is None:
    # Clamped at 0: a step compiled by an earlier record (the same for every
    # N) leaves only timing noise.
    compile_s = max(t.first_call_seconds - t.median, 0.0)
    compile_how = 'first call minus median, at least 0'
  batch_size = w.trainer.batch_size
  images = members * p.steps * batch_size
  profiles = core.profile_records(
      p,
      f'ensemble_train_{w.name}_{mode}_{members}',
      fn,
      compiled,
      case='ensemble_train',
      model=w.name,
      profiled_mode=mode,
      members=members,
      member_conv=p.member_conv,
  )
  return [
      {
          'case': 'ensemble_train',
          'model': w.name,
          'mode': mode,
          'plan': plan.as_dict(),
          'members': members,
          'member_conv': p.member_conv,
          'image_shape': list(w.image_shape),
          'batch_size_per_member': batch_size,
          'steps': p.steps,
          'index_capacity': int(idx.shape[0]),
          'images_per_second': images / t.median,
          'images_per_second_per_member': images / members / t.median,
          'steps_per_second': p.steps / t.median,
          'compile_seconds': compile_s,
          'compile_timing': compile_how,
          'note': 'aggregate over members; each call inits and trains fresh members',
          **t.fields(),
      }
  ] + profiles


def scaling_record(
    w: Workload, timed: dict[tuple[str, int], dict], auto_plan: train.Plan
) -> dict[str, Any]:
  """What the timed plans say together (`timed`: (mode, members) -> record).

  `aggregate_images_per_second_ratio`: the largest N over the smallest, for
  'vmap_program' (else 'auto') as `members_mode` says;
  `vmap_over_in_turn_ratio` at the largest N; and what jal's loop runs
  (`auto_plan`) over 'in_turn_program'.
  """
  rec = {
      'case': 'ensemble_train',
      'model': w.name,
      'mode': 'summary',
      'auto_plan': auto_plan.as_dict(),
  }
  for mode in ('vmap_program', 'auto'):
    by_members = {m: r for (md, m), r in timed.items() if md == mode}
    if len(by_members) > 1:
      lo, hi = min(by_members), max(by_members)
      rec.update(
          members_mode=mode,
          members_numerator=hi,
          members_denominator=lo,
          aggregate_images_per_second_ratio=(
              by_members[hi]['images_per_second'] / by_members[lo]['images_per_second']
          ),
      )
      break
  in_turn = next((r for (md, _), r in timed.items() if md == 'in_turn_program'), None)
  if in_turn is None:
    return rec
  top = in_turn['members']
  if ('vmap_program', top) in timed:
    rec['vmap_over_in_turn_ratio'] = (
        timed['vmap_program', top]['images_per_second'] / in_turn['images_per_second']
    )
  auto = timed.get((program_mode(auto_plan), top)) or timed.get(('auto', top))
  if auto is not None:
    rec['auto_images_per_second'] = auto['images_per_second']
    rec['auto_over_in_turn_ratio'] = auto['images_per_second'] / in_turn['images_per_second']
  return rec


def bench_ensemble_train(p: core.Params) -> list[dict]:
  """Every model's records for the plans in `p.train_modes`, then a summary.

  'vmap_program' is timed for every N in `p.members`; 'in_turn_program' and
  'sharded' for the largest N. 'auto' (the loop's own plan) is timed unless
  it is a program plan timed under its own name: for the largest N, or for
  every N when 'vmap_program' is not asked for (on a CPU, where the program
  plans are slow, `--train_modes=auto` still gives the N-scaling of what the
  loop runs).
  """
  out = []
  modes = p.train_modes
  top = max(p.members)
  for name in p.train_models:
    w = workload(name, p)
    auto_plan = mode_plan(w, p, 'auto')
    if program_mode(auto_plan) in modes:
      auto_sizes = ()  # timed under its own name
    elif 'vmap_program' in modes:
      auto_sizes = (top,) if top > 1 else ()
    else:
      auto_sizes = p.members
    timed = {}  # (mode, members) -> record
    for mode, sizes in (
        ('vmap_program', p.members),
        ('in_turn_program', (top,) if top > 1 else ()),
        ('sharded', (top,) if p.devices > 1 else ()),
        ('auto', auto_sizes),
    ):
      if mode not in modes:
        continue
      for m in sorted(set(sizes)):
        recs = time_fit(w, p, m, mode)
        timed[mode, m] = recs[0]
        out += recs
        logging.info(
            'ensemble_train %s %s N=%d: %.1f images/s', name, mode, m, recs[0]['images_per_second']
        )
    out.append(scaling_record(w, timed, auto_plan))
  return out


# --------------------------------------------------------------------------
# k_center
# --------------------------------------------------------------------------


def measure_bandwidth(nbytes: int, p: core.Params) -> tuple[float, core.Timing, int]:
  """(bytes/s of a jitted `jnp.sum` over a float32 array, its timing, bytes read)."""
  count = max(1, nbytes // 4)
  arr = jax.block_until_ready(jnp.ones((count,), jnp.float32))
  compiled, _ = core.aot_compile(jax.jit(jnp.sum), arr)
  t = core.measure(lambda: compiled(arr), max(p.repeats, 5), p.warmup)
  arr.delete()
  return 4 * count / t.median, t, 4 * count


def bench_k_center(p: core.Params) -> list[dict]:
  bandwidth, bw_timing, bw_bytes = measure_bandwidth(p.bandwidth_bytes, p)
  emb = jax.random.normal(jax.random.PRNGKey(p.seed), (p.kc_n, p.kc_d), jnp.float32)
  labeled = np.zeros((p.kc_n,), bool)
  labeled[np.random.default_rng(p.seed).choice(p.kc_n, p.kc_labeled, replace=False)] = True
  labeled = jnp.asarray(labeled)
  mesh = bench_mesh(p)
  compiled, compile_s = core.aot_compile(kernels.k_center_greedy, emb, labeled, k=p.kc_k, mesh=mesh)
  fn = lambda: compiled(emb, labeled)
  t = core.measure(fn, p.repeats, p.warmup)
  bound = p.kc_n * p.kc_d * 4 * p.kc_k / bandwidth
  logging.info('k_center: %.4f s, bound %.4f s (%.1f GB/s)', t.median, bound, bandwidth / 1e9)
  return [
      {
          'case': 'k_center',
          'n': p.kc_n,
          'd': p.kc_d,
          'labeled': p.kc_labeled,
          'k': p.kc_k,
          'devices': p.devices,
          'function': 'kernels.k_center_greedy',
          'compile_seconds': compile_s,
          'compile_timing': 'jit lower().compile()',
          **t.fields(),
          'bandwidth_bytes_per_second': bandwidth,
          'bandwidth_array_bytes': bw_bytes,
          'bandwidth_seconds': bw_timing.median,
          'bandwidth_timing': 'jnp.sum over float32 ones: bytes read / '
          + bw_timing.fields()['timing'],
          'bound_bytes': p.kc_n * p.kc_d * 4 * p.kc_k,
          'bound_seconds': bound,
          'seconds_over_bandwidth_bound': t.median / bound,
          'note': 'bound = n*d*4*k / bandwidth: one read of the embeddings per pick; '
          'the initial distances to the labeled set are not in it; with several '
          "devices the pool is split and the bound uses one device's bandwidth "
          'for the whole pool',
      }
  ] + core.profile_records(
      p, f'k_center_{p.kc_n}x{p.kc_d}', fn, compiled, case='k_center', n=p.kc_n, d=p.kc_d, k=p.kc_k
  )


# --------------------------------------------------------------------------
# score_pool
# --------------------------------------------------------------------------


def bench_score_pool(p: core.Params) -> list[dict]:
  w = workload('resnet18', p)
  spec = dataclasses.replace(w.trainer.spec, augment='none')
  x = jax.device_put(core.random_images(p.seed, p.pool, w.image_shape))
  # As the loop scores: the members as its plan trains them.
  in_turn = infer.members_in_turn(train.resolve_plan(trainer=w.trainer, sample_x=x[:1]))
  out = []
  for m in sorted(set(p.members)):
    states = train.init_ensemble(w.trainer, core.member_keys(p.seed, m), x)
    fn = lambda states=states: infer.predict(
        w.trainer.model, spec, p.score_chunk, True, states, x, in_turn=in_turn
    )
    t = core.measure(fn, p.repeats, p.warmup)
    profiles = core.profile_records(p, f'score_pool_{m}', fn, case='score_pool', members=m)
    logging.info('score_pool N=%d: %.1f images/s', m, p.pool / t.median)
    out.append(
        {
            'case': 'score_pool',
            'model': 'resnet18',
            'width': p.resnet_width,
            'members': m,
            'pool': p.pool,
            'image_shape': list(w.image_shape),
            'chunk_size': p.score_chunk,
            'function': 'infer.predict(with_embeddings=True)',
            'members_in_turn': in_turn,
            'images_per_second': p.pool / t.median,
            'member_images_per_second': m * p.pool / t.median,
            'first_call_seconds': t.first_call_seconds,
            'compile_seconds': max(t.first_call_seconds - t.median, 0.0),
            'compile_timing': 'first call minus median, at least 0',
            **t.fields(),
        }
    )
    out += profiles
  return out


# --------------------------------------------------------------------------
# round
# --------------------------------------------------------------------------

CIFAR10_PER_CLASS = {'train': 5_000, 'test': 1_000}


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of configs/<name>.py in this checkout."""
  path = pathlib.Path(__file__).resolve().parents[2] / 'configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'jal_bench_config_{name}', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def imbalance_counts(data_config) -> dict[str, tuple[int, int]]:
  """{split: (negatives, positives)} that `data.load_dataset` gives for CIFAR-10.

  Binarised by `positive_classes`, the minority downsampled per
  `imbalanced_split`, then truncated to `max_train` / `max_test` (keeping the
  class shares).
  """
  if data_config.name != 'cifar10':
    raise ValueError(f'round: synthetic data is CIFAR-10 shaped, config has {data_config.name}')
  n_pos_classes = len(data_config.positive_classes)
  split_opt = data_config.get('imbalanced_split', 'train')
  out = {}
  for split, per_class in CIFAR10_PER_CLASS.items():
    neg, pos = (10 - n_pos_classes) * per_class, n_pos_classes * per_class
    if data_config.get('minority_fraction') and split_opt in (split, 'both'):
      pos = data_lib.downsampled_count(data_config.minority_fraction, neg)
    limit = data_config.get(f'max_{split}')
    if limit is not None and limit < neg + pos:
      pos = round(limit * pos / (neg + pos))
      neg = limit - pos
    out[split] = (neg, pos)
  return out


def _shuffled_binary(rng, neg: int, pos: int) -> np.ndarray:
  return rng.permutation(np.concatenate([np.zeros(neg, np.int32), np.ones(pos, np.int32)]))


def synthetic_imbalance_dataset(data_config, seed: int) -> data_lib.Dataset:
  """Random u8 CIFAR-shaped images with the imbalanced task's sizes and labels."""
  counts = imbalance_counts(data_config)
  rng = np.random.default_rng(seed)
  y = {s: _shuffled_binary(rng, *counts[s]) for s in counts}
  return data_lib.Dataset(
      name='synthetic_cifar10_imbalance',
      x_train=core.random_images(seed, len(y['train']), (32, 32, 3)),
      y_train=y['train'],
      x_test=core.random_images(seed + 7, len(y['test']), (32, 32, 3)),
      y_test=y['test'],
      num_classes=2,
      class_names=('rest', 'positive'),
      mean=data_lib.CIFAR10_MEAN,
      std=data_lib.CIFAR10_STD,
      positive_class=1,
  )


def fit_and_eval(exp, key, labeled: np.ndarray, round_: int):
  """(states, train seconds, eval seconds) of one round's ensemble."""
  states, t_train = core.time_once(
      lambda: exp.fit(key, np.flatnonzero(labeled).astype(np.int32), round_)
  )
  _, t_eval = core.time_once(lambda: exp.evaluate(states))
  return states, t_train, t_eval


def score_and_select(exp, name: str, states, key, labeled: np.ndarray, round_: int):
  """(picks, score seconds, select seconds), as `experiment.run_round` runs them."""
  strategy = strategies_lib.get_strategy(name)
  round_key = experiment.select_key(key, name, round_)
  inputs, t_score = core.time_once(lambda: exp.score(strategy, states, labeled, round_key))
  picks, t_select = core.time_once(lambda: exp.select(strategy, inputs, round_key))
  return picks, t_score, t_select


def round_config(p: core.Params) -> ml_collections.ConfigDict:
  config = load_config('imbalance', p.config_arg)
  config.model.compute_dtype = p.dtype
  config.model.member_conv = p.member_conv
  return config


def bench_round(p: core.Params) -> list[dict]:
  config = round_config(p)
  dataset = synthetic_imbalance_dataset(config.data, p.seed)
  exp = experiment.Experiment(config, dataset)
  key = experiment.seed_key(config.seed, 0)
  labeled0 = np.zeros((exp.n,), bool)
  labeled0[experiment.warmup_indices(key, exp.n, config.warmup_size)] = True
  states0, train0, eval0 = fit_and_eval(exp, key, labeled0, 0)
  tc = config.train
  n1 = config.warmup_size + config.query_size
  if train.capacity_for(n1, tc.batch_size) != train.capacity_for(config.warmup_size, tc.batch_size):
    logging.info('round: compiling the trainer for round 1 capacity')
    core.time_once(lambda: exp.fit(key, np.arange(n1, dtype=np.int32), 1))
  out = []
  for name in ROUND_STRATEGIES:
    picks0, score0, select0 = score_and_select(exp, name, states0, key, labeled0, 0)
    labeled1 = labeled0.copy()
    labeled1[picks0] = True
    states1, train1, eval1 = fit_and_eval(exp, key, labeled1, 1)
    _, score1, select1 = score_and_select(exp, name, states1, key, labeled1, 1)
    steps = train.epochs_for(n1, tc.batch_size, tc.epochs, tc.min_steps) * math.ceil(
        n1 / tc.batch_size
    )
    logging.info(
        'round %s: train %.2f s, score %.2f s, select %.2f s', name, train1, score1, select1
    )
    out.append(
        {
            'case': 'round',
            'config': f'imbalance{":" + p.config_arg if p.config_arg else ""}',
            'strategy': name,
            'pool': exp.n,
            'test': int(dataset.x_test.shape[0]),
            'members': tc.members,
            'model_width': config.model.width,
            'batch_size': tc.batch_size,
            'plan': exp.plan.as_dict(),
            'n_labeled': n1,
            'train_steps': steps,
            'train_seconds': train1,
            'eval_seconds': eval1,
            'score_seconds': score1,
            'select_seconds': select1,
            'round_seconds': train1 + eval1 + score1 + select1,
            'round0_train_seconds': train0,
            'round0_eval_seconds': eval0,
            'round0_score_seconds': score0,
            'round0_select_seconds': select0,
            'round0_seconds': train0 + eval0 + score0 + select0,
            'timing': 'round 1 timed once after round 0 compiled every program; each part ended '
            'by jax.block_until_ready; round 0 (compile included) trains once, shared by '
            'the strategies',
            'data': "synthetic uniform u8 images with the config's sizes and class shares",
        }
    )
  return out


# --------------------------------------------------------------------------
# Every case.
# --------------------------------------------------------------------------

# {case: bench_<case>}, in `CASES` order.
BENCHES = {
    'ensemble_train': bench_ensemble_train,
    'k_center': bench_k_center,
    'score_pool': bench_score_pool,
    'round': bench_round,
}


def run(cases=CASES, size: str = 'small', **overrides) -> list[dict]:
  """Runs `cases` at `size` (overrides: any `core.Params` field); returns the records."""
  unknown = [c for c in cases if c not in BENCHES]
  if unknown:
    raise ValueError(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
  p = core.params_for(size, **overrides)
  env = core.environment(p)
  return [{**rec, **env} for case in cases for rec in BENCHES[case](p)]
