"""A folder of images as a pool: listing, fingerprints, decoding, a cache.

    names = images.list_images('/data/photos')          # ['a.png', 'sub/b.jpg']
    x, errors = images.decode(['/data/photos/a.png'], size=28, channels=1)
    # x: u8[1, 28, 28, 1]; errors: [None], or a message per unreadable file

PNG and JPEG files of any size and mode are converted to grayscale
(`channels=1`, Pillow's 'L': ITU-R 601-2 luma) or RGB (`channels=3`) and
resized to size x size with Pillow's bilinear filter, which antialiases when
it shrinks; the aspect ratio is not kept, as in `jal.data`'s retinopathy
loader. `ImageCache` keeps decoded arrays keyed by each file's SHA-256, so a
folder is decoded once and a file whose bytes change is decoded again.
"""

import concurrent.futures
import hashlib
import os
import tempfile
import zipfile

from absl import logging
import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def list_images(folder: str) -> list[str]:
  """The PNG/JPEG files under `folder`, as sorted relative POSIX paths.

  Subfolders are searched; names starting with '.' (hidden files and
  folders) are skipped.

  Raises:
    FileNotFoundError: `folder` is not a directory.
    ValueError: it holds no PNG or JPEG file.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'image folder not found: {folder}')
  names = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    rel = os.path.relpath(root, folder)
    for f in files:
      if not f.startswith('.') and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
        names.append(f if rel == '.' else f'{rel}/{f}'.replace(os.sep, '/'))
  if not names:
    raise ValueError(f'no images in {folder}: expected files ending in '
                     f'{", ".join(IMAGE_EXTENSIONS)} (case-insensitive)')
  return sorted(names)


def file_stat(path: str) -> tuple[int, int]:
  """(size in bytes, mtime in ns): a cheap test of whether a file changed."""
  st = os.stat(path)
  return int(st.st_size), int(st.st_mtime_ns)


def sha256(path: str) -> str:
  """Hex SHA-256 of the file's bytes."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def read_image(path: str, size: int, channels: int) -> np.ndarray:
  """Decodes one image file to u8[size, size, channels].

  JPEGs are decoded at the smallest DCT scale that still covers size x size
  (`Image.draft`). Raises OSError/ValueError/SyntaxError/EOFError if the file
  is not a readable image (truncated files included).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mode = {1: 'L', 3: 'RGB'}[channels]
  with Image.open(path) as image:
    image.draft(mode, (size, size))
    image = image.convert(mode)
    if image.size != (size, size):
      image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8).reshape(size, size, channels)


def _unreadable_errors() -> tuple[type[BaseException], ...]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def decode(paths: list[str], size: int, channels: int,
           num_workers: int = 4) -> tuple[np.ndarray, list[str | None]]:
  """Decodes `paths` on a thread pool (Pillow releases the GIL).

  Args:
    paths: image files.
    size: output side length.
    channels: 1 (grayscale) or 3 (RGB).
    num_workers: decoding threads.

  Returns:
    (x: u8[len(paths), size, size, channels], errors: one entry per path,
    None if it decoded, else 'ErrorType: message'; its row of x is zeros).
  """
  errors_types = _unreadable_errors()

  def one(path):
    try:
      return read_image(path, size, channels), None
    except errors_types as e:  # pylint: disable=catching-non-exception
      return None, f'{type(e).__name__}: {" ".join(str(e).split())}'

  x = np.zeros((len(paths), size, size, channels), np.uint8)
  errors = []
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    for i, (image, error) in enumerate(pool.map(one, paths)):
      if image is not None:
        x[i] = image
      errors.append(error)
  return x, errors


class ImageCache:
  """Decoded images keyed by content hash, in one .npz file.

  Attributes:
    path: the .npz file (`sha: str[k]`, `x: u8[k, size, size, channels]`).
  """

  def __init__(self, path: str, size: int, channels: int):
    self.path = path
    self.shape = (size, size, channels)
    self.arrays: dict[str, np.ndarray] = {}
    if os.path.isfile(path):
      try:
        with np.load(path, allow_pickle=False) as f:
          sha, x = f['sha'], f['x']
        if x.shape[1:] == self.shape and x.dtype == np.uint8 and len(sha) == len(x):
          self.arrays = dict(zip(sha.tolist(), x))
        else:
          logging.warning('Ignoring image cache %s: arrays of shape %s.', path, x.shape)
      except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logging.warning('Ignoring unreadable image cache %s (%s).', path, e)

  def load(self, paths: list[str], hashes: list[str],
           num_workers: int = 4) -> tuple[np.ndarray, list[str | None]]:
    """Images of `paths` (whose SHA-256 are `hashes`), decoding cache misses.

    Returns:
      As `decode`: (u8[n, size, size, channels], errors).
    """
    x = np.zeros((len(paths),) + self.shape, np.uint8)
    errors: list[str | None] = [None] * len(paths)
    missing = [i for i, h in enumerate(hashes) if h not in self.arrays]
    if missing:
      logging.info('Decoding %d of %d images at %dx%d (%d cached).', len(missing), len(paths),
                   self.shape[0], self.shape[1], len(paths) - len(missing))
      new_x, new_errors = decode([paths[i] for i in missing], self.shape[0], self.shape[2],
                                 num_workers)
      for j, i in enumerate(missing):
        errors[i] = new_errors[j]
        if new_errors[j] is None:
          self.arrays[hashes[i]] = new_x[j]
    for i, h in enumerate(hashes):
      if errors[i] is None:
        x[i] = self.arrays[h]
    if missing:
      self._save(set(hashes))
    return x, errors

  def _save(self, keep: set[str]) -> None:
    """Writes the entries in `keep` atomically; failures are only logged."""
    sha = sorted(h for h in self.arrays if h in keep)
    x = np.stack([self.arrays[h] for h in sha]) if sha else np.zeros((0,) + self.shape, np.uint8)
    tmp = None
    try:
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path) or '.', suffix='.tmp')
      with os.fdopen(fd, 'wb') as f:
        np.savez(f, sha=np.asarray(sha, str), x=x)
      os.replace(tmp, self.path)
      tmp = None
    except OSError as e:
      logging.warning('Could not write image cache %s (%s).', self.path, e)
    finally:
      if tmp is not None and os.path.exists(tmp):
        os.remove(tmp)
