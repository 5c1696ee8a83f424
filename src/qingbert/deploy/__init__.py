"""Deploy: from a trained folder to something that answers fast.

``inference``: ``qingbert.load(DIR)`` -> :class:`~qingbert.deploy.inference.Model` (predict / encode on the
folder's fastest backend).  ``export``: ONNX fp32 + int8 with parity checks and measured speed.  ``speed``: the
seeds' speed table.  ``prune``: vocabulary pruning.  ``index``: faiss semantic search over sentence vectors.

Floor 8: imports every floor below (``errors`` ... ``tasks``, ``distillation``, ``embeddings``).
"""
