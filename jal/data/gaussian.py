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

"""Two 2D isotropic Gaussians, generated from a seed (no files)."""

from __future__ import annotations

import ml_collections
import numpy as np

from jal.data import core


def gaussian_blobs(
    num_train: int = 5000,
    num_test: int = 500,
    separation: float = 2.0,
    std: float = 1.0,
    seed: int = 0,
) -> core.Dataset:
  """Two isotropic 2D Gaussians with equal variance.

  Class 0 is centred at (-separation/2, 0), class 1 at (+separation/2, 0).
  Each split has exactly floor(n/2) samples of class 0 and ceil(n/2) of
  class 1, in shuffled order. Train then test are drawn from one
  `np.random.default_rng(seed)` stream, so the result is a function of the
  arguments.

  Returns:
    Dataset with x f32[n, 2], y i32[n], mean/std None.
  """
  for arg, value in (('num_train', num_train), ('num_test', num_test)):
    if int(value) != value or value < 2:
      raise ValueError(f'gaussian_blobs: {arg} must be an int >= 2, got {value!r}')
  if not std > 0:
    raise ValueError(f'gaussian_blobs: std must be > 0, got {std!r}')
  rng = np.random.default_rng(seed)
  centres = np.array([[-separation / 2, 0.0], [separation / 2, 0.0]])

  def draw(n):
    y = np.repeat(np.array([0, 1], np.int32), [n // 2, n - n // 2])
    y = rng.permutation(y)
    x = centres[y] + std * rng.standard_normal((n, 2))
    return x.astype(np.float32), y.astype(np.int32)

  x_train, y_train = draw(int(num_train))
  x_test, y_test = draw(int(num_test))
  return core.Dataset(
      name='gaussian_blobs',
      x_train=x_train,
      y_train=y_train,
      x_test=x_test,
      y_test=y_test,
      num_classes=2,
      class_names=('0', '1'),
      mean=None,
      std=None,
  )


def load_gaussian_blobs(
    data_config: ml_collections.ConfigDict, *, data_dir: str | None, seed: int = 0
) -> core.Dataset:
  """`gaussian_blobs` from config fields; data seed defaults to `seed`."""
  del data_dir  # Unused.
  return gaussian_blobs(
      num_train=data_config.get('num_train', 5000),
      num_test=data_config.get('num_test', 500),
      separation=data_config.get('separation', 2.0),
      std=data_config.get('std', 1.0),
      seed=data_config.get('seed', seed),
  )
