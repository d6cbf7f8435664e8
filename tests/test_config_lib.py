"""jal.config_lib: strategy options from their declarations, and Settings."""

import dataclasses

import ml_collections
import pytest

from jal import config_lib
from jal import strategies
from jal.strategies import batch_bald, kmeans, mc_dropout, options, probcover, typiclust
from tests.conftest import load_config

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
  for option, users in ((kmeans.ITERS, ('kmeans', 'typiclust', 'probcover')),
                        (mc_dropout.MC_SAMPLES, ('mc_dropout', 'mc_dropout_bald', 'batch_bald'))):
    assert {s for s in strategies.STRATEGIES.values() if option in s.options} == by_name(*users)
    assert strategies.OPTIONS[option.name] is option
  # Each strategy's reader falls back on that one default.
  assert kmeans.iters_of(None) == typiclust.settings_of(None)[1] == 20
  assert probcover.settings_of(None)['iters'] == 20
  assert mc_dropout.mc_samples_of(None) == 25 and batch_bald.settings_of(None) == (10_000, 1_000)
  # A second declaration of a field would give it a second default: refused.
  twin = options.positive_int('kmeans_iters', 30, 'Lloyd iterations')
  registry = {'kmeans': kmeans.STRATEGY,
              'twin': strategies.Strategy('twin', kmeans.select, options=(twin,))}
  with pytest.raises(ValueError) as e:
    strategies._declared_options(registry)  # pylint: disable=protected-access
  assert str(e.value) == ("strategy_options.kmeans_iters is declared twice (by 'twin' and "
                          'another strategy); declare it once and share it')


@pytest.mark.parametrize('option,value,message', [
    (kmeans.ITERS, 2.0, 'kmeans_iters must be a positive int, got 2.0'),
    (kmeans.ITERS, True, 'kmeans_iters must be a positive int, got True'),
    (probcover.ALPHA, 'high', "probcover_alpha must be a number in (0, 1], got 'high'"),
    (probcover.ALPHA, float('nan'), 'probcover_alpha must be a number in (0, 1], got nan'),
    (probcover.DELTA, -0.5, 'probcover_delta must be a finite number > 0, got -0.5'),
])
def test_option_read_refuses_a_bad_value_in_one_line(option, value, message):
  with pytest.raises(ValueError) as e:
    option.read(ml_collections.ConfigDict({option.name: value}), 'probcover')
  assert str(e.value) == f'probcover: strategy_options.{message}'


def test_option_read_gives_the_declared_default_and_the_value_as_its_kind():
  assert probcover.ALPHA.read(None, 'probcover') == 0.95
  assert probcover.ALPHA.read({'probcover_alpha': 1}, 'probcover') == 1.0
  assert isinstance(probcover.ALPHA.read({'probcover_alpha': 1}, 'probcover'), float)
  assert probcover.DELTA.read({}, 'probcover') is None                # unset placeholder
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
  assert settings == config_lib.Settings(strategies=('random', 'coreset', 'ensembles'),
                                         seeds=(3, 1), embedding_source='model')
  assert settings.runs == (('random', 3), ('random', 1), ('coreset', 3), ('coreset', 1),
                           ('ensembles', 3), ('ensembles', 1))
  path = tmp_path / 'features.npy'
  path.write_bytes(b'')
  config.strategy_options.embeddings = str(path)
  assert config_lib.validate(config).embedding_source == str(path)
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.seeds = (0,)
