"""llm_jax: distributed pretraining of GPT- and BERT-style language models in JAX/Flax."""

__version__ = '0.1.0'
