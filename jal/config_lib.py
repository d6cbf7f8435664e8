"""The experiment config: its fields and presets, its checks, and workdir identity.

Every check here runs before any compute and raises a one-line ValueError;
`validate` then parses the config once into `Settings`, the plain values the
loop reads.
"""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from jal import data as data_lib
from jal import models
from jal import sharding
from jal import strategies as strategies_lib
from jal import train

# Fields that may differ between a workdir's config.json and a resumed run:
# they change where data is read from, not what is computed.
_NON_IDENTITY = ('data_dir', 'fit_checkpoint_seconds')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's values the loop reads as plain values, parsed once (`parse`).

  Attributes:
    strategies: registry names in run order; `config.strategies` entries may
      hold comma-separated names.
    seeds: `config.seeds` as ints, in run order.
    embedding_source: `strategy_options.embeddings`: 'model' (member 0's,
      each round), 'pretrained' or the path of a .npy file.
  """

  strategies: tuple[str, ...]
  seeds: tuple[int, ...]
  embedding_source: str

  @property
  def runs(self) -> tuple[tuple[str, int], ...]:
    """Every (strategy, seed), in run order: by strategy, then seed."""
    return tuple((s, seed) for s in self.strategies for seed in self.seeds)


def parse(config) -> Settings:
  """`Settings` of a config; `validate` checks it first and returns this."""
  return Settings(
      strategies=tuple(_strategy_names(config)),
      seeds=tuple(_seed_list(config)),
      embedding_source=embedding_source(config),
  )


def _strategy_names(config) -> list[str]:
  """`config.strategies` as a list; entries may hold comma-separated names."""
  names = [n.strip() for entry in config.strategies for n in str(entry).split(',') if n.strip()]
  return names


def _seed_list(config) -> list[int]:
  """`config.seeds` as ints; a ValueError naming the field if one is not."""
  try:
    return [int(s) for s in config.seeds]
  except (TypeError, ValueError):
    raise ValueError(
        f'config.seeds must be a non-empty list of distinct ints, got {list(config.seeds)}'
    ) from None


def _positive(name, value, allow_zero=False):
  ok = value >= 0 if allow_zero else value > 0
  if not ok:
    raise ValueError(
        f'config.{name} must be {"non-negative" if allow_zero else "positive"}, got {value}'
    )


# Where `strategy_options.embeddings` takes strategies' embeddings from; any
# other value is the path of a .npy file f32[n, d] (one row per pool point).
EMBEDDING_SOURCES = ('model', 'pretrained')


def embedding_source(config) -> str:
  """`strategy_options.embeddings`: 'model' (default), 'pretrained' or a .npy path.

  `parse` reads it into `Settings`; so does jal.label, whose config has one
  `strategy` and no seeds.
  """
  return config.strategy_options.get('embeddings') or 'model'


def _validate_embedding_source(config) -> None:
  source = embedding_source(config)
  if source == 'pretrained' and not config.model.get('pretrained_path'):
    raise ValueError("strategy_options.embeddings='pretrained' needs config.model.pretrained_path")
  if source == 'pretrained' and config.model.get('stem') != 'imagenet':
    raise ValueError(
        "strategy_options.embeddings='pretrained' needs config.model.stem='imagenet' "
        "(the CIFAR stem's conv1 is not in the weights)"
    )
  if source in EMBEDDING_SOURCES:
    return
  if not str(source).endswith('.npy'):
    raise ValueError(
        f"unknown strategy_options.embeddings '{source}'; valid: "
        f"{', '.join(EMBEDDING_SOURCES)}, or the path of a .npy file"
    )
  if not os.path.isfile(source):
    raise FileNotFoundError(f'strategy_options.embeddings file not found: {source}')


def _float_fields(node, prefix: str = ''):
  """Yields (dotted name, value) of every float in a ConfigDict, within tuples too."""
  for name, value in node.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      yield from _float_fields(value, f'{prefix}{name}.')
    elif isinstance(value, (tuple, list)):
      yield from (
          (f'{prefix}{name}[{i}]', v)
          for i, v in enumerate(value)
          if isinstance(v, (float, np.floating))
      )
    elif isinstance(value, (float, np.floating)):
      yield f'{prefix}{name}', value


def check_finite(config) -> None:
  """Refuses a float field (data, model, train, strategy_options, ...) that is inf or nan."""
  for name, value in _float_fields(config):
    if not np.isfinite(value):
      raise ValueError(f'config.{name} must be finite, got {value}')


def validate(config) -> Settings:
  """Checks names and ranges that need no data, each chosen strategy's options included.

  Strategies check their own options first (their messages say what range a
  value must be in); `check_finite` then refuses any other float that is inf
  or nan, e.g. `train.learning_rate=inf`, which the range checks let through.

  Returns:
    The config's `Settings` (`parse`), for the loop.
  """
  _validate_embedding_source(config)
  names = _strategy_names(config)
  if not names:
    raise ValueError(
        'config.strategies is empty; valid: ' + ', '.join(sorted(strategies_lib.STRATEGIES))
    )
  for n in names:
    strategies_lib.get_strategy(n)
  if len(set(names)) != len(names):
    raise ValueError(f'config.strategies repeats a name: {names}')
  seeds = _seed_list(config)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'config.seeds must be a non-empty list of distinct ints, got {seeds}')
  if config.data.name not in data_lib.DATASETS:
    raise ValueError(
        f"unknown dataset '{config.data.name}'; valid: {', '.join(sorted(data_lib.DATASETS))}"
    )
  if config.model.name not in models.MODELS:
    raise ValueError(
        f"unknown model '{config.model.name}'; valid: {', '.join(sorted(models.MODELS))}"
    )
  for field in ('query_size', 'warmup_size', 'num_rounds', 'eval_batch_size'):
    _positive(field, config[field])
  tc = config.train
  for field in ('members', 'batch_size', 'epochs', 'learning_rate'):
    _positive(f'train.{field}', tc[field])
  _positive('train.min_steps', tc.min_steps, allow_zero=True)
  _positive('fit_checkpoint_seconds', config.get('fit_checkpoint_seconds', 0.0), allow_zero=True)
  _positive('train.weight_decay', tc.weight_decay, allow_zero=True)
  if config.get('sharding', 'auto') not in sharding.SETTINGS:
    raise ValueError(f"unknown sharding '{config.sharding}'; valid: {', '.join(sharding.SETTINGS)}")
  for field, valid in (
      ('optimizer', train.OPTIMIZERS),
      ('schedule', train.SCHEDULES),
      ('augment', train.AUGMENTATIONS),
      ('members_plan', ('auto',) + train.MEMBERS),
      ('dispatch', ('auto',) + train.DISPATCHES),
  ):
    if tc[field] not in valid:
      raise ValueError(f"unknown train.{field} '{tc[field]}'; valid: {', '.join(valid)}")
  if config.get('sharding', 'auto') == 'auto' and jax.device_count() > 1 and tc.dispatch == 'step':
    raise ValueError(
        f"train.dispatch='step' runs on one device; with {jax.device_count()} "
        "devices use 'program' or 'auto', or sharding='none'"
    )
  models.check_member_conv(config.model.name, config.model.get('member_conv'))
  models.conv_pool_form(config.model.get('conv_pool', 'auto'))
  path = config.model.get('pretrained_path')
  if path:
    if config.model.name != 'resnet18':
      raise ValueError(
          f"config.model.pretrained_path needs model 'resnet18', got '{config.model.name}'"
      )
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f'pretrained weights not found: {path} (a torchvision ResNet-18 '
          'state dict as .pth, .npz or .safetensors)'
      )
  for n in names:
    need = strategies_lib.get_strategy(n).min_members
    if tc.members < need:
      raise ValueError(f"strategy '{n}' needs train.members >= {need}, got {tc.members}")
  dropout = config.model.get('dropout', 0.0)
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'config.model.dropout must be in [0, 1), got {dropout}')
  for n in names:
    strategy = strategies_lib.get_strategy(n)
    if strategy.needs_dropout and not dropout > 0:
      raise ValueError(
          f"strategy '{n}' needs config.model.dropout > 0 (Monte Carlo dropout "
          f'passes), got {dropout}'
      )
    strategy.check_options(config.strategy_options)
  check_finite(config)
  return parse(config)


def validate_against_data(config, dataset: data_lib.Dataset) -> None:
  """Checks that the pool can hold the warmup set and every query."""
  n = int(dataset.x_train.shape[0])
  source = embedding_source(config)
  if source not in EMBEDDING_SOURCES:
    shape = np.load(source, mmap_mode='r').shape
    if len(shape) != 2 or shape[0] != n:
      raise ValueError(
          f'strategy_options.embeddings {source} has shape {shape}; it needs one '
          f'row per pool point, [{n}, d]'
      )
  if config.warmup_size > n:
    raise ValueError(f'config.warmup_size={config.warmup_size} is larger than the pool ({n})')
  total = config.warmup_size + config.num_rounds * config.query_size
  if total > n:
    raise ValueError(
        f'warmup_size + num_rounds * query_size = {total} is larger than the pool '
        f'({n}); lower config.num_rounds or config.query_size'
    )


def _with_defaults(d: dict, defaults: dict) -> dict:
  """`d` overlaid on `defaults`: fields absent from `d` take their default."""
  out = dict(defaults)
  for k, v in d.items():
    out[k] = (
        _with_defaults(v, defaults[k])
        if (isinstance(v, dict) and isinstance(defaults.get(k), dict))
        else v
    )
  return out


# Workdirs written before `train.members_plan` and `train.dispatch` hold one
# `train.loop`; each of its values is one pair of theirs.
_LOOP_AS_PLAN = {
    'auto': ('auto', 'auto'),
    'scan': ('vmap', 'program'),
    'map': ('in_turn', 'program'),
    'step': ('vmap', 'step'),
    'member_step': ('in_turn', 'step'),
}


def identity(config) -> dict:
  """The config as a plain dict, minus the fields that do not change results.

  Fields absent from `config` count as `base_config()`'s default, so a
  workdir written before a new field was added (with a default that keeps
  the old behaviour) is still recognised as the same experiment; a stored
  `train.loop` counts as the `members_plan` and `dispatch` it meant.
  """
  d = json.loads(config.to_json_best_effort(sort_keys=True))
  train_fields = d.get('train', {})
  if train_fields.get('loop') in _LOOP_AS_PLAN:
    train_fields['members_plan'], train_fields['dispatch'] = _LOOP_AS_PLAN[train_fields.pop('loop')]
  d = _with_defaults(d, json.loads(base_config().to_json_best_effort(sort_keys=True)))
  for k in _NON_IDENTITY:
    d.pop(k, None)
  # Normalise the spellings of the same strategy/seed lists.
  d['strategies'] = _strategy_names(config)
  d['seeds'] = _seed_list(config)
  return d


def diff(a: dict, b: dict, prefix='') -> str:
  """The first few fields that differ between two identity dicts."""
  out = []
  absent = '<absent>'
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, absent), b.get(k, absent)
    if isinstance(va, dict) and isinstance(vb, dict):
      sub = diff(va, vb, f'{prefix}{k}.')
      if sub:
        out.append(sub)
    elif va != vb:
      out.append(f'{prefix}{k}: {va!r} there vs {vb!r} now')
  return '; '.join(out[:3])


def _strategy_options() -> ml_collections.ConfigDict:
  """`config.strategy_options` at its defaults: every field the strategies declare.

  Each is a registered strategy's `options.Option` (`strategies.OPTIONS`),
  with its default, or a placeholder of its type where the default is None
  (unset). `embeddings` is the loop's own: where the embedding strategies
  take embeddings from, 'model' (member 0's, each round), 'pretrained'
  (model.pretrained_path's network, untrained) or a .npy path.
  """
  so = ml_collections.ConfigDict()
  so.embeddings = 'model'
  for name, option in strategies_lib.OPTIONS.items():
    so[name] = (
        ml_collections.config_dict.placeholder(option.kind)
        if option.default is None
        else option.default
    )
  return so


def base_config() -> ml_collections.ConfigDict:
  """Every field a jal experiment has, with defaults; configs/ override them."""
  placeholder = ml_collections.config_dict.placeholder
  c = ml_collections.ConfigDict()
  c.name = 'experiment'
  c.seed = 0  # root of every random stream
  c.seeds = (0, 1, 2)  # one run per seed and strategy
  c.strategies = ('random', 'coreset', 'ensembles')
  c.strategy_options = _strategy_options()
  c.data_dir = placeholder(str)  # else $JAL_DATA_DIR
  # Save a round's training in progress at most this often (0: every step);
  # fits with train.dispatch 'step' (the CPU default) only. Does not change results.
  c.fit_checkpoint_seconds = 600.0
  # 'auto': with several devices, split ensemble members and pools over them
  # (jal.sharding); 'none': one device.
  c.sharding = 'auto'
  c.data = ml_collections.ConfigDict({'name': 'gaussian_blobs'})
  c.model = ml_collections.ConfigDict(
      dict(
          name='mlp',
          compute_dtype='auto',  # bfloat16 on GPU/TPU, float32 on CPU
          dropout=0.0,  # rate in [0, 1); > 0 for MC dropout strategies
          hidden=placeholder(tuple),  # mlp
          stem=placeholder(str),  # resnet18: 'cifar' or 'imagenet'
          width=placeholder(int),  # resnet18: first-stage channels (64)
          pretrained_path=placeholder(str),  # resnet18: torchvision state dict
          # Convnets: how vmapped members' convolutions run, 'grouped' (XLA's
          # vmap), 'wgrad_in_turn' or 'in_turn' (jal.member_conv).
          member_conv='grouped',
          # lenet: how each convolution and its max-pool are computed: 'auto'
          # ('space_to_depth' on CPU, 'direct' elsewhere), 'direct' or
          # 'space_to_depth' (jal.models.ConvMaxPool). The same function.
          conv_pool='auto',
      )
  )
  c.warmup_size = 5
  c.query_size = 5
  c.num_rounds = 3
  c.eval_batch_size = 1000
  c.train = ml_collections.ConfigDict(
      dict(
          members=5,  # ensemble size
          batch_size=32,
          epochs=50,
          min_steps=0,  # more epochs while the labeled set is small
          optimizer='adam',
          learning_rate=1e-3,
          weight_decay=0.0,
          momentum=0.9,
          schedule='constant',
          augment='none',
          # How the members train (train.resolve_plan): 'vmap' or 'in_turn', and
          # 'program' (one compiled program per fit) or 'step' (one dispatch per
          # step, resumable mid-fit); 'auto' picks per backend and model.
          members_plan='auto',
          dispatch='auto',
      )
  )
  return c


def shrink_strategy_options(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:smoke` sizes of the strategies with their own training or search.

  VAAL's VAE, DAL's discriminator, DFAL's attacks, MC passes and BatchBALD's
  candidates shrink so that every strategy's smoke round takes seconds on a
  CPU; the algorithms are unchanged.
  """
  so = c.strategy_options
  so.vaal_steps = 50
  so.dal_steps = 50
  so.dfal_candidates = 100
  so.mc_samples = 8
  so.batch_bald_candidates = 100
  return c


def parse_arg(arg, valid=None, one_of=(), where='the config', one_of_default=True) -> set[str]:
  """`configs/x.py:low,smoke` -> {'low', 'smoke'}, checked against what the config takes.

  Args:
    arg: the text after the config file's ':' (None without one).
    valid: every arg the config takes; None: any (no check).
    one_of: args that exclude each other; the first is the default when none is
      given, unless `one_of_default` is False.
    where: the config file, for the message (a path; its last two parts are shown).
    one_of_default: whether the first of `one_of` is the default.

  Raises:
    ValueError: an arg not in `valid`, or two of `one_of`, in one line that lists `valid`.
  """
  args = {a.strip() for a in (arg or '').split(',') if a.strip()}
  if valid is None:
    return args
  name = os.path.join(*os.path.normpath(where).split(os.sep)[-2:])
  default = f'; {one_of[0]} if none' if one_of and one_of_default else ''
  accepted = ', '.join(valid) + (
      f' (at most one of {", ".join(one_of)}{default})' if one_of else ''
  )
  unknown = sorted(args - set(valid))
  if unknown:
    raise ValueError(
        f'unknown config arg{"s" if len(unknown) > 1 else ""} '
        f'{", ".join(repr(a) for a in unknown)} for {name}; valid: {accepted}'
    )
  both = [a for a in one_of if a in args]
  if len(both) > 1:
    raise ValueError(
        f'config args {" and ".join(repr(a) for a in both)} of {name} exclude each '
        f'other; valid: {accepted}'
    )
  return args


def lenet_mnist_config(c: ml_collections.ConfigDict, args: set[str]) -> ml_collections.ConfigDict:
  """The study's MNIST recipe shared by the MNIST configs.

  LeNet, a 5-member ensemble, Adam at 1e-3, batch 64, 20 epochs and at least
  300 steps per round, scored in chunks of 1,000 (they fit a 2-core CPU's
  caches better than 2,000: results/bench_cpu/vs_torch.jsonl, lenet_score_pool).
  `smoke` in args shrinks it to seconds on a CPU: 2,000 pool and 500 test
  images, seed 0, 2 rounds, 2 members, 2 epochs of at least 10 steps.
  """
  c.model.name = 'lenet'
  c.eval_batch_size = 1000
  c.train.members = 5
  c.train.batch_size = 64
  c.train.epochs = 20
  c.train.min_steps = 300
  c.train.learning_rate = 1e-3
  if 'smoke' in args:
    shrink_strategy_options(c)
    c.name += '_smoke'
    c.data.max_train = 2000
    c.data.max_test = 500
    c.seeds = (0,)
    c.num_rounds = 2
    c.train.members = 2
    c.train.epochs = 2
    c.train.min_steps = 10
  return c


def resnet_cifar_config(c: ml_collections.ConfigDict, args: set[str]) -> ml_collections.ConfigDict:
  """The study's chapter-4 recipe shared by the CIFAR configs.

  ResNet-18 with the CIFAR stem, SGD with Nesterov momentum and cosine decay,
  random crop + flip, a 5-member ensemble. `pretrained` in args switches to
  the ImageNet stem and expects `--config.model.pretrained_path`. `smoke`
  shrinks everything to seconds on a CPU: a width-8 ResNet-18 (or width 64
  when pretrained, since the weights fix it), 2 members, a 300-image pool.
  """
  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width = 64
  c.train.members = 5
  c.train.batch_size = 128
  c.train.epochs = 50
  c.train.min_steps = 500
  c.train.optimizer = 'sgd'
  c.train.learning_rate = 0.05
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4
  c.train.schedule = 'cosine'
  c.train.augment = 'crop_flip'
  c.eval_batch_size = 1000
  if 'pretrained' in args:
    c.name += '_pretrained'
    c.model.stem = 'imagenet'
    c.train.learning_rate = 0.01
  if 'smoke' in args:
    shrink_strategy_options(c)
    c.name += '_smoke'
    c.data.max_train = 300
    c.data.max_test = 100
    c.seeds = (0,)
    c.num_rounds = 2
    c.train.members = 2
    c.train.batch_size = 16
    c.train.epochs = 1
    c.train.min_steps = 4
    c.eval_batch_size = 100
    if 'pretrained' not in args:
      c.model.width = 8
  return c
