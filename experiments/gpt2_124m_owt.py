"""GPT-2 124M on OpenWebText on one 8-GPU node (SLURM), nanoGPT's recipe.

Prepare the data once on the cluster's shared filesystem (the dataset built with
`tfds build openwebtext --file_format=array_record`, GPT-2's vocab.json/merges.txt in DIR):
  llm-jax prepare --source=tfds:openwebtext:train --tokenizer=gpt2:DIR --out=/shared/data/owt
then:
  llm-jax launch experiments/gpt2_124m_owt.py [--dry_run]
"""

from llm_jax.launch import Experiment


def get_experiment():
  return Experiment(
    name='gpt2_124m_owt',
    config='configs/gpt2.py:124m',
    overrides={
      'data.path': '/shared/data/owt',
      'mesh.data': 8,
      'train.grad_accum_steps': 8,  # 512 sequences of 1024 a step: 64 per microbatch
      'ckpt.every_steps': 2000,
    },
    wandb_group='gpt2-owt',
    target='slurm',
    workdir_root='/shared/runs',
    slurm=dict(nodes=1, gpus_per_node=8, cpus_per_task=64, time='96:00:00'),
  )
