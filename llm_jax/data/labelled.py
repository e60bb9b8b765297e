"""Labelled passages for classification: labels resolved to class indices, text tokenized into
fixed-length, right-padded arrays.

A sequence is `[CLS] ids EOS` for encoders (`cls_id` given) and `ids EOS` for decoders, whose
classifier reads the last real position; ids past the length are cut, padding repeats EOS.
"""

import numpy as np

from llm_jax.data import corpus, sources
from llm_jax.data.errors import DataError
from llm_jax.data.tokenizer import Tokenizer


def classes(source: sources.Source, declared) -> tuple[str, ...]:
  """data.classes when declared; else the source's own names (the embedded genres, a TFDS
  ClassLabel), else the labels that the training split uses, sorted."""
  if declared:
    return tuple(declared)
  if isinstance(source, sources.Genre):
    return corpus.GENRES
  names = source.label_names() if isinstance(source, sources.TFDS) else None
  if names:
    return names
  return tuple(sorted({str(label) for _, label, _ in source.examples('train')}))


def label_index(label, names: tuple[str, ...], where: str) -> int:
  """The class index of `label`: a class name, or an integer index into the classes."""
  if str(label) in names:
    return names.index(str(label))
  if isinstance(label, int) and 0 <= label < len(names):
    return label
  raise DataError(f'{where}: label {label!r} is not one of data.classes ({", ".join(names)})')


def encode(
  source: sources.Source,
  split: str,
  tok: Tokenizer,
  names: tuple[str, ...],
  *,
  seq_len: int,
  cls_id: int | None,
) -> dict[str, np.ndarray]:
  """{'inputs': (N, T), 'lengths': (N,), 'labels': (N,)} for the `split` examples of `source`."""
  texts, labels = [], []
  for text, label, where in source.examples(split):
    texts.append(text)
    labels.append(label_index(label, names, where))
  if not texts:
    raise DataError(f'data.source={source.spec}: the {split} split has no examples')
  prefix = [] if cls_id is None else [cls_id]
  room = seq_len - len(prefix) - 1
  inputs = np.full((len(texts), seq_len), tok.eos_id, np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for i, ids in enumerate(tok.encode_batch(texts)):
    row = [*prefix, *ids[:room].tolist(), tok.eos_id]
    inputs[i, : len(row)] = row
    lengths[i] = len(row)
  return {'inputs': inputs, 'lengths': lengths, 'labels': np.asarray(labels, np.int32)}
