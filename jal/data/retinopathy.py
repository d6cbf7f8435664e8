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

"""Kaggle diabetic retinopathy: 5 grades from `trainLabels.csv` + `train/`.

The images are decoded on a thread pool, resized to `image_size` and cached as
one .npz, so a second load decodes nothing; tfds is the fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
import concurrent.futures
import csv
import hashlib
import io
import os
import tempfile
from typing import Any
import zipfile

from absl import logging
import ml_collections
import numpy as np

from jal.data import core
from jal.data import tfds as tfds_lib

# Retinopathy is normalised like ImageNet: the study fine-tunes
# ImageNet-pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RETINOPATHY_CLASSES = ('No DR', 'Mild', 'Moderate', 'Severe', 'Proliferative DR')

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
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
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
    image = Image.fromarray(
        image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image
    )
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

  return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _decode_images(
    paths: Sequence[str], size: int, *, num_workers: int, skip_unreadable: bool
) -> tuple[np.ndarray, np.ndarray]:
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
        raise ValueError(
            f'unreadable image {paths[i]} ({error}); set '
            'data.skip_unreadable=True to skip such files'
        )
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
    raise ValueError(f'{path} must have columns image,level; got {",".join(fields) or "no header"}')
  reader.fieldnames = fields
  names, levels = [], []
  for line, row in enumerate(reader, start=2):
    name, level = (row['image'] or '').strip(), (row['level'] or '').strip()
    if not name or not level.isdigit() or int(level) >= 5:
      raise ValueError(
          f'{path} line {line}: need an image name and a grade '
          f'0-4, got image={name!r} level={level!r}'
      )
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
      if r is not None and entry.is_file() and (stem not in found or r < found[stem][0]):
        found[stem] = (r, entry.name)
  missing = [n for n in names if n not in found]
  if missing:
    raise FileNotFoundError(
        f'{csv_path}: {len(missing)} of {len(names)} images not found in '
        f'{folder} (as <image>{"/".join(_DR_EXTENSIONS)}): {_named(missing)}'
    )
  return [os.path.join(folder, found[n][1]) for n in names]


def _dr_cache_file(cache_dir: str, size: int, digests: Sequence[str]) -> str:
  """Cache path keyed by image size and the label CSVs' content hashes."""
  key = hashlib.sha256(f'v{_DR_CACHE_VERSION}:{size}:{":".join(digests)}'.encode()).hexdigest()
  return os.path.join(cache_dir, f'retinopathy_{size}px_{key[:16]}.npz')


def _read_dr_cache(path: str, size: int, splits: Sequence[str]) -> dict[str, np.ndarray] | None:
  """The cached arrays, or None if absent or unusable (logged)."""
  if not os.path.isfile(path):
    return None
  keys = ['skipped'] + [f'{k}_{s}' for s in splits for k in ('x', 'y', 'names')]
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in keys}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('Ignoring unreadable retinopathy cache %s (%s: %s).', path, type(e).__name__, e)
    return None
  for s in splits:
    x, y, names = (arrays[f'{k}_{s}'] for k in ('x', 'y', 'names'))
    if (
        x.dtype != np.uint8
        or x.shape[1:] != (size, size, 3)
        or not x.shape[0] == y.shape[0] == names.shape[0]
    ):
      logging.warning(
          'Ignoring retinopathy cache %s: %s arrays have shapes %s %s %s.',
          path,
          s,
          x.shape,
          y.shape,
          names.shape,
      )
      return None
  return arrays


def _write_dr_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes the .npz atomically (tmp file + os.replace); failures are logged."""
  tmp = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix=os.path.basename(path) + '.', suffix='.tmp'
    )
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
    tmp = None
    logging.info('Cached decoded retinopathy images in %s.', path)
  except OSError as e:
    logging.warning(
        'Could not write retinopathy cache %s (%s); the next load decodes the images again.',
        path,
        e,
    )
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def _read_dr_folder(
    directory: str, *, size: int, cache_dir: str, skip_unreadable: bool, num_workers: int
) -> dict[str, np.ndarray]:
  """Kaggle layout in `directory` -> arrays, via the .npz cache.

  Returns:
    {'x_train': u8[n, size, size, 3], 'y_train': i32[n], 'names_train':
    str[n]} in trainLabels.csv row order (unreadable rows dropped if
    `skip_unreadable`), plus the same for 'test' from retinopathy_solution.csv
    and test/ when both exist.
  """
  csvs = {'train': os.path.join(directory, _DR_TRAIN_CSV)}
  test_csv = os.path.join(directory, _DR_TEST_CSV)
  if os.path.isfile(test_csv) and os.path.isdir(os.path.join(directory, 'test')):
    csvs['test'] = test_csv
  labels = {s: _read_label_csv(p) for s, p in csvs.items()}
  cache = _dr_cache_file(cache_dir, size, [labels[s][2] for s in csvs])
  arrays = _read_dr_cache(cache, size, list(csvs))
  if arrays is not None:
    logging.info('Loading retinopathy %s from cache %s.', '+'.join(csvs), cache)
  else:
    paths = {s: _image_paths(os.path.join(directory, s), labels[s][0], p) for s, p in csvs.items()}
    arrays, skipped = {}, []
    for s, p in csvs.items():
      names, levels, _ = labels[s]
      logging.info(
          'Decoding %d retinopathy %s images from %s at %dx%d.',
          len(names),
          s,
          os.path.dirname(paths[s][0]),
          size,
          size,
      )
      x, ok = _decode_images(
          paths[s], size, num_workers=num_workers, skip_unreadable=skip_unreadable
      )
      skipped += [os.path.relpath(q, directory) for q, good in zip(paths[s], ok) if not good]
      arrays[f'x_{s}'] = x
      arrays[f'y_{s}'] = levels[ok]
      arrays[f'names_{s}'] = np.asarray(names, str)[ok]
    arrays['skipped'] = np.asarray(skipped, str)
    _write_dr_cache(cache, arrays)
  skipped = arrays.pop('skipped').tolist()
  if skipped:
    if not skip_unreadable:
      raise ValueError(
          f'unreadable images in {directory}: {_named(skipped)} '
          f'(recorded in cache {cache}); set '
          'data.skip_unreadable=True to skip them'
      )
    logging.warning('Skipped %d unreadable retinopathy images: %s.', len(skipped), _named(skipped))
  for s in csvs:
    if not arrays[f'y_{s}'].size:
      raise ValueError(f'no readable retinopathy {s} images in {directory}')
  return arrays


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
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
  test_fraction = core.check_fraction('test_fraction', test_fraction)
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  is_test = np.zeros(labels.shape[0], bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = int(np.floor(test_fraction * idx.size + 0.5))
    is_test[rng.choice(idx, size=k, replace=False)] = True
  return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_retinopathy(
    data_config: ml_collections.ConfigDict, *, data_dir: str | None, seed: int = 0
) -> core.Dataset:
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
  test_fraction = core.check_fraction('data.test_fraction', data_config.get('test_fraction', 0.2))
  split_seed = data_config.get('split_seed', None)
  split_seed = seed if split_seed is None else split_seed
  skip_unreadable = bool(data_config.get('skip_unreadable', False))
  num_workers = data_config.get('num_workers', None)
  num_workers = _check_int(
      'data.num_workers', min(32, os.cpu_count() or 1) if num_workers is None else num_workers, 1
  )
  searched = core.search_dirs(data_dir, _DR_SUBDIR)[::-1]
  for directory in searched:
    if not (
        os.path.isfile(os.path.join(directory, _DR_TRAIN_CSV))
        and os.path.isdir(os.path.join(directory, 'train'))
    ):
      continue
    cache_dir = data_config.get('cache_dir', None) or os.path.join(data_dir, _DR_SUBDIR, 'cache')
    arrays = _read_dr_folder(
        directory,
        size=size,
        cache_dir=cache_dir,
        skip_unreadable=skip_unreadable,
        num_workers=num_workers,
    )
    if 'x_test' not in arrays:
      x, y = arrays['x_train'], arrays['y_train']
      train_idx, test_idx = stratified_split(y >= 2, test_fraction, split_seed)
      logging.info(
          'No %s with test/ in %s: held out %d of %d train images as '
          'the test split (test_fraction %s, stratified by grade >= '
          '2, seed %d).',
          _DR_TEST_CSV,
          directory,
          test_idx.size,
          y.size,
          test_fraction,
          split_seed,
      )
      arrays = dict(
          x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx], y_test=y[test_idx]
      )
    return core.Dataset(
        name='retinopathy',
        x_train=arrays['x_train'],
        y_train=arrays['y_train'],
        x_test=arrays['x_test'],
        y_test=arrays['y_test'],
        num_classes=5,
        class_names=RETINOPATHY_CLASSES,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
  where = os.path.join(data_dir, _DR_SUBDIR) if data_dir else f'<data_dir>/{_DR_SUBDIR}'
  out = tfds_lib.load(
      _DR_TFDS,
      tfds_data_dir=data_config.get('tfds_data_dir', None),
      download=bool(data_config.get('download', False)),
      manual_dir=data_config.get('tfds_manual_dir', None),
      manual_files=_DR_TFDS_MANUAL,
      image_fn=lambda image: _resize_rgb(image, size),
  )
  if out is None:
    raise FileNotFoundError(
        f"Diabetic retinopathy not found: put Kaggle's {_DR_TRAIN_CSV} and "
        f'train/*.jpeg (optionally {_DR_TEST_CSV} and test/*.jpeg) in '
        f'{where}/ (data_dir from --config.data_dir or ${core.DATA_DIR_ENV}; '
        f'searched: {", ".join(searched) or "no data dir given"}), or '
        f"prepare tfds '{_DR_TFDS}' (unpack {', '.join(_DR_TFDS_MANUAL)} "
        'into data.tfds_manual_dir, default <tfds data dir>/downloads/manual, '
        'and set data.download=True)'
    )
  x_train, y_train, x_test, y_test, _ = out
  ds = core.Dataset(
      name='retinopathy',
      x_train=x_train,
      y_train=y_train,
      x_test=x_test,
      y_test=y_test,
      num_classes=5,
      class_names=RETINOPATHY_CLASSES,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
  )
  core.check_labels('retinopathy', ds.y_train, 5)
  core.check_labels('retinopathy', ds.y_test, 5)
  return ds
