"""Token batches from an in-memory token array.

The training batch at step s is a pure function of (seed, s): windows start at offsets drawn from
a generator seeded with both, so a run restarted at step s sees exactly the batches it would have
seen. Evaluation uses a fixed set of evenly spaced windows covering the whole held-out text.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Batch:
  inputs: np.ndarray  # (B, T) int32
  targets: np.ndarray  # (B, T) int32, inputs shifted left by one


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
  idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, T+1)
  chunk = tokens[idx].astype(np.int32)
  return Batch(inputs=chunk[:, :-1], targets=chunk[:, 1:])


def _check_length(tokens: np.ndarray, seq_len: int, name: str) -> None:
  if len(tokens) <= seq_len:
    raise ValueError(f'{name} has {len(tokens)} tokens, fewer than one window of {seq_len + 1}')


def train_batch(
  tokens: np.ndarray,
  step: int,
  *,
  batch_size: int,
  seq_len: int,
  seed: int,
  rows: slice = slice(None),
) -> Batch:
  """Rows `rows` of the training batch for `step`: random windows, a function of (seed, step).

  Every process draws the same window offsets and reads only the rows its devices hold.
  """
  _check_length(tokens, seq_len, 'training text')
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  return _windows(tokens, starts[rows], seq_len)


def eval_batches(
  tokens: np.ndarray, *, num_batches: int, batch_size: int, seq_len: int
) -> list[Batch]:
  """`num_batches` batches of windows spread evenly over the whole held-out text."""
  _check_length(tokens, seq_len, 'validation text')
  starts = np.linspace(0, len(tokens) - seq_len - 1, num_batches * batch_size).astype(np.int64)
  return [_windows(tokens, s, seq_len) for s in starts.reshape(num_batches, batch_size)]
