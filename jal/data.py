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

"""Datasets for active learning: in-memory numpy arrays plus derived tasks.

Every dataset is held fully in host memory as numpy arrays (the largest,
CIFAR, is 180 MB), which is what pool-based active learning needs: the
unlabelled pool is indexed, scored and subset over and over.

Base datasets (registry `DATASETS`):

  mnist           idx files (gz or not) or Keras `mnist.npz`, else tfds.
  cifar10         `cifar-10-batches-py/` or `cifar-10-python.tar.gz`, else tfds.
  cifar100        `cifar-100-python/` or `cifar-100-python.tar.gz`, else tfds.
  retinopathy     Kaggle diabetic retinopathy, 5 grades: `trainLabels.csv` +
                  `train/` images (+ `retinopathy_solution.csv` + `test/`,
                  else a seeded stratified held-out split), resized to
                  `image_size` and cached as .npz; else tfds (manual files).
  gaussian_blobs  two 2D isotropic Gaussians (generated, no files).

Derived tasks are pure functions `Dataset -> Dataset` (`subset_classes`,
`binarize`, `downsample_class`, `truncate`), which `load_dataset` applies in
that order when the config names them:

  classes            list[int]  -> subset_classes(ds, classes)
  positive_classes   list[int]  -> binarize(ds, positive_classes)
  minority_fraction  float      -> downsample_class(ds, 1, fraction, seed,
                                     split=imbalanced_split ('train'))
  max_train/max_test int        -> truncate(ds, max_train, max_test)

The study's retinopathy task (grade >= 2 vs rest at 1:19) is composed the
same way: positive_classes=(2, 3, 4), minority_fraction=0.05.

tensorflow-datasets is only a fallback when no files are found, and it never
downloads unless `data_config.download` is true.

CIFAR pickles are read with an unpickler that admits only plain data and numpy
arrays, so a data file cannot run code while it loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import concurrent.futures
import csv
import dataclasses
import gzip
import hashlib
import importlib
import io
import os
import pickle
import posixpath
import tarfile
import tempfile
from typing import Any
import zipfile

from absl import logging
import ml_collections
import numpy as np

DATA_DIR_ENV = 'JAL_DATA_DIR'

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Retinopathy is normalised like ImageNet: the study fine-tunes
# ImageNet-pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RETINOPATHY_CLASSES = ('No DR', 'Mild', 'Moderate', 'Severe',
                       'Proliferative DR')

_IMBALANCED_SPLITS = ('train', 'test', 'both')


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
        raise ValueError(f'{self.name}: x_{split} has {x.shape[0]} rows but '
                         f'y_{split} has {y.shape[0]}')
      if y.ndim != 1 or y.dtype != np.int32:
        raise ValueError(f'{self.name}: y_{split} must be int32[n], got '
                         f'{y.dtype}{list(y.shape)}')
    if len(self.class_names) != self.num_classes:
      raise ValueError(f'{self.name}: {len(self.class_names)} class names for '
                       f'{self.num_classes} classes')
    if (self.positive_class is not None
        and not 0 <= self.positive_class < self.num_classes):
      raise ValueError(f'{self.name}: positive_class {self.positive_class} not '
                       f'in [0, {self.num_classes})')


# --------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | None) -> str | None:
  """Returns `data_dir` if set, else $JAL_DATA_DIR if set, else None."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get(DATA_DIR_ENV) or None


def _search_dirs(data_dir: str | None, subdir: str) -> list[str]:
  """The directories searched for a dataset: `data_dir`, `data_dir/subdir`."""
  if not data_dir:
    return []
  return [data_dir, os.path.join(data_dir, subdir)]


def _labels(y: Any) -> np.ndarray:
  """Any integer label sequence -> i32[n]."""
  y = np.asarray(y)
  if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
    raise ValueError(f'labels must be a 1D integer sequence, got '
                     f'{y.dtype}{list(y.shape)}')
  return y.astype(np.int32)


def _check_labels(name: str, y: np.ndarray, num_classes: int) -> None:
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'{name}: labels out of range [0, {num_classes}): '
                     f'min {y.min()}, max {y.max()}')


def _not_found_message(what: str, files: str, searched: Sequence[str],
                       tfds_name: str) -> str:
  where = ', '.join(searched) if searched else 'no data dir given'
  return (f'{what} not found: put {files} in --config.data_dir or '
          f'${DATA_DIR_ENV} (searched: {where}), or prepare tfds '
          f"'{tfds_name}' (set data.download=True to let tfds download it)")


# --------------------------------------------------------------------------
# tensorflow-datasets fallback.
# --------------------------------------------------------------------------


def _not_tfds_variant_warning(record: Any) -> bool:
  """A logging filter: False for tfds's "Variant folder ..." warnings."""
  return not ('/tensorflow_datasets/' in record.pathname
              and str(record.msg).startswith('Variant folder '))


def _tfds_is_prepared(builder: Any) -> bool:
  """`builder.is_prepared()`, quiet when the builder's folder is absent.

  Asked about a variant folder that does not exist, tfds warns "Variant
  folder ... has no dataset_info.json" ahead of jal's own one-line not-found
  error, so that warning is dropped; a folder that exists but is incomplete
  (an interrupted prepare) is still warned about. A remote folder (gs://),
  which `os.path` can't see, is probed quietly too.
  """
  if os.path.isdir(os.fspath(builder.data_dir)):
    return builder.is_prepared()
  absl_logger = logging.get_absl_logger()
  absl_logger.addFilter(_not_tfds_variant_warning)
  try:
    return builder.is_prepared()
  finally:
    absl_logger.removeFilter(_not_tfds_variant_warning)


def _load_tfds(tfds_name: str, *, tfds_data_dir: str | None, download: bool,
               manual_dir: str | None = None, manual_files: Sequence[str] = (),
               image_fn: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[np.ndarray, ...] | None:
  """Reads train/test of a tfds image dataset, or None if it isn't prepared.

  Never touches the network unless `download` is true: `is_prepared()` only
  looks at the local tfds data dir.

  Args:
    tfds_name: tfds builder name.
    tfds_data_dir: tfds data dir; None for the tfds default.
    download: whether an unprepared dataset may be downloaded and prepared.
    manual_dir: tfds manual download dir; None for the tfds default
      (`<tfds data dir>/downloads/manual`).
    manual_files: for datasets prepared from manually downloaded files: the
      names that must exist in the manual dir. If any is missing, nothing is
      prepared and None is returned, even with `download`.
    image_fn: applied to each decoded image u8[h, w, c] before stacking (e.g.
      a resize, for datasets whose images vary in size); None: stack as is.

  Returns:
    (x_train: u8[n, h, w, c], y_train: i32[n], x_test, y_test, class_names),
    or None if tfds is not installed or the dataset is not prepared.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  builder = tfds.builder(tfds_name, data_dir=tfds_data_dir)
  if not _tfds_is_prepared(builder):
    if not download:
      return None
    kwargs = {}
    if manual_files:
      manual_dir = manual_dir or os.path.join(
          os.fspath(builder.data_dir_root), 'downloads', 'manual')
      missing = [f for f in manual_files
                 if not os.path.exists(os.path.join(manual_dir, f))]
      if missing:
        logging.info('Not preparing tfds %r: manual dir %s lacks %s.',
                     tfds_name, manual_dir, ', '.join(missing))
        return None
      kwargs['download_config'] = tfds.download.DownloadConfig(
          manual_dir=manual_dir)
    logging.info('Downloading and preparing tfds %r into %s.', tfds_name,
                 builder.data_dir)
    builder.download_and_prepare(**kwargs)

  def stack(examples, n):
    """Iterable of {'image', 'label'} -> (u8[n, ...], i32[n]), preallocated."""
    x, y = None, np.zeros(n, np.int64)
    for i, e in enumerate(examples):
      image = np.asarray(e['image'], np.uint8)
      if image_fn is not None:
        image = image_fn(image)
      if x is None:
        x = np.empty((n,) + image.shape, np.uint8)
      x[i] = image
      y[i] = int(e['label'])
    if x is None:
      raise ValueError('split is empty')
    return x, _labels(y)

  def read(split):
    errors = []
    try:
      source = builder.as_data_source(split=split)
      return stack((source[i] for i in range(len(source))), len(source))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'as_data_source: {type(e).__name__}: {e}')
    try:
      if image_fn is None:
        x, y = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        return np.asarray(x, np.uint8), _labels(y)
      n = builder.info.splits[split].num_examples
      return stack(tfds.as_numpy(builder.as_dataset(split=split)), n)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'as_dataset: {type(e).__name__}: {e}')
    msg = '; '.join(' '.join(str(err).split()) for err in errors)
    raise RuntimeError(f"tfds '{tfds_name}' is prepared in {builder.data_dir} "
                       f'but split {split!r} could not be read ({msg})')

  x_train, y_train = read('train')
  x_test, y_test = read('test')
  class_names = tuple(builder.info.features['label'].names)
  logging.info('Loaded tfds %r from %s.', tfds_name, builder.data_dir)
  return x_train, y_train, x_test, y_test, class_names


def _tfds_or_raise(tfds_name: str, data_config: ml_collections.ConfigDict,
                   not_found: str) -> tuple[np.ndarray, ...]:
  out = _load_tfds(tfds_name,
                   tfds_data_dir=data_config.get('tfds_data_dir', None),
                   download=bool(data_config.get('download', False)))
  if out is None:
    raise FileNotFoundError(not_found)
  return out


# --------------------------------------------------------------------------
# MNIST.
# --------------------------------------------------------------------------

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
    raise ValueError(f'corrupt idx file {path}: magic number {got}, expected '
                     f'{expected:#010x}')
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  if len(raw) != header + int(np.prod(shape)):
    raise ValueError(f'corrupt idx file {path}: {len(raw) - header} data '
                     f'bytes for shape {shape}')
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


def _mnist_dataset(x_train, y_train, x_test, y_test, source) -> Dataset:
  """Wraps u8[n, 28, 28] arrays (channel axis optional) into a Dataset."""
  arrays = {}
  for key, x in (('x_train', x_train), ('x_test', x_test)):
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[..., None]
    if x.shape[1:] != (28, 28, 1) or x.dtype != np.uint8:
      raise ValueError(f'MNIST {key} from {source} must be uint8[n, 28, 28], '
                       f'got {x.dtype}{list(x.shape)}')
    arrays[key] = x
  ds = Dataset(
      name='mnist',
      x_train=arrays['x_train'], y_train=_labels(y_train),
      x_test=arrays['x_test'], y_test=_labels(y_test),
      num_classes=10, class_names=tuple(str(i) for i in range(10)),
      mean=MNIST_MEAN, std=MNIST_STD)
  _check_labels('mnist', ds.y_train, 10)
  _check_labels('mnist', ds.y_test, 10)
  return ds


def load_mnist(data_config: ml_collections.ConfigDict, *,
               data_dir: str | None, seed: int = 0) -> Dataset:
  """MNIST: x u8[n, 28, 28, 1] (60000 train, 10000 test), y i32[n]."""
  del seed  # Unused.
  searched = _search_dirs(data_dir, 'mnist')
  for directory in searched:
    npz = os.path.join(directory, 'mnist.npz')
    if os.path.isfile(npz):
      with np.load(npz) as f:
        missing = [k for k, _, _ in _MNIST_IDX if k not in f]
        if missing:
          raise ValueError(f'{npz} lacks keys {missing}; expected x_train, '
                           'y_train, x_test, y_test')
        arrays = {k: f[k] for k, _, _ in _MNIST_IDX}
      logging.info('Loading MNIST from %s.', npz)
      return _mnist_dataset(**arrays, source=npz)
    paths = _find_mnist_idx(directory)
    if paths:
      logging.info('Loading MNIST from idx files in %s.', directory)
      arrays = {k: read_idx(paths[k], ndim) for k, _, ndim in _MNIST_IDX}
      return _mnist_dataset(**arrays, source=directory)
  files = ('mnist.npz or the four idx files (' +
           ', '.join(stem + '.gz' for _, stem, _ in _MNIST_IDX) +
           ', .gz optional)')
  x_train, y_train, x_test, y_test, _ = _tfds_or_raise(
      'mnist', data_config,
      _not_found_message('MNIST', files, searched, 'mnist'))
  return _mnist_dataset(x_train, y_train, x_test, y_test, source='tfds')


# --------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python-pickle layout).
# --------------------------------------------------------------------------


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
    name='cifar10', title='CIFAR-10', folder='cifar-10-batches-py',
    archive='cifar-10-python.tar.gz',
    train_files=tuple(f'data_batch_{i}' for i in range(1, 6)),
    test_file='test_batch', meta_file='batches.meta', label_key='labels',
    names_key='label_names', num_classes=10, mean=CIFAR10_MEAN,
    std=CIFAR10_STD, tfds_name='cifar10')

_CIFAR100 = _CifarLayout(
    name='cifar100', title='CIFAR-100', folder='cifar-100-python',
    archive='cifar-100-python.tar.gz', train_files=('train',),
    test_file='test', meta_file='meta', label_key='fine_labels',
    names_key='fine_label_names', num_classes=100, mean=CIFAR100_MEAN,
    std=CIFAR100_STD, tfds_name='cifar100')


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
    raise pickle.UnpicklingError(f'_codecs.encode of {type(text).__name__} '
                                 f'with encoding {encoding!r}, not latin1')
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
  core = module.replace('numpy._core.', 'numpy.core.', 1)
  if (core, name) in (('numpy.core.multiarray', '_reconstruct'),
                      ('numpy.core.numeric', '_frombuffer')):
    return getattr(_numpy_core(core.rsplit('.', 1)[1]), name)
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
      raise _RefusedGlobal(f'refusing to load {self._source}: it references '
                           f'{module}.{name}, which a CIFAR pickle never holds')
    return obj


def _unpickle(f, source: str) -> dict[Any, Any]:
  """One CIFAR pickle -> its dict, loaded with `_CifarUnpickler`."""
  try:
    d = _CifarUnpickler(f, source).load()
  except _RefusedGlobal:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'corrupt CIFAR pickle {source}: {type(e).__name__}: {e}'
                     ) from e
  if not isinstance(d, dict):
    raise ValueError(f'corrupt CIFAR pickle {source}: expected a dict, got '
                     f'{type(d).__name__}')
  return d


def _cifar_batch(d: dict[Any, Any], source: str,
                 layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
  """One pickle dict -> (x: u8[n, 32, 32, 3], y: i32[n]).

  Rows of `data` are 3072 bytes, channel-major: 1024 red (row-major 32x32),
  then 1024 green, then 1024 blue.
  """
  data = np.asarray(_pickle_get(d, 'data', source))
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f'{source}: data must be uint8[n, 3072], got '
                     f'{data.dtype}{list(data.shape)}')
  y = _labels(_pickle_get(d, layout.label_key, source))
  if y.shape[0] != data.shape[0]:
    raise ValueError(f'{source}: {data.shape[0]} images but {y.shape[0]} '
                     'labels')
  x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return x, y


def _read_cifar(open_member: Callable[[str], Any], layout: _CifarLayout,
                where: str) -> Dataset:
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
      for n in _pickle_get(meta, layout.names_key, meta_source))
  if len(class_names) != layout.num_classes:
    raise ValueError(f'{meta_source}: {len(class_names)} class names, '
                     f'expected {layout.num_classes}')
  ds = Dataset(
      name=layout.name,
      x_train=np.ascontiguousarray(np.concatenate(xs)),
      y_train=np.concatenate(ys),
      x_test=np.ascontiguousarray(x_test), y_test=y_test,
      num_classes=layout.num_classes, class_names=class_names,
      mean=layout.mean, std=layout.std)
  _check_labels(layout.name, ds.y_train, layout.num_classes)
  _check_labels(layout.name, ds.y_test, layout.num_classes)
  return ds


def _read_cifar_archive(path: str, layout: _CifarLayout) -> Dataset:
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


def _load_cifar(layout: _CifarLayout, data_config: ml_collections.ConfigDict,
                data_dir: str | None) -> Dataset:
  """Folder, then archive, in each search dir; then tfds."""
  searched = _search_dirs(data_dir, layout.name)
  needed = layout.train_files + (layout.test_file, layout.meta_file)
  for directory in searched:
    folder = os.path.join(directory, layout.folder)
    if all(os.path.isfile(os.path.join(folder, f)) for f in needed):
      logging.info('Loading %s from %s.', layout.title, folder)
      return _read_cifar(lambda f: open(os.path.join(folder, f), 'rb'),
                         layout, folder)
    archive = os.path.join(directory, layout.archive)
    if os.path.isfile(archive):
      logging.info('Loading %s from %s.', layout.title, archive)
      return _read_cifar_archive(archive, layout)
  files = f'{layout.folder}/ ({", ".join(needed)}) or {layout.archive}'
  x_train, y_train, x_test, y_test, class_names = _tfds_or_raise(
      layout.tfds_name, data_config,
      _not_found_message(layout.title, files, searched, layout.tfds_name))
  return Dataset(
      name=layout.name, x_train=x_train, y_train=y_train, x_test=x_test,
      y_test=y_test, num_classes=layout.num_classes, class_names=class_names,
      mean=layout.mean, std=layout.std)


def load_cifar10(data_config: ml_collections.ConfigDict, *,
                 data_dir: str | None, seed: int = 0) -> Dataset:
  """CIFAR-10: x u8[n, 32, 32, 3] (50000 train, 10000 test), y i32[n]."""
  del seed  # Unused.
  return _load_cifar(_CIFAR10, data_config, data_dir)


def load_cifar100(data_config: ml_collections.ConfigDict, *,
                  data_dir: str | None, seed: int = 0) -> Dataset:
  """CIFAR-100 fine labels: x u8[n, 32, 32, 3], y i32[n] in [0, 100)."""
  del seed  # Unused.
  return _load_cifar(_CIFAR100, data_config, data_dir)


# --------------------------------------------------------------------------
# Kaggle diabetic retinopathy.
# --------------------------------------------------------------------------

_DR_SUBDIR = 'diabetic_retinopathy'
_DR_TRAIN_CSV = 'trainLabels.csv'
_DR_TEST_CSV = 'retinopathy_solution.csv'
_DR_EXTENSIONS = ('.jpeg', '.jpg', '.png')  # Preferred first.
_DR_TFDS = 'diabetic_retinopathy_detection'
# What tfds needs in its manual dir to prepare without the network (with
# retinopathy_solution.csv there it skips downloading the test labels).
_DR_TFDS_MANUAL = (_DR_TRAIN_CSV, _DR_TEST_CSV, 'train', 'test', 'sample')
_DR_CACHE_VERSION = 1
_MAX_NAMED = 5  # Files named in an error or warning.


def _check_int(what: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(
      value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{what} must be an int >= {minimum}, got {value!r}')
  return int(value)


def _named(items: Sequence[str]) -> str:
  """The first few of `items`, comma-separated, with '...' if there are more."""
  more = ', ...' if len(items) > _MAX_NAMED else ''
  return ', '.join(items[:_MAX_NAMED]) + more


def _resize_rgb(image: Any, size: int) -> np.ndarray:
  """A PIL image or u8[h, w(, c)] -> RGB u8[size, size, 3] (bilinear)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image.squeeze(-1) if image.ndim == 3
                            and image.shape[-1] == 1 else image)
  image = image.convert('RGB')
  if image.size != (size, size):
    # Pillow's bilinear filter widens its support when downscaling, i.e. it
    # antialiases.
    image = image.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def _read_image(path: str, size: int) -> np.ndarray:
  """Decodes an image file and resizes it to u8[size, size, 3] RGB.

  JPEGs are decoded at the smallest DCT scale that still covers size x size
  (`Image.draft`, up to 8x faster for the ~3000x2000 retina photos), then
  resized with `_resize_rgb`. Raises OSError/ValueError/SyntaxError if the
  file is not a readable image (truncated files included).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    image.draft('RGB', (size, size))
    return _resize_rgb(image, size)


def _unreadable_errors() -> tuple[type[BaseException], ...]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return (OSError, ValueError, SyntaxError, EOFError,
          Image.DecompressionBombError)


def _decode_images(paths: Sequence[str], size: int, *, num_workers: int,
                   skip_unreadable: bool) -> tuple[np.ndarray, np.ndarray]:
  """Decodes and resizes `paths` on a thread pool (Pillow releases the GIL).

  Returns:
    (x: u8[k, size, size, 3], ok: bool[len(paths)]): the readable images in
    the order of `paths`, and which paths they are. Raises ValueError at the
    first unreadable file unless `skip_unreadable`.
  """
  errors = _unreadable_errors()

  def decode(path):
    try:
      return _read_image(path, size), None
    except errors as e:  # pylint: disable=catching-non-exception
      return None, f'{type(e).__name__}: {" ".join(str(e).split())}'

  x = np.empty((len(paths), size, size, 3), np.uint8)
  ok = np.ones(len(paths), bool)
  pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))
  try:
    for i, (image, error) in enumerate(pool.map(decode, paths)):
      if error is None:
        x[i] = image
        continue
      if not skip_unreadable:
        raise ValueError(f'unreadable image {paths[i]} ({error}); set '
                         'data.skip_unreadable=True to skip such files')
      logging.warning('Skipping unreadable image %s (%s).', paths[i], error)
      ok[i] = False
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  return (x if ok.all() else x[ok]), ok


def _read_label_csv(path: str) -> tuple[list[str], np.ndarray, str]:
  """Reads a Kaggle label CSV (columns image, level[, Usage]).

  Returns:
    (names: image names without extension, levels: i32[n] in [0, 5),
     sha256 hex digest of the file's bytes).
  """
  with open(path, 'rb') as f:
    raw = f.read()
  digest = hashlib.sha256(raw).hexdigest()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text: {e}') from e
  reader = csv.DictReader(io.StringIO(text))
  fields = [f.strip() for f in reader.fieldnames or []]
  if 'image' not in fields or 'level' not in fields:
    raise ValueError(f'{path} must have columns image,level; got '
                     f'{",".join(fields) or "no header"}')
  reader.fieldnames = fields
  names, levels = [], []
  for line, row in enumerate(reader, start=2):
    name, level = (row['image'] or '').strip(), (row['level'] or '').strip()
    if not name or not level.isdigit() or int(level) >= 5:
      raise ValueError(f'{path} line {line}: need an image name and a grade '
                       f'0-4, got image={name!r} level={level!r}')
    names.append(name)
    levels.append(int(level))
  if not names:
    raise ValueError(f'{path} has no rows')
  if len(set(names)) != len(names):
    seen, dups = set(), []
    for n in names:
      if n in seen:
        dups.append(n)
      seen.add(n)
    raise ValueError(f'{path} lists images more than once: {_named(dups)}')
  return names, np.asarray(levels, np.int32), digest


def _image_paths(folder: str, names: Sequence[str], csv_path: str) -> list[str]:
  """Maps CSV image names to files `folder/<name>.{jpeg,jpg,png}`."""
  rank = {ext: i for i, ext in enumerate(_DR_EXTENSIONS)}
  found = {}  # stem -> (rank, file name)
  with os.scandir(folder) as entries:
    for entry in entries:
      stem, ext = os.path.splitext(entry.name)
      r = rank.get(ext.lower())
      if r is not None and entry.is_file() and (
          stem not in found or r < found[stem][0]):
        found[stem] = (r, entry.name)
  missing = [n for n in names if n not in found]
  if missing:
    raise FileNotFoundError(
        f'{csv_path}: {len(missing)} of {len(names)} images not found in '
        f'{folder} (as <image>{"/".join(_DR_EXTENSIONS)}): {_named(missing)}')
  return [os.path.join(folder, found[n][1]) for n in names]


def _dr_cache_file(cache_dir: str, size: int, digests: Sequence[str]) -> str:
  """Cache path keyed by image size and the label CSVs' content hashes."""
  key = hashlib.sha256(
      f'v{_DR_CACHE_VERSION}:{size}:{":".join(digests)}'.encode()).hexdigest()
  return os.path.join(cache_dir, f'retinopathy_{size}px_{key[:16]}.npz')


def _read_dr_cache(path: str, size: int,
                   splits: Sequence[str]) -> dict[str, np.ndarray] | None:
  """The cached arrays, or None if absent or unusable (logged)."""
  if not os.path.isfile(path):
    return None
  keys = ['skipped'] + [f'{k}_{s}' for s in splits for k in ('x', 'y', 'names')]
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in keys}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('Ignoring unreadable retinopathy cache %s (%s: %s).',
                    path, type(e).__name__, e)
    return None
  for s in splits:
    x, y, names = (arrays[f'{k}_{s}'] for k in ('x', 'y', 'names'))
    if (x.dtype != np.uint8 or x.shape[1:] != (size, size, 3)
        or not x.shape[0] == y.shape[0] == names.shape[0]):
      logging.warning('Ignoring retinopathy cache %s: %s arrays have shapes '
                      '%s %s %s.', path, s, x.shape, y.shape, names.shape)
      return None
  return arrays


def _write_dr_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes the .npz atomically (tmp file + os.replace); failures are logged."""
  tmp = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path),
                               prefix=os.path.basename(path) + '.',
                               suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
    tmp = None
    logging.info('Cached decoded retinopathy images in %s.', path)
  except OSError as e:
    logging.warning('Could not write retinopathy cache %s (%s); the next load '
                    'decodes the images again.', path, e)
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def _read_dr_folder(directory: str, *, size: int, cache_dir: str,
                    skip_unreadable: bool,
                    num_workers: int) -> dict[str, np.ndarray]:
  """Kaggle layout in `directory` -> arrays, via the .npz cache.

  Returns:
    {'x_train': u8[n, size, size, 3], 'y_train': i32[n], 'names_train':
    str[n]} in trainLabels.csv row order (unreadable rows dropped if
    `skip_unreadable`), plus the same for 'test' from retinopathy_solution.csv
    and test/ when both exist.
  """
  csvs = {'train': os.path.join(directory, _DR_TRAIN_CSV)}
  test_csv = os.path.join(directory, _DR_TEST_CSV)
  if os.path.isfile(test_csv) and os.path.isdir(
      os.path.join(directory, 'test')):
    csvs['test'] = test_csv
  labels = {s: _read_label_csv(p) for s, p in csvs.items()}
  cache = _dr_cache_file(cache_dir, size, [labels[s][2] for s in csvs])
  arrays = _read_dr_cache(cache, size, list(csvs))
  if arrays is not None:
    logging.info('Loading retinopathy %s from cache %s.', '+'.join(csvs),
                 cache)
  else:
    paths = {s: _image_paths(os.path.join(directory, s), labels[s][0], p)
             for s, p in csvs.items()}
    arrays, skipped = {}, []
    for s, p in csvs.items():
      names, levels, _ = labels[s]
      logging.info('Decoding %d retinopathy %s images from %s at %dx%d.',
                   len(names), s, os.path.dirname(paths[s][0]), size, size)
      x, ok = _decode_images(paths[s], size, num_workers=num_workers,
                             skip_unreadable=skip_unreadable)
      skipped += [os.path.relpath(q, directory)
                  for q, good in zip(paths[s], ok) if not good]
      arrays[f'x_{s}'] = x
      arrays[f'y_{s}'] = levels[ok]
      arrays[f'names_{s}'] = np.asarray(names, str)[ok]
    arrays['skipped'] = np.asarray(skipped, str)
    _write_dr_cache(cache, arrays)
  skipped = arrays.pop('skipped').tolist()
  if skipped:
    if not skip_unreadable:
      raise ValueError(f'unreadable images in {directory}: {_named(skipped)} '
                       f'(recorded in cache {cache}); set '
                       'data.skip_unreadable=True to skip them')
    logging.warning('Skipped %d unreadable retinopathy images: %s.',
                    len(skipped), _named(skipped))
  for s in csvs:
    if not arrays[f'y_{s}'].size:
      raise ValueError(f'no readable retinopathy {s} images in {directory}')
  return arrays


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified split of row indices into train and test.

  For each label value c (ascending) with n_c rows, round(test_fraction *
  n_c) rows (half-up) are drawn without replacement from one
  `np.random.default_rng(seed)` stream and go to test. Both index arrays are
  sorted, so each split keeps the original row order.

  Args:
    labels: int[n] stratum of each row.
    test_fraction: share of each stratum held out, in (0, 1).
    seed: seed of the draw.

  Returns:
    (train_idx: i64[n - k], test_idx: i64[k]).
  """
  test_fraction = _check_fraction('test_fraction', test_fraction)
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  is_test = np.zeros(labels.shape[0], bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = int(np.floor(test_fraction * idx.size + 0.5))
    is_test[rng.choice(idx, size=k, replace=False)] = True
  return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_retinopathy(data_config: ml_collections.ConfigDict, *,
                     data_dir: str | None, seed: int = 0) -> Dataset:
  """Kaggle diabetic retinopathy: x u8[n, s, s, 3], y i32[n] grade in [0, 5).

  Sources, in order:
    1. `trainLabels.csv` (columns image,level) and `train/<image>.jpeg`
       (or .jpg, .png) in `<data_dir>/diabetic_retinopathy/`, then in
       `<data_dir>/`. The test split is `retinopathy_solution.csv` (columns
       image,level,Usage; all rows) with `test/` beside it; without those, a
       stratified (grade >= 2 vs rest) `stratified_split` of the train rows
       with `test_fraction` and seed `split_seed`. Decoded, resized images
       are cached in `cache_dir` as one .npz keyed by image size and the
       CSVs' sha256, so the second load decodes nothing. The cache is not
       keyed by the image files themselves: delete it after changing them.
    2. tfds `diabetic_retinopathy_detection` (train / test splits), if
       prepared in `tfds_data_dir`; with `download=True` it is prepared from
       the Kaggle files in `tfds_manual_dir` (default: tfds's
       `<tfds data dir>/downloads/manual`), and only if they are all there.
    3. Otherwise FileNotFoundError.

  Config fields (all optional): image_size (224), test_fraction (0.2),
  split_seed (`seed`), cache_dir (`<data_dir>/diabetic_retinopathy/cache`),
  skip_unreadable (False: an unreadable image is an error), num_workers
  (decode threads, min(32, cpus)), tfds_data_dir, tfds_manual_dir, download.

  Images are resized to s x s = image_size (aspect ratio not kept), RGB.
  Labels are the 5 grades; the study's binary task is derived with
  positive_classes=(2, 3, 4) and minority_fraction=0.05.
  """
  size = _check_int('data.image_size', data_config.get('image_size', 224), 1)
  test_fraction = _check_fraction('data.test_fraction',
                                  data_config.get('test_fraction', 0.2))
  split_seed = data_config.get('split_seed', None)
  split_seed = seed if split_seed is None else split_seed
  skip_unreadable = bool(data_config.get('skip_unreadable', False))
  num_workers = data_config.get('num_workers', None)
  num_workers = _check_int(
      'data.num_workers',
      min(32, os.cpu_count() or 1) if num_workers is None else num_workers, 1)
  searched = _search_dirs(data_dir, _DR_SUBDIR)[::-1]
  for directory in searched:
    if not (os.path.isfile(os.path.join(directory, _DR_TRAIN_CSV))
            and os.path.isdir(os.path.join(directory, 'train'))):
      continue
    cache_dir = data_config.get('cache_dir', None) or os.path.join(
        data_dir, _DR_SUBDIR, 'cache')
    arrays = _read_dr_folder(directory, size=size, cache_dir=cache_dir,
                             skip_unreadable=skip_unreadable,
                             num_workers=num_workers)
    if 'x_test' not in arrays:
      x, y = arrays['x_train'], arrays['y_train']
      train_idx, test_idx = stratified_split(y >= 2, test_fraction, split_seed)
      logging.info('No %s with test/ in %s: held out %d of %d train images as '
                   'the test split (test_fraction %s, stratified by grade >= '
                   '2, seed %d).', _DR_TEST_CSV, directory, test_idx.size,
                   y.size, test_fraction, split_seed)
      arrays = dict(x_train=x[train_idx], y_train=y[train_idx],
                    x_test=x[test_idx], y_test=y[test_idx])
    return Dataset(
        name='retinopathy', x_train=arrays['x_train'],
        y_train=arrays['y_train'], x_test=arrays['x_test'],
        y_test=arrays['y_test'], num_classes=5,
        class_names=RETINOPATHY_CLASSES, mean=IMAGENET_MEAN,
        std=IMAGENET_STD)
  where = (os.path.join(data_dir, _DR_SUBDIR) if data_dir
           else f'<data_dir>/{_DR_SUBDIR}')
  out = _load_tfds(
      _DR_TFDS, tfds_data_dir=data_config.get('tfds_data_dir', None),
      download=bool(data_config.get('download', False)),
      manual_dir=data_config.get('tfds_manual_dir', None),
      manual_files=_DR_TFDS_MANUAL,
      image_fn=lambda image: _resize_rgb(image, size))
  if out is None:
    raise FileNotFoundError(
        f"Diabetic retinopathy not found: put Kaggle's {_DR_TRAIN_CSV} and "
        f'train/*.jpeg (optionally {_DR_TEST_CSV} and test/*.jpeg) in '
        f'{where}/ (data_dir from --config.data_dir or ${DATA_DIR_ENV}; '
        f'searched: {", ".join(searched) or "no data dir given"}), or '
        f"prepare tfds '{_DR_TFDS}' (unpack {', '.join(_DR_TFDS_MANUAL)} "
        'into data.tfds_manual_dir, default <tfds data dir>/downloads/manual, '
        'and set data.download=True)')
  x_train, y_train, x_test, y_test, _ = out
  ds = Dataset(
      name='retinopathy', x_train=x_train, y_train=y_train, x_test=x_test,
      y_test=y_test, num_classes=5, class_names=RETINOPATHY_CLASSES,
      mean=IMAGENET_MEAN, std=IMAGENET_STD)
  _check_labels('retinopathy', ds.y_train, 5)
  _check_labels('retinopathy', ds.y_test, 5)
  return ds


# --------------------------------------------------------------------------
# 2D toy data.
# --------------------------------------------------------------------------


def gaussian_blobs(num_train: int = 5000, num_test: int = 500,
                   separation: float = 2.0, std: float = 1.0,
                   seed: int = 0) -> Dataset:
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
      raise ValueError(f'gaussian_blobs: {arg} must be an int >= 2, got '
                       f'{value!r}')
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
  return Dataset(
      name='gaussian_blobs', x_train=x_train, y_train=y_train, x_test=x_test,
      y_test=y_test, num_classes=2, class_names=('0', '1'), mean=None,
      std=None)


def load_gaussian_blobs(data_config: ml_collections.ConfigDict, *,
                        data_dir: str | None, seed: int = 0) -> Dataset:
  """`gaussian_blobs` from config fields; data seed defaults to `seed`."""
  del data_dir  # Unused.
  return gaussian_blobs(
      num_train=data_config.get('num_train', 5000),
      num_test=data_config.get('num_test', 500),
      separation=data_config.get('separation', 2.0),
      std=data_config.get('std', 1.0),
      seed=data_config.get('seed', seed))


Loader = Callable[..., Dataset]

DATASETS: dict[str, Loader] = {
    'cifar10': load_cifar10,
    'cifar100': load_cifar100,
    'gaussian_blobs': load_gaussian_blobs,
    'mnist': load_mnist,
    'retinopathy': load_retinopathy,
}


# --------------------------------------------------------------------------
# Derived tasks: pure Dataset -> Dataset functions.
# --------------------------------------------------------------------------


def _check_class_list(what: str, classes: Sequence[int],
                      num_classes: int | None = None) -> list[int]:
  """Validates a non-empty list of distinct class indices."""
  if isinstance(classes, (str, bytes)) or not isinstance(
      classes, (Sequence, np.ndarray)):
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
  bad = [c for c in out if c < 0 or (num_classes is not None
                                     and c >= num_classes)]
  if bad:
    bound = f'[0, {num_classes})' if num_classes is not None else '>= 0'
    raise ValueError(f'{what} {bad} out of range {bound}')
  return out


def subset_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
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
  positive = (None if ds.positive_class not in classes
              else classes.index(ds.positive_class))
  return dataclasses.replace(
      ds, name=f'{ds.name}[{",".join(map(str, classes))}]', **arrays,
      num_classes=len(classes),
      class_names=tuple(ds.class_names[c] for c in classes),
      positive_class=positive)


def binarize(ds: Dataset, positive_classes: Sequence[int]) -> Dataset:
  """Relabels to 1 for `positive_classes` and 0 for all other classes.

  Returns a 2-class dataset with class_names ('rest', 'a+b') and
  positive_class=1; rows are not reordered or dropped.
  """
  positive = _check_class_list(f'{ds.name}: positive_classes',
                               positive_classes, ds.num_classes)
  if len(positive) == ds.num_classes:
    raise ValueError(f'{ds.name}: positive_classes {positive} cover all '
                     f'{ds.num_classes} classes, leaving no negatives')
  is_pos = np.zeros(ds.num_classes, np.int32)
  is_pos[positive] = 1
  pos_name = '+'.join(ds.class_names[c] for c in positive)
  return dataclasses.replace(
      ds, name=f'{ds.name}[{pos_name}-vs-rest]',
      y_train=is_pos[ds.y_train], y_test=is_pos[ds.y_test], num_classes=2,
      class_names=('rest', pos_name), positive_class=1)


def downsampled_count(fraction: float, n_other: int) -> int:
  """Samples of the minority class to keep: round(f / (1 - f) * n_other).

  Rounding is half-up, so the minority class makes up `fraction` of the
  result as closely as an integer count allows. E.g. fraction 0.05 with
  40000 others -> round(2105.26) = 2105 (1:19).
  """
  return int(np.floor(fraction / (1.0 - fraction) * n_other + 0.5))


def _check_fraction(what: str, fraction: Any) -> float:
  if isinstance(fraction, bool) or not isinstance(
      fraction, (int, float, np.floating, np.integer)) or not (
          0.0 < fraction < 1.0):
    raise ValueError(f'{what} must be a number in (0, 1), got {fraction!r}')
  return float(fraction)


def downsample_class(ds: Dataset, cls: int, fraction: float, seed: int,
                     split: str = 'train') -> Dataset:
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
  fraction = _check_fraction(f'{ds.name}: minority fraction', fraction)
  _check_class_list(f'{ds.name}: class', [cls], ds.num_classes)
  if split not in _IMBALANCED_SPLITS:
    raise ValueError(f"{ds.name}: split must be one of {_IMBALANCED_SPLITS}, "
                     f'got {split!r}')
  splits = ('train', 'test') if split == 'both' else (split,)
  plans = {}
  for s in splits:  # Validate every split before drawing anything.
    y = getattr(ds, f'y_{s}')
    cls_idx = np.flatnonzero(y == cls)
    m = downsampled_count(fraction, y.size - cls_idx.size)
    if m > cls_idx.size or m == 0:
      raise ValueError(
          f'{ds.name}: cannot make class {cls} a {fraction} share of {s}: '
          f'needs {m} samples, has {cls_idx.size}')
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
    logging.info('%s: kept %d of %d %s samples of class %d (%.4f of %d).',
                 ds.name, m, cls_idx.size, s, cls, m / keep.sum(), keep.sum())
  return dataclasses.replace(ds, **arrays)


def truncate(ds: Dataset, max_train: int | None = None,
             max_test: int | None = None) -> Dataset:
  """Keeps the first `max_train` train and `max_test` test rows (a prefix)."""
  arrays = {}
  for s, limit in (('train', max_train), ('test', max_test)):
    if limit is None:
      continue
    if isinstance(limit, bool) or not isinstance(
        limit, (int, np.integer)) or limit < 1:
      raise ValueError(f'max_{s} must be a positive int, got {limit!r}')
    arrays[f'x_{s}'] = getattr(ds, f'x_{s}')[:limit]
    arrays[f'y_{s}'] = getattr(ds, f'y_{s}')[:limit]
  return dataclasses.replace(ds, **arrays) if arrays else ds


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def _check_config(data_config: ml_collections.ConfigDict) -> None:
  """Validates the derived-task fields before any data is loaded."""
  classes = data_config.get('classes', None)
  if classes is not None:
    _check_class_list('data.classes', classes)
  positive = data_config.get('positive_classes', None)
  if positive is not None:
    _check_class_list('data.positive_classes', positive)
  fraction = data_config.get('minority_fraction', None)
  if fraction is not None:
    _check_fraction('data.minority_fraction', fraction)
    split = data_config.get('imbalanced_split', 'train')
    if split not in _IMBALANCED_SPLITS:
      raise ValueError(f'data.imbalanced_split must be one of '
                       f'{_IMBALANCED_SPLITS}, got {split!r}')
  for key in ('max_train', 'max_test'):
    limit = data_config.get(key, None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(
        limit, (int, np.integer)) or limit < 1):
      raise ValueError(f'data.{key} must be a positive int, got {limit!r}')


def apply_derived(ds: Dataset, data_config: ml_collections.ConfigDict, *,
                  seed: int) -> Dataset:
  """Applies classes, positive_classes, minority_fraction, max_train/test."""
  classes = data_config.get('classes', None)
  if classes is not None:
    ds = subset_classes(ds, classes)
  positive = data_config.get('positive_classes', None)
  if positive is not None:
    ds = binarize(ds, positive)
  fraction = data_config.get('minority_fraction', None)
  if fraction is not None:
    ds = downsample_class(ds, 1, fraction, seed,
                          split=data_config.get('imbalanced_split', 'train'))
  return truncate(ds, data_config.get('max_train', None),
                  data_config.get('max_test', None))


def load_dataset(data_config: ml_collections.ConfigDict, *,
                 data_dir: str | None = None, seed: int = 0) -> Dataset:
  """Loads `data_config.name` and applies the derived tasks it names.

  Args:
    data_config: ConfigDict with `name` (a key of DATASETS) and optional
      dataset fields (gaussian_blobs: num_train, num_test, separation, std,
      seed; image datasets: download, tfds_data_dir; retinopathy: see
      `load_retinopathy`) and derived-task fields
      (classes, positive_classes, minority_fraction, imbalanced_split,
      max_train, max_test).
    data_dir: where the files are; falls back to $JAL_DATA_DIR.
    seed: seed for random derived tasks (minority downsampling) and the
      default data seed of gaussian_blobs.

  Returns:
    The Dataset.
  """
  name = data_config.get('name', None)
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; valid: '
                     f'{", ".join(sorted(DATASETS))}')
  _check_config(data_config)
  ds = DATASETS[name](data_config, data_dir=resolve_data_dir(data_dir),
                      seed=seed)
  ds = apply_derived(ds, data_config, seed=seed)
  logging.info('Dataset %s: train %s %s, test %s, %d classes.', ds.name,
               ds.x_train.dtype, ds.x_train.shape, ds.x_test.shape,
               ds.num_classes)
  return ds
