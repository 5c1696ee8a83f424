"""BERT-whitening (Su et al. 2021): fit it on a corpus's sentence vectors and store it with the model.

:func:`fit_whitening` gives ``(kernel, bias)`` with ``y = (x + bias) @ kernel`` (zero mean, identity covariance
on the vectors it was fitted on); :func:`whiten_model` fits it with a model's :class:`SentenceEncoder` and writes
the model plus the whitening in the sentence-transformers layout, where it is an identity-activation ``Dense``
module (:func:`qingbert.embeddings.st_format.whitening_to_dense`), so sentence-transformers applies it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qingbert.embeddings.encoder import SentenceEncoder
from qingbert.embeddings.inputs import read_corpus
from qingbert.errors import QingbertError
from qingbert.manifest import EMBEDDINGS_FORMAT, check_out_folder, replace_folder

RANK_TOLERANCE = 1e-10  # whitening: a direction with variance below this share of the largest has none


def fit_whitening(vectors, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT-whitening (Su et al. 2021): ``(kernel (d, k), bias (d,))`` with ``y = (x + bias) @ kernel`` giving
    zero mean and identity covariance on ``vectors``.  ``bias = -mean``; ``kernel = U diag(1/sqrt(s))`` from the
    SVD of the (sample) covariance, its first ``n_components`` columns (the largest-variance directions).

    ``n_components=None`` keeps every direction the vectors vary in.  That is usually ``d - 1``, not ``d``: a
    post-LayerNorm encoder's token vectors (and so their mean or [CLS]) lie on a hyperplane, so one direction
    has no variance and cannot be scaled to unit variance; asking for it explicitly is an error."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise QingbertError(f"whitening takes a 2-D array of vectors (n, d), got shape {x.shape}")
    n, d = x.shape
    k = d if n_components is None else n_components
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise QingbertError(f"n_components must be a positive integer, got {n_components!r}")
    if k > d:
        raise QingbertError(f"n_components {k} is larger than the vectors' dimension {d}")
    if n < k + 1:
        raise QingbertError(f"whitening to {k} dimensions needs at least {k + 1} vectors, got {n}",
                            hint="give more sentences or a smaller n_components")
    if not np.isfinite(x).all():
        raise QingbertError("the vectors hold NaN or infinite values")
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    u, s, _ = np.linalg.svd(cov)
    rank = int((s > max(s[0], 1e-300) * RANK_TOLERANCE).sum())
    if n_components is None:
        k = rank  # a direction without variance cannot be scaled to unit variance
    if rank == 0 or k > rank:
        raise QingbertError(f"the vectors span only {rank} dimensions, fewer than the {k} asked for",
                            hint="use more varied sentences or a smaller n_components")
    kernel = u[:, :k] / np.sqrt(s[:k])
    return kernel, -mu


def whiten_model(model_dir: str | Path, corpus, out_dir: str | Path, n_components: int | None = None,
                 pooling: str | None = None, pooling_layer: int | None = None, max_len: int | None = None,
                 batch_size: int = 64, show_progress_bar: bool | None = None, overwrite: bool = False) -> dict:
    """Fit BERT-whitening on ``corpus`` (a text file, one sentence per line, or a list of sentences) with the
    model's vectors and write the model plus the whitening to ``out_dir`` (sentence-transformers layout).
    A whitening the model already had is replaced (fitted on the un-whitened vectors).  ``out_dir`` follows the
    output-folder policy: a non-empty folder is replaced only with ``overwrite`` and only when whiten or simcse
    made it; never the model folder or one holding it."""
    out = Path(out_dir)
    policy = {"what": "a sentence-embedding folder", "fmt": EMBEDDINGS_FORMAT,
              "inputs": {"model folder": model_dir, "corpus": corpus if isinstance(corpus, (str, Path)) else None}}
    check_out_folder(out, overwrite, **policy)  # before the long encode; replace_folder checks again
    if isinstance(corpus, (str, Path)):
        texts, counts = read_corpus(corpus)
        where = str(corpus)
    else:
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
        counts = {"file": None, "lines": len(corpus), "empty": len(corpus) - len(texts), "sentences": len(texts)}
        where = "the corpus"
    enc = SentenceEncoder(model_dir, pooling=pooling, pooling_layer=pooling_layer, max_len=max_len, whitening=False)
    if enc.pooling == "none":
        raise QingbertError("whitening needs sentence vectors: pooling 'none' gives token vectors")
    k = n_components or enc.pooled_size
    if k > enc.pooled_size:
        raise QingbertError(f"n_components {k} is larger than the vectors' dimension {enc.pooled_size}")
    if len(texts) < k + 1:
        raise QingbertError(f"{where}: {len(texts)} usable lines ({counts['empty']} empty); whitening to {k} "
                            f"dimensions needs at least {k + 1}",
                            hint="give more sentences or a smaller n_components (--n-components)")
    normalize, enc.normalize = enc.normalize, False  # fitted on the pooled vectors: Dense comes before Normalize
    vecs = enc.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    truncated = enc.last_truncated
    kernel, bias = fit_whitening(vecs, n_components)
    enc.set_whitening(kernel, bias)
    enc.normalize = normalize
    with replace_folder(out, overwrite, **policy) as stage:
        res = enc.save(stage, record={"stage": "whiten", "base_model": str(model_dir),
                                      "whitening": {"corpus": counts, "n_components": int(kernel.shape[1]),
                                                    "input_dimension": int(kernel.shape[0]), "truncated": truncated}})
    res["out"] = str(out)
    return {**res, **counts, "n_components": int(kernel.shape[1]), "truncated": truncated}


__all__ = ["fit_whitening", "whiten_model"]
