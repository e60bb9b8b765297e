"""What a run records about itself once compiled: data, devices, mesh, size, versions, commit."""

import importlib.metadata
import pathlib
import subprocess

import jax

from llm_jax import perf

VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'llm_jax')


def git_commit() -> str | None:
  """The commit of the llm_jax source tree, when it is a git checkout."""
  try:
    out = subprocess.run(
      ['git', 'rev-parse', 'HEAD'],
      cwd=pathlib.Path(__file__).parent,
      capture_output=True,
      text=True,
      timeout=5,
    )
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() or None


def log(tracker, trainer, compile_s: float) -> None:
  """Prints the run's data and device lines, and records its facts with the tracker."""
  n_params = sum(x.size for x in jax.tree.leaves(trainer.state.params))
  tracker.print(trainer.task.describe())
  tracker.print(
    f'{jax.device_count()} {jax.devices()[0].platform} device(s), mesh '
    f'{dict(trainer.mesh.shape)}, {n_params / 1e6:.2f}M parameters, vocab '
    f'{trainer.task.perf_cfg.vocab_size}, train step compiled in {compile_s:.1f}s'
  )
  tracker.facts(
    task=trainer.task.name,
    data=trainer.task.describe(),
    devices=jax.device_count(),
    processes=jax.process_count(),
    device_kind=jax.devices()[0].device_kind,
    mesh=dict(trainer.mesh.shape),
    parameters=int(n_params),
    flops_per_token=perf.flops_per_token(
      trainer.task.perf_cfg, trainer.cfg.data.seq_len, trainer.task.scored
    ),
    compile_s=compile_s,
    versions={name: importlib.metadata.version(name) for name in VERSIONED},
    git_commit=git_commit(),
  )
