"""Character-level BIO named-entity recognition (CLUENER2020, People's Daily) for the one training loop.

Every character of a text is one unit.  The text, after the length-preserving
:func:`qingbert.data.corpus.normalize_chars`, goes to the tokenizer as a list of
characters (``is_split_into_words=True``); the first token of each character
carries that character's BIO tag and every other position (special tokens,
continuation pieces) is ignored (-100).  Characters that give no token
(spaces, dropped control characters) are never predicted, i.e. they are "O".

A text that does not fit in ``max_len`` tokens is cut into consecutive windows
that partition it, preferably right after a punctuation mark.  A gold entity
crossing a window boundary cannot be predicted whole: it is reported
(``entities_cut_by_window``) and scored as a miss, never dropped.

In-loop evaluation sums exact entity counts per window (true positives,
predicted, gold), so its micro P/R/F1 equals :func:`score_ner` on the
predictions of :func:`decode_ner`.  Spans are ``(start, end_exclusive, type)``
in the original text's characters throughout.
"""

from __future__ import annotations

import numpy as np
import torch

from qingbert.data.text import normalize_chars
from qingbert.errors import QingbertError
from qingbert.models.backends import AUTO_CLASS, TASK_OUTPUTS
from qingbert.tasks.classification import ClassificationHead
from qingbert.tasks.metrics import bio_decode, entity_scores
from qingbert.training.batching import model_inputs, pad_rows

IGNORE = -100
#: a window is preferably cut right after one of these (full-width forms are half-width after normalize_chars)
CUT_AFTER = frozenset("。！？!?；;，,、：:…")
REPORT_KEYS = ("examples", "windows", "long_examples_split", "entities", "entities_cut_by_window",
               "overlapping_entities_dropped", "invalid_entities_dropped", "empty_examples", "characters_truncated")


def bio_labels(entity_types: list[str]) -> list[str]:
    """``["O", "B-T1", "I-T1", "B-T2", ...]`` in the given type order."""
    return ["O"] + [f"{prefix}-{t}" for t in entity_types for prefix in ("B", "I")]


def _entity_types(tags: list[str]) -> list[str]:
    """The entity types of a BIO tag list (in order of their ``B-`` tags); a malformed list is an error."""
    if "O" not in tags:
        raise QingbertError("NER tags have no 'O' tag", hint="build them with qingbert.tasks.ner.bio_labels")
    types = []
    for tag in tags:
        prefix, sep, etype = tag.partition("-")
        if tag != "O" and (not sep or not etype or prefix not in ("B", "I")):
            raise QingbertError(f"malformed NER tag '{tag}'", hint="tags are O, B-<type>, I-<type>")
        if prefix == "B" and sep:
            if f"I-{etype}" not in tags:
                raise QingbertError(f"NER tags have 'B-{etype}' but no 'I-{etype}'")
            types.append(etype)
    return types


# ---------------------------------------------------------------------------
# encoding


def _windows(text: str, counts: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` character windows partitioning ``text``, each of at most ``budget`` tokens
    (``counts[i]`` tokens for character ``i``).  A window is cut right after the punctuation mark closest to the
    limit if one lies in its second half, else at the limit; it always holds at least one character."""
    n, out, start = len(text), [], 0
    while start < n:
        end, used = start, 0
        while end < n and used + counts[end] <= budget:
            used += counts[end]
            end += 1
        end = max(end, start + 1)  # one character alone over the budget: the tokenizer keeps its first piece
        if end < n:
            lo = start + (end - start) // 2
            cut = next((i + 1 for i in range(end - 1, lo - 1, -1) if text[i] in CUT_AFTER), end)
            end = max(cut, start + 1)
        out.append((start, end))
        start = end
    return out


def _char_tags(length: int, entities, tag_id: dict, report: dict) -> list[int]:
    """Per-character tag ids; spans out of range or overlapping an earlier one are counted, not encoded."""
    tags = [tag_id["O"]] * length
    for s, e, t in sorted(entities, key=lambda x: (x[0], x[1])):
        if not (0 <= s < e <= length):
            report["invalid_entities_dropped"] += 1
        elif any(x != tag_id["O"] for x in tags[s:e]):
            report["overlapping_entities_dropped"] += 1
        else:
            tags[s] = tag_id[f"B-{t}"]
            tags[s + 1:e] = [tag_id[f"I-{t}"]] * (e - s - 1)
    return tags


def _check_types(examples, types: list[str]) -> None:
    known = set(types)
    for ex in examples:
        for ent in ex.entities:
            if ent[-1] not in known:
                raise QingbertError(f"entity type '{ent[-1]}' (example {ex.id}) is not one of the NER tags' types",
                                    hint="types: " + (", ".join(types) or "none"))


def encode_ner(examples, tokenizer, tags: list[str], max_len: int):
    """Examples -> ``(datasets.Dataset, report)`` with one row per window.

    Columns: ``input_ids``, ``token_type_ids`` (all 0, only if the tokenizer gives them), ``labels`` (tag id on
    each character's first token, else -100), ``example`` (index into ``examples``), ``char_index`` (per token:
    the character's index in the original text, or -1), and for the exact in-loop F1 ``gold_spans`` (flat
    ``[start, end, type index, ...]`` of the gold entities fully inside the window) and ``n_gold`` (the
    entities counted at this window: those starting in it; in the first window also those starting outside
    the text).  Exact duplicate spans are one entity, as in :func:`qingbert.tasks.metrics.entity_scores`.
    The report counts are listed in :data:`REPORT_KEYS`.
    """
    from datasets import Dataset

    types = _entity_types(tags)
    _check_types(examples, types)
    tag_id = {t: i for i, t in enumerate(tags)}
    type_id = {t: i for i, t in enumerate(types)}
    budget = max_len - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise QingbertError(f"max_len {max_len} leaves no room for text after the special tokens")
    report = dict.fromkeys(REPORT_KEYS, 0)
    report["examples"] = len(examples)
    texts = [normalize_chars(ex.text) for ex in examples]
    entities = [sorted({(int(s), int(e), t) for s, e, t in ex.entities}) for ex in examples]
    report["entities"] = sum(map(len, entities))

    # pass 1: each whole text; one that fits is its own window, a longer one is cut by its tokens per character
    nonempty = [i for i, t in enumerate(texts) if t]
    report["empty_examples"] = len(texts) - len(nonempty)
    report["invalid_entities_dropped"] = sum(len(entities[i]) for i, t in enumerate(texts) if not t)
    whole: dict = {}
    if nonempty:  # verbose=False: a whole text may be longer than the model before it is windowed
        whole = tokenizer([list(texts[i]) for i in nonempty], is_split_into_words=True, verbose=False)
    windows = []  # [example index, start, end, first window?, input_ids, word_ids] (ids None: tokenize again)
    char_tags, counts = {}, {}
    for k, ei in enumerate(nonempty):
        n = len(texts[ei])
        words = np.asarray([w for w in whole.word_ids(k) if w is not None], dtype=np.int64)
        counts[ei] = np.bincount(words, minlength=n)
        char_tags[ei] = _char_tags(n, entities[ei], tag_id, report)
        if len(whole["input_ids"][k]) <= max_len:
            windows.append([ei, 0, n, True, whole["input_ids"][k], whole.word_ids(k)])
            continue
        cuts = _windows(texts[ei], counts[ei], budget)
        report["long_examples_split"] += len(cuts) > 1
        report["entities_cut_by_window"] += sum(
            1 for s, e, _ in entities[ei] if 0 <= s < e <= n and any(s < b < e for _, b in cuts[:-1]))
        windows += [[ei, ws, we, j == 0, None, None] for j, (ws, we) in enumerate(cuts)]

    # pass 2: the windows of long texts, with the tokenizer's special tokens
    again = [w for w in windows if w[4] is None]
    if again:
        enc = tokenizer([list(texts[ei][ws:we]) for ei, ws, we, *_ in again], is_split_into_words=True,
                        truncation=True, max_length=max_len)
        for k, w in enumerate(again):
            w[4], w[5] = enc["input_ids"][k], enc.word_ids(k)

    # rows: labels and original character index on each character's first token
    cols: dict = {k: [] for k in ("input_ids", "token_type_ids", "labels", "example", "char_index", "gold_spans",
                                  "n_gold")}
    for ei, ws, we, first, ids, word_ids in windows:
        labels, char_index, previous = [], [], None
        for w in word_ids:
            is_first, previous = w is not None and w != previous, w
            labels.append(char_tags[ei][ws + w] if is_first else IGNORE)
            char_index.append(ws + w if is_first else -1)
        report["characters_truncated"] += int(np.count_nonzero(counts[ei][ws:we])) - sum(c >= 0 for c in char_index)
        n = len(texts[ei])
        cols["input_ids"].append(ids)
        cols["token_type_ids"].append([0] * len(ids))
        cols["labels"].append(labels)
        cols["example"].append(ei)
        cols["char_index"].append(char_index)
        cols["gold_spans"].append([x for s, e, t in entities[ei] if ws <= s < e <= we for x in (s, e, type_id[t])])
        cols["n_gold"].append(sum(1 for s, _, _ in entities[ei] if ws <= s < we or (first and not 0 <= s < n)))
    report["windows"] = len(windows)
    if "token_type_ids" not in whole:
        del cols["token_type_ids"]
    return Dataset.from_dict(cols), report


class NERCollator:
    """Pads windows on the right: model inputs, ``labels`` (-100), ``char_index`` (-1), and the window's gold
    entities as ``gold_spans`` (batch x entities x 3, padded with -1) and ``n_gold``, where the rows have them."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = pad_rows(rows, self.pad_id, token_labels="labels" if "labels" in rows[0] else None)
        if "char_index" in rows[0]:
            ci = np.full(batch["input_ids"].shape, -1, dtype=np.int64)
            for i, r in enumerate(rows):
                ci[i, :len(r["char_index"])] = r["char_index"]
            batch["char_index"] = torch.from_numpy(ci)
        if "gold_spans" in rows[0]:
            most = max(1, max(len(r["gold_spans"]) // 3 for r in rows))
            gold = np.full((len(rows), most, 3), -1, dtype=np.int64)
            for i, r in enumerate(rows):
                flat = np.asarray(r["gold_spans"], dtype=np.int64).reshape(-1, 3)
                gold[i, :len(flat)] = flat
            batch["gold_spans"] = torch.from_numpy(gold)
        if "n_gold" in rows[0]:
            batch["n_gold"] = torch.tensor([r["n_gold"] for r in rows], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------
# training objective and decoding


def window_spans(pred: np.ndarray, char_index: np.ndarray, tags: list[str]) -> set[tuple]:
    """Spans in original character offsets from per-token tag ids of one window (characters' first tokens only)."""
    k = min(len(pred), len(char_index))
    keep = char_index[:k] >= 0
    chars = char_index[:k][keep]
    return {(int(chars[s]), int(chars[e - 1]) + 1, t) for s, e, t in bio_decode([tags[int(i)] for i in pred[:k][keep]])}


class NERObjective(torch.nn.Module):
    """Token cross-entropy on a token-classification head; evaluation counts whole entities exactly."""

    name = "ner"
    accuracy_name = "token_accuracy"

    def __init__(self, model, tags: list[str]):
        super().__init__()
        self.model = model
        self.tags = list(tags)
        self.types = _entity_types(self.tags)

    def _run(self, batch):
        logits = self.model(**model_inputs(batch)).logits
        labels = batch["labels"]
        loss_sum = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                                     ignore_index=IGNORE, reduction="sum")
        sel = labels != IGNORE
        pred = logits.argmax(-1)
        return loss_sum, pred, (pred[sel] == labels[sel]).sum(), int(sel.sum())

    def forward(self, batch):
        loss_sum, _, correct, n = self._run(batch)
        return loss_sum / max(1, n), {"correct": correct, "count": n}

    def evaluate_batch(self, batch) -> dict:
        loss_sum, pred, correct, n = self._run(batch)
        tp = n_pred = 0
        for p, ci, gold in zip(pred.cpu().numpy(), batch["char_index"].cpu().numpy(),
                               batch["gold_spans"].cpu().numpy()):
            spans = window_spans(p, ci, self.tags)
            n_pred += len(spans)
            tp += len(spans & {(int(s), int(e), self.types[t]) for s, e, t in gold if s >= 0})
        return {"loss_sum": float(loss_sum), "correct": int(correct), "count": n, "tp": tp, "n_pred": n_pred,
                "n_gold": int(batch["n_gold"].sum())}

    @staticmethod
    def summarize(totals: dict) -> dict:
        tp, n_pred, n_gold = totals.get("tp", 0), totals.get("n_pred", 0), totals.get("n_gold", 0)
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        n = max(1, totals.get("count", 0))
        return {"f1": 2 * p * r / (p + r) if p + r else 0.0, "precision": p, "recall": r,
                "token_accuracy": totals.get("correct", 0) / n, "loss": totals.get("loss_sum", 0.0) / n}

    def trained_model(self):
        return self.model


def decode_ner(logits: list[np.ndarray], dataset, examples, tags: list[str]) -> list[set[tuple]]:
    """Per example, the predicted ``(start, end_exclusive, type)`` spans in its original character offsets:
    argmax per character's first token, :func:`qingbert.tasks.metrics.bio_decode` per window, union over windows.
    ``logits[i]`` is window ``i``'s ``(tokens, tags)`` array (padding may be cut off or kept)."""
    spans: list[set] = [set() for _ in examples]
    for x, ei, ci in zip(logits, dataset["example"], dataset["char_index"]):
        spans[ei] |= window_spans(np.asarray(x).argmax(-1), np.asarray(ci, dtype=np.int64), tags)
    return spans


def score_ner(examples, predicted_spans) -> dict:
    """Entity-level exact-match scores in percent: micro P/R/F1, macro-F1, per type (with ``support``)."""
    s = entity_scores(predicted_spans, [ex.entities for ex in examples])
    per_type = {t: {k: (v if k == "support" else 100 * v) for k, v in d.items()} for t, d in s["per_type"].items()}
    f1 = 100 * s["micro"]["f1"]
    return {"f1": f1, "precision": 100 * s["micro"]["precision"], "recall": 100 * s["micro"]["recall"],
            "macro_f1": 100 * s["macro_f1"], "per_type": per_type, "examples": len(examples),
            "metric": "f1", "score": f1}


class NERHead:
    auto_class = AUTO_CLASS["ner"]
    outputs = TASK_OUTPUTS["ner"]
    token_level = True

    def __init__(self, task):
        self.types = list(task.labels)
        self.labels = bio_labels(self.types)

    def encode(self, examples, tokenizer, cfg, train: bool):
        return encode_ner(examples, tokenizer, self.labels, cfg.max_len)

    def collator(self, tokenizer):
        return NERCollator(tokenizer.pad_token_id)

    def objective(self, model):
        return NERObjective(model, self.labels)

    def decode(self, out: dict, ds, examples, cfg) -> list:
        return decode_ner(out["logits"], ds, examples, self.labels)

    def score(self, examples, preds) -> dict:
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
