"""Tests for the Kaggle diabetic retinopathy loader on tiny fake files."""

import os
import socket

import ml_collections
import numpy as np
from PIL import Image
import pytest

from jal import data
from jal.data import retinopathy

# One solid colour per grade, so each resized image proves which row it is.
COLOURS = np.array(
    [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (20, 230, 230)], np.int32
)
SIZES = ((40, 30), (50, 50), (30, 45), (64, 48), (33, 21))  # (w, h)
EXTS = ('.jpeg', '.png', '.jpg')
# 30 train rows: 16 negatives (grades 0-1), 14 positives (grades 2-4).
TRAIN_GRADES = [
    0,
    2,
    0,
    1,
    4,
    0,
    3,
    0,
    2,
    0,
    1,
    0,
    2,
    4,
    0,
    3,
    0,
    2,
    1,
    0,
    4,
    2,
    0,
    3,
    0,
    1,
    2,
    4,
    0,
    3,
]
TEST_GRADES = [0, 1, 2, 3, 4, 0, 0, 2, 1, 0]
DR_NAMES = ('No DR', 'Mild', 'Moderate', 'Severe', 'Proliferative DR')


def _cfg(**kwargs):
  return ml_collections.ConfigDict(kwargs)


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.fixture
def decodes(monkeypatch):
  """Counts calls of retinopathy._read_image (one per decoded file)."""
  calls = []
  real = retinopathy._read_image

  def counting(path, size):
    calls.append(os.path.basename(path))
    return real(path, size)

  monkeypatch.setattr(retinopathy, '_read_image', counting)
  return calls


def _write_split(root, split, grades, prefix):
  folder = root / split
  folder.mkdir(parents=True)
  names = []
  for i, g in enumerate(grades):
    name = f'{prefix}{i}_{"left" if i % 2 else "right"}'
    ext = EXTS[i % len(EXTS)]
    image = Image.new('RGB', SIZES[i % len(SIZES)], tuple(int(c) for c in COLOURS[g]))
    image.save(folder / (name + ext), quality=95)
    names.append(name)
  return names


def _write_fake(data_dir, *, solution=False, subdir='diabetic_retinopathy'):
  """Writes the Kaggle layout; returns {'train': names, 'test': names}."""
  root = data_dir / subdir if subdir else data_dir
  names = {'train': _write_split(root, 'train', TRAIN_GRADES, '')}
  rows = ['image,level'] + [f'{n},{g}' for n, g in zip(names['train'], TRAIN_GRADES)]
  (root / 'trainLabels.csv').write_text('\n'.join(rows) + '\n')
  if solution:
    names['test'] = _write_split(root, 'test', TEST_GRADES, '1000')
    rows = ['image,level,Usage'] + [
        f'{n},{g},{"Public" if i % 3 else "Private"}'
        for i, (n, g) in enumerate(zip(names['test'], TEST_GRADES))
    ]
    (root / 'retinopathy_solution.csv').write_text('\n'.join(rows) + '\n')
  return names


def _grades_from_pixels(x):
  """u8[n, s, s, 3] -> the grade whose colour each image is, checking it is
  solid and within JPEG error of that colour."""
  x = x.astype(np.int32)
  assert np.abs(x - x[:, :1, :1, :]).max() <= 4  # Solid after resizing.
  dist = np.abs(x[:, 0, 0, None, :] - COLOURS[None]).max(-1)  # [n, 5]
  assert dist.min(-1).max() <= 4, dist.min(-1)
  return dist.argmin(-1).tolist()


def _load(data_dir, **kwargs):
  return data.load_dataset(_cfg(name='retinopathy', **kwargs), data_dir=str(data_dir), seed=0)


def test_folder_with_solution_csv(tmp_path, decodes):
  _write_fake(tmp_path, solution=True)
  ds = _load(tmp_path, image_size=16)
  assert ds.name == 'retinopathy' and ds.num_classes == 5
  assert ds.class_names == DR_NAMES and ds.positive_class is None
  assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
  assert ds.x_train.shape == (30, 16, 16, 3) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (10, 16, 16, 3) and ds.x_test.dtype == np.uint8
  assert ds.y_train.tolist() == TRAIN_GRADES  # CSV row order.
  assert ds.y_test.tolist() == TEST_GRADES  # All Usage rows, in order.
  assert _grades_from_pixels(ds.x_train) == TRAIN_GRADES
  assert _grades_from_pixels(ds.x_test) == TEST_GRADES
  assert len(decodes) == 40
  cache = tmp_path / 'diabetic_retinopathy' / 'cache'
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].startswith('retinopathy_16px_')
  assert files[0].endswith('.npz')  # No .tmp left behind.


def test_second_load_reads_cache(tmp_path, decodes):
  names = _write_fake(tmp_path, solution=True)
  first = _load(tmp_path, image_size=12)
  assert len(decodes) == 40
  os.remove(tmp_path / 'diabetic_retinopathy' / 'train' / (names['train'][0] + '.jpeg'))
  second = _load(tmp_path, image_size=12)
  assert len(decodes) == 40  # Nothing decoded, missing file not noticed.
  for k in ('x_train', 'y_train', 'x_test', 'y_test'):
    np.testing.assert_array_equal(getattr(first, k), getattr(second, k))
  # Another image size is another cache entry (and here, the missing file).
  with pytest.raises(FileNotFoundError, match=names['train'][0]):
    _load(tmp_path, image_size=10)


def test_cache_keyed_by_csv_content(tmp_path, decodes):
  root = tmp_path / 'diabetic_retinopathy'
  _write_fake(tmp_path)
  cache_dir = tmp_path / 'my_cache'
  _load(tmp_path, image_size=8, cache_dir=str(cache_dir))
  _load(tmp_path, image_size=8, cache_dir=str(cache_dir))
  assert len(decodes) == 30 and len(os.listdir(cache_dir)) == 1
  assert not (root / 'cache').exists()
  csv = root / 'trainLabels.csv'
  csv.write_text(csv.read_text().replace('\n', '\r\n'))  # Same rows, new hash.
  ds = _load(tmp_path, image_size=8, cache_dir=str(cache_dir))
  assert len(decodes) == 60 and len(os.listdir(cache_dir)) == 2
  assert sorted(ds.y_train.tolist() + ds.y_test.tolist()) == sorted(TRAIN_GRADES)


def test_corrupt_cache_is_rebuilt(tmp_path, decodes):
  _write_fake(tmp_path)
  _load(tmp_path, image_size=8)
  cache_dir = tmp_path / 'diabetic_retinopathy' / 'cache'
  (path,) = cache_dir.iterdir()
  path.write_bytes(path.read_bytes()[:100])  # Truncated .npz.
  ds = _load(tmp_path, image_size=8)
  assert len(decodes) == 60 and ds.x_train.shape == (24, 8, 8, 3)
  ds = _load(tmp_path, image_size=8)
  assert len(decodes) == 60  # Rewritten cache read back.


def test_heldout_split_deterministic_and_stratified(tmp_path):
  _write_fake(tmp_path)
  ds = _load(tmp_path, image_size=8, test_fraction=0.2)
  # Negatives 16 -> round(3.2) = 3 held out; positives 14 -> round(2.8) = 3.
  assert ds.x_train.shape == (24, 8, 8, 3) and ds.x_test.shape == (6, 8, 8, 3)
  assert np.bincount(ds.y_test >= 2).tolist() == [3, 3]
  assert np.bincount(ds.y_train >= 2).tolist() == [13, 11]
  assert _grades_from_pixels(ds.x_train) == ds.y_train.tolist()
  assert _grades_from_pixels(ds.x_test) == ds.y_test.tolist()
  grades = np.asarray(TRAIN_GRADES)
  train_idx, test_idx = data.stratified_split(grades >= 2, 0.2, 0)
  assert ds.y_train.tolist() == grades[train_idx].tolist()  # Row order kept.
  assert ds.y_test.tolist() == grades[test_idx].tolist()
  again = _load(tmp_path, image_size=8, test_fraction=0.2)
  np.testing.assert_array_equal(ds.x_test, again.x_test)
  np.testing.assert_array_equal(ds.y_train, again.y_train)
  # split_seed overrides the run seed; other seeds give other splits.
  by_seed = [data.stratified_split(grades >= 2, 0.2, s)[1].tolist() for s in range(5)]
  assert len({tuple(t) for t in by_seed}) > 1
  s3 = data.load_dataset(_cfg(name='retinopathy', image_size=8), seed=3, data_dir=str(tmp_path))
  s3_fixed = _load(tmp_path, image_size=8, split_seed=3)
  np.testing.assert_array_equal(s3.y_test, s3_fixed.y_test)
  np.testing.assert_array_equal(s3.x_test, s3_fixed.x_test)
  half = _load(tmp_path, image_size=8, test_fraction=0.5)
  assert np.bincount(half.y_test >= 2).tolist() == [8, 7]


def test_stratified_split_counts():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
  train_idx, test_idx = data.stratified_split(labels, 0.3, 7)
  assert np.bincount(labels[test_idx], minlength=3).tolist() == [3, 2, 0]
  assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(16))
  assert (np.diff(train_idx) > 0).all() and (np.diff(test_idx) > 0).all()
  with pytest.raises(ValueError, match='test_fraction'):
    data.stratified_split(labels, 1.0, 0)


def test_binary_task_through_load_dataset(tmp_path):
  _write_fake(tmp_path)
  base = _load(tmp_path, image_size=8)
  ds = _load(tmp_path, image_size=8, positive_classes=(2, 3, 4), minority_fraction=0.05)
  pos = 'Moderate+Severe+Proliferative DR'
  assert ds.name == f'retinopathy[{pos}-vs-rest]'
  assert ds.class_names == ('rest', pos) and ds.positive_class == 1
  # Train: 13 negatives -> round(0.05 / 0.95 * 13) = 1 positive kept.
  assert np.bincount(ds.y_train, minlength=2).tolist() == [13, 1]
  assert np.bincount(ds.y_test, minlength=2).tolist() == [3, 3]  # Untouched.
  assert ds.mean == data.IMAGENET_MEAN
  # Pixels still match: negatives are grade 0/1 colours, positives 2-4.
  grades = np.asarray(_grades_from_pixels(ds.x_train))
  np.testing.assert_array_equal(grades >= 2, ds.y_train == 1)
  np.testing.assert_array_equal(ds.x_train[ds.y_train == 0], base.x_train[base.y_train < 2])
  quarter = _load(tmp_path, image_size=8, positive_classes=(2, 3, 4), minority_fraction=0.25)
  assert np.bincount(quarter.y_train).tolist() == [13, 4]  # round(13 / 3).


def test_data_in_data_dir_itself(tmp_path):
  _write_fake(tmp_path, solution=True, subdir=None)
  ds = _load(tmp_path, image_size=8)
  assert ds.y_train.tolist() == TRAIN_GRADES
  assert ds.y_test.tolist() == TEST_GRADES
  assert (tmp_path / 'diabetic_retinopathy' / 'cache').is_dir()


def test_missing_image_files(tmp_path):
  root = tmp_path / 'diabetic_retinopathy'
  _write_fake(tmp_path)
  csv = root / 'trainLabels.csv'
  ghosts = [f'ghost{i}_left' for i in range(7)]
  csv.write_text(csv.read_text() + ''.join(f'{g},1\n' for g in ghosts))
  with pytest.raises(FileNotFoundError) as e:
    _load(tmp_path, image_size=8)
  msg = str(e.value)
  assert '\n' not in msg
  assert msg.startswith(f'{csv}: 7 of 37 images not found in {root / "train"}')
  assert ', '.join(ghosts[:5]) + ', ...' in msg and ghosts[5] not in msg


def test_unreadable_image_error_and_skip(tmp_path, caplog):
  names = _write_fake(tmp_path)
  train = tmp_path / 'diabetic_retinopathy' / 'train'
  bad = train / (names['train'][3] + '.jpeg')  # Row 3, grade 1.
  bad.write_bytes(b'not a jpeg at all')
  with pytest.raises(ValueError) as e:
    _load(tmp_path, image_size=8)
  msg = str(e.value)
  assert '\n' not in msg and str(bad) in msg and 'skip_unreadable' in msg
  assert msg.startswith(f'unreadable image {bad} (UnidentifiedImageError')
  assert not (tmp_path / 'diabetic_retinopathy' / 'cache').exists()

  ds = _load(tmp_path, image_size=8, skip_unreadable=True, test_fraction=0.5)
  kept = TRAIN_GRADES[:3] + TRAIN_GRADES[4:]
  assert ds.x_train.shape[0] + ds.x_test.shape[0] == 29
  assert sorted(ds.y_train.tolist() + ds.y_test.tolist()) == sorted(kept)
  assert 'Skipping unreadable image' in caplog.text and str(bad) in caplog.text
  # Cached without the bad row; it still errors unless skipping.
  with pytest.raises(
      ValueError, match=r'unreadable images in .*train/' + names['train'][3] + r'\.jpeg'
  ):
    _load(tmp_path, image_size=8)
  caplog.clear()
  again = _load(tmp_path, image_size=8, skip_unreadable=True, test_fraction=0.5)
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  assert 'Skipped 1 unreadable retinopathy images' in caplog.text


def test_truncated_jpeg_is_unreadable(tmp_path):
  names = _write_fake(tmp_path)
  path = tmp_path / 'diabetic_retinopathy' / 'train' / (names['train'][0] + '.jpeg')
  big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8))
  big.save(path, quality=90)
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(ValueError, match=f'unreadable image {path} '):
    _load(tmp_path, image_size=8)


@pytest.mark.parametrize(
    'header,row,expected',
    [
        ('name,grade', '10_left,1', 'must have columns image,level; got name,grade'),
        (
            'image,level',
            '10_left,7',
            'line 2: need an image name and a grade 0-4, ' "got image='10_left' level='7'",
        ),
        ('image,level', '10_left,', 'line 2'),
    ],
)
def test_bad_csv(tmp_path, header, row, expected):
  root = tmp_path / 'diabetic_retinopathy'
  (root / 'train').mkdir(parents=True)
  (root / 'trainLabels.csv').write_text(f'{header}\n{row}\n')
  with pytest.raises(ValueError, match=expected):
    _load(tmp_path)


def test_bad_config(tmp_path):
  _write_fake(tmp_path)
  with pytest.raises(ValueError, match='data.image_size must be an int >= 1'):
    _load(tmp_path, image_size=0)
  with pytest.raises(ValueError, match=r'data.test_fraction must be a number'):
    _load(tmp_path, test_fraction=1.5)


def test_not_found(tmp_path, no_network):
  empty = tmp_path / 'data'
  empty.mkdir()
  tfds_dir = tmp_path / 'tfds'
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'trainLabels.csv').write_text('image,level\n')  # Incomplete.
  for download in (False, True):
    cfg = _cfg(
        name='retinopathy',
        tfds_data_dir=str(tfds_dir),
        tfds_manual_dir=str(manual),
        download=download,
    )
    with pytest.raises(FileNotFoundError) as e:
      data.load_dataset(cfg, data_dir=str(empty))
    msg = str(e.value)
    assert '\n' not in msg
    for s in (
        'Diabetic retinopathy not found',
        'trainLabels.csv',
        'train/*.jpeg',
        'retinopathy_solution.csv',
        f'in {empty / "diabetic_retinopathy"}/',
        f'searched: {empty / "diabetic_retinopathy"}, {empty}',
        "tfds 'diabetic_retinopathy_detection'",
        'tfds_manual_dir',
    ):
      assert s in msg, (s, msg)
  assert not list(tfds_dir.glob('**/*.tfrecord*'))  # Nothing prepared.
  assert not list(tfds_dir.glob('**/*.array_record*'))


def test_not_found_without_data_dir(tmp_path, monkeypatch, no_network):
  monkeypatch.delenv('JAL_DATA_DIR', raising=False)
  cfg = _cfg(name='retinopathy', tfds_data_dir=str(tmp_path))
  with pytest.raises(
      FileNotFoundError, match='in <data_dir>/diabetic_retinopathy/.*searched: no data dir given'
  ):
    data.load_dataset(cfg, data_dir=None)


class _FakeSource:

  def __init__(self, grades):
    self.grades = grades

  def __len__(self):
    return len(self.grades)

  def __getitem__(self, i):
    w, h = SIZES[i % len(SIZES)]
    image = np.broadcast_to(COLOURS[self.grades[i]].astype(np.uint8), (h, w, 3))
    return {'image': image, 'label': self.grades[i], 'name': f'{i}_left'}


class _FakeBuilder:
  """Stands in for tfds 'diabetic_retinopathy_detection'."""

  def __init__(self, prepared, root):
    self.prepared = prepared
    self.prepare_calls = []
    self.data_dir = '/fake/tfds/diabetic_retinopathy_detection/original/3.0.0'
    self.data_dir_root = root
    self.info = type(
        'Info',
        (),
        {'features': {'label': type('Label', (), {'names': [str(i) for i in range(5)]})()}},
    )()

  def is_prepared(self):
    return self.prepared

  def download_and_prepare(self, **kwargs):
    self.prepare_calls.append(kwargs)
    self.prepared = True

  def as_data_source(self, split):
    return _FakeSource(TRAIN_GRADES if split == 'train' else TEST_GRADES)


def test_tfds_fallback(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  builder = _FakeBuilder(prepared=False, root=str(tmp_path / 'tfds'))
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir=None: builder)
  cfg = _cfg(name='retinopathy', image_size=8, download=True)
  empty = tmp_path / 'data'
  empty.mkdir()
  # Default manual dir (<root>/downloads/manual) lacks the files: no prepare.
  with pytest.raises(FileNotFoundError, match='Diabetic retinopathy not found'):
    data.load_dataset(cfg, data_dir=str(empty))
  assert not builder.prepare_calls
  manual = tmp_path / 'tfds' / 'downloads' / 'manual'
  for d in ('train', 'test', 'sample'):
    (manual / d).mkdir(parents=True)
  for f in ('trainLabels.csv', 'retinopathy_solution.csv'):
    (manual / f).write_text('image,level\n')
  ds = data.load_dataset(cfg, data_dir=str(empty))
  (call,) = builder.prepare_calls
  assert str(call['download_config'].manual_dir) == str(manual)
  assert ds.x_train.shape == (30, 8, 8, 3) and ds.x_train.dtype == np.uint8
  assert ds.y_train.tolist() == TRAIN_GRADES
  assert _grades_from_pixels(ds.x_train) == TRAIN_GRADES
  assert _grades_from_pixels(ds.x_test) == TEST_GRADES
  assert ds.class_names == DR_NAMES and ds.std == data.IMAGENET_STD
  # Prepared: read without preparing again, even with download off.
  cfg.download = False
  ds = data.load_dataset(cfg, data_dir=None)
  assert len(builder.prepare_calls) == 1 and ds.x_test.shape[0] == 10
