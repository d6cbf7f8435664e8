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

"""CIFAR-10 and CIFAR-100 from the python-pickle folder or archive, else tfds.

The pickles are read with an unpickler that admits only plain data and numpy
arrays, so a data file cannot run code while it loads.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib
import os
import pickle
import posixpath
import tarfile
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from jal.data import core
from jal.data import tfds as tfds_lib

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
  """Where a CIFAR variant keeps its pickles and which keys it uses."""

  name: str
  title: str
  folder: str
  archive: str
  train_files: tuple[str, ...]
  test_file: str
  meta_file: str
  label_key: str
  names_key: str
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  tfds_name: str


_CIFAR10 = _CifarLayout(
    name='cifar10',
    title='CIFAR-10',
    folder='cifar-10-batches-py',
    archive='cifar-10-python.tar.gz',
    train_files=tuple(f'data_batch_{i}' for i in range(1, 6)),
    test_file='test_batch',
    meta_file='batches.meta',
    label_key='labels',
    names_key='label_names',
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    tfds_name='cifar10',
)

_CIFAR100 = _CifarLayout(
    name='cifar100',
    title='CIFAR-100',
    folder='cifar-100-python',
    archive='cifar-100-python.tar.gz',
    train_files=('train',),
    test_file='test',
    meta_file='meta',
    label_key='fine_labels',
    names_key='fine_label_names',
    num_classes=100,
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
    tfds_name='cifar100',
)


def _pickle_get(d: dict[Any, Any], key: str, source: str) -> Any:
  """Looks up `key` in a CIFAR pickle dict whose keys are bytes or str."""
  for k in (key.encode(), key):
    if k in d:
      return d[k]
  raise ValueError(f'{source} has no key {key!r} (keys: {sorted(map(str, d))})')


class _RefusedGlobal(ValueError):
  """A CIFAR pickle names a global that the format never holds."""


def _numpy_core(submodule: str) -> Any:
  """numpy._core.<submodule> (numpy 2), else numpy.core.<submodule>."""
  try:
    return importlib.import_module(f'numpy._core.{submodule}')
  except ImportError:
    return importlib.import_module(f'numpy.core.{submodule}')


def _latin1_encode(text: Any, encoding: Any) -> bytes:
  """`codecs.encode` as Python 3 pickles bytes at protocol <= 2 (latin-1)."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(
        f'_codecs.encode of {type(text).__name__} with encoding {encoding!r}, not latin1'
    )
  return text.encode('latin1')


def _cifar_global(module: str, name: str) -> Any:
  """The object a global in a CIFAR pickle names, or None if it's not one.

  The genuine files (Python 2, protocol 2) hold dicts, lists, str/bytes, ints
  and numpy uint8 arrays, which name only numpy's `_reconstruct`, `ndarray`
  and `dtype`. Re-pickled copies may also name the numpy 2 module
  (`numpy._core`), `_frombuffer` (protocol 5) or `_codecs.encode` (bytes
  written by Python 3 at protocol <= 2).
  """
  if module == 'numpy' and name in ('ndarray', 'dtype'):
    return getattr(np, name)
  canonical = module.replace('numpy._core.', 'numpy.core.', 1)
  if (canonical, name) in (
      ('numpy.core.multiarray', '_reconstruct'),
      ('numpy.core.numeric', '_frombuffer'),
  ):
    return getattr(_numpy_core(canonical.rsplit('.', 1)[1]), name)
  if (module, name) == ('_codecs', 'encode'):
    return _latin1_encode
  return None


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles only what a CIFAR pickle holds (see `_cifar_global`).

  A pickle can call any importable function while it loads (`os.system`
  included); this one refuses every global that `_cifar_global` does not
  admit, with a one-line ValueError naming the file and the global.
  """

  def __init__(self, f, source: str):
    super().__init__(f, encoding='bytes')
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    obj = _cifar_global(module, name)
    if obj is None:
      raise _RefusedGlobal(
          f'refusing to load {self._source}: it references '
          f'{module}.{name}, which a CIFAR pickle never holds'
      )
    return obj


def _unpickle(f, source: str) -> dict[Any, Any]:
  """One CIFAR pickle -> its dict, loaded with `_CifarUnpickler`."""
  try:
    d = _CifarUnpickler(f, source).load()
  except _RefusedGlobal:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'corrupt CIFAR pickle {source}: {type(e).__name__}: {e}') from e
  if not isinstance(d, dict):
    raise ValueError(f'corrupt CIFAR pickle {source}: expected a dict, got {type(d).__name__}')
  return d


def _cifar_batch(
    d: dict[Any, Any], source: str, layout: _CifarLayout
) -> tuple[np.ndarray, np.ndarray]:
  """One pickle dict -> (x: u8[n, 32, 32, 3], y: i32[n]).

  Rows of `data` are 3072 bytes, channel-major: 1024 red (row-major 32x32),
  then 1024 green, then 1024 blue.
  """
  data = np.asarray(_pickle_get(d, 'data', source))
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f'{source}: data must be uint8[n, 3072], got {data.dtype}{list(data.shape)}')
  y = core.labels(_pickle_get(d, layout.label_key, source))
  if y.shape[0] != data.shape[0]:
    raise ValueError(f'{source}: {data.shape[0]} images but {y.shape[0]} labels')
  x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return x, y


def _read_cifar(
    open_member: Callable[[str], Any], layout: _CifarLayout, where: str
) -> core.Dataset:
  """Reads a CIFAR layout given `open_member(fname) -> binary file`."""

  def load(fname):
    source = f'{where}/{fname}'
    with open_member(fname) as f:
      return _unpickle(f, source), source

  xs, ys = [], []
  for fname in layout.train_files:
    x, y = _cifar_batch(*load(fname), layout=layout)
    xs.append(x)
    ys.append(y)
  x_test, y_test = _cifar_batch(*load(layout.test_file), layout=layout)
  meta, meta_source = load(layout.meta_file)
  class_names = tuple(
      n.decode() if isinstance(n, bytes) else str(n)
      for n in _pickle_get(meta, layout.names_key, meta_source)
  )
  if len(class_names) != layout.num_classes:
    raise ValueError(
        f'{meta_source}: {len(class_names)} class names, expected {layout.num_classes}'
    )
  ds = core.Dataset(
      name=layout.name,
      x_train=np.ascontiguousarray(np.concatenate(xs)),
      y_train=np.concatenate(ys),
      x_test=np.ascontiguousarray(x_test),
      y_test=y_test,
      num_classes=layout.num_classes,
      class_names=class_names,
      mean=layout.mean,
      std=layout.std,
  )
  core.check_labels(layout.name, ds.y_train, layout.num_classes)
  core.check_labels(layout.name, ds.y_test, layout.num_classes)
  return ds


def _read_cifar_archive(path: str, layout: _CifarLayout) -> core.Dataset:
  """Reads the pickles straight out of the .tar.gz (no extraction to disk)."""
  try:
    tar = tarfile.open(path, 'r:*')
  except (tarfile.TarError, OSError) as e:
    raise ValueError(f'corrupt archive {path}: {e}') from e
  with tar:
    members = {}
    for m in tar.getmembers():
      if m.isfile():
        parts = posixpath.normpath(m.name).split('/')
        members.setdefault(parts[-1], m)
    needed = layout.train_files + (layout.test_file, layout.meta_file)
    missing = [f for f in needed if f not in members]
    if missing:
      raise ValueError(f'archive {path} lacks {", ".join(missing)}')

    def open_member(fname):
      return tar.extractfile(members[fname])

    return _read_cifar(open_member, layout, path)


def _load_cifar(
    layout: _CifarLayout, data_config: ml_collections.ConfigDict, data_dir: str | None
) -> core.Dataset:
  """Folder, then archive, in each search dir; then tfds."""
  searched = core.search_dirs(data_dir, layout.name)
  needed = layout.train_files + (layout.test_file, layout.meta_file)
  for directory in searched:
    folder = os.path.join(directory, layout.folder)
    if all(os.path.isfile(os.path.join(folder, f)) for f in needed):
      logging.info('Loading %s from %s.', layout.title, folder)
      return _read_cifar(lambda f: open(os.path.join(folder, f), 'rb'), layout, folder)
    archive = os.path.join(directory, layout.archive)
    if os.path.isfile(archive):
      logging.info('Loading %s from %s.', layout.title, archive)
      return _read_cifar_archive(archive, layout)
  files = f'{layout.folder}/ ({", ".join(needed)}) or {layout.archive}'
  x_train, y_train, x_test, y_test, class_names = tfds_lib.load_or_raise(
      layout.tfds_name,
      data_config,
      core.not_found_message(layout.title, files, searched, layout.tfds_name),
  )
  return core.Dataset(
      name=layout.name,
      x_train=x_train,
      y_train=y_train,
      x_test=x_test,
      y_test=y_test,
      num_classes=layout.num_classes,
      class_names=class_names,
      mean=layout.mean,
      std=layout.std,
  )


def load_cifar10(
    data_config: ml_collections.ConfigDict, *, data_dir: str | None, seed: int = 0
) -> core.Dataset:
  """CIFAR-10: x u8[n, 32, 32, 3] (50000 train, 10000 test), y i32[n]."""
  del seed  # Unused.
  return _load_cifar(_CIFAR10, data_config, data_dir)


def load_cifar100(
    data_config: ml_collections.ConfigDict, *, data_dir: str | None, seed: int = 0
) -> core.Dataset:
  """CIFAR-100 fine labels: x u8[n, 32, 32, 3], y i32[n] in [0, 100)."""
  del seed  # Unused.
  return _load_cifar(_CIFAR100, data_config, data_dir)
