"""Vmapped ensemble training, static-shape buckets, and inference."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import data, models, train

TRAIN = ml_collections.ConfigDict(dict(optimizer='adam', learning_rate=1e-2, weight_decay=0.0))


@pytest.fixture(scope='module')
def blobs():
  return data.gaussian_blobs(num_train=400, num_test=300, seed=0)


def _fit(model, tx, keys, ds, num, epochs=30, batch=16, spec=train.InputSpec()):
  capacity = train.capacity_for(num, batch)
  idx = np.zeros(capacity, np.int32)
  idx[:num] = np.arange(num)
  return train.fit_ensemble(model, tx, spec, batch, 'constant', 1e-2, keys,
                            jnp.asarray(ds.x_train), jnp.asarray(ds.y_train),
                            jnp.asarray(idx), jnp.int32(num), jnp.int32(epochs))


def test_vmapped_members_equal_single_runs(blobs):
  model = models.MLP(2, hidden=(16, 16))
  tx = train.make_optimizer(TRAIN)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  ens = _fit(model, tx, keys, blobs, num=50)
  for i in range(3):
    solo = jax.jit(functools.partial(train.fit, model, tx, train.InputSpec(), 16, 'constant', 1e-2))(
        keys[i], jnp.asarray(blobs.x_train), jnp.asarray(blobs.y_train),
        jnp.asarray(np.r_[np.arange(50), np.zeros(14)].astype(np.int32)), jnp.int32(50),
        jnp.int32(30))
    member = jax.tree.map(lambda a: a[i], ens.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 member, solo.params)
  # Members from different keys differ.
  p = ens.params['Dense_0']['kernel']
  assert not np.allclose(p[0], p[1])


def test_trained_ensemble_learns_the_blobs(blobs):
  model = models.MLP(2, hidden=(16, 16))
  tx = train.make_optimizer(TRAIN)
  ens = _fit(model, tx, jax.random.split(jax.random.PRNGKey(0), 2), blobs, num=200)
  logits = train.predict(model, train.InputSpec(), 128, True, ens, jnp.asarray(blobs.x_test))
  assert logits.logits.shape == (2, 300, 2) and logits.embeddings.shape == (300, 16)
  acc = (np.asarray(train.ensemble_probs(logits.logits)).argmax(-1) == blobs.y_test).mean()
  # Bayes accuracy at separation 2 is 84.1%; 200 labels get close.
  assert acc > 0.78


def test_capacity_buckets_and_epochs():
  assert [train.capacity_for(n, 32) for n in (1, 32, 33, 64, 65, 129, 600)] == [
      32, 32, 64, 64, 128, 256, 1024]
  assert train.epochs_for(10, 64, epochs=20, min_steps=300) == 300
  assert train.epochs_for(6000, 64, epochs=20, min_steps=300) == 20


def test_one_compilation_per_bucket(blobs):
  model = models.MLP(2, hidden=(7,))  # a model no other test compiles
  tx = train.make_optimizer(TRAIN)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  before = train.fit_ensemble._cache_size()
  for num, epochs in ((17, 3), (20, 5), (32, 2)):  # all in the 32-slot bucket
    _fit(model, tx, keys, blobs, num=num, epochs=epochs)
  assert train.fit_ensemble._cache_size() == before + 1
  _fit(model, tx, keys, blobs, num=40, epochs=2)  # next bucket: 64
  assert train.fit_ensemble._cache_size() == before + 2


def test_padding_and_capacity_do_not_change_training(blobs):
  # The same 20 labels in the 32-slot bucket and in a 128-slot vector give the
  # same model: empty slots are skipped, not trained on.
  model = models.MLP(2, hidden=(8,))
  tx = train.make_optimizer(TRAIN)
  keys = jax.random.split(jax.random.PRNGKey(1), 1)
  args = (jnp.asarray(blobs.x_train), jnp.asarray(blobs.y_train))
  outs = []
  for capacity in (32, 128):
    idx = np.full(capacity, 399, np.int32)  # padding points at a real sample
    idx[:20] = np.arange(20)
    outs.append(train.fit_ensemble(model, tx, train.InputSpec(), 16, 'constant', 1e-2, keys,
                                   *args, jnp.asarray(idx), jnp.int32(20), jnp.int32(4)))
  # Shuffling draws over the capacity, so orders differ; compare the loss
  # landscape instead: both runs took exactly 2 steps per epoch.
  assert int(outs[0].opt_state.inner_state[0].count[0]) == 8
  assert int(outs[1].opt_state.inner_state[0].count[0]) == 8


def test_epoch_batches_fill_padding_with_the_epochs_own_samples():
  # 11 labeled points (data indices 100..110) in a capacity of 16, batches of 4.
  idx = jnp.asarray(np.r_[np.arange(100, 111), np.zeros(5)], jnp.int32)
  batches, masks = train._epoch_batches(jax.random.PRNGKey(0), 3, idx, jnp.int32(11), 4)
  batches, masks = np.asarray(batches).ravel(), np.asarray(masks).ravel()
  # The first 11 slots: every labeled point once, shuffled; they alone count.
  assert sorted(batches[:11]) == list(range(100, 111))
  assert list(batches[:11]) != list(range(100, 111))
  np.testing.assert_array_equal(masks, np.arange(16) < 11)
  # The rest cycle through the same order again: real labeled images, never
  # the padding index 0 (which BatchNorm would otherwise average in).
  np.testing.assert_array_equal(batches[11:], batches[:5])
  # Fewer labeled points than a batch: the one batch holds them, cycled.
  batches, masks = train._epoch_batches(jax.random.PRNGKey(0), 0, idx, jnp.int32(3), 8)
  row = np.asarray(batches)[0]
  assert sorted(row[:3]) == [100, 101, 102] and list(row[3:]) == list(row[:3]) * 1 + list(row[:2])
  assert np.asarray(masks)[0].tolist() == [True] * 3 + [False] * 5


def test_crop_flip_keeps_content():
  x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
  out = train.crop_flip(jax.random.PRNGKey(0), x, pad=2)
  assert out.shape == x.shape
  # Every output pixel is either zero padding or a pixel of the same image.
  for b in range(2):
    vals = set(np.asarray(out[b]).ravel().tolist()) - {0.0}
    assert vals <= set(np.asarray(x[b]).ravel().tolist())


def test_lr_schedules():
  assert float(train.lr_factor('constant', 5, 10)) == 1.0
  np.testing.assert_allclose(float(train.lr_factor('cosine', 5, 10)), 0.5, atol=1e-6)
  np.testing.assert_allclose(float(train.lr_factor('cosine', 10, 10)), 0.0, atol=1e-6)


@pytest.mark.parametrize('model', [models.MLP(2, hidden=(8,)), models.LeNet(2)])
def test_stepwise_driver_equals_scan_driver(blobs, model):
  x = jnp.asarray(blobs.x_train)
  if isinstance(model, models.LeNet):  # tiny images from the blobs' coordinates
    x = jnp.tile(x[:, None, None, :1], (1, 12, 12, 1))
  tx = train.make_optimizer(TRAIN)
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  idx = np.zeros(32, np.int32)
  idx[:20] = np.arange(20)
  args = (model, tx, train.InputSpec(), 8, 'cosine', 1e-2, keys, x, jnp.asarray(blobs.y_train),
          jnp.asarray(idx), jnp.int32(20), jnp.int32(3))
  a = train.fit_ensemble(*args)
  for fit in (train.fit_ensemble_stepwise, train.fit_members_stepwise, train.fit_members_map):
    b = fit(*args)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), a.params,
                 b.params)
    assert b.opt_state.inner_state[0].count.tolist() == [9, 9]  # 3 steps x 3 epochs each
  # On CPU, 'auto' runs convnets' members in turn and vmaps the rest.
  expected = (train.fit_members_stepwise if isinstance(model, models.LeNet)
              else train.fit_ensemble_stepwise)
  assert train.get_fit_fn('auto', model, x[:1]) is expected
  assert train.get_fit_fn('auto') is train.fit_ensemble_stepwise


def test_auto_loop_on_accelerators(monkeypatch):
  from jal import resnet  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, 32, 32, 3))
  res, lenet = resnet.ResNet18(10, width=8), models.LeNet(10)
  assert train.members_in_turn_on_accelerators(res)
  assert not train.members_in_turn_on_accelerators(lenet)
  assert train.get_fit_fn('map') is train.fit_members_map
  # Measured on an H200 (results/bench_h200): ResNet-18 members train faster
  # in turn, LeNet and MLP members faster vmapped.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert train.get_fit_fn('auto', res, x) is train.fit_members_map
  assert train.get_fit_fn('auto', lenet, x) is train.fit_ensemble
  assert train.get_fit_fn('auto', models.MLP(2), x[:, 0, 0, :2]) is train.fit_ensemble


@pytest.fixture
def lenets(blobs):
  """3 freshly initialised LeNets and 50 12x12 one-channel inputs."""
  model = models.LeNet(3)
  x = jnp.tile(jnp.asarray(blobs.x_train)[:50, None, None, :1], (1, 12, 12, 1))
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  states = train.init_ensemble(model, train.make_optimizer(TRAIN), train.InputSpec(), keys, x)
  return model, x, states


def test_predict_one_by_one_equals_vmapped(lenets):
  model, x, states = lenets
  a = train.predict(model, train.InputSpec(), 16, True, states, x)
  b = train.predict(model, train.InputSpec(), 16, True, states, x, one_by_one=True)
  assert b.logits.shape == (3, 50, 3) and b.embeddings.shape == a.embeddings.shape
  np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=1e-5, atol=1e-6)


def test_predict_on_indices_equals_those_rows(lenets):
  model, x, states = lenets
  whole = train.predict(model, train.InputSpec(), 16, True, states, x)
  rows = np.array([49, 3, 17, 3, 0, 21, 8, 30, 44, 12, 5, 6, 7, 9, 10, 11, 13, 14], np.int32)
  for one_by_one in (False, True):  # 18 rows: two chunks of 16, the last one padded
    part = train.predict(model, train.InputSpec(), 16, True, states, x, one_by_one,
                         indices=rows)
    assert part.logits.shape == (3, 18, 3)
    np.testing.assert_allclose(part.logits, whole.logits[:, rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(part.embeddings, whole.embeddings[rows], rtol=1e-5, atol=1e-6)
