"""Splash attention: JAX's Pallas flash-attention kernel for TPU, behind the models' attention.

The kernel (`jax.experimental.pallas.ops.tpu.splash_attention`, the one MaxText uses) never
materialises the (T, T) scores and skips the key blocks that a causal mask hides. It takes one
sequence at a time as (heads, T, head_dim) and does not scale the queries, so `attention` scales
them, moves heads first and maps the kernel over the batch.

A Pallas call is opaque to XLA's sharding propagation, so inside a sharded step the kernel runs
per device under `shard_map`: batch and heads split as the sharding rules say, the sequence whole
(each query block reads every key block). Traced for anything but a TPU (`sharding.platform()`:
the step's devices, which a dry run may only describe) the same kernel runs in Pallas interpret
mode: exact and slow, which is how the CPU tests check it against XLA attention; config
validation keeps it out of real runs elsewhere.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from llm_jax.models.configs import SPLASH_LANES
from llm_jax.sharding import per_device, platform

BLOCKS = (512, 256, 128)  # largest first; 512 is MaxText's default for every block


def supports(seq_len: int) -> bool:
  return seq_len % SPLASH_LANES == 0  # key blocks: multiples of the lane width


@functools.cache
def _kernel(seq_len: int, heads: int, causal: bool, interpret: bool):
  block = next(b for b in BLOCKS if seq_len % b == 0)
  mask_type = mask_lib.CausalMask if causal else mask_lib.FullMask
  mask = mask_lib.MultiHeadMask([mask_type((seq_len, seq_len)) for _ in range(heads)])
  sizes = kernel_lib.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  with jax.ensure_compile_time_eval():  # cached: its mask tables must be arrays, not tracers
    return kernel_lib.make_splash_mha(
      mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _local(q, k, v, q_segments, kv_segments, *, causal: bool):
  _, t, n, h = q.shape
  kernel = _kernel(t, n, causal, interpret=platform() != 'tpu')
  heads_first = lambda x: x.swapaxes(1, 2)  # (B, T, N, H) -> (B, N, T, H)

  def one(q, k, v, q_segments, kv_segments):
    segments = None if q_segments is None else kernel_lib.SegmentIds(q_segments, kv_segments)
    return kernel(q, k, v, segment_ids=segments)

  q = q * jnp.asarray(1 / h**0.5, q.dtype)
  return heads_first(
    jax.vmap(one)(heads_first(q), heads_first(k), heads_first(v), q_segments, kv_segments)
  )


def _segments(segment_ids, kv_lengths, t: int):
  """Query and key segment ids (B, T): the documents' own, or for padded rows every query in
  segment 1 and the padding keys in segment 0."""
  if kv_lengths is None:
    return segment_ids, segment_ids
  valid = (jnp.arange(t)[None] < kv_lengths[:, None]).astype(jnp.int32)
  return jnp.ones_like(valid), valid


def attention(q, k, v, *, causal: bool, segment_ids=None, kv_lengths=None):
  """softmax(q kᵀ / √H) v for q, k, v (B, T, N, H), T a multiple of 128. segment_ids (B, T):
  a query sees only the keys of its own segment; kv_lengths (B,): keys past a row's length are
  padding (as `jax.nn.dot_product_attention`'s key_value_seq_lengths)."""
  heads = ('batch', None, 'heads', None)
  segments = ('batch', None)
  local = per_device(
    functools.partial(_local, causal=causal),
    in_names=(heads, heads, heads, segments, segments),
    out_names=heads,
  )
  return local(q, k, v, *_segments(segment_ids, kv_lengths, q.shape[1]))
