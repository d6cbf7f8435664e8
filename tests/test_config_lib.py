"""jal.config_lib: strategy options from their declarations, Settings, and
workdir identities that stay those of existing workdirs."""

import dataclasses
import hashlib
import itertools
import json

import ml_collections
import pytest

from jal import config_lib
from jal import strategies
from jal.label import project
from jal.strategies import batch_bald, kmeans, mc_dropout, options, probcover, typiclust
from tests.conftest import CONFIG_ARGS, load_config

# `base_config().strategy_options` as it was when every field was written out
# by hand in config_lib (before the strategies declared them): value and type.
STRATEGY_OPTIONS = {
    'mc_samples': 25,
    'batch_bald_samples': 10_000,
    'batch_bald_candidates': 1_000,
    'embeddings': 'model',
    'beta': 10.0,
    'kmeans_iters': 20,
    'density_beta': 1.0,
    'dal_subqueries': 10,
    'dal_steps': 300,
    'dal_width': 256,
    'dal_batch_size': 64,
    'dal_learning_rate': 1e-3,
    'typiclust_max_clusters': 500,
    'probcover_alpha': 0.95,
    'probcover_delta': None,
    'probcover_clusters': None,
    'vaal_steps': 1000,
    'vaal_width': 16,
    'vaal_latent': 32,
    'vaal_disc_width': 512,
    'vaal_batch_size': 64,
    'vaal_beta': 1.0,
    'vaal_adversary_weight': 1.0,
    'vaal_learning_rate': 5e-4,
    'dfal_candidates': 2000,
    'dfal_max_iter': 50,
    'dfal_overshoot': 0.02,
    'dfal_classes': 10,
    'dfal_batch_size': None,
}
# The placeholders' types: unset, but settable from the command line.
PLACEHOLDERS = {'probcover_delta': float, 'probcover_clusters': int, 'dfal_batch_size': int}


def test_strategy_options_are_the_declared_ones_with_the_old_values():
  so = config_lib.base_config().strategy_options
  assert so.to_dict() == STRATEGY_OPTIONS
  for name, value in STRATEGY_OPTIONS.items():  # 10 == 10.0 in ==: compare the types too
    assert so.get_type(name) is PLACEHOLDERS.get(name, type(value)), name
  assert set(strategies.OPTIONS) == set(STRATEGY_OPTIONS) - {'embeddings'}
  so.probcover_delta = 0.25
  so.dfal_batch_size = 128
  with pytest.raises(TypeError):
    so.probcover_clusters = 'many'


def test_a_shared_option_is_declared_once():
  by_name = lambda *names: {strategies.get_strategy(n) for n in names}
  for option, users in (
      (kmeans.ITERS, ('kmeans', 'typiclust', 'probcover')),
      (mc_dropout.MC_SAMPLES, ('mc_dropout', 'mc_dropout_bald', 'batch_bald')),
  ):
    assert {s for s in strategies.STRATEGIES.values() if option in s.options} == by_name(*users)
    assert strategies.OPTIONS[option.name] is option
  # Each strategy's reader falls back on that one default.
  assert kmeans.iters_of(None) == typiclust.settings_of(None)[1] == 20
  assert probcover.settings_of(None)['iters'] == 20
  assert mc_dropout.mc_samples_of(None) == 25 and batch_bald.settings_of(None) == (10_000, 1_000)
  # A second declaration of a field would give it a second default: refused.
  twin = options.positive_int('kmeans_iters', 30, 'Lloyd iterations')
  registry = {
      'kmeans': kmeans.STRATEGY,
      'twin': strategies.Strategy('twin', kmeans.select, options=(twin,)),
  }
  with pytest.raises(ValueError) as e:
    strategies._declared_options(registry)  # pylint: disable=protected-access
  assert str(e.value) == (
      "strategy_options.kmeans_iters is declared twice (by 'twin' and "
      'another strategy); declare it once and share it'
  )


@pytest.mark.parametrize(
    'option,value,message',
    [
        (kmeans.ITERS, 2.0, 'kmeans_iters must be a positive int, got 2.0'),
        (kmeans.ITERS, True, 'kmeans_iters must be a positive int, got True'),
        (probcover.ALPHA, 'high', "probcover_alpha must be a number in (0, 1], got 'high'"),
        (probcover.ALPHA, float('nan'), 'probcover_alpha must be a number in (0, 1], got nan'),
        (probcover.DELTA, -0.5, 'probcover_delta must be a finite number > 0, got -0.5'),
    ],
)
def test_option_read_refuses_a_bad_value_in_one_line(option, value, message):
  with pytest.raises(ValueError) as e:
    option.read(ml_collections.ConfigDict({option.name: value}), 'probcover')
  assert str(e.value) == f'probcover: strategy_options.{message}'


def test_option_read_gives_the_declared_default_and_the_value_as_its_kind():
  assert probcover.ALPHA.read(None, 'probcover') == 0.95
  assert probcover.ALPHA.read({'probcover_alpha': 1}, 'probcover') == 1.0
  assert isinstance(probcover.ALPHA.read({'probcover_alpha': 1}, 'probcover'), float)
  assert probcover.DELTA.read({}, 'probcover') is None  # unset placeholder
  assert probcover.DELTA.read({'probcover_delta': None}, 'probcover') is None
  assert probcover.CLUSTERS.read({'probcover_clusters': 7}, 'probcover') == 7


def test_validate_refuses_a_bad_option_of_a_chosen_strategy_only():
  config = load_config('gaussian', 'smoke')
  config.strategy_options.kmeans_iters = 0
  config_lib.validate(config)  # no strategy of the config reads it
  config.strategies = ('random', 'typiclust')
  with pytest.raises(ValueError) as e:
    config_lib.validate(config)
  assert str(e.value) == 'typiclust: strategy_options.kmeans_iters must be a positive int, got 0'


def test_validate_returns_the_settings_the_loop_reads(tmp_path):
  config = load_config('gaussian', 'smoke')
  config.strategies = ('random, coreset', 'ensembles')
  config.seeds = (3, '1')
  settings = config_lib.validate(config)
  assert settings == config_lib.Settings(
      strategies=('random', 'coreset', 'ensembles'), seeds=(3, 1), embedding_source='model'
  )
  assert settings.runs == (
      ('random', 3),
      ('random', 1),
      ('coreset', 3),
      ('coreset', 1),
      ('ensembles', 3),
      ('ensembles', 1),
  )
  path = tmp_path / 'features.npy'
  path.write_bytes(b'')
  config.strategy_options.embeddings = str(path)
  assert config_lib.validate(config).embedding_source == str(path)
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.seeds = (0,)


# ----------------------------------------------------------------------------
# Workdir identity of every shipped config, pinned.


# Every configs/*.py, the args it takes, and those that exclude each other.
def _every_arg(name):
  """'name:arg' for every combination of the config's args it accepts."""
  valid, one_of = CONFIG_ARGS[name]
  for k in range(len(valid) + 1):
    for sub in itertools.combinations(valid, k):
      if sum(a in one_of for a in sub) <= 1:
        yield f'{name}:{",".join(sub)}'


def _identity_hash(spec):
  """The identity a workdir of `spec` ('name:args') is recognised by: jal.label's for label."""
  name, arg = spec.split(':')
  config = load_config(name, arg or None)
  identity = project.config_identity(config) if name == 'label' else config_lib.identity(config)
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# sha256 of `config_lib.identity` (`jal.label.project.config_identity` for label;
# JSON, sorted keys) of each config and args, computed with the code of
# commit 700e728, before the strategies declared their options (imbalance:cpu,
# added after it, from the config a running workdir of e247d48 stored): a workdir any
# of them wrote resumes today. A change that alters one (a new base_config
# field, a changed preset) must keep old workdirs resuming (`identity` counts
# an absent field as its default; see test_experiment's
# workdir-from-before-a-new-field test), and then update it here.
IDENTITIES = {
    'cifar100:': '501fd934b1848616',
    'cifar100:high': 'b456bd0b6b2f00cf',
    'cifar100:high,pretrained': '601083c95b7dd0d2',
    'cifar100:high,pretrained,smoke': 'd84f5b91800547bc',
    'cifar100:high,smoke': 'e718d53d7fff691c',
    'cifar100:low': '501fd934b1848616',
    'cifar100:low,pretrained': '1a7c00d98e28cd39',
    'cifar100:low,pretrained,smoke': '4d753b159c2581af',
    'cifar100:low,smoke': 'e376651e86f2ed94',
    'cifar100:pretrained': '1a7c00d98e28cd39',
    'cifar100:pretrained,smoke': '4d753b159c2581af',
    'cifar100:smoke': 'e376651e86f2ed94',
    'cifar100_high_warmup:': '8e814cef5cfed121',
    'cifar100_high_warmup:high': '0cf0cd52eb193794',
    'cifar100_high_warmup:high,smoke': '1575b874972f5872',
    'cifar100_high_warmup:low': '8e814cef5cfed121',
    'cifar100_high_warmup:low,smoke': 'bb75e6c48f654adb',
    'cifar100_high_warmup:smoke': 'bb75e6c48f654adb',
    'cifar10_2class:': 'df8b610399b41305',
    'cifar10_2class:high': 'd1f43aabf4852153',
    'cifar10_2class:high,smoke': 'ad669311be132385',
    'cifar10_2class:low': 'df8b610399b41305',
    'cifar10_2class:low,smoke': 'ec9f9a6ef9b6f20f',
    'cifar10_2class:smoke': 'ec9f9a6ef9b6f20f',
    'gaussian:': '47630ba01f921b18',
    'gaussian:smoke': 'e209656ef942a009',
    'imbalance:': '2eb993b714a10a3e',
    'imbalance:cpu': '0fce65a6689ed6b2',
    'imbalance:cpu,smoke': 'a430a16e4fecf9ae',
    'imbalance:pretrained': '82ddafe885659a33',
    'imbalance:pretrained,smoke': 'bf0b259441076de0',
    'imbalance:smoke': 'f1a569d18937440f',
    'label:': '1c7043f03cdba5cc',
    'label:gray': '1c7043f03cdba5cc',
    'label:gray,smoke': 'e0b983eecd0ede4c',
    'label:pretrained': 'a504b625608fac84',
    'label:pretrained,smoke': '92944a0781766eba',
    'label:rgb': 'acd9a4ef0180f368',
    'label:rgb,smoke': '210349cebced5822',
    'label:smoke': 'e0b983eecd0ede4c',
    'mnist:': '7520c492002de96e',
    'mnist:high': '93c9b9c910406859',
    'mnist:high,smoke': '80f7e21101fe23f3',
    'mnist:low': '7520c492002de96e',
    'mnist:low,smoke': '2c53a24d4c309948',
    'mnist:smoke': '2c53a24d4c309948',
    'mnist_imbalance:': '5c7a549270771b14',
    'mnist_imbalance:digit0': '5c7a549270771b14',
    'mnist_imbalance:digit0,smoke': 'a79c228f64504666',
    'mnist_imbalance:digit1': '065ad0de145f6a54',
    'mnist_imbalance:digit1,smoke': '15ac2db00b8495bc',
    'mnist_imbalance:digit2': '99030a3a4098ab26',
    'mnist_imbalance:digit2,smoke': 'b769c220f4334a7d',
    'mnist_imbalance:digit3': 'f16d9bce1783c693',
    'mnist_imbalance:digit3,smoke': '2b4572815cb88a3b',
    'mnist_imbalance:digit4': '4590805c0350b04a',
    'mnist_imbalance:digit4,smoke': 'f6c29401868dc738',
    'mnist_imbalance:digit5': '3d718fc76b2cd936',
    'mnist_imbalance:digit5,smoke': '4c68f99c624167cb',
    'mnist_imbalance:digit6': '266cfaf853ba4d8c',
    'mnist_imbalance:digit6,smoke': '61b412fe75f92b5c',
    'mnist_imbalance:digit7': '4a87c3183e343b52',
    'mnist_imbalance:digit7,smoke': 'ba5c8f3a9149257a',
    'mnist_imbalance:digit8': '6877e7776e413746',
    'mnist_imbalance:digit8,smoke': 'de75dd29061275cc',
    'mnist_imbalance:digit9': '4d1193a3d5114b3a',
    'mnist_imbalance:digit9,smoke': 'b238598a353a4cf0',
    'mnist_imbalance:smoke': 'a79c228f64504666',
    'retinopathy:': 'e199b1191b618617',
    'retinopathy:smoke': 'b4f15e6a176b27af',
}
# configs/cifar100_pretrained.py:X was configs/cifar100.py:X,pretrained (it
# added the arg), so its workdirs resume under the one file: old spec ->
# (new spec, the old spec's identity hash at 700e728).
RENAMED = {
    'cifar100_pretrained:': ('cifar100:pretrained', '1a7c00d98e28cd39'),
    'cifar100_pretrained:high': ('cifar100:high,pretrained', '601083c95b7dd0d2'),
    'cifar100_pretrained:high,smoke': ('cifar100:high,pretrained,smoke', 'd84f5b91800547bc'),
    'cifar100_pretrained:low': ('cifar100:low,pretrained', '1a7c00d98e28cd39'),
    'cifar100_pretrained:low,smoke': ('cifar100:low,pretrained,smoke', '4d753b159c2581af'),
    'cifar100_pretrained:smoke': ('cifar100:pretrained,smoke', '4d753b159c2581af'),
}


def test_every_config_file_is_pinned():
  # Every config file is in CONFIG_ARGS: test_configs.test_every_config_file_declares_its_args.
  assert sorted(s for n in CONFIG_ARGS for s in _every_arg(n)) == sorted(IDENTITIES)


@pytest.mark.parametrize('spec', sorted(IDENTITIES))
def test_workdir_identity_of_every_config_is_unchanged(spec):
  assert _identity_hash(spec) == IDENTITIES[spec]


@pytest.mark.parametrize('old', sorted(RENAMED))
def test_cifar100_pretrained_workdirs_resume_under_cifar100(old):
  new, old_hash = RENAMED[old]
  assert _identity_hash(new) == old_hash
