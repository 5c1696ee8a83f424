"""STS evaluation: how well a model's cosine similarities rank sentence pairs.

:func:`evaluate_sts`: Spearman (and Pearson) correlation of cosine similarity with the gold labels of sentence
pairs (LCQMC / BQ / AFQMC files through :mod:`qingbert.tasks`, or a list of ``(a, b, score)``).
"""

from __future__ import annotations

import numpy as np

from qingbert.embeddings.encoder import SentenceEncoder
from qingbert.embeddings.inputs import check_pairs, task_pairs
from qingbert.errors import QingbertError, require


def evaluate_sts(model, pairs=None, task=None, data_dir=None, split: str = "dev", batch_size: int = 64,
                 **encoder_kwargs) -> dict:
    """Spearman (and Pearson) correlation, in percent, between the cosine similarity of each pair's vectors and
    its gold label.  ``model``: a :class:`SentenceEncoder` or a folder (``encoder_kwargs`` go to the encoder);
    the pairs: a list of ``(a, b, score)``, or ``task`` (lcqmc / bq / afqmc ...) read from ``data_dir``.
    Returns ``{"spearman", "pearson", "pairs", "metric": "spearman", "score", ...}``."""
    stats = require("scipy.stats", "STS evaluation (qingbert eval-sts)")  # the [embeddings] extra
    info: dict = {}
    if pairs is None:
        if task is None:
            raise QingbertError("give pairs (a, b, score) or a task to evaluate on")
        pairs, info = task_pairs(task, data_dir, split)
    else:
        pairs = check_pairs(pairs)
    if len(pairs) < 2:
        raise QingbertError(f"a correlation needs at least 2 pairs, got {len(pairs)}")
    enc = model if isinstance(model, SentenceEncoder) else SentenceEncoder(model, **encoder_kwargs)
    if enc.pooling == "none":
        raise QingbertError("similarity evaluation needs sentence vectors: pooling 'none' gives token vectors")
    texts = list(dict.fromkeys([p[0] for p in pairs] + [p[1] for p in pairs]))
    where = {t: i for i, t in enumerate(texts)}
    vecs = enc.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    a = vecs[[where[p[0]] for p in pairs]]
    b = vecs[[where[p[1]] for p in pairs]]
    cos = (a * b).sum(1).astype(np.float64)
    labels = np.array([p[2] for p in pairs], dtype=np.float64)
    if np.ptp(labels) == 0:
        raise QingbertError(f"all {len(labels)} labels are {labels[0]:g}: the correlation is undefined")
    if np.ptp(cos) == 0:
        raise QingbertError("every pair has the same cosine similarity: the correlation is undefined")
    rho = float(stats.spearmanr(cos, labels).statistic)
    r = float(stats.pearsonr(cos, labels).statistic)
    return {"spearman": 100 * rho, "pearson": 100 * r, "pairs": len(pairs), "metric": "spearman",
            "score": 100 * rho, "truncated": enc.last_truncated, "pooling": enc.pooling, "backend": enc.backend,
            **info}


__all__ = ["evaluate_sts"]
