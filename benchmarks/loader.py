"""Loader throughput from prepared shards on one CPU core, against what training consumes.

    python benchmarks/loader.py [--tokens 200_000_000] [--batch_size 512] [--seq_len 1024]
                                [--steps 30] [--json out.json]

Writes a synthetic prepared dataset (random GPT-2-sized ids, a document every ~1,000 tokens,
several shards) with the real writer, pins this process to one core, and times the training
batches of gpt2_124m's shape: our loader (Grain index shuffle over memory-mapped shards), with
and without segment ids, next to nanoGPT's `get_batch` (random offsets into one memmap) as the
baseline, all in this process. Files just written sit in the page cache, so this is the warm
case; a cold first epoch reads at the disk's speed.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from llm_jax.data import loader, tokens

H100_GPT2_124M_TOKENS_PER_SEC = 0.6e6  # issue 10's target for one H100
EOS = 50256  # GPT-2's <|endoftext|>


def write_dataset(out: pathlib.Path, num_tokens: int, shard_tokens: int) -> tokens.TokenStream:
  rng = np.random.default_rng(0)
  writer = tokens.ShardWriter(out, 'train', np.uint16, shard_tokens)
  chunk = 1 << 24
  for start in range(0, num_tokens, chunk):
    ids = rng.integers(0, 50257, min(chunk, num_tokens - start), dtype=np.uint16)
    ids[rng.random(len(ids)) < 1e-3] = EOS  # a document every ~1,000 tokens
    writer.write(ids, documents=int((ids == EOS).sum()))
  writer.summary()
  files = sorted(out.glob('train-*.bin'))
  return tokens.TokenStream([np.memmap(f, np.uint16, mode='r') for f in files])


def nanogpt_get_batch(data: np.memmap, batch_size: int, seq_len: int, rng):
  """nanoGPT's train.py get_batch, minus the torch transfer."""
  ix = rng.integers(0, len(data) - seq_len, batch_size)
  x = np.stack([data[i : i + seq_len].astype(np.int64) for i in ix])
  y = np.stack([data[i + 1 : i + 1 + seq_len].astype(np.int64) for i in ix])
  return x, y


def tokens_per_sec(fn, steps: int, tokens_per_step: int) -> float:
  fn(0)  # warm-up: first touch of the index structures
  times = []
  for step in range(1, steps + 1):
    start = time.perf_counter()
    fn(step)
    times.append(time.perf_counter() - start)
  return tokens_per_step / statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tokens', type=int, default=200_000_000)
  parser.add_argument('--shard_tokens', type=int, default=1 << 26)
  parser.add_argument('--batch_size', type=int, default=512)
  parser.add_argument('--seq_len', type=int, default=1024)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--json', type=pathlib.Path)
  args = parser.parse_args()
  if hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

  with tempfile.TemporaryDirectory() as tmp:
    stream = write_dataset(pathlib.Path(tmp), args.tokens, args.shard_tokens)
    b, t = args.batch_size, args.seq_len
    per_step = b * t
    ours = loader.TrainBatches(stream, batch_size=b, seq_len=t, seed=0)
    packed = loader.TrainBatches(stream, batch_size=b, seq_len=t, seed=0, eos_id=EOS)
    one_file = stream.arrays[0]
    rng = np.random.default_rng(0)
    result = {
      'tokens_in_dataset': len(stream),
      'shards': len(stream.arrays),
      'batch': [b, t],
      'cores': 1,
      'tokens_per_sec': {
        'llm_jax': tokens_per_sec(ours, args.steps, per_step),
        'llm_jax_segment_ids': tokens_per_sec(packed, args.steps, per_step),
        'nanogpt_get_batch': tokens_per_sec(
          lambda _: nanogpt_get_batch(one_file, b, t, rng), args.steps, per_step
        ),
      },
    }
  rates = result['tokens_per_sec']
  result['ratio_vs_nanogpt'] = rates['llm_jax'] / rates['nanogpt_get_batch']
  result['ratio_vs_h100_gpt2_124m'] = rates['llm_jax'] / H100_GPT2_124M_TOKENS_PER_SEC
  print(f'{len(stream):,} tokens in {len(stream.arrays)} shards; batch {b}x{t}; one core')
  for name, rate in rates.items():
    print(f'  {name:22s} {rate / 1e6:8.2f} M tokens/s')
  print(f'  llm_jax / nanoGPT get_batch      {result["ratio_vs_nanogpt"]:.2f}x')
  print(f'  llm_jax / H100 gpt2_124m (0.6M)  {result["ratio_vs_h100_gpt2_124m"]:.1f}x')
  if args.json:
    args.json.write_text(json.dumps(result, indent=2) + '\n')
  sys.stdout.flush()


if __name__ == '__main__':
  main()
