"""Device mesh and logical-axis sharding rules: the only place that names mesh axes.

Parameters and activations carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`,
`layers`, `batch`, `length`); one rules table maps each name to a mesh axis (or tuple of axes,
or None for replicated). Changing the table or the mesh shape changes the parallelism strategy
without touching model code.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Data parallel over `data`, ZeRO-3 over `fsdp`, Megatron tensor parallel over `tensor`.
DEFAULT_RULES = (
  ('batch', ('data', 'fsdp')),
  ('length', None),
  ('vocab', 'tensor'),
  ('embed', 'fsdp'),
  ('heads', 'tensor'),
  ('kv', None),
  ('mlp', 'tensor'),
  ('layers', None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, tensor) with a -1 resolved to the devices left; ValueError names the axis."""
  sizes = {axis: int(mesh_cfg[axis]) for axis in MESH_AXES}
  free = [axis for axis, n in sizes.items() if n == -1]
  bad = [axis for axis, n in sizes.items() if n == 0 or n < -1]
  if bad:
    raise ValueError(f'mesh.{bad[0]}={sizes[bad[0]]} must be a positive size or -1')
  if len(free) > 1:
    raise ValueError(f'only one mesh axis may be -1, got {", ".join("mesh." + a for a in free)}')
  fixed = math.prod(n for n in sizes.values() if n != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
        f'mesh.{free[0]}=-1: {num_devices} devices do not divide by the other axes ({fixed})'
      )
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
      f'mesh data×fsdp×tensor = {math.prod(sizes.values())} but there are {num_devices} devices'
    )
  return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes keep GSPMD propagation; Explicit axes (make_mesh's default) reject the
  # sharded contractions tensor parallelism needs.
  return Mesh(
    np.asarray(devices).reshape(shape),
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
  )


def logical_to_mesh(names, rules=DEFAULT_RULES) -> PartitionSpec:
  """PartitionSpec over mesh axes for a tuple of logical names (None stays None)."""
  table = dict(rules)
  unknown = [n for n in names if n is not None and n not in table]
  if unknown:
    raise ValueError(f'logical axis {unknown[0]!r} has no sharding rule')
  return PartitionSpec(*(table[n] if n is not None else None for n in names))


def named_sharding(mesh: Mesh, names, rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_mesh(names, rules))


def tree_shardings(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a tree of logical PartitionSpecs (e.g. `nnx.get_partition_spec(state)`)."""
  return jax.tree.map(
    lambda spec: named_sharding(mesh, tuple(spec), rules),
    logical_specs,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
