import numpy as np
import pytest

from llm_jax.data import loader

TOKENS = np.arange(1000, dtype=np.uint16)


def test_train_batch_is_a_function_of_seed_and_step():
  a = loader.train_batch(TOKENS, 7, batch_size=4, seq_len=16, seed=1)
  b = loader.train_batch(TOKENS, 7, batch_size=4, seq_len=16, seed=1)
  c = loader.train_batch(TOKENS, 8, batch_size=4, seq_len=16, seed=1)
  d = loader.train_batch(TOKENS, 7, batch_size=4, seq_len=16, seed=2)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert not np.array_equal(a.inputs, c.inputs) and not np.array_equal(a.inputs, d.inputs)
  assert a.inputs.shape == (4, 16) and a.inputs.dtype == np.int32
  np.testing.assert_array_equal(a.targets[:, :-1], a.inputs[:, 1:])  # targets are shifted inputs
  np.testing.assert_array_equal(a.targets[:, -1], a.inputs[:, -1] + 1)


def test_eval_batches_span_the_whole_text():
  batches = loader.eval_batches(TOKENS, num_batches=3, batch_size=2, seq_len=10)
  starts = np.concatenate([b.inputs[:, 0] for b in batches])
  assert starts[0] == 0 and starts[-1] == len(TOKENS) - 11
  assert np.all(np.diff(starts) > 0)


def test_text_shorter_than_a_window_is_a_clear_error():
  with pytest.raises(ValueError, match='fewer than one window'):
    loader.train_batch(TOKENS[:10], 0, batch_size=1, seq_len=16, seed=0)


def test_process_rows_are_slices_of_the_global_batch():
  whole = loader.train_batch(TOKENS, 3, batch_size=8, seq_len=16, seed=0)
  part = loader.train_batch(TOKENS, 3, batch_size=8, seq_len=16, seed=0, rows=slice(4, 8))
  np.testing.assert_array_equal(part.inputs, whole.inputs[4:8])
