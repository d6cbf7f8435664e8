"""Every setting's config runs its :smoke variant end to end on the CPU.

CIFAR-10 is the real (JPEG'd) copy in the data dir where there is one, else
a made-up one; CIFAR-100, the retinopathy images and ImageNet weights cannot
be had here, so the tests write small stand-ins in the standard formats.
"""

import json
import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from jal import data, experiment
from tests.conftest import CONFIG_ARGS, NO_DEFAULT, REPO, load_config, shared_data_dir
from tests.test_data import fake_cifar10_files, fake_cifar100_files, write_folder
from tests.test_pretrained import random_state_dict


def _rows(workdir, name):
  return [json.loads(l) for l in (pathlib.Path(workdir) / name).read_text().splitlines()]


def _write_fake_cifar(root: pathlib.Path, num_classes: int):
  """A made-up CIFAR-10 (1,000 training, 200 test images) or CIFAR-100 (300
  and 300) extracted folder under `root`; returns `root` for `data_dir`."""
  if num_classes == 10:
    write_folder(root / 'cifar-10-batches-py', fake_cifar10_files(n_per_batch=200)[0])
  else:
    write_folder(root / 'cifar-100-python', fake_cifar100_files(n_per_batch=300)[0])
  return str(root)


def _write_fake_retinopathy(root: pathlib.Path, n=80, seed=0):
  rng = np.random.default_rng(seed)
  folder = root / 'diabetic_retinopathy' / 'train'
  folder.mkdir(parents=True)
  grades = rng.choice(5, n, p=[0.6, 0.1, 0.15, 0.1, 0.05])
  lines = ['image,level']
  for i, g in enumerate(grades):
    Image.new('RGB', (40 + i % 7, 36), (int(g) * 50, 90, 200 - int(g) * 40)).save(
        folder / f'{i}_left.jpeg'
    )
    lines.append(f'{i}_left,{g}')
  (root / 'diabetic_retinopathy' / 'trainLabels.csv').write_text('\n'.join(lines) + '\n')
  return str(root)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  path = tmp_path_factory.mktemp('weights') / 'resnet18.npz'
  np.savez(path, **random_state_dict(0))
  return str(path)


def _run(config, workdir):
  """Runs a ResNet smoke with one acquisition after the warm-up: round 2 of a
  smoke runs the code round 1 runs, on a larger labeled set, and would double
  these tests' time (the loop's later rounds are tested on gaussian and MNIST)."""
  config.num_rounds = 1
  table = experiment.train_and_evaluate(config, str(workdir))
  return table, _rows(workdir, 'metrics.jsonl'), _rows(workdir, 'selections.jsonl')


def _check_shape(config, metrics, selections):
  n_strat, n_seeds = len(config.strategies), len(config.seeds)
  assert len(metrics) == n_strat * n_seeds * (config.num_rounds + 1)
  for m in metrics:
    assert m['n_labeled'] == config.warmup_size + m['round'] * config.query_size
  for s in selections:
    assert len(s['indices']) == (config.warmup_size if s['round'] == 0 else config.query_size)


def _cifar10_dir(tmp_path):
  """The real (JPEG'd) CIFAR-10 where the data dir has it, else a made-up
  one in the same format, so the CIFAR-10 smokes run in every CI."""
  d = shared_data_dir()
  if d is not None and (pathlib.Path(d) / 'cifar-10-batches-py').is_dir():
    return d
  return _write_fake_cifar(tmp_path / 'data', 10)


def test_imbalance_cpu_departs_only_in_model_and_training():
  study, cpu = load_config('imbalance'), load_config('imbalance', 'cpu')
  assert cpu.name == 'imbalance_cpu' and cpu.model.name == 'lenet'
  assert (cpu.train.optimizer, cpu.train.batch_size, cpu.train.min_steps) == ('adam', 64, 300)
  assert cpu.seeds == (0, 1, 2, 3, 4) and cpu.strategies == ('random', 'coreset', 'ensembles')
  for field in ('data', 'query_size', 'warmup_size', 'num_rounds'):
    assert cpu[field] == study[field], field
  assert (cpu.train.members, cpu.train.augment) == (study.train.members, study.train.augment)
  with pytest.raises(
      ValueError,
      match=r"^config args 'pretrained' and 'cpu' of " r'configs/imbalance.py exclude each other',
  ):
    load_config('imbalance', 'cpu,pretrained')


@pytest.mark.parametrize('arg', ['smoke', 'cpu,smoke'])
def test_imbalance_smoke_records_ap_and_minority_fraction(arg, tmp_path):
  c = load_config('imbalance', arg)
  c.data_dir = _cifar10_dir(tmp_path)
  table, metrics, selections = _run(c, tmp_path / 'w')
  _check_shape(c, metrics, selections)
  ds = data.load_dataset(c.data, data_dir=c.data_dir, seed=c.seed)
  assert ds.num_classes == 2 and ds.positive_class == 1
  for m in metrics:
    assert 0.0 <= m['average_precision'] <= 1.0
    sel = [
        s
        for s in selections
        if (s['strategy'], s['seed'], s['round']) == (m['strategy'], m['seed'], m['round'])
    ][0]
    if m['round'] == 0:
      assert 'minority_fraction_queried' not in m
    else:  # the recorded fraction is the share of positives in that round's queries
      assert m['minority_fraction_queried'] == pytest.approx(
          np.mean(ds.y_train[sel['indices']] == 1)
      )
  assert 'minority-class test average precision' in table


@pytest.mark.parametrize(
    'digit,positives,negatives,test_positives',
    [(1, 2803, 53258, 1135), (5, 2873, 54579, 892), (8, 2850, 54149, 974)],
)
def test_mnist_imbalance_makes_the_digit_5_percent_of_the_pool(
    digit, positives, negatives, test_positives, data_dir
):
  c = load_config('mnist_imbalance', f'digit{digit}')
  assert c.name == f'mnist_imbalance_digit{digit}'
  ds = data.load_dataset(c.data, data_dir=data_dir, seed=c.seed)
  assert (ds.num_classes, ds.positive_class) == (2, 1)
  assert (int((ds.y_train == 1).sum()), int((ds.y_train == 0).sum())) == (positives, negatives)
  assert positives / (positives + negatives) == pytest.approx(0.05, abs=1e-4)
  # The test set keeps MNIST's natural share of the digit.
  assert (len(ds.y_test), int((ds.y_test == 1).sum())) == (10_000, test_positives)


def test_cifar10_2class_smoke(tmp_path):
  c = load_config('cifar10_2class', 'low,smoke')
  c.data_dir = _cifar10_dir(tmp_path)
  _, metrics, selections = _run(c, tmp_path / 'w')
  _check_shape(c, metrics, selections)
  assert all(len(m['per_class_accuracy']) == 2 for m in metrics)


@pytest.mark.parametrize(
    'name,arg', [('cifar100', 'low,smoke'), ('cifar100_high_warmup', 'low,smoke')]
)
def test_cifar100_smokes_on_made_up_cifar100(name, arg, tmp_path):
  c = load_config(name, arg)
  c.data_dir = _write_fake_cifar(tmp_path / 'data', 100)
  _, metrics, selections = _run(c, tmp_path / 'w')
  _check_shape(c, metrics, selections)
  assert all(len(m['per_class_accuracy']) == 100 for m in metrics)


def test_cifar100_pretrained_smoke_loads_the_weights(weights, tmp_path):
  c = load_config('cifar100', 'low,pretrained,smoke')
  c.data_dir = _write_fake_cifar(tmp_path / 'data', 100)
  c.model.pretrained_path = weights
  # One strategy: a width-64 ResNet-18 (the weights fix it) costs a CPU a minute
  # per strategy; the loading is the same for every strategy.
  c.strategies = ('ensembles',)
  _, metrics, selections = _run(c, tmp_path / 'w')
  _check_shape(c, metrics, selections)
  ds = data.load_dataset(c.data, data_dir=c.data_dir, seed=c.seed)
  exp = experiment.Experiment(c, ds)
  sd = random_state_dict(0)
  over = exp.init_overrides
  # Every backbone tensor comes from the state dict; the 100-way head does not.
  np.testing.assert_array_equal(
      over[('params', 'layer3_1', 'conv2', 'kernel')],
      sd['layer3.1.conv2.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(over[('batch_stats', 'bn1', 'var')], sd['bn1.running_var'])
  assert not any(k[1] == 'fc' for k in over)
  assert len(over) == 122 - 2 - 20  # all but fc.{weight,bias} and num_batches_tracked


def test_retinopathy_smoke_on_made_up_images(weights, tmp_path):
  c = load_config('retinopathy', 'smoke')
  c.data_dir = _write_fake_retinopathy(tmp_path / 'data')
  c.model.pretrained_path = weights
  c.strategies = ('ensembles',)  # as the CIFAR-100 pretrained smoke, for the same reason
  _, metrics, selections = _run(c, tmp_path / 'w')
  _check_shape(c, metrics, selections)
  assert all('average_precision' in m for m in metrics)


def test_missing_pretrained_weights_fail_before_compute(tmp_path):
  c = load_config('cifar100', 'low,pretrained,smoke')
  c.model.pretrained_path = str(tmp_path / 'nope.pth')
  with pytest.raises(FileNotFoundError, match='pretrained weights not found: .*nope.pth'):
    experiment.train_and_evaluate(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def _valid_listed(message):
  """The args a config's one-line error lists as valid, and its note on exclusive ones."""
  m = re.search(r'; valid: ([\w, ]+?)(?: \((.*)\))?$', message)
  assert m, message
  return tuple(m.group(1).split(', ')), m.group(2)


def test_every_config_file_declares_its_args():
  assert sorted(p.stem for p in (REPO / 'configs').glob('*.py')) == sorted(CONFIG_ARGS)


@pytest.mark.parametrize('name', sorted(CONFIG_ARGS))
def test_unknown_config_arg_is_refused_with_the_valid_ones(name):
  valid, one_of = CONFIG_ARGS[name]
  for arg in ('smok', f'{valid[0]},smok'):  # a typo alone, or beside a valid arg
    with pytest.raises(ValueError) as e:
      load_config(name, arg)
    message = str(e.value)
    assert message.startswith(f"unknown config arg 'smok' for configs/{name}.py; valid: ")
    assert '\n' not in message
    listed, note = _valid_listed(message)
    assert listed == valid
    default = '' if name in NO_DEFAULT or not one_of else f'; {one_of[0]} if none'
    assert note == (f'at most one of {", ".join(one_of)}{default}' if one_of else None)
  with pytest.raises(ValueError, match=r"^unknown config args 'hihg', 'lo' for "):
    load_config(name, 'lo,hihg')


@pytest.mark.parametrize('name', sorted(n for n, (_, one_of) in CONFIG_ARGS.items() if one_of))
def test_mutually_exclusive_config_args_are_refused(name):
  valid, one_of = CONFIG_ARGS[name]
  with pytest.raises(ValueError) as e:
    load_config(name, f'{one_of[-1]},smoke,{one_of[0]}')
  message = str(e.value)
  assert message.startswith(
      f"config args '{one_of[0]}' and '{one_of[-1]}' of configs/{name}.py "
      'exclude each other; valid: '
  )
  assert _valid_listed(message)[0] == valid and '\n' not in message


@pytest.mark.parametrize('name', sorted(CONFIG_ARGS))
def test_every_valid_config_arg_loads(name):
  valid, one_of = CONFIG_ARGS[name]
  default = load_config(name)
  for a in valid:
    load_config(name, a)
    load_config(name, f' {a} ,smoke' if a != 'smoke' else a)
  if one_of and name not in NO_DEFAULT:  # no arg means the first of the exclusive ones
    assert load_config(name, one_of[0]).to_dict() == default.to_dict()
