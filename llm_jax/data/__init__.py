"""Data: the embedded corpus, tokenizers and batching."""

import dataclasses
import pathlib

import numpy as np

from llm_jax.data import corpus
from llm_jax.data.tokenizer import CharTokenizer

SOURCES = ('shakespeare',)
TOKENIZER_FILE = 'tokenizer.json'


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: np.ndarray  # token ids of the training text
  validation: np.ndarray  # token ids of the held-out text
  tokenizer: CharTokenizer


def load(source: str, workdir: pathlib.Path | None = None) -> Dataset:
  """Tokenized train/validation text of `source`.

  A tokenizer already saved in `workdir` is reused so ids stay stable across restarts;
  otherwise one is built from the training text and saved there.
  """
  if source != 'shakespeare':
    raise ValueError(f'data.source={source!r} is unknown; choose one of {", ".join(SOURCES)}')
  train_plays, val_plays = corpus.split_plays(corpus.load_plays())
  train_text, val_text = corpus.join(train_plays), corpus.join(val_plays)
  saved = workdir / TOKENIZER_FILE if workdir else None
  if saved and saved.exists():
    tokenizer = CharTokenizer.load(saved)
  else:
    tokenizer = CharTokenizer.from_text(train_text)
    if saved:
      tokenizer.save(saved)
  return Dataset(tokenizer.encode(train_text), tokenizer.encode(val_text), tokenizer)
