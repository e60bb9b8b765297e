"""The run: resume or initialise, compile, step until the end or a stop, evaluate, sample.

`train(cfg, workdir)` builds a `Trainer`, restores the newest readable checkpoint of the workdir
(or starts fresh, from `ckpt.init_from` when set), and runs the step loop. Between steps the
loop's hooks (`hooks.py`) profile, log, evaluate, answer a preemption and save.
"""

import collections

import jax
from etils import epath

from llm_jax import checkpoint, relayout, rundir, storage, tracking
from llm_jax.data import loader
from llm_jax.errors import ConfigError
from llm_jax.inference.load import load_params
from llm_jax.models import configs as model_configs
from llm_jax.train import facts, hooks
from llm_jax.train.trainer import Trainer, build_steps

# Steps dispatched ahead of the host. Two keep the device busy; an unbounded queue holds every
# pending batch in memory and deadlocks XLA's CPU collectives on many fake devices.
MAX_IN_FLIGHT = 2


def _resume(trainer, ckpt) -> int:
  """Restores the newest readable checkpoint, or initialises; returns the step to continue from.

  A fresh run with `ckpt.init_from` starts from those parameters and a new optimizer state.
  """
  restore = lambda step: _restore_state(trainer, ckpt, step)
  start, state = ckpt.restore_latest(restore, move_aside=True)
  if start is not None:
    trainer.state = state
    return start
  trainer.init_state()
  source = trainer.cfg.ckpt.init_from
  if source:

    def restore(model_cfg):
      return load_params(
        source, model_cfg, trainer.mesh, trainer.cfg.mesh.rules, what='ckpt.init_from'
      )[1]

    params = trainer.task.load_init(trainer.state.params, restore)
    trainer.state = trainer.state._replace(params=params)
  return 0


def _restore_state(trainer, ckpt, step: int):
  """The training state saved at `step`, in the trainer's layout and shardings."""
  other = lambda model_cfg: build_steps(trainer.cfg, model_cfg, trainer.mesh).abstract
  return relayout.restore(
    ckpt, step, trainer.steps.abstract, trainer.task.model_cfg, other, ckpt.restore
  )


def _check_resumable(cfg, workdir: epath.Path) -> None:
  """ConfigError if `workdir` holds checkpoints of a model with other parameter shapes."""
  if not rundir.has_checkpoints(workdir):
    return
  # A key the saved config lacks predates it: that run had the key's default.
  old = {**model_configs.section_defaults(), **rundir.read_config(workdir).model.to_dict()}
  new = cfg.model.to_dict()
  for key in sorted(new):
    if key not in model_configs.SHAPE_FREE_KEYS and old.get(key) != new[key]:
      raise ConfigError(
        f'model.{key}={new[key]!r} but the checkpoints in {workdir} have {old.get(key)!r};'
        ' use a new --workdir'
      )


def _step_loop(run: hooks.Run, batches, step_hooks) -> None:
  """Steps over prefetched (step, batch) pairs, calling every hook around each, until the
  batches end or a hook ends the run."""
  trainer = run.trainer
  in_flight = collections.deque()
  for step, batch in batches:
    for hook in step_hooks:
      hook.before(run, step)
    trainer.state, metrics = trainer.train_step(trainer.state, batch)
    in_flight.append(metrics['loss'])
    if len(in_flight) > MAX_IN_FLIGHT:
      in_flight.popleft().block_until_ready()
    if any(hook.after(run, step + 1, metrics) for hook in step_hooks):
      return


def _run_steps(run: hooks.Run, profile: hooks.ProfileWindow) -> None:
  """The steps from `run.start` to the end, or to a stop request (SIGTERM, or JAX's preemption
  sync point on multi-host): then the step is saved and `run.last` holds `preempted_at`."""
  cfg = run.trainer.cfg
  with (
    hooks.StopRequest(run.ckpt) as stop,
    loader.Prefetch(run.trainer.batch, run.start, cfg.train.steps, cfg.data.prefetch) as batches,
  ):
    step_hooks = (profile, hooks.LogMetrics(), hooks.Evaluate(), stop, hooks.SaveCheckpoints())
    try:
      _step_loop(run, batches, step_hooks)
    finally:
      profile.close()


def _finish(run: hooks.Run) -> dict:
  """The run's summary: the last metrics (an evaluation when none was logged) and a sample."""
  trainer, last = run.trainer, run.last
  preempted = 'preempted_at' in last
  if trainer.eval_set and 'eval_loss' not in last and not preempted:
    last.update(trainer.evaluate())  # nothing was left to train: evaluate anyway
  summary = {k: float(v) for k, v in last.items() if v is not None}
  if preempted:
    run.tracker.print(
      f'stopped by SIGTERM: saved step {last["preempted_at"]} to {run.ckpt.directory}'
    )
    return summary
  if trainer.cfg.sample.max_new_tokens and trainer.task.name == 'lm':
    summary['sample'] = trainer.sample()
    run.tracker.print('--- sample ---\n' + summary['sample'])
  run.tracker.summary(**summary)
  return summary


def train(cfg, workdir) -> dict:
  """Runs `cfg` in `workdir`, resuming from its latest checkpoint; returns the final metrics.

  A run stopped by SIGTERM returns early with `preempted_at`, the step it saved.
  """
  workdir = storage.path(workdir)
  _check_resumable(cfg, workdir)
  trainer = Trainer(cfg, workdir)
  is_writer = jax.process_index() == 0
  config_json = cfg.to_json_best_effort(indent=2)
  if is_writer:
    rundir.write_config(workdir, config_json)
  ckpt = checkpoint.Checkpointer(workdir, cfg.ckpt, config_json)
  tracker = None
  try:
    start = _resume(trainer, ckpt)
    if is_writer:  # rows past the restored step are replayed, not duplicated
      tracking.drop_rows_after(workdir, start)
    tracker = tracking.Tracker(workdir, cfg, total_steps=cfg.train.steps, active=is_writer)
    if start:
      tracker.print(f'resumed from {ckpt.directory / str(start)}')
      tracker.advance(start)
    facts.log(tracker, trainer, trainer.compile())
    run = hooks.Run(trainer, ckpt, tracker, start)
    profile_dir = storage.local_dir(workdir) / rundir.PROFILE
    _run_steps(run, hooks.ProfileWindow(cfg.profile, profile_dir, start))
    return _finish(run)
  finally:
    try:
      ckpt.close()  # waits for the last save, which may fail (a full disk)
    finally:
      if tracker is not None:
        tracker.close()
