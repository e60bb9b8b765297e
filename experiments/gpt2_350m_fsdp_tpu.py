"""GPT-2 350M with FSDP over a TPU v4-32 slice (16 chips, 4 hosts).

  llm-jax launch experiments/gpt2_350m_fsdp_tpu.py --dry_run   # the gcloud commands
  llm-jax launch experiments/gpt2_350m_fsdp_tpu.py             # create, set up, launch
  TPU_NAME=gpt2-350m-fsdp bash tpu_scripts/tail.sh gpt2_350m_fsdp   # follow worker 0
For a v5e-64: tpu=dict(accelerator='v5litepod-64', runtime='v2-alpha-tpuv5-lite').
"""

from llm_jax.launch import Experiment


def get_experiment():
  return Experiment(
    name='gpt2_350m_fsdp',
    config='configs/gpt2.py:350m',
    overrides={
      'data.path': '../data/owt',  # setup copies tpu['data_url'] to ~/data on every worker
      'mesh.data': 1,
      'mesh.fsdp': -1,  # parameters, gradients and optimizer state split over all 16 chips
      'train.grad_accum_steps': 4,
    },
    wandb_group='gpt2-350m-fsdp',
    target='tpu',
    workdir_root='gs://YOUR_BUCKET/runs',
    tpu=dict(
      name='gpt2-350m-fsdp',
      accelerator='v4-32',
      runtime='tpu-ubuntu2204-base',
      spot=True,
      data_url='gs://YOUR_BUCKET/data/owt',
    ),
  )
