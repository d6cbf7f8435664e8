r"""Labelling a folder of your own images: the default config of `jal.label`.

    python -m jal.label --images=DIR --labels=labels.csv --workdir=W --query=50
    python -m jal.label ... --config=configs/label.py:rgb
    python -m jal.label ... --config=configs/label.py:pretrained \
        --config.model.pretrained_path=/weights/resnet18.pth

Not a reproduction of the study: this is the model `jal.label` trains on
the labels you have, each call, to score the images you have not labeled.

- default (`:gray`): images read as 28x28 grayscale, a 5-member LeNet
  ensemble, Adam 1e-3, batches of 32, 10 epochs and at least 100 steps. For
  small grayscale images (digits, characters, icons).
- `:rgb`: 32x32 RGB, a 5-member ResNet-18 (CIFAR stem) with the study's
  CIFAR recipe (SGD, cosine decay, crop + flip). Meant for a GPU.
- `:pretrained`: 224x224 RGB, ImageNet-stem ResNet-18 fine-tuned from
  `--config.model.pretrained_path` (a torchvision state dict; never
  downloaded), normalised with ImageNet statistics. Meant for a GPU.
- `:smoke`: 2 members and 16 steps, for tests.

Validation (`config.validation`): with at least `holdout_min_labels` labels
and `min_per_class` of every labeled class, a stratified `holdout_fraction`
of the labels is held out; otherwise `folds`-fold stratified
cross-validation. The ensemble is then retrained on every label to score
the unlabeled images.

Validation runs on the labels you have. Labels chosen by an uncertainty
strategy are harder than a typical image, so after a few rounds the
estimate tends to be pessimistic.

Runtime on the 2-core CPU, default config, 1,000 MNIST PNGs, shared with
other jobs (load average 4-8), measured: 54-107 s per call with 50-150
labels (three cross-validation fits and the final fit of 5 LeNets, about
15 s each plus compilation); a call with no labels, or with nothing
changed, takes 1 s. On held-out MNIST this recipe matches the accuracy of
configs/mnist.py's (300 steps of 64) at about a quarter of its cost: 77%
with 100 random labels, 69% with 50 (5-member ensemble, 2,000 test
images). `:smoke` calls take 2-10 s (tests/test_label.py).
"""

import ml_collections

from jal import config_lib
from jal import data


def get_config(arg=None):
  args = config_lib.parse_arg(
      arg,
      valid=('gray', 'rgb', 'pretrained', 'smoke'),
      one_of=('gray', 'rgb', 'pretrained'),
      where=__file__,
  )
  placeholder = ml_collections.config_dict.placeholder
  base = config_lib.base_config()
  c = ml_collections.ConfigDict()
  c.name = 'label'
  c.seed = 0  # root of every random stream
  c.strategy = 'ensembles'  # --strategy overrides
  c.strategy_options = base.strategy_options
  c.query_size = 50  # --query overrides
  c.classes = placeholder(tuple)  # class names in order; else --classes or labels.csv
  c.eval_batch_size = 1000
  c.images = ml_collections.ConfigDict(
      dict(
          size=28,  # images are resized to size x size
          channels=1,  # 1: grayscale, 3: RGB
          mean=placeholder(tuple),  # per-channel, 0-1 scale; None: the folder's own
          std=placeholder(tuple),
          num_workers=4,  # decoding threads
      )
  )
  c.validation = ml_collections.ConfigDict(
      dict(
          holdout_fraction=0.2,
          holdout_min_labels=200,
          min_per_class=5,
          folds=3,
          confidence=0.95,
      )
  )
  c.model = base.model
  c.train = base.train
  c.model.name = 'lenet'
  c.train.members = 5
  c.train.batch_size = 32
  c.train.epochs = 10
  c.train.min_steps = 100
  c.train.learning_rate = 1e-3
  if 'rgb' in args or 'pretrained' in args:
    c = config_lib.resnet_cifar_config(c, args - {'smoke'})
    c.name = 'label'
    c.images.channels = 3
    c.images.size = 32
    c.eval_batch_size = 500
  if 'pretrained' in args:
    c.name = 'label_pretrained'
    c.images.size = 224
    c.images.mean = data.IMAGENET_MEAN
    c.images.std = data.IMAGENET_STD
    c.train.batch_size = 64
    c.eval_batch_size = 256
  if 'smoke' in args:
    c.name += '_smoke'
    c.train.members = 2
    c.train.batch_size = 32
    c.train.epochs = 1
    c.train.min_steps = 16
    c.eval_batch_size = 256
    if c.model.name == 'resnet18' and 'pretrained' not in args:
      c.model.width = 8
  return c
