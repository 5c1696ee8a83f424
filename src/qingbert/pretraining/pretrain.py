"""``qingbert pretrain``: whole-word-masking MLM pretraining on ``qingbert prepare`` shards.

The model is a zoo name (built from scratch with the data's vocabulary), a local
folder or a hub id (continued / domain pretraining; its vocabulary must be the
data's).  Training runs in the one loop of :mod:`qingbert.training.loop`; the output
folder is a plain ``transformers`` masked-LM folder (``model.safetensors``,
``config.json``, ``tokenizer.json`` and ``vocab.txt``) plus ``manifest.json``,
``metrics.jsonl``, TensorBoard logs and the last checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from qingbert.data.prepare import FORMAT as DATA_FORMAT
from qingbert.data.prepare import load_prepared
from qingbert.data.text import clean_text
from qingbert.errors import QingbertError
from qingbert.manifest import MODEL_FORMAT, read_manifest, write_manifest
from qingbert.models import loading
from qingbert.models.loading import load_tokenizer
from qingbert.models.tokenizer import save_tokenizer
from qingbert.pretraining import electra, macbert
from qingbert.pretraining.mlm import (
    EVAL_MLM_PROBABILITY,
    MaskingConfig,
    MLMObjective,
    WWMCollator,
    load_mlm,
    missing_mlm_head,
    set_dropout,
    tokenizer_info,
)
from qingbert.training.loop import TrainConfig, Trainer, seed_everything

FORMAT = MODEL_FORMAT
OWN = ("objective", "overrides", "init", "train_dropout", "macbert", "electra")


@dataclass
class PretrainConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: str = "wwm"
    overrides: dict = field(default_factory=dict)  # model config overrides for zoo shapes (e.g. num_hidden_layers)
    # models built from scratch: "local-attention" (qingbert.models.inits; escapes the MLM plateau much sooner) or
    # "default" (transformers' own random init)
    init: str = "local-attention"
    # dropout while pretraining (None: the model config's); the saved config keeps the model's own value
    train_dropout: float | None = None
    # options of the other objectives (qingbert.pretraining.macbert.MacBERTConfig,
    # qingbert.pretraining.electra.ElectraConfig)
    macbert: dict = field(default_factory=dict)
    electra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        """Flat or nested dict (a YAML recipe) -> config; unknown keys are an error."""
        cfg = cls()
        tf = {f.name for f in fields(TrainConfig)}
        mf = {f.name for f in fields(MaskingConfig)}
        for k, v in d.items():
            if k in ("train", "masking") and isinstance(v, dict):
                for kk, vv in v.items():
                    cls._set(getattr(cfg, k), kk, vv, tf if k == "train" else mf)
            elif k in tf:
                setattr(cfg.train, k, v)
            elif k in mf:
                setattr(cfg.masking, k, v)
            elif k in OWN:
                setattr(cfg, k, v)
            else:
                raise QingbertError(f"unknown pretraining option '{k}'",
                                    hint="known: " + ", ".join(sorted(tf | mf | set(OWN))))
        cfg.masking.__post_init__()
        return cfg

    @staticmethod
    def _set(obj, key, value, known):
        if key not in known:
            raise QingbertError(f"unknown pretraining option '{key}'", hint="known: " + ", ".join(sorted(known)))
        setattr(obj, key, value)


def open_data(data: str | Path):
    """The prepared folder's train/eval datasets and tokenizer, with a clear error if it is not one."""
    data = Path(data)
    m = read_manifest(data)
    if m is None or m.get("format") != DATA_FORMAT:
        raise QingbertError(f"{data}: not a prepared corpus (no qingbert manifest)",
                            hint="make one with `qingbert prepare SOURCE --out DIR`")
    train = load_prepared(data, "train")
    eval_ = load_prepared(data, "eval") if m["splits"].get("eval", {}).get("sequences") else None
    return train, eval_, load_tokenizer(str(data / "tokenizer")), m


def pretrain(model: str, data: str | Path, out: str | Path, config: PretrainConfig | dict | None = None,
             **train_overrides) -> dict:
    """Pretrain (or continue pretraining) ``model`` on a prepared folder; returns the manifest."""
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(config or {})
    for k, v in train_overrides.items():
        if not hasattr(cfg.train, k):
            raise TypeError(f"unknown training option {k!r}")
        setattr(cfg.train, k, v)
    if cfg.objective not in OBJECTIVES:
        raise QingbertError(f"unknown objective '{cfg.objective}'", hint="available: " + ", ".join(OBJECTIVES))
    out = Path(out)
    t0 = time.time()
    train_ds, eval_ds, tokenizer, data_manifest = open_data(data)
    seed_everything(cfg.train.seed)  # before the model is built: random init depends on it
    build = OBJECTIVES[cfg.objective]
    objective, collate, eval_collate, init = build(model, tokenizer, cfg, getattr(cfg, cfg.objective, None), data)
    saved_dropout = init.pop("config_updates", {})
    fingerprint = {"stage": "pretrain", "model": model, "data": str(Path(data).resolve()), "objective": cfg.objective,
                   "masking": asdict(cfg.masking), "overrides": cfg.overrides, "init": cfg.init}
    trainer = Trainer(objective, train_ds, collate, out, cfg.train, eval_data=eval_ds, eval_collate=eval_collate,
                      fingerprint=fingerprint)
    before, after, history, final = train_and_save(trainer, tokenizer, out, cfg.train.resume,
                                                   config_updates=saved_dropout)
    if trainer.acc.is_main_process:
        extra = getattr(trainer.unwrapped_objective(), "save_extra", None)
        if extra is not None:  # e.g. ELECTRA's generator, beside the discriminator
            extra(out)
        train_log = [h for h in history if h.get("split") == "train"]
        manifest = {
            "format": FORMAT,
            "stage": "pretrain",
            "objective": objective.name,
            "model": model,
            "init": init,
            "data": {"path": str(Path(data).resolve()), "sources": data_manifest.get("sources"),
                     "train_sequences": len(train_ds), "eval_sequences": len(eval_ds) if eval_ds else 0},
            "recipe": {"objective": cfg.objective, "train": asdict(cfg.train), "masking": asdict(cfg.masking),
                       "overrides": cfg.overrides, "init": cfg.init, "train_dropout": cfg.train_dropout,
                       **({cfg.objective: getattr(cfg, cfg.objective)} if cfg.objective != "wwm" else {})},
            "steps": trainer.state["step"],
            "tokens_seen": trainer.state["tokens_seen"],
            "processes": trainer.world,
            "parameters": sum(p.numel() for p in final.parameters()),
            "eval_masking": EVAL_MLM_PROBABILITY,
            "eval_before": before,
            "eval_after": {k: v for k, v in (after or {}).items() if k not in ("split",)} or None,
            "final_train_loss": train_log[-1]["loss"] if train_log else None,
            "elapsed_s": round(time.time() - t0, 2),
            "torch_threads": torch.get_num_threads(),
        }
        write_manifest(out, manifest)
        trainer.acc.wait_for_everyone()
        return manifest
    trainer.acc.wait_for_everyone()
    return read_manifest(out) or {}


def wwm_objective(model: str, tokenizer, cfg: PretrainConfig, options=None, data_dir=None):
    """Whole-word-masking MLM: ``(objective, collate, eval collate, init info)`` like the other objectives'
    (it has no options of its own and needs nothing from the data folder but its shards)."""
    net, init = load_mlm(model, tokenizer, cfg.overrides, init=cfg.init)
    init["config_updates"] = set_dropout(net, cfg.train_dropout)
    collate = WWMCollator(tokenizer_info(tokenizer), cfg.masking, seed=cfg.train.seed)
    return MLMObjective(net), collate, eval_collate(tokenizer, cfg), init


def eval_collate(tokenizer, cfg: PretrainConfig) -> WWMCollator:
    """Held-out masked accuracy is always measured with plain WWM at BERT's 15 %, so recipes with other rates and
    other objectives compare."""
    eval_masking = replace(cfg.masking, mlm_probability=EVAL_MLM_PROBABILITY)
    return WWMCollator(tokenizer_info(tokenizer), eval_masking, seed=cfg.train.seed)


def train_and_save(trainer, tokenizer, out: Path, resume: bool, config_updates: dict | None = None):
    """Evaluate (unless resuming), train, evaluate; the main process saves the trained model and tokenizer
    (with ``config_updates`` set on the saved config).

    Returns ``(eval before, eval after, history, trained model or None off the main process)``."""
    before = None if resume else trainer.evaluate()
    history = trainer.run()
    after = next((h for h in reversed(history) if h.get("split") == "eval"), None)
    final = None
    if trainer.acc.is_main_process:
        final = trainer.unwrapped_objective().trained_model()
        for k, v in (config_updates or {}).items():
            setattr(final.config, k, v)
        final.save_pretrained(str(out), safe_serialization=True)
        save_tokenizer(tokenizer, out)
    return before, after, history, final


#: objective name -> ``make_objective(model, tokenizer, cfg, options, data_dir)`` that builds it; each returns
#: ``(objective, collate, eval_collate, info)``.
OBJECTIVES = {"wwm": wwm_objective, "macbert": macbert.make_objective, "electra": electra.make_objective}


def fill_mask(model: str, text: str, top_k: int = 5) -> list:
    """Top-k fillers for each ``[MASK]`` in ``text``, via the transformers fill-mask pipeline."""
    from transformers import pipeline

    text = clean_text(text)  # the same clean-up as the training text (full-width -> half-width, ...)
    if "[MASK]" not in text:
        raise QingbertError("the text has no [MASK]", hint='e.g. "今天[MASK]气很好"')
    tok = load_tokenizer(model)
    m, info = loading.load_model(model, head="mlm", loading_info=True)
    missing = missing_mlm_head(info)
    if missing:
        raise QingbertError(f"{model} has no trained masked-LM head ({len(missing)} head tensors missing): its "
                            "fillers would be random",
                            hint="fill-mask needs a pretrained or distilled masked-LM folder (qingbert pretrain, "
                                 "distill), not a fine-tuned classifier or a bare encoder")
    m.eval()
    fill = pipeline("fill-mask", model=m, tokenizer=tok, top_k=top_k)
    res = fill(text)
    return [res] if text.count("[MASK]") == 1 else res


def format_fill(text: str, results: list) -> str:
    lines = [text]
    for i, cands in enumerate(results, 1):
        lines.append(f"  [MASK] #{i}: " + "  ".join(f"{c['token_str']} ({c['score']:.3f})" for c in cands))
    return "\n".join(lines)


__all__ = ["PretrainConfig", "pretrain", "fill_mask", "format_fill", "open_data", "load_mlm", "tokenizer_info"]
