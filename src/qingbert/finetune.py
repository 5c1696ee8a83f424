"""``finetune`` and ``predict``: a pretrained encoder + a task head, trained in the one loop of :mod:`qingbert.train`.

Four task types (:mod:`qingbert.tasks`), each a small *head* here that says how
to encode examples, which ``AutoModelFor*`` class to use, which objective the
loop trains, and how to turn model outputs back into predictions and official
scores:

* ``classification`` / ``pair``: ``AutoModelForSequenceClassification``, accuracy (+ macro-F1);
* ``ner``: character-level BIO, ``AutoModelForTokenClassification``, entity micro-F1 (:mod:`qingbert.ner`);
* ``mrc``: SQuAD-style spans with doc stride, ``AutoModelForQuestionAnswering``, CMRC EM/F1 (:mod:`qingbert.mrc`).

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
import torch

from qingbert.errors import QingbertError
from qingbert.manifest import FINETUNED_FORMAT, atomic_write_text, read_manifest, write_manifest
from qingbert.training.batching import PadCollator, Rows, model_inputs, run_model
from qingbert.training.loop import Trainer, TrainConfig, fill_config, seed_everything

FORMAT = FINETUNED_FORMAT


@dataclass
class FinetuneConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=3.0, save_every=0))
    max_len: int = 128  # tokens per sequence (MRC: per window)
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


class ClassificationObjective(torch.nn.Module):
    """Cross-entropy on a sequence-classification head; ``forward(batch) -> (loss, metrics)``."""

    name = "classification"
    accuracy_name = "accuracy"

    def __init__(self, model):
        super().__init__()
        self.model = model

    def _run(self, batch):
        out = self.model(**model_inputs(batch), labels=batch["labels"])
        correct = (out.logits.argmax(-1) == batch["labels"]).sum()
        return out, correct

    def forward(self, batch):
        out, correct = self._run(batch)
        return out.loss, {"correct": correct, "count": batch["labels"].numel()}

    def evaluate_batch(self, batch) -> dict:
        out, correct = self._run(batch)
        n = batch["labels"].numel()
        return {"loss_sum": float(out.loss) * n, "count": n, "correct": int(correct)}

    @staticmethod
    def summarize(totals: dict) -> dict:
        n = max(1, totals.get("count", 0))
        return {"accuracy": totals.get("correct", 0) / n, "loss": totals.get("loss_sum", 0.0) / n,
                "examples": int(totals.get("count", 0))}

    def trained_model(self):
        return self.model


def encode_examples(examples, tokenizer, label2id: dict, max_len: int, in_memory: bool = False):
    """Tokenize text (and text_b) examples into a ``datasets.Dataset`` (or, with ``in_memory``, :class:`Rows`);
    unlabelled rows get label -100."""
    from datasets import Dataset

    from qingbert.data.text import clean_text

    a = [clean_text(e.text) for e in examples]
    b = [clean_text(e.text_b) for e in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_len)
    types = enc["token_type_ids"] if "token_type_ids" in enc else [[0] * len(x) for x in enc["input_ids"]]
    truncated = sum(len(x) >= max_len for x in enc["input_ids"])
    columns = {"input_ids": enc["input_ids"], "token_type_ids": types,
               "label": [label2id[e.label] if e.label is not None else -100 for e in examples]}
    ds = Rows(columns) if in_memory else Dataset.from_dict(columns)
    return ds, {"examples": len(examples), "truncated_to_max_len": int(truncated)}


class ClassificationHead:
    auto_class = "AutoModelForSequenceClassification"
    outputs = ("logits",)
    token_level = False

    def __init__(self, task):
        self.labels = list(task.labels)

    def encode(self, examples, tokenizer, cfg: FinetuneConfig, train: bool):
        return encode_examples(examples, tokenizer, {lab: i for i, lab in enumerate(self.labels)}, cfg.max_len)

    def collator(self, tokenizer):
        return PadCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))

    def objective(self, model):
        return ClassificationObjective(model)

    def decode(self, out: dict, ds, examples, cfg: FinetuneConfig) -> list:
        return [self.labels[int(np.argmax(x))] for x in out["logits"]]

    def score(self, examples, preds) -> dict:
        from qingbert.metrics import accuracy, macro_f1

        golds = [e.label for e in examples]
        acc = 100 * accuracy(preds, golds)
        return {"accuracy": acc, "macro_f1": 100 * macro_f1(preds, golds, self.labels), "examples": len(golds),
                "metric": "accuracy", "score": acc}

    @staticmethod
    def record(example, pred) -> dict:
        return {"id": example.id, "label": pred}

    @staticmethod
    def gold(example):
        return example.label

    def write_submission(self, path: Path, examples, preds) -> None:
        """CLUE submission: one ``{"id", "label"}`` JSON object per line."""
        atomic_write_text(path, "".join(json.dumps(self.record(e, p), ensure_ascii=False) + "\n"
                                        for e, p in zip(examples, preds)))


# ---------------------------------------------------------------------------
# NER head (character BIO, :mod:`qingbert.ner`)


class NERHead:
    auto_class = "AutoModelForTokenClassification"
    outputs = ("logits",)
    token_level = True

    def __init__(self, task):
        from qingbert.ner import bio_labels

        self.types = list(task.labels)
        self.labels = bio_labels(self.types)

    def encode(self, examples, tokenizer, cfg: FinetuneConfig, train: bool):
        from qingbert.ner import encode_ner

        return encode_ner(examples, tokenizer, self.labels, cfg.max_len)

    def collator(self, tokenizer):
        from qingbert.ner import NERCollator

        return NERCollator(tokenizer.pad_token_id)

    def objective(self, model):
        from qingbert.ner import NERObjective

        return NERObjective(model, self.labels)

    def decode(self, out: dict, ds, examples, cfg: FinetuneConfig) -> list:
        from qingbert.ner import decode_ner

        return decode_ner(out["logits"], ds, examples, self.labels)

    def score(self, examples, preds) -> dict:
        from qingbert.ner import score_ner

        return score_ner(examples, preds)

    @staticmethod
    def record(example, pred) -> dict:
        """CLUENER submission: ``{"id", "label": {type: {entity text: [[start, end_inclusive]]}}}``."""
        label: dict = {}
        for s, e, t in sorted(pred):
            label.setdefault(t, {}).setdefault(example.text[s:e], []).append([s, e - 1])
        return {"id": example.id, "label": label}

    @staticmethod
    def gold(example):
        return [list(x) for x in example.entities]

    write_submission = ClassificationHead.write_submission


# ---------------------------------------------------------------------------
# MRC head (SQuAD-style spans, :mod:`qingbert.mrc`)


class MRCHead:
    auto_class = "AutoModelForQuestionAnswering"
    outputs = ("start_logits", "end_logits")
    token_level = True
    labels: list = []

    def __init__(self, task):
        pass

    def encode(self, examples, tokenizer, cfg: FinetuneConfig, train: bool):
        from qingbert.mrc import encode_qa

        return encode_qa(examples, tokenizer, max_len=cfg.max_len, doc_stride=cfg.doc_stride or cfg.max_len // 4,
                         max_query_len=cfg.max_query_len, train=train)

    def collator(self, tokenizer):
        from qingbert.mrc import QACollator

        return QACollator(tokenizer.pad_token_id)

    def objective(self, model):
        from qingbert.mrc import QAObjective

        return QAObjective(model)

    def decode(self, out: dict, ds, examples, cfg: FinetuneConfig) -> list:
        from qingbert.mrc import decode_qa

        answers, _ = decode_qa(out["start_logits"], out["end_logits"], ds, examples, n_best=cfg.n_best,
                               max_answer_len=cfg.max_answer_len)
        return [answers.get(e.id, "") for e in examples]

    def score(self, examples, preds) -> dict:
        from qingbert.mrc import score_qa

        return score_qa(examples, {e.id: p for e, p in zip(examples, preds)})

    @staticmethod
    def record(example, pred) -> dict:
        return {"id": example.id, "answer": pred}

    @staticmethod
    def gold(example):
        return [t for t, _ in example.answers]

    def write_submission(self, path: Path, examples, preds) -> None:
        """CMRC 2018 / DRCD submission: one JSON object ``{question id: answer text}``."""
        atomic_write_text(path, json.dumps({str(e.id): p for e, p in zip(examples, preds)}, ensure_ascii=False,
                                           indent=1) + "\n")


HEADS = {"classification": ClassificationHead, "pair": ClassificationHead, "ner": NERHead, "mrc": MRCHead}


# ---------------------------------------------------------------------------
# models


def _auto(name: str):
    import transformers

    return getattr(transformers, name)


def load_for_task(model: str, head, cfg: FinetuneConfig):
    """``(model with the task head, tokenizer, how it was initialised)`` for a folder / hub id / zoo name /
    ``random:<folder or zoo name>``."""
    from qingbert.models import loading, zoo
    from qingbert.models.loading import load_tokenizer

    auto = _auto(head.auto_class)
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

    net = loading.from_source(src, load)  # local folder, or hub id (a zoo name resolves to its hub id) with offline errors
    if getattr(net.config, "model_type", "") == "xlnet":
        tokenizer.padding_side = "left"  # XLNet summarises the last token
    return net, tokenizer, f"weights from {src}"


# ---------------------------------------------------------------------------
# the stage


def _subset(examples: list, n: int) -> list:
    if not n or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(0).choice(len(examples), size=n, replace=False))
    return [examples[i] for i in keep]


def _predict_split(net, head, tokenizer, examples, cfg: FinetuneConfig):
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

    ``distill`` (a :class:`qingbert.distill.TaskDistiller`) swaps the objective for task-stage distillation
    from fine-tuned teachers; everything else (data, loop, outputs) is the same.

    Returns ``{"dev": metrics (percent, with "metric" and "score"), "steps", "labels", "out", "elapsed_s"}``.
    """
    from qingbert.tasks import Task, load_task
    from qingbert.models.tokenizer import save_tokenizer

    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    if max_len:
        cfg.max_len = max_len
    t0 = time.time()
    out = Path(out)
    t = task if isinstance(task, Task) else load_task(task, data_dir)
    if t.type not in HEADS:
        raise QingbertError(f"task '{t.name}' has unknown type '{t.type}'")
    if "train" not in t.splits or "dev" not in t.splits:
        raise QingbertError(f"task '{t.name}' needs train and dev splits (found: {', '.join(t.splits) or 'none'})")
    train_examples = _subset(t.splits["train"], cfg.max_train_examples)
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
    trainer = Trainer(objective, train, collate, out, cfg.train, eval_data=dev_feats)
    trainer.run()
    result = {"steps": trainer.state["step"], "labels": head.labels, "out": str(out), "skipped": dict(t.skipped),
              "skip_examples": t.skip_examples[:5], "fixed": dict(t.fixed)}
    if trainer.acc.is_main_process:
        final = trainer.unwrapped_objective().trained_model()
        preds, dev_report = _predict_split(final, head, tokenizer, dev_examples, cfg)
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


def predict(model: str | Path, task: str, out_file: str | Path | None = None, data_dir: str | None = None,
            split: str = "test", batch_size: int = 64, backend: str | None = None) -> dict:
    """Predict ``split`` of ``task`` with a fine-tuned (or exported) folder; write the CLUE / CMRC submission file.

    ``backend`` (torch, onnx, onnx-int8) defaults to the fastest in the folder (:mod:`qingbert.inference`).
    Returns ``{"file", "examples", "scores", "backend"}`` (scores only where the split is labelled).
    """
    from qingbert.tasks import load_task
    from qingbert.models.loading import load_tokenizer

    model = Path(model)
    m = read_manifest(model)
    from qingbert import prompt

    if m is not None and m.get("format") == prompt.FORMAT:  # PET folder: its template and verbaliser label it
        return prompt.predict_task(model, task, out_file, data_dir, split, batch_size)
    if m is None or m.get("format") != FORMAT:
        raise QingbertError(f"{model}: not a fine-tuned folder (no qingbert fine-tuning manifest)",
                            hint="make one with `qingbert finetune --model M --task T --out DIR`")
    t = load_task(task, data_dir)
    if t.type != m["task_type"]:
        raise QingbertError(f"{model} was fine-tuned for a {m['task_type']} task ({m['task']}); "
                            f"'{t.name}' is {t.type}")
    if split not in t.splits:
        raise QingbertError(f"task '{t.name}' has no {split} split (found: {', '.join(t.splits)})")
    cfg = FinetuneConfig.from_dict({k: v for k, v in m["config"].items() if k != "train"})
    cfg.train.batch_size = batch_size
    head = HEADS[t.type](t)
    if head.labels and head.labels != m["labels"]:
        if set(head.labels) - set(m["labels"]):
            raise QingbertError(f"task '{t.name}' has labels the model was not trained on: "
                                f"{', '.join(sorted(set(head.labels) - set(m['labels'])))[:200]}")
        head.labels = list(m["labels"])
    if hasattr(head, "types"):
        head.types = [lab[2:] for lab in m["labels"] if lab.startswith("B-")]
    from qingbert.models.backends import open_backend

    runner = open_backend(model, backend)
    tokenizer = load_tokenizer(str(model))
    if m.get("model_type") == "xlnet":
        tokenizer.padding_side = "left"
    examples = t.splits[split]
    preds, _ = _predict_split(runner, head, tokenizer, examples, cfg)
    suffix = ".json" if t.type == "mrc" else ".jsonl"
    out_file = Path(out_file) if out_file else model / f"{t.name}_predict{suffix}"
    head.write_submission(out_file, examples, preds)
    res = {"file": str(out_file), "examples": len(examples), "task": t.name, "split": split, "backend": runner.name}
    labelled = all(head.gold(e) not in (None, []) for e in examples) if t.type != "ner" else split != "test"
    if labelled:
        res["scores"] = head.score(examples, preds)
    return res


def format_scores(m: dict) -> str:
    """One line of dev/test scores for the console."""
    if "em" in m:
        return f"EM {m['em']:.2f}  F1 {m['f1']:.2f}  ({m.get('total', 0):,} questions)"
    if "per_type" in m:
        types = ", ".join(f"{t} {v['f1']:.1f}" for t, v in m["per_type"].items())
        return (f"entity F1 {m['f1']:.2f} (P {m['precision']:.2f}, R {m['recall']:.2f}; macro {m['macro_f1']:.2f}; "
                f"{types})")
    return f"accuracy {m['accuracy']:.2f}  (macro-F1 {m['macro_f1']:.2f}, {m.get('examples', 0):,} examples)"
