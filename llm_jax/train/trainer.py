"""The Trainer: a config built into a task, a mesh, a state layout and jitted steps.

One builder serves every consumer of a config: `train` (then `loop.train` runs it), `train
--dry_run` (`plan.py` compiles it for real or described devices), `bench` (times its step) and
`eval` (scores a finished run with its eval step). Batches are placed with their rows over the
mesh's data axes, each process holding its own rows of the global batch.
"""

import functools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from llm_jax import sharding, validation
from llm_jax.config import DEFAULT_RULES
from llm_jax.errors import ConfigError
from llm_jax.inference import generate
from llm_jax.train import optim, tasks
from llm_jax.train import step as step_lib
from llm_jax.train.losses import lm_eval, lm_loss


def batch_sharding(mesh, rules=DEFAULT_RULES, ndim: int = 2):
  """Batch arrays split by rows over the data axes: (B, T) token arrays, or (B,) per example."""
  return sharding.named_sharding(mesh, ('batch', 'length')[:ndim], rules)


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


def build_steps(cfg, model_cfg, mesh, loss_fn=lm_loss, eval_fn=lm_eval) -> Steps:
  """The state layout and jitted init/train/eval functions, with explicit shardings.

  The batch keeps the shardings its arrays were placed with (rows over the data axes).
  """
  rules = cfg.mesh.rules
  tx = optim.make(cfg.optimizer, cfg.train.steps)
  try:
    graphdef, abstract, shardings = step_lib.state_shardings(model_cfg, tx, mesh, rules)
  except ValueError as e:  # a parameter that the mesh cannot split evenly
    raise ConfigError(str(e)) from None
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

  def __init__(self, cfg, workdir: epath.Path | None, devices=None, *, training: bool = True):
    """`training=False` (scoring a finished run in `workdir`): the train batch is not checked
    against the devices, and nothing is written into the run."""
    devices = jax.devices() if devices is None else devices
    if training:
      note = optim.fit_warmup(cfg)
      if note and jax.process_index() == 0:
        logging.warning(note)
    validation.validate(cfg, len(devices), devices[0].platform, training=training)
    self.cfg = cfg
    is_writer = training and workdir is not None and jax.process_index() == 0
    if is_writer:
      workdir.mkdir(parents=True, exist_ok=True)
    self.task = tasks.make(cfg, workdir, write=is_writer)  # every process reads its tokenizer
    if training and self.task.name == 'lm' and cfg.sample.max_new_tokens:  # before, not after
      generate.validate_sampling(cfg.sample, 'sample.', self.task.tokenizer.vocab_size)
    self.mesh = sharding.make_mesh(cfg.mesh, devices)
    self.steps = build_steps(
      cfg, self.task.model_cfg, self.mesh, self.task.loss, self.task.evaluate
    )
    self.train_step = self.steps.train
    self.global_shapes = self.task.train_batches.shapes(cfg.train.batch_size)
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

  def evaluate(self, params=None) -> dict[str, float]:
    """The task's eval_* metrics over the fixed evaluation set, of `params` (default: the
    state's)."""
    params = self.state.params if params is None else params
    outputs = [self.steps.eval(params, batch) for batch in self.eval_set]
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
