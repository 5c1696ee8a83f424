"""Character-level BIO named-entity recognition (CLUENER2020, People's Daily) for the one training loop.

Each character of a text is one unit: the text (after the length-preserving
:func:`qingbert.corpus.normalize_chars`) goes to the tokenizer as a list of
characters, the first token of each character carries its BIO tag and every
other position is ignored (-100).  Characters that give no token (spaces) are
never predicted.  A text longer than a window is cut into consecutive windows
that partition it, preferably right after punctuation; a gold entity cut by a
window boundary cannot be predicted whole and counts as a miss (reported, never
dropped).

In-loop evaluation sums exact entity-level counts per window (true positives,
predicted, gold), so the running micro-F1 equals the example-level score.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import QingbertError

IGNORE = -100
CUT_AFTER = set("。！？；，、,;!?：:")


def bio_labels(entity_types: list[str]) -> list[str]:
    """``["O", "B-T1", "I-T1", "B-T2", ...]`` in the given type order."""
    return ["O"] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]


def _windows(text: str, size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` character windows of at most ``size`` that cover ``text``."""
    out, start = [], 0
    while len(text) - start > size:
        end = start + size
        cut = next((i + 1 for i in range(end - 1, start + size // 2, -1) if text[i] in CUT_AFTER), end)
        out.append((start, cut))
        start = cut
    out.append((start, len(text)))
    return out


def _tags_of(length: int, entities, report: dict) -> list[str]:
    tags = ["O"] * length
    for s, e, t in sorted(entities):
        if not (0 <= s < e <= length) or any(x != "O" for x in tags[s:e]):
            report["overlapping_or_invalid_entities"] = report.get("overlapping_or_invalid_entities", 0) + 1
            continue
        tags[s] = f"B-{t}"
        tags[s + 1:e] = [f"I-{t}"] * (e - s - 1)
    return tags


def encode_ner(examples, tokenizer, tags: list[str], max_len: int):
    """Examples -> one dataset row per window: input_ids, labels, example, char_index (-1 = no character).

    Also ``gold``: the window's gold entity count for the exact in-loop F1 (entities fully inside it, plus the
    entities cut by this window's end, which no prediction can match).  Returns ``(dataset, report)``.
    """
    from datasets import Dataset

    from .corpus import normalize_chars

    tag_id = {t: i for i, t in enumerate(tags)}
    known = {t[2:] for t in tags if t != "O"}
    report = {"examples": len(examples), "windows": 0, "long_examples_split": 0, "entities_cut_by_window": 0,
              "empty_examples": 0}
    cols: dict = {"input_ids": [], "token_type_ids": [], "labels": [], "example": [], "char_index": [],
                  "gold": [], "offset": []}
    size = max(1, max_len - 2)
    for ei, ex in enumerate(examples):
        for _, _, t in ex.entities:
            if t not in known:
                raise QingbertError(f"entity type '{t}' (example {ex.id}) is not one of the model's types",
                                    hint="types: " + ", ".join(sorted(known)))
        text = normalize_chars(ex.text)
        if not text:
            report["empty_examples"] += 1
            continue
        char_tags = _tags_of(len(text), ex.entities, report)
        windows = _windows(text, size)
        report["long_examples_split"] += len(windows) > 1
        for ws, we in windows:
            chars = list(text[ws:we])
            enc = tokenizer(chars, is_split_into_words=True, truncation=True, max_length=max_len)
            word_ids = enc.word_ids()
            labels, char_index, seen = [], [], set()
            for w in word_ids:
                if w is None or w in seen:
                    labels.append(IGNORE)
                    char_index.append(-1)
                else:
                    seen.add(w)
                    labels.append(tag_id[char_tags[ws + w]])
                    char_index.append(ws + w)
            inside = sum(1 for s, e, _ in ex.entities if ws <= s and e <= we)
            cut = sum(1 for s, e, _ in ex.entities if ws <= s < we < e)
            report["entities_cut_by_window"] += cut
            cols["input_ids"].append(enc["input_ids"])
            cols["token_type_ids"].append([0] * len(enc["input_ids"]))
            cols["labels"].append(labels)
            cols["example"].append(ei)
            cols["char_index"].append(char_index)
            cols["gold"].append(inside + cut)
            cols["offset"].append(ws)
            report["windows"] += 1
    return Dataset.from_dict(cols), report


class NERCollator:
    """Pads windows on the right; carries the labels and each window's gold entity count."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        from .finetune import pad_rows

        batch = pad_rows(rows, self.pad_id, token_labels="labels")
        batch["gold"] = torch.tensor([r.get("gold", 0) for r in rows], dtype=torch.long)
        return batch


def _spans(tag_ids, tags: list[str]) -> set[tuple]:
    from .metrics import bio_decode

    return bio_decode([tags[int(t)] for t in tag_ids])


class NERObjective(torch.nn.Module):
    """Token cross-entropy on a token-classification head; evaluation counts whole entities."""

    name = "ner"
    accuracy_name = "token_accuracy"

    def __init__(self, model, tags: list[str]):
        super().__init__()
        self.model = model
        self.tags = list(tags)

    def _run(self, batch):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch.get("token_type_ids"), labels=batch["labels"])
        sel = batch["labels"] != IGNORE
        correct = (out.logits.argmax(-1)[sel] == batch["labels"][sel]).sum()
        return out, correct, int(sel.sum())

    def forward(self, batch):
        out, correct, n = self._run(batch)
        return out.loss, {"correct": correct, "count": n}

    def evaluate_batch(self, batch) -> dict:
        out, correct, n = self._run(batch)
        pred = out.logits.argmax(-1).cpu().numpy()
        gold = batch["labels"].cpu().numpy()
        tp = n_pred = 0
        for p, g in zip(pred, gold):
            keep = g != IGNORE
            ps, gs = _spans(p[keep], self.tags), _spans(g[keep], self.tags)
            tp += len(ps & gs)
            n_pred += len(ps)
        return {"loss_sum": float(out.loss) * n, "tokens": n, "correct": int(correct), "tp": tp,
                "predicted": n_pred, "gold": int(batch["gold"].sum())}

    @staticmethod
    def summarize(totals: dict) -> dict:
        tp, n_pred, n_gold = totals.get("tp", 0), totals.get("predicted", 0), totals.get("gold", 0)
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        n = max(1, totals.get("tokens", 0))
        return {"f1": 2 * p * r / (p + r) if p + r else 0.0, "precision": p, "recall": r,
                "token_accuracy": totals.get("correct", 0) / n, "loss": totals.get("loss_sum", 0.0) / n}

    def trained_model(self):
        return self.model


def decode_ner(logits: list[np.ndarray], dataset, examples, tags: list[str]) -> list[set[tuple]]:
    """Per example, the predicted ``(start, end_exclusive, type)`` spans in its own character offsets."""
    spans: list[set] = [set() for _ in examples]
    for x, ei, char_index in zip(logits, dataset["example"], dataset["char_index"]):
        ci = np.asarray(char_index[:len(x)])
        keep = ci >= 0
        pred = np.asarray(x).argmax(-1)[keep]
        chars = ci[keep]
        for s, e, t in _spans(pred, tags):
            spans[ei].add((int(chars[s]), int(chars[e - 1]) + 1, t))
    return spans


def score_ner(examples, predicted_spans) -> dict:
    """Entity-level exact-match scores in percent: micro P/R/F1, per type, macro-F1."""
    from .metrics import entity_scores

    s = entity_scores(predicted_spans, [ex.entities for ex in examples])
    per_type = {t: {k: (100 * v if k != "support" else v) for k, v in d.items()} for t, d in s["per_type"].items()}
    f1 = 100 * s["micro"]["f1"]
    return {"f1": f1, "precision": 100 * s["micro"]["precision"], "recall": 100 * s["micro"]["recall"],
            "macro_f1": 100 * s["macro_f1"], "per_type": per_type, "examples": len(examples),
            "metric": "f1", "score": f1}
