"""How jal's commands set up JAX: the persistent compilation cache, and compile time.

Every command (`jal.main`, `jal.label`, `jal.bench`, `launch/sweep.py`) calls
`configure()` before it compiles anything. It turns on JAX's persistent
compilation cache, so a resumed or repeated run, a sweep's next job and the
next `jal.label` call load their programs instead of compiling them again:

    JAL_COMPILATION_CACHE unset   $XDG_CACHE_HOME/jal/xla (~/.cache/jal/xla)
    JAL_COMPILATION_CACHE=DIR     DIR
    JAL_COMPILATION_CACHE=off     no persistent cache

Every program is cached, however short its compilation: jal's loop runs many
small ones (a LeNet step compiles in about a second on a CPU), and a cache hit
costs milliseconds. The cache changes no result: a loaded executable is the
program XLA compiled for the same HLO, flags, backend and versions (all part
of JAX's cache key).

`compile_seconds()` is the process's time so far spent tracing, lowering and
compiling (or loading from the cache) jitted programs, summed from JAX's
monitoring events; the loop records per-phase differences of it, so
`timings.jsonl` separates compile seconds from steady-state seconds.
"""

import os
import threading

from absl import logging
import jax
from jax import monitoring

ENV = 'JAL_COMPILATION_CACHE'
OFF = 'off'

# JAX's monitoring events whose durations make up a program's compile time.
COMPILE_EVENTS = (
    '/jax/core/compile/jaxpr_trace_duration',
    '/jax/core/compile/jaxpr_to_mlir_module_duration',
    '/jax/core/compile/backend_compile_duration',
)

_lock = threading.Lock()
_compile_seconds = 0.0
_listening = False


def cache_dir(environ=None) -> str | None:
  """The persistent cache's folder per $JAL_COMPILATION_CACHE, or None if 'off'."""
  environ = os.environ if environ is None else environ
  value = environ.get(ENV, '').strip()
  if value.lower() == OFF:
    return None
  if value:
    return os.path.abspath(os.path.expanduser(value))
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'jal', 'xla')


def _on_duration(event: str, duration: float, **_) -> None:
  global _compile_seconds
  if event in COMPILE_EVENTS:
    with _lock:
      _compile_seconds += duration


def count_compile_time() -> None:
  """Starts summing compile time into `compile_seconds()` (idempotent)."""
  global _listening
  with _lock:
    if _listening:
      return
    _listening = True
  monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
  """Seconds this process has spent compiling (or loading cached) programs
  since `count_compile_time()` was first called."""
  with _lock:
    return _compile_seconds


def enable_compilation_cache(directory: str | None) -> str | None:
  """Points JAX's persistent compilation cache at `directory` (None: off).

  Must run before the process compiles its first program: JAX decides once,
  at the first compilation, whether to use a cache. A folder that cannot be
  created leaves the cache off, with a warning (a read-only home must not stop
  a run).

  Returns:
    The folder in use, or None.
  """
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning('compilation cache off: cannot create %s (%s); set %s', directory,
                    e.strerror or e, ENV)
    return None
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def configure() -> str | None:
  """What every jal command does first: the compilation cache per the
  environment (`cache_dir`) and compile-time counting. Returns the cache's
  folder, or None."""
  count_compile_time()
  return enable_compilation_cache(cache_dir())
