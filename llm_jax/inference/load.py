"""A run's (or export's) newest parameters, on any mesh, whatever mesh and layer layout trained
them: what export, generation, evaluation, HF export and `ckpt.init_from` read."""

from typing import NamedTuple

import jax
from flax import nnx

from llm_jax import checkpoint, config, relayout, rundir, sharding
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.models import registry
from llm_jax.train import tasks

ONE_DEVICE_MESH = dict(data=1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)


def load_params(source, model_cfg, mesh, rules, *, what: str, target=None):
  """(step, parameters) of the newest checkpoint of a workdir or export directory `source`,
  as parameters of `model_cfg` placed on `mesh` by `rules`. `target`: those parameters'
  restore target when the caller has it already (built from the same arguments otherwise).

  `what` names the setting that pointed at `source`, for the error messages.
  """
  if not rundir.checkpoints(source).is_dir():
    raise checkpoint.CheckpointError(f'{what}={source}: no {rundir.CHECKPOINTS}/ there')
  ckpt = checkpoint.Checkpointer(source, config.base_config().ckpt)
  try:
    target_for = lambda m: registry.abstract_params(m, mesh, rules)
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


def load_model(workdir, *, what: str, tokenizer: tokenizer_lib.Tokenizer | None = None):
  """The newest checkpoint of a run or export, gathered onto one device whatever mesh trained
  it. `what` names the setting that pointed at it, for the error messages; `tokenizer`: the
  run's, when the caller has read it already."""
  cfg = rundir.read_config(workdir)
  tok = rundir.read_tokenizer(workdir) if tokenizer is None else tokenizer
  model_cfg = tasks.run_model_config(cfg, tok)
  one_device = sharding.make_mesh(ONE_DEVICE_MESH, jax.devices()[:1])
  graphdef, abstract, shardings = registry.param_layout(model_cfg, one_device, cfg.mesh.rules)
  target = registry.with_shardings(abstract, shardings)
  step, params = load_params(
    workdir, model_cfg, one_device, cfg.mesh.rules, what=what, target=target
  )
  return RunModel(cfg, tok, graphdef, params, step)
