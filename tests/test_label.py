"""`jal.label` end to end on a folder of real MNIST PNGs, and its bad inputs.

The end-to-end test plays the annotator: after each call it reveals the true
labels of next_batch.csv in labels.csv, as a person would.
"""

import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from jal import data
from jal.label import images as images_lib
from jal.label import project as project_lib
from jal.label import session
from tests.conftest import REPO, load_config, shared_data_dir
from tests.test_images import deadline, write_blank_png

CLASSES = [str(i) for i in range(10)]
QUERY = 20
N_IMAGES = 200


def smoke():
  return load_config('label', 'smoke')


def _write_mnist_pngs(folder: pathlib.Path, n: int) -> dict[str, str]:
  """n MNIST training images as PNGs; returns the truth {filename: label}."""
  src = pathlib.Path(shared_data_dir()) / 'mnist'
  x = data.read_idx(str(src / 'train-images-idx3-ubyte.gz'), 3)
  y = data.read_idx(str(src / 'train-labels-idx1-ubyte.gz'), 1)
  folder.mkdir(parents=True)
  truth = {}
  for i in np.sort(np.random.default_rng(0).choice(len(y), n, replace=False)):
    name = f'img{i:05d}.png'
    Image.fromarray(x[i]).save(folder / name)
    truth[name] = str(y[i])
  return truth


@pytest.fixture(scope='module')
def mnist_folder(tmp_path_factory):
  if shared_data_dir() is None:
    pytest.skip('real MNIST not found (set JAL_DATA_DIR)')
  root = tmp_path_factory.mktemp('mnist_pngs')
  truth = _write_mnist_pngs(root / 'images', N_IMAGES)
  return root / 'images', truth


def _batch(workdir) -> list[dict]:
  with open(pathlib.Path(workdir) / 'next_batch.csv', newline='') as f:
    return list(csv.DictReader(f))


def _annotate(labels_path, rows, truth):
  with open(labels_path, 'a') as f:
    for r in rows:
      f.write(f'{r["filename"]},{truth[r["filename"]]}\n')


def _state(workdir):
  return json.loads((pathlib.Path(workdir) / 'state.json').read_text())


def _run(images, labels_path, workdir, **kwargs):
  return session.run(
      smoke(), str(images), str(labels_path), str(workdir), **{'query': QUERY, **kwargs}
  )


# ----------------------------------------------------------------------------
# End to end.


@pytest.fixture(scope='module')
def project(mnist_folder, tmp_path_factory):
  """Four calls with the annotator answering in between; returns what each saw."""
  images, truth = mnist_folder
  root = tmp_path_factory.mktemp('project')
  labels_path, workdir = root / 'labels.csv', root / 'w'
  labels_path.write_text('filename,label\n')
  entries, batches = [], []
  for call in range(4):
    entries.append(_run(images, labels_path, workdir, classes=CLASSES if call == 0 else None))
    batches.append(_batch(workdir))
    if call < 3:
      _annotate(labels_path, batches[-1], truth)
  return images, truth, labels_path, workdir, entries, batches


def test_labeled_set_grows_by_the_query_without_duplicates(project):
  images, truth, labels_path, workdir, entries, batches = project
  assert [e['n_labeled'] for e in entries] == [0, 20, 40, 60]
  seen = set()
  for call, rows in enumerate(batches):
    names = [r['filename'] for r in rows]
    assert len(names) == QUERY and len(set(names)) == QUERY
    assert [int(r['rank']) for r in rows] == list(range(1, QUERY + 1))
    assert not seen & set(names), f'call {call + 1} asked again for labeled files'
    assert set(names) <= set(truth)
    seen |= set(names)
  # Counts per class are those of the revealed labels.
  labeled = list(csv.DictReader(open(labels_path)))
  expect = {c: sum(r['label'] == c for r in labeled) for c in CLASSES}
  assert entries[-1]['counts'] == expect and sum(expect.values()) == 60


def test_first_batch_is_random_then_the_strategy_ranks_by_its_score(project):
  *_, entries, batches = project
  assert entries[0]['strategy'].startswith('random')
  assert all(r['score'] == '' and r['predicted'] == '' for r in batches[0])
  for rows in batches[1:]:
    scores = [float(r['score']) for r in rows]
    assert scores == sorted(scores, reverse=True)  # ensembles: variation ratio, best first
    assert all(0.0 <= s <= 0.5 for s in scores)  # 2 members: 0 or 1/2
    assert all(r['predicted'] in CLASSES and 0.1 <= float(r['confidence']) <= 1.0 for r in rows)


def test_state_survives_between_calls(project):
  images, truth, labels_path, workdir, entries, batches = project
  state = _state(workdir)
  assert state['classes'] == CLASSES
  assert len(state['calls']) == 4 and [c['call'] for c in state['calls']] == [1, 2, 3, 4]
  assert set(state['images']) == set(truth)
  assert state['labels'] == {r['filename']: r['label'] for r in csv.DictReader(open(labels_path))}
  # Each call knew that the person labeled every file of the previous batch.
  for e, prev in zip(entries[1:], batches[:-1]):
    assert e['changes']['batch_labeled'] == e['changes']['batch_size'] == len(prev) == QUERY
    assert e['changes']['new_labels'] == QUERY
  assert state['calls'][-1]['batch'] == [r['filename'] for r in batches[-1]]


def test_validation_estimate_is_reported(project):
  *_, entries, _ = project
  assert entries[0]['validation'] is None
  for e in entries[1:]:
    v = e['validation']
    # Cross-validation below 200 labels: every label is held out once.
    assert v['method'] == 'cv' and v['folds'] == 3 and v['n'] == e['n_labeled']
    assert v['lo'] <= v['accuracy'] <= v['hi'] and v['accuracy'] == v['correct'] / v['n']
    assert sum(v['per_class_total']) == v['n']
    assert f'accuracy {v["accuracy"]:.3f} [{v["lo"]:.3f}, {v["hi"]:.3f}]' in e['summary']
  # Real MNIST digits: better than chance (10%) once 60 are labeled.
  assert entries[-1]['validation']['accuracy'] > 0.2
  assert 'History (labels:accuracy): 0:- -> 20:' in entries[-1]['summary']
  assert all(e['seconds']['total'] > 0 for e in entries)


def test_rerun_with_nothing_changed_reproduces_next_batch(project, tmp_path):
  images, truth, labels_path, workdir, entries, batches = project
  before = (workdir / 'next_batch.csv').read_bytes()
  again = _run(images, labels_path, workdir)
  assert again['summary'].startswith('Nothing changed since the last call')
  assert (workdir / 'next_batch.csv').read_bytes() == before
  assert len(_state(workdir)['calls']) == 4
  # A fresh workdir with the same inputs computes the same batch from scratch.
  fresh = _run(images, labels_path, tmp_path / 'w2', classes=CLASSES)
  assert fresh['call'] == 1 and fresh['validation'] == entries[-1]['validation']
  assert (tmp_path / 'w2' / 'next_batch.csv').read_bytes() == before
  # Another strategy on the same labels: the same model (validation, hints), another batch.
  other = _run(images, labels_path, tmp_path / 'w2', strategy='margin')
  assert other['call'] == 2 and other['validation'] == entries[-1]['validation']
  assert other['predicted_counts'] == entries[-1]['predicted_counts']
  assert other['score'] == 'negative margin of member 0'
  rows = _batch(tmp_path / 'w2')
  assert [r['filename'] for r in rows] != [r['filename'] for r in batches[-1]]
  assert [float(r['score']) for r in rows] == sorted(float(r['score']) for r in rows)[::-1]


def test_changed_labels_vanished_and_altered_images_are_reported(project, tmp_path):
  images, truth, labels_path, workdir, entries, batches = project
  # Work on copies: the project's folder stays as it is.
  img2, w2 = tmp_path / 'images', tmp_path / 'w'
  shutil.copytree(images, img2)
  shutil.copytree(workdir, w2)
  lab2 = tmp_path / 'labels.csv'
  rows = list(csv.DictReader(open(labels_path)))
  relabeled = rows[0]['filename']
  new_label = str((int(rows[0]['label']) + 1) % 10)
  removed = rows[1]['filename']
  altered = rows[2]['filename']
  lines = ['filename,label'] + [
      f'{r["filename"]},{new_label if r["filename"] == relabeled else r["label"]}'
      for r in rows
      if r['filename'] != removed
  ]
  lab2.write_text('\n'.join(lines) + '\n')
  vanished = batches[-1][0]['filename']  # unlabeled
  (img2 / vanished).rename(img2 / 'new.png')  # one image gone, one new: the pool keeps its size
  Image.fromarray(255 - np.asarray(Image.open(img2 / altered))).save(img2 / altered)

  # The state remembers the folder's old files and labels; point it at the copies.
  entry = session.run(smoke(), str(img2), str(lab2), str(w2), query=QUERY)
  ch = entry['changes']
  assert ch['labels_changed'] == [[relabeled, rows[0]['label'], new_label]]
  assert ch['labels_removed'] == [[removed, rows[1]['label']]]
  assert ch['images_vanished'] == [[vanished, None]]
  assert ch['images_changed'] == [[altered, rows[2]['label']]]
  s = entry['summary']
  assert f'{relabeled} {rows[0]["label"]} -> {new_label}' in s
  assert f'{removed} (was {rows[1]["label"]})' in s and vanished in s
  assert f'{altered} (labeled {rows[2]["label"]}: check the label)' in s
  # Only the current files and labels are used.
  state = _state(w2)
  assert vanished not in state['images'] and removed not in state['labels']
  assert state['labels'][relabeled] == new_label
  assert ch['new_images'] == 1 and 'new.png' in state['images']
  assert entry['n_labeled'] == 59 and entry['n_images'] == N_IMAGES
  assert vanished not in [r['filename'] for r in _batch(w2)]


# ----------------------------------------------------------------------------
# Bad input: one clear line each, before any training.


@pytest.fixture
def small(tmp_path):
  """A folder of 6 tiny PNGs (2 classes by brightness) and an empty labels.csv."""
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(6):
    Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(images / f'a{i}.png')
  labels_path = tmp_path / 'labels.csv'
  labels_path.write_text('filename,label\n')
  return images, labels_path, tmp_path / 'w'


def refused_then_skipped(small, match):
  """Runs session.run on the `small` folder: refused with `match`, then run with
  --skip_unreadable; returns that second call's entry."""
  images, labels_path, workdir = small
  with pytest.raises(ValueError, match=match):
    session.run(smoke(), str(images), str(labels_path), str(workdir), query=3, classes=['x', 'y'])
  return session.run(
      smoke(),
      str(images),
      str(labels_path),
      str(workdir),
      query=3,
      classes=['x', 'y'],
      skip_unreadable=True,
  )


def test_unreadable_image_is_named_or_skipped_with_the_flag(small):
  images, labels_path, workdir = small
  (images / 'broken.png').write_bytes(b'not a png at all')
  entry = refused_then_skipped(
      small,
      r'^1 unreadable image\(s\) in .*: broken\.png '
      r'\(UnidentifiedImageError: .*--skip_unreadable',
  )
  assert entry['skipped'] == ['broken.png'] and entry['n_images'] == 6
  assert '(1 unreadable, skipped)' in entry['summary']
  assert 'broken.png' not in [r['filename'] for r in _batch(workdir)]


def _never_hash(path):
  raise AssertionError(f'{path} was hashed before the checks ran')


@pytest.mark.parametrize(
    'kind,reason',
    [
        ('devzero', 'a link to /dev/zero, a character device, not a regular file'),
        ('fifo', 'a FIFO, not a regular file'),
    ],
)
def test_files_that_would_block_are_refused_or_skipped(small, kind, reason):
  images, labels_path, workdir = small
  if kind == 'devzero':
    os.symlink('/dev/zero', images / 'x.png')
  else:
    os.mkfifo(images / 'x.png')
  with deadline(60):  # on a regression: fail, not hang
    entry = refused_then_skipped(
        small,
        rf'^1 unreadable image\(s\) in {images}: x\.png '
        rf'\({reason}\); pass --skip_unreadable to leave them '
        'out$',
    )
  assert entry['skipped'] == ['x.png'] and entry['n_images'] == 6
  assert 'x.png' not in _state(workdir)['images']


def test_links_out_of_the_folder_are_refused_and_never_hashed(small, tmp_path):
  images, labels_path, workdir = small
  (tmp_path / 'elsewhere').mkdir()
  secret = tmp_path / 'elsewhere' / 'secret.png'
  Image.fromarray(np.full((10, 12), 7, np.uint8)).save(secret)
  os.symlink(secret, images / 's.png')
  os.symlink('a0.png', images / 'same.png')  # inside the folder: read as any file
  entry = refused_then_skipped(
      small,
      rf': s\.png \(a link to {os.path.realpath(secret)}, '
      r'outside the images folder\); pass --skip_unreadable',
  )
  assert entry['skipped'] == ['s.png'] and entry['n_images'] == 7
  state = _state(workdir)
  assert 's.png' not in state['images'] and 'same.png' in state['images']
  assert images_lib.sha256(str(secret)) not in (workdir / 'state.json').read_text()


def test_caps_on_pixels_and_file_size_fail_before_any_hashing(small, monkeypatch):
  images, labels_path, workdir = small
  write_blank_png(images / 'huge.png', 20000, 20000)  # 400 MP in 100 KB
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), np.uint8)).save(
      images / 'noise.png'
  )
  sizes = {n: f'{os.path.getsize(images / n):,}' for n in ('huge.png', 'noise.png')}
  monkeypatch.setattr(images_lib, 'sha256', _never_hash)
  with pytest.raises(
      ValueError,
      match=r'^1 unreadable image\(s\) in .*: huge\.png '
      r'\(400,000,000 pixels, over the --max_pixels cap of '
      r'50,000,000\); pass --skip_unreadable',
  ):
    session.run(smoke(), str(images), str(labels_path), str(workdir), query=3, classes=['x', 'y'])
  over = 'bytes, over the --max_file_mb cap of 0.001 MB'
  with pytest.raises(
      ValueError,
      match=re.escape(
          f'huge.png ({sizes["huge.png"]} {over}), noise.png ({sizes["noise.png"]} {over}); pass'
      ),
  ):
    session.run(
        smoke(),
        str(images),
        str(labels_path),
        str(workdir),
        query=3,
        classes=['x', 'y'],
        max_file_mb=0.001,
    )
  with pytest.raises(ValueError, match=r'--max_pixels must be positive'):
    session.run(smoke(), str(images), str(labels_path), str(workdir), max_pixels=0)
  assert not workdir.exists()


def test_unknown_label_lists_the_valid_ones(small):
  images, labels_path, workdir = small
  session.run(smoke(), str(images), str(labels_path), str(workdir), query=3, classes=['x', 'y'])
  assert _state(workdir)['classes'] == ['x', 'y']
  labels_path.write_text('filename,label\na0.png,x\na1.png,z\n')
  with pytest.raises(ValueError, match=r"line 3: unknown label 'z' for a1\.png; valid: x, y"):
    session.run(smoke(), str(images), str(labels_path), str(workdir), query=3)
  # Nor can a later call change the class list.
  with pytest.raises(ValueError, match=r'differs from the class list fixed at the first call'):
    session.run(
        smoke(), str(images), str(labels_path), str(workdir), query=3, classes=['x', 'y', 'z']
    )


def test_csv_naming_missing_files(small):
  images, labels_path, workdir = small
  labels_path.write_text('filename,label\na0.png,x\nnope.png,y\na1.png,y\ngone.jpg,x\n')
  with pytest.raises(
      ValueError,
      match=r'names 2 file\(s\) not in .*: nope\.png \(line 3\), ' r'gone\.jpg \(line 5\)$',
  ):
    session.run(smoke(), str(images), str(labels_path), str(workdir), query=3)


def test_duplicate_rows_with_conflicting_labels(small):
  images, labels_path, workdir = small
  labels_path.write_text('filename,label\na0.png,x\na1.png,y\n./a0.png,y\n')
  with pytest.raises(
      ValueError, match=r"a0\.png has conflicting labels 'x' \(line 2\) and " r"'y' \(line 4\)"
  ):
    session.run(smoke(), str(images), str(labels_path), str(workdir), query=3)
  # Agreeing duplicates and blank labels are fine.
  labels_path.write_text('filename,label\na0.png,x\na1.png,y\na0.png,x\na2.png,\n')
  assert project_lib.read_labels(str(labels_path)).labels == {'a0.png': 'x', 'a1.png': 'y'}


def test_folder_without_images(tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
  (tmp_path / 'labels.csv').write_text('filename,label\n')
  with pytest.raises(
      ValueError, match=r'^no images in .*empty: expected files ending in ' r'\.png, \.jpg, \.jpeg'
  ):
    session.run(smoke(), str(tmp_path / 'empty'), str(tmp_path / 'labels.csv'), str(tmp_path / 'w'))
  with pytest.raises(FileNotFoundError, match=r'^image folder not found'):
    session.run(smoke(), str(tmp_path / 'nope'), str(tmp_path / 'labels.csv'), str(tmp_path / 'w'))


def test_other_bad_labels_files(small):
  images, labels_path, workdir = small
  labels_path.write_text('name,class\na0.png,x\n')
  with pytest.raises(
      ValueError, match=r'must start with the header filename,label; got ' r'name,class'
  ):
    session.run(smoke(), str(images), str(labels_path), str(workdir))
  labels_path.write_text('filename,label\na0.png,x\n')
  with pytest.raises(ValueError, match=r"labels of one class only \('x'\)"):
    session.run(smoke(), str(images), str(labels_path), str(workdir))
  with pytest.raises(FileNotFoundError, match=r'labels file not found'):
    session.run(smoke(), str(images), str(labels_path) + '.missing', str(workdir))


def test_cli_prints_one_line_errors(small):
  images, labels_path, workdir = small
  labels_path.write_text('filename,label\nnope.png,x\n')
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.label',
          f'--images={images}',
          f'--labels={labels_path}',
          f'--workdir={workdir}',
          f'--config={REPO}/configs/label.py:smoke',
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=120,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: {labels_path} names 1 file(s) not in {images}: nope.png (line 2)'
  )


def test_cli_refuses_dev_zero_a_fifo_and_files_over_the_caps_in_one_line(small):
  images, labels_path, workdir = small
  os.symlink('/dev/zero', images / 'x.png')
  os.mkfifo(images / 'y.png')
  Image.new('L', (50, 30), 9).save(images / 'wide.png')  # 1,500 pixels in under 200 bytes
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), np.uint8)).save(
      images / 'noise.png'
  )
  size = os.path.getsize(images / 'noise.png')
  assert os.path.getsize(images / 'wide.png') < 200 < size
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jal.label',
          f'--images={images}',
          f'--labels={labels_path}',
          f'--workdir={workdir}',
          f'--config={REPO}/configs/label.py:smoke',
          '--max_pixels=1000',
          '--max_file_mb=0.0002',
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=120,
  )  # a hang fails here
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: 4 unreadable image(s) in {images}: noise.png ({size:,} bytes, over the '
      '--max_file_mb cap of 0.0002 MB), wide.png (1,500 pixels, over the --max_pixels cap of '
      '1,000), x.png (a link to /dev/zero, a character device, not a regular file), y.png (a '
      'FIFO, not a regular file); pass --skip_unreadable to leave them out'
  )


# ----------------------------------------------------------------------------
# Pure pieces.


def test_validation_splits_holdout_and_folds():
  v = ml_collections.ConfigDict(
      dict(holdout_fraction=0.2, holdout_min_labels=200, min_per_class=5, folds=3, confidence=0.95)
  )
  y = np.repeat(np.arange(4), [100, 60, 30, 10])
  method, splits = session.validation_splits(y, v, seed=0)
  assert method == 'holdout' and len(splits) == 1
  tr, held = splits[0]
  assert np.bincount(y[held]).tolist() == [20, 12, 6, 2]  # round(0.2 n_c), half up
  assert sorted(np.concatenate([tr, held]).tolist()) == list(range(200))
  # Too few labels: 3 stratified folds that partition the labels.
  y = np.repeat(np.arange(3), [7, 5, 2])
  method, splits = session.validation_splits(y, v, seed=1)
  assert method == 'cv' and len(splits) == 3
  held = np.concatenate([h for _, h in splits])
  assert sorted(held.tolist()) == list(range(14))
  assert sorted(h.size for _, h in splits) == [4, 5, 5]
  for tr, h in splits:
    assert not set(tr) & set(h) and tr.size + h.size == 14
    assert np.bincount(y[h], minlength=3).max() - np.bincount(y[h], minlength=3).min() <= 2
  assert session.validation_splits(np.array([0]), v, 0) == ('none', [])
  assert session.validation_splits(np.array([0, 1]), v, 0)[0] == 'cv'


def test_validation_estimate_numbers():
  y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
  p = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 2])
  v = session.validation_estimate(y, p, 4, 0.95)
  assert (v['correct'], v['n'], v['accuracy']) == (8, 10, 0.8)
  assert v['lo'] == pytest.approx(0.4902, abs=1e-4) and v['hi'] == pytest.approx(0.9433, abs=1e-4)
  assert v['per_class_total'] == [4, 2, 4, 0] and v['per_class_correct'] == [3, 1, 4, 0]
  assert v['balanced_accuracy'] == pytest.approx((0.75 + 0.5 + 1.0) / 3)


def test_changes_since_pure():
  state = {
      'images': {'a': {'sha256': '1'}, 'b': {'sha256': '2'}, 'c': {'sha256': '3'}},
      'labels': {'a': 'x', 'b': 'y'},
      'calls': [{'batch': ['c']}],
  }
  prints = {'a': {'sha256': '1'}, 'c': {'sha256': '9'}, 'd': {'sha256': '4'}}
  ch = project_lib.changes_since(state, prints, {'a': 'y', 'c': 'x'})
  assert ch == {
      'images_vanished': [['b', 'y']],
      'images_changed': [['c', 'x']],
      'labels_changed': [['a', 'x', 'y']],
      'labels_removed': [],
      'new_images': 1,
      'new_labels': 1,
      'batch_labeled': 1,
      'batch_size': 1,
  }


def test_images_of_any_size_and_mode_are_resized_and_cached(tmp_path, monkeypatch):
  from jal.label import images

  folder = tmp_path / 'imgs'
  (folder / 'sub').mkdir(parents=True)
  (folder / '.hidden').mkdir()
  Image.new('RGB', (64, 40), (255, 0, 0)).save(folder / 'sub' / 'red.JPG', quality=95)
  Image.new('L', (7, 9), 200).save(folder / 'gray.png')
  Image.new('RGBA', (30, 30), (0, 0, 255, 255)).save(folder / 'blue.png')
  Image.new('L', (5, 5), 1).save(folder / '.hidden' / 'x.png')
  (folder / 'notes.txt').write_text('x')
  names = images.list_images(str(folder))
  assert names == ['blue.png', 'gray.png', 'sub/red.JPG']
  x, errors = images.decode([str(folder / n) for n in names], 28, 1)
  assert x.shape == (3, 28, 28, 1) and errors == [None] * 3
  # Pillow's luma: L = 0.299 R + 0.587 G + 0.114 B.
  assert x[0].mean() == pytest.approx(29, abs=1) and (x[1] == 200).all()
  assert x[2].mean() == pytest.approx(76, abs=2)
  x3, _ = images.decode([str(folder / 'sub' / 'red.JPG')], 32, 3)
  assert x3.shape == (1, 32, 32, 3) and x3[0, 16, 16, 0] > 240 and x3[0, 16, 16, 2] < 15
  # The cache decodes each content once; changed bytes are decoded again.
  calls = []
  real = images.read_image
  monkeypatch.setattr(images, 'read_image', lambda *a: calls.append(a[0]) or real(*a))
  paths = [str(folder / n) for n in names]
  hashes = [images.sha256(p) for p in paths]
  cache_path = str(tmp_path / 'cache.npz')
  first, _ = images.ImageCache(cache_path, 28, 1).load(paths, hashes)
  again, _ = images.ImageCache(cache_path, 28, 1).load(paths, hashes)
  assert len(calls) == 3 and np.array_equal(first, again) and np.array_equal(first, x)
  Image.new('L', (7, 9), 10).save(folder / 'gray.png')
  hashes[1] = images.sha256(paths[1])
  changed, _ = images.ImageCache(cache_path, 28, 1).load(paths, hashes)
  assert len(calls) == 4 and (changed[1] == 10).all()
