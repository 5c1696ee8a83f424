"""Corpus stage: read text sources, clean them, drop duplicates, cut over-long lines.

A *source* is a built-in corpus name (``builtin:peoples-daily``), a ``.txt`` file
(one text per line), a ``.jsonl`` file (one JSON object per line with a text
field), a ``.gz`` of either, or a folder of such files.  Reading never raises on a
bad line: it is counted in :class:`Stats` with its file and line number, and a
file that cannot be read at all (binary, missing) is reported the same way or
raises :class:`~qingbert.errors.QingbertError` with a one-line message.

A *record* is ``(text, words)``: ``words`` is a gold word segmentation (list of
strings whose concatenation is ``text``) for sources that carry one, else ``None``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from qingbert.errors import QingbertError

TEXT_SUFFIXES = (".txt", ".jsonl")
ENCODINGS = ("utf-8", "utf-8-sig", "gb18030")
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


# ---------------------------------------------------------------------------
# Unicode clean-up

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


# ---------------------------------------------------------------------------
# Splitting over-long lines at sentence ends

SENTENCE_END = "。！？!?；;…"
_SENT_RE = re.compile(r"[^。！？!?；;…]*[。！？!?；;…]+[”’」』）)\"']*|[^。！？!?；;…]+$")


def _pack_pieces(units: list, lengths: list[int], max_chars: int) -> tuple[list[list], int]:
    """Greedily join consecutive units into pieces of at most ``max_chars`` characters."""
    pieces, cur, cur_len = [], [], 0
    for u, n in zip(units, lengths):
        if cur and cur_len + n > max_chars:
            pieces.append(cur)
            cur, cur_len = [], 0
        cur.append(u)
        cur_len += n
    if cur:
        pieces.append(cur)
    return pieces, 0


def split_long(text: str, words: list[str] | None, max_chars: int) -> tuple[list[tuple[str, list[str] | None]], int]:
    """Cut a record longer than ``max_chars`` at sentence ends.

    Sentences longer than ``max_chars`` themselves are cut hard (between words
    when a segmentation is known).  Returns the pieces and the number of hard cuts.
    """
    if len(text) <= max_chars:
        return [(text, words)], 0
    hard = 0
    if words is None:
        sentences = _SENT_RE.findall(text) or [text]
        units = []
        for s in sentences:
            if len(s) > max_chars:
                hard += (len(s) - 1) // max_chars
                units.extend(s[i:i + max_chars] for i in range(0, len(s), max_chars))
            else:
                units.append(s)
        pieces, _ = _pack_pieces(units, [len(u) for u in units], max_chars)
        out = [("".join(p).strip(), None) for p in pieces]
        return [(t, None) for t, _ in out if t], hard
    # gold words: sentences end after a word made of sentence-end punctuation
    sentences, cur = [], []
    for w in words:
        cur.append(w)
        if w[-1] in SENTENCE_END:
            sentences.append(cur)
            cur = []
    if cur:
        sentences.append(cur)
    units = []
    for s in sentences:
        n = sum(map(len, s))
        if n > max_chars:
            chunk, chunk_len = [], 0
            for w in s:
                if chunk and chunk_len + len(w) > max_chars:
                    units.append(chunk)
                    hard += 1
                    chunk, chunk_len = [], 0
                chunk.append(w)
                chunk_len += len(w)
            units.append(chunk)
        else:
            units.append(s)
    pieces, _ = _pack_pieces(units, [sum(map(len, u)) for u in units], max_chars)
    out = []
    for p in pieces:
        ws = [w for unit in p for w in unit]
        out.append(("".join(ws), ws))
    return out, hard


# ---------------------------------------------------------------------------
# Reading files

def _sniff_encoding(head: bytes) -> str | None:
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    sample = head
    if len(head) >= 1 << 20:  # a cut sample: drop the partial last line
        sample = head[: head.rfind(b"\n") + 1] or head[:-4]
    for enc in ("utf-8", "gb18030"):
        try:
            sample.decode(enc)
            return enc
        except UnicodeDecodeError:
            pass
    return None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suf in TEXT_SUFFIXES:
        if name.endswith(suf):
            return suf[1:]
    return None


def expand_sources(sources: Iterable[str], stats: Stats) -> list[str]:
    """Turn folders into the sorted list of readable files inside them."""
    out = []
    for src in sources:
        if src.startswith("builtin:"):
            out.append(src)
            continue
        p = Path(src)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            usable = [f for f in files if _kind(f)]
            for f in files:
                if not _kind(f) and not f.name.startswith("."):
                    stats.skipped_files.append({"path": str(f), "reason": "not .txt/.jsonl(.gz)"})
            if not usable:
                raise QingbertError(f"{src}: folder has no .txt, .jsonl or .gz files")
            out.extend(str(f) for f in usable)
        elif p.is_file():
            if not _kind(p):
                raise QingbertError(f"{src}: unsupported file type (use .txt, .jsonl, or a .gz of those)")
            out.append(str(p))
        else:
            raise QingbertError(f"{src}: no such file or folder (and not a builtin: name)")
    return out


def read_utf8(path: str | Path, what: str = "file") -> str:
    """A whole UTF-8 text file (a BOM is dropped); an unreadable or non-UTF-8 file is a clear error naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise QingbertError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise QingbertError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def input_lines(texts: list | None, path: str | None) -> tuple[list[str], int]:
    """Command-line inputs: the ``--text`` values plus one text per line of ``--input`` (a file, or ``-`` for
    stdin); returns ``(texts, empty)`` with ``empty`` the number of blank input lines (kept: callers decide)."""
    import sys

    out = list(texts or [])
    lines: list[str] = []
    if path:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        elif not Path(path).is_file():
            raise QingbertError(f"no such input file '{path}'")
        else:
            lines = read_utf8(path, "input file").splitlines()
    return out + lines, sum(1 for t in lines if not t.strip())


def read_file(path: str, stats: Stats, text_field: str = "text") -> Iterator[tuple[str, None]]:
    """Yield the raw texts of one .txt/.jsonl(.gz) file; bad lines are counted in ``stats``."""
    p = Path(path)
    kind = _kind(p)
    try:
        with _open_binary(p) as fh:
            head = fh.read(1 << 20)
    except (OSError, EOFError) as e:
        stats.skipped_files.append({"path": path, "reason": f"cannot read: {e}"})
        stats.dropped["unreadable_file"] += 1
        return
    if b"\x00" in head[:65536]:
        pos = head.index(b"\x00")
        stats.skipped_files.append({"path": path, "reason": f"binary file (NUL byte at offset {pos})"})
        stats.dropped["binary_file"] += 1
        return
    enc = _sniff_encoding(head) or "utf-8"
    info = {"path": path, "encoding": enc, "lines": 0}
    stats.files.append(info)
    try:
        with _open_binary(p) as fh:
            for lineno, raw in enumerate(fh, 1):
                info["lines"] += 1
                stats.lines_read += 1
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode(enc)
                except UnicodeDecodeError:
                    try:  # one odd line in an otherwise consistent file
                        line = raw.decode("gb18030" if enc != "gb18030" else "utf-8")
                    except UnicodeDecodeError:
                        stats.skip("undecodable", f"{where} (not {enc})")
                        continue
                stats.chars_read += len(line)
                if kind == "jsonl":
                    line = line.strip()
                    if not line:
                        stats.skip("empty", where)
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        stats.skip("bad_json", f"{where} ({e.msg} at column {e.colno})")
                        continue
                    text = obj.get(text_field) if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        stats.skip("missing_text_field", f"{where} (no string field '{text_field}')")
                        continue
                    yield text, None
                else:
                    yield line, None
    except (OSError, EOFError) as e:  # truncated .gz and the like
        stats.skip("truncated_file", f"{path}:{info['lines']} ({e})")


Record = tuple[str, "list[str] | None"]


def read_sources(sources: Iterable[str], stats: Stats, text_field: str = "text") -> Iterator[Record]:
    """Yield raw records from every source, in order."""
    from qingbert import builtin

    for src in expand_sources(sources, stats):
        if src.startswith("builtin:"):
            yield from builtin.corpus_records(src, stats)
        else:
            yield from read_file(src, stats, text_field)


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def clean_records(
    records: Iterable[tuple[str, list[str] | None]],
    stats: Stats,
    *,
    dedup: bool = True,
    min_chars: int = 2,
    max_chars: int = 510,
) -> Iterator[tuple[str, list[str] | None, bytes]]:
    """Clean, dedup, split and length-filter records; yields ``(text, words, hash)``.

    The hash is of the whole cleaned line (before splitting); it decides the
    train/eval split downstream, so all pieces of a line land in the same split.
    """
    seen: set[bytes] = set()
    for text, words in records:
        if words is not None:
            words = clean_words(words)
            text = "".join(words)
        else:
            text = clean_text(text)
        if not text:
            stats.dropped["empty"] += 1
            continue
        h = text_hash(text)
        if dedup:
            if h in seen:
                stats.dropped["duplicate"] += 1
                continue
            seen.add(h)
        pieces, hard = split_long(text, words, max_chars)
        if len(pieces) > 1:
            stats.long_lines += 1
            stats.pieces_from_long_lines += len(pieces)
        stats.hard_cuts += hard
        for t, w in pieces:
            if len(t) < min_chars:
                stats.dropped["too_short"] += 1
                continue
            stats.records_kept += 1
            stats.chars_kept += len(t)
            yield t, w, h


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


__all__ = [
    "Stats", "summarize", "clean_text", "clean_words", "split_long", "read_sources", "read_file",
    "expand_sources", "clean_records", "text_hash", "is_cjk",
]
