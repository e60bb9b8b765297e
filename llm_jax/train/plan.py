"""Memory planning for `llm-jax train --dry_run`: compile ahead of time, allocate nothing.

Parameter and optimizer-state bytes come from the abstract state's shardings (what one device
holds); arguments, outputs and temporaries from XLA's `memory_analysis()` of the compiled step.
Where the device reports its capacity (GPU, TPU) a plan that does not fit is an error naming the
settings that would make it fit.

`--topology=v5e:2x2` plans for a TPU slice from any machine with libtpu installed (as MaxText's
train_compile): the step is compiled by the TPU compiler for devices that are only described, so
the Pallas kernels and shardings of a TPU run are checked before one is paid for, and XLA's own
out-of-memory verdict for that chip becomes the same one-line error.
"""

import math
import os
import re

import jax
import numpy as np
from jax.sharding import PartitionSpec

from llm_jax.config import ConfigError

GIB = 2**30


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return sum(
    math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


def topology_devices(name: str, slices: int = 1) -> list:
  """The devices of `slices` TPU slices `name` (`v5e:2x2`, `v5p:2x2x1`, `v6e:4x4`, ...), with no
  TPU behind them; ConfigError naming the flag when libtpu is missing or the name is unknown."""
  from jax.experimental import topologies

  # libtpu keeps a second process off a machine's TPUs with a lock file; described devices are
  # no TPU, and plans (parallel tests, say) may run side by side.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # v4 and v5p chips have two TensorCores that a TPU VM shows as one device ("megacore").
  chip = 'megacore' if name.partition(':')[0] in ('v4', 'v5p') else 'default'
  try:
    desc = topologies.get_topology_desc(
      platform='tpu', topology_name=name, chip_config_name=chip, num_slices=slices
    )
    return list(desc.devices)
  except Exception as e:  # noqa: BLE001 -- RuntimeError without libtpu, JaxRuntimeError for names
    reason = str(e).splitlines()[0]
    if 'not installed' in reason:
      reason = "needs libtpu: pip install 'llm_jax[tpu]'"
    raise ConfigError(f'--topology={name}: {reason}') from None


def memory_plan(trainer) -> dict:
  """Per-device bytes of params, optimizer state, and the compiled step's buffers."""
  abstract = trainer.steps.abstract
  params, opt_state = per_device_bytes(abstract.params), per_device_bytes(abstract.opt_state)
  try:
    compile_s = trainer.compile()
  except jax.errors.JaxRuntimeError as e:  # a TPU compiler's verdict for its chip
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise ConfigError(
      f'the train step does not fit: {str(e).splitlines()[0].rstrip(".")};'
      f' {_advice(params + opt_state, None)}'
    ) from None
  stats = trainer.train_step.memory_analysis()
  plan = {
    'compile_s': compile_s,
    'params': params,
    'opt_state': opt_state,
    'arguments': stats.argument_size_in_bytes,
    'outputs': stats.output_size_in_bytes,
    'aliased': stats.alias_size_in_bytes,
    'temporaries': stats.temp_size_in_bytes,
    'capacity': _capacity(trainer.mesh.devices.flat[0]),
  }
  # Donated state is aliased into the outputs, so it counts once.
  plan['total'] = plan['arguments'] + plan['outputs'] - plan['aliased'] + plan['temporaries']
  return plan


def _capacity(device) -> int | None:
  """A device's memory in bytes, where it says (not a CPU, not a described TPU)."""
  try:
    return (device.memory_stats() or {}).get('bytes_limit')
  except jax.errors.JaxRuntimeError:
    return None


def _advice(state: int, temporaries: int | None) -> str:
  activations = '' if temporaries is None else f' (activations, {temporaries / GIB:.2f} GiB now)'
  return (
    f'raise mesh.fsdp (shards params and optimizer state, {state / GIB:.2f} GiB now), lower'
    f' train.batch_size or raise train.grad_accum_steps{activations}, or use a smaller model'
  )


def check_fits(plan: dict) -> None:
  """ConfigError when the step needs more than the device holds."""
  if plan['capacity'] is None or plan['total'] <= plan['capacity']:
    return
  raise ConfigError(
    f'the train step needs {plan["total"] / GIB:.2f} GiB per device but a device holds'
    f' {plan["capacity"] / GIB:.2f} GiB: '
    + _advice(plan['params'] + plan['opt_state'], plan['temporaries'])
  )


def param_sharding_lines(abstract_params) -> list[str]:
  """One line per distinct parameter (blocks folded into `*`): path, shape, mesh spec."""
  lines = {}
  for path, leaf in jax.tree.leaves_with_path(abstract_params):
    keys = [str(k.key) for k in path if hasattr(k, 'key')]  # drops the Variable's `.value`
    name = re.sub(r'/\d+/', '/*/', '/'.join(keys) + '/')
    spec = leaf.sharding.spec if leaf.sharding.spec != PartitionSpec() else 'replicated'
    lines.setdefault(name.rstrip('/'), f'{tuple(leaf.shape)} {spec}')
  width = max(map(len, lines))
  return [f'  {name:<{width}}  {desc}' for name, desc in lines.items()]


def format_plan(plan: dict, trainer) -> str:
  """The dry-run report: mesh, per-device memory, and every parameter's sharding."""
  gib = lambda key: f'{plan[key] / GIB:8.3f} GiB'
  rules = ', '.join(f'{name}→{axes}' for name, axes in trainer.cfg.mesh.rules)
  device = trainer.mesh.devices.flat[0]
  capacity = 'unknown' if plan['capacity'] is None else f'{plan["capacity"] / GIB:.2f} GiB'
  if plan['capacity'] is None and device.platform == 'tpu':
    capacity = 'the chip (its compiler checked that it fits)'
  return '\n'.join(
    [
      f'mesh {dict(trainer.mesh.shape)} over {trainer.mesh.size} {device.device_kind}'
      f' ({device.platform}) device(s); rules: {rules}',
      f'batch {trainer.global_shapes} sharded {trainer.array_sharding(2).spec} by rows;'
      f' train step compiled in {plan["compile_s"]:.1f}s',
      'per-device memory:',
      f'  parameters        {gib("params")}',
      f'  optimizer state   {gib("opt_state")}',
      f'  step arguments    {gib("arguments")}',
      f'  step outputs      {gib("outputs")} ({plan["aliased"] / GIB:.3f} GiB aliased to inputs)',
      f'  temporaries       {gib("temporaries")}',
      f'  total             {gib("total")} of {capacity}',
      'parameter shardings:',
      *param_sharding_lines(trainer.steps.abstract.params),
    ]
  )


def dry_run(trainer) -> tuple[dict, str]:
  """Plans the run without allocating it: (the plan, its report); ConfigError if it cannot fit."""
  plan = memory_plan(trainer)
  check_fits(plan)
  return plan, format_plan(plan, trainer)
