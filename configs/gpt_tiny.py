"""A 2-layer, 64-wide GPT that trains in seconds: for tests and smoke runs."""

from llm_jax.config import preset


def get_config(arg=None):
  del arg
  c = preset('gpt_tiny')
  c.train.update(steps=200, batch_size=16, log_every=20)
  c.eval.update(every_steps=100, batches=4, batch_size=16)
  c.optimizer.update(lr=3e-3, warmup_steps=20)
  c.sample.max_new_tokens = 200
  return c
