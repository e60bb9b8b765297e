"""Data: sources, tokenizers, prepared token shards and batching.

A run reads either prepared shards (`data.path`, written by `llm-jax prepare`) or tokenizes
`data.source` in memory at start-up (the embedded corpus and other small corpora). Either way the
tokenizer is saved in the workdir and reused on resume, so ids never change under a run.
"""

import dataclasses

from etils import epath

from llm_jax import storage
from llm_jax.data import prepare, sources, tokens
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.data.errors import DataError
from llm_jax.data.tokenizer import Tokenizer
from llm_jax.errors import ConfigError, check, choice

TOKENIZER_FILE = tokens.TOKENIZER  # in prepared data and in a run directory (llm_jax/rundir.py)

__all__ = ['DataError', 'Dataset', 'Tokenizer', 'load', 'source_tokenizer', 'validate']


def validate(d) -> None:
  """Checks the `data` section alone (also what `llm-jax prepare` reads); files are not read."""
  try:
    sources.check_spec(d.source)
    kind, _ = tokenizer_lib.parse(d.tokenizer)
  except DataError as e:
    raise ConfigError(str(e)) from None
  check(
    not (d.path and d.source != 'shakespeare'),
    f'data.path={d.path!r} and data.source={d.source!r}: set one (prepared data or a source)',
  )
  check(
    not storage.is_bucket(d.path),
    f'data.path={d.path}: prepared shards are memory-mapped, so they must be on local disk'
    ' (copy them down first, e.g. gcloud storage cp -r)',
  )
  check(
    kind != 'bpe' or d.vocab_size > 0,
    'data.tokenizer=bpe needs data.vocab_size (the vocabulary to train)',
  )
  check(0 < d.val_fraction <= 0.5, f'data.val_fraction={d.val_fraction} must be in (0, 0.5]')
  choice(d.text_documents, 'data.text_documents', sources.TEXT_DOCUMENTS)
  check(d.prefetch >= 0, f'data.prefetch={d.prefetch} must be >= 0')


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
