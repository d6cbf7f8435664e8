"""A folder of images as a pool: listing, fingerprints, decoding, a cache.

    names = images.list_images('/data/photos')          # ['a.png', 'sub/b.jpg']
    x, errors = images.decode(['/data/photos/a.png'], size=28, channels=1)
    # x: u8[1, 28, 28, 1]; errors: [None], or a message per unreadable file

`screen(folder, names, ...)` says which files must not be read, before any
is hashed or decoded: anything but a regular file inside the folder (from
`os.stat`, nothing opened), files over a size cap, and images whose header
says they decode to more than a pixel cap. PNG and JPEG files of any mode
are converted to grayscale (`channels=1`, Pillow's 'L': ITU-R 601-2 luma) or
RGB (`channels=3`) and resized to size x size with Pillow's bilinear filter,
which antialiases when it shrinks; the aspect ratio is not kept, as in
`jal.data`'s retinopathy loader. `ImageCache` keeps decoded arrays keyed by
each file's SHA-256, so a folder is decoded once and a file whose bytes
change is decoded again.
"""

import concurrent.futures
import hashlib
import os
import re
import stat
import tempfile
import warnings
import zipfile

from absl import logging
import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Pillow formats tried on these files: nothing else (EPS, say) is parsed whatever the bytes.
_FORMATS = ('PNG', 'JPEG')
DEFAULT_MAX_FILE_MB = 100.0
# 50 megapixels passes phone photos (12-50 MP as saved), most DSLR and mirrorless
# frames (24-50 MP) and 8K video frames (33 MP), and bounds memory: decoding a 49 MP
# PNG takes 240 MB (grayscale) to 400 MB (RGB), times the decoding threads
# (config.images.num_workers, 4): 1.0-1.5 GB at most (measured), where four
# 13,000 x 13,000 PNGs (169 MP) took 1.5-3.4 GB. JPEGs count at the scale they are
# decoded at (`Image.draft`): a 100 MP JPEG read at 28 x 28 decodes 1.6 MP and passes.
# Raise --max_pixels for larger images.
DEFAULT_MAX_PIXELS = 50_000_000
_KINDS = (
    (stat.S_ISDIR, 'a directory'),
    (stat.S_ISCHR, 'a character device'),
    (stat.S_ISBLK, 'a block device'),
    (stat.S_ISFIFO, 'a FIFO'),
    (stat.S_ISSOCK, 'a socket'),
)


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
    raise ValueError(
        f'no images in {folder}: expected files ending in '
        f'{", ".join(IMAGE_EXTENSIONS)} (case-insensitive)'
    )
  return sorted(names)


def _kind(mode: int) -> str:
  """What a non-regular file is, in words."""
  return next((name for test, name in _KINDS if test(mode)), 'not a regular file')


def file_problem(folder: str, name: str, max_bytes: int) -> str | None:
  """Why `folder/name` must not be read, from `os.stat` alone; None if it may.

  Refused: anything but a regular file (devices, FIFOs and sockets block or
  never end), a link whose target is outside `folder`, and files over
  `max_bytes`. Nothing is opened.
  """
  path = os.path.join(folder, name)
  real = os.path.realpath(path)
  link = f'a link to {real}, ' if os.path.islink(path) else ''
  try:
    st = os.stat(real)
  except OSError as e:
    return f'{link}os.stat failed: {e.strerror or e}'
  if not stat.S_ISREG(st.st_mode):
    return f'{link}{_kind(st.st_mode)}, not a regular file'
  root = os.path.realpath(folder)
  if os.path.commonpath([root, real]) != root:
    return f'{link}outside the images folder'
  if st.st_size > max_bytes:
    return f'{link}{st.st_size:,} bytes, over the --max_file_mb cap of {max_bytes / 1e6:g} MB'
  return None


def open_regular(path: str):
  """Opens a file for reading without blocking, refusing anything not regular.

  Backs up `file_problem` should the file be replaced after it was checked:
  O_NONBLOCK keeps a FIFO's open from waiting for a writer.

  Raises:
    OSError: it cannot be opened or is not a regular file.
  """
  fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
  mode = os.fstat(fd).st_mode
  if not stat.S_ISREG(mode):
    os.close(fd)
    raise OSError(f'{_kind(mode)}, not a regular file')
  return os.fdopen(fd, 'rb')


def _open_image(f, size: int, mode: str):
  """Opens a PNG or JPEG lazily: only its header is read.

  JPEGs are set to decode at the smallest DCT scale that still covers
  size x size (`Image.draft`), and `size` then says so.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = Image.open(f, formats=_FORMATS)
  image.draft(mode, (size, size))
  return image


def error_text(e: BaseException) -> str:
  """'ErrorType: message' on one line, without Pillow's file-object repr."""
  from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  if isinstance(e, UnidentifiedImageError):
    return f'{type(e).__name__}: not a PNG or JPEG image'
  return f'{type(e).__name__}: {" ".join(str(e).split())}'


def pixels_problem(path: str, size: int, channels: int, max_pixels: int) -> str | None:
  """Why `read_image(path, size, channels)` must not run, from the header alone.

  Refused: more than `max_pixels` pixels to decode (JPEGs at their draft
  scale), over Pillow's own decompression-bomb limit, or not a PNG/JPEG
  file Pillow can open. Nothing is decoded.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  over = f'over the --max_pixels cap of {max_pixels:,}'
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with open_regular(path) as f, _open_image(f, size, {1: 'L', 3: 'RGB'}[channels]) as im:
        pixels = im.size[0] * im.size[1]
  except Image.DecompressionBombError as e:
    # Raised by Image.open from the header: the message carries the pixel count.
    found = re.search(r'\((\d+) pixels\)', str(e))
    if not found:
      return error_text(e)
    pixels = int(found[1])
    if pixels <= max_pixels:
      over = f"over Pillow's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,}"
    return f'{pixels:,} pixels, {over}'
  except _unreadable_errors() as e:  # pylint: disable=catching-non-exception
    return error_text(e)
  return f'{pixels:,} pixels, {over}' if pixels > max_pixels else None


def screen(
    folder: str, names: list[str], max_bytes: int, max_pixels: int, size: int, channels: int
) -> list[tuple[str, str]]:
  """The files of `names` that must not be hashed or decoded, with why.

  Every file is first checked from `os.stat` (`file_problem`), then the
  headers of those that pass (`pixels_problem`); nothing is decoded.

  Returns:
    [(name, reason)] in the order of `names`.
  """
  bad = {n: file_problem(folder, n, max_bytes) for n in names}
  for n in names:
    if bad[n] is None:
      bad[n] = pixels_problem(os.path.join(folder, n), size, channels, max_pixels)
  return [(n, bad[n]) for n in names if bad[n] is not None]


def file_stat(path: str) -> tuple[int, int]:
  """(size in bytes, mtime in ns): a cheap test of whether a file changed."""
  st = os.stat(path)
  return int(st.st_size), int(st.st_mtime_ns)


def sha256(path: str) -> str:
  """Hex SHA-256 of the file's bytes."""
  h = hashlib.sha256()
  with open_regular(path) as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def read_image(path: str, size: int, channels: int) -> np.ndarray:
  """Decodes one image file to u8[size, size, channels].

  JPEGs are decoded at the smallest DCT scale that still covers size x size
  (`Image.draft`). Raises OSError/ValueError/SyntaxError/EOFError if the file
  is not a readable image (truncated files included). Run `screen` first:
  this decodes whatever the header says.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  mode = {1: 'L', 3: 'RGB'}[channels]
  with open_regular(path) as f, _open_image(f, size, mode) as image:
    image = image.convert(mode)
    if image.size != (size, size):
      image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8).reshape(size, size, channels)


def _unreadable_errors() -> tuple[type[BaseException], ...]:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def decode(
    paths: list[str], size: int, channels: int, num_workers: int = 4
) -> tuple[np.ndarray, list[str | None]]:
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
      return None, error_text(e)

  x = np.zeros((len(paths), size, size, channels), np.uint8)
  errors = []
  # `screen` has checked the pixel counts against the caller's cap, which may
  # exceed Pillow's warning threshold; the filter is process-wide, so the
  # decoding threads see it.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with (
      warnings.catch_warnings(),
      concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool,
  ):
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
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

  def load(
      self, paths: list[str], hashes: list[str], num_workers: int = 4
  ) -> tuple[np.ndarray, list[str | None]]:
    """Images of `paths` (whose SHA-256 are `hashes`), decoding cache misses.

    Returns:
      As `decode`: (u8[n, size, size, channels], errors).
    """
    x = np.zeros((len(paths),) + self.shape, np.uint8)
    errors: list[str | None] = [None] * len(paths)
    missing = [i for i, h in enumerate(hashes) if h not in self.arrays]
    if missing:
      logging.info(
          'Decoding %d of %d images at %dx%d (%d cached).',
          len(missing),
          len(paths),
          self.shape[0],
          self.shape[1],
          len(paths) - len(missing),
      )
      new_x, new_errors = decode(
          [paths[i] for i in missing], self.shape[0], self.shape[2], num_workers
      )
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
