"""A 2-layer, 64-wide BERT pretrained with masked-language modelling: tests and smoke runs."""

from llm_jax.config import preset


def get_config(arg=None):
  del arg
  c = preset('bert_tiny')
  c.train.update(steps=200, batch_size=32, log_every=20)
  c.eval.update(every_steps=100, batches=4, batch_size=32)
  c.optimizer.update(lr=2e-3, warmup_steps=20)
  c.sample.max_new_tokens = 0
  return c
