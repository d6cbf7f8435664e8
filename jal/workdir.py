"""One writer per workdir: an OS-level lock, and the cleanup of what killed writers leave.

`jal.main` (and so every sweep run), `jal.label` and `launch.sweep` (on its
root) hold their folder's lock while they work. It is `fcntl.flock` on the
folder's `.lock` file, which also records the holder's pid, host, start time
and command, so a second process is refused at once with one line naming the
first. The kernel releases the lock when its holder exits or is killed, so a
killed run never leaves a stale lock. On a file system without flock (some
Lustre mounts) the lock is skipped with a warning.

Under the lock no other process writes the folder, so what killed writers
left there can be deleted: `checkpoints.atomic_write`'s `*.tmp-<pid>` files, the
`*.deleting` folders of an interrupted checkpoint clear, and the
`*.orbax-checkpoint-tmp*` folders of an interrupted orbax save (`remove_leftovers`).
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from typing import Iterator

from absl import logging

LOCK_FILE = '.lock'
# atomic_write's temporary files, and folders renamed aside to be deleted.
_TMP_FILE = re.compile(r'\.tmp-\d+$')
_DELETING = '.deleting'
# Orbax's unfinished saves (`<step>.orbax-checkpoint-tmp[-<timestamp>]`). Orbax's own cleanup of
# them runs on a thread its `close()` does not wait for, so jal turns it off
# (`checkpoints._manager`) and removes them here, under the lock, before any manager opens.
_ORBAX_TMP = '.orbax-checkpoint-tmp'
# How long a refused process waits for a new holder to write who it is.
_HOLDER_WAIT_SECONDS = 1.0


class WorkdirError(ValueError):
  """A folder that cannot be used: busy, a file, or not writable. One line."""


class WorkdirBusy(WorkdirError):
  """Another process holds the folder's lock."""


def holder() -> dict:
  """Who this process is, as recorded in a lock file."""
  argv = list(getattr(sys, 'orig_argv', None) or [sys.executable] + sys.argv)
  argv[0] = os.path.basename(argv[0])
  return {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'started': time.strftime('%Y-%m-%d %H:%M:%S'),
      'command': ' '.join(shlex.quote(a) for a in argv),
  }


def busy_message(path: str, what: str, info: dict | None) -> str:
  """The one line a refused process prints, from the holder's lock file."""
  if not info:
    who = 'another process (it has not written who it is yet)'
  else:
    command = ' '.join(str(info.get('command', '?')).split())  # one line
    who = (
        f'pid {info.get("pid", "?")} on host {info.get("host", "?")} '
        f'(started {info.get("started", "?")}: {command})'
    )
  return f'{what} {path} is in use by {who}; wait for it to end or stop it, then rerun'


def _read_holder(fd: int) -> dict | None:
  """The holder's record in the lock file, waiting briefly for a holder that has just
  taken the lock to write it."""
  deadline = time.monotonic() + _HOLDER_WAIT_SECONDS
  while True:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors='replace')
    try:
      return json.loads(text)
    except ValueError:
      if time.monotonic() > deadline:
        return None
      time.sleep(0.05)


def _lock_fd(path: str, what: str) -> int | None:
  """Opens and locks `path`'s lock file; returns its fd, or None without flock support.

  Raises:
    WorkdirBusy: another process holds it.
    OSError: the folder cannot be written.
  """
  lock_path = os.path.join(path, LOCK_FILE)
  while True:
    os.makedirs(path, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      info = _read_holder(fd)
      os.close(fd)
      raise WorkdirBusy(busy_message(path, what, info)) from None
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
        logging.warning(
            '%s %s: no file lock on this file system (%s); make sure no other process uses it',
            what,
            path,
            e.strerror,
        )
        return None
      raise
    # A holder that removed its empty folder unlinked the file we locked: start again.
    try:
      current = os.path.samestat(os.fstat(fd), os.stat(lock_path))
    except FileNotFoundError:
      current = False
    if current:
      return fd
    os.close(fd)


def _write_holder(fd: int, lock_path: str) -> None:
  data = json.dumps(holder(), sort_keys=True).encode()
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
  except OSError as e:
    raise OSError(e.errno, e.strerror, lock_path) from e


@contextlib.contextmanager
def locked(path: str, what: str = 'workdir', enabled: bool = True) -> Iterator[None]:
  """Creates folder `path` if needed and holds its lock for the block.

  If this call created the folder and the block fails leaving nothing but
  the lock file (e.g. a bad config), the folder is removed again.

  Args:
    path: the folder.
    what: what to call it in messages ('workdir', 'sweep root').
    enabled: False does nothing (e.g. the processes other than 0 of a
      multi-host run, which do not write).

  Raises:
    WorkdirBusy: another process holds the lock (one line naming it).
    WorkdirError: `path` is a file, or cannot be written.
  """
  if not enabled:
    yield
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'{what} {path} is a file, not a folder')
  created, fd = not os.path.exists(path), None
  try:
    fd = _lock_fd(path, what)
    if fd is not None:
      _write_holder(fd, os.path.join(path, LOCK_FILE))
  except OSError as e:
    if fd is not None:
      os.close(fd)
    raise WorkdirError(f'cannot write to {what} {path}: {e.strerror or e}') from None
  logging.debug('locked %s %s', what, path)
  try:
    yield
  except BaseException:
    if created and os.listdir(path) == [LOCK_FILE]:
      with contextlib.suppress(OSError):
        os.remove(os.path.join(path, LOCK_FILE))
        os.rmdir(path)
    raise
  finally:
    if fd is not None:
      os.close(fd)  # releases the lock


def remove_leftovers(path: str) -> list[str]:
  """Deletes the `*.tmp-<pid>` files, `*.deleting` and `*.orbax-checkpoint-tmp*` folders under
  `path`.

  Only call it holding `path`'s lock: then no live process is writing them.
  Returns the removed paths.
  """
  removed = []
  for parent, dirs, files in os.walk(path):
    for d in [d for d in dirs if d.endswith(_DELETING) or _ORBAX_TMP in d]:
      shutil.rmtree(os.path.join(parent, d), ignore_errors=True)
      dirs.remove(d)
      removed.append(os.path.join(parent, d))
    for f in files:
      if _TMP_FILE.search(f):
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(parent, f))
        removed.append(os.path.join(parent, f))
  if removed:
    logging.debug(
        'removed %d leftover(s) of a killed run in %s: %s',
        len(removed),
        path,
        ', '.join(os.path.relpath(p, path) for p in removed),
    )
  return removed


@contextlib.contextmanager
def claimed(path: str, enabled: bool = True) -> Iterator[None]:
  """`locked(path)` for a run's workdir, leftovers of killed runs removed first."""
  with locked(path, 'workdir', enabled):
    if enabled:
      remove_leftovers(path)
    yield
