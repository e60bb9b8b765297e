"""BERT masked-language-model pretraining.

configs/bert.py:cpu    4 layers, 128 wide, context 128, RoPE, on the embedded plays: ~10 CPU min
configs/bert.py:base   BERT-base (12 layers, 768 wide, context 512), bf16, for GPUs and TPUs
configs/bert.py:large  BERT-large (24 layers, 1024 wide), bf16
"""

from llm_jax.config import ConfigError, preset

PRESETS = {'cpu': 'bert_shakespeare_cpu', 'base': 'bert_base', 'large': 'bert_large'}


def get_config(arg=None):
  size = arg or 'base'
  if size not in PRESETS:
    raise ConfigError(f'configs/bert.py: unknown size {size!r}; choose one of {", ".join(PRESETS)}')
  c = preset(PRESETS[size])
  c.sample.max_new_tokens = 0
  if size == 'cpu':
    c.train.update(steps=1500, batch_size=32, log_every=50)
    c.eval.update(every_steps=500, batches=20, batch_size=64)
    c.optimizer.update(lr=2e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99)
    return c
  # RoBERTa's recipe at context 512: 256 sequences a step, peak lr 1e-4 (6e-4 for base at 8k).
  c.model.dtype = 'bfloat16'
  c.train.update(steps=1_000_000, batch_size=256, log_every=100)
  c.eval.update(every_steps=5000, batches=20, batch_size=64)
  c.optimizer.update(lr=1e-4, warmup_steps=10_000, min_lr_ratio=0.0, b2=0.98, weight_decay=0.01)
  return c
