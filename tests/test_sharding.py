"""Sharded and unsharded training, scoring, k-Center and loop give the same results.

The multi-device tests need 4 devices. On a one-device machine,
`test_on_four_host_devices` reruns this file in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (four CPU devices).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import config_lib, data, experiment, infer, kernels, models, sharding, strategies
from jal import train
from jal.bench import cases as bench_cases
from jal.bench import core as bench_core
from tests.conftest import REPO
from tests.test_experiment import smoke
from tests.test_kernels import CANDIDATE_LABELED, CANDIDATE_PTS, CANDIDATES

FOUR = '--xla_force_host_platform_device_count=4'
# The four CPU "devices" are threads that meet at every collective. XLA ends
# the process (SIGABRT) when one arrives more than its terminate timeout late,
# which happens on a 2-core machine under load (seen once in a CI run beside
# a long training job): give them as long as the test's own timeout.
PATIENT = (
    '--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 '
    '--xla_cpu_collective_call_terminate_timeout_seconds=900 '
    '--xla_cpu_collective_timeout_seconds=900'
)
multi = pytest.mark.skipif(jax.device_count() < 4, reason='needs 4 devices (see module doc)')
TRAIN = ml_collections.ConfigDict(dict(optimizer='adam', learning_rate=1e-2, weight_decay=0.0))


def test_on_four_host_devices():
  if jax.device_count() >= 4:
    pytest.skip('this process already has several devices')
  flags = f"{os.environ.get('XLA_FLAGS', '')} {FOUR} {PATIENT}".strip()
  env = {**os.environ, 'XLA_FLAGS': flags, 'PYTHONPATH': str(REPO)}
  out = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider', __file__],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  # On a crash, the fatal lines (XLA's F-lines, Python's) and the test it was in.
  fatal = [
      line
      for line in out.stderr.splitlines()
      if line.startswith('F') or 'Fatal' in line or 'test_sharding.py' in line
  ]
  assert out.returncode == 0, out.stdout[-3000:] + '\n'.join(fatal[:20]) + out.stderr[-1000:]
  # Every multi-device test ran, this one skipped.
  assert '1 skipped' in out.stdout and ' 0 passed' not in out.stdout, out.stdout[-1000:]


def test_mesh_for_settings():
  assert sharding.mesh_for('none') is None
  if jax.device_count() == 1:
    assert sharding.mesh_for('auto') is None
  with pytest.raises(ValueError, match="unknown sharding 'gpus'; valid: auto, none"):
    sharding.mesh_for('gpus')
  with pytest.raises(ValueError, match="unknown sharding 'gpus'; valid: auto, none"):
    config_lib.validate(smoke(sharding='gpus'))


@multi
@pytest.mark.parametrize(
    'n,d,num_labeled,k',
    [(103, 7, 5, 20), (1000, 16, 0, 50), (997, 32, 300, 64), (4001, 8, 600, 12)],
)
def test_k_center_sharded_picks_equal_unsharded(n, d, num_labeled, k):
  rng = np.random.default_rng(n)
  emb = rng.normal(size=(n, d)).astype(np.float32)
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, num_labeled, replace=False)] = True
  expected = np.asarray(kernels.k_center_greedy(emb, labeled, k=k))
  if num_labeled == 0:
    assert expected[0] == 0  # nothing labeled: every distance is +inf, the lowest index wins
  for devices in (2, 3, 4):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    got = np.asarray(kernels.k_center_greedy(emb, labeled, k=k, mesh=mesh))
    np.testing.assert_array_equal(got, expected)


@multi
def test_k_center_sharded_hand_made_points():
  # Points on a line, 0 labeled. Farthest first: 10 (index 5), then 5 (4);
  # then 2, 3, 7 and 8 all lie at squared distance 4 (exactly) and the
  # lowest index wins, across devices too: 2, then 6 (7 and 8 tie).
  pts = np.array([[0.0], [1.0], [2.0], [3.0], [5.0], [10.0], [7.0], [8.0]], np.float32)
  labeled = np.zeros(8, bool)
  labeled[0] = True
  mesh = sharding.make_mesh(jax.devices()[:4])  # two points per device
  np.testing.assert_array_equal(kernels.k_center_greedy(pts, labeled, k=4, mesh=mesh), [5, 4, 2, 6])
  np.testing.assert_array_equal(kernels.k_center_greedy(pts, labeled, k=4), [5, 4, 2, 6])


@multi
def test_k_center_sharded_candidates_hand_made_points():
  # test_kernels' candidate line: 9 points, padded to 12 on 4 devices. The
  # far non-candidate (index 1) sits on device 0 and the labeled candidate
  # (index 6) on device 2; neither is ever picked.
  for devices in (2, 3, 4):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    got = kernels.k_center_greedy(
        CANDIDATE_PTS, CANDIDATE_LABELED, k=5, mesh=mesh, candidates=CANDIDATES
    )
    np.testing.assert_array_equal(got, [5, 7, 3, 2, 8])
    np.testing.assert_array_equal(
        kernels.k_center_greedy(
            CANDIDATE_PTS, np.zeros(9, bool), k=2, mesh=mesh, candidates=CANDIDATES
        ),
        [2, 6],
    )


@multi
def test_k_center_sharded_candidates_equal_unsharded():
  rng = np.random.default_rng(3)
  emb = rng.normal(size=(501, 6)).astype(np.float32)
  labeled = np.zeros(501, bool)
  labeled[rng.choice(501, 40, replace=False)] = True
  candidates = rng.random(501) < 0.3
  expected = np.asarray(kernels.k_center_greedy(emb, labeled, k=30, candidates=candidates))
  assert candidates[expected].all() and not labeled[expected].any()
  for devices in (2, 3, 4):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    got = kernels.k_center_greedy(emb, labeled, k=30, mesh=mesh, candidates=candidates)
    np.testing.assert_array_equal(got, expected)


@multi
def test_coreset_ensembles_sharded_picks_equal_unsharded():
  rng = np.random.default_rng(4)
  n = 301
  labeled = np.zeros(n, bool)
  labeled[rng.choice(n, 20, replace=False)] = True
  inputs = strategies.Inputs(
      labeled=labeled,
      logits=rng.normal(size=(5, n, 3)).astype(np.float32),
      embeddings=rng.normal(size=(n, 8)).astype(np.float32),
  )
  ce = strategies.get_strategy('coreset_ensembles')
  options = ml_collections.ConfigDict({'beta': 4.0})
  expected = np.asarray(ce.select(inputs, 10, jax.random.PRNGKey(0), options))
  mesh = sharding.make_mesh(jax.devices()[:4])
  got = ce.select(inputs._replace(mesh=mesh), 10, jax.random.PRNGKey(0), options)
  np.testing.assert_array_equal(got, expected)


def _problem(model):
  ds = data.gaussian_blobs(num_train=200, num_test=10, seed=0)
  x = jnp.asarray(ds.x_train)
  if isinstance(model, models.LeNet):
    x = jnp.tile(x[:, None, None, :1], (1, 12, 12, 1))
  idx = np.zeros(32, np.int32)
  idx[:20] = np.arange(20)
  return train.Trainer(model, train.make_optimizer(TRAIN), train.InputSpec(), 8, 'cosine', 1e-2), (
      x,
      jnp.asarray(ds.y_train),
      jnp.asarray(idx),
      jnp.int32(20),
      jnp.int32(3),
  )


_MLP, _LENET = models.MLP(2, hidden=(8,)), models.LeNet(2)


@multi
@pytest.mark.parametrize(
    'model,members,devices,in_turn',
    # Every split on the MLP; on LeNet (convolutions), a padded split and members in turn.
    [(_MLP, 5, 4, False), (_MLP, 5, 2, False), (_MLP, 4, 4, False), (_MLP, 5, 2, True)]
    + [(_LENET, 5, 4, False), (_LENET, 5, 2, True)],
)
def test_fit_sharded_equals_one_device(model, members, devices, in_turn):
  trainer, arrays = _problem(model)
  keys = jax.random.split(jax.random.PRNGKey(5), members)
  expected = train.fit(trainer, keys, *arrays, plan=train.Plan('vmap', 'program'))
  mesh = sharding.make_mesh(jax.devices()[:devices])
  plan = train.Plan('in_turn' if in_turn else 'vmap', 'program', devices)
  got = train.fit(trainer, keys, *arrays, plan=plan, mesh=mesh)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), expected, got)
  assert got.opt_state.inner_state[0].count.tolist() == [9] * members
  if members % devices == 0:  # no padding: the result stays split, one share per device
    leaf = jax.tree.leaves(got.params)[0]
    assert leaf.sharding.spec == jax.sharding.PartitionSpec(sharding.DEVICES)
    assert {s.data.shape[0] for s in leaf.addressable_shards} == {members // devices}


@multi
def test_predict_sharded_equals_unsharded():
  trainer, arrays = _problem(models.LeNet(3))
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  states = train.fit(trainer, keys, *arrays, plan=train.Plan('vmap', 'program'))
  x = arrays[0]
  expected = infer.predict(trainer.model, train.InputSpec(), 64, True, states, x)
  mesh = sharding.make_mesh()
  for in_turn in (False, True):
    got = infer.predict(
        trainer.model, train.InputSpec(), 63, True, states, x, in_turn=in_turn, mesh=mesh
    )
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.embeddings, expected.embeddings, rtol=1e-5, atol=1e-5)
    assert got.logits.shape == (3, 200, 3)


@multi
def test_loop_sharded_equals_unsharded(tmp_path):
  outputs = {}
  for setting in ('auto', 'none'):
    config = smoke(sharding=setting, **{'train.dispatch': 'program'})
    workdir = tmp_path / setting
    experiment.train_and_evaluate(config, str(workdir))
    outputs[setting] = [
        [json.loads(l) for l in (workdir / f).read_text().splitlines()]
        for f in ('metrics.jsonl', 'selections.jsonl')
    ]
  assert outputs['auto'][1] == outputs['none'][1]  # the same picks, every round
  for a, b in zip(*(outputs[s][0] for s in ('auto', 'none'))):
    assert a.keys() == b.keys()
    for key, value in a.items():
      assert value == pytest.approx(b[key], abs=1e-6), key


@multi
def test_step_dispatch_with_several_devices_is_refused(tmp_path):
  config = smoke(**{'train.dispatch': 'step'})
  with pytest.raises(
      ValueError, match=r"train.dispatch='step' runs on one device; with 4 " 'devices'
  ):
    experiment.train_and_evaluate(config, str(tmp_path))
  assert not list(pathlib.Path(tmp_path).iterdir())  # refused before the workdir is made


@multi
def test_bench_splits_over_devices():
  records = bench_cases.run(
      ('ensemble_train', 'k_center'),
      size='small',
      train_models=('lenet',),
      train_modes=('sharded',),
      members=(2,),
      repeats=1,
      devices=4,
  )
  (kc,) = [r for r in records if r['case'] == 'k_center']
  assert kc['devices'] == 4 and kc['device_count'] == 4 and kc['seconds'] > 0
  (sharded,) = [r for r in records if r.get('mode') == 'sharded']
  assert (sharded['plan'], sharded['members']) == (
      {'members': 'vmap', 'dispatch': 'program', 'devices': 4},
      2,
  )
  assert sharded['compile_timing'] == 'jit lower().compile()'
  assert sharded['images_per_second'] > 0
  with pytest.raises(ValueError, match='devices=5: between 1 and the 4 visible'):
    bench_core.params_for('small', devices=5)


@multi
def test_resolve_plan_with_a_mesh_splits_the_members():
  from jal import resnet  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh()
  x = jnp.zeros((1, 32, 32, 3))
  lenet, res = models.LeNet(2), resnet.ResNet18(2, width=8)
  for members, model, expected in (
      ('auto', lenet, 'vmap'),
      ('auto', res, 'in_turn'),
      ('vmap', res, 'vmap'),
      ('in_turn', lenet, 'in_turn'),
  ):
    trainer, _ = _problem(model)
    assert train.resolve_plan(members, 'auto', trainer, x, mesh) == train.Plan(
        expected, 'program', 4
    )
  with pytest.raises(ValueError, match="dispatch 'step' runs on one device; with 4 devices"):
    train.resolve_plan('in_turn', 'step', _problem(lenet)[0], x, mesh)
  # One device: the mesh changes nothing (on CPU: one dispatch per step).
  one = sharding.make_mesh(jax.devices()[:1])
  assert train.resolve_plan('vmap', 'auto', _problem(lenet)[0], x, one) == train.Plan(
      'vmap', 'step'
  )
