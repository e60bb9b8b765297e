"""`llm-jax bench`: tokens/s and MFU of a config's real train step on synthetic tokens.

The step is the one `llm-jax train` runs (same state, shardings, optimizer), timed after warm-up
one step at a time; we report the median. A yardstick for the framework's overhead, the same GPT
and optimizer written as plain JAX functions and timed against this step in one process, lives
outside the package: `benchmarks/reference_gpt.py`, built on `framework_step` and `median_times`.
"""

import statistics
import time
from typing import Any, NamedTuple

import jax

from llm_jax import perf
from llm_jax.errors import ConfigError
from llm_jax.models.layers import attention_implementation
from llm_jax.train import tasks
from llm_jax.train.trainer import Trainer


class FrameworkStep(NamedTuple):
  """A config's train step compiled for one batch, with the state and the batch to run it on."""

  task: tasks.Task
  compiled: Any  # jax.stages.Compiled: (state, batch) -> (state, metrics); donates the state
  state: Any
  batch: dict
  compile_s: float


def framework_step(cfg) -> FrameworkStep:
  """The train step `llm-jax train` would run for `cfg` (pretraining only), compiled, with its
  initial state and the batch of step 0 placed."""
  if tasks.task_name(cfg) == 'classify':
    raise ConfigError('bench times pretraining steps (lm, mlm), not train.task=classify')
  trainer = Trainer(cfg, workdir=None)
  trainer.init_state()
  batch = trainer.batch(0)  # read before timing and reused: the data path is not measured
  start = time.perf_counter()
  compiled = trainer.steps.train.lower(trainer.state, batch).compile()
  return FrameworkStep(trainer.task, compiled, trainer.state, batch, time.perf_counter() - start)


def step_timer(step: FrameworkStep):
  """A zero-argument function that runs one framework train step and returns its loss; it takes
  over `step.state`, which the first call donates."""
  live = {'state': step.state}

  def run_step():
    live['state'], metrics = step.compiled(live['state'], step.batch)
    return metrics['loss']

  return run_step


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def median_times(timers: dict, *, steps: int, warmup: int) -> dict:
  """Median seconds per call of each timer, calls alternated so noise lands on all alike."""
  for fn in timers.values():
    for _ in range(warmup):
      _timed(fn)
  times = {name: [] for name in timers}
  for _ in range(steps):
    for name, fn in timers.items():
      times[name].append(_timed(fn))
  return {name: statistics.median(ts) for name, ts in times.items()}


def _peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def run(cfg, *, steps: int = 20, warmup: int = 3) -> dict:
  """Benchmark `cfg`'s train step: compile time, median step time, tokens/s, MFU, peak memory."""
  step = framework_step(cfg)
  step_s = median_times({'framework': step_timer(step)}, steps=steps, warmup=warmup)['framework']
  model_cfg, scored = step.task.model_cfg, step.task.scored
  b, t = cfg.train.batch_size, cfg.data.seq_len
  tps = b * t / step_s
  return dict(
    compile_s=step.compile_s,
    config=dict(
      n_layer=model_cfg.n_layer,
      n_embd=model_cfg.n_embd,
      batch_size=b,
      seq_len=t,
      dtype=model_cfg.dtype,
      vocab_size=model_cfg.vocab_size,
      attention=attention_implementation(
        model_cfg.attention, model_cfg.dtype, jax.default_backend()
      ),
      scan_layers=model_cfg.scan_layers,
      remat=model_cfg.remat,
      loss_chunk=cfg.train.loss_chunk,
    ),
    backend=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
    num_devices=jax.device_count(),
    step_s=step_s,
    tokens_per_sec=tps,
    flops_per_token=perf.flops_per_token(model_cfg, t, scored),
    mfu=perf.mfu(tps, model_cfg, t, jax.device_count(), scored),
    peak_memory_bytes=_peak_memory_bytes(),
  )


def format_table(result: dict) -> str:
  """A human-readable summary of `run`'s result."""
  mfu = (
    'unknown (no peak FLOP/s for this device)' if result['mfu'] is None else f'{result["mfu"]:.1%}'
  )
  mem = result['peak_memory_bytes']
  rows = [
    ('device', f'{result["num_devices"]} × {result["device_kind"]} ({result["backend"]})'),
    ('model', ', '.join(f'{k}={v}' for k, v in result['config'].items())),
    ('compile', f'{result["compile_s"]:.2f} s'),
    ('step time (median)', f'{result["step_s"] * 1e3:.2f} ms'),
    ('tokens/s', f'{result["tokens_per_sec"]:,.0f}'),
    ('MFU', mfu),
    ('peak memory', 'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
