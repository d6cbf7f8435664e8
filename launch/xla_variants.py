r"""jal.bench under several XLA option sets, one process each, side by side.

XLA reads `XLA_FLAGS` once, when the backend starts, so every variant runs
`python -m jal.bench` in its own process. The records of every variant go to
`<out>/<variant>.jsonl` (profile traces, with --profile, under
`<out>/<variant>_traces/`), and one summary line per timed program is printed:
its images/s (or seconds) under each variant and, with --profile, where its
op time went.

    python -m launch.xla_variants --out=/tmp/variants --profile \
        -- --cases=ensemble_train --train_models=resnet18 --members=5
    python -m launch.xla_variants --out=/tmp/v --variants=default,nhwc -- --size=small

The variants (--variants picks some; --extra_variant=name:FLAGS adds one):
  default          no flags
  nhwc             convolutions in NHWC (--xla_gpu_force_conv_nhwc)
  nchw             convolutions in NCHW (--xla_gpu_force_conv_nchw)
  command_buffers  loop bodies captured as CUDA graphs (fewer launches)
  no_autotune      XLA's default kernels, no autotuning
"""

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Iterable

VARIANTS = {
    'default': '',
    'nhwc': '--xla_gpu_force_conv_nhwc=true',
    'nchw': '--xla_gpu_force_conv_nchw=true',
    'command_buffers': (
        '--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL'
    ),
    'no_autotune': '--xla_gpu_autotune_level=0',
}
_KEY_FIELDS = ('case', 'model', 'mode', 'members', 'member_conv', 'n', 'd', 'k', 'strategy')
_FIGURES = (
    'images_per_second',
    'seconds',
    'seconds_over_bandwidth_bound',
    'train_seconds',
    'score_seconds',
)


def parse_variants(names: Iterable[str], extra: Iterable[str] = ()) -> dict[str, str]:
  """{name: XLA flags} of the chosen built-in variants plus `name:FLAGS` extras."""
  table = dict(VARIANTS)
  for item in extra:
    name, sep, flags = item.partition(':')
    if not sep or not name:
      raise ValueError(f"--extra_variant '{item}': expected name:FLAGS")
    table[name] = flags
  chosen = list(names) + [e.partition(':')[0] for e in extra]
  unknown = [n for n in chosen if n not in table]
  if unknown:
    raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(table)}")
  return {n: table[n] for n in dict.fromkeys(chosen)}


def program_key(rec: dict[str, Any]) -> str:
  """Names the timed program a record is about (the same across variants)."""
  mode = rec.get('profiled_mode', rec.get('mode'))
  parts = [f'{k}={rec[k]}' for k in _KEY_FIELDS if k != 'mode' and k in rec]
  return ' '.join(parts + ([f'mode={mode}'] if mode else []))


def summarise(by_variant: dict[str, list[dict]]) -> list[dict[str, Any]]:
  """One row per timed program: its figures and top op categories per variant."""
  rows: dict[str, dict[str, Any]] = {}
  for variant, recs in by_variant.items():
    for rec in recs:
      row = rows.setdefault(program_key(rec), {'program': program_key(rec)})
      if rec.get('mode') == 'profile':
        top = sorted(rec['by_category_fraction'].items(), key=lambda kv: -kv[1])[:3]
        row.setdefault('op_time', {})[variant] = {
            'categories': {k: round(v, 4) for k, v in top},
            'op_seconds_over_call_seconds': round(rec['op_seconds_over_call_seconds'], 4),
        }
      else:
        for fig in _FIGURES:
          if fig in rec:
            row.setdefault(fig, {})[variant] = rec[fig]
  return list(rows.values())


def run_variant(
    name: str, flags: str, out: pathlib.Path, bench_args: list[str], profile: bool
) -> list[dict]:
  """Runs jal.bench with XLA_FLAGS=`flags`; returns its records (also in out/name.jsonl)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(f for f in (env.get('XLA_FLAGS', ''), flags) if f)
  args = [sys.executable, '-m', 'jal.bench', *bench_args]
  if profile:
    args.append(f'--profile_dir={out / (name + "_traces")}')
  proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'variant {name} ({flags or "no flags"}) failed:\n{proc.stderr[-3000:]}')
  (out / f'{name}.jsonl').write_text(proc.stdout)
  recs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
  return [{**r, 'xla_flags': flags} for r in recs]


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  fl = flags.FLAGS
  bench_args = argv[1:]
  try:
    table = parse_variants(fl.variants, fl.extra_variant or ())
  except ValueError as e:
    sys.exit(f'error: {e}')
  out = pathlib.Path(fl.out)
  out.mkdir(parents=True, exist_ok=True)
  by_variant = {n: run_variant(n, f, out, bench_args, fl.profile) for n, f in table.items()}
  for row in summarise(by_variant):
    print(json.dumps(row, sort_keys=True), flush=True)


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('out', None, "Folder for each variant's records and traces.", required=True)
  flags.DEFINE_list('variants', list(VARIANTS), f'Variants: {", ".join(VARIANTS)}.')
  flags.DEFINE_multi_string('extra_variant', None, 'Another variant, as name:XLA_FLAGS.')
  flags.DEFINE_bool('profile', False, 'Also trace each timed program (jal.bench --profile_dir).')
  app.run(main)
