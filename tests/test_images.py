"""`jal.label.images.screen`: what may be read from a folder, decided before anything is decoded.

Files that would block (a FIFO, /dev/zero) are part of these tests: every call
that could touch them runs under `deadline`, so a regression fails instead of
hanging the suite.
"""

import contextlib
import os
import signal
import struct
import time
import warnings
import zlib

import numpy as np
from PIL import Image
import pytest

from jal.label import images

BIG = 10**9  # a size cap that no test file reaches


@contextlib.contextmanager
def deadline(seconds: float):
  """Raises TimeoutError inside the block after `seconds` (main thread only).

  SIGALRM interrupts a blocking open() of a FIFO and a read loop on /dev/zero.
  """

  def on_alarm(signum, frame):
    raise TimeoutError(f'still running after {seconds} s: it blocked on a file')

  old = signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def write_blank_png(path, width: int, height: int) -> None:
  """A valid 1-bit black PNG of any size, a few hundred KB at most, written
  without holding the image in memory."""

  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
  z = zlib.compressobj(1)
  idat = (
      b''.join(z.compress(row * min(1000, height - y)) for y in range(0, height, 1000)) + z.flush()
  )
  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
  with open(path, 'wb') as f:
    f.write(
        b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')
    )


@pytest.fixture
def folder(tmp_path):
  """images/ with one 10x12 PNG, and a PNG outside it."""
  d = tmp_path / 'images'
  d.mkdir()
  Image.new('L', (12, 10), 50).save(d / 'a.png')
  (tmp_path / 'elsewhere').mkdir()
  Image.new('L', (12, 10), 7).save(tmp_path / 'elsewhere' / 'secret.png')
  return d


def test_devices_fifos_and_links_out_of_the_folder_are_refused_unopened(folder, tmp_path):
  os.symlink('/dev/zero', folder / 'x.png')
  os.mkfifo(folder / 'y.png')
  os.symlink(tmp_path / 'elsewhere' / 'secret.png', folder / 'out.png')
  os.symlink('a.png', folder / 'in.png')  # a link inside the folder is fine
  os.symlink(tmp_path / 'nowhere.png', folder / 'gone.png')
  names = images.list_images(str(folder))
  assert names == ['a.png', 'gone.png', 'in.png', 'out.png', 'x.png', 'y.png']
  with deadline(20):
    bad = dict(images.screen(str(folder), names, BIG, 10**6, 28, 1))
  secret = os.path.realpath(tmp_path / 'elsewhere' / 'secret.png')
  assert bad == {
      'x.png': 'a link to /dev/zero, a character device, not a regular file',
      'y.png': 'a FIFO, not a regular file',
      'out.png': f'a link to {secret}, outside the images folder',
      'gone.png': f'a link to {tmp_path / "nowhere.png"}, os.stat failed: No such file or '
      'directory',
  }
  # Should a file turn into a FIFO after the check, reading it still does not block.
  with deadline(20):
    with pytest.raises(OSError, match='a FIFO, not a regular file'):
      images.sha256(str(folder / 'y.png'))
    x, errors = images.decode([str(folder / 'y.png'), str(folder / 'x.png')], 8, 1)
  assert errors == [
      'OSError: a FIFO, not a regular file',
      'OSError: a character device, not a regular file',
  ]


def test_size_cap_from_stat(folder):
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), np.uint8)).save(
      folder / 'noise.png'
  )
  size = os.path.getsize(folder / 'noise.png')
  assert os.path.getsize(folder / 'a.png') < 1000 < size
  assert images.screen(str(folder), ['a.png', 'noise.png'], 1000, 10**6, 28, 1) == [
      ('noise.png', f'{size:,} bytes, over the --max_file_mb cap of 0.001 MB')
  ]


def test_pixel_cap_from_the_header_before_pillows_own_limit(folder):
  # 400 megapixels, 100 KB on disk: over Pillow's DecompressionBombError limit (179 MP).
  t0 = time.perf_counter()
  write_blank_png(folder / 'huge.png', 20000, 20000)
  # 100 megapixels: over Pillow's DecompressionBombWarning threshold (89 MP) only.
  write_blank_png(folder / 'big.png', 10000, 10000)
  assert os.path.getsize(folder / 'huge.png') < 300_000
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    bad = images.screen(
        str(folder), ['a.png', 'big.png', 'huge.png'], BIG, images.DEFAULT_MAX_PIXELS, 28, 1
    )
  assert time.perf_counter() - t0 < 10  # nothing was decoded
  assert bad == [
      ('big.png', '100,000,000 pixels, over the --max_pixels cap of 50,000,000'),
      ('huge.png', '400,000,000 pixels, over the --max_pixels cap of 50,000,000'),
  ]
  assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
  # A cap above Pillow's own limit: Pillow's limit is reported the same way.
  assert images.screen(str(folder), ['big.png', 'huge.png'], BIG, 500_000_000, 28, 1) == [
      ('huge.png', "400,000,000 pixels, over Pillow's decompression-bomb limit of 178,956,970")
  ]


def test_jpegs_count_the_pixels_they_are_decoded_at(folder):
  Image.new('RGB', (64, 64), (0, 200, 0)).save(folder / 'g.jpg')
  Image.new('RGB', (64, 64), (0, 200, 0)).save(folder / 'g.png')
  names = ['g.jpg', 'g.png']
  # At 8x8 the JPEG decodes at 1/8 scale (64 pixels); the PNG decodes whole (4096).
  assert images.screen(str(folder), names, BIG, 1000, 8, 3) == [
      ('g.png', '4,096 pixels, over the --max_pixels cap of 1,000')
  ]
  assert images.screen(str(folder), names, BIG, 1000, 64, 3) == [
      ('g.jpg', '4,096 pixels, over the --max_pixels cap of 1,000'),
      ('g.png', '4,096 pixels, over the --max_pixels cap of 1,000'),
  ]
  x, errors = images.decode([str(folder / n) for n in names], 8, 3)
  assert errors == [None, None] and abs(int(x[0, 4, 4, 1]) - 200) < 5


def test_other_formats_and_non_images_are_unreadable(folder):
  Image.new('L', (8, 8), 1).save(folder / 'gif.png', format='GIF')
  (folder / 'text.png').write_bytes(b'not a png at all')
  assert images.screen(str(folder), ['a.png', 'gif.png', 'text.png'], BIG, 10**6, 28, 1) == [
      ('gif.png', 'UnidentifiedImageError: not a PNG or JPEG image'),
      ('text.png', 'UnidentifiedImageError: not a PNG or JPEG image'),
  ]
