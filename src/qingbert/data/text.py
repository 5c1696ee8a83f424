"""Text hygiene shared by every stage: Unicode clean-up (full-width to half-width, control and zero-width
characters out), the hash that deduplicates and splits, CJK tests, and :class:`Stats`, the counts of what
reading and cleaning did that every stage writes to its manifest."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

MAX_EXAMPLES = 20  # how many skipped lines are kept verbatim (file:line: reason) per stage


@dataclass
class Stats:
    """Counts of what happened to the input, written to the manifest."""

    lines_read: int = 0
    chars_read: int = 0
    records_kept: int = 0
    chars_kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    pieces_from_long_lines: int = 0
    long_lines: int = 0
    hard_cuts: int = 0
    files: list = field(default_factory=list)  # per-file info: path, encoding, lines
    skipped_files: list = field(default_factory=list)
    examples: list = field(default_factory=list)  # "file:line: reason"

    def skip(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def to_dict(self) -> dict:
        total = self.lines_read
        dup = self.dropped.get("duplicate", 0)
        return {
            "lines_read": self.lines_read,
            "chars_read": self.chars_read,
            "records_kept": self.records_kept,
            "chars_kept": self.chars_kept,
            "dropped": dict(sorted(self.dropped.items())),
            "dedup_rate": round(dup / total, 6) if total else 0.0,
            "long_lines_split": self.long_lines,
            "pieces_from_long_lines": self.pieces_from_long_lines,
            "hard_cuts_without_sentence_end": self.hard_cuts,
            "files": self.files,
            "skipped_files": self.skipped_files,
            "skip_examples": self.examples,
        }

    def summary(self) -> str:
        return summarize(self.to_dict())


def summarize(c: dict) -> str:
    """One line on what reading and cleaning did (from :meth:`Stats.to_dict`, e.g. a manifest's ``corpus``)."""
    dropped = ", ".join(f"{n:,} {r}" for r, n in c["dropped"].items()) or "none"
    s = (f"read {c['lines_read']:,} lines, kept {c['records_kept']:,} texts ({c['chars_kept']:,} chars); "
         f"dropped: {dropped}; dedup rate {100 * c['dedup_rate']:.1f}%")
    for f in c["files"]:
        if "dedup" in f:  # built-in sets are deduplicated (before splitting) when loaded
            d = f["dedup"]
            s += f"; {f['path']}: {d['duplicate']:,} of {d['lines']:,} lines were duplicates"
    if c["long_lines_split"]:
        s += f"; {c['long_lines_split']:,} long lines split into {c['pieces_from_long_lines']:,} pieces"
    if c["skipped_files"]:
        s += "; skipped files: " + ", ".join(f"{f['path']} ({f['reason']})" for f in c["skipped_files"][:5])
    return s


def _clean_table() -> dict:
    table = {}
    for cp in range(0xFF01, 0xFF5F):  # full-width ASCII -> half-width
        table[cp] = cp - 0xFEE0
    table[0x3000] = " "  # ideographic space
    for cp in list(range(0x00, 0x20)) + [0x7F] + list(range(0x80, 0xA0)):
        table[cp] = " " if chr(cp) in "\t\n\r\x0b\x0c" else None
    for cp in (0x00A0, 0x2028, 0x2029, 0x202F, 0x205F) + tuple(range(0x2000, 0x200B)):
        table[cp] = " "
    for cp in (0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0xFEFF, 0x00AD, 0xFFFD):
        table[cp] = None
    for cp in range(0xD800, 0xE000):  # lone surrogates (a str holds no other kind): not text, dropped like U+FFFD
        table[cp] = None
    return table


_TABLE = _clean_table()


_SAME_LENGTH = {cp: (" " if v is None else v) for cp, v in _TABLE.items()}


_SPACES = re.compile(r"\s{2,}")


def clean_text(text: str) -> str:
    """Full-width ASCII to half-width, control and zero-width characters out, spaces collapsed."""
    text = text.translate(_TABLE)
    if "  " in text:
        text = _SPACES.sub(" ", text)
    return text.strip()


_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (from JSON's ``"\\ud800"`` or undecodable command-line bytes)
    replaced by U+FFFD, so that it can be encoded, tokenised and echoed back; anything else is left as it is."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def is_blank(text: str) -> bool:
    """Nothing is left of ``text`` once :func:`clean_text` drops control, zero-width and invalid characters."""
    return not clean_text(text)


def normalize_chars(text: str) -> str:
    """The clean-up of :func:`clean_text` one character for one (dropped characters become spaces),
    so character offsets (NER spans, answer starts) stay valid."""
    return text.translate(_SAME_LENGTH)


def clean_words(words: Iterable[str]) -> list[str]:
    """Clean each word of a gold segmentation, dropping words that become empty."""
    out = []
    for w in words:
        w = w.translate(_TABLE).replace(" ", "")
        if w:
            out.append(w)
    return out


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


PAIR_SEPARATOR = "|||"  # a sentence pair written as one line of text: "text_a ||| text_b"


def split_pair(text: str) -> tuple[str, str] | None:
    """``"text_a ||| text_b"`` -> ``(text_a, text_b)``, each stripped; ``None`` when there is no separator."""
    a, sep, b = text.partition(PAIR_SEPARATOR)
    return (a.strip(), b.strip()) if sep else None
