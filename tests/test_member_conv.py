"""jal.member_conv: the three ways of batching members' convolutions give the
same gradients, and the compiled programs hold the grouped convolutions each
form promises (none for 'in_turn')."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jal import config_lib, member_conv, models, resnet, train
from jal.bench import core as bench_core
from jal.bench import profiling

MEMBERS = 3


class TwoConvs(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    conv = member_conv.conv_general_dilated(self.kind)
    x = nn.relu(nn.Conv(6, (3, 3), padding='SAME', conv_general_dilated=conv)(x))
    x = nn.relu(
        nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), conv_general_dilated=conv)(x)
    )
    return x.mean((1, 2)).sum(-1)


def grouped_convolutions(compiled) -> int:
  instrs = profiling.parse_hlo(compiled.as_text()).values()
  return sum(i.opcode == 'convolution' and i.groups > 1 for i in instrs)


def test_in_turn_batches_item_by_item():
  f = member_conv.in_turn(lambda a, b: a @ b + 1.0)
  a = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 5))
  b = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  got = jax.jit(jax.vmap(f, in_axes=(0, None)))(a, b)  # b shared by every item
  want = jnp.stack([a[i] @ b + 1.0 for i in range(4)])
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(f(a[1], b), a[1] @ b + 1.0)  # unbatched: plain call


@pytest.mark.parametrize('kind,grouped', [('grouped', 5), ('wgrad_in_turn', 3), ('in_turn', 0)])
def test_gradients_agree_and_grouped_convs_are_as_promised(kind, grouped):
  x = jax.random.normal(jax.random.PRNGKey(0), (MEMBERS, 4, 8, 8, 2))
  keys = jax.random.split(jax.random.PRNGKey(1), MEMBERS)
  net = TwoConvs(kind)
  params = jax.vmap(net.init)(keys, x)
  loss = lambda p, xx: jnp.sum(net.apply(p, xx) ** 2)
  step = jax.jit(jax.vmap(jax.value_and_grad(loss)))
  compiled = step.lower(params, x).compile()
  # 2 forward convs, 2 weight gradients, 1 input gradient (not for the input).
  assert grouped_convolutions(compiled) == grouped
  values, grads = compiled(params, x)
  plain = TwoConvs('grouped')
  one = jax.jit(jax.value_and_grad(lambda p, xx: jnp.sum(plain.apply(p, xx) ** 2)))
  for m in range(MEMBERS):
    p_m = jax.tree.map(lambda a, m=m: a[m], params)
    v, g = one(p_m, x[m])
    np.testing.assert_allclose(values[m], v, rtol=1e-5)
    jax.tree.map(
        lambda a, b, m=m: np.testing.assert_allclose(a[m], b, rtol=2e-5, atol=1e-5), grads, g
    )


def test_resnet18_members_trained_in_turn_match_grouped():
  """Two vmapped steps (one program) of a narrow ResNet-18: same parameters either way."""
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)), jnp.uint8)
  y = jnp.asarray(np.arange(16) % 10, jnp.int32)
  tx = train.make_optimizer(
      ml_collections.ConfigDict(
          dict(optimizer='sgd', learning_rate=0.05, weight_decay=5e-4, momentum=0.9)
      )
  )
  spec = train.InputSpec()
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  idx = jnp.arange(16, dtype=jnp.int32)
  out = {}
  for kind in ('grouped', 'in_turn'):
    model = resnet.ResNet18(10, width=4, member_conv=kind)
    out[kind] = train.fit(
        train.Trainer(model, tx, spec, 8, 'constant', 0.05),
        keys,
        x,
        y,
        idx,
        jnp.int32(16),
        jnp.int32(1),
        plan=train.Plan('vmap', 'program'),
    )
  # Parameters and BatchNorm statistics.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      (out['grouped'].params, out['grouped'].model_state),
      (out['in_turn'].params, out['in_turn'].model_state),
  )
  assert out['in_turn'].model_state['batch_stats']['bn1']['mean'].shape == (2, 4)


def test_config_and_model_plumbing():
  cfg = ml_collections.ConfigDict(
      dict(name='lenet', compute_dtype='float32', member_conv='wgrad_in_turn')
  )
  assert models.get_model(cfg, 10).member_conv == 'wgrad_in_turn'
  cfg.name = 'resnet18'
  assert models.get_model(cfg, 10).member_conv == 'wgrad_in_turn'
  cfg.member_conv = 'sideways'
  with pytest.raises(
      ValueError, match="unknown member_conv 'sideways'; valid: grouped, " 'wgrad_in_turn, in_turn'
  ):
    models.get_model(cfg, 10)
  config = config_lib.base_config()
  config.model.member_conv = 'in_turn'
  with pytest.raises(ValueError, match="member_conv='in_turn' needs a convnet"):
    config_lib.validate(config)  # the base config's model is the MLP
  config.model.member_conv = 'sideways'
  with pytest.raises(ValueError, match="unknown member_conv 'sideways'"):
    config_lib.validate(config)
  # Workdirs written before the field existed are the 'grouped' experiment.
  old = config_lib.base_config()
  del old.model['member_conv']
  assert config_lib.identity(old) == config_lib.identity(config_lib.base_config())
  with pytest.raises(ValueError, match="unknown member_conv 'bogus'"):
    bench_core.params_for('small', member_conv='bogus')
