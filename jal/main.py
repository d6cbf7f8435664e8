r"""Runs an active learning experiment.

    python -m jal.main --config=configs/gaussian.py --workdir=/tmp/gauss
    python -m jal.main --config=configs/mnist.py:low --workdir=/tmp/mnist \
        --config.seeds=0,1 --config.strategies=random,ensembles

Rerunning the same command resumes from the workdir. With several devices
the ensemble's members and the pool are split over them (`config.sharding`);
on several hosts pass --distributed to each process (the launcher's SLURM
executor does), and only process 0 writes. A workdir is used by one run at a
time (process 0 holds its lock; see jal.workdir): a second is refused at once.
Errors are one line, `error: ...` (exit 1); Ctrl-C exits 130.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from jal import experiment
from jal import logs
from jal import runtime
from jal import sharding

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
_DISTRIBUTED = flags.DEFINE_boolean(
    'distributed',
    False,
    'Call jax.distributed.initialize() first (multi-host runs; the '
    'coordinator and process ids come from the environment, e.g. SLURM).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def results_lines(workdir: str) -> str:
  """What the run ends with, after the table: where the results are, and the
  command for figures and confidence intervals."""
  w = os.path.abspath(workdir)
  return (
      f'\nResults: {os.path.join(w, "results.md")}\n'
      f'Figures and confidence intervals: python -m jal.report '
      f'--workdir={shlex.quote(w)} --out={shlex.quote(os.path.join(w, "report"))}\n'
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logs.quiet_libraries()
  runtime.configure()
  with logs.one_line_errors():
    if _DISTRIBUTED.value:
      sharding.initialize_distributed()
    table = experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  sys.stdout.write(table + results_lines(_WORKDIR.value))


if __name__ == '__main__':
  app.run(main, flags_parser=logs.parse_flags)
