"""`python -m jal.report`: the report's flags and `main`.

The flags are defined only when this runs as a program, so importing
`jal.report` next to other entry points (jal.main also has --workdir) never
clashes. `--help` prints the package's docstring, which says what the report
holds.
"""

import os

from absl import app
from absl import flags

from jal import logs
from jal import report
from jal.report import analysis
from jal.report import verdict


def _define_flags():
  flags.DEFINE_multi_string('workdir', None, 'jal workdir(s) to report on.')
  flags.DEFINE_string('out', None, 'Directory for report.md, CSVs and PNGs.')
  flags.DEFINE_enum(
      'metric',
      None,
      list(analysis.METRICS),
      'Headline metric; default average_precision if present.',
  )
  flags.DEFINE_string('baseline', 'random', 'Strategy improvements are over.')
  flags.DEFINE_enum('ci', 't', ['t', 'bootstrap'], 'Interval over seeds.')
  flags.DEFINE_float('confidence', 0.95, 'Two-sided interval coverage.')
  flags.DEFINE_bool(
      'verdict',
      False,
      'Write only verdict.md and verdict.csv '
      "(jal.report.verdict): the study's table rows against these workdirs "
      '(LABEL=PATH keeps a workdir apart from others of its setting); '
      't intervals.',
  )
  flags.DEFINE_multi_string(
      'verdict_into',
      None,
      'With --verdict: files whose <!-- verdict:start/end --> section gets verdict.md.',
  )
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  """Writes the report (or with --verdict only the verdict) and prints its path."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if f.verdict:
    with logs.one_line_errors('interrupted'):
      v = verdict.write_verdict(f.workdir, f.out, confidence=f.confidence)
      for path in f.verdict_into or ():
        verdict.update_marked(path, v['markdown'])
    print(f'Verdict: {v["files"][0]}')
    return
  with logs.one_line_errors('interrupted'):
    for workdir in f.workdir:
      if not os.path.isdir(workdir):
        raise FileNotFoundError(f'no such workdir: {workdir}')
    written = report.write_report(
        f.workdir, f.out, metric=f.metric, baseline=f.baseline, ci=f.ci, confidence=f.confidence
    )
  print(f'Report: {written["files"][0]}')


if __name__ == '__main__':
  __doc__ = report.__doc__  # absl's --help prints the __main__ module's docstring
  _define_flags()
  app.run(main, flags_parser=logs.parse_flags)
