"""Orbax checkpoints of the training state under WORKDIR/checkpoints.

Saves are asynchronous (the step loop only waits for the device-to-host copy), keep the newest
`ckpt.max_to_keep` plus every `ckpt.keep_period`-th step forever, and store the run's config as
JSON beside the state. Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never shows up as a step. A step that exists but cannot be read
(a truncated or deleted file) is reported by name and skipped for the one before it.
"""

import json
import logging

import jax
import orbax.checkpoint as ocp
from etils import epath

from llm_jax import storage

DIRECTORY = 'checkpoints'


def directory(workdir) -> epath.Path:
  """Where `workdir` (local path or bucket URL) keeps its checkpoints; absolute, as Orbax wants."""
  path = storage.path(workdir) / DIRECTORY
  return path if storage.is_bucket(workdir) else path.absolute()


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored; the message names its directory."""


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
    self.directory = directory(workdir)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state) -> bool:
    """Starts an asynchronous save of `state` at `step`, unless that step is already saved."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=self._with_config(state), force=True)

  def _with_config(self, item) -> ocp.args.Composite:
    return ocp.args.Composite(
      state=ocp.args.StandardSave(item), config=ocp.args.JsonSave(self._config)
    )

  def due(self, step: int, *, final: bool = False) -> bool:
    """True at every `every_steps`-th step and at the final step."""
    return final or bool(self.every_steps and step % self.every_steps == 0)

  def reached_preemption(self, step: int) -> bool:
    """True at the step where every host agreed to stop (JAX's preemption sync point)."""
    if jax.process_count() == 1:
      return False  # single-process preemption arrives as SIGTERM, handled by the loop
    return self._manager.reached_preemption(step)

  def saved_config(self, step: int) -> dict:
    """The run config saved with the checkpoint at `step`, parsed; {} if it has none readable
    (restoring the state then says what is wrong)."""
    args = ocp.args.Composite(config=ocp.args.JsonRestore())
    try:
      return json.loads(self._manager.restore(step, args=args).config)
    except Exception:  # noqa: BLE001 -- as in restore
      return {}

  def restore(self, step: int, target):
    """The state saved at `step`, placed like `target` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    try:
      return self._manager.restore(step, args=args).state
    except Exception as e:  # noqa: BLE001 -- Orbax and TensorStore raise many types
      raise CheckpointError(
        f'checkpoint {self.directory / str(step)} cannot be restored: {str(e).splitlines()[0]}'
      ) from None

  def restore_params(self, step: int, abstract_params):
    """Only the parameters saved at `step` (no optimizer state), placed like `abstract_params`."""
    item = {'params': abstract_params}
    restore = ocp.args.PyTreeRestore(
      item=item,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True,
    )
    try:
      params = self._manager.restore(step, args=ocp.args.Composite(state=restore)).state['params']
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
        f'parameters in {self.directory / str(step)} do not fit this model:'
        f' {str(e).splitlines()[0]}'
      ) from None
    # A partial restore leaves what the checkpoint lacks as the abstract target.
    missing = [
      jax.tree_util.keystr(path)
      for path, leaf in jax.tree.leaves_with_path(params)
      if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
      raise CheckpointError(
        f'parameters in {self.directory / str(step)} do not fit this model: it has no'
        f' {missing[0]}' + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else '')
      )
    return params

  def save_params(self, step: int, params) -> None:
    """A params-only checkpoint at `step` (for inference and `ckpt.init_from`), waited for."""
    self._manager.save(step, args=self._with_config({'params': params}), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, restore) -> tuple[int | None, object]:
    """(step, restore(step)) for the newest checkpoint that `restore` can read, falling back
    past unreadable ones (`restore` raises CheckpointError for those).

    (None, None) when there is no checkpoint; CheckpointError when none of them can be read.
    """
    failures = []
    for step in reversed(self.all_steps()):
      try:
        return step, restore(step)
      except CheckpointError as e:
        logging.warning('%s; trying the previous checkpoint', e)
        failures.append(str(e))
    if failures:
      raise CheckpointError(f'no readable checkpoint in {self.directory}: {failures[0]}')
    return None, None

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
