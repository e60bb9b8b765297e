"""Tokenizing a source: once into shards (`llm-jax prepare`), or in memory for small corpora.

Documents are encoded in chunks with EOS after each one, on a pool of worker processes; HF
tokenizers spread each batch over threads themselves, so those encode in this process. Shards are
written as chunks arrive, so a corpus never has to fit in memory.
"""

import json
import multiprocessing
import os
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np
import tqdm

from llm_jax.data import sources, tokens
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.data.errors import DataError

CHUNK_CHARS = 4 << 20  # text per work item: large enough to amortise inter-process traffic


def chunks(docs: Iterable[str], chars: int | None = None) -> Iterator[list[str]]:
  """Consecutive documents grouped into lists of about `chars` (default CHUNK_CHARS) characters."""
  chars = chars or CHUNK_CHARS
  batch, size = [], 0
  for doc in docs:
    batch.append(doc)
    size += len(doc)
    if size >= chars:
      yield batch
      batch, size = [], 0
  if batch:
    yield batch


def encode_chunk(tok: tokenizer_lib.Tokenizer, docs: list[str]) -> np.ndarray:
  """The ids of `docs`, each followed by EOS, in the tokenizer's dtype."""
  eos = np.array([tok.eos_id], tok.dtype)
  return np.concatenate([part for ids in tok.encode_batch(docs) for part in (ids, eos)])


_worker_tokenizer = None


def _init_worker(spec: str) -> None:
  global _worker_tokenizer
  _worker_tokenizer = tokenizer_lib.from_json(json.loads(spec))


def _encode_in_worker(docs: list[str]) -> tuple[np.ndarray, int]:
  return encode_chunk(_worker_tokenizer, docs), len(docs)


def encoded(
  docs: Iterable[str], tok: tokenizer_lib.Tokenizer, workers: int
) -> Iterator[tuple[np.ndarray, int]]:
  """(ids, number of documents) per chunk of `docs`, in order, on `workers` processes."""
  if workers <= 1 or tok.kind in ('bpe', 'gpt2'):
    for batch in chunks(docs):
      yield encode_chunk(tok, batch), len(batch)
    return
  # spawn, not fork: the parent may hold JAX or tokenizer threads that a fork would break.
  ctx = multiprocessing.get_context('spawn')
  spec = json.dumps(tok.spec())
  with ctx.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
    yield from pool.imap(_encode_in_worker, chunks(docs))


def build_tokenizer(source: sources.Source, data_cfg) -> tokenizer_lib.Tokenizer:
  """data.tokenizer, trained on the source's training documents where it learns from text."""
  return tokenizer_lib.build(data_cfg.tokenizer, data_cfg.vocab_size, source.documents('train'))


def _check_splits(spec: str, val_fraction: float, counts: dict) -> None:
  if not counts['train']:
    raise DataError(f'data.source={spec}: holds no text')
  if not counts['validation']:
    raise DataError(
      f'data.source={spec}: the validation split is empty; raise data.val_fraction'
      f' ({val_fraction}) or add documents'
    )


def tokenize(source: sources.Source, tok: tokenizer_lib.Tokenizer) -> dict[str, tokens.TokenStream]:
  """Both splits of `source` as in-memory token streams."""
  streams = {}
  for split in sources.SPLITS:
    parts = [ids for ids, _ in encoded(source.documents(split), tok, workers=1)]
    streams[split] = tokens.TokenStream(parts)
  _check_splits(source.spec, source.val_fraction, {k: len(v) for k, v in streams.items()})
  return streams


def default_workers() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def prepare(
  data_cfg, out, *, workers: int = 0, progress: bool = True, shard_tokens=tokens.SHARD_TOKENS
) -> dict:
  """Tokenizes `data_cfg.source` into shards under `out`; returns the manifest."""
  out = pathlib.Path(out)
  source = sources.open_source(data_cfg)
  tok = build_tokenizer(source, data_cfg)
  out.mkdir(parents=True, exist_ok=True)
  (out / tokens.MANIFEST).unlink(missing_ok=True)  # the old data is invalid from here on
  splits = {}
  for split in sources.SPLITS:
    writer = tokens.ShardWriter(out, split, tok.dtype, shard_tokens)
    bar = tqdm.tqdm(desc=f'{split}', unit=' docs', unit_scale=True, disable=not progress)
    for ids, n_docs in encoded(source.documents(split), tok, workers or default_workers()):
      writer.write(ids, n_docs)
      bar.update(n_docs)
      bar.set_postfix_str(f'{writer.tokens:,} tokens')
    bar.close()
    splits[split] = writer.summary()
  _check_splits(data_cfg.source, source.val_fraction, {k: v['tokens'] for k, v in splits.items()})
  return tokens.write_manifest(out, source=data_cfg.source, tok=tok, splits=splits)
