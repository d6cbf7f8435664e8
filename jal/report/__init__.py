r"""Tables, CSVs and figures for finished (or running) jal workdirs.

    python -m jal.report --workdir=workdirs/gaussian --out=reports/gaussian
    python -m jal.report --workdir=A --workdir=B --out=OUT --ci=bootstrap
    python -m jal.report --verdict --workdir=A --out=OUT   # the verdict table only

Reads `config.json`, `metrics.jsonl` and `selections.jsonl` from each workdir,
groups workdirs by setting (config `name` + `query_size`) and writes into OUT:

  report.md        per setting: the metric at each selection (the shape of the
                   study's Table 3.1), the average improvement over random over
                   all selections (Tables 3.2, 4.1, 4.2) and the area under the
                   learning curve, each with a confidence interval over seeds.
  summary.csv      one row per (setting, strategy, round): mean, lo, hi,
                   n_seeds, n_labeled, and the paired improvement over random.
  improvement.csv  one row per (setting, strategy): the average improvement.
  aulc.csv         one row per (setting, strategy): the normalised AULC.
  study_comparison.csv   when a setting is one of the study's (`jal.study`):
                   one row per compared number, the study's published value
                   beside jal's mean and interval, in the study's units (the
                   `unit` column: pp, % or AP). report.md then has a section
                   "Beside the study" per such setting with the same rows.
  <setting>_curves.png     metric and improvement vs labels (Figs 3.2-4.4).
  <setting>_minority.png   minority fraction of each query (Fig 4.5), when the
                           metrics carry `minority_fraction_queried`.
  <setting>_selections.png queries on the 2-D point cloud (Fig 3.1), when the
                           data is 2-D and `jal.data` can rebuild it.

With --verdict it writes only verdict.md and verdict.csv: the study's table
rows against these workdirs (`verdict`).

CSV values are in the metric's own units (accuracy as a fraction); report.md
shows accuracy in percent. `write_report` does the work and returns the
statistics; `main` (__main__.py) only parses flags. The loop's own results.md
(`results_table`) is written with the same table writer and metric choice.

Modules: loading.py (workdirs -> `Setting`s), analysis.py (a setting's
statistics, and beside the study's numbers), tables.py (report.md,
results.md and the CSVs), plots.py (the PNGs; matplotlib is imported at the
first figure), write.py (`write_report`), verdict.py (the verdict table),
__main__.py (the flags). This package re-exports the names other code uses.
"""

from jal.report.analysis import analyse, compare_with_study, headline_metric, order_strategies
from jal.report.loading import Setting, load_settings
from jal.report.plots import plot_selection_grid, strategy_colours
from jal.report.tables import markdown_table, results_table
from jal.report.write import write_report

__all__ = [
    'Setting',
    'analyse',
    'compare_with_study',
    'headline_metric',
    'load_settings',
    'markdown_table',
    'order_strategies',
    'plot_selection_grid',
    'results_table',
    'strategy_colours',
    'write_report',
]
