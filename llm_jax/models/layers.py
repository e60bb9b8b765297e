"""The blocks every family is built from, in Flax NNX: attention (with its KV cache for decoding),
MLP, LayerNorm, rotary positions, the tied output projection, and the stacked-or-listed layers.

`make_blocks` / `apply_blocks` give every family `scan_layers` (the blocks' parameters stacked on a
leading 'layers' axis and run with `jax.lax.scan`: one block compiled, not n_layer) and `remat`
(each block's activations recomputed in the backward pass). Blocks run as pure functions
(`nnx.split`/`nnx.merge`) so that the same code serves `jax.lax.scan` and `jax.checkpoint`.

Every parameter names its logical axes (`vocab, embed, heads, kv, mlp`, and `layers` when
stacked) in `sharding_names` metadata; `llm_jax.sharding` maps those names onto mesh axes, so
no model file names one.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from llm_jax.models import splash
from llm_jax.models.configs import TransformerConfig
from llm_jax.sharding import constrain, platform

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}  # configs.DTYPES by name
RESIDUAL = ('batch', 'length', 'act_embed')  # logical axes of the residual stream (B, T, C)
# What a rematerialised block keeps from its forward pass: nothing, or its matmul outputs.
REMAT_POLICIES = {
  'none': None,
  'full': jax.checkpoint_policies.nothing_saveable,
  'dots_saveable': jax.checkpoint_policies.dots_saveable,
}


def attention_implementation(requested: str, dtype: str, backend: str) -> str | None:
  """What the attention runs: `jax.nn.dot_product_attention`'s 'xla' or 'cudnn' (a GPU and
  16-bit inputs), or the Pallas 'splash' kernel (TPU), which 'auto' leaves to be asked for."""
  if requested == 'auto':
    return 'cudnn' if backend == 'gpu' and dtype == 'bfloat16' else 'xla'
  return requested


class KVCache(NamedTuple):
  """Keys and values of every layer for decoding: k, v (L, B, S, N, H). Slots [0, index) are
  filled, the same number in every row; row b's text starts at slot starts[b] (prompts are
  left-padded) and the slots before it are never attended to. A decode step writes the same
  slot of every row, in place."""

  k: jax.Array
  v: jax.Array
  index: jax.Array  # () int32
  starts: jax.Array  # (B,) int32

  @classmethod
  def empty(cls, cfg, starts, size: int, dtype) -> 'KVCache':
    zeros = jnp.zeros((cfg.n_layer, starts.shape[0], size, cfg.n_head, cfg.head_dim), dtype)
    return cls(zeros, zeros, jnp.zeros((), jnp.int32), starts)


def segment_mask(segment_ids):
  """(B, 1, T, T): which keys each query sees for segment ids (B, T); None for None."""
  if segment_ids is None:
    return None
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def normal(std: float):
  return nnx.initializers.normal(std)


def axes(*names):
  return {'sharding_names': names}


def rope(x, theta: float, positions):
  """Rotary position embedding over the last axis of x: (B, T, N, H); positions (B or 1, T)."""
  h = x.shape[-1]
  freqs = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)  # (H/2,)
  angles = positions.astype(jnp.float32)[..., None] * freqs  # (B, T, H/2)
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention; causal for GPT, bidirectional for encoders."""

  def __init__(self, cfg: TransformerConfig, *, causal: bool = True, rngs: nnx.Rngs):
    d, n, h = cfg.n_embd, cfg.n_head, cfg.head_dim
    dtype = DTYPES[cfg.dtype]
    self.qkv = nnx.Einsum(
      'btd,dsnh->btsnh',
      (d, 3, n, h),
      (3, n, h) if cfg.bias else None,
      dtype=dtype,
      kernel_init=normal(0.02),
      kernel_metadata=axes('embed', None, 'heads', 'kv'),
      bias_metadata=axes(None, 'heads', 'kv'),
      rngs=rngs,
    )
    # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream's
    # variance does not grow with depth.
    self.proj = nnx.Einsum(
      'btnh,nhd->btd',
      (n, h, d),
      (d,) if cfg.bias else None,
      dtype=dtype,
      kernel_init=normal(0.02 / math.sqrt(2 * cfg.n_layer)),
      kernel_metadata=axes('heads', 'kv', 'embed'),
      bias_metadata=axes('embed'),
      rngs=rngs,
    )
    self.causal = causal
    self.rope_theta = cfg.rope_theta if cfg.position == 'rope' else None
    self.attention, self.dtype = cfg.attention, cfg.dtype

  def _qkv(self, x, positions):
    qkv = self.qkv(x)  # (B, T, 3, N, H)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.rope_theta is not None:
      q, k = rope(q, self.rope_theta, positions), rope(k, self.rope_theta, positions)
    return q, k, v

  def __call__(self, x, positions, segment_ids=None, kv_lengths=None):
    """x (B, T, C); positions (B or 1, T); segment_ids (B, T) or None: a query sees only the
    keys of its own segment; kv_lengths (B,) or None: keys past a row's length are padding."""
    q, k, v = self._qkv(x, positions)
    # Resolved when traced, for the step's own devices: a plan for a described GPU from a CPU host
    # gets the GPU's choice.
    implementation = attention_implementation(self.attention, self.dtype, platform())
    if implementation == 'splash' and splash.supports(x.shape[1]):
      y = splash.attention(
        q, k, v, causal=self.causal, segment_ids=segment_ids, kv_lengths=kv_lengths
      )
    else:  # splash at a length it cannot tile (a short prompt, say) falls back to XLA
      y = jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=segment_mask(segment_ids),
        is_causal=self.causal,
        key_value_seq_lengths=kv_lengths,
        implementation='xla' if implementation == 'splash' else implementation,
      )
    return self.proj(y)

  def decode(self, x, positions, cache: KVCache, layer):
    """x (B, T, C) for cache slots [index, index + T): writes their keys and values into layer
    `layer` of the cache and attends over that layer's filled slots. Returns (y, cache)."""
    q, k, v = self._qkv(x, positions)
    at = (layer, 0, cache.index, 0, 0)
    k_all = jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), at)
    v_all = jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), at)
    keys = jax.lax.dynamic_index_in_dim(k_all, layer, keepdims=False).astype(q.dtype)
    values = jax.lax.dynamic_index_in_dim(v_all, layer, keepdims=False).astype(q.dtype)
    slot = jnp.arange(keys.shape[1])[None, None, :]  # (1, 1, S)
    query = cache.index + jnp.arange(x.shape[1])[None, :, None]  # (1, T, 1)
    # Causal within the row's own slots; a padding slot sees only itself (no row all masked).
    visible = ((slot <= query) & (slot >= cache.starts[:, None, None])) | (slot == query)
    y = jax.nn.dot_product_attention(q, keys, values, mask=visible[:, None])
    return self.proj(y), cache._replace(k=k_all, v=v_all)


class MLP(nnx.Module):
  """Two projections around a GELU: tanh-approximated as in GPT-2, or exact as in BERT."""

  def __init__(self, cfg: TransformerConfig, *, exact_gelu: bool = False, rngs: nnx.Rngs):
    self.exact_gelu = exact_gelu
    d, m = cfg.n_embd, cfg.mlp_ratio * cfg.n_embd
    dtype = DTYPES[cfg.dtype]
    self.fc = nnx.Linear(
      d,
      m,
      use_bias=cfg.bias,
      dtype=dtype,
      kernel_init=normal(0.02),
      kernel_metadata=axes('embed', 'mlp'),
      bias_metadata=axes('mlp'),
      rngs=rngs,
    )
    self.proj = nnx.Linear(
      m,
      d,
      use_bias=cfg.bias,
      dtype=dtype,
      kernel_init=normal(0.02 / math.sqrt(2 * cfg.n_layer)),
      kernel_metadata=axes('mlp', 'embed'),
      bias_metadata=axes('embed'),
      rngs=rngs,
    )

  def __call__(self, x):
    return self.proj(jax.nn.gelu(self.fc(x), approximate=not self.exact_gelu))


def layer_norm(cfg, rngs: nnx.Rngs, epsilon: float = 1e-5) -> nnx.LayerNorm:
  return nnx.LayerNorm(
    cfg.n_embd,
    epsilon=epsilon,
    use_bias=cfg.bias,
    dtype=DTYPES[cfg.dtype],
    scale_metadata=axes('embed'),
    bias_metadata=axes('embed'),
    rngs=rngs,
  )


def make_blocks(cfg, make_block, rngs: nnx.Rngs):
  """cfg.n_layer blocks from `make_block(rngs)`: a list, or (scan_layers) one block whose
  parameters are stacked on a leading 'layers' axis. Both draw the same initial values, so
  scanning changes the layout of a model, never the model."""
  layers = [make_block(rngs) for _ in range(cfg.n_layer)]
  if not cfg.scan_layers:
    return nnx.List(layers)

  @nnx.split_rngs(splits=cfg.n_layer)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def stacked(rngs):  # the stacked structure and axis names; its values are replaced below
    return make_block(rngs)

  blocks = stacked(nnx.Rngs(0))
  state = nnx.state(blocks)
  values = [nnx.to_pure_dict(nnx.state(layer)) for layer in layers]
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda *xs: jnp.stack(xs), *values))
  nnx.update(blocks, state)
  return blocks


def apply_blocks(cfg, blocks, x, *args, rngs: nnx.Rngs | None):
  """x (B, T, C) through every block in order: block(x, *args, rngs). Each layer draws its own
  dropout key, the same whether the blocks are scanned or looped."""
  keys = None if rngs is None else jax.random.split(rngs.dropout(), cfg.n_layer)
  graphdef = nnx.graphdef(blocks if cfg.scan_layers else blocks[0])  # one layer's structure

  def layer(x, block_state, key):
    block = nnx.merge(graphdef, block_state)
    x = block(constrain(x, RESIDUAL), *args, None if key is None else nnx.Rngs(dropout=key))
    return constrain(x, RESIDUAL)

  if cfg.remat != 'none':
    layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat])
  if cfg.scan_layers:
    return jax.lax.scan(lambda x, xs: (layer(x, *xs), None), x, (nnx.state(blocks), keys))[0]
  for i, block in enumerate(blocks):
    x = layer(x, nnx.state(block), None if keys is None else keys[i])
  return x


def tied_logits(wte: nnx.Embed, x):
  """The tied output projection of hidden states (B, T, C) onto the vocabulary: (B, T, V) in
  fp32. The matmul runs in the compute dtype but accumulates and returns fp32, so the loss and
  the sampler see full-precision logits (in bf16 they would keep 8 bits of mantissa)."""
  return jnp.einsum(
    '...c,vc->...v', x, wte.embedding[...].astype(x.dtype), preferred_element_type=jnp.float32
  )
