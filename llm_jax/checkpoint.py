"""Orbax checkpoints of the training state under WORKDIR/checkpoints.

Saves are asynchronous (the step loop only waits for the device-to-host copy) and keep the newest
`ckpt.max_to_keep`. Orbax writes each step to a temporary directory and renames it when complete,
so `latest_step` only ever sees finished checkpoints. Restores land directly on the shardings of the
given target state.
"""

import pathlib

import jax
import orbax.checkpoint as ocp

DIRECTORY = 'checkpoints'


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored; the message names its directory."""


class Checkpointer:
  """Periodic saves and restores of one run's training state."""

  def __init__(self, workdir: pathlib.Path, ckpt_cfg):
    self.every_steps = ckpt_cfg.every_steps
    options = ocp.CheckpointManagerOptions(
      max_to_keep=ckpt_cfg.max_to_keep, enable_async_checkpointing=True
    )
    self.directory = (pathlib.Path(workdir) / DIRECTORY).absolute()
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def maybe_save(self, step: int, state, *, final: bool = False) -> bool:
    """Saves at every `every_steps`-th step and at the final step; True if a save started."""
    due = final or (self.every_steps and step % self.every_steps == 0)
    if not due or step == self.latest_step():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, target):
    """The state saved at `step`, placed like `target` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
        f'checkpoint {self.directory / str(step)} does not fit this config '
        f'(did the model change?): {str(e).splitlines()[0]}'
      ) from None

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
