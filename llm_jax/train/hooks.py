"""The step loop's hooks: each concern of a run between two steps, as a small object.

After every step the loop calls each hook in order with the `Run` (trainer, checkpoints,
tracker, clock, the last logged metrics); a hook that returns True ends the run there. In the
order `loop.train` gives them: `ProfileWindow` (a profiler trace of a few steps), `LogMetrics`
(the only host sync, once per log interval), `Evaluate`, `StopRequest` (preemption: save, wait,
stop) and `SaveCheckpoints`.
"""

import contextlib
import dataclasses
import signal
import threading
import time

import jax

from llm_jax import perf
from llm_jax.errors import NonFiniteError

clock = time.perf_counter  # the step timer's (tests give it a clock of their own)


class TrainClock:
  """Seconds of training since the last log: the clock stops while an evaluation or a save runs,
  once the steps dispatched before it have finished."""

  def __init__(self, step: int):
    self.step, self.seconds, self._since = step, 0.0, clock()

  @contextlib.contextmanager
  def paused(self, state):
    jax.block_until_ready(state)
    self.seconds += clock() - self._since
    try:
      yield
    finally:
      self._since = clock()

  def lap(self, step: int) -> tuple[int, float]:
    """(steps, seconds) of training since the last lap, which ends at `step` (whose results the
    caller has waited for)."""
    steps, seconds = step - self.step, self.seconds + clock() - self._since
    self.step, self.seconds, self._since = step, 0.0, clock()
    return steps, seconds


@dataclasses.dataclass
class Run:
  """What the hooks act on: a run from step `start` on."""

  trainer: object  # train.trainer.Trainer
  ckpt: object  # checkpoint.Checkpointer
  tracker: object  # tracking.Tracker
  start: int
  clock: TrainClock = dataclasses.field(init=False)
  last: dict = dataclasses.field(default_factory=dict)  # the last logged metrics

  def __post_init__(self):
    self.clock = TrainClock(self.start)

  def halt_if_nonfinite(self) -> None:
    """NonFiniteError naming the first bad step and metric, when halting on them (a host
    sync)."""
    trainer = self.trainer
    if trainer.cfg.train.on_nonfinite != 'halt' or not int(trainer.state.skipped):
      return
    step, loss_bad = (int(x) for x in jax.device_get(trainer.state.first_bad))
    self.ckpt.wait()
    kept = self.ckpt.latest_step()
    raise NonFiniteError(
      f'step {step}: {"loss" if loss_bad else "grad_norm"} is not finite; stopped'
      f' (train.on_nonfinite=halt). Last good checkpoint: '
      + (f'{self.ckpt.directory / str(kept)}' if kept is not None else 'none')
    )


class Hook:
  """Called around every step; `after` returning True ends the run after that step."""

  def before(self, run: Run, step: int) -> None:
    del run, step

  def after(self, run: Run, done: int, metrics: dict) -> bool:
    del run, done, metrics
    return False


class ProfileWindow(Hook):
  """A JAX profiler trace of steps [first, first + profile.steps) into `directory`, where first
  is `profile.skip` steps after `start` (compilation and warm-up stay out of the trace)."""

  def __init__(self, profile_cfg, directory, start: int):
    self.first = start + profile_cfg.skip
    self.end = self.first + profile_cfg.steps if profile_cfg.steps else -1
    self.directory = directory
    self.tracing = False

  def before(self, run, step):
    if step == self.first and self.end > 0:
      jax.profiler.start_trace(str(self.directory))
      self.tracing = True

  def after(self, run, done, metrics):
    if self.tracing and done == self.end:
      jax.block_until_ready(run.trainer.state)  # the traced steps' device work ends inside
      self.close()
    return False

  def close(self) -> None:
    """Ends the trace if it is still open (the run stopped inside the window)."""
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


class LogMetrics(Hook):
  """Every `train.log_every` steps and at the last: the step's metrics with throughput and MFU,
  to the tracker; halts on a non-finite step when the run says so."""

  def after(self, run, done, metrics):
    cfg, t = run.trainer.cfg, run.trainer.cfg.train
    if done % t.log_every and done != t.steps:
      return False
    metrics = jax.device_get(metrics)  # the only host sync: once per log interval
    steps, seconds = run.clock.lap(done)
    tps = steps * t.batch_size * cfg.data.seq_len / seconds
    task = run.trainer.task
    mfu = perf.mfu(tps, task.perf_cfg, cfg.data.seq_len, jax.device_count(), task.scored)
    run.last = dict(metrics, tokens_per_sec=tps, step_time=seconds / steps, mfu=mfu)
    run.tracker.log(done, **run.last)
    run.tracker.advance(steps)
    if metrics['skipped']:
      run.halt_if_nonfinite()
    return False


class Evaluate(Hook):
  """Every `eval.every_steps` steps and at the last, off the train clock."""

  def after(self, run, done, metrics):
    trainer = run.trainer
    every, steps = trainer.cfg.eval.every_steps, trainer.cfg.train.steps
    if not trainer.eval_set or not ((every and done % every == 0) or done == steps):
      return False
    with run.clock.paused(trainer.state):
      results = trainer.evaluate()
    run.last.update(results)
    run.tracker.log(done, **results)
    run.tracker.print(f'step {done}: ' + ', '.join(f'{k} {v:.4f}' for k, v in results.items()))
    return False


class StopRequest(Hook):
  """A request to stop (preemption): finish the step, save it, wait for the save, stop; the
  run's result then holds `preempted_at`.

  One process: SIGTERM sets a flag that the step loop polls. Several processes: JAX's preemption
  notifier receives SIGTERM (installed by `jax.distributed.initialize`; a handler of ours would
  replace it), and JAX's preemption sync point makes every process stop at the same step, so
  they enter the collective save together however far apart their signals arrived.
  """

  def __init__(self, ckpt):
    self._ckpt = ckpt
    self._signalled = False
    self._previous = None

  def __enter__(self):
    # Signals reach the main thread only.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def after(self, run, done, metrics):
    # Every process calls this at every step: the preemption sync point is a collective.
    if not (self._signalled or self._ckpt.reached_preemption(done)):
      return False
    run.halt_if_nonfinite()
    run.ckpt.save(done, run.trainer.state)
    run.ckpt.wait()
    run.last = dict(run.last, preempted_at=done)
    return True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class SaveCheckpoints(Hook):
  """Every `ckpt.every_steps` steps and at the last, off the train clock; never past a bad
  step."""

  def after(self, run, done, metrics):
    if run.ckpt.due(done, final=done == run.trainer.cfg.train.steps):
      run.halt_if_nonfinite()
      with run.clock.paused(run.trainer.state):
        run.ckpt.save(done, run.trainer.state)
    return False
