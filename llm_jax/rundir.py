"""A run directory's layout: every file name, and reading and writing its config and tokenizer.

  WORKDIR/
    config.json      the resolved config (`config.from_json` reads it back)
    tokenizer.json   the tokenizer the run's ids mean (`data.tokenizer.load`)
    metrics.jsonl    one JSON row per logged step (`tracking`)
    checkpoints/     Orbax steps (`checkpoint.Checkpointer`); params-only in an export or import
    tensorboard/     event files, when tensorboard.enabled
    profile/ wandb/  local-only (see `storage.local_dir`): a profiler trace, the W&B offline run

An export or an HF import is a run directory too: config, tokenizer and params-only checkpoints.
No JAX here: `compare` and config tools read runs without starting a backend.
"""

import os

from etils import epath

from llm_jax import config, data, storage
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.errors import MissingFile

CONFIG = 'config.json'
TOKENIZER = data.TOKENIZER_FILE  # the name prepared data gives it too
METRICS = 'metrics.jsonl'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
PROFILE = 'profile'  # under storage.local_dir(workdir)


def path(workdir, name: str) -> epath.Path:
  """WORKDIR/name, for a local path or a bucket URL."""
  return storage.path(workdir) / name


def checkpoints(workdir) -> epath.Path:
  """Where `workdir` keeps its checkpoints; absolute, as Orbax wants."""
  p = path(workdir, CHECKPOINTS)
  return p if storage.is_bucket(workdir) else p.absolute()


def has_checkpoints(workdir) -> bool:
  return path(workdir, CONFIG).exists() and checkpoints(workdir).exists()


def read_config(workdir):
  """The resolved config a run (or export) saved; MissingFile naming it if there is none."""
  p = path(workdir, CONFIG)
  try:
    return config.from_json(p.read_text())
  except FileNotFoundError:
    raise MissingFile(f'{p} not found: is {os.fspath(workdir)} a run?') from None


def write_config(workdir, config_json: str) -> None:
  path(workdir, CONFIG).write_text(config_json + '\n')


def read_tokenizer(workdir) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.load(path(workdir, TOKENIZER))


def write_tokenizer(workdir, tokenizer: tokenizer_lib.Tokenizer) -> None:
  tokenizer.save(path(workdir, TOKENIZER))


def write_tokenizer_bytes(workdir, saved: bytes) -> None:
  """A tokenizer.json as another run saved it, byte for byte."""
  path(workdir, TOKENIZER).write_bytes(saved)
