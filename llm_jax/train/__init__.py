"""Training: a config built into a Trainer, and the run that steps it.

trainer.py  the one builder: validation, task, mesh, state layout, jitted steps, batches
loop.py     the run: resume, compile, the step loop, the summary and sample
hooks.py    what happens between steps: profile, log, evaluate, preemption, save
step.py     the pure train and eval steps around jax.jit
tasks.py    objectives (lm, mlm, classify): what a step minimises and evaluation reports
losses.py   their pure functions (cross-entropy, accuracy, BERT's masking)
optim.py    AdamW, warmup + cosine, clipping, weight-decay mask
plan.py     `train --dry_run`: memory plan and shardings, for real or described devices
facts.py    what a run records about itself
"""
