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

Modules: core.py (`Dataset`, shared helpers), tasks.py (derived tasks),
mnist.py, cifar.py, retinopathy.py, gaussian.py (one loader each), tfds.py
(the tensorflow-datasets fallback). This package re-exports their public
names and holds the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from absl import logging
import ml_collections

from jal.data import cifar
from jal.data import gaussian
from jal.data import mnist
from jal.data import retinopathy
from jal.data import tasks
from jal.data.cifar import CIFAR100_MEAN, CIFAR100_STD, CIFAR10_MEAN, CIFAR10_STD
from jal.data.cifar import load_cifar10, load_cifar100
from jal.data.core import DATA_DIR_ENV, Dataset, resolve_data_dir
from jal.data.gaussian import gaussian_blobs, load_gaussian_blobs
from jal.data.mnist import MNIST_MEAN, MNIST_STD, load_mnist, read_idx
from jal.data.retinopathy import IMAGENET_MEAN, IMAGENET_STD, RETINOPATHY_CLASSES
from jal.data.retinopathy import load_retinopathy, stratified_split
from jal.data.tasks import apply_derived, binarize, downsample_class, downsampled_count
from jal.data.tasks import subset_classes, truncate

# The loaders' and tasks' names are the package's own: `data.gaussian_blobs`.
__all__ = [
    'CIFAR100_MEAN',
    'CIFAR100_STD',
    'CIFAR10_MEAN',
    'CIFAR10_STD',
    'DATASETS',
    'DATA_DIR_ENV',
    'Dataset',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'Loader',
    'MNIST_MEAN',
    'MNIST_STD',
    'RETINOPATHY_CLASSES',
    'apply_derived',
    'binarize',
    'downsample_class',
    'downsampled_count',
    'gaussian_blobs',
    'load_cifar10',
    'load_cifar100',
    'load_dataset',
    'load_gaussian_blobs',
    'load_mnist',
    'load_retinopathy',
    'read_idx',
    'resolve_data_dir',
    'stratified_split',
    'subset_classes',
    'truncate',
]

Loader = Callable[..., Dataset]

DATASETS: dict[str, Loader] = {
    'cifar10': cifar.load_cifar10,
    'cifar100': cifar.load_cifar100,
    'gaussian_blobs': gaussian.load_gaussian_blobs,
    'mnist': mnist.load_mnist,
    'retinopathy': retinopathy.load_retinopathy,
}


def load_dataset(
    data_config: ml_collections.ConfigDict, *, data_dir: str | None = None, seed: int = 0
) -> Dataset:
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
    raise ValueError(f'unknown dataset {name!r}; valid: {", ".join(sorted(DATASETS))}')
  tasks.check_config(data_config)
  ds = DATASETS[name](data_config, data_dir=resolve_data_dir(data_dir), seed=seed)
  ds = apply_derived(ds, data_config, seed=seed)
  logging.info(
      'Dataset %s: train %s %s, test %s, %d classes.',
      ds.name,
      ds.x_train.dtype,
      ds.x_train.shape,
      ds.x_test.shape,
      ds.num_classes,
  )
  return ds
