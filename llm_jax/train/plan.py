"""Memory planning for `llm-jax train --dry_run`: compile ahead of time, allocate nothing.

Parameter and optimizer-state bytes come from the abstract state's shardings (what one device
holds); arguments, outputs and temporaries from XLA's `memory_analysis()` of the compiled step.
Where the device reports its capacity (GPU, TPU) a plan that does not fit is an error naming the
settings that would make it fit.
"""

import math
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


def memory_plan(trainer) -> dict:
  """Per-device bytes of params, optimizer state, and the compiled step's buffers."""
  compile_s = trainer.compile()
  stats = trainer.train_step.memory_analysis()
  abstract = trainer.steps.abstract
  plan = {
    'compile_s': compile_s,
    'params': per_device_bytes(abstract.params),
    'opt_state': per_device_bytes(abstract.opt_state),
    'arguments': stats.argument_size_in_bytes,
    'outputs': stats.output_size_in_bytes,
    'aliased': stats.alias_size_in_bytes,
    'temporaries': stats.temp_size_in_bytes,
    'capacity': (jax.devices()[0].memory_stats() or {}).get('bytes_limit'),
  }
  # Donated state is aliased into the outputs, so it counts once.
  plan['total'] = plan['arguments'] + plan['outputs'] - plan['aliased'] + plan['temporaries']
  return plan


def check_fits(plan: dict) -> None:
  """ConfigError when the step needs more than the device holds."""
  if plan['capacity'] is None or plan['total'] <= plan['capacity']:
    return
  raise ConfigError(
    f'the train step needs {plan["total"] / GIB:.2f} GiB per device but a device holds'
    f' {plan["capacity"] / GIB:.2f} GiB: raise mesh.fsdp (shards params and optimizer state,'
    f' {(plan["params"] + plan["opt_state"]) / GIB:.2f} GiB now), lower train.batch_size or raise'
    f' train.grad_accum_steps (activations, {plan["temporaries"] / GIB:.2f} GiB now), or use a'
    ' smaller model'
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
  capacity = 'unknown' if plan['capacity'] is None else f'{plan["capacity"] / GIB:.2f} GiB'
  rules = ', '.join(f'{name}→{axes}' for name, axes in trainer.cfg.mesh.rules)
  return '\n'.join(
    [
      f'mesh {dict(trainer.mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform}'
      f' device(s); rules: {rules}',
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


def dry_run(trainer) -> str:
  """Plans the run without allocating it; ConfigError if it cannot fit."""
  plan = memory_plan(trainer)
  check_fits(plan)
  return format_plan(plan, trainer)
