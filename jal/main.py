r"""Runs an active learning experiment.

    python -m jal.main --config=configs/gaussian.py --workdir=/tmp/gauss
    python -m jal.main --config=configs/mnist.py:low --workdir=/tmp/mnist \
        --config.seeds=0,1 --config.strategies=random,ensembles

Rerunning the same command resumes from the workdir.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jal import experiment
from jal import logs

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logs.quiet_libraries()
  try:
    table = experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  sys.stdout.write(table)


if __name__ == '__main__':
  app.run(main)
