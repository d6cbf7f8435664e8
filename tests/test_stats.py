"""Tests for jal.stats against hand-computed values."""

import math

import numpy as np
import pytest

from jal import stats


@pytest.mark.parametrize(
    'p, df, expected',
    [
        (0.975, 1, 12.706205),
        (0.975, 2, 4.302653),
        (0.975, 4, 2.776445),
        (0.975, 9, 2.262157),
        (0.975, 30, 2.042272),
        (0.95, 2, 2.919986),
        (0.995, 3, 5.840909),
        (0.025, 4, -2.776445),
        (0.5, 7, 0.0),
    ],
)
def test_t_quantile_known_values(p, df, expected):
  assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_t_cdf_inverts_quantile_and_known_values():
  assert stats.t_cdf(0.0, 5) == 0.5
  # df = 2 has a closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
  assert stats.t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)), abs=1e-14)
  for df in (3, 5.5, 40):
    for p in (0.6, 0.9, 0.975, 0.999):
      assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_t_interval_three_seeds():
  mean, lo, hi = stats.t_interval(np.array([1.0, 2.0, 3.0]))
  assert mean == 2.0
  # sd = 1, so the half-width is t_{0.975,2} / sqrt(3) = 2.484138.
  assert hi - mean == pytest.approx(2.484138, abs=1e-6)
  assert mean - lo == pytest.approx(2.484138, abs=1e-6)


def test_t_interval_five_seeds_90_percent():
  x = np.array([2.0, 4.0, 4.0, 4.0, 6.0])  # mean 4, sd sqrt(2)
  mean, lo, hi = stats.t_interval(x, confidence=0.90)
  assert mean == 4.0
  assert hi - mean == pytest.approx(2.131847 * math.sqrt(2) / math.sqrt(5), abs=1e-6)


def test_t_interval_one_seed_missing_values():
  mean, lo, hi = stats.t_interval(np.array([0.7]))
  assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
  # NaN = a seed without this round: dropped.
  mean, lo, hi = stats.t_interval(np.array([1.0, np.nan, 3.0]))
  assert mean == 2.0
  assert hi - mean == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), abs=1e-5)
  assert all(math.isnan(v) for v in stats.t_interval(np.array([np.nan])))


def test_bootstrap_deterministic_and_contains_mean():
  x = np.array([0.1, 0.4, 0.35, 0.2, 0.3, 0.25])
  a = stats.bootstrap_interval(x, seed=3)
  b = stats.bootstrap_interval(x, seed=3)
  assert a == b
  mean, lo, hi = a
  assert mean == pytest.approx(0.26666666666666666)
  assert x.min() <= lo < mean < hi <= x.max()
  small = [stats.bootstrap_interval(x, num_resamples=50, seed=k) for k in (3, 3, 4)]
  assert small[0] == small[1] != small[2]
  # Narrower than the t interval's at 6 seeds is expected, not wider than
  # the data's range; a wider confidence widens it.
  _, lo99, hi99 = stats.bootstrap_interval(x, confidence=0.99, seed=3)
  assert lo99 <= lo and hi99 >= hi
  _, lo1, hi1 = stats.bootstrap_interval(np.array([5.0]))
  assert math.isnan(lo1) and math.isnan(hi1)


def test_bootstrap_two_values_hand_computed():
  # Resample means of {0, 1} are 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4:
  # the 2.5% and 97.5% percentiles are 0 and 1.
  assert stats.bootstrap_interval(np.array([0.0, 1.0])) == (0.5, 0.0, 1.0)


def test_bootstrap_is_the_percentile_of_resample_means():
  # The resamples are rows of indices drawn by Generator.integers from `seed`;
  # the bounds are the linearly interpolated 5% and 95% quantiles of their means.
  x = np.array([0.3, -0.1, 0.25, 0.05, 0.4])
  means = x[np.random.default_rng(7).integers(0, 5, size=(2000, 5))].mean(axis=1)
  expected = np.quantile(means, [0.05, 0.95])
  _, lo, hi = stats.bootstrap_interval(x, confidence=0.9, num_resamples=2000, seed=7)
  np.testing.assert_allclose([lo, hi], expected, rtol=1e-14)


def test_summarize_excludes_zero():
  s = stats.summarize(np.array([1.0, 2.0, 3.0]))
  assert s['mean'] == 2.0 and s['n'] == 3
  assert s['half_width'] == pytest.approx(2.484138, abs=1e-6)
  assert s['excludes_zero'] is False  # lo = -0.484
  s = stats.summarize(np.array([4.0, 5.0, 6.0]))
  assert s['excludes_zero'] is True  # lo = 2.516
  s = stats.summarize(np.array([-6.0, -5.0, -4.0]))
  assert s['excludes_zero'] is True
  s = stats.summarize(np.array([4.0]))
  assert s['excludes_zero'] is False and math.isnan(s['half_width'])
  with pytest.raises(ValueError, match='unknown CI method'):
    stats.summarize(np.array([1.0, 2.0]), method='normal')


def test_paired_improvement_two_seeds():
  curves = {
      'random': np.array([[0.5, 0.6, 0.7], [0.4, 0.5, 0.6]]),
      'ensembles': np.array([[0.5, 0.65, 0.8], [0.4, 0.45, 0.7]]),
  }
  diff = stats.paired_improvement(curves)
  assert list(diff) == ['ensembles']
  np.testing.assert_allclose(diff['ensembles'], [[0.0, 0.05, 0.1], [0.0, -0.05, 0.1]], atol=1e-12)


def test_paired_improvement_aligns_by_seed():
  curves = {
      'random': np.array([[1.0, 2.0], [10.0, 20.0]]),
      'coreset': np.array([[11.0, 23.0], [1.0, 1.0]]),
  }
  seeds = {'random': [0, 7], 'coreset': [7, 0]}
  diff = stats.paired_improvement(curves, seeds=seeds)['coreset']
  np.testing.assert_allclose(diff, [[0.0, -1.0], [1.0, 3.0]])


def test_paired_improvement_errors():
  base = np.zeros((3, 4))
  with pytest.raises(ValueError, match=r"seeds \[0, 1\] but baseline 'random' " r'has \[0, 1, 2\]'):
    stats.paired_improvement(
        {'random': base, 'coreset': np.zeros((2, 4))},
        seeds={'random': [0, 1, 2], 'coreset': [0, 1]},
    )
  with pytest.raises(ValueError, match='has seeds'):
    stats.paired_improvement(
        {'random': base, 'coreset': base}, seeds={'random': [0, 1, 2], 'coreset': [0, 1, 3]}
    )
  with pytest.raises(ValueError, match='2 seeds but baseline'):
    stats.paired_improvement({'random': base, 'coreset': np.zeros((2, 4))})
  with pytest.raises(ValueError, match='3 rounds'):
    stats.paired_improvement({'random': base, 'coreset': np.zeros((3, 3))})
  with pytest.raises(ValueError, match="baseline 'random' not among"):
    stats.paired_improvement({'coreset': base})


def test_average_improvement_skips_warmup():
  diff = np.array([[0.0, 0.01, 0.02, 0.03], [0.4, -0.02, 0.0, 0.05]])
  np.testing.assert_allclose(stats.average_improvement(diff), [0.02, 0.01], atol=1e-12)
  np.testing.assert_allclose(
      stats.average_improvement(diff, skip_warmup=False), [0.015, 0.1075], atol=1e-12
  )
  with pytest.raises(ValueError, match='no selection rounds'):
    stats.average_improvement(np.zeros((2, 1)))


def test_area_under_curve_trapezoid():
  n = np.array([10.0, 20.0, 40.0])
  v = np.array([[0.5, 0.7, 0.8], [1.0, 1.0, 1.0]])
  # Seed 0: 10 * (0.5 + 0.7) / 2 + 20 * (0.7 + 0.8) / 2 = 6 + 15 = 21.
  np.testing.assert_allclose(stats.area_under_curve(n, v, normalize=False), [21.0, 30.0])
  np.testing.assert_allclose(stats.area_under_curve(n, v), [0.7, 1.0])
  assert stats.area_under_curve([5.0], np.array([0.3])) == pytest.approx(0.3)
  with pytest.raises(ValueError, match='increase strictly'):
    stats.area_under_curve([10.0, 10.0], np.array([0.1, 0.2]))
  with pytest.raises(ValueError, match='does not match'):
    stats.area_under_curve([10.0, 20.0], np.array([0.1, 0.2, 0.3]))


def test_interval_per_round():
  v = np.array([[1.0, 5.0], [2.0, np.nan], [3.0, 7.0]])
  mean, lo, hi, n = stats.interval_per_round(v)
  np.testing.assert_allclose(mean, [2.0, 6.0])
  np.testing.assert_array_equal(n, [3, 2])
  assert hi[0] - 2.0 == pytest.approx(2.484138, abs=1e-6)
  assert hi[1] - 6.0 == pytest.approx(12.706205, abs=1e-5)  # sd sqrt(2)/sqrt2


def test_format_p():
  assert [stats.format_p(p) for p in (0.0004, 0.001, 0.0625, 0.9996, math.nan)] == [
      '<0.001',
      '0.001',
      '0.062',
      '1.000',
      '–',
  ]
