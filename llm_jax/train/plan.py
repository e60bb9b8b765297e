"""Memory planning for `llm-jax train --dry_run`: compile ahead of time, allocate nothing.

Parameter and optimizer-state bytes come from the abstract state's shardings (what one device
holds); arguments, outputs and temporaries from XLA's `memory_analysis()` of the compiled step.
Where the device's capacity is known (a GPU, or a described one) a plan that does not fit is an
error naming the settings that would make it fit. The plan also counts the kernels one step
launches, and how many of them the optimizer update takes.

`--topology=v5e:2x2` or `--topology=h100` plans for devices that are only described
(`llm_jax.topology`), from any machine with that compiler installed: the kernels and shardings
of a TPU or GPU run are checked before one is paid for. A TPU compiler's own out-of-memory
verdict for its chip becomes the same one-line error; a described GPU holds what JAX's allocator
would take of it.
"""

import math
import re

import jax
import numpy as np
from jax.sharding import PartitionSpec

from llm_jax import topology
from llm_jax.errors import ConfigError

GIB = 2**30


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return sum(
    math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


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
    **kernel_counts(trainer.train_step.as_text()),
  }
  # Donated state is aliased into the outputs, so it counts once.
  plan['total'] = plan['arguments'] + plan['outputs'] - plan['aliased'] + plan['temporaries']
  return plan


def _capacity(device) -> int | None:
  """The bytes JAX's allocator has on a device, where known: what a device reports, or what it
  would take of a described GPU (not a CPU, not a described TPU)."""
  try:
    return (device.memory_stats() or {}).get('bytes_limit')
  except jax.errors.JaxRuntimeError:  # a described device
    return topology.gpu_capacity(device)


# Instructions of a compiled program that launch no work of their own.
_NO_KERNEL = frozenset(
  ('parameter', 'get-tuple-element', 'tuple', 'bitcast', 'constant', 'after-all', 'partition-id',
   'replica-id', 'opt-barrier', 'add-dependency', 'all-reduce-done', 'all-gather-done',
   'collective-permute-done', 'copy-done', 'async-done', 'send-done', 'recv-done')
)  # fmt: skip
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%\S+ = .*? ([a-z][a-z0-9-]*)\(')
_CALLED = re.compile(r'(?:body|to_apply)=%([\w.-]+)')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def kernel_counts(hlo: str) -> dict:
  """Kernels one run of a compiled program launches (fusions, library calls, copies,
  collectives), loop bodies counted once per trip; and how many carry the `optimizer` scope."""
  computations, entry, name = {}, None, None
  for line in hlo.splitlines():
    if line.endswith('{') and not line[:1].isspace():  # a computation's header
      name = line.removeprefix('ENTRY ').split()[0].lstrip('%')
      computations[name] = []
      entry = name if line.startswith('ENTRY') else entry
    elif name:
      computations[name].append(line)

  def count(computation) -> tuple[int, int]:
    total = optimizer = 0
    for line in computations[computation]:
      op = _INSTRUCTION.match(line)
      if op is None or op.group(1) in _NO_KERNEL:
        continue
      called = _CALLED.search(line)
      if op.group(1) in ('while', 'call') and called:
        trips = _TRIPS.search(line)
        n = int(trips.group(1)) if trips else 1
        inner = count(called.group(1))
        total, optimizer = total + n * inner[0], optimizer + n * inner[1]
      else:
        total, optimizer = total + 1, optimizer + ('optimizer' in line)
    return total, optimizer

  total, optimizer = count(entry)
  return {'kernels': total, 'optimizer_kernels': optimizer}


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
      f'kernels per step: {plan["kernels"]:,} ({plan["optimizer_kernels"]:,} in the optimizer'
      ' update)',
      'parameter shardings:',
      *param_sharding_lines(trainer.steps.abstract.params),
    ]
  )


def dry_run(trainer) -> tuple[dict, str]:
  """Plans the run without allocating it: (the plan, its report); ConfigError if it cannot fit."""
  plan = memory_plan(trainer)
  check_fits(plan)
  return plan, format_plan(plan, trainer)
