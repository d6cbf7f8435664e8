"""Tests for jal.data: real MNIST / CIFAR-10 files, fake CIFAR-100, derived tasks."""

import codecs
import gzip
import io
import logging
import os
import pathlib
import pickle
import socket
import tarfile

import ml_collections
import numpy as np
import pytest

from jal import data

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED = os.environ.get('JAL_DATA_DIR') or str(_REPO_ROOT.parent / 'shared' / 'data')

# From /work/shared/data/SOURCES.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_NAMES = (
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
)
CIFAR10_TRAIN_MEAN_255 = (125.27, 122.93, 113.86)


def _cfg(**kwargs):
  return ml_collections.ConfigDict(kwargs)


def _require(path):
  if not os.path.exists(path):
    pytest.skip(f'{path} not available')


@pytest.fixture(scope='module')
def mnist():
  _require(os.path.join(_SHARED, 'mnist'))
  return data.load_dataset(_cfg(name='mnist'), data_dir=_SHARED, seed=0)


@pytest.fixture(scope='module')
def cifar10():
  _require(os.path.join(_SHARED, 'cifar-10-batches-py'))
  return data.load_dataset(_cfg(name='cifar10'), data_dir=_SHARED, seed=0)


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


# ---------------------------------------------------------------------------
# Fake-file writers.
# ---------------------------------------------------------------------------


def _write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 8, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def _to_rows(x):
  """u8[n, 32, 32, 3] -> u8[n, 3072] channel-major, as in the CIFAR pickles."""
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))


def _known_pattern_rows():
  """Two rows whose decoding is known without any reshape logic."""
  row0 = np.concatenate([np.full(1024, c, np.uint8) for c in (0, 1, 2)])
  row1 = np.concatenate([np.arange(1024) % 256, np.zeros(2048)]).astype(np.uint8)
  return np.stack([row0, row1])


def _fake_cifar_files(
    num_classes, label_key, names_key, batch_names, test_name, meta_name, n_per_batch=3, seed=0
):
  """Genuine-style pickles (bytes keys). Returns ({fname: bytes}, x/y dict)."""
  rng = np.random.default_rng(seed)
  files, xs, ys = {}, [], []
  for i, fname in enumerate(batch_names + (test_name,)):
    x = rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)
    rows = _to_rows(x)
    if i == 0:  # Known channel-major pattern in the first two rows.
      rows[:2] = _known_pattern_rows()
      x[:2] = rows[:2].reshape(2, 3, 32, 32).transpose(0, 2, 3, 1)
    y = [int(v) for v in rng.integers(0, num_classes, n_per_batch)]
    d = {
        b'batch_label': f'fake {fname}'.encode(),
        label_key.encode(): y,
        b'data': rows,
        b'filenames': [f'{fname}_{j}.png'.encode() for j in range(len(y))],
    }
    if label_key == 'fine_labels':
      d[b'coarse_labels'] = [v // 5 for v in y]
    files[fname] = pickle.dumps(d, protocol=2)
    xs.append(x)
    ys.append(np.asarray(y, np.int32))
  names = [f'class_{c}'.encode() for c in range(num_classes)]
  files[meta_name] = pickle.dumps({names_key.encode(): names}, protocol=2)
  arrays = dict(
      x_train=np.concatenate(xs[:-1]), y_train=np.concatenate(ys[:-1]), x_test=xs[-1], y_test=ys[-1]
  )
  return files, arrays


def fake_cifar10_files(n_per_batch=3):
  """CIFAR-10's folder files: 5 training batches and a test batch of `n_per_batch`."""
  return _fake_cifar_files(
      10,
      'labels',
      'label_names',
      tuple(f'data_batch_{i}' for i in range(1, 6)),
      'test_batch',
      'batches.meta',
      n_per_batch=n_per_batch,
  )


def fake_cifar100_files(n_per_batch=7):
  """CIFAR-100's folder files: `train` and `test` of `n_per_batch` each."""
  return _fake_cifar_files(
      100, 'fine_labels', 'fine_label_names', ('train',), 'test', 'meta', n_per_batch=n_per_batch
  )


def write_folder(directory, files):
  directory.mkdir(parents=True)
  for fname, payload in files.items():
    (directory / fname).write_bytes(payload)


def _write_tar_gz(path, folder, files):
  with tarfile.open(path, 'w:gz') as tar:
    for fname, payload in files.items():
      info = tarfile.TarInfo(f'{folder}/{fname}')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


def _assert_same(ds, arrays):
  for key, value in arrays.items():
    got = getattr(ds, key)
    assert got.dtype == value.dtype, key
    np.testing.assert_array_equal(got, value, err_msg=key)


# ---------------------------------------------------------------------------
# MNIST.
# ---------------------------------------------------------------------------


def test_mnist_real(mnist):
  assert mnist.x_train.shape == (60000, 28, 28, 1)
  assert mnist.x_test.shape == (10000, 28, 28, 1)
  assert mnist.x_train.dtype == np.uint8 and mnist.y_train.dtype == np.int32
  assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
  assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
  assert mnist.x_train.mean() / 255 == pytest.approx(0.1307, abs=5e-5)
  assert mnist.num_classes == 10 and mnist.class_names[3] == '3'
  assert mnist.mean == (0.1307,) and mnist.std == (0.3081,)
  assert mnist.positive_class is None


def test_mnist_npz_loads_identically(mnist, tmp_path):
  arrays = dict(
      x_train=mnist.x_train[:50, ..., 0],
      y_train=mnist.y_train[:50],
      x_test=mnist.x_test[:20, ..., 0],
      y_test=mnist.y_test[:20],
  )
  np.savez(tmp_path / 'mnist.npz', **arrays)
  ds = data.load_dataset(_cfg(name='mnist'), data_dir=str(tmp_path))
  _assert_same(
      ds,
      dict(
          x_train=mnist.x_train[:50],
          y_train=mnist.y_train[:50],
          x_test=mnist.x_test[:20],
          y_test=mnist.y_test[:20],
      ),
  )


def test_mnist_plain_idx_in_subdir(mnist, tmp_path):
  sub = tmp_path / 'mnist'
  sub.mkdir()
  _write_idx(sub / 'train-images-idx3-ubyte', mnist.x_train[:30, ..., 0])
  _write_idx(sub / 'train-labels-idx1-ubyte', mnist.y_train[:30])
  _write_idx(sub / 't10k-images-idx3-ubyte', mnist.x_test[:10, ..., 0])
  _write_idx(sub / 't10k-labels-idx1-ubyte.gz', mnist.y_test[:10])  # Mixed.
  ds = data.load_dataset(_cfg(name='mnist'), data_dir=str(tmp_path))
  _assert_same(
      ds,
      dict(
          x_train=mnist.x_train[:30],
          y_train=mnist.y_train[:30],
          x_test=mnist.x_test[:10],
          y_test=mnist.y_test[:10],
      ),
  )


def test_mnist_data_dir_from_env(mnist, tmp_path, monkeypatch):
  np.savez(
      tmp_path / 'mnist.npz',
      x_train=mnist.x_train[:4, ..., 0],
      y_train=mnist.y_train[:4],
      x_test=mnist.x_test[:2, ..., 0],
      y_test=mnist.y_test[:2],
  )
  monkeypatch.setenv('JAL_DATA_DIR', str(tmp_path))
  assert data.resolve_data_dir(None) == str(tmp_path)
  assert data.resolve_data_dir('/given') == '/given'
  ds = data.load_dataset(_cfg(name='mnist'), data_dir=None)
  np.testing.assert_array_equal(ds.y_train, mnist.y_train[:4])
  monkeypatch.delenv('JAL_DATA_DIR')
  assert data.resolve_data_dir(None) is None


def _write_small_idx_set(directory):
  rng = np.random.default_rng(0)
  _write_idx(directory / 'train-images-idx3-ubyte.gz', rng.integers(0, 256, (5, 28, 28)))
  _write_idx(directory / 'train-labels-idx1-ubyte.gz', np.arange(5))
  _write_idx(directory / 't10k-images-idx3-ubyte.gz', rng.integers(0, 256, (3, 28, 28)))
  _write_idx(directory / 't10k-labels-idx1-ubyte.gz', np.arange(3))


def test_corrupt_idx_magic(tmp_path):
  _write_small_idx_set(tmp_path)
  bad = tmp_path / 'train-labels-idx1-ubyte.gz'
  with gzip.open(bad, 'wb') as f:
    f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, 'big') + bytes(5))
  with pytest.raises(
      ValueError,
      match=r'corrupt idx file .*'
      r'train-labels-idx1-ubyte\.gz: magic number 0x00000803, '
      r'expected 0x00000801',
  ) as e:
    data.load_dataset(_cfg(name='mnist'), data_dir=str(tmp_path))
  assert '\n' not in str(e.value)


def test_corrupt_idx_truncated_and_bad_gzip(tmp_path):
  _write_small_idx_set(tmp_path)
  path = tmp_path / 't10k-images-idx3-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(bytes([0, 0, 8, 3]) + b''.join(d.to_bytes(4, 'big') for d in (3, 28, 28)) + bytes(100))
  with pytest.raises(ValueError, match='t10k-images-idx3-ubyte.gz: 100 data'):
    data.load_dataset(_cfg(name='mnist'), data_dir=str(tmp_path))
  path.write_bytes(b'not gzip at all')
  with pytest.raises(ValueError, match='corrupt idx file .*t10k-images'):
    data.load_dataset(_cfg(name='mnist'), data_dir=str(tmp_path))


# ---------------------------------------------------------------------------
# CIFAR-10.
# ---------------------------------------------------------------------------


def test_cifar10_real(cifar10):
  assert cifar10.x_train.shape == (50000, 32, 32, 3)
  assert cifar10.x_test.shape == (10000, 32, 32, 3)
  assert cifar10.x_train.dtype == np.uint8 and cifar10.y_test.dtype == np.int32
  assert cifar10.x_train.flags.c_contiguous
  assert np.bincount(cifar10.y_train).tolist() == [5000] * 10
  assert np.bincount(cifar10.y_test).tolist() == [1000] * 10
  assert cifar10.class_names == CIFAR10_NAMES
  # Per-channel means (SOURCES.md) only come out right with the
  # channel-major reshape.
  np.testing.assert_allclose(
      cifar10.x_train.mean(axis=(0, 1, 2)), CIFAR10_TRAIN_MEAN_255, atol=0.01
  )
  assert cifar10.mean == (0.4914, 0.4822, 0.4465)
  assert cifar10.std == (0.2470, 0.2435, 0.2616)


def test_cifar10_first_rows_match_raw_pickle(cifar10):
  with open(os.path.join(_SHARED, 'cifar-10-batches-py', 'test_batch'), 'rb') as f:
    raw = pickle.load(f, encoding='bytes')
  rows = raw[b'data'][:3]
  np.testing.assert_array_equal(cifar10.x_test[:3, :, :, 0], rows[:, :1024].reshape(3, 32, 32))
  np.testing.assert_array_equal(cifar10.x_test[:3, :, :, 2], rows[:, 2048:].reshape(3, 32, 32))
  assert cifar10.y_test[:10].tolist() == raw[b'labels'][:10]


@pytest.mark.parametrize('layout', ['folder', 'archive'])
def test_cifar10_fake(tmp_path, layout):
  files, arrays = fake_cifar10_files()
  if layout == 'folder':
    write_folder(tmp_path / 'cifar-10-batches-py', files)
  else:
    _write_tar_gz(tmp_path / 'cifar-10-python.tar.gz', 'cifar-10-batches-py', files)
  ds = data.load_dataset(_cfg(name='cifar10'), data_dir=str(tmp_path))
  _assert_same(ds, arrays)
  assert ds.x_train.shape == (15, 32, 32, 3)
  # The known pattern: row 0 is all 0 (R), 1 (G), 2 (B); row 1 has
  # R[h, w] = (32 h + w) % 256.
  assert (ds.x_train[0] == np.array([0, 1, 2], np.uint8)).all()
  h, w = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
  np.testing.assert_array_equal(ds.x_train[1, :, :, 0], (32 * h + w) % 256)
  assert (ds.x_train[1, :, :, 1:] == 0).all()
  assert ds.class_names == tuple(f'class_{c}' for c in range(10))
  assert not list(tmp_path.glob('**/data_batch_1')) or layout == 'folder'


def test_cifar_archive_missing_member(tmp_path):
  files, _ = fake_cifar10_files()
  del files['data_batch_3']
  _write_tar_gz(tmp_path / 'cifar-10-python.tar.gz', 'cifar-10-batches-py', files)
  with pytest.raises(ValueError, match='lacks data_batch_3'):
    data.load_dataset(_cfg(name='cifar10'), data_dir=str(tmp_path))


class _RunsCommand:
  """Unpickles to `os.system(command)`: what a malicious data file can hold."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize('layout', ['folder', 'archive'])
def test_cifar_pickle_that_runs_a_command_is_refused(tmp_path, layout):
  marker = tmp_path / 'PWNED'
  files, _ = fake_cifar10_files()
  batch = pickle.loads(files['data_batch_1'])
  batch[b'extra'] = _RunsCommand(f'touch {marker}')
  files['data_batch_1'] = pickle.dumps(batch, protocol=2)
  pickle.loads(files['data_batch_1'])  # The payload is real: plain pickle
  assert marker.exists()  # runs it.
  marker.unlink()
  data_dir = tmp_path / 'data'
  if layout == 'folder':
    write_folder(data_dir / 'cifar-10-batches-py', files)
    source = data_dir / 'cifar-10-batches-py' / 'data_batch_1'
  else:
    data_dir.mkdir()
    _write_tar_gz(data_dir / 'cifar-10-python.tar.gz', 'cifar-10-batches-py', files)
    source = data_dir / 'cifar-10-python.tar.gz' / 'data_batch_1'
  with pytest.raises(ValueError) as e:
    data.load_dataset(_cfg(name='cifar10'), data_dir=str(data_dir))
  assert str(e.value) == (
      f'refusing to load {source}: it references {os.system.__module__}.system,'
      ' which a CIFAR pickle never holds'
  )
  assert not marker.exists()


@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_repickled_at_any_protocol_loads(tmp_path, protocol):
  # Each protocol names numpy's array constructors differently (_frombuffer
  # at 5) and stores bytes differently (_codecs.encode below 3).
  files, arrays = fake_cifar10_files()
  files = {f: pickle.dumps(pickle.loads(b), protocol=protocol) for f, b in files.items()}
  write_folder(tmp_path / 'cifar-10-batches-py', files)
  _assert_same(data.load_dataset(_cfg(name='cifar10'), data_dir=str(tmp_path)), arrays)


class _Calls:
  """Unpickles to `function(*args)`."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return (self.function, self.args)


@pytest.mark.parametrize(
    'value,expected',
    [
        (
            _Calls(codecs.encode, 'abc', 'rot13'),
            'corrupt CIFAR pickle .*'
            r'test_batch: UnpicklingError: _codecs\.encode of str with encoding '
            "'rot13', not latin1",
        ),
        (
            _Calls(np.load, 'x.npy'),
            r'refusing to load .*test_batch: it references ' r'numpy\.load, which',
        ),
        (_Calls(eval, '1 + 1'), r'refusing .* builtins\.eval, which'),
    ],
)
def test_cifar_pickle_admits_only_what_the_format_holds(tmp_path, value, expected):
  files, _ = fake_cifar10_files()
  batch = pickle.loads(files['test_batch'])
  batch[b'extra'] = value
  files['test_batch'] = pickle.dumps(batch, protocol=4)
  write_folder(tmp_path / 'cifar-10-batches-py', files)
  with pytest.raises(ValueError, match=expected) as e:
    data.load_dataset(_cfg(name='cifar10'), data_dir=str(tmp_path))
  assert '\n' not in str(e.value)


# ---------------------------------------------------------------------------
# CIFAR-100 (fake only; the real one is not available here).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('layout', ['folder', 'archive'])
def test_cifar100_fake(tmp_path, layout):
  files, arrays = fake_cifar100_files()
  if layout == 'folder':
    write_folder(tmp_path / 'cifar-100-python', files)
  else:
    _write_tar_gz(tmp_path / 'cifar-100-python.tar.gz', 'cifar-100-python', files)
  ds = data.load_dataset(_cfg(name='cifar100'), data_dir=str(tmp_path))
  _assert_same(ds, arrays)
  assert ds.x_train.shape == (7, 32, 32, 3) and ds.x_test.shape[0] == 7
  assert (ds.x_train[0] == np.array([0, 1, 2], np.uint8)).all()
  assert ds.num_classes == 100 and len(ds.class_names) == 100
  assert ds.class_names[42] == 'class_42'
  assert ds.mean == (0.5071, 0.4865, 0.4409)
  assert ds.std == (0.2673, 0.2564, 0.2762)


# ---------------------------------------------------------------------------
# gaussian_blobs.
# ---------------------------------------------------------------------------


def test_gaussian_blobs():
  a = data.gaussian_blobs(num_train=4000, num_test=1000, separation=3.0, std=0.5, seed=3)
  b = data.gaussian_blobs(num_train=4000, num_test=1000, separation=3.0, std=0.5, seed=3)
  c = data.gaussian_blobs(num_train=4000, num_test=1000, separation=3.0, std=0.5, seed=4)
  _assert_same(b, dict(x_train=a.x_train, y_train=a.y_train, x_test=a.x_test, y_test=a.y_test))
  assert not np.array_equal(a.x_train, c.x_train)
  assert not np.array_equal(a.y_train, c.y_train)
  assert a.x_train.shape == (4000, 2) and a.x_train.dtype == np.float32
  assert a.y_train.dtype == np.int32 and a.mean is None and a.std is None
  assert np.bincount(a.y_train).tolist() == [2000, 2000]
  assert np.bincount(a.y_test).tolist() == [500, 500]
  assert 0 < a.y_train[:100].sum() < 100  # Shuffled, not sorted.
  assert not np.array_equal(a.x_train[:1000], a.x_test)  # Independent draws.
  for y, centre in ((0, -1.5), (1, 1.5)):
    pts = a.x_train[a.y_train == y]
    np.testing.assert_allclose(pts.mean(0), [centre, 0.0], atol=0.05)
    np.testing.assert_allclose(pts.std(0), [0.5, 0.5], atol=0.05)


def test_gaussian_blobs_via_config_uses_seed():
  cfg = _cfg(name='gaussian_blobs', num_train=100, num_test=10)
  a = data.load_dataset(cfg, seed=1)
  np.testing.assert_array_equal(a.x_train, data.gaussian_blobs(100, 10, seed=1).x_train)
  cfg.seed = 7  # An explicit data seed overrides the run seed.
  np.testing.assert_array_equal(
      data.load_dataset(cfg, seed=1).x_train, data.gaussian_blobs(100, 10, seed=7).x_train
  )


# ---------------------------------------------------------------------------
# Derived tasks.
# ---------------------------------------------------------------------------


def test_subset_classes_horse_automobile(cifar10):
  ds = data.subset_classes(cifar10, [7, 1])
  assert ds.x_train.shape == (10000, 32, 32, 3)
  assert np.bincount(ds.y_train).tolist() == [5000, 5000]
  assert np.bincount(ds.y_test).tolist() == [1000, 1000]
  assert ds.num_classes == 2 and ds.class_names == ('horse', 'automobile')
  assert ds.mean == cifar10.mean and ds.positive_class is None
  # np.array_equal: assert_array_equal is slow on 10^8 elements.
  assert np.array_equal(ds.x_train[ds.y_train == 0], cifar10.x_train[cifar10.y_train == 7])
  assert np.array_equal(ds.x_test[ds.y_test == 1], cifar10.x_test[cifar10.y_test == 1])
  keep = np.isin(cifar10.y_train, [7, 1])
  np.testing.assert_array_equal(ds.y_train, (cifar10.y_train[keep] == 1))


def test_binarize_downsample_car_truck(cifar10):
  cfg = _cfg(positive_classes=[1, 9], minority_fraction=0.05)
  ds = data.apply_derived(cifar10, cfg, seed=0)
  assert ds.class_names == ('rest', 'automobile+truck')
  assert ds.num_classes == 2 and ds.positive_class == 1
  assert np.bincount(ds.y_train).tolist() == [40000, 2105]
  assert np.bincount(ds.y_test).tolist() == [8000, 2000]  # Test untouched.
  assert np.array_equal(ds.x_test, cifar10.x_test)
  # Negatives all kept, in the original order.
  neg = ~np.isin(cifar10.y_train, [1, 9])
  assert np.array_equal(ds.x_train[ds.y_train == 0], cifar10.x_train[neg])
  # Kept positives are a subsequence of the original positives.
  pos = cifar10.x_train[np.isin(cifar10.y_train, [1, 9])]
  flat = lambda x: x.reshape(len(x), -1)
  first_pixels = {bytes(r): i for i, r in enumerate(flat(pos))}
  kept_at = [first_pixels[bytes(r)] for r in flat(ds.x_train[ds.y_train == 1])]
  assert len(kept_at) == 2105 and (np.diff(kept_at) > 0).all()
  again = data.apply_derived(cifar10, cfg, seed=0)
  assert np.array_equal(again.x_train, ds.x_train)
  assert np.array_equal(again.y_train, ds.y_train)
  other = data.apply_derived(cifar10, cfg, seed=1)
  assert np.bincount(other.y_train).tolist() == [40000, 2105]
  assert not np.array_equal(other.x_train[other.y_train == 1], ds.x_train[ds.y_train == 1])


def _indexed(n_neg, n_pos, seed=0):
  """Binary dataset whose x[:, 0] is the row's original index."""
  y = np.random.default_rng(seed).permutation(np.repeat(np.array([0, 1], np.int32), [n_neg, n_pos]))
  x = np.stack([np.arange(y.size), np.zeros(y.size)], 1).astype(np.float32)
  return data.Dataset(
      name='indexed',
      x_train=x,
      y_train=y,
      x_test=x.copy(),
      y_test=y.copy(),
      num_classes=2,
      class_names=('a', 'b'),
      mean=None,
      std=None,
      positive_class=1,
  )


@pytest.mark.parametrize(
    'fraction,n_neg,expected',
    [
        (0.05, 40000, 2105),  # 2105.26 -> 2105 (1:19).
        (0.1, 900, 100),
        (0.25, 30, 10),
        (0.3, 10, 4),  # 4.29 -> 4.
        (0.4, 10, 7),  # 6.67 -> 7.
    ],
)
def test_downsample_rule(fraction, n_neg, expected):
  assert data.downsampled_count(fraction, n_neg) == expected


def test_downsample_order_and_splits():
  base = _indexed(900, 400)
  ds = data.downsample_class(base, 1, 0.1, seed=5)
  idx = ds.x_train[:, 0].astype(int)
  assert (np.diff(idx) > 0).all()  # Original order preserved.
  np.testing.assert_array_equal(ds.y_train, base.y_train[idx])
  assert np.bincount(ds.y_train).tolist() == [900, 100]
  assert ds.x_test.shape[0] == 1300  # split='train' leaves test alone.
  both = data.downsample_class(base, 1, 0.1, seed=5, split='both')
  np.testing.assert_array_equal(both.x_train, ds.x_train)
  assert np.bincount(both.y_test).tolist() == [900, 100]
  test_only = data.downsample_class(base, 1, 0.1, seed=5, split='test')
  assert test_only.x_train.shape[0] == 1300
  assert np.bincount(test_only.y_test).tolist() == [900, 100]
  # Downsampling the majority class works the same way.
  maj = data.downsample_class(base, 0, 0.5, seed=0)
  assert np.bincount(maj.y_train).tolist() == [400, 400]


def test_load_dataset_applies_derived_in_order():
  cfg = _cfg(
      name='gaussian_blobs',
      num_train=2000,
      num_test=400,
      minority_fraction=0.2,
      imbalanced_split='both',
      max_train=500,
      max_test=300,
  )
  ds = data.load_dataset(cfg, seed=2)
  full = data.downsample_class(data.gaussian_blobs(2000, 400, seed=2), 1, 0.2, seed=2, split='both')
  assert full.y_train.size == 1250 and full.y_test.size == 250
  np.testing.assert_array_equal(ds.x_train, full.x_train[:500])
  np.testing.assert_array_equal(ds.y_test, full.y_test)  # 250 < max_test.
  cfg = _cfg(
      name='gaussian_blobs', num_train=100, num_test=20, classes=[1, 0], positive_classes=[0]
  )
  ds = data.load_dataset(cfg, seed=0)
  base = data.gaussian_blobs(100, 20, seed=0)
  np.testing.assert_array_equal(ds.y_train, base.y_train)  # 1->0->1, 0->1->0.
  assert ds.class_names == ('rest', '1') and ds.positive_class == 1


def test_derived_errors(cifar10):
  with pytest.raises(ValueError, match=r'classes \[10\] out of range \[0, 10\)'):
    data.subset_classes(cifar10, [7, 10])
  with pytest.raises(ValueError, match='duplicates'):
    data.subset_classes(cifar10, [1, 1])
  with pytest.raises(ValueError, match='must not be empty'):
    data.binarize(cifar10, [])
  with pytest.raises(ValueError, match='leaving no negatives'):
    data.binarize(cifar10, list(range(10)))
  small = _indexed(10, 10)
  with pytest.raises(ValueError, match=r'needs 90 samples, has 10'):
    data.downsample_class(small, 1, 0.9, seed=0)
  with pytest.raises(ValueError, match=r'needs 0 samples'):
    data.downsample_class(small, 1, 0.01, seed=0)
  with pytest.raises(ValueError, match='split must be one of'):
    data.downsample_class(small, 1, 0.2, seed=0, split='val')
  with pytest.raises(ValueError, match='max_train must be a positive int'):
    data.truncate(small, max_train=0)
  with pytest.raises(ValueError, match='y_train must be int32'):
    data.Dataset(
        'bad',
        np.zeros((2, 2)),
        np.zeros(2, np.int64),
        np.zeros((1, 2)),
        np.zeros(1, np.int32),
        2,
        ('a', 'b'),
        None,
        None,
    )


@pytest.mark.parametrize('fraction', [0.0, 1.0, 1.5, -0.1, '0.1', True])
def test_invalid_fraction(fraction, tmp_path):
  with pytest.raises(ValueError, match='must be a number in \\(0, 1\\)'):
    data.downsample_class(_indexed(10, 10), 1, fraction, seed=0)
  # Through the config it fails before any file is looked for (the empty
  # data dir would otherwise give FileNotFoundError).
  cfg = _cfg(name='mnist', positive_classes=[0], minority_fraction=fraction)
  with pytest.raises(ValueError, match=r'data\.minority_fraction must be'):
    data.load_dataset(cfg, data_dir=str(tmp_path))


# ---------------------------------------------------------------------------
# Registry and missing-data errors.
# ---------------------------------------------------------------------------


def test_unknown_dataset():
  with pytest.raises(ValueError) as e:
    data.load_dataset(_cfg(name='foo'), data_dir=None)
  assert str(e.value) == (
      "unknown dataset 'foo'; valid: cifar10, cifar100, " 'gaussian_blobs, mnist, retinopathy'
  )


@pytest.mark.parametrize(
    'name,expected',
    [
        (
            'mnist',
            [
                'MNIST not found',
                'mnist.npz',
                'train-images-idx3-ubyte.gz',
                't10k-labels-idx1-ubyte.gz',
                "tfds 'mnist'",
            ],
        ),
        (
            'cifar10',
            [
                'CIFAR-10 not found',
                'cifar-10-batches-py/',
                'data_batch_5',
                'cifar-10-python.tar.gz',
                "tfds 'cifar10'",
            ],
        ),
        (
            'cifar100',
            [
                'CIFAR-100 not found',
                'cifar-100-python/',
                'cifar-100-python.tar.gz',
                "tfds 'cifar100'",
            ],
        ),
    ],
)
def test_missing_files(name, expected, tmp_path, no_network, caplog):
  empty = tmp_path / 'data'
  empty.mkdir()
  tfds_dir = tmp_path / 'tfds'
  cfg = _cfg(name=name, tfds_data_dir=str(tfds_dir))
  with pytest.raises(FileNotFoundError) as e:
    data.load_dataset(cfg, data_dir=str(empty))
  msg = str(e.value)
  assert '\n' not in msg
  # The one-line error is all the user sees: no tfds warning ahead of it
  # ("Variant folder ... has no dataset_info.json").
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert not warnings
  for s in expected + [str(empty), os.path.join(str(empty), name)]:
    assert s in msg, (s, msg)
  assert not list(tfds_dir.glob('**/*.tfrecord*'))  # Nothing downloaded.
  assert not list(tfds_dir.glob('**/*.array_record*'))


def test_tfds_still_warns_about_an_incomplete_folder(tmp_path, no_network, caplog):
  # An interrupted prepare leaves tfds's variant folder without
  # dataset_info.json: that warning is worth seeing.
  tfds = pytest.importorskip('tensorflow_datasets')
  tfds_dir = tmp_path / 'tfds'
  pathlib.Path(tfds.builder('mnist', data_dir=str(tfds_dir)).data_dir).mkdir(parents=True)
  cfg = _cfg(name='mnist', tfds_data_dir=str(tfds_dir))
  with pytest.raises(FileNotFoundError, match='MNIST not found'):
    data.load_dataset(cfg, data_dir=str(tmp_path / 'no_data'))
  assert any('dataset_info.json' in r.getMessage() for r in caplog.records)


def test_missing_without_data_dir(monkeypatch, tmp_path, no_network):
  monkeypatch.delenv('JAL_DATA_DIR', raising=False)
  cfg = _cfg(name='mnist', tfds_data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='searched: no data dir given'):
    data.load_dataset(cfg, data_dir=None)


class _FakeSource:

  def __init__(self, n, offset):
    self.n, self.offset = n, offset

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {
        'image': np.full((28, 28, 1), self.offset + i, np.uint8),
        'label': (self.offset + i) % 10,
    }


class _FakeBuilder:
  """Stands in for a tfds builder; records download attempts."""

  def __init__(self, prepared):
    self.prepared = prepared
    self.downloads = 0
    self.data_dir = '/fake/tfds'
    self.info = type(
        'Info',
        (),
        {'features': {'label': type('Label', (), {'names': [str(i) for i in range(10)]})()}},
    )()

  def is_prepared(self):
    return self.prepared

  def download_and_prepare(self):
    self.downloads += 1
    self.prepared = True

  def as_data_source(self, split):
    return _FakeSource(12, 0) if split == 'train' else _FakeSource(5, 100)


def test_tfds_fallback_downloads_only_when_asked(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  builder = _FakeBuilder(prepared=False)
  calls = []

  def fake_builder(name, data_dir=None):
    calls.append((name, data_dir))
    return builder

  monkeypatch.setattr(tfds, 'builder', fake_builder)
  cfg = _cfg(name='mnist', tfds_data_dir='/my/tfds')
  with pytest.raises(FileNotFoundError, match='MNIST not found'):
    data.load_dataset(cfg, data_dir=str(tmp_path))
  assert builder.downloads == 0 and calls == [('mnist', '/my/tfds')]
  cfg.download = True
  ds = data.load_dataset(cfg, data_dir=str(tmp_path))
  assert builder.downloads == 1
  assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_train.dtype == np.uint8
  assert ds.y_train.tolist() == [i % 10 for i in range(12)]
  assert ds.x_test[:, 0, 0, 0].tolist() == list(range(100, 105))
  assert ds.y_train.dtype == np.int32 and ds.mean == (0.1307,)
  # Prepared already: read without downloading.
  cfg.download = False
  ds = data.load_dataset(cfg, data_dir=str(tmp_path))
  assert builder.downloads == 1 and ds.x_test.shape[0] == 5
