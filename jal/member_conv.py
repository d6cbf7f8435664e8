"""How a convolution is batched over a vmapped ensemble's member axis.

`jax.vmap` over members turns every convolution of the model, and both of its
gradients, into a *grouped* convolution (`feature_group_count` = members x
groups). That is one dense program, but cuDNN runs some grouped convolutions,
the weight gradient above all, slower than the same work as ordinary ones
(jax-ml/jax#13800, #15339). These formulations keep everything else of the
step vmapped (BatchNorm, activations, the optimiser: one fused kernel for all
members) and choose, per part of the convolution, between XLA's grouped
convolution and the members' ordinary convolutions run one after another
(unrolled in the program, so XLA schedules each as a plain cuDNN call):

  'grouped'        XLA's default: forward, input and weight gradients grouped.
  'wgrad_in_turn'  forward and input gradient grouped; the weight gradient
                   per member in turn.
  'in_turn'        forward and both gradients per member in turn.

Results equal the grouped form up to floating-point summation order (tested).
Pass `conv_general_dilated(kind)` to flax's `nn.Conv(conv_general_dilated=...)`;
it is None for 'grouped' (flax's own `lax.conv_general_dilated`). jal's convnets
take it as `config.model.member_conv`; it matters only where members are
vmapped (a training plan with members 'vmap', `jal.bench`'s 'vmap_program'
records): members trained 'in_turn' have no member axis to batch.
Which form is fastest is a property of the accelerator and its cuDNN:
measure with `python -m jal.bench --cases=ensemble_train --member_conv=...`.
"""

import functools
from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp

MEMBER_CONVS = ('grouped', 'wgrad_in_turn', 'in_turn')


def check(kind: str) -> str:
  if kind not in MEMBER_CONVS:
    raise ValueError(f"unknown member_conv '{kind}'; valid: {', '.join(MEMBER_CONVS)}")
  return kind


def in_turn(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`fn` whose vmapped form runs the batch's items one after another.

  Under `jax.vmap`, the i-th output is `fn` of every argument's i-th item
  (unbatched arguments are shared), in an unrolled loop: XLA sees
  `axis_size` ordinary calls instead of one batched (grouped) one.
  """
  f = jax.custom_batching.custom_vmap(fn)

  @f.def_vmap
  def _rule(axis_size, in_batched, *args):
    items = [f(*[a[i] if b else a for a, b in zip(args, in_batched)]) for i in range(axis_size)]
    return jnp.stack(items), True

  return f


def _conv(static, lhs, rhs):
  strides, padding, lhs_dil, rhs_dil, dims, groups, precision = static
  return lax.conv_general_dilated(
      lhs,
      rhs,
      strides,
      padding,
      lhs_dilation=lhs_dil,
      rhs_dilation=rhs_dil,
      dimension_numbers=dims,
      feature_group_count=groups,
      precision=precision,
  )


def _input_grad(static, lhs, rhs, g):
  return jax.vjp(lambda l: _conv(static, l, rhs), lhs)[1](g)[0]


def _weight_grad(static, lhs, rhs, g):
  return jax.vjp(lambda r: _conv(static, lhs, r), rhs)[1](g)[0]


@functools.lru_cache(maxsize=None)
def _parts(kind: str, static) -> tuple[Callable, Callable, Callable]:
  """(forward, input grad, weight grad) of one convolution, batched as `kind` says."""
  fwd = functools.partial(_conv, static)
  dgrad = functools.partial(_input_grad, static)
  wgrad = functools.partial(_weight_grad, static)
  if kind == 'in_turn':
    return in_turn(fwd), in_turn(dgrad), in_turn(wgrad)
  return fwd, dgrad, in_turn(wgrad)


@functools.lru_cache(maxsize=None)
def _custom_conv(kind: str, static) -> Callable[[jax.Array, jax.Array], jax.Array]:
  fwd, dgrad, wgrad = _parts(kind, static)

  @jax.custom_vjp
  def conv(lhs, rhs):
    return fwd(lhs, rhs)

  def conv_fwd(lhs, rhs):
    return fwd(lhs, rhs), (lhs, rhs)

  def conv_bwd(res, g):
    lhs, rhs = res
    return dgrad(lhs, rhs, g), wgrad(lhs, rhs, g)

  conv.defvjp(conv_fwd, conv_bwd)
  return conv


def _hashable(x: Any) -> Any:
  if isinstance(x, (list, tuple)) and not hasattr(x, '_fields'):
    return tuple(_hashable(v) for v in x)
  return x


def conv_general_dilated(kind: str) -> Callable[..., jax.Array] | None:
  """A drop-in `lax.conv_general_dilated` batched over members as `kind` says.

  Returns None for 'grouped' (use flax's default). The result takes flax's
  call: `(lhs, rhs, window_strides, padding, lhs_dilation=, rhs_dilation=,
  dimension_numbers=, feature_group_count=, precision=)`.
  """
  if check(kind) == 'grouped':
    return None
  return _CONVS[kind]


def _make(kind: str):
  def conv(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=None,
      rhs_dilation=None,
      dimension_numbers=None,
      feature_group_count=1,
      precision=None,
      preferred_element_type=None,
  ):
    if preferred_element_type is not None:
      raise ValueError('member_conv: preferred_element_type is not supported')
    static = (
        _hashable(window_strides),
        _hashable(padding),
        _hashable(lhs_dilation),
        _hashable(rhs_dilation),
        dimension_numbers,
        feature_group_count,
        precision,
    )
    return _custom_conv(kind, static)(lhs, rhs)

  conv.__name__ = f'conv_general_dilated_{kind}'
  return conv


_CONVS = {kind: _make(kind) for kind in MEMBER_CONVS if kind != 'grouped'}
