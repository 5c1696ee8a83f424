"""Knowledge-distillation losses, scalar schedules and width projections.

Every loss is a small pure function returning a scalar tensor:

* Logit losses: :func:`kd_ce` (soft cross-entropy at temperature ``T``), :func:`kd_mse` (MSE between
  ``logits / T``) and :func:`hard_ce` (ordinary cross-entropy on gold labels).
* Match losses between intermediate features: :func:`hidden_mse`, :func:`hidden_cos`, :func:`pkd` on hidden
  states and :func:`attention_mse`, :func:`attention_kl` on attention probabilities (:data:`FEATURE_OF` says
  which feature each reads).

Conventions shared by all of them:

* The teacher side is a fixed target: it is detached, so no gradient ever reaches it.
* Arithmetic runs in float32 (float64 inputs stay float64), so half-precision activations are safe.
* ``mask`` (bool or 0/1) selects the positions that count; masked-out positions never enter the arithmetic,
  so whatever they hold (even ``inf``/``nan``) cannot change the value or the gradient.  Means are taken over
  the selected positions of the whole batch; when nothing is selected the loss is an exact 0 that is still
  connected to the student's graph (``backward()`` works and gives zero gradients).

On the ``T**2`` factor of :func:`kd_ce`: Hinton et al. (2015) multiply the soft-target loss by ``T**2``
because its gradient shrinks like ``1 / T**2``; with the factor, changing ``T`` does not change the balance
against the hard-label loss.  TextBrewer 0.2.1's ``kd_ce_loss`` has no such factor, so ``t2=False``
reproduces its values (and its effective weighting) exactly.

:class:`Schedule` makes the temperature and the loss weights constant or a function of training progress;
:func:`make_projection` builds the trainable maps from student width to teacher width used by match losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qingbert.errors import QingbertError

__all__ = [
    "FEATURE_OF",
    "LOSSES",
    "PROJECTIONS",
    "Schedule",
    "attention_kl",
    "attention_mse",
    "get_loss",
    "hard_ce",
    "hidden_cos",
    "hidden_mse",
    "kd_ce",
    "kd_mse",
    "make_projection",
    "pkd",
]


# ---------------------------------------------------------------- helpers

def _f32(x: Tensor) -> Tensor:
    """``x`` as float32 for the arithmetic (float64 is kept as it is)."""
    return x if x.dtype == torch.float64 else x.float()


def _same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}")


def _bool_mask(mask: Tensor | None, shape: torch.Size, what: str) -> Tensor | None:
    """``mask`` as a bool tensor of ``shape`` (``None`` stays ``None``)."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what}: mask shape {tuple(mask.shape)} does not match {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _select(x: Tensor, mask: Tensor | None) -> Tensor:
    """The rows of ``x`` (shape ``(*positions, D)``) at the selected positions, flattened to ``(N, D)``."""
    return x.reshape(-1, x.shape[-1]) if mask is None else x[mask]


def _safe_mean(total: Tensor, count: int) -> Tensor:
    """``total / count``, with an empty selection giving ``total`` itself (an exact, graph-connected 0)."""
    return total / max(count, 1)


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise QingbertError(f"temperature must be a positive number, got {temperature!r}")
    return t


# ---------------------------------------------------------------- logit losses

def kd_ce(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None,
          t2: bool = True) -> Tensor:
    """Soft cross-entropy ``-sum_c softmax(t/T)_c * log_softmax(s/T)_c`` averaged over (selected) positions.

    Logits are ``(..., C)``; ``mask`` has shape ``logits.shape[:-1]``.  ``t2=True`` multiplies by ``T**2``
    (Hinton et al. 2015); ``t2=False`` matches TextBrewer 0.2.1's ``kd_ce_loss``.
    """
    _same_shape(student_logits, teacher_logits, "kd_ce")
    t = _check_temperature(temperature)
    m = _bool_mask(mask, student_logits.shape[:-1], "kd_ce")
    s = _select(_f32(student_logits), m) / t
    p = F.softmax(_select(_f32(teacher_logits.detach()), m) / t, dim=-1)
    loss = _safe_mean(-(p * F.log_softmax(s, dim=-1)).sum(), s.shape[0])
    return loss * (t * t) if t2 else loss


def kd_mse(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
           mask: Tensor | None = None) -> Tensor:
    """Mean squared error between ``student/T`` and ``teacher/T`` over (selected) positions and classes."""
    _same_shape(student_logits, teacher_logits, "kd_mse")
    t = _check_temperature(temperature)
    m = _bool_mask(mask, student_logits.shape[:-1], "kd_mse")
    s = _select(_f32(student_logits), m) / t
    d = s - _select(_f32(teacher_logits.detach()), m) / t
    return _safe_mean((d * d).sum(), d.numel())


def hard_ce(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of ``logits`` ``(..., C)`` against ``labels`` ``(...)``, mean over non-ignored labels."""
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"hard_ce: labels shape {tuple(labels.shape)} does not match logits "
                         f"{tuple(logits.shape)} without the class axis")
    flat = _f32(logits).reshape(-1, logits.shape[-1])
    gold = labels.reshape(-1).long()
    total = F.cross_entropy(flat, gold, ignore_index=ignore_index, reduction="sum")
    return _safe_mean(total, int((gold != ignore_index).sum()))


# ---------------------------------------------------------------- hidden-state losses

def hidden_mse(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over valid tokens and the hidden axis; states ``(B, L, D)``, ``mask`` ``(B, L)``.

    The student must already be projected to the teacher's width (see :func:`make_projection`).
    """
    _same_shape(student_hidden, teacher_hidden, "hidden_mse (project the student to the teacher's width)")
    m = _bool_mask(mask, student_hidden.shape[:-1], "hidden_mse")
    d = _select(_f32(student_hidden), m) - _select(_f32(teacher_hidden.detach()), m)
    return _safe_mean((d * d).sum(), d.numel())


def hidden_cos(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid tokens of ``1 - cos(student, teacher)`` along the hidden axis."""
    _same_shape(student_hidden, teacher_hidden, "hidden_cos (project the student to the teacher's width)")
    m = _bool_mask(mask, student_hidden.shape[:-1], "hidden_cos")
    s = _select(_f32(student_hidden), m)
    cos = F.cosine_similarity(s, _select(_f32(teacher_hidden.detach()), m), dim=-1, eps=1e-8)
    return _safe_mean((1.0 - cos).sum(), cos.numel())


def pkd(student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
    """Patient-KD (Sun et al. 2019): ``||s/|s| - t/|t|||^2`` summed over ``D``, mean over the batch ``(B, D)``."""
    _same_shape(student_cls, teacher_cls, "pkd (project the student to the teacher's width)")
    s = F.normalize(_f32(student_cls), p=2, dim=-1)
    d = s - F.normalize(_f32(teacher_cls.detach()), p=2, dim=-1)
    return _safe_mean((d * d).sum(), d.numel() // max(d.shape[-1], 1))


# ---------------------------------------------------------------- attention losses

def _attention_pair(student_att: Tensor, teacher_att: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Float student and detached teacher maps ``(B, H, L, L)``, head-averaged when head counts differ."""
    s, t = _f32(student_att), _f32(teacher_att.detach())
    if s.dim() != 4 or t.dim() != 4:
        raise ValueError(f"{what}: attention must be (batch, heads, length, length), got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
    _same_shape(s[:, :1], t[:, :1], what)
    return s, t


def _token_mask(mask: Tensor | None, att: Tensor, what: str) -> Tensor:
    """The ``(B, L)`` real-token mask as bool (all true when ``mask`` is ``None``)."""
    shape = torch.Size((att.shape[0], att.shape[-1]))
    m = _bool_mask(mask, shape, what)
    return torch.ones(shape, dtype=torch.bool, device=att.device) if m is None else m.to(att.device)


def attention_mse(student_att: Tensor, teacher_att: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between attention probabilities ``(B, H, L, L)``, averaged over heads and (real query, real key) pairs.

    ``mask`` ``(B, L)`` marks real tokens.  With different head counts the head-averaged maps are compared.
    """
    s, t = _attention_pair(student_att, teacher_att, "attention_mse")
    m = _token_mask(mask, s, "attention_mse")
    pairs = (m[:, :, None] & m[:, None, :])[:, None].expand_as(s)
    d = s[pairs] - t[pairs]
    return _safe_mean((d * d).sum(), d.numel())


def attention_kl(student_att: Tensor, teacher_att: Tensor, mask: Tensor | None = None,
                 eps: float = 1e-12) -> Tensor:
    """``KL(teacher || student)`` along the key axis, mean over heads and real query rows.

    Attention maps are probabilities ``(B, H, L, L)``; ``eps`` guards the logarithms.  Padded keys are left
    out of the sum (a model's attention mask gives them ~0 probability anyway).
    """
    s, t = _attention_pair(student_att, teacher_att, "attention_kl")
    m = _token_mask(mask, s, "attention_kl")
    pairs = (m[:, :, None] & m[:, None, :])[:, None].expand_as(s)
    one = torch.ones((), dtype=s.dtype, device=s.device)
    s, t = torch.where(pairs, s, one), torch.where(pairs, t, one)  # padding -> 1 vs 1: contributes exactly 0
    rows = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(dim=-1)  # (B, H, L)
    real = m[:, None, :].expand_as(rows)
    return _safe_mean(rows[real].sum(), int(real.sum()))


# ---------------------------------------------------------------- registry

LOSSES: dict[str, Callable[..., Tensor]] = {
    "kd_ce": kd_ce,
    "kd_mse": kd_mse,
    "hard_ce": hard_ce,
    "hidden_mse": hidden_mse,
    "hidden_cos": hidden_cos,
    "attention_mse": attention_mse,
    "attention_kl": attention_kl,
    "pkd": pkd,
}

FEATURE_OF: dict[str, str] = {
    "hidden_mse": "hidden",
    "hidden_cos": "hidden",
    "pkd": "hidden",
    "attention_mse": "attention",
    "attention_kl": "attention",
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """The loss function called ``name``."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise QingbertError(f"unknown loss '{name}'", hint="available: " + ", ".join(sorted(LOSSES))) from None


# ---------------------------------------------------------------- schedules

_KINDS = ("constant", "linear", "cosine")
_ALIASES = ("linear_decay", "linear_growth")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise QingbertError(f"schedule {what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """A scalar that is constant or moves from ``start`` to ``end`` as training progresses.

    ``kind`` is ``"constant"``, ``"linear"`` or ``"cosine"`` (half a cosine wave: flat at both ends).
    Call it with ``progress = step / total_steps``; progress is clamped to ``[0, 1]``.
    """

    kind: str
    start: float
    end: float

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise QingbertError(f"unknown schedule kind '{self.kind}'", hint="available: " + ", ".join(_KINDS))
        if self.kind == "constant" and self.start != self.end:
            raise QingbertError(f"a constant schedule has one value, got start {self.start} and end {self.end}")

    @classmethod
    def constant(cls, value: float) -> Schedule:
        """A schedule that is always ``value``."""
        v = _number(value, "value")
        return cls("constant", v, v)

    @classmethod
    def parse(cls, spec) -> Schedule:
        """A schedule from a number, a dict ``{"kind": ..., "start": a, "end": b}`` or a :class:`Schedule`.

        ``kind`` may also be ``"linear_decay"`` (``start`` -> 0) or ``"linear_growth"`` (0 -> ``start``), the
        TextBrewer weight-scheduler names; ``"value"`` may stand for ``"start"``.
        """
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls.constant(spec)
        if isinstance(spec, str) and spec in _KINDS + _ALIASES:
            raise QingbertError(f"schedule '{spec}' needs a value",
                                hint=f"e.g. {{kind: {spec}, start: 1.0}}")
        if not isinstance(spec, Mapping):
            raise QingbertError(f"a schedule must be a number or a mapping with 'kind', got {spec!r}",
                                hint="e.g. 2.0 or {kind: linear, start: 4.0, end: 1.0}")
        unknown = sorted(str(k) for k in spec if k not in ("kind", "start", "value", "end"))
        if unknown:
            raise QingbertError(f"unknown schedule key '{unknown[0]}'", hint="known: kind, start (or value), end")
        kind = spec.get("kind", "constant")
        if kind not in _KINDS + _ALIASES:
            raise QingbertError(f"unknown schedule kind {kind!r}", hint="available: " + ", ".join(_KINDS + _ALIASES))
        if "start" in spec and "value" in spec:
            raise QingbertError("a schedule takes 'start' or 'value', not both")
        if "start" not in spec and "value" not in spec:
            raise QingbertError(f"schedule '{kind}' needs a 'start' (or 'value')")
        start = _number(spec["start"] if "start" in spec else spec["value"], "start")
        if kind in _ALIASES:
            if "end" in spec:
                raise QingbertError(f"schedule '{kind}' takes no 'end' (it ends at "
                                    f"{'0' if kind == 'linear_decay' else 'its start value'})")
            return cls("linear", start, 0.0) if kind == "linear_decay" else cls("linear", 0.0, start)
        if kind == "constant":
            if "end" in spec and _number(spec["end"], "end") != start:
                raise QingbertError(f"a constant schedule has one value, got start {start} and end {spec['end']}")
            return cls.constant(start)
        if "end" not in spec:
            raise QingbertError(f"schedule '{kind}' needs an 'end'")
        return cls(kind, start, _number(spec["end"], "end"))

    @property
    def is_constant(self) -> bool:
        """Whether the value never changes."""
        return self.start == self.end

    def __call__(self, progress: float) -> float:
        p = float(progress)
        if math.isnan(p):
            raise ValueError("schedule progress is NaN")
        p = min(max(p, 0.0), 1.0)
        if self.is_constant:
            return self.start
        if self.kind == "linear":
            frac = p
        else:  # cosine
            frac = (1.0 - math.cos(math.pi * p)) / 2.0
        return self.start + (self.end - self.start) * frac

    def to_dict(self) -> dict:
        """A plain dict for manifests; :meth:`parse` turns it back into an equal schedule."""
        return {"kind": self.kind, "start": self.start, "end": self.end}


# ---------------------------------------------------------------- projections

PROJECTIONS: tuple[str, ...] = ("linear", "relu", "tanh")


def make_projection(kind: str | None, in_dim: int, out_dim: int) -> nn.Module:
    """A trainable map from student width ``in_dim`` to teacher width ``out_dim``.

    ``None`` is the identity (widths must then be equal); ``"linear"`` is ``nn.Linear``; ``"relu"`` and
    ``"tanh"`` add that activation after the linear layer.
    """
    for name, dim in (("in_dim", in_dim), ("out_dim", out_dim)):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise QingbertError(f"projection {name} must be a positive whole number, got {dim!r}")
    if kind is None:
        if in_dim != out_dim:
            raise QingbertError(f"student width {in_dim} != teacher width {out_dim}: "
                                f"give the match a projection, e.g. linear")
        return nn.Identity()
    if kind not in PROJECTIONS:
        raise QingbertError(f"unknown projection {kind!r}", hint="available: " + ", ".join(PROJECTIONS))
    linear = nn.Linear(in_dim, out_dim)
    if kind == "linear":
        return linear
    return nn.Sequential(linear, nn.ReLU() if kind == "relu" else nn.Tanh())
