"""Where documents come from: the embedded plays, text files, JSON Lines files and TFDS.

`data.source` is one of
  shakespeare               the embedded corpus (no files, no network)
  genre                     passages of the embedded plays labelled comedy/history/tragedy
  text:GLOB                 plain text; documents split at blank lines, or one per file
                            (data.text_documents = 'blank_line' | 'file')
  jsonl:GLOB                one JSON object per line, its `data.text_field` the document
                            (and `data.label_field` its label, for classification)
  tfds:NAME[/CONFIG]:SPLIT  a TFDS dataset already in `data.tfds_data_dir`
Each source yields the documents of a 'train' and a 'validation' split. The embedded corpus holds
out whole plays; the others hold out every k-th document (k = 1 / data.val_fraction), so no
validation document is ever trained on and the split needs no second pass over the data.
"""

import glob
import importlib.util
import json
import math
import os
import pathlib
import re
from collections.abc import Iterator

from llm_jax.data import corpus
from llm_jax.data.errors import DataError
from llm_jax.errors import MissingFile

SCHEMES = ('shakespeare', 'genre', 'text', 'jsonl', 'tfds')
SPLITS = ('train', 'validation')
TEXT_DOCUMENTS = ('blank_line', 'file')
EMBEDDED = ('shakespeare', 'genre')  # sources that take no argument
_blank_line = re.compile(r'\n[ \t]*\n')


def check_spec(spec: str) -> None:
  """DataError naming data.source unless `spec` is well formed (files are not looked at)."""
  scheme, _, arg = spec.partition(':')
  if scheme not in SCHEMES:
    raise DataError(
      f'data.source={spec!r}: unknown source; use shakespeare, genre, text:GLOB, jsonl:GLOB or'
      ' tfds:NAME[/CONFIG]:SPLIT'
    )
  if (scheme in EMBEDDED) == bool(arg):
    raise DataError(
      f'data.source={spec!r}: ' + ('takes no argument' if arg else 'needs an argument')
    )


def is_validation(index: int, val_fraction: float) -> bool:
  """Whether document `index` is held out: every k-th document for k = 1 / val_fraction."""
  return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


class Source:
  """Records of a named source, split into train and validation.

  A record is a dict holding the text under `text_field` (and, for labelled data, a label under
  `label_field`), paired with where it came from, for error messages.
  """

  def __init__(self, spec: str, val_fraction: float, text_field='text', label_field='label'):
    self.spec = spec
    self.val_fraction = val_fraction
    self.text_field, self.label_field = text_field, label_field

  def all_records(self) -> Iterator[tuple[str, dict]]:
    raise NotImplementedError

  def _split(self, split: str) -> Iterator[tuple[str, dict]]:
    held_out = split == 'validation'
    for i, item in enumerate(self.all_records()):
      if is_validation(i, self.val_fraction) == held_out:
        yield item

  def _field(self, where: str, record: dict, field: str, setting: str, kind):
    value = record.get(field) if isinstance(record, dict) else None
    if isinstance(value, bytes):
      value = value.decode('utf-8')
    if not isinstance(value, kind):
      raise DataError(f'{where}: no {kind.__name__} field {field!r} ({setting})')
    return value

  def documents(self, split: str) -> Iterator[str]:
    for where, record in self._split(split):
      yield self._field(where, record, self.text_field, 'data.text_field', str)

  def examples(self, split: str) -> Iterator[tuple[str, object, str]]:
    """(text, label, where) of each labelled record; labels are names or integer indices."""
    for where, record in self._split(split):
      text = self._field(where, record, self.text_field, 'data.text_field', str)
      label = record.get(self.label_field) if isinstance(record, dict) else None
      if hasattr(label, 'item'):  # numpy scalars from TFDS
        label = label.item()
      if isinstance(label, bytes):
        label = label.decode('utf-8')
      if not isinstance(label, (str, int)):
        raise DataError(f'{where}: no label field {self.label_field!r} (data.label_field)')
      yield text, label, where


class Shakespeare(Source):
  """The embedded plays; validation is the six held-out plays, whatever val_fraction says."""

  def __init__(self):
    super().__init__('shakespeare', 0.0)
    self._splits = dict(zip(SPLITS, corpus.split_plays(corpus.load_plays()), strict=True))

  def _split(self, split: str) -> Iterator[tuple[str, dict]]:
    return ((play.name, {'text': play.text}) for play in self._splits[split])


class Genre(Shakespeare):
  """Passages of the embedded plays labelled with their play's genre; validation passages come
  from the six held-out plays, so a classifier is scored on plays it never saw."""

  def __init__(self, passage_chars: int):
    super().__init__()
    self.spec, self.label_field, self.passage_chars = 'genre', 'label', passage_chars

  def _split(self, split: str) -> Iterator[tuple[str, dict]]:
    for play in self._splits[split]:
      for i, text in enumerate(corpus.passages(play.text, self.passage_chars)):
        yield f'{play.name} passage {i}', {'text': text, 'label': corpus.GENRE_CLASS[play.genre]}


class Files(Source):
  """`text:GLOB` or `jsonl:GLOB`: the files the glob matches, in sorted order."""

  def __init__(self, spec: str, val_fraction: float, *, text_documents: str, **fields):
    super().__init__(spec, val_fraction, **fields)
    self.scheme, _, pattern = spec.partition(':')
    self.files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    self.files = [f for f in self.files if os.path.isfile(f)]
    if not self.files:
      raise MissingFile(f'data.source={spec}: no file matches {pattern}')
    self.text_documents = text_documents

  def _read(self, path: str) -> str:
    try:
      return pathlib.Path(path).read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
      raise DataError(f'{path} is not UTF-8 text ({e.reason} at byte {e.start})') from None

  def _jsonl(self, path: str) -> Iterator[tuple[str, dict]]:
    for n, line in enumerate(self._read(path).splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f'{path}:{n}: not JSON ({e.msg})') from None
      yield f'{path}:{n}', record

  def _text(self, path: str) -> Iterator[tuple[str, dict]]:
    text = self._read(path)
    docs = [text] if self.text_documents == 'file' else _blank_line.split(text)
    for doc in docs:
      if doc.strip():
        yield path, {self.text_field: doc if self.text_documents == 'file' else doc.strip('\n')}

  def all_records(self) -> Iterator[tuple[str, dict]]:
    read = self._jsonl if self.scheme == 'jsonl' else self._text
    for path in self.files:
      yield from read(path)


def _has_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


class TFDS(Source):
  """`tfds:NAME[/CONFIG]:SPLIT`, read with random access (array_record) or `tfds.load`.

  Nothing is downloaded: the dataset must already be built in data.tfds_data_dir (or TFDS's
  default directory), e.g. with `tfds build NAME --file_format=array_record` on a machine with
  network access.
  """

  def __init__(self, spec: str, val_fraction: float, *, data_dir: str, **fields):
    super().__init__(spec, val_fraction, **fields)
    import tensorflow_datasets as tfds

    self._tfds = tfds
    name, _, split = spec.removeprefix('tfds:').partition(':')
    self.name, self.split = name, split or 'train'
    self.data_dir = data_dir or None
    try:
      self._source = tfds.data_source(
        name, split=self.split, data_dir=self.data_dir, download=False
      )
    except tfds.core.registered.DatasetNotFoundError:
      hint = (
        ''
        if _has_tensorflow()
        else " (some builders, e.g. glue, need: pip install 'llm_jax[tfds]')"
      )
      raise DataError(f'data.source={spec}: TFDS has no dataset {name!r}{hint}') from None
    except NotImplementedError:  # built as tfrecord, or not built at all
      self._source = None
      self._check_built()
    if self._source is not None and len(self._source):
      self._check_field(self._source[0])

  def _check_built(self) -> None:
    builder = self._tfds.builder(self.name, data_dir=self.data_dir)
    if not builder.is_prepared():
      raise MissingFile(
        f'data.source={self.spec}: {self.name} is not built in {builder.data_dir}; build it where'
        f' there is network (tfds build {self.name} --file_format=array_record) and set'
        ' data.tfds_data_dir'
      )

  def _check_field(self, record) -> None:
    if self.text_field not in record:
      raise DataError(
        f'data.source={self.spec}: records have no field {self.text_field!r} (data.text_field);'
        f' fields: {", ".join(record)}'
      )

  def label_names(self) -> tuple[str, ...] | None:
    """The dataset's class names, when its label is a ClassLabel feature."""
    feature = self._source.dataset_info.features[self.label_field] if self._source else None
    return tuple(feature.names) if hasattr(feature, 'names') else None

  def _records(self) -> Iterator[dict]:
    if self._source is not None:
      yield from (self._source[i] for i in range(len(self._source)))
      return
    if not _has_tensorflow():
      raise DataError(
        f"data.source={self.spec}: a tfrecord dataset needs TensorFlow: pip install 'llm_jax[tfds]'"
      )
    ds = self._tfds.load(self.name, split=self.split, data_dir=self.data_dir, download=False)
    yield from self._tfds.as_numpy(ds)

  def all_records(self) -> Iterator[tuple[str, dict]]:
    for i, record in enumerate(self._records()):
      yield f'{self.spec} example {i}', record


def open_source(data_cfg) -> Source:
  """The source `data_cfg.source` names, checked now: missing files and datasets fail here."""
  spec = data_cfg.source
  check_spec(spec)
  scheme = spec.partition(':')[0]
  if scheme == 'shakespeare':
    return Shakespeare()
  if scheme == 'genre':
    return Genre(data_cfg.passage_chars)
  fields = dict(text_field=data_cfg.text_field, label_field=data_cfg.label_field)
  if scheme == 'tfds':
    return TFDS(spec, data_cfg.val_fraction, data_dir=data_cfg.tfds_data_dir, **fields)
  return Files(spec, data_cfg.val_fraction, text_documents=data_cfg.text_documents, **fields)
