"""Sentence and sentence-pair classification: the head (encode, collate, objective, decode, score, submission)
and its loss, cross-entropy on ``AutoModelForSequenceClassification``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qingbert.data.text import clean_text
from qingbert.manifest import atomic_write_text
from qingbert.models.backends import AUTO_CLASS, TASK_OUTPUTS
from qingbert.tasks.metrics import accuracy, macro_f1
from qingbert.training.batching import PadCollator, Rows, model_inputs


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
    auto_class = AUTO_CLASS["classification"]
    outputs = TASK_OUTPUTS["classification"]
    token_level = False

    def __init__(self, task):
        self.labels = list(task.labels)

    def encode(self, examples, tokenizer, cfg, train: bool):
        return encode_examples(examples, tokenizer, {lab: i for i, lab in enumerate(self.labels)}, cfg.max_len)

    def collator(self, tokenizer):
        return PadCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))

    def objective(self, model):
        return ClassificationObjective(model)

    def decode(self, out: dict, ds, examples, cfg) -> list:
        return [self.labels[int(np.argmax(x))] for x in out["logits"]]

    def score(self, examples, preds) -> dict:
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
