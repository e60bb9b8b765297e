"""Batches from token streams: deterministic, resumable, split across processes.

Training reads non-overlapping windows of seq_len + 1 tokens from the split's token stream
(documents packed back to back, EOS between them). Grain's index shuffle permutes the windows
afresh every epoch without materialising a permutation, and the global batch at step s is
entries s·B ... s·B + B - 1 of that endless shuffled sequence: a pure function of (seed, s).
Resuming at step s needs only s, and each process reads only its rows of the global batch, so
hosts read disjoint data that together make up the whole batch.

With segment ids, every token also carries the index of its document within the window (an EOS
starts the next document) and its position counted from that document's start, so the model can
keep attention and position embeddings inside each document.

Every task's training batches (`WindowBatches` for language models, `ExampleBatches` for
labelled examples) answer the same two questions: `shapes(batch_size)`, the global shape of each
array, and `batches(step, rows)`, this process's rows of the global batch for `step`.
"""

import dataclasses
import queue
import threading
from collections.abc import Callable

import grain
import numpy as np

from llm_jax.data.errors import DataError
from llm_jax.data.tokens import TokenStream


@dataclasses.dataclass(frozen=True)
class Batch:
  inputs: np.ndarray  # (B, T) int32
  targets: np.ndarray  # (B, T) int32, inputs shifted left by one
  segment_ids: np.ndarray | None = None  # (B, T) int32, document index within the window
  positions: np.ndarray | None = None  # (B, T) int32, offset from the document's first token

  def arrays(self) -> dict[str, np.ndarray]:
    fields = (f.name for f in dataclasses.fields(self))  # not asdict: that deep-copies arrays
    return {k: getattr(self, k) for k in fields if getattr(self, k) is not None}


def segments(inputs: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(segment_ids, positions) of (B, T) inputs: each EOS opens a new segment at position 0."""
  is_eos = inputs == eos_id
  segment_ids = np.cumsum(is_eos, axis=1, dtype=np.int32)
  t = np.arange(inputs.shape[1], dtype=np.int32)
  starts = np.maximum.accumulate(np.where(is_eos, t, 0), axis=1)
  return segment_ids, t - starts


def _batch(chunk: np.ndarray, eos_id: int | None) -> Batch:
  inputs, targets = chunk[:, :-1], chunk[:, 1:]
  if eos_id is None:
    return Batch(inputs, targets)
  return Batch(inputs, targets, *segments(inputs, eos_id))


def _check_length(stream: TokenStream, seq_len: int, split: str) -> None:
  if len(stream) <= seq_len:
    raise DataError(
      f'data.seq_len={seq_len} is longer than the {split} split ({len(stream)} tokens): use a'
      ' shorter data.seq_len or more text'
    )


class Order:
  """Which items make up each global batch: entries s·B ... s·B + B - 1 of an endless sequence
  of epochs, each a fresh Grain index shuffle of the `num_items` items."""

  def __init__(self, num_items: int, batch_size: int, seed: int):
    self.batch_size = batch_size
    self._order = grain.MapDataset.range(num_items).shuffle(seed=seed).repeat()

  def indices(self, step: int, rows: slice = slice(None)) -> list[int]:
    first = step * self.batch_size
    return [self._order[first + r] for r in range(self.batch_size)[rows]]


class TrainBatches:
  """`batches(step, rows)`: rows `rows` of the global training batch for `step`.

  `eos_id` given: batches carry segment ids and positions.
  """

  def __init__(
    self,
    stream: TokenStream,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    eos_id: int | None = None,
  ):
    _check_length(stream, seq_len, 'train')
    self.stream, self.seq_len, self.eos_id = stream, seq_len, eos_id
    self.num_windows = (len(stream) - 1) // seq_len
    self.order = Order(self.num_windows, batch_size, seed)

  @property
  def keys(self) -> tuple[str, ...]:
    """The names of the arrays in every batch."""
    return ('inputs', 'targets') + (('segment_ids', 'positions') if self.eos_id is not None else ())

  def __call__(self, step: int, rows: slice = slice(None)) -> Batch:
    t = self.seq_len
    chunk = np.stack([self.stream.read(w * t, t + 1) for w in self.order.indices(step, rows)])
    return _batch(chunk, self.eos_id)


class WindowBatches:
  """A task's training batches of packed windows (`TrainBatches`), as arrays by name: `keys`
  (default: every array the windows give) of rows `rows` of the global batch for `step`."""

  def __init__(self, stream: TokenStream, *, keys: tuple[str, ...] | None = None, **windows):
    self._windows = TrainBatches(stream, **windows)
    self.keys = self._windows.keys if keys is None else keys

  def shapes(self, batch_size: int) -> dict[str, tuple]:
    """The global shape of each array of a batch of `batch_size` rows."""
    return dict.fromkeys(self.keys, (batch_size, self._windows.seq_len))

  def __call__(self, step: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    arrays = self._windows(step, rows).arrays()
    return {k: arrays[k] for k in self.keys}


class ExampleBatches:
  """`batches(step, rows)`: rows of the global batch of whole examples (arrays of equal length
  N, indexed on their first axis) for `step`."""

  def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, seed: int):
    self.arrays = arrays
    self.order = Order(len(next(iter(arrays.values()))), batch_size, seed)

  def shapes(self, batch_size: int) -> dict[str, tuple]:
    """The global shape of each array of a batch of `batch_size` examples."""
    return {k: (batch_size, *v.shape[1:]) for k, v in self.arrays.items()}

  def __call__(self, step: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    index = np.asarray(self.order.indices(step, rows))
    return {k: v[index] for k, v in self.arrays.items()}


def fixed_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
  """All N examples in order, in batches of `batch_size`; the last is filled up with copies of
  the first example, and `weights` (1 for real rows, 0 for filler) tells them apart."""
  n = len(next(iter(arrays.values())))
  padded = -(-n // batch_size) * batch_size
  index = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)])
  weights = (np.arange(padded) < n).astype(np.float32)
  return [
    {
      **{k: v[index[i : i + batch_size]] for k, v in arrays.items()},
      'weights': weights[i : i + batch_size],
    }
    for i in range(0, padded, batch_size)
  ]


def eval_batches(
  stream: TokenStream,
  *,
  num_batches: int,
  batch_size: int,
  seq_len: int,
  eos_id: int | None = None,
) -> list[Batch]:
  """`num_batches` batches of windows spread evenly over the whole held-out split."""
  _check_length(stream, seq_len, 'validation')
  starts = np.linspace(0, len(stream) - seq_len - 1, num_batches * batch_size).astype(np.int64)
  return [
    _batch(np.stack([stream.read(int(s), seq_len + 1) for s in batch]), eos_id)
    for batch in starts.reshape(num_batches, batch_size)
  ]


class Prefetch:
  """Iterates `produce(step)` for steps [start, stop), computed `depth` steps ahead on a thread.

  Reading and transferring the next batches overlaps the device's work on the current one. An
  exception in `produce` is raised by the iteration that would have returned its result.
  """

  def __init__(self, produce: Callable, start: int, stop: int, depth: int):
    self._produce, self._steps, self._depth = produce, iter(range(start, stop)), depth
    self._queue = queue.Queue(maxsize=max(depth, 1))
    self._done = threading.Event()
    self._thread = None
    if depth:
      self._thread = threading.Thread(target=self._fill, name='prefetch', daemon=True)
      self._thread.start()

  def _put(self, item) -> bool:
    """Queues `item` unless closed first; whether it was queued."""
    while not self._done.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self) -> None:
    for step in self._steps:
      try:
        item = (step, self._produce(step), None)
      except Exception as e:  # noqa: BLE001 -- handed to the consumer
        item = (step, None, e)
      if not self._put(item) or item[2] is not None:
        return
    self._put(None)

  def __iter__(self):
    return self

  def __next__(self):
    if not self._depth:
      step = next(self._steps)
      return step, self._produce(step)
    item = self._queue.get()
    if item is None:
      raise StopIteration
    step, value, error = item
    if error is not None:
      raise error
    return step, value

  def close(self) -> None:
    self._done.set()
    if self._thread is not None:
      self._thread.join()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
