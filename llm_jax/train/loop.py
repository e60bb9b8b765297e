"""The training loop: validate, build, compile, step, log, evaluate, sample."""

import collections
import contextlib
import functools
import importlib.metadata
import logging
import pathlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from llm_jax import checkpoint, data, generate, perf, sharding, storage, tracking
from llm_jax import config as config_lib
from llm_jax.data import loader
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.train import optim, relayout, tasks
from llm_jax.train import step as step_lib

CONFIG_FILE = config_lib.CONFIG_FILE
# Steps dispatched ahead of the host. Two keep the device busy; an unbounded queue holds every
# pending batch in memory and deadlocks XLA's CPU collectives on many fake devices.
MAX_IN_FLIGHT = 2
clock = time.perf_counter  # the step timer's (tests give it a clock of their own)
VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'llm_jax')  # in run facts


def batch_sharding(mesh, rules=sharding.DEFAULT_RULES, ndim: int = 2):
  """Batch arrays split by rows over the data axes: (B, T) token arrays, or (B,) per example."""
  return sharding.named_sharding(mesh, ('batch', 'length')[:ndim], rules)


def put_batch(batch: dict, mesh, rules) -> dict:
  """A whole batch held by this one process, placed with its rows over the data axes."""
  return {k: jax.device_put(v, batch_sharding(mesh, rules, v.ndim)) for k, v in batch.items()}


class Steps(NamedTuple):
  """A model's training state layout and its jitted functions."""

  graphdef: nnx.GraphDef
  abstract: step_lib.TrainState  # ShapeDtypeStructs carrying the shardings
  init: Callable[[], step_lib.TrainState]
  train: Callable  # (state, batch) -> (state, metrics); donates state
  eval: Callable  # (params, batch) -> the task's evaluation outputs


def _traced_with_activation_sharding(fn, mesh, rules):
  def traced(*args):
    with sharding.activation_sharding(mesh, rules):
      return fn(*args)

  return traced


def build_steps(cfg, model_cfg, mesh, loss_fn=tasks.lm_loss, eval_fn=tasks.lm_eval) -> Steps:
  """The state layout and jitted init/train/eval functions, with explicit shardings.

  The batch keeps the shardings its arrays were placed with (rows over the data axes).
  """
  rules = cfg.mesh.rules
  tx = optim.make(cfg.optimizer, cfg.train.steps)
  try:
    graphdef, abstract, shardings = step_lib.state_shardings(model_cfg, tx, mesh, rules)
  except ValueError as e:  # a parameter that the mesh cannot split evenly
    raise config_lib.ConfigError(str(e)) from None
  train_step = step_lib.make_train_step(
    graphdef,
    tx,
    optim.schedule(cfg.optimizer, cfg.train.steps),
    loss_fn,
    accum_steps=cfg.train.grad_accum_steps,
    dropout=model_cfg.dropout > 0,
    seed=cfg.train.seed,
  )
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(
    _traced_with_activation_sharding(train_step, mesh, rules),
    in_shardings=(shardings, None),
    out_shardings=(shardings, replicated),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    _traced_with_activation_sharding(step_lib.make_eval_step(graphdef, eval_fn), mesh, rules),
    in_shardings=(shardings.params, None),
    out_shardings=replicated,
  )
  init = step_lib.make_init(model_cfg, tx, cfg.train.seed, shardings)
  return Steps(graphdef, abstract, init, train_step, eval_step)


def local_rows(batch_sharding, global_shape) -> slice:
  """The rows of a global batch that this process's devices hold."""
  index = batch_sharding.addressable_devices_indices_map(global_shape).values()
  lo = min(i[0].start or 0 for i in index)
  hi = max(global_shape[0] if i[0].stop is None else i[0].stop for i in index)
  return slice(lo, hi)


class Trainer:
  """Everything a run needs, built once: the task and its data, mesh, state layout and steps.

  `state` stays None until `init_state` or a checkpoint restore fills it, so a dry run and a
  resumed run never allocate a fresh model. `devices` (default: all) may be devices with no
  hardware behind them (a TPU topology), for which a dry run compiles and nothing is placed.
  """

  def __init__(self, cfg, workdir: epath.Path | None, devices=None):
    devices = jax.devices() if devices is None else devices
    note = config_lib.fit_warmup(cfg)
    if note and jax.process_index() == 0:
      logging.warning(note)
    config_lib.validate(cfg, len(devices), devices[0].platform)
    self.cfg = cfg
    is_writer = workdir is not None and jax.process_index() == 0
    if is_writer:
      workdir.mkdir(parents=True, exist_ok=True)
    self.task = tasks.make(cfg, workdir, write=is_writer)  # every process reads its tokenizer
    if self.task.name == 'lm' and cfg.sample.max_new_tokens:  # before training, not after it
      config_lib.validate_sampling(cfg.sample, 'sample.', self.task.tokenizer.vocab_size)
    self.mesh = sharding.make_mesh(cfg.mesh, devices)
    self.steps = build_steps(
      cfg, self.task.model_cfg, self.mesh, self.task.loss, self.task.evaluate
    )
    self.train_step = self.steps.train
    self.global_shapes = self.task.shapes(cfg.train.batch_size)
    self.state = None

  @functools.cached_property
  def rows(self) -> slice:
    """This process's rows of every training batch."""
    return self._rows(self.cfg.train.batch_size)

  @functools.cached_property
  def eval_set(self) -> list[dict]:
    """The evaluation batches, on device once and reused by every evaluation."""
    rows = self._rows(self.cfg.eval.batch_size)
    return [
      self._global({k: v[rows] for k, v in b.items()}, self.cfg.eval.batch_size)
      for b in self.task.eval_set
    ]

  def _rows(self, batch_size: int) -> slice:
    return local_rows(self.array_sharding(1), (batch_size,))

  def array_sharding(self, ndim: int):
    """How a batch array of `ndim` dimensions is placed: rows over the data axes."""
    return batch_sharding(self.mesh, self.cfg.mesh.rules, min(ndim, 2))

  def init_state(self) -> None:
    self.state = self.steps.init()

  def batch(self, step: int) -> dict:
    """This process's rows of the training batch for `step`, as global arrays."""
    return self._global(self.task.train_batches(step, self.rows), self.cfg.train.batch_size)

  def _global(self, local: dict, batch_size: int) -> dict:
    """Global arrays of `batch_size` rows from this process's rows of each batch array."""
    return {
      k: jax.make_array_from_process_local_data(
        self.array_sharding(v.ndim), v, (batch_size, *v.shape[1:])
      )
      for k, v in local.items()
    }

  def compile(self) -> float:
    """Ahead-of-time compile of the train step from the abstract state; returns seconds."""
    start = time.perf_counter()
    batch = {
      k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.array_sharding(len(shape)))
      for k, shape in self.global_shapes.items()
    }
    self.train_step = self.steps.train.lower(self.steps.abstract, batch).compile()
    return time.perf_counter() - start

  def evaluate(self) -> dict[str, float]:
    """The task's eval_* metrics over the fixed evaluation set."""
    outputs = [self.steps.eval(self.state.params, batch) for batch in self.eval_set]
    return self.task.summarize(jax.device_get(outputs))

  def sample(self) -> str:
    s, tok = self.cfg.sample, self.task.tokenizer
    prompt = tok.encode(s.prompt)
    [ids] = generate.generate(
      self.steps.graphdef,
      self.state.params,
      [prompt],
      max_new_tokens=s.max_new_tokens,
      temperature=s.temperature,
      top_k=s.top_k,
      top_p=s.top_p,
      seed=s.seed,
      vocab_size=tok.vocab_size,
      eos_id=tok.eos_id,
    )
    return tok.decode(np.asarray([*prompt, *ids]))


def _git_commit() -> str | None:
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


def _log_facts(tracker, trainer, compile_s: float) -> None:
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
    git_commit=_git_commit(),
  )


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


def load_params(source, model_cfg, mesh, rules, *, what: str, target=None):
  """(step, parameters) of the newest checkpoint of a workdir or export directory `source`,
  as parameters of `model_cfg` placed on `mesh` by `rules`. `target`: those parameters'
  restore target when the caller has it already (built from the same arguments otherwise).

  `what` names the setting that pointed at `source`, for the error messages.
  """
  if not checkpoint.directory(source).is_dir():
    raise checkpoint.CheckpointError(f'{what}={source}: no {checkpoint.DIRECTORY}/ there')
  ckpt = checkpoint.Checkpointer(source, config_lib.base_config().ckpt)
  try:
    target_for = lambda m: step_lib.abstract_params(m, mesh, rules)
    target = target_for(model_cfg) if target is None else target
    restore = lambda step: relayout.restore(
      ckpt, step, target, model_cfg, target_for, ckpt.restore_params
    )
    step, params = ckpt.restore_latest(restore)  # a reader: damaged steps stay where they are
    if step is None:
      raise checkpoint.CheckpointError(f'{what}={source}: it holds no checkpoint')
    return step, params
  finally:
    ckpt.close()


class RunModel(NamedTuple):
  """A run's newest parameters on one device, with what it takes to use them."""

  cfg: object  # the run's config
  tokenizer: tokenizer_lib.Tokenizer
  graphdef: nnx.GraphDef
  params: nnx.State
  step: int


def load_model(workdir, *, what: str) -> RunModel:
  """The newest checkpoint of a run or export, gathered onto one device whatever mesh trained
  it. `what` names the setting that pointed at it, for the error messages."""
  cfg = config_lib.read_run(workdir)
  tok = tokenizer_lib.load(storage.path(workdir) / data.TOKENIZER_FILE)
  model_cfg = tasks.run_model_config(cfg, tok)
  single = dict(data=1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
  one_device = sharding.make_mesh(single, jax.devices()[:1])
  graphdef, abstract, shardings = step_lib.param_layout(model_cfg, one_device, cfg.mesh.rules)
  target = step_lib.with_shardings(abstract, shardings)
  step, params = load_params(
    workdir, model_cfg, one_device, cfg.mesh.rules, what=what, target=target
  )
  return RunModel(cfg, tok, graphdef, params, step)


def export(workdir, out, *, force: bool = False) -> epath.Path:
  """Writes the latest parameters of `workdir` (no optimizer state) with its config and
  tokenizer to `out`, a directory that `ckpt.init_from` and inference can load. A step that
  `out` already holds is a CheckpointError, or with `force` replaced."""
  workdir, out = storage.path(workdir), storage.path(out)
  cfg, _, _, params, step = load_model(workdir, what='export --workdir')
  existing = checkpoint.directory(out) / str(step)
  if existing.exists() and not force:
    raise checkpoint.CheckpointError(
      f'export --out {out} already holds step {step} ({existing}); --force replaces it'
    )
  out.mkdir(parents=True, exist_ok=True)
  for name in (CONFIG_FILE, data.TOKENIZER_FILE):
    (out / name).write_bytes((workdir / name).read_bytes())
  if existing.exists():
    existing.rmtree()  # an export is a copy of the run's step: asked for with --force
  exported = checkpoint.Checkpointer(out, cfg.ckpt, cfg.to_json_best_effort(indent=2))
  exported.save_params(step, params)
  exported.close()
  return existing


class NonFiniteError(RuntimeError):
  """Training met a non-finite loss or gradient under train.on_nonfinite='halt'."""


def _halt_if_nonfinite(trainer, ckpt) -> None:
  """NonFiniteError naming the first bad step and metric, when halting on them (a host sync)."""
  if trainer.cfg.train.on_nonfinite != 'halt' or not int(trainer.state.skipped):
    return
  step, loss_bad = (int(x) for x in jax.device_get(trainer.state.first_bad))
  ckpt.wait()
  kept = ckpt.latest_step()
  raise NonFiniteError(
    f'step {step}: {"loss" if loss_bad else "grad_norm"} is not finite; stopped'
    f' (train.on_nonfinite=halt). Last good checkpoint: '
    + (f'{ckpt.directory / str(kept)}' if kept is not None else 'none')
  )


class StopRequest:
  """A request to stop (preemption): finish the step, save it, wait for the save, exit 0.

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

  def __call__(self, step: int) -> bool:
    """Whether to stop after `step`; every process calls this at every step."""
    return self._signalled or self._ckpt.reached_preemption(step)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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


class ProfileWindow:
  """A JAX profiler trace of steps [first, first + profile.steps) into `directory`, where first
  is `profile.skip` steps after `start` (compilation and warm-up stay out of the trace)."""

  def __init__(self, profile_cfg, directory, start: int):
    self.first = start + profile_cfg.skip
    self.end = self.first + profile_cfg.steps if profile_cfg.steps else -1
    self.directory = directory
    self.tracing = False

  def before(self, step: int) -> None:
    if step == self.first and self.end > 0:
      jax.profiler.start_trace(str(self.directory))
      self.tracing = True

  def after(self, step: int, state) -> None:
    if self.tracing and step + 1 == self.end:
      jax.block_until_ready(state)  # the traced steps' device work ends inside the trace
      self.close()

  def close(self) -> None:
    """Ends the trace if it is still open (the run stopped inside the window)."""
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


def _run_steps(trainer, ckpt, tracker, start: int, stop: StopRequest, profile) -> dict:
  """Steps from `start` to the end or a stop request; returns the last logged metrics.

  On a stop request (SIGTERM, or JAX's preemption sync point on multi-host) the current step is
  saved and waited for, and the result holds `preempted_at`.
  """
  cfg = trainer.cfg
  with loader.Prefetch(trainer.batch, start, cfg.train.steps, cfg.data.prefetch) as batches:
    return _step_loop(trainer, ckpt, tracker, stop, start, batches, profile)


def _step_loop(trainer, ckpt, tracker, stop: StopRequest, start: int, batches, profile) -> dict:
  """The body of `_run_steps` over prefetched (step, batch) pairs."""
  cfg, t = trainer.cfg, trainer.cfg.train
  tokens_per_step = t.batch_size * cfg.data.seq_len
  last = {}
  timer = TrainClock(start)
  in_flight = collections.deque()
  for step, batch in batches:
    profile.before(step)
    trainer.state, metrics = trainer.train_step(trainer.state, batch)
    profile.after(step, trainer.state)
    in_flight.append(metrics['loss'])
    if len(in_flight) > MAX_IN_FLIGHT:
      in_flight.popleft().block_until_ready()
    done = step + 1
    if done % t.log_every == 0 or done == t.steps:
      metrics = jax.device_get(metrics)  # the only host sync: once per log interval
      steps, seconds = timer.lap(done)
      tps = steps * tokens_per_step / seconds
      task = trainer.task
      mfu = perf.mfu(tps, task.perf_cfg, cfg.data.seq_len, jax.device_count(), task.scored)
      last = dict(metrics, tokens_per_sec=tps, step_time=seconds / steps, mfu=mfu)
      tracker.log(done, **last)
      tracker.advance(steps)
      if metrics['skipped']:
        _halt_if_nonfinite(trainer, ckpt)
    eval_due = cfg.eval.every_steps and done % cfg.eval.every_steps == 0
    if trainer.eval_set and (eval_due or done == t.steps):
      with timer.paused(trainer.state):
        results = trainer.evaluate()
      last.update(results)
      tracker.log(done, **results)
      tracker.print(f'step {done}: ' + ', '.join(f'{k} {v:.4f}' for k, v in results.items()))
    if stop(done):
      _halt_if_nonfinite(trainer, ckpt)
      ckpt.save(done, trainer.state)
      ckpt.wait()
      return dict(last, preempted_at=done)
    if ckpt.due(done, final=done == t.steps):
      _halt_if_nonfinite(trainer, ckpt)  # a checkpoint is never written past a bad step
      with timer.paused(trainer.state):
        ckpt.save(done, trainer.state)
  return last


def _check_resumable(cfg, workdir: epath.Path) -> None:
  """ConfigError if `workdir` holds checkpoints of a model with other parameter shapes."""
  if not ((workdir / CONFIG_FILE).exists() and checkpoint.directory(workdir).exists()):
    return
  # A key the saved config lacks predates it: that run had the key's default.
  old = {**config_lib.base_config().model.to_dict(), **config_lib.read_run(workdir).model.to_dict()}
  new = cfg.model.to_dict()
  for key in sorted(new):
    if key not in config_lib.SHAPE_FREE_MODEL_KEYS and old.get(key) != new[key]:
      raise config_lib.ConfigError(
        f'model.{key}={new[key]!r} but the checkpoints in {workdir} have {old.get(key)!r};'
        ' use a new --workdir'
      )


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
    (workdir / CONFIG_FILE).write_text(config_json + '\n')
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
    _log_facts(tracker, trainer, trainer.compile())
    profile = ProfileWindow(cfg.profile, storage.local_dir(workdir) / 'profile', start)
    with StopRequest(ckpt) as stop:
      try:
        last = _run_steps(trainer, ckpt, tracker, start, stop, profile)
      finally:
        profile.close()
    preempted = 'preempted_at' in last
    if trainer.eval_set and 'eval_loss' not in last and not preempted:
      last.update(trainer.evaluate())  # nothing was left to train: evaluate anyway
    summary = {k: float(v) for k, v in last.items() if v is not None}
    if preempted:
      tracker.print(f'stopped by SIGTERM: saved step {last["preempted_at"]} to {ckpt.directory}')
      return summary
    if cfg.sample.max_new_tokens and trainer.task.name == 'lm':
      summary['sample'] = trainer.sample()
      tracker.print('--- sample ---\n' + summary['sample'])
    tracker.summary(**summary)
  finally:
    try:
      ckpt.close()  # waits for the last save, which may fail (a full disk)
    finally:
      if tracker is not None:
        tracker.close()
  return summary
