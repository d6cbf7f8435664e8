r"""Diabetic retinopathy, grade >= 2 vs rest at 1:19, ImageNet-pretrained
ResNet-18: the study's Section 4.4.2, Figures 4.7 and 4.8 and the
retinopathy row of Table 4.2.

The Kaggle images are resized on load (and cached as one .npz); grades 2-4
(moderate to proliferative DR) are the minority class, downsampled in the
training pool to 5% of it. The metric is the minority class's average
precision. Query (= warmup) 20, 10 selections.

    python -m jal.main --config=configs/retinopathy.py --workdir=W \
        --config.data_dir=/data --config.model.pretrained_path=/weights/resnet18.pth

Data: `<data_dir>/diabetic_retinopathy/trainLabels.csv` and `train/*.jpeg`
(Kaggle's layout; `retinopathy_solution.csv` and `test/` give the test split,
else 20% of the labeled images are held out), or a prepared
tensorflow-datasets `diabetic_retinopathy_detection`. Runtime: `:smoke` 31-38 s
on the 2-core CPU on tiny images the tests make (measured in test runs); the full run is meant for a
GPU.
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, valid=('smoke',), where=__file__) | {'pretrained'}
  c = config_lib.base_config()
  c.name = 'retinopathy'
  c.data = dict(
      name='retinopathy',
      image_size=224,
      positive_classes=(2, 3, 4),
      minority_fraction=0.05,
      imbalanced_split='train',
  )
  c.query_size = 20
  c.warmup_size = 20
  c.num_rounds = 10
  c = config_lib.resnet_cifar_config(c, args)
  c.name = 'retinopathy_smoke' if 'smoke' in args else 'retinopathy'
  c.train.epochs = 30
  c.train.batch_size = 64
  c.eval_batch_size = 256
  if 'smoke' in args:
    c.data.image_size = 32
    c.data.max_train = 60
    c.data.max_test = 20
    c.warmup_size = 10
    c.query_size = 10
    c.train.batch_size = 8
    c.train.epochs = 1
    c.eval_batch_size = 20
  return c
