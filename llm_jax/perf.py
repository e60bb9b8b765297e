"""FLOPs and MFU accounting, in one place.

Convention (PaLM appendix B, as nanoGPT): training FLOPs per token =
  6 · N_matmul + 12 · n_layer · T · n_embd
where N_matmul counts the weights that take part in matrix multiplies: every block weight plus
the (tied) output projection vocab × n_embd; the position table is a lookup and is left out.
The attention term counts the full T × T score and value matmuls (causal masking not discounted).
"""

import jax

# Dense bf16 peak FLOP/s per device, from vendor datasheets. Matched on device_kind substrings.
PEAK_BF16_FLOPS = (
  ('H100', 989e12),
  ('H200', 989e12),
  ('A100', 312e12),
  ('TPU v4', 275e12),
  ('TPU v5 lite', 197e12),
  ('TPU v5e', 197e12),
  ('TPU v5p', 459e12),
  ('TPU v5', 459e12),
  ('TPU v6 lite', 918e12),
  ('TPU v6e', 918e12),
)


def matmul_params(model_cfg) -> int:
  """Weights used in matrix multiplies per forward pass (see module docstring)."""
  d, L = model_cfg.n_embd, model_cfg.n_layer
  per_block = 3 * d * d + d * d + 2 * model_cfg.mlp_ratio * d * d
  return L * per_block + model_cfg.vocab_size * d


def flops_per_token(model_cfg, seq_len: int) -> float:
  """Training (forward + backward) FLOPs per token."""
  return 6 * matmul_params(model_cfg) + 12 * model_cfg.n_layer * seq_len * model_cfg.n_embd


def peak_flops(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of one device, or None when the device is not in the table (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def mfu(tokens_per_sec: float, model_cfg, seq_len: int, num_devices: int) -> float | None:
  """Model FLOPs utilisation in [0, 1], or None on devices without a known peak."""
  peak = peak_flops()
  if peak is None:
    return None
  return tokens_per_sec * flops_per_token(model_cfg, seq_len) / (peak * num_devices)
