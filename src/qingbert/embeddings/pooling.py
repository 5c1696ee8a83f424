"""Pooling: from token vectors to one sentence vector, and the names poolings go by.

Ours: ``mean``, ``cls``, ``max``, ``mean-max`` (the two concatenated), ``first-last-avg``, ``pooler`` and
``none`` (the token vectors themselves); :func:`canonical_pooling` also takes ``last-avg`` and
bert-as-service's ``REDUCE_MEAN``, ``REDUCE_MAX``, ``REDUCE_MEAN_MAX``, ``CLS_TOKEN``, ``NONE``.
:func:`pool_tokens` pools one layer's tokens (differentiable: SimCSE trains through it); ``first-last-avg``
and ``pooler`` need every layer or the pooler (:data:`NEEDS_TORCH`) and are done by the encoder.
torch is imported where it is used: the command line imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qingbert.errors import QingbertError, closest

if TYPE_CHECKING:
    import torch

POOLINGS = ("mean", "cls", "max", "mean-max", "first-last-avg", "pooler", "none")
POOLING_ALIASES = {"last-avg": "mean", "reduce-mean": "mean", "reduce-max": "max", "reduce-mean-max": "mean-max",
                   "cls-token": "cls"}
NEEDS_TORCH = ("first-last-avg", "pooler")  # poolings that need every layer / the pooler: torch backend only


def canonical_pooling(name: str) -> str:
    """Our name for a pooling (``REDUCE_MEAN`` -> ``mean``, ``last-avg`` -> ``mean`` ...); an error names the
    known ones."""
    if not isinstance(name, str):
        raise QingbertError(f"pooling must be a name, not {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = POOLING_ALIASES.get(key, key)
    if key not in POOLINGS:
        known = list(POOLINGS) + ["last-avg", "REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "NONE"]
        hint = closest(name, known)
        raise QingbertError(f"unknown pooling '{name}'",
                            hint=(f"did you mean '{hint}'? " if hint else "") + "known: " + ", ".join(known))
    return key


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors ``(batch, seq, d)`` over the real tokens of ``mask`` (padding excluded)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Elementwise max of the token vectors ``(batch, seq, d)`` over the real tokens of ``mask``."""
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(1).values


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vectors from one layer's token vectors ``(batch, seq, d)`` over the real tokens of ``mask``
    (``[CLS]`` and ``[SEP]`` included, padding excluded): ``mean``, ``cls`` (the first token), ``max`` or
    ``mean-max`` (the two concatenated).  Differentiable: SimCSE trains through it."""
    if pooling == "mean":
        return masked_mean(hidden, mask)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return masked_max(hidden, mask)
    if pooling == "mean-max":
        import torch

        return torch.cat([masked_mean(hidden, mask), masked_max(hidden, mask)], dim=-1)
    raise QingbertError(f"pooling '{pooling}' does not pool one layer's tokens")


__all__ = ["POOLINGS", "POOLING_ALIASES", "NEEDS_TORCH", "canonical_pooling", "pool_tokens", "masked_mean",
           "masked_max"]
