"""Using a trained run: the home of every consumer of a run's parameters.

  load.py      a run's (or export's) newest parameters, on one device or any mesh
  export.py    params-only run directories: `llm-jax export`, and the writer HF import shares
  generate.py  KV-cache sampling for a batch of prompts; sampling settings' validation
  evaluate.py  `llm-jax eval`: perplexity, bits per byte, the task's own metrics
  hf/          Hugging Face import/export: one mapping table per family, read both ways

Imports models, checkpoints and the tasks' objectives, never the training loop (an
import-linter contract in pyproject.toml).
"""
