"""The distillation objectives the one loop trains: general (masked-LM KD at masked positions, optional hard MLM
loss and matches) and task (logits KD + hard labels + matches, teacher logits cached by example index), both
``forward(batch) -> (loss, metrics)``; frozen teachers may run as ONNX Runtime graphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qingbert.distillation.config import DistillConfig
from qingbert.distillation.losses import Schedule, get_loss, make_projection
from qingbert.distillation.matches import Shape, resolve_matches
from qingbert.errors import QingbertError
from qingbert.models.onnx import OnnxEncoder
from qingbert.pretraining.mlm import IGNORE, attention_of, mlm_head
from qingbert.training.batching import model_inputs

INT8_TEACHER_MAX_RELATIVE_ERROR = 0.05  # onnx-int8 teacher: |h_int8 - h| / |h| on the first batch


def base_and_head(model):
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
            if base_and_head(m)[1] is None or base_and_head(m)[0] is None:
                raise QingbertError(f"{type(m).__name__} is not a masked LM with a separate head")

    def _forward(self, batch):
        ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        att = attention_of(batch)  # (the document bias of packed texts where the collator made one)
        sel = labels != IGNORE
        s_base, s_head = base_and_head(self.student)
        kw = dict(output_hidden_states=self.need_hidden, output_attentions=self.need_attention)
        s_out = s_base(input_ids=ids, attention_mask=att, **kw)
        s_logits = s_head(s_out.last_hidden_state[sel])
        t_out, t_logits = None, []
        with torch.no_grad():
            for i, t in enumerate(self._teachers_on(ids.device)):
                t_base, t_head = base_and_head(t)
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
