"""GPT-2 sizes: configs/gpt2.py:124m (default), :350m, :774m, :1.5b.

Vocabulary 50304 (GPT-2's 50257 padded for fast matmuls), context 1024, bf16 compute and
nanoGPT's OpenWebText hyperparameters. Train on GPT-2-tokenized shards:
  llm-jax prepare --source=tfds:openwebtext:train --tokenizer=gpt2:DIR --out=data/owt
  llm-jax train --config configs/gpt2.py:124m --config.data.path=data/owt --workdir runs/owt
"""

from llm_jax.config import ConfigError, preset

SIZES = ('124m', '350m', '774m', '1.5b')


def get_config(arg=None):
  size = arg or '124m'
  if size not in SIZES:
    raise ConfigError(f'configs/gpt2.py: unknown size {size!r}; choose one of {", ".join(SIZES)}')
  c = preset(f'gpt2_{size}')
  c.train.update(steps=600_000, batch_size=512, grad_accum_steps=32, log_every=10)  # 2^19 tokens
  c.eval.update(every_steps=2000, batches=20, batch_size=16)
  c.optimizer.update(
    lr=6e-4, warmup_steps=2000, min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1
  )
  return c
