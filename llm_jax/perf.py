"""FLOPs and MFU accounting, in one place.

Convention (PaLM appendix B, as nanoGPT): training FLOPs per token =
  6 · N_matmul + 12 · n_layer · T · n_embd
where N_matmul counts the weights that take part in matrix multiplies: every block weight plus
the (tied) output projection vocab × n_embd; the position table is a lookup and is left out.
The attention term counts the full T × T score and value matmuls (causal masking not discounted).
The output projection counts only at the positions whose logits are computed (`scored`): all of
them for a language model, the scored share for MLM, none for a classifier.
"""

import jax

# Dense bf16 peak FLOP/s per device, from vendor datasheets. The first entry whose name is in
# the device_kind wins, so variants come before their family.
PEAK_BF16_FLOPS = (
  ('H100 PCIe', 756e12),
  ('H100 NVL', 835e12),
  ('H100', 989e12),  # SXM
  ('H800', 989e12),
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


def matmul_params(model_cfg, scored: float = 1.0) -> float:
  """Weights used in matrix multiplies per token of a forward pass (see module docstring)."""
  d, L = model_cfg.n_embd, model_cfg.n_layer
  per_block = 3 * d * d + d * d + 2 * model_cfg.mlp_ratio * d * d
  return L * per_block + scored * model_cfg.vocab_size * d


def flops_per_token(model_cfg, seq_len: int, scored: float = 1.0) -> float:
  """Training (forward + backward) FLOPs per token; `scored`: the share of positions whose
  vocabulary logits are computed."""
  attention = 12 * model_cfg.n_layer * seq_len * model_cfg.n_embd
  return 6 * matmul_params(model_cfg, scored) + attention


def peak_flops(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of one device, or None when the device is not in the table (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def mfu(
  tokens_per_sec: float, model_cfg, seq_len: int, num_devices: int, scored: float = 1.0
) -> float | None:
  """Model FLOPs utilisation in [0, 1], or None on devices without a known peak."""
  peak = peak_flops()
  if peak is None:
    return None
  return tokens_per_sec * flops_per_token(model_cfg, seq_len, scored) / (peak * num_devices)
