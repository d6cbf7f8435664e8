"""Logging set-up and one-line errors shared by jal's command-line entry points.

A person running `jal.main`, `jal.label`, `jal.report` or `launch.sweep`
gets one line, `error: ...`, and a non-zero exit for anything they can fix:
a bad flag, config file or override (`parse_flags`), and jal's own errors, a
missing package or the operating system's (a full disk, a read-only folder)
while it runs (`one_line_errors`). Ctrl-C prints one line and exits 130.
Tracebacks are left to bugs. `Progress` logs a run's rounds with an ETA.
"""

import contextlib
import errno
import os
import re
import sys
import time
import traceback
from typing import Iterator, NoReturn

from absl import flags
from absl import logging
from ml_collections import config_flags

# What a run reports in one line instead of a traceback: jal raises ValueError
# (and FileNotFoundError, FloatingPointError) with one-line messages; an
# ImportError names the package to install; an OSError is the machine's.
USER_ERRORS = (ValueError, FloatingPointError, ImportError, OSError)
INTERRUPTED = 'interrupted; rerun the same command to resume'
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class QuietLibraries(logging.logging.Filter):
  """Drops INFO records of orbax and jax internals: progress lines stay readable."""

  def filter(self, record):
    noisy = '/orbax/' in record.pathname or '/jax/_src/' in record.pathname
    return record.levelno >= logging.logging.WARNING or not noisy


def quiet_libraries() -> None:
  """Installs `QuietLibraries` on absl's handler and logger (once each).

  The logger too, since jobs run outside `absl.app` (submitit's) may log
  through other handlers.
  """
  for target in (logging.get_absl_handler(), logging.get_absl_logger()):
    if not any(isinstance(f, QuietLibraries) for f in target.filters):
      target.addFilter(QuietLibraries())


# ----------------------------------------------------------------------------
# Errors while running.


def _joined(text: str) -> str:
  """`text`'s non-empty lines joined into one."""
  return '; '.join(l.strip() for l in str(text).splitlines() if l.strip())


def error_line(e: BaseException) -> str:
  """A user error as one line, without the `error: ` prefix."""
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    where = f' writing {e.filename}' if e.filename else ''
    return f'no space left on device{where}; free some space and rerun the same command'
  if isinstance(e, OSError) and e.errno is not None and e.strerror and e.filename:
    return f'{e.filename}: {e.strerror}'
  return _joined(str(e)) or type(e).__name__


def exit_interrupted(message: str = INTERRUPTED) -> NoReturn:
  """Prints `message` and exits 130 at once, as a kill would.

  A run resumes from any point, even after `kill -9`; an orderly shutdown
  would instead wait for the checkpoint writes in flight in orbax's threads,
  which then fail and log tracebacks.
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.write(message + '\n')
  sys.stderr.flush()
  os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access


@contextlib.contextmanager
def one_line_errors(interrupted: str = INTERRUPTED) -> Iterator[None]:
  """Turns a USER_ERRORS exception of the block into `error: <one line>` and exit 1,
  and Ctrl-C into the line `interrupted` and exit 130."""
  try:
    yield
  except KeyboardInterrupt:
    exit_interrupted(interrupted)
  except USER_ERRORS as e:
    sys.exit(f'error: {error_line(e)}')


# ----------------------------------------------------------------------------
# Errors while parsing flags: bad flags, config files and overrides.

_CONFIG_FLAGS_FILE = os.path.splitext(os.path.abspath(config_flags.config_flags.__file__))[0]
_LIBRARY = os.sep + 'ml_collections' + os.sep
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
# ml_collections' message for a config file it could not find.
_NOT_LOADED = re.compile(r"\[Errno \d+\] ([^:\n]+): '([^'\n]*)'")


def _in_config_flags(filename: str) -> bool:
  return os.path.splitext(os.path.abspath(filename))[0] == _CONFIG_FLAGS_FILE


def _config_location(frames: list[tuple[str, int]]) -> tuple[str, int] | None:
  """(config file, line) of the deepest frame in the config file that
  config_flags loaded, from (filename, line) frames; None if the error did
  not come from a config file (e.g. an override naming no field)."""
  loader = [i for i, (f, _) in enumerate(frames) if _in_config_flags(f)]
  if not loader:
    return None
  after = [(f, n) for f, n in frames[loader[-1] + 1 :] if not f.startswith('<frozen')]
  if not after or _LIBRARY in after[0][0]:
    return None
  path = after[0][0]
  return path, [n for f, n in after if f == path][-1]


def _config_file_line(where: tuple[str, int], type_name: str, message: str) -> str:
  if type_name == 'ValueError':  # jal's config errors: already one line that says it all
    return message
  path, line = where
  return f'config file {path}, line {line}: {type_name}: {message}'


def _override_line(e: Exception, argv: list[str]) -> str | None:
  """An override naming no field, as ml_collections raises it (a KeyError or
  AttributeError whose message is the name, then maybe 'Did you mean ...');
  None if no override in `argv` names that field."""
  lines = [l.strip() for l in str(e.args[0] if e.args else e).splitlines() if l.strip()]
  name = lines[0].strip('\'"') if lines else ''
  flag = next(
      (
          a.split('=')[0]
          for a in argv[1:]
          if re.match(r'--?\w+\.', a) and name in a.split('=')[0].split('.')[1:]
      ),
      None,
  )
  if flag is None:
    return None
  hint = ''.join(f'; {l}' for l in lines[1:])
  return f'{flag}: no config field {name!r}{hint}'


def _load_failure_line(error: BaseException) -> str:
  """A config file config_flags could not load (it defers the error)."""
  text = str(error)
  found = _NOT_LOADED.findall(text)
  if found:
    strerror, path = found[-1]
    return f'config file {path}: {strerror}'
  return f'cannot load the config file: {_joined(text)}'


def _exception_line(e: Exception, argv: list[str]) -> str:
  """A non-flag exception raised while parsing flags, as one line."""
  if isinstance(e, OSError) and 'Failed loading config file' in str(e):
    return _load_failure_line(e)
  if isinstance(e, SyntaxError) and e.filename and os.path.isfile(e.filename):
    return f'config file {e.filename}, line {e.lineno}: SyntaxError: {e.msg}'
  frames = [(f.filename, f.lineno) for f in traceback.extract_tb(e.__traceback__)]
  where = _config_location(frames)
  if where is not None:
    return _config_file_line(where, type(e).__name__, _joined(str(e)))
  override = _override_line(e, argv) if isinstance(e, (KeyError, AttributeError)) else None
  if override:
    return override
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f'config file {e.filename}: {e.strerror}'
  return f'{type(e).__name__}: {_joined(str(e))}'


def _flag_error_line(e: flags.Error) -> str:
  """absl's flag errors as one line; a config file's ValueError or TypeError
  comes wrapped in one, with its traceback as text (config_flags does so)."""
  text = str(e)
  if 'Error whilst parsing config file' not in text:
    return _joined(text)
  type_name, _, message = [l for l in text.splitlines() if l.strip()][-1].partition(': ')
  where = _config_location([(f, int(n)) for f, n in _FRAME.findall(text)])
  if where is None:
    return _joined(text)
  return _config_file_line(where, type_name, message)


def _check_configs_loaded() -> None:
  """Exits with the deferred error of a config flag whose file did not load
  (config_flags holds it in an `_ErrorConfig` until the config is used)."""
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if type(value).__name__ == '_ErrorConfig':
      sys.exit(f'error: {_load_failure_line(vars(value)["_error"])}')


def parse_flags(argv: list[str]) -> list[str]:
  """An absl `flags_parser` that reports a bad flag, config file or
  override in one line (`error: ...`, exit 1) instead of a traceback.

  Use as `app.run(main, flags_parser=logs.parse_flags)`.
  """
  try:
    rest = flags.FLAGS(argv)
  except KeyboardInterrupt:
    exit_interrupted('interrupted')
  except flags.Error as e:
    sys.exit(f'error: {_flag_error_line(e)}')
  except Exception as e:  # pylint: disable=broad-except
    # A config file is any Python; whatever it raises is the user's to fix.
    sys.exit(f'error: {_exception_line(e, argv)}')
  _check_configs_loaded()
  return rest


class Progress:
  """Logs a progress line with an ETA after every finished round."""

  def __init__(self, total: int, done: int):
    self.total, self.done, self.start_done = total, done, done
    self.t0 = time.perf_counter()

  def update(self, message: str) -> None:
    self.done += 1
    elapsed = time.perf_counter() - self.t0
    rate = elapsed / max(self.done - self.start_done, 1)
    eta = rate * (self.total - self.done)
    logging.info(
        '[%d/%d rounds | %s elapsed | ETA %s] %s',
        self.done,
        self.total,
        _fmt_seconds(elapsed),
        _fmt_seconds(eta),
        message,
    )


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
