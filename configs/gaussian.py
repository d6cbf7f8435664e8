r"""Two 2D Gaussian blobs with a 2-layer ReLU MLP: the study's Table 3.1.

5,000 pool points from two equal-variance isotropic 2D Gaussians (one class
each, centres 2 standard deviations apart, so the Bayes accuracy is 84.1%), a
held-out test set of 500, 5 warmup labels, 3 selections of 5, random vs
coreset vs ensembles over 3 seeds.

    python -m jal.main --config=configs/gaussian.py --workdir=/tmp/gauss

Runtime: seconds on a CPU, mostly compilation (results/gaussian/timings.jsonl).
`:smoke` shrinks it to a seconds-long run for tests.
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, valid=('smoke',), where=__file__)
  c = config_lib.base_config()
  c.name = 'gaussian'
  c.data = dict(name='gaussian_blobs', num_train=5000, num_test=500, separation=2.0, std=1.0)
  c.model.name = 'mlp'
  c.model.hidden = (64, 64)
  c.model.compute_dtype = 'float32'
  c.warmup_size = 5
  c.query_size = 5
  c.num_rounds = 3
  c.train.members = 5
  c.train.batch_size = 32
  c.train.epochs = 200
  c.train.learning_rate = 1e-2
  if 'smoke' in args:
    config_lib.shrink_strategy_options(c)
    c.data.num_train = 500
    c.data.num_test = 200
    c.seeds = (0, 1)
    c.num_rounds = 2
    c.train.members = 3
    c.train.epochs = 20
  return c
