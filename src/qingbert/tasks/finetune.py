"""``finetune``: a pretrained encoder + a task head, trained in the one loop of :mod:`qingbert.training.loop`.

Four task types (:mod:`qingbert.tasks`), each a small *head* here that says how
to encode examples, which ``AutoModelFor*`` class to use, which objective the
loop trains, and how to turn model outputs back into predictions and official
scores:

* ``classification`` / ``pair``: ``AutoModelForSequenceClassification``, accuracy (+ macro-F1);
* ``ner``: character-level BIO, ``AutoModelForTokenClassification``, entity micro-F1 (:mod:`qingbert.tasks.ner`);
* ``mrc``: SQuAD-style spans with doc stride, ``AutoModelForQuestionAnswering``, CMRC EM/F1
  (:mod:`qingbert.tasks.mrc`).

The model is a local folder, a hub id, a zoo name (its hub weights), or
``random:<folder or zoo name>`` for a randomly initialised model of that shape
(the baseline that shows what pretraining is worth).  Any HF encoder works
through the Auto classes (BERT, RoBERTa-wwm, ELECTRA, ALBERT, ERNIE, XLNet ...).

The output folder loads with plain transformers (label names in the config)
and holds ``manifest.json``, ``dev_metrics.json`` and ``predictions-dev.jsonl``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qingbert.errors import QingbertError
from qingbert.manifest import FINETUNED_FORMAT, atomic_write_text, write_manifest
from qingbert.models import loading, zoo
from qingbert.models.loading import load_tokenizer, transformers_class
from qingbert.models.tokenizer import save_tokenizer
from qingbert.tasks.heads import HEADS
from qingbert.tasks.readers import Task, load_task, missing_splits_error
from qingbert.training.batching import run_model
from qingbert.training.loop import TrainConfig, Trainer, fill_config, seed_everything

FORMAT = FINETUNED_FORMAT


MIN_LEN = 8  # tokens per sequence: fewer leaves [CLS] + [SEP] and next to no text


@dataclass
class FinetuneConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=3.0, save_every=0))
    max_len: int = 128  # tokens per sequence (MRC: per window); at least MIN_LEN
    doc_stride: int = 0  # MRC: tokens shared by consecutive windows of a long context; 0 = max_len // 4
    max_query_len: int = 64  # MRC: question tokens kept
    n_best: int = 20  # MRC: start/end candidates per window
    max_answer_len: int = 50  # MRC: longest answer in tokens
    max_train_examples: int = 0  # 0 = all; else a fixed random subset (the same for every seed)
    tokenizer: str | None = None  # for random:<zoo name> (a folder or hub id with the vocabulary)
    overrides: dict = field(default_factory=dict)  # config overrides for random:<zoo name> shapes

    @classmethod
    def from_dict(cls, d: dict | None) -> "FinetuneConfig":
        """Flat or nested (``train:``) dict -> config; unknown keys are an error."""
        return fill_config(cls(), d, "fine-tuning")


# ---------------------------------------------------------------------------
# classification / pair head


# ---------------------------------------------------------------------------
# NER head (character BIO, :mod:`qingbert.tasks.ner`)


# ---------------------------------------------------------------------------
# MRC head (SQuAD-style spans, :mod:`qingbert.tasks.mrc`)


# ---------------------------------------------------------------------------
# models


def load_for_task(model: str, head, cfg: FinetuneConfig):
    """``(model with the task head, tokenizer, how it was initialised)`` for a folder / hub id / zoo name /
    ``random:<folder or zoo name>``."""
    auto = transformers_class(head.auto_class)
    kw = {}
    if head.labels:
        kw = dict(num_labels=len(head.labels), id2label=dict(enumerate(head.labels)),
                  label2id={lab: i for i, lab in enumerate(head.labels)})
    random_init = model.startswith("random:")
    src = model[len("random:"):] if random_init else model
    local = Path(src).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise QingbertError(f"{src}: not a model folder (no config.json)")
    if random_init and not local.is_dir():
        spec = zoo.get_spec(src)
        if not cfg.tokenizer:
            raise QingbertError(f"'{model}' needs a vocabulary", hint="give `tokenizer` (--tokenizer FOLDER)")
        tokenizer = load_tokenizer(cfg.tokenizer)
        config = zoo.build_config(spec, vocab_size=len(tokenizer), **cfg.overrides, **kw)
        config.pad_token_id = tokenizer.pad_token_id
        return auto.from_config(config), tokenizer, f"random ({spec.name} shape)"
    tokenizer = load_tokenizer(cfg.tokenizer or src)
    if random_init:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(local), **kw)
        return auto.from_config(config), tokenizer, f"random ({src} shape)"

    def load(s, **more):
        return auto.from_pretrained(s, **kw, **more)

    # a local folder, or a hub id (a zoo name resolves to its hub id) with offline errors
    net = loading.from_source(src, load)
    if getattr(net.config, "model_type", "") == "xlnet":
        tokenizer.padding_side = "left"  # XLNet summarises the last token
    return net, tokenizer, f"weights from {src}"


# ---------------------------------------------------------------------------
# the stage


def subset(examples: list, n: int) -> list:
    if not n or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(0).choice(len(examples), size=n, replace=False))
    return [examples[i] for i in keep]


def predict_split(net, head, tokenizer, examples, cfg: FinetuneConfig):
    ds, report = head.encode(examples, tokenizer, cfg, train=False)
    out = run_model(net, ds, head.collator(tokenizer), head.outputs, batch_size=max(32, cfg.train.batch_size),
                    token_level=head.token_level)
    return head.decode(out, ds, examples, cfg), report


def _write_predictions(path: Path, head, examples, preds, with_gold: bool) -> None:
    lines = []
    for e, p in zip(examples, preds):
        rec = head.record(e, p)
        if with_gold:
            rec["gold"] = head.gold(e)
        lines.append(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(path, "".join(lines))


def finetune(model: str, task: str, out: str | Path, data_dir: str | None = None, *,
             config: FinetuneConfig | dict | None = None, max_len: int | None = None, distill=None) -> dict:
    """Fine-tune ``model`` on ``task`` (a name from :mod:`qingbert.tasks`, or a loaded Task); score on dev.

    ``distill`` (a :class:`qingbert.distillation.distill.TaskDistiller`) swaps the objective for task-stage distillation
    from fine-tuned teachers; everything else (data, loop, outputs) is the same.

    Returns ``{"dev": metrics (percent, with "metric" and "score"), "steps", "labels", "out", "elapsed_s"}``.
    """
    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    if max_len:
        cfg.max_len = max_len
    if cfg.max_len < MIN_LEN:
        raise QingbertError(f"max_len {cfg.max_len} is too small: [CLS] and [SEP] leave {cfg.max_len - 2} tokens of "
                            "text", hint=f"at least {MIN_LEN}; 128 (the default) suits most Chinese sentence tasks")
    t0 = time.time()
    out = Path(out)
    t = task if isinstance(task, Task) else load_task(task, data_dir)
    if t.type not in HEADS:
        raise QingbertError(f"task '{t.name}' has unknown type '{t.type}'")
    if "train" not in t.splits or "dev" not in t.splits:
        raise missing_splits_error(t, ("train", "dev"))
    train_examples = subset(t.splits["train"], cfg.max_train_examples)
    dev_examples = t.splits["dev"]
    if not train_examples or not dev_examples:
        raise QingbertError(f"task '{t.name}': empty train or dev split after reading",
                            hint=t.summary().replace("\n", "; "))
    head = HEADS[t.type](t)
    seed_everything(cfg.train.seed)
    net, tokenizer, init = load_for_task(model, head, cfg)
    train, train_report = head.encode(train_examples, tokenizer, cfg, train=True)
    collate = head.collator(tokenizer)
    objective = head.objective(net)
    if distill is not None:
        collate = distill.wrap_collator(collate)
        objective = distill.objective(head, net, tokenizer, t.type)
    dev_feats = None
    if cfg.train.eval_every:
        dev_feats, _ = head.encode(dev_examples, tokenizer, cfg, train=False)
    fingerprint = {"stage": "finetune" if distill is None else "distill-task", "model": str(model), "task": t.name,
                   "max_len": cfg.max_len, "max_train_examples": cfg.max_train_examples}
    trainer = Trainer(objective, train, collate, out, cfg.train, eval_data=dev_feats, fingerprint=fingerprint)
    trainer.run()
    result = {"steps": trainer.state["step"], "labels": head.labels, "out": str(out), "skipped": dict(t.skipped),
              "skip_examples": t.skip_examples[:5], "fixed": dict(t.fixed), "train_examples": len(train_examples),
              "truncated": int(train_report.get("truncated_to_max_len", 0)), "max_len": cfg.max_len}
    if trainer.acc.is_main_process:
        final = trainer.unwrapped_objective().trained_model()
        preds, dev_report = predict_split(final, head, tokenizer, dev_examples, cfg)
        dev = head.score(dev_examples, preds)
        final.save_pretrained(str(out), safe_serialization=True)
        save_tokenizer(tokenizer, out)
        _write_predictions(out / "predictions-dev.jsonl", head, dev_examples, preds, with_gold=True)
        manifest = {"format": FORMAT, "stage": "finetune", "model": model, "init": init, "task": t.name,
                    "task_type": t.type, "labels": head.labels, "label_names": t.label_names,
                    "model_type": net.config.model_type, "auto_class": head.auto_class,
                    "examples": {s: len(v) for s, v in t.splits.items()}, "train_examples": len(train_examples),
                    "skipped": dict(t.skipped), "skip_examples": t.skip_examples[:10], "fixed": dict(t.fixed),
                    "encode": {"train": train_report, "dev": dev_report},
                    "config": {**asdict(cfg), "train": asdict(cfg.train)}, "steps": trainer.state["step"],
                    "processes": trainer.world,
                    "dev": dev, "elapsed_s": round(time.time() - t0, 2)}
        if distill is not None:
            manifest.update(stage="task-distill", distill=distill.record())
        write_manifest(out, manifest)
        atomic_write_text(out / "dev_metrics.json", json.dumps(dev, indent=2, ensure_ascii=False) + "\n")
        result["dev"] = dev
    trainer.acc.wait_for_everyone()
    result["elapsed_s"] = round(time.time() - t0, 2)
    return result


def format_scores(m: dict) -> str:
    """One line of dev/test scores for the console."""
    if "em" in m:
        return f"EM {m['em']:.2f}  F1 {m['f1']:.2f}  ({m.get('total', 0):,} questions)"
    if "per_type" in m:
        types = ", ".join(f"{t} {v['f1']:.1f}" for t, v in m["per_type"].items())
        return (f"entity F1 {m['f1']:.2f} (P {m['precision']:.2f}, R {m['recall']:.2f}; macro {m['macro_f1']:.2f}; "
                f"{types})")
    return f"accuracy {m['accuracy']:.2f}  (macro-F1 {m['macro_f1']:.2f}, {m.get('examples', 0):,} examples)"
