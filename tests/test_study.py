"""Tests for jal.study: the study's published numbers, keyed by setting."""

import dataclasses

import pytest

from jal import study

SETTINGS = (
    'gaussian',
    'mnist_low',
    'mnist_high',
    'cifar10_2class_low',
    'cifar10_2class_high',
    'cifar100_low',
    'cifar100_high',
    'cifar100_low_pretrained',
    'cifar100_high_pretrained',
    'cifar100_high_warmup_low',
    'cifar100_high_warmup_high',
    'imbalance',
    'imbalance_pretrained',
    'retinopathy',
)

# (setting, coreset, ensembles, label) for every table entry.
PUBLISHED = [
    ('mnist_low', -13.388, 4.584, 'Table 3.2, MNIST, low query size'),
    ('mnist_high', 0.725, 1.547, 'Table 3.2, MNIST, high query size'),
    ('cifar10_2class_low', -3.158, 1.338, 'Table 3.2, CIFAR-10 2-class, low query size'),
    ('cifar10_2class_high', -0.178, 0.667, 'Table 3.2, CIFAR-10 2-class, high query size'),
    ('cifar100_low', -0.309, -0.564, 'Table 4.1, CIFAR-100 vanilla, low query size'),
    ('cifar100_high', 0.556, -0.167, 'Table 4.1, CIFAR-100 vanilla, high query size'),
    (
        'cifar100_low_pretrained',
        -7.126,
        -0.002,
        'Table 4.1, CIFAR-100 ImageNet pretrained, low query size',
    ),
    (
        'cifar100_high_pretrained',
        0.553,
        -0.221,
        'Table 4.1, CIFAR-100 ImageNet pretrained, high query size',
    ),
    ('cifar100_high_warmup_low', 0.340, 0.350, 'Table 4.1, CIFAR-100 high warmup, low query size'),
    (
        'cifar100_high_warmup_high',
        0.174,
        -0.162,
        'Table 4.1, CIFAR-100 high warmup, high query size',
    ),
    ('imbalance', -0.0015, 0.0325, 'Table 4.2, vanilla CIFAR-10 (1:19 imbalance)'),
    (
        'imbalance_pretrained',
        0.0198,
        0.1200,
        'Table 4.2, ImageNet pretrained CIFAR-10 (1:19 imbalance)',
    ),
    ('retinopathy', -0.0001, 0.0019, 'Table 4.2, ImageNet pretrained diabetic retinopathy'),
]


def test_every_setting_is_known():
  assert set(study.SETTINGS) == set(SETTINGS)
  for name in SETTINGS:
    numbers = study.lookup(name)
    assert isinstance(numbers, study.StudyNumbers)
    assert numbers.setting == name
    assert set(numbers.improvement) == {'coreset', 'ensembles'}
    assert numbers.num_seeds == 3
    assert numbers.label.startswith('Table ')


@pytest.mark.parametrize('name,coreset,ensembles,label', PUBLISHED)
def test_published_average_improvements(name, coreset, ensembles, label):
  numbers = study.lookup(name)
  assert numbers.improvement['coreset'] == coreset
  assert numbers.improvement['ensembles'] == ensembles
  assert numbers.label == label == numbers.improvement_label
  assert numbers.per_selection is None
  ap = name.startswith(('imbalance', 'retinopathy'))
  assert numbers.metric == ('average_precision' if ap else 'accuracy')
  assert numbers.unit == ('AP' if ap else 'pp')


def test_gaussian_table_3_1():
  numbers = study.lookup('gaussian')
  assert numbers.label == 'Table 3.1, 2D Gaussian'
  assert numbers.metric == 'accuracy' and numbers.query_size == 5
  assert dict(numbers.per_selection) == {
      'coreset': (80.2, 83.4, 80.3),
      'ensembles': (79.4, 84.0, 85.6),
      'random': (77.8, 81.8, 82.4),
  }
  # Derived: mean over selections of (strategy - random), in pp.
  assert numbers.improvement['coreset'] == pytest.approx(1.9 / 3)
  assert numbers.improvement['ensembles'] == pytest.approx(7.0 / 3)
  assert 'derived' in numbers.improvement_label


def test_query_sizes():
  sizes = {n: study.lookup(n).query_size for n in SETTINGS}
  assert sizes['mnist_low'] == 10 and sizes['mnist_high'] == 600
  assert sizes['cifar100_high'] == 2500
  assert sizes['cifar100_high_warmup_high'] == 500
  assert sizes['retinopathy'] == 20


@pytest.mark.parametrize(
    'name',
    [
        'gaussian_smoke',
        'mnist_low_smoke',
        'retinopathy_smoke',
        'mnist',
        'cifar100',
        'toy',
        '',
        'Gaussian',
    ],
)
def test_other_names_are_not_matched(name):
  assert study.lookup(name) is None


def test_numbers_are_read_only():
  numbers = study.lookup('mnist_low')
  with pytest.raises(dataclasses.FrozenInstanceError):
    numbers.query_size = 1
  with pytest.raises(TypeError):
    numbers.improvement['coreset'] = 0.0
