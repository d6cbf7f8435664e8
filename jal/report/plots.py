"""The report's figures (matplotlib, imported at the first figure).

  <setting>_curves.png      the metric and the paired improvement over the
                            baseline vs labels (the study's Figs 3.2-4.4).
  <setting>_minority.png    the minority fraction of each query (Fig 4.5).
  <setting>_selections.png  the queries on the 2-D point cloud (Fig 3.1).

Every strategy has one colour in every figure of every report
(`strategy_colours`).
"""

import collections
import importlib
import re

from absl import logging
import numpy as np

from jal.report import analysis
from jal.report import tables

# One colour per strategy, the same in every figure of every report.
_FIXED_COLOURS = {
    'random': '#404040',
    'coreset': '#1f77b4',
    'ensembles': '#d62728',
}
# Other strategies take these in sorted-name order.
_PALETTE = (
    '#2ca02c',
    '#9467bd',
    '#ff7f0e',
    '#8c564b',
    '#e377c2',
    '#17becf',
    '#bcbd22',
    '#7f7f7f',
    '#393b79',
    '#637939',
)

# Pale class colours for the point cloud; orange/red are kept for queries.
_CLASS_COLOURS = (
    '#9ecae1',
    '#a1d99b',
    '#bcbddc',
    '#d9d9d9',
    '#c6dbef',
    '#c7e9c0',
    '#dadaeb',
    '#fdd0a2',
)
_LABELED_COLOUR = '#ff9f1c'
_QUERY_COLOUR = '#d00000'

# Datasets that are never 2-D: do not load them just to find that out.
_IMAGE_DATA = re.compile(r'mnist|cifar|retino|imagenet|svhn', re.IGNORECASE)


def strategy_colours(names) -> dict[str, str]:
  """Fixed colours for known strategies, then the palette in sorted order."""
  colours = {n: _FIXED_COLOURS[n] for n in names if n in _FIXED_COLOURS}
  others = sorted(n for n in set(names) if n not in _FIXED_COLOURS)
  for i, n in enumerate(others):
    colours[n] = _PALETTE[i % len(_PALETTE)]
  return colours


def _improvement_label(metric, baseline):
  """The y label of the improvement panel, in two lines."""
  if metric == 'accuracy':
    return f'Accuracy improvement over {baseline}\n(percentage points)'
  return f'AP improvement over {baseline}\n(difference in AP)'


def _pyplot():
  """matplotlib.pyplot on the Agg backend, imported at the first figure: the
  loop imports `jal.report` for `results_table` only."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _band(ax, x, curve, colour, label, scale=1.0, marker='o'):
  """Plots curve's mean (f[R]) against x (f[R]) on ax, its [lo, hi] shaded where known."""
  x = np.asarray(x, dtype=np.float64)
  mean = np.asarray(curve['mean'], dtype=np.float64) * scale
  lo = np.asarray(curve['lo'], dtype=np.float64) * scale
  hi = np.asarray(curve['hi'], dtype=np.float64) * scale
  ax.plot(x, mean, color=colour, marker=marker, markersize=4, linewidth=2, label=label)
  ok = ~(np.isnan(lo) | np.isnan(hi))
  if np.any(ok):
    ax.fill_between(
        x,
        np.where(ok, lo, mean),
        np.where(ok, hi, mean),
        where=ok,
        color=colour,
        alpha=0.18,
        linewidth=0,
    )


_LEGEND = {'fontsize': 10, 'framealpha': 0.85, 'edgecolor': 'none'}


def _style(ax, xlabel, ylabel):
  """The axis labels, a light grid and no top or right spine."""
  ax.set_xlabel(xlabel, fontsize=11)
  ax.set_ylabel(ylabel, fontsize=11)
  ax.grid(True, alpha=0.3)
  ax.tick_params(labelsize=10)
  for side in ('top', 'right'):
    ax.spines[side].set_visible(False)


def _band_caption(res, ci, confidence):
  """What the line and the shaded band of a figure are, for its title."""
  _, n = tables.seed_sentence(res)
  if n <= 1:
    return 'single seed, no interval'
  method = 'Student-t' if ci == 't' else 'bootstrap'
  return f'mean of {n} seeds, shaded: {100 * confidence:g}% {method} CI'


def plot_curves(res, colours, ci, confidence, path):
  """<setting>_curves.png: `res`'s metric and paired improvement vs labels, at `path`."""
  metric, baseline = res['metric'], res['baseline']
  scale = analysis.metric_scale(metric)
  x = res['n_labeled']
  plt = _pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
  for s in res['strategies']:
    n = len(res['seeds'][s])
    _band(left, x, res['curves'][s], colours[s], f'{s} ({n} seed{"s" if n != 1 else ""})', scale)
  _style(left, 'Number of labeled examples', tables.metric_label(metric))
  left.set_title(tables.metric_label(metric).split(' (')[0] + ' vs labels', fontsize=12)

  right.axhline(
      0.0,
      color=colours.get(baseline, 'k'),
      linestyle='--',
      linewidth=1.5,
      label=f'{baseline} = 0 (baseline, right)',
  )
  for s, e in res['improvement'].items():
    _band(right, x, e['per_round'], colours[s], f'{s} − {baseline}', scale)
  _style(right, 'Number of labeled examples', _improvement_label(metric, baseline))
  right.set_title(f'Paired improvement over {baseline} (same seed and round)', fontsize=12)
  for ax in (left, right):
    if len(x) <= 8:
      ax.set_xticks(x)
    span = (x[-1] - x[0]) or 1
    ax.set_xlim(x[0] - 0.03 * span, x[-1] + 0.03 * span)
  # One legend for both panels, below them, so it never covers a curve.
  handles, labels = left.get_legend_handles_labels()
  extra_h, extra_l = right.get_legend_handles_labels()
  handles.append(extra_h[0])
  labels.append(extra_l[0])
  ncol = min(len(handles), 6)
  rows = -(-len(handles) // ncol)
  fig.legend(handles, labels, loc='lower center', ncol=ncol, **_LEGEND)
  fig.suptitle(f'{res["title"]}: {_band_caption(res, ci, confidence)}', fontsize=13)
  fig.tight_layout(rect=(0, 0.045 + 0.05 * rows, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_minority(res, colours, ci, confidence, path):
  """<setting>_minority.png: the minority fraction of each query vs labels, at `path`."""
  keep = [j for j, r in enumerate(res['rounds']) if r > 0]
  x = [res['n_labeled'][j] for j in keep]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for s in res['strategies']:
    c = res['minority_fraction'][s]
    curve = {k: [c[k][j] for j in keep] for k in ('mean', 'lo', 'hi')}
    _band(ax, x, curve, colours[s], s)
  _style(
      ax,
      'Number of labeled examples after the selection',
      'Minority-class fraction of queried labels',
  )
  ax.set_ylim(bottom=0)
  if len(x) <= 8:
    ax.set_xticks(x)
  ax.legend(**_LEGEND)
  ax.set_title(
      f'{res["title"]}: minority class queried\n({_band_caption(res, ci, confidence)})',
      fontsize=12,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_selection_grid(x, y, selections, n_labeled, colours, title, path, max_columns=6):
  """Queries on a 2-D point cloud, one row per strategy (the study's Fig 3.1).

  Args:
    x: f[n, 2], the training pool.
    y: i[n], its labels.
    selections: dict strategy -> dict round -> i[k] indices into x; round 0
      holds the warmup set.
    n_labeled: dict round -> labels after that round (for column titles).
    colours: dict strategy -> colour (row labels).
    title: figure title.
    path: where the PNG goes.
    max_columns: at most this many selections, evenly spaced, are drawn.
  """
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y)
  strategies = list(selections)
  rounds = sorted({r for s in strategies for r in selections[s] if r > 0})
  if len(rounds) > max_columns:
    rounds = [rounds[int(round(i))] for i in np.linspace(0, len(rounds) - 1, max_columns)]
  n_rows, n_cols = len(strategies), len(rounds)
  plt = _pyplot()
  from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(
      n_rows, n_cols, figsize=(3.2 * n_cols + 0.6, 3.0 * n_rows + 0.9), squeeze=False
  )
  pad = 0.04 * (x.max(axis=0) - x.min(axis=0))
  lims = np.stack([x.min(axis=0) - pad, x.max(axis=0) + pad])
  classes = np.unique(y)
  palette = np.array(_CLASS_COLOURS)
  point_colours = palette[np.searchsorted(classes, y) % len(palette)]
  # A fixed shuffle, so no class is drawn over the other where they overlap.
  order = np.random.default_rng(0).permutation(len(x))
  for i, s in enumerate(strategies):
    for j, r in enumerate(rounds):
      ax = axes[i, j]
      ax.scatter(
          x[order, 0], x[order, 1], s=3, c=point_colours[order], linewidths=0, rasterized=True
      )
      before = [idx for q, idx in selections[s].items() if q < r]
      before = np.concatenate(before).astype(int) if before else np.zeros(0, int)
      now = np.asarray(selections[s].get(r, []), dtype=int)
      ax.scatter(x[before, 0], x[before, 1], s=18, color=_LABELED_COLOUR, edgecolors='none')
      ax.scatter(
          x[now, 0], x[now, 1], s=42, color=_QUERY_COLOUR, edgecolors='black', linewidths=0.6
      )
      ax.set_xlim(lims[:, 0])
      ax.set_ylim(lims[:, 1])
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        n = n_labeled.get(r)
        ax.set_title(f'Selection {r}' + (f' (n={n})' if n else ''), fontsize=11)
      if j == 0:
        ax.set_ylabel(s, fontsize=13, fontweight='bold', color=colours.get(s, 'k'))
  handles = [
      mlines.Line2D(
          [],
          [],
          linestyle='',
          marker='o',
          markersize=6,
          color=_CLASS_COLOURS[k % len(_CLASS_COLOURS)],
          label=f'class {c}',
      )
      for k, c in enumerate(classes)
  ] + [
      mlines.Line2D(
          [],
          [],
          linestyle='',
          marker='o',
          markersize=6,
          color=_LABELED_COLOUR,
          label='labeled so far',
      ),
      mlines.Line2D(
          [],
          [],
          linestyle='',
          marker='o',
          markersize=8,
          color=_QUERY_COLOUR,
          markeredgecolor='black',
          label='queried this round',
      ),
  ]
  fig.legend(handles=handles, loc='lower center', ncol=len(handles), frameon=False, fontsize=10)
  fig.suptitle(title, fontsize=13)
  fig.tight_layout(rect=(0, 0.06, 1, 0.97))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _load_points(config):
  """(x_train f[n, 2], y_train i[n]) via jal.data, or None with a log line."""
  data = config.get('data') or {}
  if _IMAGE_DATA.search(str(data.get('name', ''))):
    return None
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top

    jal_data = importlib.import_module('jal.data')
    ds = jal_data.load_dataset(
        ml_collections.ConfigDict(data), data_dir=config.get('data_dir'), seed=config.get('seed', 0)
    )
  except Exception as e:  # pylint: disable=broad-except
    logging.info(
        'selection figure skipped: could not load %s via jal.data (%s: %s)',
        data.get('name'),
        type(e).__name__,
        e,
    )
    return None
  x = np.asarray(ds.x_train)
  if x.ndim != 2 or x.shape[1] != 2:
    logging.info(
        'selection figure skipped: data %s is not 2-D (x_train %s)', data.get('name'), x.shape
    )
    return None
  return x, np.asarray(ds.y_train)


def selection_figure(setting, res, colours, path) -> bool:
  """<setting>_selections.png at `path`: the lowest seed every strategy ran
  (else each strategy's lowest), queries of each selection.

  False (and nothing written) when the setting has no selections, its data
  is not 2-D or cannot be rebuilt by `jal.data`, or the indices exceed it.
  """
  if not setting.selections:
    return False
  by_strategy = collections.defaultdict(dict)
  for (s, seed, r), (idx, _) in setting.selections.items():
    by_strategy[s].setdefault(seed, {})[r] = np.asarray(idx, dtype=int)
  common = set.intersection(*(set(v) for v in by_strategy.values()))
  seed = min(common) if common else None
  points = _load_points(setting.config)
  if points is None:
    return False
  x, y = points
  selections = {}
  for s in analysis.order_strategies(by_strategy, res['baseline']):
    own = seed if seed is not None else min(by_strategy[s])
    selections[s] = by_strategy[s][own]
    top = max(int(np.max(v, initial=-1)) for v in selections[s].values())
    if top >= len(x):
      logging.warning('selection figure skipped: indices exceed the pool of %d points', len(x))
      return False
  plot_selection_grid(
      x,
      y,
      selections,
      dict(zip(res['rounds'], res['n_labeled'])),
      colours,
      f'{res["title"]}: queries at each selection (seed '
      f'{seed if seed is not None else "first per strategy"})',
      path,
  )
  return True
