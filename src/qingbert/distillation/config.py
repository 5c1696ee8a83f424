"""The options of both distillation stages (:class:`DistillConfig`), shared by the objectives and the stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from qingbert.distillation.losses import Schedule
from qingbert.errors import QingbertError
from qingbert.pretraining.mlm import MaskingConfig
from qingbert.training.loop import TrainConfig

KD_LOSSES = ("kd_ce", "kd_mse")


TEACHER_BACKENDS = ("torch", "onnx", "onnx-int8", "auto")


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
    init: str = "local-attention"  # a student built from scratch (zoo shape): qingbert.models.inits name (as pretrain)
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
