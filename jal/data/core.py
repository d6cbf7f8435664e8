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

"""The `Dataset` type and the helpers that every loader shares.

A `Dataset` is a classification dataset held fully in host memory as numpy
arrays. The loaders (mnist.py, cifar.py, retinopathy.py, gaussian.py) build
one; the derived tasks (tasks.py) map one to another.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
from typing import Any

import numpy as np

DATA_DIR_ENV = 'JAL_DATA_DIR'


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification dataset held in host memory.

  Attributes:
    name: human-readable name, e.g. 'cifar10' or 'cifar10[7,1]'.
    x_train: images u8[n, h, w, c] (NHWC), or f32[n, 2] for 2D toy data.
    y_train: i32[n] labels in [0, num_classes).
    x_test: same layout as x_train, [m, ...].
    y_test: i32[m].
    num_classes: number of classes.
    class_names: one name per class.
    mean: per-channel mean on the 0-1 scale for normalisation; None for
      non-image data.
    std: per-channel std on the 0-1 scale; None for non-image data.
    positive_class: for binary (imbalanced) tasks, the class whose average
      precision is the metric; None otherwise.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  positive_class: int | None = None

  def __post_init__(self):
    for split in ('train', 'test'):
      x, y = getattr(self, f'x_{split}'), getattr(self, f'y_{split}')
      if x.shape[0] != y.shape[0]:
        raise ValueError(
            f'{self.name}: x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}'
        )
      if y.ndim != 1 or y.dtype != np.int32:
        raise ValueError(f'{self.name}: y_{split} must be int32[n], got {y.dtype}{list(y.shape)}')
    if len(self.class_names) != self.num_classes:
      raise ValueError(
          f'{self.name}: {len(self.class_names)} class names for {self.num_classes} classes'
      )
    if self.positive_class is not None and not 0 <= self.positive_class < self.num_classes:
      raise ValueError(
          f'{self.name}: positive_class {self.positive_class} not in [0, {self.num_classes})'
      )


# --------------------------------------------------------------------------
# Helpers shared by the loaders.
# --------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | None) -> str | None:
  """Returns `data_dir` if set, else $JAL_DATA_DIR if set, else None."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get(DATA_DIR_ENV) or None


def search_dirs(data_dir: str | None, subdir: str) -> list[str]:
  """The directories searched for a dataset: `data_dir`, `data_dir/subdir`."""
  if not data_dir:
    return []
  return [data_dir, os.path.join(data_dir, subdir)]


def labels(y: Any) -> np.ndarray:
  """Any integer label sequence -> i32[n]."""
  y = np.asarray(y)
  if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
    raise ValueError(f'labels must be a 1D integer sequence, got {y.dtype}{list(y.shape)}')
  return y.astype(np.int32)


def check_labels(name: str, y: np.ndarray, num_classes: int) -> None:
  """Raises ValueError unless every label of `name` is in [0, num_classes)."""
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
        f'{name}: labels out of range [0, {num_classes}): min {y.min()}, max {y.max()}'
    )


def not_found_message(what: str, files: str, searched: Sequence[str], tfds_name: str) -> str:
  """The one-line error for a dataset found neither in `searched` nor in tfds."""
  where = ', '.join(searched) if searched else 'no data dir given'
  return (
      f'{what} not found: put {files} in --config.data_dir or '
      f'${DATA_DIR_ENV} (searched: {where}), or prepare tfds '
      f"'{tfds_name}' (set data.download=True to let tfds download it)"
  )


def check_fraction(what: str, fraction: Any) -> float:
  """`fraction` as a float; ValueError naming `what` unless it is a number in (0, 1)."""
  if (
      isinstance(fraction, bool)
      or not isinstance(fraction, (int, float, np.floating, np.integer))
      or not (0.0 < fraction < 1.0)
  ):
    raise ValueError(f'{what} must be a number in (0, 1), got {fraction!r}')
  return float(fraction)
