r"""Label a folder of images with active learning, one batch per call.

    python -m jal.label --images=DIR --labels=labels.csv --workdir=W --query=50
    # label the files listed in W/next_batch.csv: add `filename,label` rows
    # to labels.csv, then run the same command again.

Each call reads DIR and labels.csv afresh, estimates the accuracy of the
configured ensemble (configs/label.py unless --config) on held-out labels,
trains it on every label, scores the unlabeled images with --strategy and
writes `W/next_batch.csv`, best first:

    filename,score,rank,predicted,confidence

`score` is what the strategy ranks by (variation ratio for `ensembles`, the
uncertainty score for the single-model and ensemble uncertainty strategies);
strategies that pick a set rather than rank by a score (`random`,
`coreset`, hybrids) get the ensemble's variation ratio, for information.
`predicted` and `confidence` are the ensemble's guess (mean softmax) as a
hint for the annotator. With no label at all the first batch is random.

labels.csv has the header `filename,label`; filenames are relative to DIR as
next_batch.csv writes them; a row with an empty label counts as unlabeled;
repeated rows must agree. The class list is fixed at the first call that
sees labels: `--classes` (or `config.classes`) in that order, else the
labels then present, sorted. A later label outside it is an error; to add a
class, start a new --workdir with --classes naming every class.

W holds `state.json` (the class list, every image's size, mtime and
SHA-256, the labels seen at the last call, and one history entry per call:
labeled counts, validation estimate, timings, the batch written),
`next_batch.csv`, and a cache of decoded images. Both files are written
atomically. Each call compares DIR and labels.csv with the state and reports
labels that changed or vanished, images that vanished or whose bytes
changed; it then uses only what DIR and labels.csv hold now. Random keys
come from `config.seed` and a digest of the inputs, so the same inputs give
the same next_batch.csv, and a call with nothing changed does no work and
reprints the last summary.
"""

import os
import sys

from absl import app
from absl import flags

from jal.label import images as images_lib
from jal.label import session


def _default_config_path() -> str:
  """The repository's configs/label.py."""
  here = os.path.dirname(os.path.abspath(__file__))
  return os.path.join(os.path.dirname(os.path.dirname(here)), 'configs', 'label.py')


def _define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('images', None, 'Folder of PNG/JPEG images (searched recursively).')
  flags.DEFINE_string('labels', None, 'CSV with the header filename,label.')
  flags.DEFINE_string('workdir', None, 'Folder for the state and next_batch.csv.')
  flags.DEFINE_integer('query', None, 'Images to ask for (default config.query_size).')
  flags.DEFINE_string('strategy', None, 'Strategy name (default config.strategy).')
  flags.DEFINE_list('classes', None, 'Class names, fixing the class list at the first call.')
  flags.DEFINE_bool('skip_unreadable', False, 'Leave unreadable images out instead of failing.')
  flags.DEFINE_float(
      'max_file_mb',
      images_lib.DEFAULT_MAX_FILE_MB,
      'Refuse image files larger than this many MB (10^6 bytes).',
  )
  flags.DEFINE_integer(
      'max_pixels',
      images_lib.DEFAULT_MAX_PIXELS,
      'Refuse images that decode to more pixels than this (JPEGs at the '
      'reduced scale they are decoded at).',
  )
  config_flags.DEFINE_config_file(
      'config', _default_config_path(), 'Config file.', lock_config=True
  )
  flags.mark_flags_as_required(['images', 'labels', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from jal import logs, runtime, workdir  # pylint: disable=g-import-not-at-top,g-multiple-import

  logs.quiet_libraries()
  runtime.configure()
  f = flags.FLAGS
  with logs.one_line_errors('interrupted; rerun the same command'):
    with workdir.claimed(f.workdir):
      entry = session.run(
          f.config,
          f.images,
          f.labels,
          f.workdir,
          query=f.query,
          strategy=f.strategy,
          classes=f.classes,
          skip_unreadable=f.skip_unreadable,
          max_file_mb=f.max_file_mb,
          max_pixels=f.max_pixels,
      )
  sys.stdout.write(entry['summary'])


if __name__ == '__main__':
  _define_flags()
  from jal import logs as _logs  # pylint: disable=g-import-not-at-top

  app.run(main, flags_parser=_logs.parse_flags)
