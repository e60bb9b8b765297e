"""Pure training and evaluation steps around `jax.jit`.

The model lives as (graphdef, params): `nnx.split` once, `nnx.merge` inside the jitted
function. Plain `jax.jit` over pure functions keeps the hot path free of NNX's Python-side
graph traversal, and lets us give explicit shardings and donate the training state.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llm_jax import sharding
from llm_jax.models import registry


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: nnx.State
  opt_state: optax.OptState
  skipped: jax.Array  # int32 scalar: updates dropped because loss or gradients were not finite
  first_bad: jax.Array  # int32 (2,): step of the first dropped update (-1: none), 1 if loss was bad


def no_bad_steps():
  return jnp.zeros((), jnp.int32), jnp.array([-1, 0], jnp.int32)


def state_shardings(model_cfg, tx, mesh, rules):
  """(graphdef, abstract state, shardings): the training state's layout, nothing allocated."""
  graphdef, abstract_params, param_shardings = registry.param_layout(model_cfg, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # Optimizer moments follow their parameters; scalars such as step counts are replicated.
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract_opt,
    param_shardings,
    transform_non_params=lambda _: sharding.replicated(mesh),
  )
  scalar = sharding.replicated(mesh)
  shardings = TrainState(scalar, param_shardings, opt_shardings, scalar, scalar)
  abstract = TrainState(
    jax.ShapeDtypeStruct((), jnp.int32),
    abstract_params,
    abstract_opt,
    *jax.eval_shape(no_bad_steps),
  )
  return graphdef, registry.with_shardings(abstract, shardings), shardings


def make_init(model_cfg, tx, seed: int, shardings):
  """A jitted function creating the initial state directly on its shardings."""

  def init():
    params = nnx.state(registry.build(model_cfg, seed), nnx.Param)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), *no_bad_steps())

  return jax.jit(init, out_shardings=shardings)


def make_train_step(graphdef, tx, schedule, loss_fn, *, accum_steps: int, dropout: bool, seed: int):
  """train_step(state, batch) -> (state, metrics); batch: a dict of (B, ...) arrays.

  loss_fn(model, batch, key, rngs) -> (loss, (metrics, weight)): the task's objective, as means
  over `weight` scored tokens or examples; `key` serves randomness that is part of the objective
  (MLM masking), `rngs` dropout (None when off).

  Accumulated microbatches are weighed by their `weight` and divided once by the total, so the
  loss and gradient are those of the whole batch, however the scored tokens fall.
  """
  base_key = jax.random.key(seed)

  def objective(params, batch, key):
    task_key, dropout_key = jax.random.split(key)
    rngs = nnx.Rngs(dropout=dropout_key) if dropout else None
    return loss_fn(nnx.merge(graphdef, params), batch, task_key, rngs)

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def accumulate(params, batch, key):
    # Microbatch a takes rows a, a+A, a+2A, ... so every microbatch stays evenly spread over
    # the devices that hold the batch.
    split = lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

    def micro(carry, xs):
      (loss, (metrics, weight)), grads = grad_fn(params, *xs)
      weighted = jax.tree.map(lambda x: x * weight, (loss, metrics, grads))
      return jax.tree.map(jnp.add, carry, (weighted, weight)), None

    keys = jax.random.split(key, accum_steps)
    first = jax.tree.map(lambda x: split(x)[0], batch)
    (_, (metrics, _)), _ = jax.eval_shape(grad_fn, params, first, key)
    zeros = jax.tree.map(jnp.zeros_like, ((jnp.zeros(()), metrics, params), jnp.zeros(())))
    (total, weight), _ = jax.lax.scan(micro, zeros, (jax.tree.map(split, batch), keys))
    loss, metrics, grads = jax.tree.map(lambda x: x / jnp.maximum(weight, 1), total)
    return (loss, (metrics, weight)), grads

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(base_key, state.step)  # masks and dropout: functions of (seed, step)
    if accum_steps == 1:
      (loss, (task_metrics, _)), grads = grad_fn(state.params, batch, key)
    else:
      (loss, (task_metrics, _)), grads = accumulate(state.params, batch, key)
    # A named scope marks the update's kernels in profiles and in the compiled program.
    with jax.named_scope('optimizer'):
      grad_norm = optax.global_norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      # A non-finite loss or gradient never reaches the parameters: the update is dropped and
      # counted; the loop then halts or carries on (train.on_nonfinite).
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    first_bad = jnp.where(
      finite | (state.first_bad[0] >= 0),
      state.first_bad,
      jnp.stack([state.step + 1, (~jnp.isfinite(loss)).astype(jnp.int32)]),
    )
    skipped = state.skipped + (~finite).astype(jnp.int32)
    # The schedule's own position: dropped updates leave the optimizer state, and its count, as
    # they were, so this is the learning rate the update applied (or would have).
    lr = schedule(state.step - state.skipped)
    metrics = {'loss': loss, 'grad_norm': grad_norm, 'lr': lr, 'skipped': skipped}
    metrics.update(task_metrics)
    return TrainState(state.step + 1, params, opt_state, skipped, first_bad), metrics

  return train_step


def make_eval_step(graphdef, eval_fn):
  """eval_step(params, batch) -> eval_fn(model, batch): the task's metrics, no dropout."""

  def eval_step(params, batch):
    return eval_fn(nnx.merge(graphdef, params), batch)

  return eval_step
