r"""Imbalanced CIFAR-10, car vs rest at 1:19: the study's Section 4.4.1,
Figures 4.4 and 4.5 and the CIFAR-10 rows of Table 4.2.

automobile (1) and truck (9) are the positive (minority) class, the other
eight classes negative; the positives of the training pool are downsampled,
deterministically per seed, so they make up 5% of it (40,000 negatives, 2,105
positives). The test set keeps its natural 1:4 ratio. The metric is the
average precision of the minority class; `minority_fraction_queried` records
the share of positives among each round's queries. Query (= warmup) 50, 10
selections. `:pretrained` starts from ImageNet weights
(`--config.model.pretrained_path=...`).

    python -m jal.main --config=configs/imbalance.py --workdir=W
    python -m jal.main --config=configs/imbalance.py:pretrained --workdir=W \
        --config.model.pretrained_path=/weights/resnet18.safetensors

Build another imbalanced task with --config.data.positive_classes,
--config.data.minority_fraction and --config.data.imbalanced_split.

Runtime: `:smoke` 32-55 s on the 2-core CPU (measured in test runs, with
other jobs on the machine). On an NVIDIA H200 (bfloat16), one
round's 5-member ensemble (500 steps) trains in 10.4 s; pool scoring and
selection take well under a second on a 12,641-image pool (a CIFAR-10 subset:
results/imbalance_h200_subset). The full 42,105-image pool was not timed.
On the 2-core CPU (members in turn, one dispatch per step: see train.Plan)
one ResNet-18 member step at batch 128 took 4.2 s with nothing else
running (146 steps in 10.3 min; 5-9 s with other jobs), so one round's
5 x 500 steps need about 3 hours there; round 0 on the full 42,105-image
pool was run on that CPU (results/imbalance_cpu): evaluation 7.1 min,
pool scoring 31 min (about 113 member-images/s), selection 0.45 s, so about
3.5 h per round. Such a fit saves its progress every `fit_checkpoint_seconds`
(600 s), so a CPU run can be stopped and resumed at any time and ends with
the results of an uninterrupted one (that run was resumed three times).
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, valid=('pretrained', 'smoke'), where=__file__)
  c = config_lib.base_config()
  c.name = 'imbalance'
  c.data = dict(name='cifar10', positive_classes=(1, 9), minority_fraction=0.05,
                imbalanced_split='train')
  c.query_size = 50
  c.warmup_size = 50
  c.num_rounds = 10
  return config_lib.resnet_cifar_config(c, args)
