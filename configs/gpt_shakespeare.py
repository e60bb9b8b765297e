"""Character-level Shakespeare on the embedded corpus.

configs/gpt_shakespeare.py      nanoGPT's baby GPT (6 layers, 384 wide, context 256) for a GPU
configs/gpt_shakespeare.py:cpu  nanoGPT's CPU recipe (4 layers, 128 wide, context 64), ~5 CPU min
"""

from llm_jax.config import ConfigError, preset


def get_config(arg=None):
  if arg == 'cpu':
    c = preset('gpt_shakespeare_cpu')
    c.train.update(steps=3000, batch_size=12, log_every=50)
    c.eval.update(every_steps=500, batches=20, batch_size=64)
    c.optimizer.update(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99)
  elif arg is None:
    c = preset('gpt_shakespeare')
    c.train.update(steps=5000, batch_size=64, log_every=100)
    c.eval.update(every_steps=500, batches=40, batch_size=64)
    c.optimizer.update(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, b2=0.99)
  else:
    raise ConfigError(
      f'configs/gpt_shakespeare.py: unknown argument {arg!r}; use no argument or :cpu'
    )
  return c
