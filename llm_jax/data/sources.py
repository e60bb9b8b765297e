"""Where documents come from: the embedded plays, text files, JSON Lines files and TFDS.

`data.source` is one of
  shakespeare               the embedded corpus (no files, no network)
  text:GLOB                 plain text; documents split at blank lines, or one per file
                            (data.text_documents = 'blank_line' | 'file')
  jsonl:GLOB                one JSON object per line, its `data.text_field` the document
  tfds:NAME[/CONFIG]:SPLIT  a TFDS dataset already in `data.tfds_data_dir`
Each source yields the documents of a 'train' and a 'validation' split. The embedded corpus holds
out whole plays; the others hold out every k-th document (k = 1 / data.val_fraction), so no
validation document is ever trained on and the split needs no second pass over the data.
"""

import glob
import json
import math
import os
import pathlib
import re
from collections.abc import Iterator

from llm_jax.data import corpus
from llm_jax.data.errors import DataError

SCHEMES = ('shakespeare', 'text', 'jsonl', 'tfds')
SPLITS = ('train', 'validation')
TEXT_DOCUMENTS = ('blank_line', 'file')
_blank_line = re.compile(r'\n[ \t]*\n')


def check_spec(spec: str) -> None:
  """DataError naming data.source unless `spec` is well formed (files are not looked at)."""
  scheme, _, arg = spec.partition(':')
  if scheme not in SCHEMES:
    raise DataError(
      f'data.source={spec!r}: unknown source; use shakespeare, text:GLOB, jsonl:GLOB or'
      ' tfds:NAME[/CONFIG]:SPLIT'
    )
  if (scheme == 'shakespeare') == bool(arg):
    raise DataError(
      f'data.source={spec!r}: ' + ('takes no argument' if arg else 'needs an argument')
    )


def is_validation(index: int, val_fraction: float) -> bool:
  """Whether document `index` is held out: every k-th document for k = 1 / val_fraction."""
  return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


class Source:
  """Documents of a named source, split into train and validation."""

  def __init__(self, spec: str, val_fraction: float):
    self.spec = spec
    self.val_fraction = val_fraction

  def all_documents(self) -> Iterator[str]:
    raise NotImplementedError

  def documents(self, split: str) -> Iterator[str]:
    held_out = split == 'validation'
    for i, doc in enumerate(self.all_documents()):
      if is_validation(i, self.val_fraction) == held_out:
        yield doc


class Shakespeare(Source):
  """The embedded plays; validation is the six held-out plays, whatever val_fraction says."""

  def __init__(self):
    super().__init__('shakespeare', 0.0)
    self._splits = dict(zip(SPLITS, corpus.split_plays(corpus.load_plays()), strict=True))

  def documents(self, split: str) -> Iterator[str]:
    return (play.text for play in self._splits[split])


class Files(Source):
  """`text:GLOB` or `jsonl:GLOB`: the files the glob matches, in sorted order."""

  def __init__(self, spec: str, val_fraction: float, *, text_field: str, text_documents: str):
    super().__init__(spec, val_fraction)
    self.scheme, _, pattern = spec.partition(':')
    self.files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    self.files = [f for f in self.files if os.path.isfile(f)]
    if not self.files:
      raise FileNotFoundError(f'data.source={spec}: no file matches {pattern}')
    self.text_field = text_field
    self.text_documents = text_documents

  def _read(self, path: str) -> str:
    try:
      return pathlib.Path(path).read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
      raise DataError(f'{path} is not UTF-8 text ({e.reason} at byte {e.start})') from None

  def _jsonl(self, path: str) -> Iterator[str]:
    for n, line in enumerate(self._read(path).splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f'{path}:{n}: not JSON ({e.msg})') from None
      text = record.get(self.text_field) if isinstance(record, dict) else None
      if not isinstance(text, str):
        raise DataError(f'{path}:{n}: no string field {self.text_field!r} (data.text_field)')
      yield text

  def _text(self, path: str) -> Iterator[str]:
    text = self._read(path)
    if self.text_documents == 'file':
      yield text
    else:
      yield from (doc.strip('\n') for doc in _blank_line.split(text) if doc.strip())

  def all_documents(self) -> Iterator[str]:
    read = self._jsonl if self.scheme == 'jsonl' else self._text
    for path in self.files:
      yield from read(path)


class TFDS(Source):
  """`tfds:NAME[/CONFIG]:SPLIT`, read with random access (array_record) or `tfds.load`.

  Nothing is downloaded: the dataset must already be built in data.tfds_data_dir (or TFDS's
  default directory), e.g. with `tfds build NAME --file_format=array_record` on a machine with
  network access.
  """

  def __init__(self, spec: str, val_fraction: float, *, text_field: str, data_dir: str):
    super().__init__(spec, val_fraction)
    import tensorflow_datasets as tfds

    self._tfds = tfds
    name, _, split = spec.removeprefix('tfds:').partition(':')
    self.name, self.split, self.text_field = name, split or 'train', text_field
    self.data_dir = data_dir or None
    try:
      self._source = tfds.data_source(
        name, split=self.split, data_dir=self.data_dir, download=False
      )
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(f'data.source={spec}: TFDS has no dataset {name!r}') from None
    except NotImplementedError:  # built as tfrecord, or not built at all
      self._source = None
      self._check_built()
    if self._source is not None and len(self._source):
      self._check_field(self._source[0])

  def _check_built(self) -> None:
    builder = self._tfds.builder(self.name, data_dir=self.data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
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

  def _records(self) -> Iterator[dict]:
    if self._source is not None:
      yield from (self._source[i] for i in range(len(self._source)))
      return
    try:
      import tensorflow  # noqa: F401 -- tfds.load needs it
    except ImportError:
      raise DataError(
        f"data.source={self.spec}: a tfrecord dataset needs TensorFlow: pip install 'llm_jax[tfds]'"
      ) from None
    ds = self._tfds.load(self.name, split=self.split, data_dir=self.data_dir, download=False)
    yield from self._tfds.as_numpy(ds)

  def all_documents(self) -> Iterator[str]:
    for record in self._records():
      text = record[self.text_field]
      yield text.decode('utf-8') if isinstance(text, bytes) else str(text)


def open_source(data_cfg) -> Source:
  """The source `data_cfg.source` names, checked now: missing files and datasets fail here."""
  spec = data_cfg.source
  check_spec(spec)
  scheme = spec.partition(':')[0]
  if scheme == 'shakespeare':
    return Shakespeare()
  if scheme == 'tfds':
    return TFDS(
      spec, data_cfg.val_fraction, text_field=data_cfg.text_field, data_dir=data_cfg.tfds_data_dir
    )
  return Files(
    spec,
    data_cfg.val_fraction,
    text_field=data_cfg.text_field,
    text_documents=data_cfg.text_documents,
  )
