"""`python -m jal.bench [flags]`: the flags, and a main that prints one JSON
object per record (the cases and the flags: `jal.bench`)."""

import importlib.util
import json
import os

from jal import member_conv
from jal import runtime
from jal.bench import cases as cases_lib
from jal.bench import core


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_list('cases', list(cases_lib.CASES), f'Cases to run: {", ".join(cases_lib.CASES)}.')
  flags.DEFINE_enum('size', 'full', core.SIZES, 'small: tiny CPU shapes; full: the real shapes.')
  flags.DEFINE_list('members', None, 'Ensemble sizes (default 1,5).')
  flags.DEFINE_list('train_models', None, f'ensemble_train models ({",".join(core.TRAIN_MODELS)}).')
  flags.DEFINE_list(
      'train_modes',
      None,
      'ensemble_train plans to time (default all: '
      f'{",".join(core.TRAIN_MODES)}); auto alone times the loop\'s own plan '
      'for every N, e.g. ResNet-18 on a CPU.',
  )
  flags.DEFINE_integer('steps', None, 'ensemble_train: steps per timed fit.')
  flags.DEFINE_integer('resnet_width', None, 'ResNet-18 first-stage width.')
  flags.DEFINE_integer('kc_n', None, 'k_center: pool size.')
  flags.DEFINE_integer('kc_d', None, 'k_center: embedding width.')
  flags.DEFINE_integer('kc_labeled', None, 'k_center: labeled points.')
  flags.DEFINE_integer('kc_k', None, 'k_center: picks.')
  flags.DEFINE_integer('bandwidth_bytes', None, 'k_center: bytes summed to measure bandwidth.')
  flags.DEFINE_integer('pool', None, 'score_pool: images scored.')
  flags.DEFINE_integer('repeats', None, 'Timed repeats (median reported).')
  flags.DEFINE_enum('dtype', 'auto', ('auto', 'float32', 'bfloat16'), 'Compute dtype.')
  flags.DEFINE_integer(
      'devices',
      None,
      'Devices to split over (default 1): ensemble_train '
      'adds a sharded record, k_center splits the pool.',
  )
  flags.DEFINE_enum(
      'member_conv',
      None,
      member_conv.MEMBER_CONVS,
      'ensemble_train: how '
      "vmapped members' convolutions run (default grouped; jal.member_conv).",
  )
  flags.DEFINE_string(
      'profile_dir',
      None,
      'If set, trace one call of every timed program '
      'with jax.profiler into this folder and print a "profile" record '
      '(device time by op category, the top ops, grouped convolutions).',
  )
  flags.DEFINE_enum(
      'vs',
      None,
      ('torch',),
      'Time jal against a plain PyTorch implementation '
      'of the same cases, alternating (jal.bench.torch_cases; needs .[bench]).',
  )
  flags.DEFINE_string(
      'vs_summary',
      None,
      'Instead of timing: print one Markdown table of the --vs=torch records in this JSON-lines '
      "file (several runs appended: each case's ratio as median [min-max] over runs).",
  )
  flags.DEFINE_list(
      'vs_cases',
      None,
      'With --vs=torch: its cases (default all: '
      'lenet_ensemble_train, resnet18_train, resnet18_inference, '
      'lenet_score_pool, mnist_round).',
  )
  flags.DEFINE_integer(
      'threads',
      None,
      'With --vs=torch: PyTorch threads (default: the CPUs this process may use, at most 32).',
  )
  flags.DEFINE_string(
      'data_dir', None, 'With --vs=torch: MNIST for mnist_round (else $JAL_DATA_DIR).'
  )
  return flags.FLAGS


def _main(argv, flags_):
  del argv
  if flags_.vs_summary:
    if not os.path.isfile(flags_.vs_summary):
      raise ValueError(f'--vs_summary: no file {flags_.vs_summary}')
    with open(flags_.vs_summary) as f:
      print(core.versus_table([json.loads(l) for l in f if l.strip()]), end='')
    return
  # The XLA:CPU flags jal's commands run with; no persistent cache, since the
  # cases time compilation (jal.main's processes in mnist_round use theirs).
  runtime.set_cpu_xla_flags()
  overrides = {
      k: getattr(flags_, k)
      for k in (
          'steps',
          'resnet_width',
          'kc_n',
          'kc_d',
          'kc_labeled',
          'kc_k',
          'bandwidth_bytes',
          'pool',
          'repeats',
          'dtype',
          'train_models',
          'train_modes',
          'devices',
          'profile_dir',
          'member_conv',
      )
  }
  if flags_.members is not None:
    overrides['members'] = [int(m) for m in flags_.members]
  p = core.params_for(flags_.size, **overrides)
  env = core.environment(p)
  if flags_.vs == 'torch':
    if importlib.util.find_spec('torch') is None:
      raise ValueError('--vs=torch needs PyTorch: pip install -e ".[bench]"')
    from jal.bench import torch_cases  # pylint: disable=g-import-not-at-top

    for rec in torch_cases.run_versus(
        torch_cases.shapes_for(p, flags_.data_dir),
        flags_.vs_cases or torch_cases.CASES,
        p.repeats,
        p.warmup,
        flags_.threads,
    ):
      print(json.dumps({**env, **rec}, sort_keys=True), flush=True)
    return
  for case in flags_.cases:
    if case not in cases_lib.BENCHES:
      raise ValueError(f"unknown case '{case}'; valid: {', '.join(cases_lib.CASES)}")
  for case in flags_.cases:
    for rec in cases_lib.BENCHES[case](p):
      print(json.dumps({**rec, **env}, sort_keys=True), flush=True)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top

  _FLAGS = _define_flags()
  app.run(lambda argv: _main(argv, _FLAGS))
