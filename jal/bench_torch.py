r"""jal against a plain PyTorch implementation of the same models, batches and optimisers.

    python -m jal.bench --vs=torch                     # through jal.bench (issue 16)
    python -m jal.bench_torch versus --size=small      # the same, without jal.bench
    python -m jal.bench_torch round --data_dir=DIR --out=/tmp/torch_round.json

Needs PyTorch (`pip install -e ".[bench]"`); nothing else in jal imports this
module. The PyTorch side is written as a PyTorch toolkit would write it:
eager modules, members trained one after another, each from its own shuffle,
batches gathered from uint8 tensors held in memory and normalised (and for
ResNet-18 augmented) per batch with torch ops, `torch.inference_mode()` for
every forward pass that needs no gradient, and each case built for the
memory formats 'contiguous' (PyTorch's default) and 'channels_last'.

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
A training call includes the members' init on both sides (jal's fit drivers
init and train in one call). The round runs jal's protocol exactly: batches
of B rows even with 10 labeled (cycled, the filler masked out of the loss),
max(epochs, min_steps) steps, a check pass over the labeled set, the test
set and the whole pool scored in chunks of eval_batch_size. Its process
imports jax too (the `jal` package does, for jal.data): its record's
`startup_seconds` says how long that took, `rounds_seconds` the rounds alone.

Cases (`CASES`); one call of a case is one timed unit of work:
  lenet_ensemble_train  M fresh LeNets (MNIST recipe), each trained for S
                        steps of batch B on its own shuffle of S * B images.
  resnet18_train        one fresh ResNet-18 (CIFAR recipe, crop_flip) trained
                        for S steps of batch B.
  resnet18_inference    logits of one ResNet-18 on B images (eval mode).
  lenet_score_pool      every member's logits over a pool of MNIST-shaped
                        images, in chunks of the eval batch size (what the
                        ensembles strategy scores).
  mnist_round           `python -m jal.main --config=configs/mnist.py:low`
                        with one seed, strategy ensembles, num_rounds=1,
                        against `python -m jal.bench_torch round`: whole
                        processes (imports, data loading, rounds 0 and 1).

`versus` alternates the sides (jal, torch contiguous, torch channels_last,
jal, ...) after one warm-up call each, and returns one record per case: each
side's min / median / max seconds and spread (max / min), the best torch
format, `ratio` = jal median / best torch median, and the ratios of the
alternated pairs. Every jal training and inference call is in `jal_cases`, so
a change of jal's training API changes that one function.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from absl import logging
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_CONFIG = REPO / 'configs' / 'mnist.py'

CASES = ('lenet_ensemble_train', 'resnet18_train', 'resnet18_inference', 'lenet_score_pool',
         'mnist_round')
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
    self.feature_shape = (16, (h // 2 - 4) // 2, (w // 2 - 4) // 2)   # c, h, w after pool 2
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
      self.add_module(f'layer{i + 1}', nn.Sequential(BasicBlock(cin, cout, stride),
                                                      BasicBlock(cout, cout, 1)))
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
  name = {'Conv_0': 'conv1', 'Conv_1': 'conv2', 'Dense_0': 'fc1', 'Dense_1': 'fc2',
          'Dense_2': 'fc3'}[module]
  return f'{name}.{"weight" if leaf == "kernel" else "bias"}'


def _resnet_name(path) -> str:
  col, *modules, leaf = path
  parts = []
  for m in modules:
    if m.startswith('layer'):
      stage, _, block = m[len('layer'):].partition('_')
      parts += [f'layer{stage}', block]
    else:
      parts.append({'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(m, m))
  leaf = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
          ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}[
              (col, leaf)]
  return '.'.join(parts + [leaf])


# --------------------------------------------------------------------------
# Recipes: model, optimiser, schedule, inputs, batch.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A model and how jal's config trains it."""
  model: str                      # 'lenet' or 'resnet18'
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  optimizer: str                  # 'adam' or 'sgd' (Nesterov, decay added to the gradient)
  learning_rate: float
  batch_size: int
  schedule: str = 'constant'      # or 'cosine' over the fit's steps
  augment: str = 'none'           # or 'crop_flip'
  weight_decay: float = 0.0
  momentum: float = 0.9
  width: int = 64                 # resnet18
  num_classes: int = 10


def lenet_mnist(**overrides) -> Recipe:
  """configs/mnist.py's recipe: LeNet, Adam 1e-3, batch 64."""
  return dataclasses.replace(
      Recipe('lenet', (28, 28, 1), MNIST_MEAN, MNIST_STD, 'adam', 1e-3, 64), **overrides)


def resnet_cifar(**overrides) -> Recipe:
  """The CIFAR recipe of jal.bench: ResNet-18, SGD 0.05 Nesterov + decay 5e-4, cosine,
  crop_flip, batch 128."""
  return dataclasses.replace(
      Recipe('resnet18', (32, 32, 3), CIFAR10_MEAN, CIFAR10_STD, 'sgd', 0.05, 128, 'cosine',
             'crop_flip', weight_decay=5e-4, momentum=0.9), **overrides)


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
    opt = torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum,
                          nesterov=True, weight_decay=recipe.weight_decay)
  else:
    raise ValueError(f"unknown optimizer '{recipe.optimizer}'; valid: adam, sgd")
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: lr_factor(recipe.schedule, step, total_steps))
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


def to_inputs(x: torch.Tensor, recipe: Recipe, memory_format: str,
              generator: torch.Generator | None = None) -> torch.Tensor:
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
  return (order[positions % num_labeled].view(steps, batch_size),
          (positions < num_labeled).view(steps, batch_size))


def epochs_for(num_labeled: int, batch_size: int, epochs: int, min_steps: int) -> int:
  """jal.train.epochs_for: `epochs`, or more to reach `min_steps` steps."""
  return max(epochs, math.ceil(min_steps / max(1, math.ceil(num_labeled / batch_size))))


def fit_members(recipe: Recipe, members: int, x: torch.Tensor, y: torch.Tensor,
                labeled: torch.Tensor, epochs: int, memory_format: str = 'contiguous',
                seed: int = 0) -> list[nn.Module]:
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


def predict(models: list[nn.Module], x: torch.Tensor, recipe: Recipe, chunk_size: int,
            memory_format: str = 'contiguous') -> torch.Tensor:
  """Every member's eval-mode logits on stored u8[n, h, w, c]: f32[m, n, classes].

  Members in turn, `chunk_size` images per forward pass, under inference_mode.
  """
  out = torch.empty(len(models), x.shape[0], recipe.num_classes)
  with torch.inference_mode():
    for i, model in enumerate(models):
      model.eval()
      for start in range(0, x.shape[0], chunk_size):
        xb = to_inputs(x[start:start + chunk_size], recipe, memory_format)
        out[i, start:start + chunk_size] = model(xb)[0]
  return out


def variation_ratio(logits: torch.Tensor) -> torch.Tensor:
  """jal.kernels.variation_ratio: f32[m, n, c] -> f32[n], 1 - modal votes / m."""
  m, _, c = logits.shape
  counts = F.one_hot(logits.argmax(-1), c).sum(0)
  return 1.0 - counts.max(-1).values.float() / m


def top_k_with_random_ties(scores: torch.Tensor, eligible: torch.Tensor, k: int,
                           generator: torch.Generator) -> torch.Tensor:
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
  spec = importlib.util.spec_from_file_location('jal_bench_torch_mnist_config', MNIST_CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def round_recipe(config, dataset) -> Recipe:
  """The Recipe of a jal config's `train` fields, for a LeNet on `dataset`."""
  tc = config.train
  if config.model.name != 'lenet':
    raise ValueError(f"round: the PyTorch side has LeNet's recipe, config has "
                     f"'{config.model.name}'")
  return Recipe('lenet', tuple(dataset.x_train.shape[1:]), tuple(dataset.mean),
                tuple(dataset.std), tc.optimizer, float(tc.learning_rate), int(tc.batch_size),
                tc.schedule, tc.augment, float(tc.weight_decay or 0.0), float(tc.momentum),
                num_classes=dataset.num_classes)


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
      np.array(dataset.x_test))
  y_train = torch.from_numpy(np.asarray(dataset.y_train, np.int64))
  y_test = np.asarray(dataset.y_test)
  n = x_train.shape[0]
  generator = torch.Generator().manual_seed(seed)
  labeled = torch.zeros(n, dtype=torch.bool)
  labeled[torch.randperm(n, generator=generator)[:config.warmup_size]] = True
  rounds = []
  for r in range(config.num_rounds + 1):
    idx = labeled.nonzero().flatten()
    epochs = epochs_for(len(idx), recipe.batch_size, tc.epochs, tc.min_steps)
    t0 = time.perf_counter()
    members = fit_members(recipe, tc.members, x_train, y_train, idx, epochs, memory_format,
                          seed * 100 + r)
    detail = metrics_lib.divergence(
        predict(members, x_train[idx], recipe, config.eval_batch_size, memory_format).numpy(),
        y_train[idx].numpy(), 'labeled')
    if detail:
      raise FloatingPointError(f'training diverged: round {r}: {detail}')
    t1 = time.perf_counter()
    test_logits = predict(members, x_test, recipe, config.eval_batch_size, memory_format).numpy()
    test = metrics_lib.classification_metrics(test_logits, y_test)
    t2 = t2s = time.perf_counter()
    if r < config.num_rounds:
      logits = predict(members, x_train, recipe, config.eval_batch_size, memory_format)
      t2s = time.perf_counter()
      picks = top_k_with_random_ties(variation_ratio(logits), ~labeled, config.query_size,
                                     generator)
      labeled[picks] = True
    t3 = time.perf_counter()
    rounds.append({'round': r, 'n_labeled': len(idx),
                   'train_steps': epochs * math.ceil(len(idx) / recipe.batch_size),
                   'train_seconds': t1 - t0, 'eval_seconds': t2 - t1,
                   'score_seconds': t2s - t2, 'select_seconds': t3 - t2s,
                   'accuracy': test['accuracy'], 'member_accuracy': test['member_accuracy']})
  return {'rounds': rounds, **_phase_sums(rounds), 'accuracy': rounds[-1]['accuracy']}


_PHASES = ('train_seconds', 'eval_seconds', 'score_seconds', 'select_seconds')


def _phase_sums(rounds: list[dict]) -> dict[str, float]:
  """Each phase's seconds summed over rounds, and their total `rounds_seconds`."""
  sums = {k: sum(r[k] for r in rounds) for k in _PHASES}
  return {**sums, 'rounds_seconds': sum(sums.values())}


def round_main(data_dir: str | None, config_arg: str, seed: int, memory_format: str,
               threads: int | None, out: str | None, launched_at: float | None) -> dict:
  """`python -m jal.bench_torch round`: loads MNIST (jal.data), runs `run_round` once
  with 'ensembles' and num_rounds=1, writes the summary to `out` (if set), returns it."""
  t_start = time.time()
  from jal import data as data_lib  # pylint: disable=g-import-not-at-top
  threads = set_threads(threads)
  config = load_mnist_config(config_arg)
  config.num_rounds = 1
  data_dir = data_lib.resolve_data_dir(data_dir or config.get('data_dir'))
  t0 = time.perf_counter()
  dataset = data_lib.load_dataset(config.data, data_dir=data_dir, seed=config.seed)
  load_s = time.perf_counter() - t0
  summary = run_round(config, dataset, memory_format, seed)
  summary.update(
      config=f'mnist:{config_arg}', strategy='ensembles', seed=seed, num_rounds=1,
      memory_format=memory_format, threads=threads, torch_version=torch.__version__,
      load_seconds=load_s, pool=int(dataset.x_train.shape[0]),
      test=int(dataset.x_test.shape[0]), members=int(config.train.members))
  if launched_at is not None:
    # From the parent's launch to here: interpreter start, imports (torch, and jax through
    # the jal package), config.
    summary['startup_seconds'] = t_start - launched_at
    summary['process_seconds'] = time.time() - launched_at
  if out:
    pathlib.Path(out).write_text(json.dumps(summary, sort_keys=True, indent=1) + '\n')
  return summary


def _resolve_data_dir(data_dir: str | None) -> str | None:
  return data_dir or os.environ.get('JAL_DATA_DIR') or None


def _run(cmd: list[str], what: str) -> float:
  """Runs `cmd` in the repository; returns its wall seconds, raises with its stderr's tail."""
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  if proc.returncode:
    tail = '\n'.join(proc.stderr.strip().splitlines()[-5:])
    raise RuntimeError(f'{what} exited {proc.returncode}: {" ".join(cmd)}\n{tail}')
  return time.perf_counter() - t0


def _torch_round_fn(s: Shapes, memory_format: str) -> Callable[[], dict]:
  """One call: `python -m jal.bench_torch round` as a process; its summary's figures."""
  def call():
    with tempfile.TemporaryDirectory(prefix='jal_torch_round_') as tmp:
      out = os.path.join(tmp, 'summary.json')
      data_dir = _resolve_data_dir(s.data_dir)
      _run([sys.executable, '-m', 'jal.bench_torch', 'round', f'--config={s.round_config}',
            *([f'--data_dir={data_dir}'] if data_dir else []), f'--seed={s.seed}',
            f'--memory_format={memory_format}', f'--threads={torch.get_num_threads()}',
            f'--out={out}', f'--launched_at={time.time()!r}'], 'the PyTorch round')
      summary = json.loads(pathlib.Path(out).read_text())
    return {k: summary[k] for k in (*_PHASES, 'rounds_seconds', 'accuracy', 'load_seconds',
                                    'startup_seconds')}
  return call


def _jal_round_fn(s: Shapes) -> Callable[[], dict]:
  """One call: `python -m jal.main` (configs/mnist.py:<round_config>, one seed, ensembles,
  num_rounds=1) in a fresh workdir, as a process; its timings.jsonl summed."""
  def call():
    with tempfile.TemporaryDirectory(prefix='jal_round_') as tmp:
      workdir = os.path.join(tmp, 'work')
      data_dir = _resolve_data_dir(s.data_dir)
      _run([sys.executable, '-m', 'jal.main', f'--config={MNIST_CONFIG}:{s.round_config}',
            f'--config.seeds={s.seed}', '--config.strategies=ensembles',
            '--config.num_rounds=1', *([f'--config.data_dir={data_dir}'] if data_dir else []),
            f'--workdir={workdir}'], 'the jal round')
      rounds = [json.loads(line) for line in
                pathlib.Path(workdir, 'timings.jsonl').read_text().splitlines()]
      metrics = [json.loads(line) for line in
                 pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]
    return {**_phase_sums(rounds), 'accuracy': metrics[-1]['accuracy']}
  return call


# --------------------------------------------------------------------------
# Shapes of the cases.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What one call of each case does (see the module docstring)."""
  members: int = 5
  lenet_batch: int = 64
  lenet_steps: int = 64          # per member and call
  resnet_width: int = 64
  resnet_batch: int = 128
  resnet_steps: int = 2          # per call
  pool: int = 50_000             # lenet_score_pool
  score_chunk: int = 1_000       # configs/mnist.py's eval_batch_size
  seed: int = 0
  round_config: str = 'low'      # configs/mnist.py:<this> for mnist_round
  data_dir: str | None = None    # MNIST for mnist_round; else $JAL_DATA_DIR


SMALL = Shapes(members=2, lenet_batch=16, lenet_steps=4, resnet_width=8, resnet_batch=8,
               resnet_steps=1, pool=256, score_chunk=128, round_config='smoke')


def shapes_for(p, data_dir: str | None = None) -> Shapes:
  """The Shapes of a jal.bench `Params`: its largest member count, batches, steps,
  ResNet width, pool, score chunk and seed; ResNet steps and round config by its size."""
  base = SMALL if p.size == 'small' else Shapes()
  return dataclasses.replace(
      base, members=max(p.members), lenet_batch=p.lenet_batch, lenet_steps=p.steps,
      resnet_width=p.resnet_width, resnet_batch=p.resnet_batch, pool=p.pool,
      score_chunk=p.score_chunk, seed=p.seed, data_dir=data_dir)


def random_images(seed: int, n: int, shape) -> np.ndarray:
  """u8[n, *shape] uniform noise, as jal.bench draws it."""
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def random_labels(seed: int, n: int, num_classes: int) -> np.ndarray:
  """i32[n], as jal.bench draws them."""
  return np.random.default_rng(seed + 1).integers(0, num_classes, (n,), dtype=np.int32)


def recipes(s: Shapes) -> dict[str, Recipe]:
  """The two recipes at the Shapes' batch sizes and width."""
  return {'lenet': lenet_mnist(batch_size=s.lenet_batch),
          'resnet18': resnet_cifar(batch_size=s.resnet_batch, width=s.resnet_width)}


def case_info(s: Shapes) -> dict[str, dict[str, Any]]:
  """Per case: what one call does, and the images it processes (None: a whole round)."""
  return {
      'lenet_ensemble_train': {
          'work': f'{s.members} fresh LeNets (MNIST recipe, Adam) x {s.lenet_steps} steps of '
                  f'batch {s.lenet_batch}, one member after another',
          'images': s.members * s.lenet_steps * s.lenet_batch},
      'resnet18_train': {
          'work': f'one fresh ResNet-18 (CIFAR stem, width {s.resnet_width}; SGD Nesterov, '
                  f'cosine, crop_flip) x {s.resnet_steps} steps of batch {s.resnet_batch}',
          'images': s.resnet_steps * s.resnet_batch},
      'resnet18_inference': {
          'work': f'eval-mode logits of one ResNet-18 (width {s.resnet_width}) on '
                  f'{s.resnet_batch} images',
          'images': s.resnet_batch},
      'lenet_score_pool': {
          'work': f'logits of {s.members} LeNets over {s.pool} images in chunks of '
                  f'{s.score_chunk}, members in turn',
          'images': s.members * s.pool},
      'mnist_round': {
          'work': f'one process: configs/mnist.py:{s.round_config}, seed {s.seed}, ensembles, '
                  'num_rounds=1 (fit, evaluate, score, select; fit, evaluate)',
          'images': None},
  }


def _check_cases(cases) -> tuple[str, ...]:
  unknown = [c for c in cases if c not in CASES]
  if unknown or not cases:
    raise ValueError(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
  return tuple(cases)


# --------------------------------------------------------------------------
# The two sides of each case.
# --------------------------------------------------------------------------


def torch_cases(s: Shapes, cases=CASES, formats=FORMATS) -> dict[str, dict[str, Callable]]:
  """{case: {memory format: zero-argument callable doing one call's work}}."""
  cases = _check_cases(cases)
  r = recipes(s)
  out = {}
  for case in cases:
    fns = {}
    for fmt in formats:
      if case == 'lenet_ensemble_train':
        fns[fmt] = _torch_train_fn(r['lenet'], s.members, s.lenet_steps, fmt, s.seed)
      elif case == 'resnet18_train':
        fns[fmt] = _torch_train_fn(r['resnet18'], 1, s.resnet_steps, fmt, s.seed)
      elif case == 'resnet18_inference':
        fns[fmt] = _torch_predict_fn(r['resnet18'], 1, s.resnet_batch, s.resnet_batch, fmt,
                                     s.seed)
      elif case == 'lenet_score_pool':
        fns[fmt] = _torch_predict_fn(r['lenet'], s.members, s.pool, s.score_chunk, fmt, s.seed)
      else:
        fns[fmt] = _torch_round_fn(s, fmt)
    out[case] = fns
  return out


def _torch_train_fn(recipe: Recipe, members: int, steps: int, fmt: str, seed: int):
  """One call: `members` fresh models, one epoch of `steps` steps over as many batches."""
  n = steps * recipe.batch_size
  x = torch.from_numpy(random_images(seed, n, recipe.image_shape))
  y = torch.from_numpy(random_labels(seed, n, recipe.num_classes)).long()
  labeled = torch.arange(n)
  return lambda: fit_members(recipe, members, x, y, labeled, 1, fmt, seed)


def _torch_predict_fn(recipe: Recipe, members: int, n: int, chunk: int, fmt: str, seed: int):
  """One call: every member's logits on n random images, `chunk` at a time."""
  x = torch.from_numpy(random_images(seed, n, recipe.image_shape))
  models = [build_model(recipe, fmt, seed * 1000 + i).eval() for i in range(members)]
  return lambda: predict(models, x, recipe, chunk, fmt)


def jal_cases(s: Shapes, cases=CASES) -> dict[str, Callable]:
  """ADAPTER: {case: zero-argument callable} of jal's side, through jal's training API.

  Every call into jal.train is in this function: when that API changes
  (e.g. to `train.fit(trainer, ..., plan=...)`), change `fit_fn` and
  `predict_fn` here. Training runs the driver jal's loop runs
  (`train.fit` with `train.resolve_plan`'s 'auto' plan: on a CPU, members in
  turn, one dispatch per step), inference `infer.predict` as the loop calls it
  (members in turn on a CPU); models built by `models.get_model` as configs do;
  each call ends with `jax.block_until_ready`. The same recipes, shapes and
  images as `torch_cases`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jal import infer  # pylint: disable=g-import-not-at-top
  from jal import models  # pylint: disable=g-import-not-at-top
  from jal import train  # pylint: disable=g-import-not-at-top

  cases = _check_cases(cases)

  def setup(recipe: Recipe, augment: bool):
    # As jal's configs build them: models.get_model resolves LeNet's conv_pool
    # form ('auto': space-to-depth on a CPU).
    model = models.get_model(ml_collections.ConfigDict(dict(
        name=recipe.model, compute_dtype='float32', width=recipe.width,
        stem='cifar' if recipe.model == 'resnet18' else None)), recipe.num_classes)
    spec = train.InputSpec(recipe.mean, recipe.std, recipe.augment if augment else 'none')
    trainer = train.Trainer.from_config(ml_collections.ConfigDict(dict(
        optimizer=recipe.optimizer, learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay, momentum=recipe.momentum,
        batch_size=recipe.batch_size, schedule=recipe.schedule)), model, spec)
    return trainer, train.resolve_plan(trainer=trainer, sample_x=np.zeros((1, *recipe.image_shape),
                                                                           np.float32))

  def fit_fn(recipe: Recipe, members: int, steps: int):
    trainer, plan = setup(recipe, True)
    n = steps * recipe.batch_size
    x = jax.device_put(random_images(s.seed, n, recipe.image_shape))
    y = jax.device_put(random_labels(s.seed, n, recipe.num_classes))
    idx = np.zeros((train.capacity_for(n, recipe.batch_size),), np.int32)
    idx[:n] = np.arange(n)
    idx = jnp.asarray(idx)
    keys = jax.random.split(jax.random.PRNGKey(s.seed), members)
    return lambda: jax.block_until_ready(train.fit(
        trainer, keys, x, y, idx, jnp.int32(n), jnp.int32(1), plan=plan))

  def predict_fn(recipe: Recipe, members: int, n: int, chunk: int):
    trainer, plan = setup(recipe, False)
    x = jax.device_put(random_images(s.seed, n, recipe.image_shape))
    states = train.init_ensemble(trainer, jax.random.split(jax.random.PRNGKey(s.seed), members),
                                 x)
    return lambda: jax.block_until_ready(infer.predict(
        trainer.model, trainer.spec, chunk, False, states, x,
        in_turn=infer.members_in_turn(plan)).logits)

  r = recipes(s)
  builders = {
      'lenet_ensemble_train': lambda: fit_fn(r['lenet'], s.members, s.lenet_steps),
      'resnet18_train': lambda: fit_fn(r['resnet18'], 1, s.resnet_steps),
      'resnet18_inference': lambda: predict_fn(r['resnet18'], 1, s.resnet_batch,
                                               s.resnet_batch),
      'lenet_score_pool': lambda: predict_fn(r['lenet'], s.members, s.pool, s.score_chunk),
      'mnist_round': lambda: _jal_round_fn(s),
  }
  return {case: builders[case]() for case in cases}


# --------------------------------------------------------------------------
# Alternated timing.
# --------------------------------------------------------------------------


def versus(jal_fns: dict[str, Callable], torch_fns: dict[str, dict[str, Callable]],
           repeats: int = 3, warmup: int = 1, info: dict[str, dict] | None = None) -> list[dict]:
  """Times every case both sides have, alternating; one record per case.

  Per case: `warmup` (at least 1) untimed calls of each side, then `repeats`
  rounds of one timed call of each side in turn (jal, torch in each memory
  format). A call that returns a dict of numbers (the round's phases) also
  gives `<side>_<key>`, the median of each over the repeats.

  Record fields: `case`, `vs` ('torch'); per side (`jal`, `torch_<format>`)
  `<side>_seconds` (median), `_seconds_min`, `_seconds_max`, `_spread`
  (max / min) and, given `info[case]['images']`, `_images_per_second`;
  `torch_best_format` and `torch_seconds` (the lower median); `ratio` = jal
  median / best torch median (> 1: jal slower); `pair_ratio_min/median/max`
  over the alternated pairs (jal / best format); `repeats`, `warmup`, `timing`;
  `loadavg_1min_before/after` the case (above the threads used: not alone).
  """
  info = info or {}
  records = []
  for case, jal_fn in jal_fns.items():
    if case not in torch_fns:
      continue
    sides = {'jal': jal_fn, **{f'torch_{fmt}': fn for fmt, fn in torch_fns[case].items()}}
    load_before = os.getloadavg()[0]
    for _ in range(max(1, warmup)):
      for fn in sides.values():
        fn()
    seconds = {side: [] for side in sides}
    details = {side: [] for side in sides}
    for _ in range(max(1, repeats)):
      for side, fn in sides.items():
        t0 = time.perf_counter()
        out = fn()
        seconds[side].append(time.perf_counter() - t0)
        if isinstance(out, dict):
          details[side].append(out)
    rec = versus_record(case, seconds, details, info.get(case, {}), max(1, warmup))
    # Another process on one of its cores slows multi-threaded PyTorch many times over (its
    # threads wait for each other at every op); the load says whether a run was alone.
    rec.update(loadavg_1min_before=load_before, loadavg_1min_after=os.getloadavg()[0],
               cpus=os.cpu_count())
    logging.info('%s', summary_line(rec))
    records.append(rec)
  return records


def versus_record(case: str, seconds: dict[str, list[float]], details: dict[str, list[dict]],
                  info: dict, warmup: int) -> dict[str, Any]:
  """The record of one case from each side's timed seconds (see `versus`)."""
  images = info.get('images')
  rec = {'case': case, 'vs': 'torch', **{k: v for k, v in info.items() if v is not None}}
  for side, ts in seconds.items():
    rec.update({f'{side}_seconds': statistics.median(ts), f'{side}_seconds_min': min(ts),
                f'{side}_seconds_max': max(ts), f'{side}_spread': max(ts) / min(ts)})
    if images:
      rec[f'{side}_images_per_second'] = images / statistics.median(ts)
    for key in sorted({k for d in details[side] for k, v in d.items()
                       if isinstance(v, (int, float))}):
      rec[f'{side}_{key}'] = statistics.median(d[key] for d in details[side] if key in d)
  torch_sides = [s for s in seconds if s != 'jal']
  best = min(torch_sides, key=lambda s: statistics.median(seconds[s]))
  pairs = [j / t for j, t in zip(seconds['jal'], seconds[best])]
  rec.update({
      'torch_best_format': best[len('torch_'):], 'torch_seconds': rec[f'{best}_seconds'],
      'ratio': rec['jal_seconds'] / rec[f'{best}_seconds'],
      'pair_ratio_min': min(pairs), 'pair_ratio_median': statistics.median(pairs),
      'pair_ratio_max': max(pairs), 'repeats': len(seconds['jal']), 'warmup': warmup,
      'timing': (f'wall seconds per call, sides alternated ({", ".join(seconds)}) for '
                 f'{len(seconds["jal"])} rounds after {warmup} warm-up call(s) each; jal calls '
                 'end with jax.block_until_ready'),
      'torch_version': torch.__version__, 'torch_threads': torch.get_num_threads()})
  return rec


def summary_line(rec: dict) -> str:
  """One line: the case, each side's median [min, max], the ratio and its pair range."""
  sides = [k[:-len('_seconds')] for k in rec if k.endswith('_seconds')
           and f'{k}_min' in rec]
  parts = [f'{s} {rec[f"{s}_seconds"]:.3g} s [{rec[f"{s}_seconds_min"]:.3g}, '
           f'{rec[f"{s}_seconds_max"]:.3g}]' for s in sides]
  return (f'{rec["case"]}: {"; ".join(parts)}; jal / torch ({rec["torch_best_format"]}) = '
          f'{rec["ratio"]:.2f}x (pairs {rec["pair_ratio_min"]:.2f}-{rec["pair_ratio_max"]:.2f})')


def run_versus(s: Shapes, cases=CASES, repeats: int = 3, warmup: int = 1,
               threads: int | None = None, formats=FORMATS) -> list[dict]:
  """`--vs=torch`: sets PyTorch's threads, builds both sides' cases and times them.

  Both sides run on the CPU in float32 (refused if JAX's backend is not the
  CPU). 'mnist_round' without MNIST (no `s.data_dir`, no $JAL_DATA_DIR)
  gives a record with `skipped` instead of times.
  """
  import jax  # pylint: disable=g-import-not-at-top
  cases = _check_cases(cases)
  if jax.default_backend() != 'cpu':
    raise ValueError(f"--vs=torch compares on the CPU; JAX's backend is "
                     f"{jax.default_backend()} (run with JAX_PLATFORMS=cpu)")
  threads = set_threads(threads)
  out = []
  if 'mnist_round' in cases and not _resolve_data_dir(s.data_dir):
    cases = tuple(c for c in cases if c != 'mnist_round')
    out.append({'case': 'mnist_round', 'vs': 'torch', 'skipped': 'no MNIST: pass --data_dir '
                'or set JAL_DATA_DIR'})
  if cases:
    jal_fns = jal_cases(s, cases)
    torch_fns = torch_cases(s, cases, formats)
    out = versus(jal_fns, torch_fns, repeats, warmup, case_info(s)) + out
  return [{**rec, 'torch_threads': threads, 'torch_device': 'cpu', 'compute_dtype': 'float32'}
          for rec in out]


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('data_dir', None, 'MNIST (jal.data layout); else $JAL_DATA_DIR.')
  flags.DEFINE_integer('threads', None, 'PyTorch intra-op threads (default: the CPUs this '
                       'process may use, at most 32).')
  flags.DEFINE_integer('seed', 0, 'Seed.')
  # round
  flags.DEFINE_string('config', 'low', 'round: configs/mnist.py:<this> (low, high, smoke).')
  flags.DEFINE_enum('memory_format', 'contiguous', FORMATS, 'round: memory format.')
  flags.DEFINE_string('out', None, 'round: write the JSON summary here.')
  flags.DEFINE_float('launched_at', None, 'round: time.time() when the parent started this '
                     'process, to time its startup.')
  # versus
  flags.DEFINE_enum('size', 'small', ('small', 'full'), 'versus: Shapes (small) or Shapes().')
  flags.DEFINE_list('cases', list(CASES), f'versus: cases ({", ".join(CASES)}).')
  flags.DEFINE_list('formats', list(FORMATS), 'versus: torch memory formats.')
  flags.DEFINE_integer('repeats', 3, 'versus: timed calls per side.')
  return flags.FLAGS


def _main(argv, flags_):
  if argv[1:] == ['round']:
    summary = round_main(flags_.data_dir, flags_.config, flags_.seed, flags_.memory_format,
                         flags_.threads, flags_.out, flags_.launched_at)
    logging.info('round: %s', {k: v for k, v in summary.items() if k != 'rounds'})
  elif argv[1:] == ['versus']:
    s = dataclasses.replace(SMALL if flags_.size == 'small' else Shapes(), seed=flags_.seed,
                            data_dir=flags_.data_dir)
    for rec in run_versus(s, flags_.cases, flags_.repeats, 1, flags_.threads,
                          tuple(flags_.formats)):
      print(json.dumps(rec, sort_keys=True), flush=True)
  else:
    raise ValueError(f'usage: python -m jal.bench_torch round|versus [flags], got {argv[1:]}')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(lambda argv: _main(argv, _FLAGS))
