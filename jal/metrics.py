"""Test-set metrics of an ensemble, what a round queried, and the signs of a diverged
training, in numpy."""

import math

import numpy as np

# When a trained ensemble counts as diverged (`divergence`). Measured after
# every fit on the 2-core CPU, each member's mean cross-entropy on its labeled
# set and the largest |logit| on the labeled, test and pool sets:
# - at each config's own learning rate (gaussian; mnist :low,smoke; every
#   CIFAR-10/100 and retinopathy :smoke), the loss is at most 0.5 log C for
#   the MLP and LeNet, and up to 20 log C for a 4-step ResNet-18 smoke (its
#   BatchNorm statistics barely updated); |logit| is at most 214 (gaussian's
#   MLP after 200 epochs, far from the data), under 110 elsewhere;
# - at learning rates far too high (LeNet Adam 10 and 1e6, ResNet-18 SGD 5,
#   MLP Adam 100 and 1e6) the worst member's loss is 730 log C to 3e36 log C
#   and the test |logit| 8e9 to 1e38 or non-finite; the MLP still separates
#   its few labels (loss 0), so there the logits alone tell;
# - borderline: LeNet with Adam 1.0 ends with a loss of 1.3-22 log C (above
#   chance on its own labels) and test logits up to 5e6; gaussian's MLP with
#   Adam 1.0 reaches |logit| 2e4-1e6 with a loss under log C, with Adam 0.3
#   (30x its rate) 8e3.
# The limits sit 5x above the worst sane loss and 5,000x above the largest
# sane |logit|; each far-too-high rate crosses one of them at round 0.
LOSS_LIMIT = 100.0  # times chance, log(C)
LOGIT_LIMIT = 1e6


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


def classification_metrics(
    member_logits: np.ndarray, labels: np.ndarray, positive_class=None
) -> dict[str, float]:
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
      'per_class_accuracy': [
          float(correct[labels == c].mean()) if (labels == c).any() else None
          for c in range(member_logits.shape[-1])
      ],
  }
  if positive_class is not None:
    out['average_precision'] = average_precision(mean[:, positive_class], labels == positive_class)
  return out


def minority_fraction_queried(labels: np.ndarray, queried, positive_class: int) -> float:
  """The fraction of a round's queried points that are in the minority class.

  Args:
    labels: int[n], the pool's labels.
    queried: int[q], the pool indices the round queried.
    positive_class: the minority class.
  """
  return float(np.mean(np.asarray(labels)[np.asarray(queried)] == positive_class))


def member_losses(member_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Mean softmax cross-entropy of each member: f[m, n, c], int[n] -> f64[m]."""
  z = np.asarray(member_logits, np.float64)
  top = z.max(axis=-1, keepdims=True)
  lse = top[..., 0] + np.log(np.exp(z - top).sum(axis=-1))
  picked = np.take_along_axis(z, np.asarray(labels)[None, :, None], axis=-1)[..., 0]
  return (lse - picked).mean(axis=-1)


def divergence(member_logits: np.ndarray, labels=None, where: str = 'test') -> str | None:
  """Why an ensemble's logits show a diverged training, or None.

  Diverged: a logit is not finite or beyond LOGIT_LIMIT, or (with `labels`,
  the set it was trained on) a member's mean cross-entropy is above
  LOSS_LIMIT * log(C).

  Args:
    member_logits: f[m, n, c].
    labels: int[n], or None to check the logits only (e.g. on the test set,
      where an overconfident model may have any loss).
    where: the set's name, for the message.

  Returns:
    One line naming the figure and its limit, or None.
  """
  z = np.asarray(member_logits, np.float32)
  if not np.isfinite(z).all():
    return f'the {where}-set logits are not finite'
  if labels is not None:
    losses = member_losses(z, labels)
    worst, chance = int(np.argmax(losses)), math.log(z.shape[-1])
    if losses[worst] > LOSS_LIMIT * chance:
      return (
          f'the {where}-set loss is {losses[worst]:.2g} (member {worst}; chance is '
          f'{chance:.2f}, limit {LOSS_LIMIT:g}x chance)'
      )
  peak = float(np.abs(z).max(initial=0.0))
  if peak > LOGIT_LIMIT:
    return f'the {where}-set logits reach {peak:.2g} (limit {LOGIT_LIMIT:.0e})'
  return None
