"""``distill``: teacher -> (assistant ->) student, in the one training loop of :mod:`qingbert.train`.

Two kinds of distillation, one objective interface:

* **general** (pretraining stage) on a prepared WWM folder: teacher and student
  are masked LMs; the KD loss is computed at the masked positions only, and both
  models run their vocabulary head only there (the teacher in eval mode, without
  gradients).  Optional hard MLM loss and intermediate *matches*.
* **task** stage for every task type of :mod:`qingbert.finetune`: the teacher is
  a fine-tuned folder (or several: their soft targets are averaged, optionally
  weighted), the student is a pretrained or distilled small model; logits KD +
  hard labels + optional matches.  Teacher logits may be cached across epochs.

*Matches* are data (a list of dicts, or a preset name), each pairing a teacher
layer with a student layer through a loss of :mod:`qingbert.losses`, with an
optional trainable projection (student width -> teacher width).  Keys as in
TextBrewer are accepted (``layer_T``, ``layer_S``, ``feature``, ``loss``,
``weight``, ``proj``).  Layer numbers count as TextBrewer does: for ``hidden``
features layer 0 is the embeddings output and layer *i* the output of
transformer layer *i*; for ``attention`` features layer *i* is the *i*-th
transformer layer counted from 0.

Two-stage distillation (MiniRBT): teacher -> assistant (same width, initialised
from chosen teacher layers) -> student, one command; each stage writes a folder
plain transformers loads (``AutoModelForMaskedLM``).
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qingbert.errors import QingbertError
from qingbert.losses import FEATURE_OF, Schedule, get_loss, make_projection
from qingbert.manifest import DISTILLED_FORMAT, read_manifest, write_manifest
from qingbert.pretraining.mlm import IGNORE, MaskingConfig, attention_of, mlm_head
from qingbert.training.loop import TrainConfig, Trainer, seed_everything

FORMAT = DISTILLED_FORMAT
KD_LOSSES = ("kd_ce", "kd_mse")
TEACHER_BACKENDS = ("torch", "onnx", "onnx-int8", "auto")
INT8_TEACHER_MAX_RELATIVE_ERROR = 0.05  # onnx-int8 teacher: |h_int8 - h| / |h| on the first batch


@dataclass
class DistillConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, save_every=200))
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    temperature: float | dict = 1.0  # a number or a schedule (losses.Schedule)
    kd_loss: str = "kd_ce"  # kd_ce | kd_mse
    kd_t2: bool = True  # multiply kd_ce by T^2 (Hinton et al.); TextBrewer 0.2.1 does not: set false to match it
    kd_weight: float | dict = 1.0
    hard_weight: float | dict | None = None  # general: MLM loss on masked tokens (default 0); task: task loss (1)
    matches: list | str | None = None  # None: general -> "hidden-uniform", task -> "none"
    hidden_only: bool = False  # no logits KD (e.g. a teacher whose MLM head is untrained)
    init_from_teacher_layers: list | None = None  # assistant/student = these teacher layers (same width)
    init: str = "local-attention"  # a student built from scratch (zoo shape): qingbert.inits name (as pretrain)
    fit_teacher_head: int = 0  # steps to train an untrained teacher MLM head alone before distilling
    cache_teacher: bool = True  # task stage: reuse teacher logits across epochs (when no matches need features)
    teacher_weights: list | None = None  # multi-teacher: weights of the teachers' soft targets
    overrides: dict = field(default_factory=dict)  # config overrides for zoo-shape students
    # general stage: the frozen teacher's encoder in "torch", or in ONNX Runtime's fused graph ("onnx"; CPU, no
    # attention matches, no document mask; equal to torch within 1e-3); "auto" (default) = onnx where it applies,
    # else torch; "onnx-int8" = the same graph quantised to int8 (faster; its hidden states must stay within
    # INT8_TEACHER_MAX_RELATIVE_ERROR of torch's)
    teacher_backend: str = "auto"

    @classmethod
    def from_dict(cls, d: dict | None) -> "DistillConfig":
        """Flat or nested (``train:``, ``masking:``) dict (a YAML recipe) -> config; unknown keys are an error."""
        cfg = cls()
        own = {f.name for f in fields(cls)} - {"train", "masking"}
        tf = {f.name for f in fields(TrainConfig)}
        mf = {f.name for f in fields(MaskingConfig)}
        known = ", ".join(sorted(own | tf | mf))
        for k, v in (d or {}).items():
            if k in ("train", "masking") and isinstance(v, dict):
                sub, names = (cfg.train, tf) if k == "train" else (cfg.masking, mf)
                for kk, vv in v.items():
                    if kk not in names:
                        raise QingbertError(f"unknown distillation option '{k}.{kk}'", hint="known: " + known)
                    setattr(sub, kk, vv)
            elif k in own:
                setattr(cfg, k, v)
            elif k in tf:
                setattr(cfg.train, k, v)
            elif k in mf:
                setattr(cfg.masking, k, v)
            else:
                raise QingbertError(f"unknown distillation option '{k}'", hint="known: " + known)
        cfg.masking.__post_init__()
        if cfg.teacher_backend not in TEACHER_BACKENDS:
            raise QingbertError(f"unknown teacher_backend '{cfg.teacher_backend}'",
                                hint="available: " + ", ".join(TEACHER_BACKENDS))
        if cfg.kd_loss not in KD_LOSSES:
            raise QingbertError(f"unknown kd_loss '{cfg.kd_loss}'", hint="available: " + ", ".join(KD_LOSSES))
        for name in ("temperature", "kd_weight", "hard_weight"):
            if getattr(cfg, name) is not None:
                Schedule.parse(getattr(cfg, name))  # fail now, not at step 1
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


# ---------------------------------------------------------------------------
# model shapes and matches


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


# ---------------------------------------------------------------------------
# features


def _base_and_head(model):
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return base, mlm_head(model)


def _match_loss(m: dict, proj, s_out, t_out, attention_mask) -> torch.Tensor:
    fn = get_loss(m["loss"])
    if m["feature"] == "attention":
        return fn(s_out.attentions[m["layer_S"]], t_out.attentions[m["layer_T"]], attention_mask)
    sh = proj(s_out.hidden_states[m["layer_S"]])
    th = t_out.hidden_states[m["layer_T"]]
    if m["loss"] == "pkd":
        return fn(sh[:, 0], th[:, 0])
    return fn(sh, th, attention_mask)


def _needs(matches: list[dict]) -> tuple[bool, bool]:
    return any(m["feature"] == "hidden" for m in matches), any(m["feature"] == "attention" for m in matches)


def _use_eager_attention(model) -> None:
    """Attention probabilities are only returned by the eager implementation."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


def _weighted(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    return sum(w * x for w, x in zip(weights, tensors))


class _DistillBase(torch.nn.Module):
    """What both stages share: frozen teachers kept out of the trained module, projections, schedules."""

    default_hard_weight = 0.0

    def __init__(self, teachers: list, student, cfg: DistillConfig, matches: list[dict]):
        super().__init__()
        self.student = student
        # plain list: the teachers are not parameters of the objective, so they are neither optimised,
        # checkpointed nor wrapped for data parallelism
        self._teachers = list(teachers)
        for t in self._teachers:
            t.eval()
            t.requires_grad_(False)
        w = cfg.teacher_weights or [1.0] * len(self._teachers)
        if len(w) != len(self._teachers):
            raise QingbertError(f"{len(w)} teacher weights for {len(self._teachers)} teachers")
        self.teacher_weights = [float(x) / float(sum(w)) for x in w]
        self.matches = matches
        self.projections = torch.nn.ModuleList(
            [make_projection(m["proj"][0] if m.get("proj") else None, *self._widths(m)) for m in matches])
        self.cfg = cfg
        self.temperature = Schedule.parse(cfg.temperature)
        self.kd_weight = Schedule.parse(0.0 if cfg.hidden_only else cfg.kd_weight)
        self.hard_weight = Schedule.parse(self.default_hard_weight if cfg.hard_weight is None else cfg.hard_weight)
        self.kd_on = not (self.kd_weight.is_constant and self.kd_weight(0.0) == 0)
        self.kd = get_loss(cfg.kd_loss)
        self.progress = 0.0
        self.need_hidden, self.need_attention = _needs(matches)
        if self.need_attention:
            for mdl in [student, *self._teachers]:
                _use_eager_attention(mdl)
        self._onnx: list = [None] * len(self._teachers)  # teachers' encoders in ONNX Runtime, built on first use
        self.teacher_backend_used = "torch"
        self.teacher_backend_check: dict = {}  # the ONNX teacher vs torch on the first batch
        self._teacher_backend = cfg.teacher_backend

    def _widths(self, m: dict) -> tuple[int, int]:
        if m["feature"] != "hidden":
            return 1, 1
        if m.get("proj"):
            return m["proj"][1], m["proj"][2]
        width = Shape.of(self.student).width
        return width, width

    def set_progress(self, fraction: float) -> None:
        self.progress = float(fraction)

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self._teachers:  # the teachers stay in eval mode (no dropout)
            t.eval()
        return self

    def _teachers_on(self, device) -> list:
        for t in self._teachers:
            if next(t.parameters()).device != device:
                t.to(device)
        return self._teachers

    def _teacher_encoder(self, i: int, base, ids, att):
        """Teacher ``i``'s encoder for this batch: the torch module, or its ONNX Runtime graph where the config
        asks for it and it applies (checked against torch on the first batch)."""
        backend = self._teacher_backend
        if backend == "torch" or att.dim() != 2 or self.need_attention or ids.device.type != "cpu":
            return base
        if self._onnx[i] is None:
            try:
                from qingbert.models.onnx import OnnxEncoder

                int8 = backend == "onnx-int8"
                enc = OnnxEncoder(base, hidden_states=self.need_hidden, int8=int8)
                check = enc.compare(base, ids, att)
                if int8 and check["relative_error"] > INT8_TEACHER_MAX_RELATIVE_ERROR:
                    raise QingbertError(f"its int8 hidden states are {100 * check['relative_error']:.1f} % off "
                                        f"torch's (at most {100 * INT8_TEACHER_MAX_RELATIVE_ERROR:.0f} % allowed)")
                if not int8 and check["max_abs_diff"] > 1e-3:
                    raise QingbertError(f"its outputs differ from torch's by {check['max_abs_diff']:.3g}")
            except (QingbertError, ImportError, RuntimeError) as e:
                if backend != "auto":
                    raise QingbertError(f"cannot run the teacher in ONNX Runtime ({backend}): {e}",
                                        hint="use teacher_backend torch") from None
                self._teacher_backend = "torch"  # auto: fall back for good
                return base
            self._onnx[i] = enc
            self.teacher_backend_used = enc.name
            self.teacher_backend_check = {k: round(v, 6) for k, v in check.items()}
        return self._onnx[i]

    def _kd(self, s_logits, t_logits, mask=None) -> torch.Tensor:
        T = self.temperature(self.progress)
        if self.cfg.kd_loss == "kd_ce":
            return self.kd(s_logits, t_logits, temperature=T, mask=mask, t2=self.cfg.kd_t2)
        return self.kd(s_logits, t_logits, temperature=T, mask=mask)

    def _matches(self, s_out, t_out, attention_mask) -> torch.Tensor | None:
        if not self.matches:
            return None
        return sum(float(m["weight"]) * _match_loss(m, p, s_out, t_out, attention_mask)
                   for m, p in zip(self.matches, self.projections))

    def _total(self, kd, hard, match) -> tuple[torch.Tensor, dict]:
        kw, hw = self.kd_weight(self.progress), self.hard_weight(self.progress)
        total, metrics = 0.0, {}
        for name, w, x in (("kd_loss", kw, kd), ("hard_loss", hw, hard), ("match_loss", 1.0, match)):
            if x is not None:
                metrics[name] = x.detach()
                if w:
                    total = total + w * x
        if not torch.is_tensor(total):
            raise QingbertError("nothing to learn from: the KD, hard-label and match losses are all off",
                                hint="set kd_weight, hard_weight or matches")
        return total, metrics

    def trained_model(self):
        return self.student


class GeneralDistillObjective(_DistillBase):
    """Pretraining-stage distillation on WWM batches (``input_ids``, ``attention_mask``, ``labels``)."""

    name = "general-distill"
    accuracy_name = "masked_accuracy"

    def __init__(self, teacher, student, cfg: DistillConfig | dict, matches: list[dict] | None = None):
        cfg = cfg if isinstance(cfg, DistillConfig) else DistillConfig.from_dict(cfg)
        teachers = teacher if isinstance(teacher, (list, tuple)) else [teacher]
        t, s = Shape.of(teachers[0]), Shape.of(student)
        for other in teachers:
            if Shape.of(other).vocab != s.vocab:
                raise QingbertError(f"teacher and student vocabularies differ ({Shape.of(other).vocab} vs {s.vocab} "
                                    "tokens): distillation compares them token by token",
                                    hint="prepare the data with the teacher's tokenizer and build the student on it")
        if matches is None:
            matches = resolve_matches("hidden-uniform" if cfg.matches is None else cfg.matches, t, s)
        super().__init__(teachers, student, cfg, matches)
        for m in [student, *teachers]:
            if _base_and_head(m)[1] is None or _base_and_head(m)[0] is None:
                raise QingbertError(f"{type(m).__name__} is not a masked LM with a separate head")

    def _forward(self, batch):
        ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        att = attention_of(batch)  # (the document bias of packed texts where the collator made one)
        sel = labels != IGNORE
        s_base, s_head = _base_and_head(self.student)
        kw = dict(output_hidden_states=self.need_hidden, output_attentions=self.need_attention)
        s_out = s_base(input_ids=ids, attention_mask=att, **kw)
        s_logits = s_head(s_out.last_hidden_state[sel])
        t_out, t_logits = None, []
        with torch.no_grad():
            for i, t in enumerate(self._teachers_on(ids.device)):
                t_base, t_head = _base_and_head(t)
                out = self._teacher_encoder(i, t_base, ids, att)(input_ids=ids, attention_mask=att, **kw)
                if t_out is None:  # matches read the first teacher's features
                    t_out = out
                if self.kd_on:
                    t_logits.append(t_head(out.last_hidden_state[sel]))
        target = labels[sel]
        kd = self._kd(s_logits, _weighted(t_logits, self.teacher_weights)) if t_logits else None
        hard = F.cross_entropy(s_logits.float(), target) if self.hard_weight(self.progress) else None
        loss, metrics = self._total(kd, hard, self._matches(s_out, t_out, am))
        with torch.no_grad():
            metrics["correct"] = (s_logits.argmax(-1) == target).sum()
            metrics["count"] = target.numel()
            if t_logits:
                metrics["agree"] = (s_logits.argmax(-1) == t_logits[0].argmax(-1)).sum()
        return loss, metrics

    def forward(self, batch):
        return self._forward(batch)

    def evaluate_batch(self, batch) -> dict:
        loss, m = self._forward(batch)
        n = int(m["count"])
        out = {"loss_sum": float(loss) * n, "tokens": n, "correct": int(m["correct"])}
        if "agree" in m:
            out["agree"] = int(m["agree"])
        return out

    @staticmethod
    def summarize(totals: dict) -> dict:
        n = max(1, totals.get("tokens", 0))
        res = {"masked_accuracy": totals.get("correct", 0) / n, "loss": totals.get("loss_sum", 0.0) / n,
               "masked_tokens": int(totals.get("tokens", 0))}
        if "agree" in totals:
            res["teacher_agreement"] = totals["agree"] / n
        return res


class TaskDistillObjective(_DistillBase):
    """Task-stage distillation: the student's own task loss (hard labels) + logits KD from fine-tuned teachers."""

    name = "task-distill"
    default_hard_weight = 1.0

    def __init__(self, teachers: list, student, head, cfg: DistillConfig, matches: list[dict]):
        super().__init__(teachers, student, cfg, matches)
        self.head = head
        self.outputs = head.outputs
        self.plain = head.objective(student)  # evaluation is the plain fine-tuning evaluation
        self.accuracy_name = getattr(self.plain, "accuracy_name", "accuracy")
        self.cache: dict[int, list] = {}
        self.use_cache = cfg.cache_teacher and not matches

    def _hard_kwargs(self, batch) -> dict:
        keys = ("start_positions", "end_positions") if "start_positions" in batch else ("labels",)
        return {k: batch[k] for k in keys if k in batch}

    def _teacher_logits(self, batch, inputs, kw) -> tuple[dict, object]:
        """Each output's weighted teacher logits (cached per example when allowed) + the first teacher's output."""
        am = inputs["attention_mask"]
        index = batch.get("index")
        if self.use_cache and index is not None and all(int(i) in self.cache for i in index):
            rows = [self.cache[int(i)] for i in index]
            return {n: self._pad([r[k] for r in rows], am) for k, n in enumerate(self.outputs)}, None
        per = {n: [] for n in self.outputs}
        first = None
        with torch.no_grad():
            for t in self._teachers_on(am.device):
                out = t(**inputs, **kw)
                if first is None:
                    first = out
                for n in self.outputs:
                    per[n].append(getattr(out, n).float())
        res = {n: _weighted(v, self.teacher_weights) for n, v in per.items()}
        if self.use_cache and index is not None:
            lengths = am.sum(-1).tolist()
            for b, i in enumerate(index.tolist()):
                self.cache[int(i)] = [res[n][b, :lengths[b]].cpu() if res[n].dim() > 1 and self.head.token_level
                                      else res[n][b].cpu() for n in self.outputs]
        return res, first

    def _pad(self, rows: list, am) -> torch.Tensor:
        if not self.head.token_level:
            return torch.stack(rows).to(am.device)
        out = torch.zeros((len(rows), am.shape[1], *rows[0].shape[1:]), dtype=rows[0].dtype)
        for b, r in enumerate(rows):  # right padding: the real tokens come first
            out[b, :len(r)] = r
        return out.to(am.device)

    def forward(self, batch):
        from qingbert.training.batching import model_inputs

        inputs = model_inputs(batch)
        am = inputs["attention_mask"]
        kw = dict(output_hidden_states=self.need_hidden, output_attentions=self.need_attention)
        s_out = self.student(**inputs, **self._hard_kwargs(batch), **kw)
        t_logits, t_out = self._teacher_logits(batch, inputs, kw)
        kd = None
        if self.kd_weight(self.progress):
            parts = []
            for n in self.outputs:
                s, t = getattr(s_out, n), t_logits[n]
                if n in ("start_logits", "end_logits"):  # a distribution over positions: padding is not one
                    s, t = s.masked_fill(am == 0, -1e4), t.masked_fill(am == 0, -1e4)
                    parts.append(self._kd(s, t))
                elif s.dim() == 3:  # token level: one distribution per real token
                    parts.append(self._kd(s, t, mask=am.bool()))
                else:
                    parts.append(self._kd(s, t))
            kd = sum(parts) / len(parts)
        match = None
        if self.matches:
            if t_out is None:  # (never cached when matches are on)
                raise RuntimeError("teacher features missing")
            match = self._matches(s_out, t_out, am)
        hard = s_out.loss if self.hard_weight(self.progress) and s_out.loss is not None else None
        loss, metrics = self._total(kd, hard, match)
        if "labels" in batch and s_out.logits.dim() == 2:
            with torch.no_grad():
                metrics["correct"] = (s_out.logits.argmax(-1) == batch["labels"]).sum()
                metrics["count"] = batch["labels"].numel()
        return loss, metrics

    def evaluate_batch(self, batch) -> dict:
        return self.plain.evaluate_batch(batch)

    def summarize(self, totals: dict) -> dict:
        return self.plain.summarize(totals)


class IndexCollator:
    """Adds each example's dataset index to the batch (``index``), for per-example teacher caches."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        batch["index"] = torch.tensor([e.get("index", -1) for e in examples], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------
# initialising a shallower model from teacher layers

_LAYER_KEY = re.compile(r"^(.*\.layers?\.)(\d+)(\..*)$")


def init_from_teacher_layers(teacher, layers: list[int], **config_overrides):
    """A model of the teacher's class and width with ``len(layers)`` layers: embeddings, the chosen layers
    (in the given order) and every head copied exactly from the teacher."""
    n = Shape.of(teacher).layers
    layers = [int(x) for x in layers]
    if not layers:
        raise QingbertError("init_from_teacher_layers is empty")
    if len(layers) > n:
        raise QingbertError(f"{len(layers)} layers asked of a teacher with {n}: the assistant/student cannot be "
                            "deeper than the teacher it is initialised from")
    bad = [x for x in layers if not 0 <= x < n]
    if bad or len(set(layers)) != len(layers):
        raise QingbertError(f"init_from_teacher_layers {layers}: layers must be distinct and in 0..{n - 1} "
                            "(transformer layers, counted from 0)")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    for k, v in config_overrides.items():
        setattr(config, k, v)
    student = type(teacher)(config)
    pos = {t: s for s, t in enumerate(layers)}
    state = {}
    for k, v in teacher.state_dict().items():
        m = _LAYER_KEY.match(k)
        if m is None:
            state[k] = v.clone()
        elif int(m.group(2)) in pos:
            state[f"{m.group(1)}{pos[int(m.group(2))]}{m.group(3)}"] = v.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise QingbertError(f"cannot copy layers of a {teacher.config.model_type} model "
                            f"({len(missing)} tensors missing, {len(unexpected)} unexpected, e.g. "
                            f"{(missing + unexpected)[0]})", hint="supported: models with an encoder.layer.N list")
    if getattr(config, "tie_word_embeddings", False) and hasattr(student, "tie_weights"):
        student.tie_weights()
    return student


def default_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spread teacher layers (12 -> 6 gives MiniRBT's 0,2,4,7,9,11)."""
    return [int(round(x)) for x in np.linspace(0, n_teacher - 1, n_student)]


# ---------------------------------------------------------------------------
# general distillation: one stage


def _teacher_accuracy(teacher, eval_ds, collate, batches: int = 4, batch_size: int = 16) -> float | None:
    """Masked-token accuracy of the teacher on a few held-out batches (an untrained head scores ~0)."""
    if eval_ds is None or len(eval_ds) == 0:
        return None
    teacher.eval()
    base, head = _base_and_head(teacher)
    correct = total = 0
    with torch.no_grad():
        for lo in range(0, min(len(eval_ds), batches * batch_size), batch_size):
            rows = eval_ds[lo:lo + batch_size]
            ex = [dict(zip(rows, v)) for v in zip(*rows.values())]
            for j, e in enumerate(ex):
                e["index"] = lo + j
            b = collate(ex)
            sel = b["labels"] != IGNORE
            h = base(input_ids=b["input_ids"], attention_mask=attention_of(b)).last_hidden_state
            correct += int((head(h[sel]).argmax(-1) == b["labels"][sel]).sum())
            total += int(sel.sum())
    return correct / max(1, total)


def _fit_teacher_head(teacher, train_ds, eval_ds, collate, out: Path, cfg: DistillConfig, steps: int):
    """Train the teacher's MLM head alone (encoder frozen) for ``steps`` steps; the fitted teacher is saved."""
    from qingbert.pretraining.mlm import MLMObjective

    base, _ = _base_and_head(teacher)
    teacher.train()
    teacher.requires_grad_(True)
    base.requires_grad_(False)
    if teacher.get_input_embeddings().weight.requires_grad:  # (tied decoder = the frozen input embeddings)
        teacher.get_input_embeddings().weight.requires_grad_(False)
    tc = TrainConfig(**{**asdict(cfg.train), "max_steps": steps, "save_every": 0, "resume": False})
    Trainer(MLMObjective(teacher), train_ds, collate, out, tc, eval_data=eval_ds).run()
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.save_pretrained(str(out), safe_serialization=True)
    return teacher


def _load_student(student: str, tokenizer, overrides: dict, init: str = "default"):
    """A zoo shape or model folder (as pretraining loads them), or any config: a ``config.json`` file or a folder
    holding only one -> a random-init masked LM of that config with the data's vocabulary."""
    from qingbert.pretraining.mlm import load_mlm

    p = Path(student)
    config_file = p if p.is_file() and p.suffix == ".json" else p / "config.json"
    has_weights = p.is_dir() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin")))
    if config_file.is_file() and not has_weights:
        from transformers import AutoConfig, AutoModelForMaskedLM

        try:
            config = AutoConfig.from_pretrained(str(config_file))
        except (OSError, ValueError) as e:
            raise QingbertError(f"{config_file}: not a transformers config ({str(e).splitlines()[0][:200]})") from None
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        for k, v in overrides.items():
            setattr(config, k, v)
        return AutoModelForMaskedLM.from_config(config), {"init": f"random (config {config_file})"}
    return load_mlm(student, tokenizer, overrides, init=init)


def _once(out: Path, cfg: DistillConfig, run) -> dict:
    """Run a stage unless its folder already holds a complete one (then say so and return its manifest)."""
    m = read_manifest(out)
    if m and m.get("format") == FORMAT and m.get("complete") and not cfg.train.resume:
        print(f"{m.get('stage', 'stage')} already done: {out} (delete it to redo)", flush=True)
        return m
    return run()


def distill_general(teacher: str | list, student: str, data: str | Path, out: str | Path,
                    config: DistillConfig | dict | None = None) -> dict:
    """One general-distillation stage: ``teacher`` (folder / hub id / zoo name with weights, or a list)
    -> ``student`` (zoo shape, folder, or built from teacher layers with ``init_from_teacher_layers``)
    on a prepared WWM folder.  Returns the stage manifest."""
    from qingbert.pretraining.mlm import WWMCollator
    from qingbert.pretraining.mlm import load_mlm, tokenizer_info
    from qingbert.pretraining.pretrain import open_data, train_and_save

    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    out = Path(out)
    t0 = time.time()
    train_ds, eval_ds, tokenizer, data_manifest = open_data(data)
    seed_everything(cfg.train.seed)
    collate = WWMCollator(tokenizer_info(tokenizer), cfg.masking, seed=cfg.train.seed)
    names = teacher if isinstance(teacher, (list, tuple)) else [teacher]
    teachers, head_info = [], []
    for name in names:
        net, info = load_mlm(str(name), tokenizer, weights=True)
        acc = _teacher_accuracy(net, eval_ds, collate)
        info["masked_accuracy_before"] = acc
        if acc is not None and acc < 0.01 and not info.get("head_initialised"):
            print(f"qingbert: warning: teacher {name} fills only {100 * acc:.2f} % of held-out masks correctly; "
                  "is its MLM head trained?", flush=True)
        if info.get("head_initialised") and not cfg.hidden_only and cfg.kd_weight:
            if not cfg.fit_teacher_head:
                why = f"{len(info.get('missing_head_keys', []))} head tensors are missing from its checkpoint"
                raise QingbertError(f"teacher {name} has an untrained MLM head ({why}); its soft targets are noise",
                                    hint="train the head alone first with --fit-teacher-head STEPS, or distil "
                                         "hidden states only with --hidden-only")
            net = _fit_teacher_head(net, train_ds, eval_ds, collate, out / "teacher-head", cfg, cfg.fit_teacher_head)
            info["fitted_head_steps"] = cfg.fit_teacher_head
            info["masked_accuracy_after_fit"] = _teacher_accuracy(net, eval_ds, collate)
        teachers.append(net)
        head_info.append(info)
    if cfg.init_from_teacher_layers:
        layers = [int(x) for x in cfg.init_from_teacher_layers]
        seed_everything(cfg.train.seed)
        net = init_from_teacher_layers(teachers[0], layers, **cfg.overrides)
        s_init = {"init": f"teacher layers {layers} of {names[0]}"}
    else:
        net, s_init = _load_student(str(student), tokenizer, cfg.overrides, init=cfg.init)
    t_shape, s_shape = Shape.of(teachers[0]), Shape.of(net)
    matches = resolve_matches("hidden-uniform" if cfg.matches is None else cfg.matches, t_shape, s_shape)
    objective = GeneralDistillObjective(teachers, net, cfg, matches=matches)
    trainer = Trainer(objective, train_ds, collate, out, cfg.train, eval_data=eval_ds)
    before, after, _, final = train_and_save(trainer, tokenizer, out, cfg.train.resume)
    if trainer.acc.is_main_process:
        proj = trainer.unwrapped_objective().projections
        if len(proj) and any(sum(p.numel() for p in q.parameters()) for q in proj):
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in proj.state_dict().items()},
                      str(out / "projections.safetensors"))
        manifest = {
            "format": FORMAT, "stage": "general-distill", "complete": True,
            "teacher": [str(x) for x in names], "teacher_info": head_info, "student": str(student),
            "student_init": s_init, "teacher_shape": asdict(t_shape), "student_shape": asdict(s_shape),
            "parameters": {"teacher": sum(p.numel() for p in teachers[0].parameters()),
                           "student": sum(p.numel() for p in final.parameters())},
            "matches": matches, "config": _config_record(cfg),
            "data": {"path": str(Path(data).resolve()), "sources": data_manifest.get("sources"),
                     "train_sequences": len(train_ds)},
            "steps": trainer.state["step"], "tokens_seen": trainer.state["tokens_seen"],
            "processes": trainer.world, "eval_before": before,
            "eval_after": {k: v for k, v in (after or {}).items() if k != "split"} or None,
            "teacher_backend": trainer.unwrapped_objective().teacher_backend_used,
            "teacher_backend_check": trainer.unwrapped_objective().teacher_backend_check or None,
            "elapsed_s": round(time.time() - t0, 2),
        }
        write_manifest(out, manifest)
    trainer.acc.wait_for_everyone()
    return read_manifest(out) or {}


def _config_record(cfg: DistillConfig) -> dict:
    d = asdict(cfg)
    return json.loads(json.dumps(d, default=str))


def distill(teacher: str | list, student: str, data: str | Path, out: str | Path, *,
            assistant: str | None = None, config: DistillConfig | dict | None = None,
            assistant_config: DistillConfig | dict | None = None) -> dict:
    """General distillation in one call: teacher -> student, or teacher -> assistant -> student.

    The assistant (e.g. ``rbt6``) has the teacher's width and is initialised from teacher layers
    (``init_from_teacher_layers``, default evenly spread: 12 -> 6 gives 0,2,4,7,9,11); a finished stage
    (a complete manifest in its folder) is not redone.  Returns ``{"stages": [manifests], "out"}``."""
    from qingbert.models import zoo

    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    out = Path(out)
    stages = []
    current = teacher
    if assistant:
        if isinstance(assistant_config, DistillConfig):
            a_cfg = copy.deepcopy(assistant_config)
        elif assistant_config:
            a_cfg = DistillConfig.from_dict(assistant_config)
        else:  # the student's recipe, less the student's shape overrides
            a_cfg = copy.deepcopy(cfg)
            a_cfg.overrides = {}
        a_out = out / "assistant"

        def run_assistant():
            if not a_cfg.init_from_teacher_layers:
                spec = zoo.get_spec(assistant) if not Path(str(assistant)).exists() else None
                t_cfg = _peek_config(teacher[0] if isinstance(teacher, list) else teacher)
                if spec is not None and t_cfg is not None:
                    depth = int(a_cfg.overrides.get("num_hidden_layers", spec.layers))
                    width = int(a_cfg.overrides.get("hidden_size", spec.hidden))
                    if depth > t_cfg["layers"]:
                        raise QingbertError(f"assistant {assistant} has {depth} layers, the teacher "
                                            f"{t_cfg['layers']}: an assistant cannot be deeper than its teacher")
                    if width == t_cfg["width"]:
                        a_cfg.init_from_teacher_layers = default_layers(t_cfg["layers"], depth)
            return distill_general(teacher, assistant, data, a_out, a_cfg)

        stages.append(_once(a_out, a_cfg, run_assistant))
        current = str(a_out)
    s_out = out / "student"
    stages.append(_once(s_out, cfg, lambda: distill_general(current, student, data, s_out, cfg)))
    return {"stages": stages, "out": str(out), "student": str(s_out)}


def _peek_config(model: str) -> dict | None:
    """Depth and width of a local model folder (None for hub ids: known only once loaded)."""
    p = Path(str(model)) / "config.json"
    if not p.exists():
        return None
    c = json.loads(p.read_text())
    return {"layers": c.get("num_hidden_layers") or c.get("n_layer"), "width": c.get("hidden_size") or c.get("d_model")}


# ---------------------------------------------------------------------------
# task-stage distillation


class TaskDistiller:
    """Plugs task-stage distillation into :func:`qingbert.finetune.finetune` (the same stage, another objective)."""

    def __init__(self, teachers: list[str], cfg: DistillConfig):
        self.names = [str(t) for t in teachers]
        self.cfg = cfg
        self.matches: list[dict] = []

    def wrap_collator(self, collate):
        return IndexCollator(collate)

    def objective(self, head, student, tokenizer, task_type: str):
        from qingbert.tasks.finetune import FORMAT as FT_FORMAT
        from qingbert.models.loading import transformers_class
        from qingbert.models.loading import load_tokenizer

        teachers = []
        for name in self.names:
            m = read_manifest(name)
            if m is None or m.get("format") != FT_FORMAT:
                raise QingbertError(f"teacher {name}: not a fine-tuned folder (no qingbert fine-tuning manifest)",
                                    hint="fine-tune it first with `qingbert finetune --model M --task T --out DIR`")
            if m["task_type"] != task_type:
                raise QingbertError(f"teacher {name} was fine-tuned for a {m['task_type']} task, this is {task_type}")
            if head.labels and list(m["labels"]) != list(head.labels):
                raise QingbertError(f"teacher {name} has labels {m['labels'][:8]}, the task {head.labels[:8]}")
            if load_tokenizer(name).get_vocab() != tokenizer.get_vocab():
                raise QingbertError(f"teacher {name} and the student have different vocabularies: distillation "
                                    "feeds both the same token ids", hint="use a student built on the teacher's vocab")
            teachers.append(transformers_class(head.auto_class).from_pretrained(name))
        matches = resolve_matches("none" if self.cfg.matches is None else self.cfg.matches,
                                  Shape.of(teachers[0]), Shape.of(student))
        self.matches = matches
        return TaskDistillObjective(teachers, student, head, self.cfg, matches)

    def record(self) -> dict:
        return {"teachers": self.names, "matches": self.matches, "config": _config_record(self.cfg)}


def distill_task(teacher: str | list, student: str, task, out: str | Path, data_dir: str | None = None, *,
                 config: DistillConfig | dict | None = None, finetune_config: dict | None = None) -> dict:
    """Task-stage distillation: fine-tuned ``teacher`` folder(s) -> ``student`` on ``task``; the result is a
    fine-tuned folder (``qingbert predict`` works on it).  Returns :func:`qingbert.finetune.finetune`'s result."""
    from qingbert.tasks.finetune import finetune

    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    teachers = teacher if isinstance(teacher, (list, tuple)) else [teacher]
    ft = dict(finetune_config or {})
    ft.setdefault("train", asdict(cfg.train))
    return finetune(student, task, out, data_dir, config=ft, distill=TaskDistiller(teachers, cfg))


__all__ = ["DistillConfig", "GeneralDistillObjective", "TaskDistillObjective", "init_from_teacher_layers",
           "default_layers", "resolve_matches", "preset_matches", "distill", "distill_general", "distill_task",
           "PRESETS"]
