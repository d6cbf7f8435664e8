"""Test-set metrics of an ensemble, in numpy."""

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """Average precision of ranking by `scores` (sklearn's definition).

  AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest
  first; tied scores enter together.

  Args:
    scores: f[n], higher means more likely positive.
    positive: bool[n].

  Returns:
    AP in [0, 1]; nan if there is no positive.
  """
  positive = np.asarray(positive, bool)
  num_pos = positive.sum()
  if num_pos == 0:
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  s, p = scores[order], positive[order]
  last_of_group = np.r_[s[1:] != s[:-1], True]
  tp = np.cumsum(p)[last_of_group]
  seen = np.flatnonzero(last_of_group) + 1
  precision = tp / seen
  recall = tp / num_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(member_logits: np.ndarray, labels: np.ndarray,
                           positive_class=None) -> dict[str, float]:
  """Metrics of the ensemble's mean softmax and of its single members.

  Args:
    member_logits: f32[m, n, c].
    labels: int[n].
    positive_class: for binary imbalanced tasks, the minority class whose
      average precision is reported; None otherwise.

  Returns:
    `accuracy` (ensemble), `member_accuracy` (mean over members),
    `per_class_accuracy` (list, ensemble), and `average_precision` when
    positive_class is given.
  """
  probs = softmax(member_logits.astype(np.float64))
  mean = probs.mean(axis=0)
  pred = mean.argmax(-1)
  correct = pred == labels
  out = {
      'accuracy': float(correct.mean()),
      'member_accuracy': float((member_logits.argmax(-1) == labels[None]).mean()),
      'per_class_accuracy': [float(correct[labels == c].mean()) if (labels == c).any()
                             else None for c in range(member_logits.shape[-1])],
  }
  if positive_class is not None:
    out['average_precision'] = average_precision(mean[:, positive_class], labels == positive_class)
  return out
