"""Statistics over seeds for active learning curves: intervals and paired gains.

    from jal import stats
    mean, lo, hi = stats.t_interval(np.array([1., 2., 3.]))  # 2, -.484, 4.484
    diff = stats.paired_improvement({'random': r, 'ensembles': e})['ensembles']
    gain = stats.average_improvement(diff)          # f[s], as in Table 3.2
    stats.summarize(gain)                           # mean, CI, excludes_zero

Everything here works on small numpy arrays (seeds x rounds). Shapes use
`s` for seeds and `r` for rounds, with round 0 the warmup (before any query)
and rounds 1..R the selections. NaN marks a missing value (a seed that has not
reached a round yet); the interval functions drop NaNs and count what is left.

The distributions, the Wilson interval, the bootstrap and the trapezoid rule
are scipy's and numpy's; this module fixes their conventions (NaN seeds, too
few values, the report's percentile bootstrap).
"""

import math

import numpy as np

_CI_METHODS = ('t', 'bootstrap')


def _scipy_stats():
  """scipy.stats, imported at first use: the loop imports jal.report for its
  results.md table, and with it this module, without needing SciPy."""
  import scipy.stats  # pylint: disable=g-import-not-at-top

  return scipy.stats


# ----------------------------------------------------------------------------
# Student t distribution.


def t_cdf(t, df):
  """P(T <= t) for Student's t with `df` degrees of freedom (scalars; scipy's)."""
  if df <= 0:
    raise ValueError(f't_cdf: df must be positive, got {df}')
  return float(_scipy_stats().t.cdf(t, df))


def t_quantile(p, df):
  """The p-quantile of Student's t with `df` degrees of freedom (scalar).

  `scipy.stats.t.ppf`, with errors for arguments it would answer with NaN.
  E.g. t_quantile(0.975, 2) = 4.302653, t_quantile(0.975, 4) = 2.776445.
  """
  if not 0.0 < p < 1.0:
    raise ValueError(f't_quantile: p must be in (0, 1), got {p}')
  if df <= 0:
    raise ValueError(f't_quantile: df must be positive, got {df}')
  return float(_scipy_stats().t.ppf(p, df))


# ----------------------------------------------------------------------------
# Intervals over seeds.


def _finite_1d(x, name):
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f'{name}: expected a 1-D array over seeds, got shape {x.shape}')
  return x[~np.isnan(x)]


def t_interval(x, confidence=0.95):
  """Student-t confidence interval for the mean over seeds.

  Args:
    x: f[s], one value per seed; NaNs (missing seeds) are dropped.
    confidence: two-sided coverage, e.g. 0.95.

  Returns:
    (mean, lo, hi) as floats: mean ± t_{(1+c)/2, n-1} * sd / sqrt(n), with
    sd the sample standard deviation (ddof=1). With one value lo = hi = nan;
    with none all three are nan.
  """
  x = _finite_1d(x, 't_interval')
  n = x.size
  if n == 0:
    return math.nan, math.nan, math.nan
  mean = float(np.mean(x))
  if n == 1:
    return mean, math.nan, math.nan
  half = t_quantile(0.5 * (1.0 + confidence), n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
  return mean, mean - half, mean + half


def wilson_interval(successes, trials, confidence=0.95):
  """Wilson score interval for a binomial proportion (e.g. an accuracy).

  Unlike the normal approximation it stays inside [0, 1] and is not empty at
  0 or `trials` successes, so it suits small held-out sets. E.g. 45 of 50:
  (0.9, 0.7864, 0.9565). Without continuity correction (scipy's
  `binomtest(...).proportion_ci(method='wilson')`); lo is exactly 0 at 0
  successes and hi exactly 1 at `trials`.

  Args:
    successes: k, an int in [0, trials].
    trials: n >= 0.
    confidence: two-sided coverage.

  Returns:
    (k / n, lo, hi) as floats; all nan when n is 0.
  """
  if trials < 0 or not 0 <= successes <= trials:
    raise ValueError(f'wilson_interval: need 0 <= successes <= trials, got {successes} of {trials}')
  if trials == 0:
    return math.nan, math.nan, math.nan
  ci = (
      _scipy_stats()
      .binomtest(int(successes), int(trials))
      .proportion_ci(confidence_level=confidence, method='wilson')
  )
  return successes / trials, max(0.0, float(ci.low)), min(1.0, float(ci.high))


def bootstrap_interval(x, confidence=0.95, num_resamples=10000, seed=0):
  """Percentile bootstrap interval for the mean over seeds.

  `scipy.stats.bootstrap(method='percentile')`: the 100 * (1 - c) / 2 and
  100 * (1 + c) / 2 percentiles (linearly interpolated) of the resample means.
  Deterministic for a given `seed`. With few seeds (3) there are only a
  handful of distinct resamples and the interval is too narrow; prefer
  `t_interval` there. (BCa is no cure: it only shifts which percentiles are
  taken, for bias and skew, and so stays inside the same few resample means.)

  Args:
    x: f[s]; NaNs are dropped.
    confidence: two-sided coverage.
    num_resamples: number of bootstrap resamples (with replacement, size s).
    seed: seed of the numpy Generator drawing the resamples.

  Returns:
    (mean, lo, hi) as floats; the mean is that of `x` itself. With one value
    lo = hi = nan; with none all three are nan.
  """
  x = _finite_1d(x, 'bootstrap_interval')
  n = x.size
  if n == 0:
    return math.nan, math.nan, math.nan
  mean = float(np.mean(x))
  if n == 1:
    return mean, math.nan, math.nan
  res = _scipy_stats().bootstrap(
      (x,),
      np.mean,
      n_resamples=num_resamples,
      confidence_level=confidence,
      method='percentile',
      rng=np.random.default_rng(seed),
  )
  return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def interval(x, confidence=0.95, method='t', **kwargs):
  """`t_interval` or `bootstrap_interval` by name ('t' | 'bootstrap')."""
  if method == 't':
    return t_interval(x, confidence)
  if method == 'bootstrap':
    return bootstrap_interval(x, confidence, **kwargs)
  raise ValueError(f'unknown CI method {method!r}; choose from {_CI_METHODS}')


def interval_per_round(values, confidence=0.95, method='t', **kwargs):
  """Intervals for every column of a seeds x rounds array.

  Args:
    values: f[s, r]; NaN = missing.

  Returns:
    (mean, lo, hi, n) each f[r] (n is i[r], the non-NaN seeds per round).
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 2:
    raise ValueError(f'interval_per_round: expected f[s, r], got shape {values.shape}')
  out = np.array(
      [interval(values[:, j], confidence, method, **kwargs) for j in range(values.shape[1])]
  ).reshape(-1, 3)
  n = np.sum(~np.isnan(values), axis=0)
  return out[:, 0], out[:, 1], out[:, 2], n


def summarize(x, confidence=0.95, method='t', **kwargs):
  """Mean, interval and whether it excludes zero, for a statistic per seed.

  Args:
    x: f[s], e.g. the output of `average_improvement`.

  Returns:
    dict with mean, lo, hi, half_width ((hi - lo) / 2), n (seeds used),
    excludes_zero (bool: lo > 0 or hi < 0; False when there is no interval),
    confidence and method.
  """
  mean, lo, hi = interval(x, confidence, method, **kwargs)
  has_ci = not (math.isnan(lo) or math.isnan(hi))
  return {
      'mean': mean,
      'lo': lo,
      'hi': hi,
      'half_width': 0.5 * (hi - lo) if has_ci else math.nan,
      'n': int(np.sum(~np.isnan(np.asarray(x, dtype=np.float64)))),
      'excludes_zero': bool(has_ci and (lo > 0 or hi < 0)),
      'confidence': confidence,
      'method': method,
  }


def paired_t_pvalue(diff):
  """Two-sided p-value of the paired t-test of mean difference 0 over seeds.

  On per-seed differences (strategy − baseline at the same seed, e.g.
  `average_improvement` of `paired_improvement`) the paired t-test is the
  one-sample t-test of the differences (`scipy.stats.ttest_1samp`), so
  p < 1 − c exactly when `t_interval(diff, c)` excludes 0. With 2 degrees of
  freedom p = 1 − |t| / sqrt(2 + t²).

  Args:
    diff: f[s]; NaNs are dropped.

  Returns:
    float p; nan with fewer than 2 values or when all differences are equal.
  """
  x = _finite_1d(diff, 'paired_t_pvalue')
  if x.size < 2 or np.all(x == x[0]):
    return math.nan
  return float(_scipy_stats().ttest_1samp(x, 0.0).pvalue)


def format_p(p: float) -> str:
  """A p-value as tables print it: '<0.001' below 0.001, '–' for nan, else 3 decimals."""
  return '–' if math.isnan(p) else '<0.001' if p < 0.001 else f'{p:.3f}'


# ----------------------------------------------------------------------------
# Paired comparisons and curve summaries.


def paired_improvement(curves, baseline='random', seeds=None):
  """Per-seed difference of each strategy's curve to the baseline's.

  The difference is taken at the same seed and round, so the seed-to-seed
  variation shared by both strategies (warmup set, test split) cancels.

  Args:
    curves: dict strategy -> f[s, r]; must contain `baseline`.
    baseline: the strategy subtracted.
    seeds: optional dict strategy -> i[s], the seed of each row. When given,
      rows are aligned by seed and every strategy must have exactly the
      baseline's seeds. When omitted, row i of each array is taken to be the
      same seed, so the shapes must match.

  Returns:
    dict strategy -> f[s, r] (strategy minus baseline), for every strategy but
    the baseline; rows are in sorted-seed order when `seeds` is given.

  Raises:
    ValueError: a one-line message if the baseline is missing, the seeds
      differ, or the number of rounds differs.
  """
  if baseline not in curves:
    raise ValueError(
        f'paired_improvement: baseline {baseline!r} not among strategies {sorted(curves)}'
    )

  def aligned(name):
    values = np.asarray(curves[name], dtype=np.float64)
    if values.ndim != 2:
      raise ValueError(f'paired_improvement: {name!r} must be f[s, r], got shape {values.shape}')
    if seeds is None:
      return values, None
    s = np.asarray(seeds[name])
    if s.shape != (values.shape[0],):
      raise ValueError(
          f'paired_improvement: {name!r} has {values.shape[0]} rows but {s.size} seeds'
      )
    order = np.argsort(s, kind='stable')
    return values[order], s[order]

  base, base_seeds = aligned(baseline)
  out = {}
  for name in curves:
    if name == baseline:
      continue
    values, own_seeds = aligned(name)
    if seeds is not None and not np.array_equal(own_seeds, base_seeds):
      raise ValueError(
          f'paired_improvement: {name!r} has seeds '
          f'{own_seeds.tolist()} but baseline {baseline!r} has '
          f'{base_seeds.tolist()}; pair runs on the same seeds'
      )
    if values.shape[0] != base.shape[0]:
      raise ValueError(
          f'paired_improvement: {name!r} has {values.shape[0]} '
          f'seeds but baseline {baseline!r} has {base.shape[0]}; '
          f'pair runs on the same seeds'
      )
    if values.shape[1] != base.shape[1]:
      raise ValueError(
          f'paired_improvement: {name!r} has {values.shape[1]} '
          f'rounds but baseline {baseline!r} has {base.shape[1]}'
      )
    out[name] = values - base
  return out


def average_improvement(diff, skip_warmup=True):
  """Mean improvement over all selections, per seed (Tables 3.2, 4.1, 4.2).

  Args:
    diff: f[..., r], e.g. f[s, r] from `paired_improvement`; column 0 is the
      warmup round.
    skip_warmup: average over rounds 1..R only (the selections); the warmup
      round is identical for all strategies at a seed, so including it only
      shrinks the statistic towards 0.

  Returns:
    f[...], e.g. f[s]: one average per seed.
  """
  diff = np.asarray(diff, dtype=np.float64)
  cols = diff[..., 1:] if skip_warmup else diff
  if cols.shape[-1] == 0:
    raise ValueError(
        'average_improvement: no selection rounds to average '
        f'(shape {diff.shape}, skip_warmup={skip_warmup})'
    )
  return cols.mean(axis=-1)


def area_under_curve(n_labeled, values, normalize=True):
  """Area under a learning curve by the trapezoid rule in n_labeled.

  Args:
    n_labeled: f[r], strictly increasing numbers of labels.
    values: f[..., r], the metric at each n_labeled.
    normalize: divide by n_labeled[-1] - n_labeled[0], so the result is the
      curve's mean level in the metric's units (an accuracy, not a count).
      With a single round the normalised area is the value itself.

  Returns:
    f[...], e.g. f[s] for values f[s, r].
  """
  n = np.asarray(n_labeled, dtype=np.float64)
  v = np.asarray(values, dtype=np.float64)
  if n.ndim != 1 or v.shape[-1] != n.size:
    raise ValueError(
        f'area_under_curve: n_labeled {n.shape} does not match '
        f'values {v.shape} on the last axis'
    )
  if n.size > 1 and np.any(np.diff(n) <= 0):
    raise ValueError(f'area_under_curve: n_labeled must increase strictly, got {n.tolist()}')
  if n.size == 1:
    return v[..., 0] if normalize else np.zeros(v.shape[:-1])
  area = np.trapezoid(v, n, axis=-1)
  return area / (n[-1] - n[0]) if normalize else area
