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

It also turns off XLA:CPU's YNNPACK library fusions (`CPU_XLA_FLAGS`), which
jal's CPU programs (ResNet-18 training, LeNet scoring in its space-to-depth
form, `jal.models`) run faster without on the 2-core CPU (results/bench_cpu). XLA
reads `XLA_FLAGS` once, when the backend starts, so this is done only before
then, only for the jaxlib versions it was measured on (an unknown flag aborts
XLA), and never over a value of the same flag the user set.

`compile_seconds()` is the process's time so far spent tracing, lowering and
compiling (or loading from the cache) jitted programs, summed from JAX's
monitoring events; the loop's `Stopwatch` records per-part differences of it,
so `timings.jsonl` separates compile seconds from steady-state seconds.
"""

import os
import threading
import time

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

# XLA:CPU flags jal runs with (see the module docstring), and the jaxlib
# versions they were measured on: [first, last) as (major, minor).
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
CPU_XLA_FLAGS_JAXLIB = ((0, 10), (0, 11))

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


class Stopwatch:
  """The wall seconds of consecutive parts of a computation, and of each the
  seconds spent compiling (`compile_seconds()`).

  `lap(part)` ends `part`, which began at the previous lap (or when the
  stopwatch was made). Block on a part's results before its lap: JAX
  dispatches asynchronously.
  """

  def __init__(self, clock=time.perf_counter):
    self._clock = clock
    self._last = (clock(), compile_seconds())
    self._laps = {}

  def lap(self, part: str) -> None:
    now = (self._clock(), compile_seconds())
    self._laps[part] = (now[0] - self._last[0], now[1] - self._last[1])
    self._last = now

  def seconds(self, parts) -> dict[str, float]:
    """`{'<part>_seconds': wall, '<part>_compile_seconds': compiling}` for each
    of `parts`; 0.0 and 0.0 for a part that was not lapped (did not run)."""
    out = {}
    for part in parts:
      out[f'{part}_seconds'], out[f'{part}_compile_seconds'] = self._laps.get(part, (0.0, 0.0))
    return out


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
    logging.warning(
        'compilation cache off: cannot create %s (%s); set %s', directory, e.strerror or e, ENV
    )
    return None
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  return bool(xla_bridge._backends)  # pylint: disable=protected-access


def cpu_xla_flags(current: str, jaxlib_version: tuple[int, ...]) -> str:
  """`current` XLA_FLAGS with jal's CPU flags added, unless the user set the
  same flags or jaxlib is outside the versions they were measured on."""
  first, last = CPU_XLA_FLAGS_JAXLIB
  if not first <= tuple(jaxlib_version[:2]) < last:
    return current
  given = {f.split('=', 1)[0] for f in current.split()}
  extra = [f for f in CPU_XLA_FLAGS if f.split('=', 1)[0] not in given]
  return ' '.join([current] + extra if current else extra)


def set_cpu_xla_flags() -> bool:
  """Adds `CPU_XLA_FLAGS` to $XLA_FLAGS if no backend has started yet. Returns
  whether XLA will run with them.

  They are `xla_cpu_*` options, read only by XLA:CPU's compiler, so they are
  set on every machine without guessing which platform JAX will pick: on an
  accelerator machine they reach only the host's own CPU programs.
  """
  import jaxlib  # pylint: disable=g-import-not-at-top

  if _backend_started():
    return False
  version = tuple(int(v) for v in jaxlib.__version__.split('.')[:2])
  flags = cpu_xla_flags(os.environ.get('XLA_FLAGS', ''), version)
  os.environ['XLA_FLAGS'] = flags
  return all(f.split('=', 1)[0] in flags for f in CPU_XLA_FLAGS)


def configure() -> str | None:
  """What every jal command does first: jal's XLA:CPU flags, the compilation
  cache per the environment (`cache_dir`) and compile-time counting. Returns
  the cache's folder, or None."""
  set_cpu_xla_flags()
  count_compile_time()
  return enable_compilation_cache(cache_dir())
