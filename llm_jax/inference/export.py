"""Params-only run directories: `llm-jax export`, and the one writer of such a directory that
export, HF import and the benchmarks share."""

from etils import epath

from llm_jax import checkpoint, rundir, storage
from llm_jax.inference.load import load_model


def save_params_run(out, config_json: str, ckpt_cfg, step: int, params) -> None:
  """Writes `params` as step `step` of the params-only run `out`, with its config; the caller
  puts the tokenizer beside them."""
  out = storage.path(out)
  out.mkdir(parents=True, exist_ok=True)
  rundir.write_config(out, config_json)
  saver = checkpoint.Checkpointer(out, ckpt_cfg, config_json)
  try:
    saver.save_params(step, params)
  finally:
    saver.close()


def export(workdir, out, *, force: bool = False) -> epath.Path:
  """Writes the latest parameters of `workdir` (no optimizer state) with its config and
  tokenizer to `out`, a directory that `ckpt.init_from` and inference can load. A step that
  `out` already holds is a CheckpointError, or with `force` replaced."""
  workdir, out = storage.path(workdir), storage.path(out)
  cfg, _, _, params, step = load_model(workdir, what='export --workdir')
  existing = rundir.checkpoints(out) / str(step)
  if existing.exists() and not force:
    raise checkpoint.CheckpointError(
      f'export --out {out} already holds step {step} ({existing}); --force replaces it'
    )
  if existing.exists():
    existing.rmtree()  # an export is a copy of the run's step: asked for with --force
  config_json = rundir.path(workdir, rundir.CONFIG).read_text().rstrip('\n')  # as the run wrote it
  save_params_run(out, config_json, cfg.ckpt, step, params)
  rundir.write_tokenizer_bytes(out, rundir.path(workdir, rundir.TOKENIZER).read_bytes())
  return existing
