"""The quickstart as an experiment: nanoGPT's CPU recipe on the embedded plays.

llm-jax launch experiments/shakespeare.py
"""

from llm_jax.launch import Experiment


def get_experiment():
  return Experiment(
    name='shakespeare',
    config='configs/gpt_shakespeare.py:cpu',
    wandb_group='shakespeare',
  )
