"""Prepared token data on disk: shards of raw ids plus a JSON manifest, and reading them back.

A prepared directory holds `manifest.json`, `tokenizer.json` and, per split, shards
`train-00000.bin`, ... of little-endian ids (uint16 when the vocabulary fits, else uint32),
documents separated by the tokenizer's EOS id. The manifest is written last, so a directory
without one is an interrupted `prepare`, never silently half-read. Shards are memory-mapped: a
run touches only the windows it reads.
"""

import dataclasses
import json
import pathlib

import numpy as np

from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.data.errors import DataError
from llm_jax.errors import MissingFile

MANIFEST = 'manifest.json'
TOKENIZER = 'tokenizer.json'
FORMAT = 'llm_jax.tokens.v1'
SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 per shard file


class TokenStream:
  """Several 1-D id arrays (shards) read as one: `read(start, n)` may span shard boundaries."""

  def __init__(self, arrays: list[np.ndarray]):
    self.arrays = [a for a in arrays if len(a)]
    self.ends = np.cumsum([len(a) for a in self.arrays], dtype=np.int64)
    self.size = int(self.ends[-1]) if self.arrays else 0

  def __len__(self) -> int:
    return self.size

  def read(self, start: int, n: int) -> np.ndarray:
    """Ids [start, start + n) as int32."""
    shard = int(np.searchsorted(self.ends, start, side='right'))
    pieces = []
    while n > 0:
      begin = start - (int(self.ends[shard - 1]) if shard else 0)
      piece = self.arrays[shard][begin : begin + n]
      pieces.append(piece)
      start, n, shard = start + len(piece), n - len(piece), shard + 1
    return np.concatenate(pieces).astype(np.int32, copy=False)


class ShardWriter:
  """Appends ids to `split` shards of `dtype` in `out`, starting a new file every `shard_tokens`."""

  def __init__(self, out: pathlib.Path, split: str, dtype, shard_tokens: int = SHARD_TOKENS):
    self.out, self.split, self.dtype, self.shard_tokens = out, split, np.dtype(dtype), shard_tokens
    self.shards: list[dict] = []
    self.documents = 0
    self._file = None

  def _open_next(self) -> None:
    self.close_file()
    name = f'{self.split}-{len(self.shards):05d}.bin'
    self.shards.append({'file': name, 'tokens': 0, 'max_id': -1})
    self._file = open(self.out / name, 'wb')  # noqa: SIM115 -- closed by close_file

  def write(self, ids: np.ndarray, documents: int) -> None:
    self.documents += documents
    while len(ids):
      if self._file is None or self.shards[-1]['tokens'] == self.shard_tokens:
        self._open_next()
      shard = self.shards[-1]
      piece, ids = np.split(ids, [self.shard_tokens - shard['tokens']])
      self._file.write(piece.astype(self.dtype.newbyteorder('<')).tobytes())
      shard['tokens'] += len(piece)
      shard['max_id'] = max(shard['max_id'], int(piece.max()))

  @property
  def tokens(self) -> int:
    return sum(s['tokens'] for s in self.shards)

  def close_file(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def summary(self) -> dict:
    self.close_file()
    return {'tokens': self.tokens, 'documents': self.documents, 'shards': self.shards}


def write_manifest(out: pathlib.Path, *, source: str, tok, splits: dict) -> dict:
  """manifest.json (last: its presence marks a complete prepare) and tokenizer.json in `out`."""
  manifest = {
    'format': FORMAT,
    'source': source,
    'tokenizer': {'kind': tok.kind, 'vocab_size': tok.vocab_size, 'eos_id': tok.eos_id},
    'dtype': np.dtype(tok.dtype).name,  # what ShardWriter wrote
    'splits': splits,
  }
  tok.save(out / TOKENIZER)
  (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
  return manifest


@dataclasses.dataclass(frozen=True)
class Prepared:
  path: pathlib.Path
  manifest: dict
  tokenizer: tokenizer_lib.Tokenizer
  splits: dict[str, TokenStream]


def _open_shard(path: pathlib.Path, shard: dict, dtype, vocab_size: int) -> np.ndarray:
  file = path / shard['file']
  if not file.is_file():
    raise MissingFile(f'data.path: shard {file} is missing')
  expected = shard['tokens'] * dtype.itemsize
  if file.stat().st_size != expected:
    raise DataError(
      f'data.path: shard {file} has {file.stat().st_size} bytes, the manifest says {expected}'
      ' (truncated or corrupt: run prepare again)'
    )
  ids = np.memmap(file, dtype=dtype, mode='r') if expected else np.zeros(0, dtype)
  # Shards from another tool may lack max_id: then scan them once.
  max_id = shard['max_id'] if 'max_id' in shard else (int(ids.max()) if len(ids) else -1)
  if max_id >= vocab_size:
    raise DataError(
      f'data.path: shard {file} holds token id {max_id}, outside the tokenizer vocabulary'
      f' of {vocab_size}'
    )
  return ids


def open_prepared(path) -> Prepared:
  """The prepared data in `path`, checked: files present, sizes and ids consistent."""
  path = pathlib.Path(path)
  manifest_file = path / MANIFEST
  if not manifest_file.is_file():
    raise MissingFile(
      f'data.path={path}: no {MANIFEST} there (run llm-jax prepare --out={path}, or it did not'
      ' finish)'
    )
  try:
    manifest = json.loads(manifest_file.read_text())
    if manifest.get('format') != FORMAT:
      raise DataError(f'{manifest_file}: format {manifest.get("format")!r}, expected {FORMAT}')
    dtype = np.dtype(manifest['dtype']).newbyteorder('<')
    splits = manifest['splits']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f'{manifest_file} is damaged ({type(e).__name__}: {e})') from None
  tok = tokenizer_lib.load(path / TOKENIZER)
  streams = {}
  for name in ('train', 'validation'):
    if name not in splits:
      raise DataError(f'{manifest_file} has no {name!r} split')
    streams[name] = TokenStream(
      [_open_shard(path, s, dtype, tok.vocab_size) for s in splits[name]['shards']]
    )
  return Prepared(path, manifest, tok, streams)
