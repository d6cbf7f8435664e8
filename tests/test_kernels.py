"""k-Center, variation ratio and tie-broken top-k against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import k_center_greedy, kernels, variation_ratio


def brute_force_k_center(x, labeled, k, candidates=None):
  """Reference greedy k-Center with the full distance matrix (float64)."""
  x = np.asarray(x, np.float64)
  d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
  chosen = list(np.flatnonzero(labeled))
  min_d = d[:, chosen].min(axis=1) if chosen else np.full(len(x), np.inf)
  others = [] if candidates is None else list(np.flatnonzero(~np.asarray(candidates)))
  picks = []
  for _ in range(k):
    masked = min_d.copy()
    masked[chosen + picks + others] = -np.inf
    j = int(np.argmax(masked))
    picks.append(j)
    min_d = np.minimum(min_d, d[:, j])
  return picks


def test_k_center_hand_made_points():
  # Points on a line plus one off it; 0 is labeled.
  pts = np.array([[0, 0], [1, 0], [5, 0], [10, 0], [0, 3], [9, 0]], np.float32)
  labeled = np.array([True, False, False, False, False, False])
  # Farthest from {0}: 10 (idx 3). Then min dists: 1->1, 5->5, (0,3)->3,
  # 9->1, so idx 2. Then 1->1, (0,3)->3, 9->1: idx 4. Then idx 1 (dist 1)
  # ties with idx 5 (dist 1): the lowest index wins.
  picks = k_center_greedy(pts, labeled, k=4)
  np.testing.assert_array_equal(picks, [3, 2, 4, 1])
  assert picks.dtype == jnp.int32


def test_k_center_two_labeled_clusters():
  pts = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [5, 0], [5, 8]], np.float32)
  labeled = np.array([True, False, True, False, False, False])
  # Distances to nearest of {0, 2}: 1->1, 3->1, 4->5, 5->sqrt(89).
  np.testing.assert_array_equal(k_center_greedy(pts, labeled, k=2), [5, 4])


@pytest.mark.parametrize('n,d,num_labeled,k', [(300, 8, 10, 25), (700, 16, 600, 40)])
def test_k_center_matches_brute_force(n, d, num_labeled, k):
  # The second case has more labeled points than one chunk (256) holds.
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, d)).astype(np.float32)
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, num_labeled, replace=False)] = True
  got = np.asarray(k_center_greedy(x, labeled, k=k))
  assert got.tolist() == brute_force_k_center(x, labeled, k)
  assert not labeled[got].any() and len(set(got.tolist())) == k


def test_k_center_without_labeled_points_starts_at_index_zero():
  x = np.array([[0.0], [1.0], [4.0], [2.0]], np.float32)
  # After 0 and 4.0, point 2.0 (distance 2) is farther than 1.0 (distance 1).
  np.testing.assert_array_equal(k_center_greedy(x, np.zeros(4, bool), k=3), [0, 2, 3])


# A line with centres 0 (index 0) and 20 (index 6, also flagged a candidate),
# a far non-candidate at 100 (index 1) and a non-candidate at 3 (index 4).
CANDIDATE_PTS = np.array(
    [[0.0], [100.0], [2.0], [6.0], [3.0], [9.0], [20.0], [14.0], [12.0]], np.float32
)
CANDIDATE_LABELED = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0], bool)
CANDIDATES = np.array([0, 0, 1, 1, 0, 1, 1, 1, 1], bool)


def test_k_center_candidates_hand_made_points():
  # Without the mask the outlier at 100 goes first.
  assert k_center_greedy(CANDIDATE_PTS, CANDIDATE_LABELED, k=1).tolist() == [1]
  # Candidates 2, 6, 9, 14, 12 lie 2, 6, 9, 6, 8 from the nearest centre (14
  # is 6 from 20, a labeled centre though not itself pickable): pick 9 (index
  # 5). Then 2, 3, 5, 3 from {0, 9, 20}: 14 (index 7). Then 2, 3, 2: 6
  # (index 3). Then 2 and 12 tie at squared distance 4 and the lowest index
  # wins: 2 (index 2), then 12 (index 8). 100 and 3 are never picked.
  picks = k_center_greedy(CANDIDATE_PTS, CANDIDATE_LABELED, k=5, candidates=CANDIDATES)
  np.testing.assert_array_equal(picks, [5, 7, 3, 2, 8])
  assert picks.dtype == jnp.int32
  # Nothing labeled: the lowest-index candidate (2) first, then the farthest
  # candidate from it, 20 (index 6).
  np.testing.assert_array_equal(
      k_center_greedy(CANDIDATE_PTS, np.zeros(9, bool), k=2, candidates=CANDIDATES), [2, 6]
  )
  # Every point a candidate: the same as no mask.
  np.testing.assert_array_equal(
      k_center_greedy(CANDIDATE_PTS, CANDIDATE_LABELED, k=4, candidates=np.ones(9, bool)),
      k_center_greedy(CANDIDATE_PTS, CANDIDATE_LABELED, k=4),
  )


def test_k_center_candidates_keep_labeled_centres():
  pts = np.array([[0, 0], [1, 0], [5, 0], [10, 0], [4, 0], [9, 0]], np.float32)
  labeled = np.array([False, False, False, True, False, False])
  candidates = np.array([True, True, False, False, True, True])
  # Centre 10; candidates 0, 1, 4, 9 at 10, 9, 6, 1: pick 0, then 4 (4 from 0,
  # 6 from 10) over 1 (1 from 0), then 1, then 9. Point 5 (idx 2) is never picked.
  picks = k_center_greedy(pts, labeled, k=4, candidates=candidates)
  np.testing.assert_array_equal(picks, [0, 4, 1, 5])


@pytest.mark.parametrize('n,d,num_labeled,k', [(300, 8, 10, 25), (700, 16, 600, 40)])
def test_k_center_candidates_match_brute_force(n, d, num_labeled, k):
  rng = np.random.default_rng(n + 1)
  x = rng.normal(size=(n, d)).astype(np.float32)
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, num_labeled, replace=False)] = True
  candidates = rng.random(n) < 0.4
  got = np.asarray(k_center_greedy(x, labeled, k=k, candidates=candidates))
  assert got.tolist() == brute_force_k_center(x, labeled, k, candidates)
  assert candidates[got].all() and not labeled[got].any() and len(set(got.tolist())) == k


def test_variation_ratio_exact_values():
  # 4 members, 3 points, 3 classes; votes per point:
  # point 0: 0,0,0,0 -> 0;  point 1: 0,1,1,2 -> 1 - 2/4;  point 2: 0,1,2,0 -> 1 - 2/4
  votes = np.array([[0, 0, 0], [0, 1, 1], [0, 1, 2], [0, 2, 0]])
  logits = jax.nn.one_hot(votes, 3) * 5.0 + 0.1
  np.testing.assert_allclose(variation_ratio(logits), [0.0, 0.5, 0.5], atol=0)
  # 5 members, 3-way split 2/2/1 -> 1 - 2/5; unanimous except one -> 1 - 4/5.
  votes = np.array([[0, 1], [0, 1], [1, 1], [1, 1], [2, 0]])
  np.testing.assert_allclose(variation_ratio(jax.nn.one_hot(votes, 3)), [0.6, 0.2], rtol=1e-6)


def test_top_k_with_random_ties():
  scores = jnp.array([0.5, 0.2, 0.5, 0.5, 0.9, 0.5, 0.0])
  eligible = jnp.array([True, True, True, True, True, True, False])
  picks = [
      tuple(
          np.asarray(kernels.top_k_with_random_ties(scores, eligible, jax.random.PRNGKey(s), k=3))
      )
      for s in range(20)
  ]
  for p in picks:
    assert p[0] == 4  # the unique maximum comes first
    assert set(p[1:]) <= {0, 2, 3, 5}
  # Ties are ordered by the key, so different keys give different tied picks,
  # and the same key the same picks.
  assert len({p[1:] for p in picks}) > 3
  again = kernels.top_k_with_random_ties(scores, eligible, jax.random.PRNGKey(0), k=3)
  assert tuple(np.asarray(again)) == picks[0]
  # Ineligible points come last even with the highest score.
  top = kernels.top_k_with_random_ties(
      jnp.array([9.0, 1.0]), jnp.array([False, True]), jax.random.PRNGKey(0), k=1
  )
  assert int(top[0]) == 1
