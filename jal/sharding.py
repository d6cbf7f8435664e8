"""Spreading a round over every device with named shardings.

One mesh axis, `DEVICES`, over all devices (every host's, after
`jax.distributed.initialize`):

- training splits the ensemble's member axis over it (`train.fit` with a
  plan of several devices, `train.resolve_plan(..., mesh=mesh)`): each
  device trains its share of the members with the one-device program, and no
  data moves between devices;
- scoring splits the pool's points (`infer.predict(..., mesh=...)`): every
  device holds the parameters and runs the forward pass on its points;
- k-Center splits the pool's points (`kernels.k_center_greedy(...,
  mesh=...)`): each pick exchanges one candidate per device, so memory per
  device is O(n * d / devices).

`config.sharding` chooses: 'auto' uses a mesh when there is more than one
device (a single device runs the unsharded programs, unchanged), 'none'
never does.

    mesh = sharding.make_mesh()          # all devices
    picks = kernels.k_center_greedy(emb, labeled, k=100, mesh=mesh)
"""

import math

from absl import logging
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DEVICES = 'devices'
SETTINGS = ('auto', 'none')


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis `DEVICES` over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DEVICES,), axis_types=(AxisType.Auto,), devices=devices)


def mesh_for(setting: str) -> Mesh | None:
  """The mesh `config.sharding` asks for, or None to run unsharded."""
  if setting not in SETTINGS:
    raise ValueError(f"unknown sharding '{setting}'; valid: {', '.join(SETTINGS)}")
  if setting == 'none' or jax.device_count() == 1:
    return None
  mesh = make_mesh()
  logging.info(
      'sharding members and pools over %d devices (%s)', mesh.size, jax.devices()[0].platform
  )
  return mesh


def split(mesh: Mesh) -> NamedSharding:
  """Axis 0 split over the devices."""
  return NamedSharding(mesh, P(DEVICES))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, P())


def padded_size(n: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that is at least n."""
  return math.ceil(n / mesh.size) * mesh.size


def initialize_distributed() -> None:
  """`jax.distributed.initialize()` for multi-host runs (settings from the
  environment: SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS and friends).

  Call before any other JAX call. Afterwards `jax.devices()` lists every
  host's devices and only process 0 writes outputs.
  """
  jax.distributed.initialize()
  logging.info(
      'jax.distributed: process %d of %d, %d local / %d global devices',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
