from llm_jax.cli import run

run()
