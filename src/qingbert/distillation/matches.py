"""Matches as data: which teacher layer is compared with which student layer, through which loss of
:mod:`qingbert.distillation.losses`, with which weight and projection.  Presets (``minirbt``, ``hidden-uniform``,
``layer-to-layer``, ``attention-uniform``) or TextBrewer-style dicts (``layer_T``, ``layer_S``, ``feature``,
``loss``, ``weight``, ``proj``)."""

from __future__ import annotations

from dataclasses import dataclass

from qingbert.distillation.losses import FEATURE_OF, get_loss, make_projection
from qingbert.errors import QingbertError


@dataclass
class Shape:
    layers: int
    width: int
    heads: int
    vocab: int

    @classmethod
    def of(cls, model) -> "Shape":
        c = model.config
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        width = getattr(c, "hidden_size", None) or getattr(c, "d_model", None)
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
        return cls(int(layers), int(width), int(heads), int(model.get_input_embeddings().num_embeddings))


def _uniform(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer for each student layer 0..n_student (0 = embeddings, the last = the last)."""
    return [int(round(j * n_teacher / n_student)) for j in range(n_student + 1)]


def preset_matches(name: str, t: Shape, s: Shape) -> list[dict]:
    """Named match lists.  ``minirbt`` / ``hidden-uniform``: hidden MSE on evenly spaced teacher layers
    (12 -> 6: teacher 0,2,...,12 <-> student 0..6, as MiniRBT), projected when widths differ;
    ``layer-to-layer``: layer i <-> layer i (equal depth); ``attention-uniform``: attention MSE on evenly
    spaced layers (TinyBERT style); ``none``."""
    proj = None if s.width == t.width else ["linear", s.width, t.width]
    if name in ("minirbt", "hidden-uniform"):
        return [dict(layer_T=lt, layer_S=ls, feature="hidden", loss="hidden_mse", weight=1.0, proj=proj)
                for ls, lt in enumerate(_uniform(t.layers, s.layers))]
    if name == "layer-to-layer":
        if t.layers != s.layers:
            raise QingbertError(f"match preset 'layer-to-layer' needs equal depth; teacher has {t.layers} layers, "
                                f"student {s.layers}", hint="use 'hidden-uniform'")
        return [dict(layer_T=i, layer_S=i, feature="hidden", loss="hidden_mse", weight=1.0, proj=proj)
                for i in range(t.layers + 1)]
    if name == "attention-uniform":
        return [dict(layer_T=lt - 1, layer_S=ls - 1, feature="attention", loss="attention_mse", weight=1.0)
                for ls, lt in enumerate(_uniform(t.layers, s.layers)) if ls > 0]
    if name == "none":
        return []
    raise QingbertError(f"unknown match preset '{name}'", hint="available: " + ", ".join(PRESETS))


PRESETS = ("hidden-uniform", "minirbt", "layer-to-layer", "attention-uniform", "none")


_ALIASES = {"layer_T": "layer_T", "teacher": "layer_T", "teacher_layer": "layer_T",
            "layer_S": "layer_S", "student": "layer_S", "student_layer": "layer_S",
            "feature": "feature", "loss": "loss", "weight": "weight", "proj": "proj", "projection": "proj"}


def resolve_matches(spec, t: Shape, s: Shape) -> list[dict]:
    """A preset name, a list of dicts and/or preset names -> checked, normalised matches.

    Every error (a layer that does not exist, a projection of the wrong width, an unknown loss) is
    raised here, before any training starts."""
    if spec is None:
        spec = []
    items = [spec] if isinstance(spec, (str, dict)) else list(spec)
    out = []
    for item in items:
        if isinstance(item, str):
            out.extend(resolve_matches(preset_matches(item, t, s), t, s))
            continue
        if not isinstance(item, dict):
            raise QingbertError(f"a match must be a dict or a preset name, got {item!r}")
        m = {}
        for k, v in item.items():
            if k not in _ALIASES:
                raise QingbertError(f"match {item}: unknown key '{k}'",
                                    hint="keys: layer_T, layer_S, feature, loss, weight, proj")
            m[_ALIASES[k]] = v
        for need in ("layer_T", "layer_S", "loss"):
            if need not in m:
                raise QingbertError(f"match {item}: '{need}' is missing")
        get_loss(m["loss"])
        if m["loss"] not in FEATURE_OF:
            raise QingbertError(f"match {item}: '{m['loss']}' is not a feature loss",
                                hint="use " + ", ".join(sorted(FEATURE_OF)))
        feature = m.get("feature") or FEATURE_OF[m["loss"]]
        if feature != FEATURE_OF[m["loss"]]:
            raise QingbertError(f"match {item}: loss '{m['loss']}' reads '{FEATURE_OF[m['loss']]}', not '{feature}'")
        top_t, top_s = (t.layers, s.layers) if feature == "hidden" else (t.layers - 1, s.layers - 1)
        what = "hidden layers 0 (embeddings) to" if feature == "hidden" else "attention layers 0 to"
        for side, key, top in (("teacher", "layer_T", top_t), ("student", "layer_S", top_s)):
            if not isinstance(m[key], int) or not 0 <= m[key] <= top:
                raise QingbertError(f"match {item}: {side} layer {m[key]} does not exist "
                                    f"(the {side} has {what} {top})")
        proj = m.get("proj")
        if feature == "hidden":
            kind = None
            if proj:
                kind = proj[0] if isinstance(proj, (list, tuple)) else str(proj)
                if isinstance(proj, (list, tuple)) and len(proj) >= 3 and (int(proj[1]), int(proj[2])) != (
                        s.width, t.width):
                    raise QingbertError(f"match {item}: projection {proj[1]} -> {proj[2]} does not fit; the student "
                                        f"is {s.width} wide and the teacher {t.width}",
                                        hint=f"use [\"{kind}\", {s.width}, {t.width}]")
            make_projection(kind, s.width, t.width)  # a width mismatch without projection fails here
            proj = [kind, s.width, t.width] if kind else None
        elif proj:
            raise QingbertError(f"match {item}: attention matches take no projection")
        out.append(dict(layer_T=m["layer_T"], layer_S=m["layer_S"], feature=feature, loss=m["loss"],
                        weight=m.get("weight", 1.0), proj=proj))
    return out
