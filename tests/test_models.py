"""jal.models' LeNet: its two forms of convolution + max-pool compute the same
function, with the same parameters, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jal import models


def test_space_to_depth_moves_2x2_blocks_into_channels():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = models.space_to_depth(x)
  assert y.shape == (1, 2, 2, 4)
  # Block (0, 1) holds pixels (0, 2), (0, 3), (1, 2), (1, 3) in phase order.
  np.testing.assert_array_equal(y[0, 0, 1], [2.0, 3.0, 6.0, 7.0])
  np.testing.assert_array_equal(y[0, 1, 0], [8.0, 9.0, 12.0, 13.0])


def test_phase_kernel_places_every_tap_once_per_output_phase():
  kernel = jnp.arange(1.0, 26.0).reshape(5, 5, 1, 1)  # tap (u, v) holds 5u + v + 1
  pk = np.asarray(models.phase_kernel(kernel))
  assert pk.shape == (3, 3, 4, 4)
  # Block (1, 2), input phase (r, s) = (1, 0), output phase (a, b) = (1, 1):
  # tap (2*1 + 1 - 1, 2*2 + 0 - 1) = (2, 3).
  assert pk[1, 2, 2, 3] == 5 * 2 + 3 + 1
  assert pk[0, 0, 0, 2] == 0.0  # output phase (1, 0) reads tap row -1
  assert pk[2, 2, 3, 0] == 0.0  # tap (5, 5) does not exist
  for phase in range(4):  # each output phase: the 25 taps, once
    assert sorted(pk[..., phase][pk[..., phase] > 0].tolist()) == list(range(1, 26))


@pytest.mark.parametrize('form', ['direct', 'space_to_depth'])
def test_conv_max_pool_by_hand(form):
  block = models.ConvMaxPool(1, 1, 'VALID', form=form)
  x = jnp.array(
      [[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 8.0, 1.0], [0.0, 0.0, 1.0, 1.0], [7.0, 2.0, 9.0, 6.0]]
  )
  variables = {'params': {'kernel': jnp.full((1, 1, 1, 1), 2.0), 'bias': jnp.array([-1.0])}}
  y = block.apply(variables, x[None, :, :, None])
  np.testing.assert_array_equal(y[0, :, :, 0], [[2 * 5 - 1, 2 * 8 - 1], [2 * 7 - 1, 2 * 9 - 1]])


@pytest.mark.parametrize('shape', [(4, 28, 28, 1), (3, 12, 12, 1), (2, 13, 15, 3)])
def test_lenet_forms_agree(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  y = jnp.arange(shape[0]) % 10
  direct = models.LeNet(10, conv_pool='direct')
  s2d = models.LeNet(10, conv_pool='space_to_depth')
  variables = jax.jit(direct.init)(jax.random.PRNGKey(1), x)
  same = jax.jit(s2d.init)(jax.random.PRNGKey(1), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), variables, same))

  def loss_and_grads(model):
    def loss(params):
      logits, _ = model.apply({'params': params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.value_and_grad(loss))(variables['params'])  # one program per form

  (loss_d, grads_d), (loss_s, grads_s) = loss_and_grads(direct), loss_and_grads(s2d)
  np.testing.assert_allclose(loss_s, loss_d, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_d), jax.tree.leaves(grads_s)):
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_conv_pool_form():
  assert models.conv_pool_form('auto') == (
      'space_to_depth' if jax.default_backend() == 'cpu' else 'direct'
  )
  assert models.conv_pool_form('direct') == 'direct'
  with pytest.raises(
      ValueError, match="unknown conv_pool 'fast'; valid: auto, direct, " 'space_to_depth'
  ):
    models.conv_pool_form('fast')
