r"""One call of `python -m jal.label`: validate, train, score, write next_batch.csv.

    entry = session.run(config, 'photos/', 'labels.csv', 'W', query=50)
    print(entry['summary'])   # what the command prints

`run` checks every input before any decoding or training, estimates the
configured ensemble's accuracy on held-out labels (`validation_splits`,
`estimate_accuracy`), trains it on every label and lets the strategy pick
the next batch (`model_batch`). Random keys come from `config.seed` and a
digest of the inputs, so the same inputs give the same next_batch.csv, and
a call with nothing changed does no work. The command's docstring
(jal/label/__main__.py, its --help) describes the call and its files;
`jal.label.project` reads and writes them.
"""

import copy
import hashlib
import json
import os
import time
import zlib
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jal import config_lib
from jal import data as data_lib
from jal import experiment
from jal import kernels
from jal import stats
from jal import strategies as strategies_lib
from jal.label import images as images_lib
from jal.label import project
from jal.strategies import uncertainty

# Purposes folded into a call's key.
_FIT, _VALIDATION, _SELECT = 1, 2, 3

# Per-point scores of the strategies that rank by one: member logits
# f32[m, n, c] -> f32[n]. Other strategies are reported with variation ratio.
_SCORES = {
    'ensembles': ('variation ratio', kernels.variation_ratio),
    'least_confidence': (
        'least confidence of member 0',
        lambda l: uncertainty.least_confidence(l[0]),
    ),
    'margin': ('negative margin of member 0', lambda l: uncertainty.margin(l[0])),
    'entropy': ('entropy of member 0', lambda l: uncertainty.entropy(l[0])),
    'ensemble_entropy': ('entropy of the mean prediction', uncertainty.ensemble_entropy),
    'ensemble_bald': ('BALD mutual information', uncertainty.bald),
}


# ----------------------------------------------------------------------------
# Validation.


def validation_splits(y: np.ndarray, vconfig, seed: int) -> tuple[str, list]:
  """A stratified held-out part, or stratified k folds, of the labeled points.

  Hold-out when there are at least `vconfig.holdout_min_labels` labels and
  every class present has `vconfig.min_per_class`; each class then holds
  out round(holdout_fraction * n_c) (at least 1) of its points. Otherwise
  k = min(folds, L) folds: each class's points, in a seeded random order,
  are dealt to the folds in turn, continuing where the last class stopped.

  Args:
    y: i32[L], the labels of the labeled points.
    vconfig: config.validation.
    seed: seeds the shuffles.

  Returns:
    (method: 'holdout', 'cv' or 'none' (fewer than 2 labels), a list of
    (train: i32[.], held: i32[.]) positions into y).
  """
  y = np.asarray(y)
  n = y.size
  if n < 2:
    return 'none', []
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(y, return_counts=True)
  if n >= vconfig.holdout_min_labels and counts.min() >= vconfig.min_per_class:
    held = []
    for c, n_c in zip(classes, counts):
      pos = rng.permutation(np.flatnonzero(y == c))
      held.append(pos[: max(1, int(np.floor(vconfig.holdout_fraction * n_c + 0.5)))])
    held = np.sort(np.concatenate(held))
    return 'holdout', [(np.setdiff1d(np.arange(n), held), held)]
  k = min(int(vconfig.folds), n)
  fold = np.empty(n, np.int64)
  start = 0
  for c in classes:
    pos = rng.permutation(np.flatnonzero(y == c))
    fold[pos] = (start + np.arange(pos.size)) % k
    start = (start + pos.size) % k
  return 'cv', [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def validation_estimate(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, confidence: float
) -> dict[str, Any]:
  """Accuracy with a Wilson interval, and per-class accuracy.

  Args:
    y_true: i32[h] held-out labels (over every fold).
    y_pred: i32[h] the ensemble's predictions.
    num_classes: c.
    confidence: of the interval.

  Returns:
    dict with n, correct, accuracy, lo, hi, balanced_accuracy (mean
    per-class accuracy over the classes held out), per_class_correct and
    per_class_total (lists of c ints).
  """
  ok = np.asarray(y_true) == np.asarray(y_pred)
  acc, lo, hi = stats.wilson_interval(int(ok.sum()), int(ok.size), confidence)
  total = np.bincount(y_true, minlength=num_classes)
  correct = np.bincount(y_true, weights=ok, minlength=num_classes).astype(np.int64)
  present = total > 0
  return {
      'n': int(ok.size),
      'correct': int(ok.sum()),
      'accuracy': acc,
      'lo': lo,
      'hi': hi,
      'confidence': confidence,
      'balanced_accuracy': float(np.mean(correct[present] / total[present]))
      if present.any()
      else float('nan'),
      'per_class_correct': correct.tolist(),
      'per_class_total': total.tolist(),
  }


# ----------------------------------------------------------------------------
# The call.


def _digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _key_int(digest: str) -> int:
  return zlib.crc32(digest.encode()) & 0x7FFFFFFF


def _pool_stats(x: np.ndarray, config) -> tuple[tuple, tuple]:
  """Per-channel mean and std on the 0-1 scale: the config's, else the pool's.

  The pool's are rounded to 0.01, so that adding or changing a few images
  keeps the same normalisation (and the same compiled programs).
  """
  ic = config.images
  if ic.get('mean') is not None and ic.get('std') is not None:
    return tuple(float(v) for v in ic.mean), tuple(float(v) for v in ic.std)
  flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
  mean = tuple(round(float(v), 2) for v in flat.mean(0))
  std = tuple(max(round(float(v), 2), 0.01) for v in flat.std(0))
  return mean, std


def _validate_config(config, strategy) -> None:
  if config.images.channels not in (1, 3):
    raise ValueError(f'config.images.channels must be 1 or 3, got {config.images.channels}')
  if config.images.size < 1:
    raise ValueError(f'config.images.size must be positive, got {config.images.size}')
  if config.train.members < strategy.min_members:
    raise ValueError(
        f"strategy '{strategy.name}' needs train.members >= "
        f'{strategy.min_members}, got {config.train.members}'
    )
  if getattr(strategy, 'needs_dropout', False) and not config.model.get('dropout', 0.0) > 0:
    raise ValueError(f"strategy '{strategy.name}' needs config.model.dropout > 0")
  strategy.check_options(config.strategy_options)
  path = config.model.get('pretrained_path')
  if path:
    if config.model.name != 'resnet18' or config.images.channels != 3:
      raise ValueError(
          'config.model.pretrained_path needs model resnet18 on RGB images '
          '(--config=configs/label.py:pretrained)'
      )
    if not os.path.isfile(path):
      raise FileNotFoundError(f'pretrained weights not found: {path}')


def _refuse_or_skip(folder: str, bad: list[tuple[str, str]], skip_unreadable: bool) -> None:
  """Raises a one-line ValueError naming the unreadable files, unless skipping."""
  if bad and not skip_unreadable:
    raise ValueError(
        f'{len(bad)} unreadable image(s) in {folder}: '
        f'{project.named(f"{n} ({e})" for n, e in bad)}; pass '
        '--skip_unreadable to leave them out'
    )
  for n, e in bad:
    logging.warning('Skipping unreadable image %s (%s).', n, e)


def _screen_images(folder, names, config, max_file_mb, max_pixels, skip_unreadable):
  """Refuses, or leaves out, the files that must not be read (`images.screen`).

  Runs before any file is hashed or decoded.

  Returns:
    (the names to read, the names left out).
  """
  if not max_file_mb > 0:
    raise ValueError(f'--max_file_mb must be positive, got {max_file_mb}')
  if max_pixels < 1:
    raise ValueError(f'--max_pixels must be positive, got {max_pixels}')
  bad = images_lib.screen(
      folder,
      names,
      int(max_file_mb * 1e6),
      int(max_pixels),
      config.images.size,
      config.images.channels,
  )
  _refuse_or_skip(folder, bad, skip_unreadable)
  left_out = {n for n, _ in bad}
  if len(left_out) == len(names):
    raise ValueError(f'no readable images in {folder}: all {len(names)} were left out')
  return [n for n in names if n not in left_out], [n for n, _ in bad]


def _read_pool(folder, names, prints, workdir, config, skip_unreadable):
  """Decodes the pool through the cache; drops or refuses unreadable files."""
  ic = config.images
  cache = images_lib.ImageCache(
      os.path.join(workdir, f'images_{ic.size}px_{ic.channels}ch.npz'), ic.size, ic.channels
  )
  x, errors = cache.load(
      [os.path.join(folder, n) for n in names],
      [prints[n]['sha256'] for n in names],
      int(ic.num_workers),
  )
  bad = [(n, e) for n, e in zip(names, errors) if e is not None]
  _refuse_or_skip(folder, bad, skip_unreadable)
  ok = np.array([e is None for e in errors], bool)
  return x[ok], [n for n, good in zip(names, ok) if good], [n for n, _ in bad]


def _ensemble_predict(exp, states, idx) -> np.ndarray:
  """The ensemble's mean softmax on pool points `idx`: f32[len(idx), c]."""
  logits = exp.predict(states, exp.x_train[np.asarray(idx)], False).logits
  return np.asarray(jnp.mean(jax.nn.softmax(logits, -1), 0))


def estimate_accuracy(
    exp, key, y: np.ndarray, labeled_idx: np.ndarray, vconfig, split_seed: int
) -> dict[str, Any] | None:
  """Held-out accuracy of the configured ensemble (`validation_splits`).

  Args:
    exp: the Experiment over the pool.
    key: PRNG key; fold f trains with `fold_in(key, f)`.
    y: i32[n] pool labels (valid where labeled).
    labeled_idx: i32[L] labeled pool indices.
    vconfig: config.validation.
    split_seed: seeds the split.

  Returns:
    `validation_estimate`'s dict plus method and folds, or None with fewer
    than 2 labels.
  """
  method, splits = validation_splits(y[labeled_idx], vconfig, split_seed)
  if not splits:
    return None
  truth, pred = [], []
  for f, (tr, held) in enumerate(splits):
    logging.info(
        'Validation fit %d of %d (%s): %d train, %d held out.',
        f + 1,
        len(splits),
        method,
        tr.size,
        held.size,
    )
    states = exp.fit(jax.random.fold_in(key, f), labeled_idx[tr], 0)
    pred.append(_ensemble_predict(exp, states, labeled_idx[held]).argmax(-1))
    truth.append(y[labeled_idx[held]])
  out = validation_estimate(
      np.concatenate(truth),
      np.concatenate(pred),
      exp.dataset.num_classes,
      float(vconfig.confidence),
  )
  out.update(method=method, folds=len(splits))
  return out


def score_name(strategy: str) -> str:
  if strategy in _SCORES:
    return _SCORES[strategy][0]
  return f'variation ratio (for information; {strategy} picks a set)'


def model_batch(
    config,
    strat,
    x: np.ndarray,
    y: np.ndarray,
    labeled: np.ndarray,
    classes: list[str],
    k: int,
    key,
    select_key,
    split_seed: int,
) -> dict[str, Any]:
  """Validates, trains on every label, and picks `k` unlabeled pool points.

  Args:
    config: the call's config.
    strat: the Strategy.
    x: u8[n, s, s, ch] the pool.
    y: i32[n] class ids (valid where labeled).
    labeled: bool[n].
    classes: the class names.
    k: points to pick (0: none).
    key: PRNG key of the model (validation and final fits): the same labels,
      images and config give the same model whatever the strategy.
    select_key: PRNG key of the strategy.
    split_seed: seeds the validation split.

  Returns:
    dict with validation, picks (i32[k], best first), scores f32[n],
    probs f32[n, c] (ensemble mean softmax) and seconds.
  """
  mean, std = _pool_stats(x, config)
  ds = data_lib.Dataset(
      name='folder',
      x_train=x,
      y_train=y,
      x_test=x[:1],
      y_test=y[:1],
      num_classes=len(classes),
      class_names=tuple(classes),
      mean=mean,
      std=std,
  )
  exp_config = copy.deepcopy(config)
  with exp_config.unlocked():
    exp_config.query_size = max(k, 1)
  # The loop's settings for this call: its one strategy, embeddings as the options say.
  settings = config_lib.Settings(
      strategies=(strat.name,),
      seeds=(config.seed,),
      embedding_source=config_lib.embedding_source(config),
  )
  exp = experiment.Experiment(exp_config, ds, settings)
  labeled_idx = np.flatnonzero(labeled).astype(np.int32)
  t0 = time.perf_counter()
  validation = estimate_accuracy(
      exp, jax.random.fold_in(key, _VALIDATION), y, labeled_idx, config.validation, split_seed
  )
  t1 = time.perf_counter()
  logging.info(
      'Training the %d-member ensemble on all %d labels.', config.train.members, labeled_idx.size
  )
  states = jax.block_until_ready(exp.fit(jax.random.fold_in(key, _FIT), labeled_idx, 0))
  t2 = time.perf_counter()
  inputs = exp.score(strat, states, labeled, select_key) if k else None
  if inputs is not None and inputs.logits is not None:
    logits = inputs.logits
  else:
    logits = exp.predict(states, exp.x_train, False).logits
  score_fn = _SCORES.get(strat.name, (None, kernels.variation_ratio))[1]
  picks = exp.select(strat, inputs, select_key) if k else np.zeros((0,), np.int32)
  out = {
      'validation': validation,
      'picks': picks,
      'scores': np.asarray(score_fn(logits)),
      'probs': np.asarray(jnp.mean(jax.nn.softmax(logits, -1), 0)),
  }
  out['seconds'] = {'validation': t1 - t0, 'fit': t2 - t1, 'score_select': time.perf_counter() - t2}
  return out


def run(
    config: ml_collections.ConfigDict,
    images_dir: str,
    labels_path: str,
    workdir: str,
    *,
    query: int | None = None,
    strategy: str | None = None,
    classes=None,
    skip_unreadable: bool = False,
    max_file_mb: float = images_lib.DEFAULT_MAX_FILE_MB,
    max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
  """One call of `jal.label`: validate, train, score, write next_batch.csv.

  Args:
    config: a configs/label.py config.
    images_dir: the folder of images.
    labels_path: the `filename,label` CSV.
    workdir: the project's state folder.
    query: batch size (default config.query_size).
    strategy: strategy name (default config.strategy).
    classes: class names fixing the class list (first call only).
    skip_unreadable: leave unreadable images out instead of failing: files
      that are not regular files inside `images_dir`, over either cap, or
      that fail to decode.
    max_file_mb: refuse files larger than this (MB, 10^6 bytes).
    max_pixels: refuse images that decode to more pixels than this (JPEGs at
      their draft scale).

  Returns:
    The call's history entry (also appended to W/state.json), with `summary`,
    the text to show.

  Raises:
    ValueError, FileNotFoundError: with a one-line message, on bad input.
  """
  t0 = time.perf_counter()
  config = copy.deepcopy(config)
  with config.unlocked():
    if query is not None:
      config.query_size = int(query)
    if strategy is not None:
      config.strategy = strategy
  if config.query_size < 1:
    raise ValueError(f'--query must be positive, got {config.query_size}')
  strat = strategies_lib.get_strategy(config.strategy)
  _validate_config(config, strat)

  # Inputs: all checks run before any decoding or training.
  names = images_lib.list_images(images_dir)
  labels = project.read_labels(labels_path)
  state = project.load_state(workdir)
  identity = project.config_identity(config)
  if state is not None and state['config'] != identity:
    raise ValueError(
        f'{workdir} was made with another config '
        f'({config_lib.diff(state["config"], identity)}); pass the same --config '
        'and overrides, or use another --workdir'
    )
  project.check_files(labels, names, labels_path, images_dir)
  klasses = project.resolve_classes(
      state and state.get('classes'), classes or config.get('classes'), labels, labels_path
  )
  names, screened_out = _screen_images(
      images_dir, names, config, max_file_mb, max_pixels, skip_unreadable
  )
  os.makedirs(workdir, exist_ok=True)
  prints = project.fingerprints(images_dir, names, state['images'] if state else {})
  changes = project.changes_since(state, prints, labels.labels)
  for line in project.change_lines(changes):
    logging.warning('Since the last call: %s', line)
  # The model depends on the data and config; the batch also on the strategy.
  model_digest = _digest(
      {
          'labels': labels.labels,
          'classes': klasses,
          'config': identity,
          'images': {n: p['sha256'] for n, p in prints.items()},
          'skip_unreadable': skip_unreadable,
      }
  )
  inputs_digest = _digest(
      {
          'model': model_digest,
          'query': config.query_size,
          'strategy': config.strategy,
          'options': config.strategy_options.to_dict(),
      }
  )
  batch_path = os.path.join(workdir, project.BATCH_FILE)
  if (
      state
      and state['calls']
      and state['calls'][-1]['inputs_digest'] == inputs_digest
      and os.path.exists(batch_path)
  ):
    logging.info('Nothing changed since call %d: %s is current.', len(state['calls']), batch_path)
    last = dict(state['calls'][-1])
    last['summary'] = (
        'Nothing changed since the last call; next_batch.csv is current.\n\n' + last['summary']
    )
    return last

  t1 = time.perf_counter()
  x, pool_names, skipped = _read_pool(images_dir, names, prints, workdir, config, skip_unreadable)
  skipped = sorted(screened_out + skipped)
  for n in skipped:
    if n in labels.labels:
      logging.warning('Label of unreadable image %s is not used.', n)
  seconds = {'decode': time.perf_counter() - t1, 'validation': 0.0, 'fit': 0.0, 'score_select': 0.0}
  class_id = {c: i for i, c in enumerate(klasses or [])}
  y = np.array([class_id.get(labels.labels.get(n), 0) for n in pool_names], np.int32)
  labeled = np.array([n in labels.labels for n in pool_names], bool)
  root = jax.random.PRNGKey(config.seed)
  key = jax.random.fold_in(root, _key_int(model_digest))
  select_key = jax.random.fold_in(jax.random.fold_in(root, _key_int(inputs_digest)), _SELECT)
  k = min(config.query_size, int((~labeled).sum()))

  rows, predicted_counts, validation, used = [], {}, None, config.strategy
  if not labeled.any():
    logging.info('No labels yet: the first batch is a random sample.')
    picks = np.asarray(
        strategies_lib.get_strategy('random').select(
            strategies_lib.Inputs(labeled=labeled), k, select_key
        )
    )
    rows = [
        {'filename': pool_names[i], 'score': '', 'rank': r + 1, 'predicted': '', 'confidence': ''}
        for r, i in enumerate(picks)
    ]
    used = 'random (no labels yet)'
  else:
    out = model_batch(
        config, strat, x, y, labeled, klasses, k, key, select_key, _key_int(model_digest + ':split')
    )
    validation, probs = out['validation'], out['probs']
    seconds.update(out['seconds'])
    pred = probs.argmax(-1)
    predicted_counts = {c: int(np.sum(pred[~labeled] == i)) for c, i in class_id.items()}
    rows = [
        {
            'filename': pool_names[i],
            'score': f'{out["scores"][i]:.6g}',
            'rank': r + 1,
            'predicted': klasses[pred[i]],
            'confidence': f'{probs[i].max():.4f}',
        }
        for r, i in enumerate(out['picks'])
    ]

  project.write_batch(batch_path, rows)
  seconds['total'] = time.perf_counter() - t0
  entry = {
      'call': (len(state['calls']) if state else 0) + 1,
      'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
      'n_images': len(pool_names),
      'skipped': skipped,
      'n_labeled': int(labeled.sum()),
      'counts': {c: int(np.sum(y[labeled] == i)) for c, i in class_id.items()},
      'query': config.query_size,
      'strategy': used,
      'score': 'random order' if not labeled.any() else score_name(config.strategy),
      'batch': [r['filename'] for r in rows],
      'predicted_counts': predicted_counts,
      'validation': validation,
      'changes': changes,
      'seconds': seconds,
      'inputs_digest': inputs_digest,
  }
  calls = (state['calls'] if state else []) + [entry]
  entry['summary'] = project.summary(entry, calls, images_dir, batch_path)
  project.write_state(
      workdir,
      {
          'images_dir': os.path.abspath(images_dir),
          'labels_path': os.path.abspath(labels_path),
          'config': identity,
          'classes': klasses,
          'images': prints,
          'labels': {n: labels.labels[n] for n in sorted(labels.labels)},
          'calls': calls,
      },
  )
  return entry
