"""One `validate` for a whole config, before anything is compiled: each section's owner checks
its own, and the settings that span sections are checked here.

  model.*        models.configs.validate      data.*         data.validate
  mesh.*         sharding.validate            distributed.*  distributed.validate
  train.task...  train.tasks.validate         optimizer.*    train.optim.validate
  sample.*       inference.generate.validate_sampling
  train.*, eval.*, ckpt.*, profile.*, wandb.*, and the batch against the mesh: here

A `ConfigError` names the first field that cannot work.
"""

from llm_jax import data, distributed, sharding
from llm_jax.errors import check, choice
from llm_jax.inference.generate import validate_sampling
from llm_jax.models import configs as model_configs
from llm_jax.train import optim, tasks


def _run_sections(cfg) -> None:
  """The sections of the run itself: its length, logging, evaluation, checkpoints and trackers."""
  t = cfg.train
  choice(t.on_nonfinite, 'train.on_nonfinite', ('halt', 'skip'))
  for field in ('steps', 'batch_size', 'grad_accum_steps', 'log_every'):
    check(t[field] > 0, f'train.{field}={t[field]} must be positive')
  check(
    t.batch_size % t.grad_accum_steps == 0,
    f'train.batch_size={t.batch_size} must be divisible by'
    f' train.grad_accum_steps={t.grad_accum_steps}',
  )
  check(
    cfg.profile.steps >= 0 and cfg.profile.skip >= 0, 'profile.steps and profile.skip must be >= 0'
  )
  check(
    cfg.eval.batches >= 0 and cfg.eval.every_steps >= 0,
    'eval.batches and eval.every_steps must be >= 0',
  )
  check(cfg.ckpt.every_steps >= 0, f'ckpt.every_steps={cfg.ckpt.every_steps} must be >= 0')
  check(cfg.ckpt.max_to_keep > 0, f'ckpt.max_to_keep={cfg.ckpt.max_to_keep} must be positive')
  check(cfg.ckpt.keep_period >= 0, f'ckpt.keep_period={cfg.ckpt.keep_period} must be >= 0')
  choice(cfg.wandb.mode, 'wandb.mode', ('online', 'offline', 'disabled'))


def _batches_on_mesh(cfg, data_parallel: int, tensor: int, training: bool) -> None:
  """The batches split evenly over the data axes, the heads over the tensor axis."""
  t = cfg.train
  check(
    tensor == 1 or cfg.model.n_head % tensor == 0,
    f'model.n_head={cfg.model.n_head} must be divisible by mesh.tensor={tensor}',
  )
  micro = t.batch_size // t.grad_accum_steps
  check(
    not training or micro % data_parallel == 0,
    f'train.batch_size={t.batch_size} / train.grad_accum_steps={t.grad_accum_steps} = {micro}'
    f' must be divisible by mesh data×fsdp = {data_parallel}',
  )
  check(
    cfg.eval.batches == 0 or cfg.eval.batch_size % data_parallel == 0,
    f'eval.batch_size={cfg.eval.batch_size} must be divisible by mesh data×fsdp = {data_parallel}',
  )


def validate(cfg, num_devices: int, backend: str, *, training: bool = True) -> None:
  """Raise ConfigError naming the first field that cannot work on `num_devices` devices of
  `backend`. `training=False` (evaluation of a finished run): the train batch is not checked
  against them."""
  model_configs.validate(cfg.model, backend=backend, seq_len=cfg.data.seq_len)
  data.validate(cfg.data)
  tasks.validate(cfg)
  _run_sections(cfg)
  optim.validate(cfg.optimizer)
  data_axis, fsdp, tensor = sharding.validate(cfg.mesh, num_devices)
  distributed.validate(cfg.distributed)
  _batches_on_mesh(cfg, data_axis * fsdp, tensor, training)
  validate_sampling(cfg.sample, 'sample.')
