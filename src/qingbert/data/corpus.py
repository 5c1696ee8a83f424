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
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from qingbert.data import builtin
from qingbert.data.text import Stats, clean_text, clean_words, text_hash
from qingbert.errors import QingbertError

TEXT_SUFFIXES = (".txt", ".jsonl")
ENCODINGS = ("utf-8", "utf-8-sig", "gb18030")


# ---------------------------------------------------------------------------
# Unicode clean-up


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

def sniff_encoding(head: bytes) -> str | None:
    """The encoding of a file from its first bytes: ``utf-8-sig`` (a BOM), else ``utf-8`` or ``gb18030`` when the
    whole sample decodes so (a 1 MiB sample loses its cut last line first), else None."""
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
    enc = sniff_encoding(head) or "utf-8"
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
    for src in expand_sources(sources, stats):
        if src.startswith("builtin:"):
            yield from builtin.corpus_records(src, stats)
        else:
            yield from read_file(src, stats, text_field)


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


__all__ = ["split_long", "read_sources", "read_file", "expand_sources", "clean_records", "read_documents",
           "read_corpus"]


JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_corpus(path: str | Path, text_field: str = "text") -> tuple[list[str], list[int], list[int]]:
    """``(texts, line_numbers, empty_lines)`` of a corpus file (see :func:`read_documents`)."""
    texts, lines, empty, _ = read_documents(path, text_field)
    return texts, lines, empty


def read_documents(path: str | Path, text_field: str = "text") -> tuple[list[str], list[int], list[int], list]:
    """``(texts, line_numbers, empty_lines, fields)`` of a text file with one text per line, or of a JSON-lines
    file (``.jsonl`` / ``.ndjson``) with one object per line whose ``text_field`` is the text.

    Lines are stripped of surrounding whitespace; empty lines (and JSON objects with an empty text) are not
    indexed but their (1-based) numbers are returned, so the caller can report them.  ``fields`` holds, per text,
    the other members of its JSON object (``{}`` for plain text), kept with the index and returned with hits.  A
    missing, unreadable, non-UTF-8 or textless file, or a JSON line that is not an object with a string
    ``text_field``, is a clear error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise QingbertError(f"no such corpus file '{path}'",
                            hint="give a text file with one text per line, or a .jsonl file of {\"text\": ...}")
    content = read_utf8(path, "corpus")
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    texts, lines, empty, fields = [], [], [], []
    for n, line in enumerate(content.splitlines(), start=1):
        raw = line.strip()
        extra = {}
        if jsonl and raw:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise QingbertError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})",
                                    hint="one JSON object per line") from None
            if not isinstance(rec, dict):
                raise QingbertError(f"{path}:{n}: a JSON {type(rec).__name__}, not an object",
                                    hint=f'one object per line, e.g. {{"{text_field}": "..."}}')
            if text_field not in rec:
                raise QingbertError(f"{path}:{n}: no '{text_field}' field (fields: {', '.join(sorted(rec)) or 'none'})",
                                    hint="name the text field with --text-field")
            if not isinstance(rec[text_field], str):
                raise QingbertError(f"{path}:{n}: '{text_field}' is a {type(rec[text_field]).__name__}, not a string")
            raw = rec[text_field].strip()
            extra = {k: v for k, v in rec.items() if k != text_field}
        if raw:
            texts.append(raw)
            lines.append(n)
            fields.append(extra)
        else:
            empty.append(n)
    if not texts:
        what = "is empty" if not content else f"has no text ({len(empty)} empty lines)"
        raise QingbertError(f"corpus file '{path}' {what}", hint="one text per line")
    return texts, lines, empty, fields
