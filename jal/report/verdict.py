r"""The study's claims, row by row, against jal's runs: the verdict table.

    python -m jal.report --verdict --workdir=results/gaussian \
        --workdir=results/mnist_low_10 --workdir=h200-bfloat16=results/mnist_low \
        --out=results/verdict --verdict_into=results/README.md

One row per (setting, strategy) of the study's Tables 3.1 (the improvement
derived from its per-selection accuracies), 3.2, 4.1 and 4.2 (`jal.study`):
the study's average improvement over random over all selections beside
jal's, which is `jal.report.analyse`'s: per seed, the mean over all
selections of (strategy − random) at the same seed and round; then the mean
over seeds, its 95% Student-t interval and the paired t-test of strategy
against random (`stats.paired_t_pvalue` on those per-seed values).

Verdict rule:
  inconclusive  jal's interval contains 0, or there is none (one seed);
  agrees        the interval lies on the side of 0 of the study's value;
  disagrees     it lies on the other side;
  not run here  no given workdir holds the setting (the reason is
                `SETTINGS[setting].why_not_run`), or its runs give no
                paired improvement (the reason says why).
With the t interval, inconclusive is exactly p >= 1 − confidence.

Settings in the workdirs that are not the study's go under "Beyond the
study", beside the study row they relate to (`related_setting`) and with
their departure (`departs`). The workdirs given as one `--workdir` each are
grouped by setting as `jal.report` does; `LABEL=PATH` puts a workdir in its
own group LABEL, so independent runs of one setting (another machine, another
precision) get rows of their own instead of clashing.

`write_verdict` writes verdict.md and verdict.csv; `update_marked` copies
verdict.md between `<!-- verdict:start -->` and `<!-- verdict:end -->` in a
README, so the tables there are only ever generated.
"""

import csv
import math
import os
import re
from typing import NamedTuple, Optional

from jal import stats
from jal import study
from jal.report import analysis
from jal.report import loading

START, END = '<!-- verdict:start -->', '<!-- verdict:end -->'


class Shape(NamedTuple):
  """What `jal.label.advise` needs to place a study setting in a regime, and why it
  has not run here (None: nothing stops it; it simply was not given)."""

  num_classes: int
  imbalanced: bool
  pretrained: bool
  why_not_run: Optional[str]


_NO_GPU = (
    'ResNet-18 on CIFAR-10 takes hours per round on the 2-core CPU '
    '(results/imbalance_resnet18_cpu_round0) and no accelerator is lent; '
    '`python -m launch.accelerator` runs it on one'
)
_NO_C100 = 'CIFAR-100 data not available here'
_NO_WEIGHTS = 'no ImageNet ResNet-18 weights here'

SETTINGS = {
    'gaussian': Shape(2, False, False, None),
    'mnist_low': Shape(10, False, False, None),
    'mnist_high': Shape(10, False, False, None),
    'cifar10_2class_low': Shape(2, False, False, _NO_GPU),
    'cifar10_2class_high': Shape(2, False, False, _NO_GPU),
    'cifar100_low': Shape(100, False, False, _NO_C100),
    'cifar100_high': Shape(100, False, False, _NO_C100),
    'cifar100_low_pretrained': Shape(100, False, True, f'{_NO_C100}; {_NO_WEIGHTS}'),
    'cifar100_high_pretrained': Shape(100, False, True, f'{_NO_C100}; {_NO_WEIGHTS}'),
    'cifar100_high_warmup_low': Shape(100, False, False, _NO_C100),
    'cifar100_high_warmup_high': Shape(100, False, False, _NO_C100),
    'imbalance': Shape(2, True, False, _NO_GPU),
    'imbalance_pretrained': Shape(2, True, True, _NO_WEIGHTS),
    'retinopathy': Shape(
        2, True, True, f'diabetic retinopathy data not available here; {_NO_WEIGHTS}'
    ),
}

COLUMNS = (
    'section',
    'table',
    'study_row',
    'setting',
    'run',
    'strategy',
    'metric',
    'unit',
    'study_value',
    'jal_mean',
    'jal_lo',
    'jal_hi',
    'n_seeds',
    'seeds',
    'p_value',
    'verdict',
    'reason',
    'related_setting',
    'departs',
    'query_size',
    'num_classes',
    'imbalanced',
    'pretrained',
    'workdirs',
)
TEST = 'paired t-test (two-sided) of strategy vs random, paired by seed'


# ----------------------------------------------------------------------------
# The rule.


def verdict(study_value: Optional[float], lo: float, hi: float) -> str:
  """'agrees' | 'disagrees' | 'inconclusive'; without a study value, 'beats
  random' | 'loses to random' | 'inconclusive' (jal-only rows)."""
  if math.isnan(lo) or math.isnan(hi) or lo <= 0 <= hi:
    return 'inconclusive'
  if study_value is None:
    return 'beats random' if lo > 0 else 'loses to random'
  return 'agrees' if (lo > 0) == (study_value > 0) else 'disagrees'


def related_setting(name: str) -> Optional[str]:
  """The longest study setting named inside `name` as whole `_` parts
  ('mnist_imbalance_digit3' -> 'imbalance', 'mnist_low_smoke' -> 'mnist_low')."""
  hits = [s for s in study.SETTINGS if re.search(rf'(^|_){re.escape(s)}(_|$)', name)]
  return max(hits, key=len) if hits else None


# ----------------------------------------------------------------------------
# Rows.


def split_label(spec: str) -> tuple[str, str]:
  """'LABEL=PATH' -> (LABEL, PATH); an existing path or one without a label -> ('', spec)."""
  m = re.fullmatch(r'([A-Za-z0-9_.-]+)=(.+)', spec)
  if m is None or os.path.exists(spec):
    return '', spec
  return m.group(1), m.group(2)


def _groups(specs):
  """[(label, loading.Setting)] for the workdirs, grouped by label, then by setting."""
  by_label = {}
  for spec in specs:
    label, path = split_label(os.fspath(spec))
    if not os.path.isdir(path):
      raise FileNotFoundError(f'no such workdir: {path}')
    by_label.setdefault(label, []).append(path)
  return [(label, s) for label, paths in by_label.items() for s in loading.load_settings(paths)]


def _empty(section, setting, strategy, run=''):
  return {c: '' for c in COLUMNS} | {
      'section': section,
      'setting': setting,
      'strategy': strategy,
      'run': run,
      'n_seeds': 0,
      'jal_mean': math.nan,
      'jal_lo': math.nan,
      'jal_hi': math.nan,
      'p_value': math.nan,
  }


def _measure(row, setting, metric, confidence):
  """Fills row's jal columns from `analysis.analyse`; returns the analysis or None."""
  row['workdirs'] = ' '.join(setting.workdirs)
  try:
    res = analysis.analyse(setting, metric, study.BASELINE, 't', confidence, {})
  except ValueError as e:
    row.update(verdict='not run here', reason=str(e))
    return None
  imp = res['improvement'].get(row['strategy'])
  scale = 100.0 if res['metric'] == 'accuracy' else 1.0
  row.update(metric=res['metric'], unit='pp' if res['metric'] == 'accuracy' else 'AP')
  if not imp or imp['n'] == 0:
    why = [n for n in res['notes'] if n.startswith((f'{row["strategy"]}:', 'No ', 'Need '))]
    if row['strategy'] and row['strategy'] not in res['strategies']:
      why.insert(0, f'{row["strategy"]} was not run in {row["workdirs"]}')
    row.update(verdict='not run here', reason=' '.join(why) or 'no paired improvement')
    return res
  row.update(
      jal_mean=imp['mean'] * scale,
      jal_lo=imp['lo'] * scale,
      jal_hi=imp['hi'] * scale,
      n_seeds=imp['n'],
      seeds=' '.join(map(str, imp['seeds'])),
      p_value=stats.paired_t_pvalue(imp['per_seed']),
  )
  return res


def _study_row(name, strategy, label, setting, confidence):
  numbers, shape = study.lookup(name), SETTINGS[name]
  table, _, where = numbers.improvement_label.partition(', ')
  row = _empty('study', name, strategy, label)
  row.update(
      table=table,
      study_row=where,
      metric=numbers.metric,
      unit=numbers.unit,
      study_value=numbers.improvement[strategy],
      query_size=numbers.query_size,
      num_classes=shape.num_classes,
      imbalanced=shape.imbalanced,
      pretrained=shape.pretrained,
  )
  if setting is None:
    row.update(
        verdict='not run here', reason=shape.why_not_run or 'no given workdir holds this setting'
    )
    return row
  res = _measure(row, setting, numbers.metric, confidence)
  if res is None or row['verdict']:
    return row
  row['verdict'] = verdict(row['study_value'], row['jal_lo'], row['jal_hi'])
  comparison = analysis.compare_with_study(res, 't', confidence)
  mine = [n for n in res['notes'] if n.startswith(f'{strategy}:')]
  row['reason'] = ' '.join([n[0].upper() + n[1:] for n in comparison['notes']] + mine)
  return row


def _beyond_rows(label, setting, confidence):
  from jal.label import evidence  # pylint: disable=g-import-not-at-top

  related = related_setting(setting.name)
  numbers = study.lookup(related) if related else None
  feats = evidence.setting_features(setting.workdirs[0]) or {}
  rows = []
  try:
    strategies = list(
        analysis.analyse(setting, None, study.BASELINE, 't', confidence, {})['improvement']
    ) or ['']
  except ValueError:
    strategies = ['']  # _measure says why
  departs = loading.departs(setting.name, setting.config)  # one config docstring per setting
  for strategy in strategies:
    row = _empty('beyond', setting.name, strategy, label)
    row.update(
        query_size=setting.query_size,
        related_setting=related or '',
        departs=departs,
        num_classes=feats.get('num_classes', ''),
        imbalanced=feats.get('imbalance_ratio', 1.0) >= evidence.IMBALANCE_RATIO,
        pretrained=feats.get('pretrained', ''),
    )
    if numbers:
      table, _, where = numbers.improvement_label.partition(', ')
      row.update(table=table, study_row=where, study_value=numbers.improvement.get(strategy, ''))
    _measure(row, setting, None, confidence)
    if numbers and row['metric'] and row['metric'] != numbers.metric:
      row['study_value'] = ''  # another metric: no value to set beside jal's
    if not row['verdict']:
      value = row['study_value'] if row['study_value'] != '' else None
      row['verdict'] = verdict(value, row['jal_lo'], row['jal_hi'])
    rows.append(row)
  return rows


def verdict_rows(workdirs, confidence=0.95) -> list[dict]:
  """The rows of verdict.csv: every study (setting, strategy), then the rest.

  Args:
    workdirs: paths (or 'LABEL=PATH') of jal workdirs; grouped by label, then
      by setting (config name + query size) as `jal.report` groups them.
    confidence: of jal's intervals.

  Returns:
    dicts with the keys `COLUMNS`; jal's values in the study's units (pp or
    AP), nan where not run.
  """
  groups = _groups(workdirs)
  rows = []
  for name in study.SETTINGS:
    found = [(label, s) for label, s in groups if s.name == name] or [('', None)]
    for strategy in study.lookup(name).improvement:
      rows += [_study_row(name, strategy, label, s, confidence) for label, s in found]
  for label, s in groups:
    if study.lookup(s.name) is None:
      rows += _beyond_rows(label, s, confidence)
  return rows


# ----------------------------------------------------------------------------
# Text.


def format_value(v, unit: str) -> str:
  """A signed value as the verdict table prints it: 3 decimals in pp, else 4; '–' if none."""
  if v == '' or v is None or math.isnan(v):
    return '–'
  return f'{v:+.{3 if unit == "pp" else 4}f}'


def _jal_cell(row):
  n, unit = row['n_seeds'], row['unit']
  if not n:
    return '–'
  if n < 2:
    return f'{format_value(row["jal_mean"], unit)} {unit} (no interval)'
  return (
      f'{format_value(row["jal_mean"], unit)} [{format_value(row["jal_lo"], unit)}, '
      f'{format_value(row["jal_hi"], unit)}] {unit}'
  )


def _where(row):
  return row['study_row'] + (f' (run `{row["run"]}`)' if row['run'] else '')


def markdown(rows, confidence=0.95) -> str:
  """verdict.md: a caption, the study's rows, then those beyond the study."""
  pct = f'{100 * confidence:g}%'
  out = [
      f"**Verdict: the study's claims tested here.** Generated by `python -m jal.report "
      '--verdict` (command in results/README.md); do not edit. One row per row of the '
      "study's Tables 3.1 (its improvement derived from the per-selection accuracies), "
      "3.2, 4.1 and 4.2. *Study*: the study's average improvement of the strategy over "
      'random over all selections (means of 3 seeds, no interval published), in '
      'percentage points of accuracy (pp) or in minority-class average precision (AP). '
      f"*jal*: the mean over seeds of each seed's average over all selections of "
      f'(strategy − random) at the same seed and round, with its {pct} Student-t interval '
      f'over seeds. *p*: {TEST}, on those per-seed averages (`jal.stats.paired_t_pvalue`). '
      f"*Verdict*: **inconclusive** when jal's interval contains 0 (or there is none: "
      f'one seed), i.e. p ≥ {1 - confidence:.2g}; else **agrees** when the interval lies '
      "on the side of 0 of the study's value, **disagrees** when on the other; **not run "
      'here** when no results folder holds the setting, with the reason.',
      '',
      '| Table | Study row | Strategy | Study | jal mean '
      f'[{pct} CI] | Seeds | p | Verdict | Why / notes |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    if r['section'] == 'study':
      out.append(
          f'| {r["table"]} | {_where(r)} | {r["strategy"]} | '
          f'{format_value(r["study_value"], r["unit"])} {r["unit"]} | {_jal_cell(r)} | '
          f'{r["n_seeds"]} | {stats.format_p(r["p_value"])} | **{r["verdict"]}** | {r["reason"]} |'
      )
  beyond = [r for r in rows if r['section'] == 'beyond']
  if beyond:
    out += [
        '',
        '**Beyond the study.** Settings in the results folders that are not the '
        "study's, beside the study row they relate to (their name contains it) and "
        "with how they depart from it (the config's docstring or `departs` note). The "
        "same rule against that row's value; a strategy the study did not run "
        '**beats random** or **loses to random** when its interval excludes 0.',
        '',
        '| Setting | Relates to | Strategy | Study (that row) | jal mean '
        f'[{pct} CI] | Seeds | p | Verdict | Departs |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in beyond:
      related = f'{r["table"]}, {r["study_row"]}' if r['table'] else '–'
      name = r['setting'] + (f' (run `{r["run"]}`)' if r['run'] else '')
      study_cell = (
          f'{format_value(r["study_value"], r["unit"])} {r["unit"]}'
          if r['study_value'] != ''
          else '–'
      )
      verdict_cell = f'**{r["verdict"]}**' + (f': {r["reason"]}' if r['reason'] else '')
      out.append(
          f'| {name} | {related} | {r["strategy"]} | {study_cell} | {_jal_cell(r)} | '
          f'{r["n_seeds"]} | {stats.format_p(r["p_value"])} | {verdict_cell} | {r["departs"]} |'
      )
  runs = {}
  for r in rows:
    if r['workdirs']:
      runs[r['setting'] + (f' (run `{r["run"]}`)' if r['run'] else '')] = r['workdirs']
  if runs:
    out += ['', 'Workdirs: ' + '; '.join(f'{k}: `{v}`' for k, v in runs.items()) + '.']
  return '\n'.join(out) + '\n'


def _csv_value(v):
  if isinstance(v, bool):
    return 'yes' if v else 'no'
  if isinstance(v, float) and math.isnan(v):
    return ''
  return v


def write_verdict(workdirs, out, confidence=0.95) -> dict:
  """Writes verdict.md and verdict.csv into `out`; returns rows, markdown, files."""
  rows = verdict_rows(workdirs, confidence)
  text = markdown(rows, confidence)
  os.makedirs(out, exist_ok=True)
  md_path, csv_path = os.path.join(out, 'verdict.md'), os.path.join(out, 'verdict.csv')
  with open(md_path, 'w') as f:
    f.write(text)
  with open(csv_path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(COLUMNS)
    for row in rows:
      w.writerow([_csv_value(row[c]) for c in COLUMNS])
  return {'rows': rows, 'markdown': text, 'files': [md_path, csv_path]}


def update_marked(path: str, text: str) -> None:
  """Replaces what lies between the verdict markers in `path` with `text`."""
  with open(path) as f:
    old = f.read()
  i, j = old.find(START), old.find(END)
  if i < 0 or j < i:
    raise ValueError(f'{path}: no {START} ... {END} section to regenerate')
  with open(path, 'w') as f:
    f.write(old[: i + len(START)] + '\n' + text.rstrip('\n') + '\n' + old[j:])
