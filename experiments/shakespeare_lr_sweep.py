"""Learning-rate sweep of the Shakespeare baseline: three runs, one W&B group.

llm-jax launch experiments/shakespeare_lr_sweep.py                  # here, one after another
llm-jax launch experiments/shakespeare_lr_sweep.py --target=slurm   # one GPU job each
llm-jax launch experiments/shakespeare_lr_sweep.py --target=tpu     # on a v4-8
llm-jax compare runs/shakespeare_lr-lr=* --plot lr_sweep.png
"""

from llm_jax.launch import Experiment


def get_experiment():
  return Experiment(
    name='shakespeare_lr',
    config='configs/gpt_shakespeare.py:cpu',
    sweep={'optimizer.lr': [3e-4, 1e-3, 3e-3]},
    wandb_group='shakespeare-lr-sweep',
    tpu=dict(accelerator='v4-8', zone='us-central2-b', spot=True),
    slurm=dict(nodes=1, gpus_per_node=1, cpus_per_task=8, time='01:00:00'),
  )
