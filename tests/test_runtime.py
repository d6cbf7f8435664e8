"""jal.runtime: where the persistent compilation cache goes, and that a second
process loads what the first compiled."""

import json
import os
import subprocess
import sys

from jal import runtime
from tests.conftest import REPO


def test_cache_dir_follows_the_environment(tmp_path):
  assert runtime.cache_dir({'HOME': '/h'}) == os.path.join(
      os.path.expanduser('~'), '.cache', 'jal', 'xla'
  )
  assert runtime.cache_dir({'XDG_CACHE_HOME': '/c'}) == '/c/jal/xla'
  assert runtime.cache_dir({runtime.ENV: str(tmp_path)}) == str(tmp_path)
  assert runtime.cache_dir({runtime.ENV: ' OFF '}) is None


def test_unwritable_cache_dir_leaves_the_cache_off(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  assert runtime.enable_compilation_cache(str(blocker / 'xla')) is None


_PROGRAM = """
import json, jax, jax.numpy as jnp
from jax import monitoring
from jal import runtime
hits = []
monitoring.register_event_listener(lambda e, **_: hits.append(e) if e.endswith('cache_hits') else None)
where = runtime.configure()
y = jax.jit(lambda x: jnp.tanh(x) @ x.T + 1.0)(jnp.ones((64, 64)))
print(json.dumps({'where': where, 'hits': len(hits), 'y': float(y[0, 0]),
                  'compile_seconds': runtime.compile_seconds()}))
"""


def _run(env, program=_PROGRAM):
  """Runs `program` in a fresh interpreter with `env`; its last stdout line, parsed as JSON."""
  out = subprocess.run(
      [sys.executable, '-c', program],
      cwd=REPO,
      env=env,
      check=True,
      capture_output=True,
      text=True,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_second_process_loads_the_first_ones_programs(tmp_path):
  env = {**os.environ, runtime.ENV: str(tmp_path / 'xla')}
  first, second = _run(env), _run(env)
  assert first['where'] == second['where'] == str(tmp_path / 'xla')
  assert first['hits'] == 0 and second['hits'] >= 1
  assert os.listdir(tmp_path / 'xla')
  assert first['y'] == second['y']
  assert first['compile_seconds'] > 0 and second['compile_seconds'] > 0
  off = _run({**os.environ, runtime.ENV: 'off'})
  assert off['where'] is None and off['hits'] == 0 and off['y'] == first['y']


def test_cpu_xla_flags_are_added_once_and_never_over_the_users():
  flag = runtime.CPU_XLA_FLAGS[0]
  assert runtime.cpu_xla_flags('', (0, 10, 2)) == flag
  assert runtime.cpu_xla_flags('--xla_dump_to=/d', (0, 10)) == f'--xla_dump_to=/d {flag}'
  users = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT'
  assert runtime.cpu_xla_flags(users, (0, 10)) == users
  assert runtime.cpu_xla_flags(runtime.cpu_xla_flags('', (0, 10)), (0, 10)) == flag
  assert runtime.cpu_xla_flags('', (0, 9)) == '' and runtime.cpu_xla_flags('', (0, 11)) == ''


def test_cpu_xla_flags_are_left_alone_once_the_backend_has_started(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top

  jax.numpy.zeros(1).block_until_ready()  # XLA has read XLA_FLAGS by now
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/d')
  assert runtime.set_cpu_xla_flags() is False
  assert os.environ['XLA_FLAGS'] == '--xla_dump_to=/d'


_FUSIONS = """
import json, os, jax, jax.numpy as jnp
from jal import runtime
runtime.configure()
f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(0))
text = f.lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
print(json.dumps({'flags': os.environ.get('XLA_FLAGS', ''), 'ynn': text.count('__ynn_fusion')}))
"""


def test_commands_run_without_ynn_fusions_on_this_jaxlib(tmp_path):
  import jaxlib  # pylint: disable=g-import-not-at-top

  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env[runtime.ENV] = 'off'
  got = _run(env, _FUSIONS)
  first, last = runtime.CPU_XLA_FLAGS_JAXLIB
  if first <= tuple(int(v) for v in jaxlib.__version__.split('.')[:2]) < last:
    assert got == {'flags': runtime.CPU_XLA_FLAGS[0], 'ynn': 0}
  else:
    assert got['flags'] == ''


def test_stopwatch_times_consecutive_parts_and_their_compile_seconds(monkeypatch):
  now, compiling = [10.0], [1.0]
  monkeypatch.setattr(runtime, 'compile_seconds', lambda: compiling[0])
  watch = runtime.Stopwatch(clock=lambda: now[0])
  now[0], compiling[0] = 12.5, 1.5
  watch.lap('train')
  now[0] = 13.0
  watch.lap('eval')
  now[0], compiling[0] = 16.0, 2.0
  watch.lap('select')  # no 'score' lap: the part did not run
  assert watch.seconds(('train', 'eval', 'score', 'select')) == {
      'train_seconds': 2.5,
      'train_compile_seconds': 0.5,
      'eval_seconds': 0.5,
      'eval_compile_seconds': 0.0,
      'score_seconds': 0.0,
      'score_compile_seconds': 0.0,
      'select_seconds': 3.0,
      'select_compile_seconds': 0.5,
  }
