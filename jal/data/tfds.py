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

"""The tensorflow-datasets fallback, used when a loader finds no files.

It is quiet and offline by default: a dataset that tfds has not prepared is
reported as absent, and is downloaded only when `data.download` is true.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from jal.data import core


def _not_variant_warning(record: Any) -> bool:
  """A logging filter: False for tfds's "Variant folder ..." warnings."""
  return not (
      '/tensorflow_datasets/' in record.pathname and str(record.msg).startswith('Variant folder ')
  )


def _is_prepared(builder: Any) -> bool:
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
  absl_logger.addFilter(_not_variant_warning)
  try:
    return builder.is_prepared()
  finally:
    absl_logger.removeFilter(_not_variant_warning)


def load(
    tfds_name: str,
    *,
    tfds_data_dir: str | None,
    download: bool,
    manual_dir: str | None = None,
    manual_files: Sequence[str] = (),
    image_fn: Callable[[np.ndarray], np.ndarray] | None = None,
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
  if not _is_prepared(builder):
    if not download:
      return None
    kwargs = {}
    if manual_files:
      manual_dir = manual_dir or os.path.join(
          os.fspath(builder.data_dir_root), 'downloads', 'manual'
      )
      missing = [f for f in manual_files if not os.path.exists(os.path.join(manual_dir, f))]
      if missing:
        logging.info(
            'Not preparing tfds %r: manual dir %s lacks %s.',
            tfds_name,
            manual_dir,
            ', '.join(missing),
        )
        return None
      kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=manual_dir)
    logging.info('Downloading and preparing tfds %r into %s.', tfds_name, builder.data_dir)
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
    return x, core.labels(y)

  def read(split):
    errors = []
    try:
      source = builder.as_data_source(split=split)
      return stack((source[i] for i in range(len(source))), len(source))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'as_data_source: {type(e).__name__}: {e}')
    try:
      if image_fn is None:
        x, y = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        return np.asarray(x, np.uint8), core.labels(y)
      n = builder.info.splits[split].num_examples
      return stack(tfds.as_numpy(builder.as_dataset(split=split)), n)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'as_dataset: {type(e).__name__}: {e}')
    msg = '; '.join(' '.join(str(err).split()) for err in errors)
    raise RuntimeError(
        f"tfds '{tfds_name}' is prepared in {builder.data_dir} "
        f'but split {split!r} could not be read ({msg})'
    )

  x_train, y_train = read('train')
  x_test, y_test = read('test')
  class_names = tuple(builder.info.features['label'].names)
  logging.info('Loaded tfds %r from %s.', tfds_name, builder.data_dir)
  return x_train, y_train, x_test, y_test, class_names


def load_or_raise(
    tfds_name: str, data_config: ml_collections.ConfigDict, not_found: str
) -> tuple[np.ndarray, ...]:
  """`load` with the config's tfds fields; FileNotFoundError(not_found) if None."""
  out = load(
      tfds_name,
      tfds_data_dir=data_config.get('tfds_data_dir', None),
      download=bool(data_config.get('download', False)),
  )
  if out is None:
    raise FileNotFoundError(not_found)
  return out
