# Copyright 2024 The jal Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Derived tasks: pure `Dataset -> Dataset` functions, and the config that names them.

`apply_derived` applies them in this order when the config names them:

  classes            list[int]  -> subset_classes(ds, classes)
  positive_classes   list[int]  -> binarize(ds, positive_classes)
  minority_fraction  float      -> downsample_class(ds, 1, fraction, seed,
                                     split=imbalanced_split ('train'))
  max_train/max_test int        -> truncate(ds, max_train, max_test)
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

from absl import logging
import ml_collections
import numpy as np

from jal.data import core

_IMBALANCED_SPLITS = ('train', 'test', 'both')


def _check_class_list(
    what: str, classes: Sequence[int], num_classes: int | None = None
) -> list[int]:
  """Validates a non-empty list of distinct class indices."""
  if isinstance(classes, (str, bytes)) or not isinstance(classes, (Sequence, np.ndarray)):
    raise ValueError(f'{what} must be a list of ints, got {classes!r}')
  out = []
  for c in classes:
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
      raise ValueError(f'{what} must be a list of ints, got {list(classes)}')
    out.append(int(c))
  if not out:
    raise ValueError(f'{what} must not be empty')
  if len(set(out)) != len(out):
    raise ValueError(f'{what} has duplicates: {out}')
  bad = [c for c in out if c < 0 or (num_classes is not None and c >= num_classes)]
  if bad:
    bound = f'[0, {num_classes})' if num_classes is not None else '>= 0'
    raise ValueError(f'{what} {bad} out of range {bound}')
  return out


def subset_classes(ds: core.Dataset, classes: Sequence[int]) -> core.Dataset:
  """Keeps only `classes`, relabelled 0..len(classes)-1 in the given order.

  Row order within each split is preserved; mean/std stay those of `ds`.
  E.g. CIFAR-10 with classes=[7, 1]: horse -> 0, automobile -> 1.
  """
  classes = _check_class_list(f'{ds.name}: classes', classes, ds.num_classes)
  lut = np.full(ds.num_classes, -1, np.int32)
  lut[classes] = np.arange(len(classes), dtype=np.int32)
  arrays = {}
  for split in ('train', 'test'):
    y = lut[getattr(ds, f'y_{split}')]
    keep = y >= 0
    if not keep.any():
      raise ValueError(f'{ds.name}: no {split} samples of classes {classes}')
    arrays[f'x_{split}'] = getattr(ds, f'x_{split}')[keep]
    arrays[f'y_{split}'] = y[keep]
  positive = None if ds.positive_class not in classes else classes.index(ds.positive_class)
  return dataclasses.replace(
      ds,
      name=f'{ds.name}[{",".join(map(str, classes))}]',
      **arrays,
      num_classes=len(classes),
      class_names=tuple(ds.class_names[c] for c in classes),
      positive_class=positive,
  )


def binarize(ds: core.Dataset, positive_classes: Sequence[int]) -> core.Dataset:
  """Relabels to 1 for `positive_classes` and 0 for all other classes.

  Returns a 2-class dataset with class_names ('rest', 'a+b') and
  positive_class=1; rows are not reordered or dropped.
  """
  positive = _check_class_list(f'{ds.name}: positive_classes', positive_classes, ds.num_classes)
  if len(positive) == ds.num_classes:
    raise ValueError(
        f'{ds.name}: positive_classes {positive} cover all '
        f'{ds.num_classes} classes, leaving no negatives'
    )
  is_pos = np.zeros(ds.num_classes, np.int32)
  is_pos[positive] = 1
  pos_name = '+'.join(ds.class_names[c] for c in positive)
  return dataclasses.replace(
      ds,
      name=f'{ds.name}[{pos_name}-vs-rest]',
      y_train=is_pos[ds.y_train],
      y_test=is_pos[ds.y_test],
      num_classes=2,
      class_names=('rest', pos_name),
      positive_class=1,
  )


def downsampled_count(fraction: float, n_other: int) -> int:
  """Samples of the minority class to keep: round(f / (1 - f) * n_other).

  Rounding is half-up, so the minority class makes up `fraction` of the
  result as closely as an integer count allows. E.g. fraction 0.05 with
  40000 others -> round(2105.26) = 2105 (1:19).
  """
  return int(np.floor(fraction / (1.0 - fraction) * n_other + 0.5))


def downsample_class(
    ds: core.Dataset, cls: int, fraction: float, seed: int, split: str = 'train'
) -> core.Dataset:
  """Drops samples of class `cls` so it makes up `fraction` of a split.

  Rule, per affected split: with n_other samples of the other classes, keep
  m = downsampled_count(fraction, n_other) = round(fraction / (1 - fraction)
  * n_other) samples of `cls`, chosen uniformly without replacement with
  `np.random.default_rng(seed)`; all other samples are kept, and the kept
  rows stay in their original order. With split='both' the train choice is
  drawn first from the same stream, so the train split is identical to
  split='train' with the same seed.

  Args:
    ds: the dataset.
    cls: class index to downsample.
    fraction: target share of `cls`, in (0, 1).
    seed: seed for the choice of kept samples.
    split: 'train', 'test' or 'both'.

  Returns:
    A new Dataset; raises ValueError if the split has fewer than m samples
    of `cls` (no upsampling) or m would be 0.
  """
  fraction = core.check_fraction(f'{ds.name}: minority fraction', fraction)
  _check_class_list(f'{ds.name}: class', [cls], ds.num_classes)
  if split not in _IMBALANCED_SPLITS:
    raise ValueError(f'{ds.name}: split must be one of {_IMBALANCED_SPLITS}, got {split!r}')
  splits = ('train', 'test') if split == 'both' else (split,)
  plans = {}
  for s in splits:  # Validate every split before drawing anything.
    y = getattr(ds, f'y_{s}')
    cls_idx = np.flatnonzero(y == cls)
    m = downsampled_count(fraction, y.size - cls_idx.size)
    if m > cls_idx.size or m == 0:
      raise ValueError(
          f'{ds.name}: cannot make class {cls} a {fraction} share of {s}: '
          f'needs {m} samples, has {cls_idx.size}'
      )
    plans[s] = (cls_idx, m)
  rng = np.random.default_rng(seed)
  arrays = {}
  for s in splits:
    cls_idx, m = plans[s]
    y = getattr(ds, f'y_{s}')
    keep = y != cls
    keep[rng.choice(cls_idx, size=m, replace=False)] = True
    arrays[f'x_{s}'] = getattr(ds, f'x_{s}')[keep]
    arrays[f'y_{s}'] = y[keep]
    logging.info(
        '%s: kept %d of %d %s samples of class %d (%.4f of %d).',
        ds.name,
        m,
        cls_idx.size,
        s,
        cls,
        m / keep.sum(),
        keep.sum(),
    )
  return dataclasses.replace(ds, **arrays)


def truncate(
    ds: core.Dataset, max_train: int | None = None, max_test: int | None = None
) -> core.Dataset:
  """Keeps the first `max_train` train and `max_test` test rows (a prefix)."""
  arrays = {}
  for s, limit in (('train', max_train), ('test', max_test)):
    if limit is None:
      continue
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
      raise ValueError(f'max_{s} must be a positive int, got {limit!r}')
    arrays[f'x_{s}'] = getattr(ds, f'x_{s}')[:limit]
    arrays[f'y_{s}'] = getattr(ds, f'y_{s}')[:limit]
  return dataclasses.replace(ds, **arrays) if arrays else ds


def check_config(data_config: ml_collections.ConfigDict) -> None:
  """Validates the derived-task fields before any data is loaded."""
  classes = data_config.get('classes', None)
  if classes is not None:
    _check_class_list('data.classes', classes)
  positive = data_config.get('positive_classes', None)
  if positive is not None:
    _check_class_list('data.positive_classes', positive)
  fraction = data_config.get('minority_fraction', None)
  if fraction is not None:
    core.check_fraction('data.minority_fraction', fraction)
    split = data_config.get('imbalanced_split', 'train')
    if split not in _IMBALANCED_SPLITS:
      raise ValueError(f'data.imbalanced_split must be one of {_IMBALANCED_SPLITS}, got {split!r}')
  for key in ('max_train', 'max_test'):
    limit = data_config.get(key, None)
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1
    ):
      raise ValueError(f'data.{key} must be a positive int, got {limit!r}')


def apply_derived(
    ds: core.Dataset, data_config: ml_collections.ConfigDict, *, seed: int
) -> core.Dataset:
  """Applies classes, positive_classes, minority_fraction, max_train/test."""
  classes = data_config.get('classes', None)
  if classes is not None:
    ds = subset_classes(ds, classes)
  positive = data_config.get('positive_classes', None)
  if positive is not None:
    ds = binarize(ds, positive)
  fraction = data_config.get('minority_fraction', None)
  if fraction is not None:
    ds = downsample_class(ds, 1, fraction, seed, split=data_config.get('imbalanced_split', 'train'))
  return truncate(ds, data_config.get('max_train', None), data_config.get('max_test', None))
