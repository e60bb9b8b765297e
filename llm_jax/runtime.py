"""Process-wide XLA settings (config section `xla`), applied before JAX starts its backend.

GPU compiler flags: XLA reads XLA_FLAGS once, when the backend starts, so `configure` runs before
anything touches a device (the CLI calls it first). A flag already in XLA_FLAGS wins over ours,
so any of them can be overridden from the environment; `--config.xla.gpu_flags=''` adds none.
XLA parses every flag on every backend and aborts on unknown ones, which is how the CPU tests
check that these exist in the installed jaxlib.

Persistent compilation cache: compiled programs are kept in `xla.cache_dir`, so a restarted or
repeated run of the same config skips compilation. JAX_COMPILATION_CACHE_DIR, when set, wins.
"""

import os

import jax

# MaxText's single-host GPU choices. Latency hiding overlaps collectives and copies with compute;
# GEMMs go to cuBLAS rather than Triton.
GPU_FLAGS = (
  '--xla_gpu_enable_latency_hiding_scheduler=true',
  '--xla_gpu_enable_triton_gemm=false',
)
DEFAULT_CACHE_DIR = '~/.cache/llm_jax/xla'


def _name(flag: str) -> str:
  return flag.split('=', 1)[0]


def merged_flags(existing: str, extra: str) -> str:
  """`existing` XLA flags followed by those of `extra` that it does not already set."""
  present = {_name(f) for f in existing.split()}
  return ' '.join([*existing.split(), *(f for f in extra.split() if _name(f) not in present)])


def configure(xla_cfg) -> None:
  """Sets XLA_FLAGS and the compilation cache for this process from the `xla` config section."""
  if xla_cfg.gpu_flags:
    os.environ['XLA_FLAGS'] = merged_flags(os.environ.get('XLA_FLAGS', ''), xla_cfg.gpu_flags)
  if xla_cfg.cache_dir and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(xla_cfg.cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', xla_cfg.cache_min_compile_s)
