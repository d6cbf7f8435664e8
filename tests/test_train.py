"""Ensemble training under every plan, plan resolution, static-shape buckets, inference."""

import functools
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import data, infer, models, train

TRAIN = ml_collections.ConfigDict(dict(optimizer='adam', learning_rate=1e-2, weight_decay=0.0))
PLANS = [train.Plan(m, d) for m in train.MEMBERS for d in train.DISPATCHES]


def _trainer(model, batch=16, schedule='constant', spec=train.InputSpec(), tx=None):
  return train.Trainer(model, tx or train.make_optimizer(TRAIN), spec, batch, schedule, 1e-2)


@pytest.fixture(scope='module')
def blobs():
  return data.gaussian_blobs(num_train=400, num_test=300, seed=0)


def _fit(model, tx, keys, ds, num, epochs=30, batch=16, spec=train.InputSpec()):
  capacity = train.capacity_for(num, batch)
  idx = np.zeros(capacity, np.int32)
  idx[:num] = np.arange(num)
  return train.fit(
      _trainer(model, batch, spec=spec, tx=tx),
      keys,
      jnp.asarray(ds.x_train),
      jnp.asarray(ds.y_train),
      jnp.asarray(idx),
      jnp.int32(num),
      jnp.int32(epochs),
      plan=train.Plan('vmap', 'program'),
  )


def test_vmapped_members_equal_single_runs(blobs):
  model = models.MLP(2, hidden=(16, 16))
  tx = train.make_optimizer(TRAIN)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  ens = _fit(model, tx, keys, blobs, num=50)
  for i in range(3):
    solo = jax.jit(functools.partial(train.fit_member, _trainer(model, tx=tx)))(
        keys[i],
        jnp.asarray(blobs.x_train),
        jnp.asarray(blobs.y_train),
        jnp.asarray(np.r_[np.arange(50), np.zeros(14)].astype(np.int32)),
        jnp.int32(50),
        jnp.int32(30),
    )
    member = jax.tree.map(lambda a: a[i], ens.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member, solo.params
    )
  # Members from different keys differ.
  p = ens.params['Dense_0']['kernel']
  assert not np.allclose(p[0], p[1])


def test_trained_ensemble_learns_the_blobs(blobs):
  model = models.MLP(2, hidden=(16, 16))
  tx = train.make_optimizer(TRAIN)
  ens = _fit(model, tx, jax.random.split(jax.random.PRNGKey(0), 2), blobs, num=200)
  logits = infer.predict(model, train.InputSpec(), 128, True, ens, jnp.asarray(blobs.x_test))
  assert logits.logits.shape == (2, 300, 2) and logits.embeddings.shape == (300, 16)
  acc = (np.asarray(infer.ensemble_probs(logits.logits)).argmax(-1) == blobs.y_test).mean()
  # Bayes accuracy at separation 2 is 84.1%; 200 labels get close.
  assert acc > 0.78


def test_capacity_buckets_and_epochs():
  assert [train.capacity_for(n, 32) for n in (1, 32, 33, 64, 65, 129, 600)] == [
      32,
      32,
      64,
      64,
      128,
      256,
      1024,
  ]
  assert train.epochs_for(10, 64, epochs=20, min_steps=300) == 300
  assert train.epochs_for(6000, 64, epochs=20, min_steps=300) == 20


def test_one_compilation_per_bucket(blobs):
  model = models.MLP(2, hidden=(7,))  # a model no other test compiles
  tx = train.make_optimizer(TRAIN)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  before = train._fit_program._cache_size()
  for num, epochs in ((17, 3), (20, 5), (32, 2)):  # all in the 32-slot bucket
    _fit(model, tx, keys, blobs, num=num, epochs=epochs)
  assert train._fit_program._cache_size() == before + 1
  _fit(model, tx, keys, blobs, num=40, epochs=2)  # next bucket: 64
  assert train._fit_program._cache_size() == before + 2


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
    outs.append(
        train.fit(
            _trainer(model, tx=tx),
            keys,
            *args,
            jnp.asarray(idx),
            jnp.int32(20),
            jnp.int32(4),
            plan=train.Plan('vmap', 'program'),
        )
    )
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


def _tiny_images(x):
  """f32[n, 2] blob coordinates -> f32[n, 12, 12, 1] images, for LeNet."""
  return jnp.tile(x[:, None, None, :1], (1, 12, 12, 1))


@pytest.mark.parametrize('model', [models.MLP(2, hidden=(8,)), models.LeNet(2)])
def test_every_plan_equals_fit_member_per_key(blobs, model):
  x = jnp.asarray(blobs.x_train)
  if isinstance(model, models.LeNet):
    x = _tiny_images(x)
  trainer = _trainer(model, batch=8, schedule='cosine')
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  idx = np.zeros(32, np.int32)
  idx[:20] = np.arange(20)
  data = (x, jnp.asarray(blobs.y_train), jnp.asarray(idx), jnp.int32(20), jnp.int32(3))
  solo = [jax.jit(train.fit_member, static_argnums=0)(trainer, k, *data) for k in keys]
  for plan in PLANS:
    states = train.fit(trainer, keys, *data, plan=plan)
    for i in range(2):
      jax.tree.map(
          lambda u, v, i=i: np.testing.assert_allclose(u[i], v, rtol=1e-4, atol=1e-5),
          states.params,
          solo[i].params,
      )
    assert states.opt_state.inner_state[0].count.tolist() == [9, 9]  # 3 steps x 3 epochs each


def test_resolve_plan_on_cpu(blobs):
  x = jnp.asarray(blobs.x_train)
  lenet, mlp = _trainer(models.LeNet(2)), _trainer(models.MLP(2, hidden=(8,)))
  # 'auto': one dispatch per step; convnets' members in turn, the rest vmapped.
  assert train.resolve_plan(trainer=lenet, sample_x=_tiny_images(x[:1])) == train.Plan(
      'in_turn', 'step'
  )
  assert train.resolve_plan(trainer=mlp, sample_x=x[:1]) == train.Plan('vmap', 'step')
  assert train.resolve_plan() == train.Plan('vmap', 'step')
  # Explicit values are kept; the other field still follows 'auto'.
  assert train.resolve_plan('vmap', 'program', lenet, _tiny_images(x[:1])) == train.Plan(
      'vmap', 'program'
  )
  assert train.resolve_plan('auto', 'program', lenet, _tiny_images(x[:1])) == train.Plan(
      'in_turn', 'program'
  )
  assert train.resolve_plan('in_turn', 'auto', mlp, x[:1]) == train.Plan('in_turn', 'step')
  with pytest.raises(
      ValueError, match=re.escape("unknown members 'scan'; valid: auto, vmap, " 'in_turn')
  ):
    train.resolve_plan('scan')
  with pytest.raises(
      ValueError, match=re.escape("unknown dispatch 'member_step'; valid: auto, " 'program, step')
  ):
    train.resolve_plan(dispatch='member_step')
  with pytest.raises(ValueError, match="members 'auto' on a CPU needs sample_x"):
    train.resolve_plan(trainer=lenet)


def test_resolve_plan_with_several_devices():
  four = types.SimpleNamespace(size=4)  # all resolve_plan reads of a mesh
  lenet = _trainer(models.LeNet(2))
  assert train.resolve_plan(trainer=lenet, mesh=four) == train.Plan('vmap', 'program', 4)
  with pytest.raises(
      ValueError, match="dispatch 'step' runs on one device; with 4 devices use 'program'"
  ):
    train.resolve_plan(dispatch='step', mesh=four)
  # A one-device mesh changes nothing.
  assert train.resolve_plan(
      trainer=_trainer(models.MLP(2)),
      sample_x=jnp.zeros((1, 2)),
      mesh=types.SimpleNamespace(size=1),
  ) == train.Plan('vmap', 'step')


def test_auto_plan_on_accelerators(monkeypatch):
  from jal import resnet  # pylint: disable=g-import-not-at-top

  x = jnp.zeros((1, 32, 32, 3))
  # Measured on an H200 (results/bench_h200): ResNet-18 members train faster
  # in turn, LeNet and MLP members faster vmapped; every fit is one program.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  for model, members in (
      (resnet.ResNet18(10, width=8), 'in_turn'),
      (models.LeNet(10), 'vmap'),
      (models.MLP(2), 'vmap'),
  ):
    assert train.resolve_plan(trainer=_trainer(model), sample_x=x) == train.Plan(members, 'program')
  assert train.resolve_plan() == train.Plan('vmap', 'program')


def test_plan_describes_itself_and_refuses_what_cannot_run():
  assert train.Plan('in_turn', 'step').describe() == (
      'members in turn, one dispatch per step, 1 device'
  )
  assert train.Plan('vmap', 'program', 4).describe() == (
      'members vmapped, one program per fit, split over 4 devices'
  )
  assert train.Plan().as_dict() == {'members': 'vmap', 'dispatch': 'program', 'devices': 1}
  with pytest.raises(ValueError, match=re.escape("unknown members 'map'; valid: vmap, in_turn")):
    train.Plan('map')
  with pytest.raises(ValueError, match="dispatch 'step' runs on one device; with 2 devices"):
    train.Plan('vmap', 'step', 2)


def test_fit_refuses_a_checkpoint_or_mesh_its_plan_cannot_use(blobs):
  args = (
      _trainer(models.MLP(2)),
      jax.random.split(jax.random.PRNGKey(0), 2),
      jnp.asarray(blobs.x_train),
      jnp.asarray(blobs.y_train),
      jnp.zeros(16, jnp.int32),
      jnp.int32(4),
      jnp.int32(1),
  )
  with pytest.raises(
      ValueError, match="a checkpoint needs dispatch 'step', the plan has 'program'"
  ):
    train.fit(*args, plan=train.Plan('vmap', 'program'), checkpoint=object())
  with pytest.raises(ValueError, match=r'the plan is for 1 device\(s\) but the mesh has 4'):
    train.fit(*args, plan=train.Plan('vmap', 'program'), mesh=types.SimpleNamespace(size=4))


@pytest.fixture
def lenets(blobs):
  """3 freshly initialised LeNets and 50 12x12 one-channel inputs."""
  model = models.LeNet(3)
  x = _tiny_images(jnp.asarray(blobs.x_train)[:50])
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  states = train.init_ensemble(_trainer(model), keys, x)
  return model, x, states


def test_predict_in_turn_equals_vmapped(lenets):
  model, x, states = lenets
  a = infer.predict(model, train.InputSpec(), 16, True, states, x)
  b = infer.predict(model, train.InputSpec(), 16, True, states, x, in_turn=True)
  assert b.logits.shape == (3, 50, 3) and b.embeddings.shape == a.embeddings.shape
  np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=1e-5, atol=1e-6)


def test_predict_on_indices_equals_those_rows(lenets):
  model, x, states = lenets
  whole = infer.predict(model, train.InputSpec(), 16, True, states, x)
  rows = np.array([49, 3, 17, 3, 0, 21, 8, 30, 44, 12, 5, 6, 7, 9, 10, 11, 13, 14], np.int32)
  for in_turn in (False, True):  # 18 rows: two chunks of 16, the last one padded
    part = infer.predict(
        model, train.InputSpec(), 16, True, states, x, in_turn=in_turn, indices=rows
    )
    assert part.logits.shape == (3, 18, 3)
    np.testing.assert_allclose(part.logits, whole.logits[:, rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(part.embeddings, whole.embeddings[rows], rtol=1e-5, atol=1e-6)
