"""SQuAD-style span extraction (CMRC 2018, DRCD): windows with doc stride, span labels, n-best decoding.

* :func:`encode_qa` turns :class:`~qingbert.tasks.QAExample` s into *features*: one
  ``[CLS] question [SEP] context-window [SEP]`` per window of a long context
  (consecutive windows overlap by ``doc_stride`` tokens), with start/end token
  labels and per-token character offsets into the original context.
* :class:`QACollator` and :class:`QAObjective` train an ``AutoModelForQuestionAnswering``
  in the one loop of :mod:`qingbert.training.loop`.
* :func:`decode_qa` picks the best span of each example over all its windows and
  cuts the answer out of the original context by character offsets (so ``[UNK]``
  tokens and full-width characters come back exactly as written);
  :func:`score_qa` scores answers with the official CMRC 2018 EM / F1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from qingbert.data.text import normalize_chars
from qingbert.errors import QingbertError
from qingbert.manifest import atomic_write_text
from qingbert.models.backends import AUTO_CLASS, TASK_OUTPUTS
from qingbert.tasks.metrics import cmrc_scores
from qingbert.training.batching import model_inputs, pad_rows

if TYPE_CHECKING:
    from datasets import Dataset

    from qingbert.tasks.readers import QAExample

NO_OFFSET = [-1, -1]  # the offsets of a token that is not part of the context
MAX_LISTED = 20  # ids of examples listed in a report
_CHUNK = 512  # examples per tokenizer call


# ---------------------------------------------------------------------------
# encoding


def _truncate_questions(questions: list[str], tokenizer, max_query_len: int) -> tuple[list[str], list[int], int]:
    """Cut questions longer than ``max_query_len`` tokens at a token boundary.

    Returns the questions, their token counts and how many were cut.
    """
    if not questions:
        return [], [], 0
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, lengths, cut = list(questions), [len(ids) for ids in enc["input_ids"]], 0
    for i, offs in enumerate(enc["offset_mapping"]):
        if lengths[i] <= max_query_len:
            continue
        cut += 1
        keep = max_query_len
        while keep > 0:  # re-tokenizing a cut word can (rarely) give more pieces: cut again until it fits
            q = questions[i][:offs[keep - 1][1]]
            n = len(tokenizer(q, add_special_tokens=False)["input_ids"])
            if n <= max_query_len:
                break
            keep -= 1
        out[i], lengths[i] = (q, n) if keep > 0 else ("", 0)
    return out, lengths, cut


def _window_label(offsets: list, seq_ids: list, answers: list) -> tuple[int, int, bool] | None:
    """``(start token, end token, aligned)`` of the first answer lying wholly in this window, or None.

    ``answers`` are ``(char start, char end exclusive)``; a span that cuts through a token is
    snapped to the tokens covering it (``aligned`` False).
    """
    ctx = [k for k, s in enumerate(seq_ids) if s == 1]
    if not ctx:
        return None
    first, last = ctx[0], ctx[-1]
    for a_start, a_end in answers:
        if offsets[first][0] > a_start or offsets[last][1] < a_end:
            continue
        start = next((k for k in ctx if offsets[k][1] > a_start), None)
        end = next((k for k in reversed(ctx) if offsets[k][0] < a_end), None)
        if start is None or end is None or end < start:  # the span holds no token (only spaces)
            continue
        return start, end, offsets[start][0] == a_start and offsets[end][1] == a_end
    return None


def encode_qa(examples: list[QAExample], tokenizer, max_len: int = 384, doc_stride: int = 128,
              max_query_len: int = 64, train: bool = True) -> tuple[Dataset, dict]:
    """Tokenize examples into window features; returns ``(datasets.Dataset, report)``.

    Columns: ``input_ids``, ``token_type_ids`` (if the tokenizer makes them), ``start_positions``,
    ``end_positions`` (0 = ``[CLS]`` where the answer is not wholly inside the window), ``example``
    (index into ``examples``) and ``offsets`` (``[char start, char end]`` into the original context,
    ``[-1, -1]`` for question and special tokens).  Labels use the first answer when ``train``, else
    the first answer that fits the window.  Questions keep at most ``max_query_len`` tokens and at
    most half a window (the limit used is reported as ``max_query_len``).  An overlap of more than
    half the context room of a window is lowered to half (``doc_stride_clamped`` counts the long
    contexts where that happened; the tokenizer cannot take an overlap that fills the room).
    """
    from datasets import Dataset

    if not getattr(tokenizer, "is_fast", False):
        raise QingbertError("reading comprehension needs a fast tokenizer (character offsets)",
                            hint="load it with qingbert.data.vocab.load_tokenizer")
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    max_query_len = min(max_query_len, (max_len - n_special) // 2)  # a question never takes over half a window
    if max_query_len < 1:
        raise QingbertError(f"max_len {max_len} is too short for a question and a context", hint="raise max_len")
    questions, q_lens, n_cut = _truncate_questions([normalize_chars(e.question) for e in examples], tokenizer,
                                                   max_query_len)
    contexts = [normalize_chars(e.context) for e in examples]

    # the tokenizer panics on an overlap >= the context room of a window, so group examples by overlap
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(q_lens):
        room = max_len - n - n_special
        groups.setdefault(max(0, min(doc_stride, room // 2)), []).append(i)

    per_example: list[list[dict]] = [[] for _ in examples]
    has_types, clamped = False, 0
    for stride, idx in groups.items():
        for lo in range(0, len(idx), _CHUNK):
            chunk = idx[lo:lo + _CHUNK]
            enc = tokenizer([questions[i] for i in chunk], [contexts[i] for i in chunk], truncation="only_second",
                            max_length=max_len, stride=stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True)
            has_types = "token_type_ids" in enc
            for j, sample in enumerate(enc["overflow_to_sample_mapping"]):
                seq_ids = enc.sequence_ids(j)
                offs = [o if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][j], seq_ids)]
                feat = {"input_ids": enc["input_ids"][j], "seq_ids": seq_ids, "offsets": offs}
                if has_types:
                    feat["token_type_ids"] = enc["token_type_ids"][j]
                per_example[chunk[sample]].append(feat)
        if stride < doc_stride:
            clamped += sum(len(per_example[i]) > 1 for i in idx)

    cols: dict[str, list] = {"input_ids": [], "token_type_ids": [], "start_positions": [], "end_positions": [],
                             "example": [], "offsets": []}
    long_contexts = mismatched = 0
    outside: list = []
    for i, (e, feats) in enumerate(zip(examples, per_example)):
        long_contexts += len(feats) > 1
        answers = [(s, s + len(t)) for t, s in e.answers]
        if train:
            answers = answers[:1]
        found = aligned = False
        for f in feats:
            lab = _window_label(f["offsets"], f["seq_ids"], answers)
            if lab is not None and not found:
                found, aligned = True, lab[2]
            cols["input_ids"].append(f["input_ids"])
            cols["token_type_ids"].append(f.get("token_type_ids"))
            cols["start_positions"].append(lab[0] if lab else 0)
            cols["end_positions"].append(lab[1] if lab else 0)
            cols["example"].append(i)
            cols["offsets"].append(f["offsets"])
        if answers and not found:
            outside.append(e.id)
        mismatched += found and not aligned
    if not has_types:
        del cols["token_type_ids"]
    report = {"examples": len(examples), "features": len(cols["example"]), "long_contexts": long_contexts,
              "questions_truncated": n_cut, "answers_outside_all_windows": len(outside),
              "answers_outside_ids": [str(x) for x in outside[:MAX_LISTED]], "answer_token_mismatch": mismatched,
              "doc_stride_clamped": clamped, "max_query_len": max_query_len}
    return Dataset.from_dict(cols), report


# ---------------------------------------------------------------------------
# batches and the training objective


class QACollator:
    """Pads window features (on the right) into tensors, with their start/end labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = pad_rows(rows, self.pad_id)
        for key in ("start_positions", "end_positions"):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch


class QAObjective(torch.nn.Module):
    """Start/end cross-entropy of a question-answering head; ``forward(batch) -> (loss, metrics)``.

    The running accuracy counts windows whose start AND end (argmax over real tokens) are both right.
    """

    name = "mrc"
    accuracy_name = "span_accuracy"

    def __init__(self, model):
        super().__init__()
        self.model = model

    def _run(self, batch):
        out = self.model(**model_inputs(batch), start_positions=batch["start_positions"],
                         end_positions=batch["end_positions"])
        pad = batch["attention_mask"] == 0
        start_ok = out.start_logits.masked_fill(pad, float("-inf")).argmax(-1) == batch["start_positions"]
        end_ok = out.end_logits.masked_fill(pad, float("-inf")).argmax(-1) == batch["end_positions"]
        return out.loss, start_ok, end_ok

    def forward(self, batch):
        loss, start_ok, end_ok = self._run(batch)
        return loss, {"correct": (start_ok & end_ok).sum(), "count": start_ok.numel()}

    def evaluate_batch(self, batch) -> dict:
        loss, start_ok, end_ok = self._run(batch)
        n = start_ok.numel()
        return {"loss_sum": float(loss) * n, "count": n, "start_correct": int(start_ok.sum()),
                "end_correct": int(end_ok.sum()), "correct": int((start_ok & end_ok).sum())}

    @staticmethod
    def summarize(totals: dict) -> dict:
        n = max(1, totals.get("count", 0))
        return {"loss": totals.get("loss_sum", 0.0) / n, "span_accuracy": totals.get("correct", 0) / n,
                "start_accuracy": totals.get("start_correct", 0) / n, "end_accuracy": totals.get("end_correct", 0) / n,
                "features": int(totals.get("count", 0))}

    def trained_model(self):
        return self.model


# ---------------------------------------------------------------------------
# decoding and scoring


def _top(logits: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidate token indices with the highest logits, best first."""
    return candidates[np.argsort(-logits[candidates], kind="stable")[:n]]


def decode_qa(start_logits: list[np.ndarray], end_logits: list[np.ndarray], dataset, examples: list[QAExample],
              n_best: int = 20, max_answer_len: int = 50) -> tuple[dict, dict]:
    """Best answer of each example over all its windows; returns ``({id: text}, {id: n-best list})``.

    Per window, the ``n_best`` highest start and end logits on context tokens are paired; a pair
    counts if ``end >= start`` and it spans at most ``max_answer_len`` tokens; its score is
    ``start logit + end logit``.  A span found in two overlapping windows keeps its best score.
    Each n-best entry is ``{"text", "start" (character), "score"}``; an example with no valid
    span gets the answer ``""``.
    """
    spans: list[dict] = [{} for _ in examples]  # per example: (char start, char end) -> best score
    for f, (ex, offs) in enumerate(zip(dataset["example"], dataset["offsets"])):
        sl, el = np.asarray(start_logits[f], dtype=np.float64), np.asarray(end_logits[f], dtype=np.float64)
        offs = np.asarray(offs, dtype=np.int64).reshape(-1, 2)[:len(sl)]
        ctx = np.nonzero(offs[:, 0] >= 0)[0]
        if not len(ctx):
            continue
        best = spans[ex]
        for s in _top(sl, ctx, n_best):
            for e in _top(el, ctx, n_best):
                if e < s or e - s + 1 > max_answer_len:
                    continue
                key, score = (int(offs[s, 0]), int(offs[e, 1])), float(sl[s] + el[e])
                if score > best.get(key, -np.inf):
                    best[key] = score
    answers, nbest = {}, {}
    for e, found in zip(examples, spans):
        ranked = sorted(found.items(), key=lambda kv: -kv[1])[:n_best]
        nbest[e.id] = [{"text": e.context[a:b], "start": a, "score": sc} for (a, b), sc in ranked]
        answers[e.id] = nbest[e.id][0]["text"] if ranked else ""
    return answers, nbest


def score_qa(examples: list[QAExample], predictions: dict) -> dict:
    """Official CMRC 2018 EM / F1 (percent) of ``{id: answer text}`` against every gold answer."""
    scores = cmrc_scores(predictions, {e.id: [t for t, _ in e.answers] for e in examples})
    return {**scores, "metric": "f1", "score": scores["f1"]}


class MRCHead:
    auto_class = AUTO_CLASS["mrc"]
    outputs = TASK_OUTPUTS["mrc"]
    token_level = True
    labels: list = []

    def __init__(self, task):
        pass

    def encode(self, examples, tokenizer, cfg, train: bool):
        return encode_qa(examples, tokenizer, max_len=cfg.max_len, doc_stride=cfg.doc_stride or cfg.max_len // 4,
                         max_query_len=cfg.max_query_len, train=train)

    def collator(self, tokenizer):
        return QACollator(tokenizer.pad_token_id)

    def objective(self, model):
        return QAObjective(model)

    def decode(self, out: dict, ds, examples, cfg) -> list:
        answers, _ = decode_qa(out["start_logits"], out["end_logits"], ds, examples, n_best=cfg.n_best,
                               max_answer_len=cfg.max_answer_len)
        return [answers.get(e.id, "") for e in examples]

    def score(self, examples, preds) -> dict:
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
