"""``finetune``: a pretrained encoder + a task head, trained in the one loop of :mod:`qingbert.train`.

This first part covers single-sentence and sentence-pair classification
(:mod:`qingbert.tasks` types ``classification`` and ``pair``) with any HF
encoder through ``AutoModelForSequenceClassification``.  NER and MRC objectives
plug into the same loop the same way.  Texts get the same clean-up as the
pretraining text (full-width -> half-width, ...) before tokenization.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .errors import QingbertError
from .manifest import write_manifest
from .train import Trainer, TrainConfig, seed_everything

FORMAT = "qingbert.finetuned/1"


class ClassificationObjective(torch.nn.Module):
    """Cross-entropy on a sequence-classification head; ``forward(batch) -> (loss, metrics)``."""

    name = "classification"
    accuracy_name = "accuracy"

    def __init__(self, model):
        super().__init__()
        self.model = model

    def _run(self, batch):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch.get("token_type_ids"), labels=batch["labels"])
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


class PadCollator:
    """Pads tokenized examples to the longest in the batch."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict:
        n, length = len(examples), max(len(e["input_ids"]) for e in examples)
        ids = np.full((n, length), self.pad_id, dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = e["input_ids"]
            types[i, :k] = e["token_type_ids"]
            mask[i, :k] = 1
        return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(types),
                "attention_mask": torch.from_numpy(mask),
                "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long)}


def encode_examples(examples, tokenizer, label2id: dict, max_len: int):
    """Tokenize text (and text_b) examples into a ``datasets.Dataset`` with integer labels."""
    from datasets import Dataset

    from .corpus import clean_text

    rows = [e for e in examples if e.label is not None]
    a = [clean_text(e.text) for e in rows]
    b = [clean_text(e.text_b) for e in rows] if rows and rows[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_len)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"],
                              "label": [label2id[e.label] for e in rows]})


def finetune(model: str, task: str, out: str | Path, data_dir: str | None = None, *, max_len: int = 128,
             config: TrainConfig | dict | None = None) -> dict:
    """Fine-tune ``model`` (zoo name = random init, folder or hub id) on a classification or pair task."""
    from transformers import AutoModelForSequenceClassification

    from . import zoo
    from .tasks import load_task
    from .vocab import load_tokenizer

    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**(config or {}))
    t0 = time.time()
    out = Path(out)
    t = load_task(task, data_dir)
    if t.type not in ("classification", "pair"):
        raise QingbertError(f"task '{task}' is {t.type}; fine-tuning it is not implemented yet",
                            hint="classification and pair tasks are supported")
    if "train" not in t.splits or "dev" not in t.splits:
        raise QingbertError(f"task '{task}' needs train and dev splits (found: {', '.join(t.splits)})")
    tokenizer = load_tokenizer(model)
    label2id = {lab: i for i, lab in enumerate(t.labels)}
    id2label = {i: lab for lab, i in label2id.items()}
    seed_everything(cfg.seed)
    if Path(model).is_dir() or "/" in model:
        if Path(model).is_dir() and not (Path(model) / "config.json").exists():
            raise QingbertError(f"{model}: not a model folder (no config.json)")
        try:
            net = AutoModelForSequenceClassification.from_pretrained(
                model, num_labels=len(t.labels), id2label=id2label, label2id=label2id)
        except OSError as e:
            raise QingbertError(f"cannot load model '{model}': {str(e).splitlines()[0]}") from None
        init = f"weights from {model}"
    else:
        spec = zoo.get_spec(model)
        config_ = zoo.build_config(spec, vocab_size=len(tokenizer), num_labels=len(t.labels),
                                   id2label=id2label, label2id=label2id)
        net = AutoModelForSequenceClassification.from_config(config_)
        init = f"random ({spec.name} shape)"
    train = encode_examples(t.splits["train"], tokenizer, label2id, max_len)
    dev = encode_examples(t.splits["dev"], tokenizer, label2id, max_len)
    objective = ClassificationObjective(net)
    trainer = Trainer(objective, train, PadCollator(tokenizer.pad_token_id), out, cfg, eval_data=dev)
    history = trainer.run()
    dev_metrics = next((h for h in reversed(history) if h.get("split") == "eval"), {})
    dev_metrics = {k: v for k, v in dev_metrics.items() if k not in ("split", "step")}
    dev_metrics.update(metric="accuracy", score=100 * dev_metrics.get("accuracy", 0.0))
    if trainer.acc.is_main_process:
        from .vocab import save_tokenizer

        final = trainer.unwrapped_objective().trained_model()
        final.save_pretrained(str(out), safe_serialization=True)
        save_tokenizer(tokenizer, out)
        manifest = {"format": FORMAT, "stage": "finetune", "model": model, "init": init, "task": t.name,
                    "task_type": t.type, "labels": t.labels, "max_len": max_len,
                    "examples": {s: len(v) for s, v in t.splits.items()}, "skipped": dict(t.skipped),
                    "recipe": asdict(cfg), "steps": trainer.state["step"],
                    "dev": {k: v for k, v in dev_metrics.items() if k != "split"},
                    "elapsed_s": round(time.time() - t0, 2)}
        write_manifest(out, manifest)
        (out / "dev_metrics.json").write_text(json.dumps(manifest["dev"], indent=2))
    trainer.acc.wait_for_everyone()
    return {"dev": dev_metrics, "steps": trainer.state["step"], "labels": t.labels, "out": str(out),
            "elapsed_s": round(time.time() - t0, 2)}
