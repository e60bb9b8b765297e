"""Process-wide XLA settings (config section `xla`), applied before JAX starts its backend.

GPU compiler flags: XLA reads XLA_FLAGS once, when the backend starts, so `configure` runs before
anything touches a device (the CLI calls it first). The flags default to `config.GPU_FLAGS`
(MaxText's single-host choices). A flag already in XLA_FLAGS wins over ours,
so any of them can be overridden from the environment; `--config.xla.gpu_flags=''` adds none.
XLA parses every flag on every backend and aborts on unknown ones, which is how the CPU tests
check that these exist in the installed jaxlib.

Platforms: the test extra installs JAX's CUDA plugin and libtpu everywhere (they also compile
for hardware that is only described, `--topology`). On a machine without the hardware, loading
them prints a traceback ("Unable to load cuFFT") and libtpu warnings, so `select_platforms`
leaves out the platforms this machine has no device for, unless JAX_PLATFORMS says otherwise.

Persistent compilation cache: compiled programs are kept in `xla.cache_dir`, so a restarted or
repeated run of the same config skips compilation. JAX_COMPILATION_CACHE_DIR, when set, wins.
"""

import glob
import os

import jax

# What shows that a machine has the platform's devices: the NVIDIA driver's device nodes, a TPU
# chip's (/dev/accel* on v2-v4, Google's PCI vendor id on VFIO-attached v5e and later).
GOOGLE_PCI_VENDOR = '0x1ae0'


def _has_gpu() -> bool:
  return os.path.exists('/dev/nvidiactl') or bool(glob.glob('/dev/nvidia[0-9]*'))


def _has_tpu() -> bool:
  if glob.glob('/dev/accel[0-9]*'):
    return True
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    with open(vendor) as f:
      if f.read().strip() == GOOGLE_PCI_VENDOR:
        return True
  return False


def select_platforms() -> str:
  """Sets JAX's platforms to the accelerators this machine has, plus the CPU, when neither
  JAX_PLATFORMS nor an earlier call chose them; returns the choice ('' = JAX's own)."""
  if jax.config.jax_platforms:
    return jax.config.jax_platforms
  present = [name for name, found in (('cuda', _has_gpu), ('tpu', _has_tpu)) if found()]
  if len(present) == 2:  # both: JAX's own order
    return ''
  jax.config.update('jax_platforms', ','.join([*present, 'cpu']))
  return jax.config.jax_platforms


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
