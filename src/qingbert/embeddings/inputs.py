"""What the embedding stages read: a corpus file (one sentence per line) and labelled sentence pairs.

:func:`read_corpus` (whitening, unsupervised SimCSE) reads the sentences of a text file and counts the blank
lines it skips.  :func:`check_pairs` checks ``(a, b, score)`` triples given in Python; :func:`task_pairs` takes
them from a sentence-pair task's split (LCQMC / BQ / AFQMC files through :mod:`qingbert.tasks`) for supervised
SimCSE and STS evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path

from qingbert.data.corpus import read_corpus as read_lines
from qingbert.errors import QingbertError
from qingbert.tasks.readers import Task, load_task


def read_corpus(path: str | Path) -> tuple[list[str], dict]:
    """Sentences of a text file (one per line, UTF-8) and ``{"file", "lines", "empty", "sentences"}``: blank lines
    are skipped and counted (the same reader as ``qingbert index build``)."""
    texts, _, empty = read_lines(path)
    return texts, {"file": str(path), "lines": len(texts) + len(empty), "empty": len(empty), "sentences": len(texts)}


def check_pairs(pairs) -> list[tuple[str, str, float]]:
    """``(a, b, score)`` triples with string texts and finite numeric scores (floats); an error names the first
    bad one."""
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 3:
            raise QingbertError(f"pair {i}: expected (text_a, text_b, score)")
        a, b, y = p
        if not isinstance(a, str) or not isinstance(b, str):
            raise QingbertError(f"pair {i}: the texts must be strings")
        try:
            y = float(y)
        except (TypeError, ValueError):
            raise QingbertError(f"pair {i}: score {y!r} is not a number") from None
        if not math.isfinite(y):
            raise QingbertError(f"pair {i}: score {y!r} is not finite")
        out.append((a, b, y))
    return out


def task_pairs(task, data_dir=None, split: str = "train") -> tuple[list[tuple[str, str, float]], dict]:
    """``(a, b, score)`` of a sentence-pair task split (LCQMC / BQ / AFQMC files via
    :func:`qingbert.tasks.readers.load_task`, or a loaded Task) and a description; labels must be numbers."""
    t = task if isinstance(task, Task) else load_task(task, data_dir)
    if t.type != "pair":
        raise QingbertError(f"task '{t.name}' is a {t.type} task, not sentence pairs",
                            hint="use lcqmc, bq, afqmc (or another pair task)")
    if split not in t.splits:
        raise QingbertError(f"task '{t.name}' has no {split} split", hint="found: " + ", ".join(t.splits))
    pairs = []
    for e in t.splits[split]:
        if e.label is None:
            continue
        try:
            y = float(e.label)
        except ValueError:
            raise QingbertError(f"task '{t.name}' {split}: label '{e.label}' is not a number (example {e.id})",
                                hint="similarity evaluation needs numeric labels (0/1 or a score)") from None
        pairs.append((e.text, e.text_b, y))
    if not pairs:
        raise QingbertError(f"task '{t.name}' {split}: no labelled pairs")
    return pairs, {"task": t.name, "split": split, "file": t.files.get(split), "skipped": dict(t.skipped)}


__all__ = ["read_corpus", "check_pairs", "task_pairs"]
