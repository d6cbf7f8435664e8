"""Shared test helpers."""

import os
import pathlib
import tempfile

import pytest

from jal import runtime

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every file in configs/: the args it takes, in the order its error lists
# them, and its mutually exclusive args (the first is the default when none is
# given, except where a config has no default among them: NO_DEFAULT).
CONFIG_ARGS = {
    'gaussian': (('smoke',), ()),
    'mnist': (('low', 'high', 'smoke'), ('low', 'high')),
    'cifar10_2class': (('low', 'high', 'smoke'), ('low', 'high')),
    'cifar100': (('low', 'high', 'pretrained', 'smoke'), ('low', 'high')),
    'cifar100_high_warmup': (('low', 'high', 'smoke'), ('low', 'high')),
    'imbalance': (('pretrained', 'cpu', 'smoke'), ('pretrained', 'cpu')),
    'mnist_imbalance': (
        tuple(f'digit{d}' for d in range(10)) + ('smoke',),
        tuple(f'digit{d}' for d in range(10)),
    ),
    'retinopathy': (('smoke',), ()),
    'label': (('gray', 'rgb', 'pretrained', 'smoke'), ('gray', 'rgb', 'pretrained')),
}
NO_DEFAULT = {'imbalance'}


def pytest_configure(config):
  """One persistent compilation cache for the whole suite: its xdist workers and
  the commands tests run as subprocesses (which inherit the environment) load
  the programs another has compiled. Results do not depend on it (jal.runtime)."""
  del config
  os.environ.setdefault(
      runtime.ENV, os.path.join(tempfile.gettempdir(), f'jal-tests-xla-{os.getuid()}')
  )
  runtime.configure()


def shared_data_dir():
  """The real data for tests: $JAL_DATA_DIR, else ../shared/data; None if absent."""
  for d in (os.environ.get('JAL_DATA_DIR'), REPO.parent / 'shared' / 'data'):
    if d and (pathlib.Path(d) / 'mnist').is_dir():
      return str(d)
  return None


@pytest.fixture
def data_dir():
  d = shared_data_dir()
  if d is None:
    pytest.skip('real MNIST not found (set JAL_DATA_DIR)')
  return d


def load_config(name, arg=None):
  """`get_config(arg)` of configs/<name>.py, as the --config flag loads it."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(f'config_{name}', REPO / 'configs' / f'{name}.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)
