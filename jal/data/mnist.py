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

"""MNIST from idx files (gzipped or not) or Keras `mnist.npz`, else tfds."""

from __future__ import annotations

import gzip
import os

from absl import logging
import ml_collections
import numpy as np

from jal.data import core
from jal.data import tfds as tfds_lib

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

_MNIST_IDX = (
    ('x_train', 'train-images-idx3-ubyte', 3),
    ('y_train', 'train-labels-idx1-ubyte', 1),
    ('x_test', 't10k-images-idx3-ubyte', 3),
    ('y_test', 't10k-labels-idx1-ubyte', 1),
)


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Parses an idx file of unsigned bytes (gzipped if `path` ends in .gz).

  Args:
    path: idx file, e.g. 'train-images-idx3-ubyte.gz'.
    ndim: expected number of dimensions (3 for images, 1 for labels).

  Returns:
    u8[d0, ..., d{ndim-1}].
  """
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError.
    raise ValueError(f'corrupt idx file {path}: {e}') from e
  magic = int.from_bytes(raw[:4], 'big') if len(raw) >= 4 else None
  expected = 0x0800 | ndim  # 0x00 0x00, dtype 0x08 (ubyte), ndim.
  if magic != expected:
    got = 'too short' if magic is None else f'{magic:#010x}'
    raise ValueError(f'corrupt idx file {path}: magic number {got}, expected {expected:#010x}')
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  if len(raw) != header + int(np.prod(shape)):
    raise ValueError(f'corrupt idx file {path}: {len(raw) - header} data bytes for shape {shape}')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_mnist_idx(directory: str) -> dict[str, str] | None:
  paths = {}
  for key, stem, _ in _MNIST_IDX:
    for fname in (stem + '.gz', stem):
      if os.path.isfile(os.path.join(directory, fname)):
        paths[key] = os.path.join(directory, fname)
        break
    else:
      return None
  return paths


def _mnist_dataset(x_train, y_train, x_test, y_test, source) -> core.Dataset:
  """Wraps u8[n, 28, 28] arrays (channel axis optional) into a Dataset."""
  arrays = {}
  for key, x in (('x_train', x_train), ('x_test', x_test)):
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[..., None]
    if x.shape[1:] != (28, 28, 1) or x.dtype != np.uint8:
      raise ValueError(
          f'MNIST {key} from {source} must be uint8[n, 28, 28], got {x.dtype}{list(x.shape)}'
      )
    arrays[key] = x
  ds = core.Dataset(
      name='mnist',
      x_train=arrays['x_train'],
      y_train=core.labels(y_train),
      x_test=arrays['x_test'],
      y_test=core.labels(y_test),
      num_classes=10,
      class_names=tuple(str(i) for i in range(10)),
      mean=MNIST_MEAN,
      std=MNIST_STD,
  )
  core.check_labels('mnist', ds.y_train, 10)
  core.check_labels('mnist', ds.y_test, 10)
  return ds


def load_mnist(
    data_config: ml_collections.ConfigDict, *, data_dir: str | None, seed: int = 0
) -> core.Dataset:
  """MNIST: x u8[n, 28, 28, 1] (60000 train, 10000 test), y i32[n]."""
  del seed  # Unused.
  searched = core.search_dirs(data_dir, 'mnist')
  for directory in searched:
    npz = os.path.join(directory, 'mnist.npz')
    if os.path.isfile(npz):
      with np.load(npz) as f:
        missing = [k for k, _, _ in _MNIST_IDX if k not in f]
        if missing:
          raise ValueError(f'{npz} lacks keys {missing}; expected x_train, y_train, x_test, y_test')
        arrays = {k: f[k] for k, _, _ in _MNIST_IDX}
      logging.info('Loading MNIST from %s.', npz)
      return _mnist_dataset(**arrays, source=npz)
    paths = _find_mnist_idx(directory)
    if paths:
      logging.info('Loading MNIST from idx files in %s.', directory)
      arrays = {k: read_idx(paths[k], ndim) for k, _, ndim in _MNIST_IDX}
      return _mnist_dataset(**arrays, source=directory)
  files = (
      'mnist.npz or the four idx files ('
      + ', '.join(stem + '.gz' for _, stem, _ in _MNIST_IDX)
      + ', .gz optional)'
  )
  x_train, y_train, x_test, y_test, _ = tfds_lib.load_or_raise(
      'mnist', data_config, core.not_found_message('MNIST', files, searched, 'mnist')
  )
  return _mnist_dataset(x_train, y_train, x_test, y_test, source='tfds')
