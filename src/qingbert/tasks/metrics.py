"""Evaluation metrics for qingbert downstream tasks (numpy only).

Three families:

* Classification: :func:`accuracy`, :func:`macro_f1` (fractions in [0, 1]).
* Span extraction (CMRC 2018 / DRCD): :func:`cmrc_scores` and its helpers
  :func:`mixed_segmentation`, :func:`remove_punctuation`, :func:`lcs_len`,
  :func:`pair_f1`, following the definitions of the official CMRC 2018
  evaluation (character-level tokens for Chinese, longest common *substring*
  F1, best over gold answers, scores x100).
* NER (CLUENER2020): :func:`entity_scores`, :func:`bio_decode`,
  :func:`bio_encode`, :func:`spans_from_cluener`.

Span convention for NER: every span here is ``(start, end, type)`` with
``end`` EXCLUSIVE (Python slice style, ``text[start:end]``).  CLUENER2020's
JSON files store ``[start, end]`` with ``end`` INCLUSIVE; convert with
:func:`spans_from_cluener` (which adds 1 to the end).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "PUNCTUATION",
    "accuracy",
    "bio_decode",
    "bio_encode",
    "cmrc_scores",
    "entity_scores",
    "exact_match",
    "lcs_len",
    "macro_f1",
    "mixed_segmentation",
    "normalize_answer",
    "pair_f1",
    "remove_punctuation",
    "spans_from_cluener",
]


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------

def _check_pair(preds: Sequence, golds: Sequence) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"length mismatch: {len(preds)} predictions vs {len(golds)} golds")


def accuracy(preds: Sequence[Hashable], golds: Sequence[Hashable]) -> float:
    """Fraction of positions where ``preds[i] == golds[i]``, in [0, 1].

    Returns 0.0 for empty input; raises ``ValueError`` on a length mismatch.
    """
    _check_pair(preds, golds)
    if len(golds) == 0:
        return 0.0
    hits = np.fromiter((p == g for p, g in zip(preds, golds)), dtype=bool, count=len(golds))
    return float(hits.mean())


def macro_f1(
    preds: Sequence[Hashable],
    golds: Sequence[Hashable],
    labels: Iterable[Hashable] | None = None,
) -> float:
    """Unweighted mean of per-label F1, in [0, 1].

    Per label ``c``: ``F1 = 2TP / (2TP + FP + FN)`` (equal to 2PR/(P+R), and 0
    when TP is 0).  Labels averaged over are ``labels`` if given, otherwise
    every label occurring in golds or preds.  A label with no gold and no
    predicted occurrence (TP + FP + FN == 0) is skipped, not counted as 0.
    Returns 0.0 if no label remains.
    """
    _check_pair(preds, golds)
    if labels is None:
        labels = set(golds) | set(preds)
        try:
            labels = sorted(labels)
        except TypeError:  # mixed, unorderable label types
            labels = list(labels)
    pred_arr = list(preds)
    gold_arr = list(golds)
    scores = []
    for lab in labels:
        p = np.fromiter((x == lab for x in pred_arr), dtype=bool, count=len(pred_arr))
        g = np.fromiter((x == lab for x in gold_arr), dtype=bool, count=len(gold_arr))
        tp = int(np.sum(p & g))
        fp = int(np.sum(p & ~g))
        fn = int(np.sum(~p & g))
        if tp + fp + fn == 0:
            continue
        scores.append(2.0 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


# ---------------------------------------------------------------------------
# CMRC 2018 / DRCD span extraction
# ---------------------------------------------------------------------------

#: The punctuation the official CMRC 2018 evaluation removes (its ``sp_char`` list, as is:
#: only these ASCII marks, and ``'……'`` is two characters, so a single ``'…'`` is kept).
PUNCTUATION: frozenset[str] = frozenset(
    [
        "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
        "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
        "「", "」", "（", "）", "－", "～", "『", "』",
    ]
)
_CHINESE = re.compile("[\u4e00-\u9fa5]")  # the official script's test for a Chinese character


def _word_tokenize(text: str) -> list[str]:
    """nltk's ``word_tokenize``, as the official script uses for non-Chinese runs.

    ``preserve_line=True`` skips nltk's Punkt sentence splitter, whose model is a
    separate download; for answer-length strings the tokens are the same.
    """
    from nltk.tokenize import word_tokenize

    return word_tokenize(text, preserve_line=True)


def mixed_segmentation(text: str, rm_punc: bool = False) -> list[str]:
    """CMRC 2018 tokens: lowercased; each Chinese character and each punctuation mark
    (:data:`PUNCTUATION`) its own token; other runs tokenized by nltk's word tokenizer.
    With ``rm_punc`` the punctuation marks are dropped (as for F1).

    >>> mixed_segmentation("我爱NLP2024年，ok!")
    ['我', '爱', 'nlp2024', '年', '，', 'ok', '!']
    """
    tokens: list[str] = []
    run = ""
    for ch in str(text).lower().strip():
        if rm_punc and ch in PUNCTUATION:
            continue
        if _CHINESE.match(ch) or ch in PUNCTUATION:
            if run:
                tokens.extend(_word_tokenize(run))
                run = ""
            tokens.append(ch)
        else:
            run += ch
    if run:
        tokens.extend(_word_tokenize(run))
    return tokens


def remove_punctuation(text: str) -> str:
    """The official EM normalisation: lowercase, strip the ends, drop :data:`PUNCTUATION` characters
    (spaces inside the string are kept)."""
    return "".join(ch for ch in str(text).lower().strip() if ch not in PUNCTUATION)


def normalize_answer(text: str) -> list[str]:
    """The F1 tokens: ``mixed_segmentation(text, rm_punc=True)``."""
    return mixed_segmentation(text, rm_punc=True)


def lcs_len(a: Sequence, b: Sequence) -> int:
    """Length of the longest common contiguous SUBSTRING of ``a`` and ``b``
    (not subsequence), by dynamic programming; 0 if either is empty."""
    if len(a) == 0 or len(b) == 0:
        return 0
    prev = np.zeros(len(b) + 1, dtype=np.int64)
    best = 0
    for x in a:
        cur = np.zeros(len(b) + 1, dtype=np.int64)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = int(cur[j])
        prev = cur
    return best


def pair_f1(pred: str, gold: str) -> float:
    """CMRC F1 (in [0, 1]) of one prediction against one gold answer.

    Both are normalised with :func:`normalize_answer`; with ``l`` the longest
    common substring length of the token lists, precision = l/len(pred),
    recall = l/len(gold), F1 = 2PR/(P+R); 0 when ``l`` is 0.
    """
    p_toks = normalize_answer(pred)
    g_toks = normalize_answer(gold)
    lcs = lcs_len(p_toks, g_toks)
    if lcs == 0:
        return 0.0
    precision = lcs / len(p_toks)
    recall = lcs / len(g_toks)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, gold: str) -> int:
    """1 if the strings are equal after :func:`remove_punctuation` (case and the listed
    punctuation ignored), else 0 — the official CMRC 2018 EM."""
    return int(remove_punctuation(pred) == remove_punctuation(gold))


def cmrc_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
) -> dict:
    """CMRC 2018 / DRCD scores over all questions in ``references``.

    Per question: EM and F1 are the max over its gold answers.  A question
    with no entry in ``predictions`` scores 0 on both and is counted in
    ``skipped`` (it still counts in ``total``).  Predictions for ids absent
    from ``references`` are ignored.  A bare string reference is treated as
    a single answer.

    Returns ``{"em", "f1", "average", "total", "skipped"}`` with ``em``/``f1``
    averaged over ``total`` and multiplied by 100 (range 0..100), and
    ``average = (em + f1) / 2``.  All scores are 0.0 when there are no
    questions.
    """
    total = 0
    skipped = 0
    em_sum = 0.0
    f1_sum = 0.0
    for qid, answers in references.items():
        total += 1
        if isinstance(answers, str):
            answers = [answers]
        if qid not in predictions:
            skipped += 1
            continue
        pred = predictions[qid]
        if not answers:
            continue
        em_sum += max(exact_match(pred, a) for a in answers)
        f1_sum += max(pair_f1(pred, a) for a in answers)
    em = 100.0 * em_sum / total if total else 0.0
    f1 = 100.0 * f1_sum / total if total else 0.0
    return {"em": em, "f1": f1, "average": (em + f1) / 2, "total": total, "skipped": skipped}


# ---------------------------------------------------------------------------
# NER (CLUENER2020)
# ---------------------------------------------------------------------------

def spans_from_cluener(label: Mapping[str, Mapping[str, Sequence[Sequence[int]]]]) -> set[tuple]:
    """Convert a CLUENER2020 ``label`` field to end-exclusive spans.

    CLUENER stores ``{type: {entity_text: [[start, end_inclusive], ...]}}``;
    this returns ``{(start, end_inclusive + 1, type), ...}`` so that
    ``text[start:end]`` is the entity.
    """
    out: set[tuple] = set()
    for etype, mentions in label.items():
        for positions in mentions.values():
            for start, end_incl in positions:
                out.add((int(start), int(end_incl) + 1, etype))
    return out


def bio_decode(tags: Sequence[str]) -> set[tuple]:
    """Decode character-level BIO tags into ``{(start, end_exclusive, type)}``.

    ``B-X`` always opens a new ``X`` entity; ``I-X`` extends the open entity
    if it has type ``X``; ``O`` closes any open entity.  Lenient convention:
    an ``I-X`` that does not continue an open ``X`` entity (after ``O``, at
    the start, or after a different type) starts a new ``X`` entity rather
    than being dropped.  Raises ``ValueError`` for a malformed tag.
    """
    spans: set[tuple] = set()
    start: int | None = None
    cur_type: str | None = None

    def close(end: int) -> None:
        if start is not None:
            spans.add((start, end, cur_type))

    for i, tag in enumerate(tags):
        if tag == "O":
            close(i)
            start, cur_type = None, None
            continue
        prefix, sep, etype = tag.partition("-")
        if not sep or not etype or prefix not in ("B", "I"):
            raise ValueError(f"malformed BIO tag {tag!r} at position {i}")
        if prefix == "I" and start is not None and cur_type == etype:
            continue
        close(i)
        start, cur_type = i, etype
    close(len(tags))
    return spans


def bio_encode(length: int, spans: Iterable[tuple]) -> list[str]:
    """Encode end-exclusive ``(start, end, type)`` spans as ``length`` BIO tags.

    Raises ``ValueError`` for empty or out-of-range spans and for overlapping
    spans (BIO cannot represent them).  ``bio_decode(bio_encode(n, s)) == s``
    for any set ``s`` of valid non-overlapping spans.
    """
    tags = ["O"] * length
    for start, end, etype in sorted(spans, key=lambda s: (s[0], s[1])):
        if not (0 <= start < end <= length):
            raise ValueError(f"span {(start, end, etype)!r} invalid for length {length}")
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span {(start, end, etype)!r} overlaps another span")
        tags[start] = f"B-{etype}"
        for k in range(start + 1, end):
            tags[k] = f"I-{etype}"
    return tags


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(
    pred_spans: Sequence[Iterable[tuple]],
    gold_spans: Sequence[Iterable[tuple]],
) -> dict:
    """Entity-level exact-match scores (fractions in [0, 1]).

    ``pred_spans[i]`` / ``gold_spans[i]`` are the spans of sentence ``i`` as
    ``(start, end_exclusive, type)`` tuples (type is the last element); a
    prediction is correct only if start, end and type all match a gold span
    of the same sentence.  Returns::

        {"micro": {"precision", "recall", "f1"},
         "per_type": {type: {"precision", "recall", "f1", "support"}},
         "macro_f1": mean per-type F1 over types in gold or pred}

    ``support`` is the number of gold spans of that type.  CLUENER files use
    inclusive ends: convert them with :func:`spans_from_cluener` first.
    """
    _check_pair(pred_spans, gold_spans)
    tp: dict = {}
    n_pred: dict = {}
    n_gold: dict = {}
    for p_raw, g_raw in zip(pred_spans, gold_spans):
        p, g = set(map(tuple, p_raw)), set(map(tuple, g_raw))
        for s in p:
            n_pred[s[-1]] = n_pred.get(s[-1], 0) + 1
        for s in g:
            n_gold[s[-1]] = n_gold.get(s[-1], 0) + 1
        for s in p & g:
            tp[s[-1]] = tp.get(s[-1], 0) + 1
    types = set(n_pred) | set(n_gold)
    try:
        types = sorted(types)
    except TypeError:
        types = list(types)
    per_type = {}
    for t in types:
        pr, rc, f = _prf(tp.get(t, 0), n_pred.get(t, 0), n_gold.get(t, 0))
        per_type[t] = {"precision": pr, "recall": rc, "f1": f, "support": n_gold.get(t, 0)}
    mp, mr, mf = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    macro = float(np.mean([v["f1"] for v in per_type.values()])) if per_type else 0.0
    return {
        "micro": {"precision": mp, "recall": mr, "f1": mf},
        "per_type": per_type,
        "macro_f1": macro,
    }
