"""Device mesh and logical-axis sharding rules: the only place that names mesh axes.

Parameters carry logical axis names where they are created (`vocab`, `embed`, `heads`, `kv`,
`mlp`, `layers`); activations are constrained with their own names (`batch`, `length`,
`act_embed`). One rules table (`mesh.rules` in the config; `config.DEFAULT_RULES` by default)
maps each name to a mesh axis, a tuple of axes, or None (replicated). Data parallel, FSDP
(ZeRO-3), tensor parallel and their mixes are then only a matter of mesh shape and rules; model
code never names a mesh axis.
"""

import contextlib
import contextvars
import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm_jax.config import DEFAULT_RULES
from llm_jax.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
LOGICAL_AXES = ('batch', 'length', 'act_embed', 'vocab', 'embed', 'heads', 'kv', 'mlp', 'layers')

_ACTIVATIONS: contextvars.ContextVar = contextvars.ContextVar('activation_sharding', default=None)


def check_rules(rules) -> None:
  """ValueError naming the first rule with an unknown logical name or mesh axis, or a repeat."""
  seen = set()
  for entry in rules:
    if len(entry) != 2:
      raise ValueError(f'mesh.rules entry {entry!r} must be (logical_name, mesh_axes)')
    name, axes = entry
    if name not in LOGICAL_AXES:
      raise ValueError(
        f'mesh.rules: unknown logical axis {name!r}; known: {", ".join(LOGICAL_AXES)}'
      )
    if name in seen:
      raise ValueError(f'mesh.rules: logical axis {name!r} has two rules')
    seen.add(name)
    for axis in _axes_of(axes):
      if axis not in MESH_AXES:
        raise ValueError(f'mesh.rules: {name!r} maps to unknown mesh axis {axis!r}')
  missing = [n for n in LOGICAL_AXES if n not in seen]
  if missing:
    raise ValueError(f'mesh.rules: no rule for logical axis {missing[0]!r}')


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


def dcn_shape(mesh_cfg, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Per-axis factors that span slices or processes (DCN); each must divide its axis."""
  dcn = tuple(int(mesh_cfg[f'dcn_{axis}']) for axis in MESH_AXES)
  for axis, size, factor in zip(MESH_AXES, shape, dcn, strict=True):
    if factor < 1 or size % factor:
      raise ValueError(f'mesh.dcn_{axis}={factor} must be a positive divisor of mesh.{axis}={size}')
  return dcn


def validate(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Checks the `mesh` section against `num_devices`; returns its (data, fsdp, tensor) sizes."""
  try:
    shape = mesh_shape(mesh_cfg, num_devices)
    dcn_shape(mesh_cfg, shape)
    check_rules(mesh_cfg.rules)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return shape


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all, across processes)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  dcn = dcn_shape(mesh_cfg, shape)
  if math.prod(dcn) == 1:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  else:
    # DCN groups are slices on multislice TPU, otherwise processes (hosts).
    slices = {getattr(d, 'slice_index', 0) for d in devices}
    ici = tuple(s // d for s, d in zip(shape, dcn, strict=True))
    grid = mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices, process_is_granule=len(slices) == 1
    )
  # Auto axes keep GSPMD propagation; Explicit axes (jax.make_mesh's default) reject the
  # sharded contractions tensor parallelism needs.
  return Mesh(np.asarray(grid), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_mesh(names, rules=DEFAULT_RULES) -> PartitionSpec:
  """PartitionSpec over mesh axes for a tuple of logical names (None stays None)."""
  table = dict(rules)
  unknown = [n for n in names if n is not None and n not in table]
  if unknown:
    raise ValueError(f'logical axis {unknown[0]!r} has no sharding rule')
  spec = [table[n] if n is not None else None for n in names]
  used = [a for axes in spec for a in _axes_of(axes)]
  if len(used) != len(set(used)):
    raise ValueError(f'mesh.rules map {tuple(names)} onto one mesh axis twice: {tuple(spec)}')
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, names, rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_mesh(names, rules))


def tree_shardings(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a tree of logical PartitionSpecs (e.g. `nnx.get_partition_spec(state)`)."""
  return jax.tree.map(
    lambda spec: named_sharding(mesh, tuple(spec), rules),
    logical_specs,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def _axes_of(axes) -> tuple[str, ...]:
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def check_divisible(logical_specs, shapes, mesh: Mesh, rules=DEFAULT_RULES) -> None:
  """ValueError naming the first parameter dimension that its mesh axes do not divide evenly."""
  table = dict(rules)
  specs = jax.tree.leaves_with_path(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for (path, spec), leaf in zip(specs, jax.tree.leaves(shapes), strict=True):
    for size, name in zip(leaf.shape, spec, strict=True):
      axes = _axes_of(table.get(name)) if name else ()
      parts = math.prod(mesh.shape[a] for a in axes)
      if size % parts:
        where = '/'.join(str(k.key) for k in path if hasattr(k, 'key'))
        raise ValueError(
          f'{where}: its {name!r} dimension ({size}) does not divide over mesh axes'
          f' {"×".join(axes)} = {parts}; change mesh.{axes[0]} or the {name!r} rule in mesh.rules'
        )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
  """Makes `constrain` active while a step is traced under `mesh` and `rules`."""
  token = _ACTIVATIONS.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)


def constrain(x: jax.Array, names) -> jax.Array:
  """Pins activation `x` to the sharding its logical `names` give; unchanged outside a step."""
  active = _ACTIVATIONS.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, named_sharding(mesh, names, rules))


def platform() -> str:
  """The platform code is traced for: the active step's mesh devices' (a described TPU slice in a
  dry run, say), else the default backend's."""
  active = _ACTIVATIONS.get()
  return jax.default_backend() if active is None else active[0].devices.flat[0].platform


def per_device(fn, in_names, out_names):
  """`fn` run on each device's shards (`shard_map`), its inputs and output split as their
  logical names say, while a step is traced under `activation_sharding`; `fn` itself otherwise.
  For code XLA cannot partition, such as a Pallas kernel."""
  active = _ACTIVATIONS.get()
  if active is None:
    return fn
  mesh, rules = active
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=tuple(logical_to_mesh(names, rules) for names in in_names),
    out_specs=logical_to_mesh(out_names, rules),
    check_vma=False,  # a Pallas call does not declare how its outputs vary across devices
  )
