import threading

import numpy as np
import pytest

from llm_jax.data import DataError, loader
from llm_jax.data.tokens import TokenStream

# Distinct ids in two shards, so every token read can be traced to its position.
STREAM = TokenStream([np.arange(0, 300, dtype=np.uint16), np.arange(300, 1001, dtype=np.uint16)])


def batches(**kw):
  return loader.TrainBatches(STREAM, **dict(dict(batch_size=4, seq_len=10, seed=1), **kw))


def test_reads_span_shard_boundaries():
  np.testing.assert_array_equal(STREAM.read(290, 20), np.arange(290, 310))
  assert STREAM.read(0, 3).dtype == np.int32 and len(STREAM) == 1001


def test_batch_is_a_function_of_seed_and_step():
  a, b, c, d = batches()(7), batches()(7), batches()(8), batches(seed=2)(7)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert not np.array_equal(a.inputs, c.inputs) and not np.array_equal(a.inputs, d.inputs)
  assert a.inputs.shape == (4, 10) and a.inputs.dtype == np.int32
  np.testing.assert_array_equal(a.targets[:, :-1], a.inputs[:, 1:])
  np.testing.assert_array_equal(a.targets[:, -1], a.inputs[:, -1] + 1)
  assert a.segment_ids is None


def test_an_epoch_reads_every_token_once_and_the_next_reshuffles():
  b = batches(batch_size=5)  # 100 windows of 10: 20 steps per epoch
  assert b.num_windows == 100
  epoch = np.concatenate([b(s).inputs.ravel() for s in range(20)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(1000))  # none lost, none twice
  first = [w for s in range(20) for w in b.order.indices(s)]
  second = [w for s in range(20, 40) for w in b.order.indices(s)]
  assert sorted(second) == list(range(100)) and second != first


def test_resuming_at_a_step_continues_the_identical_stream():
  produce = batches()
  with loader.Prefetch(produce, 0, 10, depth=2) as whole:
    uninterrupted = dict(whole)
  with loader.Prefetch(produce, 6, 10, depth=2) as resumed:
    resumed = dict(resumed)
  assert sorted(resumed) == [6, 7, 8, 9]
  for step, batch in resumed.items():
    np.testing.assert_array_equal(batch.inputs, uninterrupted[step].inputs)


def test_processes_read_disjoint_slices_that_make_the_global_batch():
  whole = batches(batch_size=8)(3)
  p0, p1 = batches(batch_size=8)(3, slice(0, 4)), batches(batch_size=8)(3, slice(4, 8))
  np.testing.assert_array_equal(np.concatenate([p0.inputs, p1.inputs]), whole.inputs)
  w0 = set(batches(batch_size=8).order.indices(3, slice(0, 4)))
  w1 = set(batches(batch_size=8).order.indices(3, slice(4, 8)))
  assert not w0 & w1 and len(w0 | w1) == 8


def test_segment_ids_and_positions_restart_at_each_eos():
  inputs = np.array([[5, 6, 0, 7, 8, 9, 0, 4]])
  segment_ids, positions = loader.segments(inputs, eos_id=0)
  assert segment_ids.tolist() == [[0, 0, 1, 1, 1, 1, 2, 2]]
  assert positions.tolist() == [[0, 1, 0, 1, 2, 3, 0, 1]]
  packed = batches(eos_id=0)
  assert (
    tuple(packed(0).arrays()) == packed.keys == ('inputs', 'targets', 'segment_ids', 'positions')
  )
  assert tuple(batches()(0).arrays()) == batches().keys == ('inputs', 'targets')


def test_eval_batches_span_the_whole_split():
  held_out = loader.eval_batches(STREAM, num_batches=3, batch_size=2, seq_len=10)
  starts = np.concatenate([b.inputs[:, 0] for b in held_out])
  assert starts[0] == 0 and starts[-1] == len(STREAM) - 11 and np.all(np.diff(starts) > 0)


def test_a_split_shorter_than_a_window_names_the_setting():
  short = TokenStream([np.arange(10, dtype=np.uint16)])
  with pytest.raises(DataError, match=r'data.seq_len=16 is longer than the train split \(10'):
    loader.TrainBatches(short, batch_size=1, seq_len=16, seed=0)
  with pytest.raises(DataError, match='validation split'):
    loader.eval_batches(short, num_batches=1, batch_size=1, seq_len=16)


def test_prefetch_raises_the_producers_error_and_stops_its_thread():
  def produce(step):
    if step == 3:
      raise ValueError('bad shard')
    return step

  prefetch = loader.Prefetch(produce, 0, 10, depth=2)
  assert [next(prefetch)[1] for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match='bad shard'):
    next(prefetch)
  prefetch.close()
  endless = loader.Prefetch(lambda s: s, 0, 10**9, depth=2)
  next(endless)
  endless.close()  # returns although the producer had far to go
  assert not any(t.name == 'prefetch' for t in threading.enumerate())
