"""Models: a family per file over shared layers.

configs.py     the families' dataclass configs (no JAX: config files load without it)
layers.py      attention, MLP, norms, rotary positions, stacked or listed layers
gpt.py         GPT (decoder)          bert.py   BERT (encoder + MLM head)
classifier.py  a classification head on either backbone
splash.py      the Pallas splash-attention kernel for TPU
registry.py    config dataclass -> module, and a model's parameter layout on a mesh
"""
