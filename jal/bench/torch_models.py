r"""jal's models, recipes and MNIST loop in plain PyTorch: the other side of
`python -m jal.bench --vs=torch` (timed by `jal.bench.torch_cases`).

Needs PyTorch (`pip install -e ".[bench]"`); only jal.bench.torch_cases
imports this module. The PyTorch side is written as a PyTorch toolkit would
write it: eager modules, members trained one after another, each from its own
shuffle, batches gathered from uint8 tensors held in memory and normalised
(and for ResNet-18 augmented) per batch with torch ops,
`torch.inference_mode()` for every forward pass that needs no gradient, and
every model built for the memory formats 'contiguous' (PyTorch's default) and
'channels_last'.

What is the same on both sides:
  models      LeNet (conv 6@5x5 SAME, pool, conv 16@5x5 VALID, pool, 120, 84,
              classes) and ResNet-18 with the CIFAR stem and jal's widths;
              equal parameter counts, and equal logits given jal's weights
              (`load_flax_variables`; tests/test_bench_torch.py).
  BatchNorm   flax momentum m (running = m * running + (1 - m) * batch) is
              torch momentum 1 - m; eps 1e-5. One difference: torch updates
              the running variance with the unbiased batch variance, flax
              with the biased one (a factor n / (n - 1), n = batch * h * w).
  optimisers  MNIST recipe: Adam, lr 1e-3 (optax's defaults = torch's).
              CIFAR recipe: SGD lr 0.05, momentum 0.9, Nesterov, weight decay
              5e-4 added to the gradient (optax `add_decayed_weights` before
              `sgd` is torch's `weight_decay`), cosine over the fit's steps.
  inputs      (x / 255 - mean) / std from uint8, on the fly; crop_flip: a
              random crop of the 4-pixel zero-padded image, then a random
              horizontal flip.
  loss        mean cross-entropy over the valid rows of a batch.
  data        the same numpy arrays (random uint8 images from the same seeds;
              MNIST through `jal.data`).
Random numbers differ: each side draws its own init, shuffles and crops.
`run_round` runs jal's protocol exactly: batches of B rows even with 10
labeled (cycled, the filler masked out of the loss), max(epochs, min_steps)
steps, a check pass over the labeled set, the test set and the whole pool
scored in chunks of eval_batch_size.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[2]
MNIST_CONFIG = REPO / 'configs' / 'mnist.py'

FORMATS = ('contiguous', 'channels_last')
_MEMORY_FORMATS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}

# jal.data's constants, repeated so that this module needs no jal import.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# jal.resnet's BatchNorm: flax momentum 0.9 is torch momentum 0.1.
BN_MOMENTUM_FLAX, BN_EPSILON = 0.9, 1e-5


def default_threads() -> int:
  """The CPUs this process may run on, at most 32 (eager small-batch ops gain
  nothing from more threads)."""
  try:
    n = len(os.sched_getaffinity(0))
  except AttributeError:
    n = os.cpu_count() or 1
  return max(1, min(n, 32))


def set_threads(threads: int | None) -> int:
  """Sets PyTorch's intra-op threads (`default_threads()` if None); returns them."""
  torch.set_num_threads(threads or default_threads())
  return torch.get_num_threads()


# --------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------


class LeNet(nn.Module):
  """jal.models.LeNet in PyTorch: `forward(x f32[b, c, h, w]) -> (logits, embedding)`."""

  def __init__(self, num_classes: int = 10, image_shape=(28, 28, 1)):
    super().__init__()
    h, w, c = image_shape
    self.conv1 = nn.Conv2d(c, 6, 5, padding='same')
    self.conv2 = nn.Conv2d(6, 16, 5)
    self.feature_shape = (16, (h // 2 - 4) // 2, (w // 2 - 4) // 2)  # c, h, w after pool 2
    self.fc1 = nn.Linear(math.prod(self.feature_shape), 120)
    self.fc2 = nn.Linear(120, 84)
    self.fc3 = nn.Linear(84, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = F.relu(self.fc1(x.flatten(1)))
    emb = F.relu(self.fc2(x))
    return self.fc3(emb), emb


class BasicBlock(nn.Module):
  """torchvision's BasicBlock, with jal.resnet's BatchNorm settings."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    bn = lambda c: nn.BatchNorm2d(c, eps=BN_EPSILON, momentum=1 - BN_MOMENTUM_FLAX)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = bn(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = bn(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
  """jal.resnet.ResNet18(stem='cifar', width) in PyTorch, torchvision's layout and init.

  `forward(x f32[b, c, 32, 32]) -> (logits, embedding f32[b, 8 * width])`.
  """

  def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3):
    super().__init__()
    widths = [width * k for k in (1, 2, 4, 8)]
    self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width, eps=BN_EPSILON, momentum=1 - BN_MOMENTUM_FLAX)
    cin = width
    for i, cout in enumerate(widths):
      stride = 1 if i == 0 else 2
      self.add_module(
          f'layer{i + 1}', nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
      )
      cin = cout
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    emb = x.mean(dim=(2, 3))
    return self.fc(emb), emb


def load_flax_variables(model: nn.Module, variables) -> nn.Module:
  """Copies jal's flax variables (one member: {'params', ['batch_stats']}) into `model`.

  Conv kernels HWIO -> OIHW, dense kernels [in, out] -> [out, in]; LeNet's fc1
  also reorders its inputs, since flax flattens [h, w, c] and torch [c, h, w].
  Returns `model`.
  """
  flat = {}

  def walk(tree, path):
    for k, v in tree.items():
      if isinstance(v, dict) or hasattr(v, 'items'):
        walk(v, path + (k,))
      else:
        flat[path + (k,)] = np.asarray(v, np.float32)

  walk(dict(variables), ())
  state = {}
  for path, value in flat.items():
    name = (_lenet_name if isinstance(model, LeNet) else _resnet_name)(path)
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      if name == 'fc1.weight':
        c, h, w = model.feature_shape
        value = value.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
      value = value.T
    state[name] = torch.tensor(value)
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith('num_batches_tracked')]
  if missing or unexpected:
    raise ValueError(f'load_flax_variables: missing {missing}, unexpected {unexpected}')
  return model


def _lenet_name(path) -> str:
  col, module, leaf = path
  del col
  name = {
      'Conv_0': 'conv1',
      'Conv_1': 'conv2',
      'Dense_0': 'fc1',
      'Dense_1': 'fc2',
      'Dense_2': 'fc3',
  }[module]
  return f'{name}.{"weight" if leaf == "kernel" else "bias"}'


def _resnet_name(path) -> str:
  col, *modules, leaf = path
  parts = []
  for m in modules:
    if m.startswith('layer'):
      stage, _, block = m[len('layer') :].partition('_')
      parts += [f'layer{stage}', block]
    else:
      parts.append({'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(m, m))
  leaf = {
      ('params', 'kernel'): 'weight',
      ('params', 'scale'): 'weight',
      ('params', 'bias'): 'bias',
      ('batch_stats', 'mean'): 'running_mean',
      ('batch_stats', 'var'): 'running_var',
  }[(col, leaf)]
  return '.'.join(parts + [leaf])


# --------------------------------------------------------------------------
# Recipes: model, optimiser, schedule, inputs, batch.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A model and how jal's config trains it."""

  model: str  # 'lenet' or 'resnet18'
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  optimizer: str  # 'adam' or 'sgd' (Nesterov, decay added to the gradient)
  learning_rate: float
  batch_size: int
  schedule: str = 'constant'  # or 'cosine' over the fit's steps
  augment: str = 'none'  # or 'crop_flip'
  weight_decay: float = 0.0
  momentum: float = 0.9
  width: int = 64  # resnet18
  num_classes: int = 10


def lenet_mnist(**overrides) -> Recipe:
  """configs/mnist.py's recipe: LeNet, Adam 1e-3, batch 64."""
  return dataclasses.replace(
      Recipe('lenet', (28, 28, 1), MNIST_MEAN, MNIST_STD, 'adam', 1e-3, 64), **overrides
  )


def resnet_cifar(**overrides) -> Recipe:
  """The CIFAR recipe of jal.bench.cases.workload: ResNet-18, SGD 0.05 Nesterov + decay
  5e-4, cosine, crop_flip, batch 128."""
  return dataclasses.replace(
      Recipe(
          'resnet18',
          (32, 32, 3),
          CIFAR10_MEAN,
          CIFAR10_STD,
          'sgd',
          0.05,
          128,
          'cosine',
          'crop_flip',
          weight_decay=5e-4,
          momentum=0.9,
      ),
      **overrides,
  )


def build_model(recipe: Recipe, memory_format: str = 'contiguous', seed: int | None = None):
  """A fresh model in `memory_format`, initialised from `seed` (None: the global RNG)."""

  def make():
    if recipe.model == 'lenet':
      return LeNet(recipe.num_classes, recipe.image_shape)
    if recipe.model == 'resnet18':
      return ResNet18(recipe.num_classes, recipe.width, recipe.image_shape[-1])
    raise ValueError(f"unknown model '{recipe.model}'; valid: lenet, resnet18")

  if seed is None:
    model = make()
  else:
    with torch.random.fork_rng(devices=[]):
      torch.manual_seed(seed)
      model = make()
  return model.to(memory_format=_MEMORY_FORMATS[memory_format])


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
  """jal.train.lr_factor: 1, or 0.5 * (1 + cos(pi * step / total)) for 'cosine'."""
  if schedule == 'constant':
    return 1.0
  if schedule == 'cosine':
    return 0.5 * (1.0 + math.cos(math.pi * min(max(step / max(total_steps, 1), 0.0), 1.0)))
  raise ValueError(f"unknown schedule '{schedule}'; valid: constant, cosine")


def make_optimizer(recipe: Recipe, model: nn.Module, total_steps: int):
  """(optimizer, LambdaLR scheduler to step once per step) of the recipe."""
  if recipe.optimizer == 'adam':
    opt = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
  elif recipe.optimizer == 'sgd':
    opt = torch.optim.SGD(
        model.parameters(),
        lr=recipe.learning_rate,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
  else:
    raise ValueError(f"unknown optimizer '{recipe.optimizer}'; valid: adam, sgd")
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: lr_factor(recipe.schedule, step, total_steps)
  )
  return opt, sched


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
  """Random crop of the zero-padded image, then random horizontal flip.

  x: u8[b, h, w, c] (as stored) -> u8[b, h, w, c]. Zero is black, as jal pads
  on the 0-1 scale before normalising.
  """
  b, h, w, _ = x.shape
  padded = F.pad(x, (0, 0, pad, pad, pad, pad))
  offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
  flip = torch.rand(b, generator=generator) < 0.5
  rows = offsets[:, :1] + torch.arange(h)
  cols = offsets[:, 1:] + torch.arange(w)
  cols = torch.where(flip[:, None], cols.flip(1), cols)
  return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def to_inputs(
    x: torch.Tensor, recipe: Recipe, memory_format: str, generator: torch.Generator | None = None
) -> torch.Tensor:
  """Stored u8[b, h, w, c] -> normalised f32[b, c, h, w] in `memory_format`.

  Augmented per the recipe when a `generator` is given (training batches).
  """
  if generator is not None and recipe.augment == 'crop_flip':
    x = crop_flip(x, generator)
  x = x.permute(0, 3, 1, 2).contiguous(memory_format=_MEMORY_FORMATS[memory_format])
  mean = torch.tensor(recipe.mean).view(1, -1, 1, 1)
  std = torch.tensor(recipe.std).view(1, -1, 1, 1)
  return (x.float() / 255.0 - mean) / std


def train_step(model, opt, sched, x, y, mask=None) -> torch.Tensor:
  """One step on normalised x: mean cross-entropy over the rows of `mask` (all if None)."""
  logits, _ = model(x)
  if mask is None:
    loss = F.cross_entropy(logits, y)
  else:
    w = mask.float()
    loss = (F.cross_entropy(logits, y, reduction='none') * w).sum() / w.sum().clamp_min(1.0)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  sched.step()
  return loss.detach()


def epoch_batches(num_labeled: int, batch_size: int, generator: torch.Generator):
  """An epoch's (positions i64[steps, B] into the labeled set, mask bool[steps, B]).

  As jal's `_epoch_batches`: a fresh random order, the last batch (the only
  one, when fewer than B are labeled) filled by cycling through it again,
  the filler rows masked out of the loss.
  """
  steps = max(1, math.ceil(num_labeled / batch_size))
  order = torch.randperm(num_labeled, generator=generator)
  positions = torch.arange(steps * batch_size)
  return (
      order[positions % num_labeled].view(steps, batch_size),
      (positions < num_labeled).view(steps, batch_size),
  )


def epochs_for(num_labeled: int, batch_size: int, epochs: int, min_steps: int) -> int:
  """jal.train.epochs_for: `epochs`, or more to reach `min_steps` steps."""
  return max(epochs, math.ceil(min_steps / max(1, math.ceil(num_labeled / batch_size))))


def fit_members(
    recipe: Recipe,
    members: int,
    x: torch.Tensor,
    y: torch.Tensor,
    labeled: torch.Tensor,
    epochs: int,
    memory_format: str = 'contiguous',
    seed: int = 0,
) -> list[nn.Module]:
  """Trains `members` fresh models one after another on `x[labeled]`.

  Member i is initialised from seed `seed * 1000 + i` and draws its shuffles
  and crops from its own generator. Full batches use the plain mean loss, a
  batch with filler rows (`epoch_batches`) the masked mean.

  Args:
    recipe: model, optimiser, inputs and batch size.
    members: how many models.
    x: stored u8[n, h, w, c]; y: i64[n].
    labeled: i64[L], the indices into x to train on.
    epochs: passes over the labeled set, ceil(L / B) steps each.
    memory_format: 'contiguous' or 'channels_last', of the model and batches.
    seed: the root of the members' seeds.

  Returns:
    The trained models, in eval mode.
  """
  steps_per_epoch = max(1, math.ceil(len(labeled) / recipe.batch_size))
  out = []
  for i in range(members):
    member_seed = seed * 1000 + i
    generator = torch.Generator().manual_seed(member_seed)
    model = build_model(recipe, memory_format, member_seed).train()
    opt, sched = make_optimizer(recipe, model, steps_per_epoch * epochs)
    for _ in range(epochs):
      positions, masks = epoch_batches(len(labeled), recipe.batch_size, generator)
      for pos, mask in zip(positions, masks):
        idx = labeled[pos]
        xb = to_inputs(x[idx], recipe, memory_format, generator)
        train_step(model, opt, sched, xb, y[idx], None if bool(mask.all()) else mask)
    out.append(model.eval())
  return out


def predict(
    models: list[nn.Module],
    x: torch.Tensor,
    recipe: Recipe,
    chunk_size: int,
    memory_format: str = 'contiguous',
) -> torch.Tensor:
  """Every member's eval-mode logits on stored u8[n, h, w, c]: f32[m, n, classes].

  Members in turn, `chunk_size` images per forward pass, under inference_mode.
  """
  out = torch.empty(len(models), x.shape[0], recipe.num_classes)
  with torch.inference_mode():
    for i, model in enumerate(models):
      model.eval()
      for start in range(0, x.shape[0], chunk_size):
        xb = to_inputs(x[start : start + chunk_size], recipe, memory_format)
        out[i, start : start + chunk_size] = model(xb)[0]
  return out


def variation_ratio(logits: torch.Tensor) -> torch.Tensor:
  """jal.kernels.variation_ratio: f32[m, n, c] -> f32[n], 1 - modal votes / m."""
  m, _, c = logits.shape
  counts = F.one_hot(logits.argmax(-1), c).sum(0)
  return 1.0 - counts.max(-1).values.float() / m


def top_k_with_random_ties(
    scores: torch.Tensor, eligible: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
  """The k highest eligible scores, ties in a random order: i64[k]."""
  perm = torch.randperm(scores.shape[0], generator=generator)
  s = torch.where(eligible[perm], scores[perm], torch.tensor(-math.inf))
  return perm[torch.sort(s, descending=True, stable=True).indices[:k]]


# --------------------------------------------------------------------------
# One MNIST round, as `python -m jal.main` runs it.
# --------------------------------------------------------------------------


def load_mnist_config(arg: str = 'low'):
  """`get_config(arg)` of configs/mnist.py, as `--config=configs/mnist.py:<arg>` loads it."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location('jal_bench_mnist_config_torch', MNIST_CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def round_recipe(config, dataset) -> Recipe:
  """The Recipe of a jal config's `train` fields, for a LeNet on `dataset`."""
  tc = config.train
  if config.model.name != 'lenet':
    raise ValueError(
        f"round: the PyTorch side has LeNet's recipe, config has '{config.model.name}'"
    )
  return Recipe(
      'lenet',
      tuple(dataset.x_train.shape[1:]),
      tuple(dataset.mean),
      tuple(dataset.std),
      tc.optimizer,
      float(tc.learning_rate),
      int(tc.batch_size),
      tc.schedule,
      tc.augment,
      float(tc.weight_decay or 0.0),
      float(tc.momentum),
      num_classes=dataset.num_classes,
  )


def run_round(config, dataset, memory_format: str = 'contiguous', seed: int = 0) -> dict:
  """jal's loop for one seed of the 'ensembles' strategy, rounds 0..num_rounds.

  Each round: fit `train.members` fresh members on the labeled set (the
  epochs of `epochs_for`), check them on it (a forward pass, as jal's
  `check_trained`), evaluate them on the test set; then, but in the last
  round, score the whole pool with every member and label the `query_size`
  unlabeled points of highest variation ratio. Round 0 starts from
  `warmup_size` random points. Metrics by `jal.metrics`, on numpy.

  Returns:
    {'rounds': [per round: n_labeled, train_steps, train/eval/score/select
    seconds, accuracy], and the seconds of each phase summed over rounds}.
  """
  from jal import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  recipe = round_recipe(config, dataset)
  tc = config.train
  # Copies: jal.data's arrays may be read-only, which torch tensors cannot be.
  x_train, x_test = torch.from_numpy(np.array(dataset.x_train)), torch.from_numpy(
      np.array(dataset.x_test)
  )
  y_train = torch.from_numpy(np.asarray(dataset.y_train, np.int64))
  y_test = np.asarray(dataset.y_test)
  n = x_train.shape[0]
  generator = torch.Generator().manual_seed(seed)
  labeled = torch.zeros(n, dtype=torch.bool)
  labeled[torch.randperm(n, generator=generator)[: config.warmup_size]] = True
  rounds = []
  for r in range(config.num_rounds + 1):
    idx = labeled.nonzero().flatten()
    epochs = epochs_for(len(idx), recipe.batch_size, tc.epochs, tc.min_steps)
    t0 = time.perf_counter()
    members = fit_members(
        recipe, tc.members, x_train, y_train, idx, epochs, memory_format, seed * 100 + r
    )
    detail = metrics_lib.divergence(
        predict(members, x_train[idx], recipe, config.eval_batch_size, memory_format).numpy(),
        y_train[idx].numpy(),
        'labeled',
    )
    if detail:
      raise FloatingPointError(f'training diverged: round {r}: {detail}')
    t1 = time.perf_counter()
    test_logits = predict(members, x_test, recipe, config.eval_batch_size, memory_format).numpy()
    test = metrics_lib.classification_metrics(test_logits, y_test)
    t2 = t2s = time.perf_counter()
    if r < config.num_rounds:
      logits = predict(members, x_train, recipe, config.eval_batch_size, memory_format)
      t2s = time.perf_counter()
      picks = top_k_with_random_ties(
          variation_ratio(logits), ~labeled, config.query_size, generator
      )
      labeled[picks] = True
    t3 = time.perf_counter()
    rounds.append(
        {
            'round': r,
            'n_labeled': len(idx),
            'train_steps': epochs * math.ceil(len(idx) / recipe.batch_size),
            'train_seconds': t1 - t0,
            'eval_seconds': t2 - t1,
            'score_seconds': t2s - t2,
            'select_seconds': t3 - t2s,
            'accuracy': test['accuracy'],
            'member_accuracy': test['member_accuracy'],
        }
    )
  return {'rounds': rounds, **phase_sums(rounds), 'accuracy': rounds[-1]['accuracy']}


PHASES = ('train_seconds', 'eval_seconds', 'score_seconds', 'select_seconds')


def phase_sums(rounds: list[dict]) -> dict[str, float]:
  """Each phase's seconds summed over rounds, and their total `rounds_seconds`."""
  sums = {k: sum(r[k] for r in rounds) for k in PHASES}
  return {**sums, 'rounds_seconds': sum(sums.values())}
