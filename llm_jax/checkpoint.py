"""Orbax checkpoints of the training state under WORKDIR/checkpoints.

Saves are asynchronous (the step loop only waits for the device-to-host copy), keep the newest
`ckpt.max_to_keep` plus every `ckpt.keep_period`-th step forever, and store the run's config as
JSON beside the state. Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never shows up as a step.

A step that exists but is damaged (a missing or truncated file, corrupt metadata) is
`UnreadableCheckpoint`: readers fall back to the newest step before it, and a training run also
moves it aside to `checkpoints/STEP.unreadable-TIME` (never deleted), so it saves that step
again. Any other failure while restoring (out of memory, a storage timeout, a bug) is raised as
it is: it says nothing about the checkpoint, so no older step is tried.
"""

import contextlib
import datetime
import json
import logging
import re
import sys
import warnings

import jax
import orbax.checkpoint as ocp
from etils import epath

from llm_jax import rundir
from llm_jax.errors import UserError

UNREADABLE = '.unreadable-'  # STEP.unreadable-TIME: a damaged step, moved aside
# Metadata of a step, read before Orbax is (the arrays are checked by reading them).
STATE_METADATA = 'state/_METADATA'  # the state's tree: without it Orbax reports a tree mismatch
CONFIG_METADATA = 'config/metadata'  # the run's config: its JSON text, stored as a JSON string
# TensorStore statuses that mean the stored bytes are missing or not what was written.
DAMAGE_STATUSES = ('NOT_FOUND', 'DATA_LOSS', 'OUT_OF_RANGE', 'FAILED_PRECONDITION')
_STATUS = re.compile(r'^[A-Z_]+: ')  # TensorStore's errors start with their status
_TENSORSTORE_ERROR = re.compile(r'^(\w+): Error (?:reading|opening) .*?"([^"]+)"[^:]*: (.*)$')


def _stamp() -> str:
  return datetime.datetime.now(datetime.UTC).strftime('%Y%m%dT%H%M%SZ')


def move_aside(workdir, why: str) -> epath.Path | None:
  """Renames `workdir`'s checkpoints/ to checkpoints.WHY-TIME (nothing is deleted); returns the
  new path, or None when there were none."""
  old = rundir.checkpoints(workdir)
  if not old.exists():
    return None
  aside = old.parent / f'{rundir.CHECKPOINTS}.{why}-{_stamp()}'
  old.rename(aside)
  return aside


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be restored or saved; the message names its directory."""


class UnreadableCheckpoint(CheckpointError):
  """A step whose files are damaged; `reason` is one line on what is wrong."""

  def __init__(self, path, reason: str):
    super().__init__(f'checkpoint {path} is unreadable: {reason}')
    self.path, self.reason = path, reason


def _first_line(error: BaseException) -> str:
  return str(error).splitlines()[0] if str(error) else ''


def damage(error: BaseException) -> str | None:
  """One line on the damage `error` (raised by Orbax or TensorStore while restoring) reports,
  or None when it is some other failure."""
  while error is not None:
    text = _first_line(error)
    if isinstance(error, json.JSONDecodeError):
      return f'corrupt metadata ({error.msg})'
    if isinstance(error, FileNotFoundError):
      return f'missing file {error.filename or text}'
    if isinstance(error, KeyError) and 'not found in the checkpoint' in text:
      return text.strip('\'"')
    found = _TENSORSTORE_ERROR.match(text)
    if found and found[1] in DAMAGE_STATUSES:
      return f'{found[1]} reading {found[2]}: {found[3]}'
    error = error.__cause__ or error.__context__
  return None


def _in_orbax(where: str) -> bool:
  return '/orbax/' in where.replace('\\', '/')


def _quiet_failed_reads(unraisable) -> None:
  """Drops what a failed restore's other reads raise after it: errors of Orbax's read coroutines
  that nobody awaits any more, and TensorStore's callbacks into the closed event loop
  (`RuntimeError: Event loop is closed`). Dozens of tracebacks per damaged step, when the first
  failure is reported once: as UnreadableCheckpoint, or raised as it is."""
  error, code = unraisable.exc_value, getattr(unraisable.object, 'cr_code', None)
  closed_loop = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
  if not (closed_loop or (code is not None and _in_orbax(code.co_filename))):
    _previous_unraisablehook(unraisable)


def _without_orbax_tracebacks(record: logging.LogRecord) -> bool:
  """Drops logged tracebacks from Orbax (absl's logger) and of its abandoned reads (asyncio's
  "Task/Future exception was never retrieved"): the failure reaches Checkpointer as an
  exception, which becomes one line (CheckpointError) or is raised as it is."""
  if not record.exc_info:
    return True
  abandoned_read = damage(record.exc_info[1]) is not None
  return not (abandoned_read or _in_orbax(record.pathname) or _in_orbax(record.getMessage()))


_previous_unraisablehook = sys.unraisablehook
sys.unraisablehook = _quiet_failed_reads
logging.getLogger('asyncio').addFilter(_without_orbax_tracebacks)
logging.getLogger('absl').addFilter(_without_orbax_tracebacks)
warnings.filterwarnings(  # Orbax's read coroutines that a failed restore left unstarted
  'ignore', message="coroutine '_read_array_index_and_device_put' was never awaited"
)


class Checkpointer:
  """Periodic saves and restores of one run's training state."""

  def __init__(self, workdir, ckpt_cfg, config_json: str = '{}'):
    self.every_steps = ckpt_cfg.every_steps
    self._config = config_json
    options = ocp.CheckpointManagerOptions(
      max_to_keep=ckpt_cfg.max_to_keep,
      keep_period=ckpt_cfg.keep_period or None,
      enable_async_checkpointing=True,
    )
    self.directory = rundir.checkpoints(workdir)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._saving = None  # the step of the save in flight, if any

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state) -> bool:
    """Starts an asynchronous save of `state` at `step`, unless that step is already saved."""
    if step in self._manager.all_steps():
      return False
    with self._saving_step(step):
      started = self._manager.save(step, args=self._with_config(state), force=True)
    self._saving = step
    return started

  def _with_config(self, item) -> ocp.args.Composite:
    return ocp.args.Composite(
      state=ocp.args.StandardSave(item), config=ocp.args.JsonSave(self._config)
    )

  @contextlib.contextmanager
  def _saving_step(self, step: int | None):
    """Turns an OSError of the save in flight, or else of `step`'s (a full disk, a lost bucket),
    into one CheckpointError line naming that step and the newest complete one."""
    try:
      yield
    except OSError as e:
      failed = step if self._saving is None else self._saving
      self._saving = None
      complete = [s for s in self.all_steps() if s != failed]
      kept = self._step_dir(complete[-1]) if complete else 'none'
      raise CheckpointError(
        f'saving checkpoint step {failed} to {self.directory} failed: {e}; the newest complete'
        f' checkpoint is {kept}'
      ) from None

  def due(self, step: int, *, final: bool = False) -> bool:
    """True at every `every_steps`-th step and at the final step."""
    return final or bool(self.every_steps and step % self.every_steps == 0)

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every host agreed to stop (JAX's preemption sync point)."""
    if jax.process_count() == 1:
      return False  # single-process preemption arrives as SIGTERM, handled by the loop
    return self._manager.reached_preemption(step)

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _read_json(self, step: int, name: str):
    """The metadata file `name` of `step`, parsed; UnreadableCheckpoint if it is missing or not
    JSON. Every process sees the same files, so every process of a run reaches the same verdict.
    """
    try:
      return json.loads((self._step_dir(step) / name).read_text())
    except FileNotFoundError:
      raise UnreadableCheckpoint(self._step_dir(step), f'{name} is missing') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      reason = f'{name} is corrupt ({getattr(e, "msg", e)})'
      raise UnreadableCheckpoint(self._step_dir(step), reason) from None

  def _restore(self, step: int, args, *, mismatch: str):
    """Orbax's restore of `step`, its errors sorted: damage (UnreadableCheckpoint), a state that
    does not fit the target (CheckpointError starting with `mismatch`), or anything else, as is."""
    self._read_json(step, STATE_METADATA)
    try:
      return self._manager.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 -- sorted below; what is neither is raised again
      reason = damage(e)
      if reason is not None:
        raise UnreadableCheckpoint(self._step_dir(step), reason) from None
      first_line = _first_line(e)
      if isinstance(e, ValueError | KeyError | TypeError) and not _STATUS.match(first_line):
        raise CheckpointError(f'{mismatch}: {first_line}') from None  # shapes or tree differ
      raise

  def saved_config(self, step: int) -> dict:
    """The run config saved with the checkpoint at `step`, parsed (every restore of a run reads
    it first, for the layer layout: llm_jax/relayout.py)."""
    return json.loads(self._read_json(step, CONFIG_METADATA))

  def restore(self, step: int, target):
    """The state saved at `step`, placed like `target` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    mismatch = f'checkpoint {self._step_dir(step)} cannot be restored'
    return self._restore(step, args, mismatch=mismatch).state

  def restore_params(self, step: int, abstract_params):
    """Only the parameters saved at `step` (no optimizer state), placed like `abstract_params`."""
    item = {'params': abstract_params}
    restore = ocp.args.PyTreeRestore(
      item=item,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True,
    )
    mismatch = f'parameters in {self._step_dir(step)} do not fit this model'
    params = self._restore(step, ocp.args.Composite(state=restore), mismatch=mismatch)
    params = params.state['params']
    # A partial restore leaves what the checkpoint lacks as the abstract target.
    missing = [
      jax.tree_util.keystr(path)
      for path, leaf in jax.tree.leaves_with_path(params)
      if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
      raise CheckpointError(
        f'{mismatch}: it has no {missing[0]}'
        + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else '')
      )
    return params

  def save_params(self, step: int, params) -> None:
    """A params-only checkpoint at `step` (for inference and `ckpt.init_from`), waited for."""
    with self._saving_step(step):
      self._manager.save(step, args=self._with_config({'params': params}), force=True)
      self._manager.wait_until_finished()

  def restore_latest(self, restore, *, move_aside: bool = False) -> tuple[int | None, object]:
    """(step, restore(step)) for the newest checkpoint that is not damaged; (None, None) when
    there is none at all.

    Damaged steps are skipped with a one-line warning each and, with `move_aside` (the run that
    owns this directory), renamed to STEP.unreadable-TIME so that the step can be saved again.
    CheckpointError when every step is damaged; other errors of `restore` are raised at once.
    """
    failures = []
    for step in reversed(self.all_steps()):
      try:
        return step, restore(step)
      except UnreadableCheckpoint as e:
        where = f'moved to {self._move_aside(step)}; ' if move_aside else ''
        logging.warning('%s (%strying the previous step)', e, where)
        failures.append(str(e))
    if failures:
      raise CheckpointError(
        f'no readable checkpoint in {self.directory}: {failures[0]}'
        + (' (moved aside; a rerun starts from scratch)' if move_aside else '')
      )
    return None, None

  def _move_aside(self, step: int) -> epath.Path:
    """Renames a damaged step out of Orbax's sight (process 0; the others wait for it)."""
    aside = self.directory / f'{step}{UNREADABLE}{_stamp()}'
    if jax.process_index() == 0:
      self._step_dir(step).rename(aside)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f'llm_jax:move_aside:{step}')
    self._manager.reload()
    return aside

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    with self._saving_step(self._saving):
      self._manager.wait_until_finished()
    self._saving = None

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    try:
      self.wait()
    finally:
      self._manager.close()
