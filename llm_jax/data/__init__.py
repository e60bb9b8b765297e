"""Data: sources, tokenizers, prepared token shards and batching.

A run reads either prepared shards (`data.path`, written by `llm-jax prepare`) or tokenizes
`data.source` in memory at start-up (the embedded corpus and other small corpora). Either way the
tokenizer is saved in the workdir and reused on resume, so ids never change under a run.
"""

import dataclasses

from etils import epath

from llm_jax.data import prepare, sources, tokens
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.data.errors import DataError
from llm_jax.data.tokenizer import Tokenizer

TOKENIZER_FILE = tokens.TOKENIZER

__all__ = ['DataError', 'Dataset', 'Tokenizer', 'load', 'source_tokenizer', 'TOKENIZER_FILE']


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: tokens.TokenStream
  validation: tokens.TokenStream
  tokenizer: Tokenizer
  origin: str  # what was read: the source spec or the prepared directory


def _same(a: Tokenizer, b: Tokenizer) -> bool:
  return a.spec() == b.spec()


def _from_path(data_cfg, saved: epath.Path | None, write: bool) -> Dataset:
  prepared = tokens.open_prepared(data_cfg.path)
  tok = prepared.tokenizer
  if saved and saved.exists() and not _same(tokenizer_lib.load(saved), tok):
    raise DataError(
      f'data.path={data_cfg.path}: its tokenizer differs from the one this run trained with'
      f' ({saved}); use a new --workdir'
    )
  if saved and write:
    tok.save(saved)
  return Dataset(prepared.splits['train'], prepared.splits['validation'], tok, str(prepared.path))


def source_tokenizer(source, data_cfg, saved: epath.Path | None, write: bool = True) -> Tokenizer:
  """The tokenizer already at `saved`, or data.tokenizer built from `source` (and saved there
  when `write`)."""
  if saved and saved.exists():
    return tokenizer_lib.load(saved)
  tok = prepare.build_tokenizer(source, data_cfg)
  if saved and write:
    tok.save(saved)
  return tok


def _from_source(data_cfg, saved: epath.Path | None, write: bool) -> Dataset:
  source = sources.open_source(data_cfg)
  tok = source_tokenizer(source, data_cfg, saved, write)
  streams = prepare.tokenize(source, tok)
  return Dataset(streams['train'], streams['validation'], tok, data_cfg.source)


def load(data_cfg, workdir: epath.Path | None = None, *, write: bool = True) -> Dataset:
  """Train and validation tokens for `data_cfg`, with the run's tokenizer.

  `workdir` given: a tokenizer already there is reused (for a source) or must match (for
  prepared data); with `write` (the run's process 0), the tokenizer is saved there.
  """
  saved = workdir / TOKENIZER_FILE if workdir else None
  if data_cfg.path:
    return _from_path(data_cfg, saved, write)
  return _from_source(data_cfg, saved, write)
