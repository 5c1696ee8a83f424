"""The one training loop and what feeds it.

``loop``: :class:`Trainer` (accelerate: CPU, GPUs, DDP, DeepSpeed), :class:`TrainConfig`, atomic checkpoints and exact
resume; every stage (pretraining, distillation, fine-tuning, SimCSE) trains through it with an objective whose
``forward(batch) -> (loss, metrics)``.  ``batching``: padding rows into tensors, the model inputs of a batch, and
running a model over a dataset in length-sorted batches.

Floor 1: imports only :mod:`qingbert.errors` and :mod:`qingbert.manifest`.
"""
