"""Readers for Chinese benchmark task files, exactly as they are distributed.

``load_task(name, data_dir, train_file=None, need=())`` reads one task (CLUE, FewCLUE, LCQMC, BQ, ChnSentiCorp,
THUCNews titles, CMRC 2018, DRCD, CLUENER2020, or a built-in set) into a :class:`Task`: its type, its ordered labels
and its splits of examples.  ``load_generic`` reads any JSONL / TSV / CSV file or folder with a column mapping.

Files are read as UTF-8 (a BOM is dropped) or GB18030, sniffed the way ``qingbert prepare`` does
(:func:`qingbert.data.corpus.sniff_encoding`); ``Task.encodings`` says which, per split.  A binary file, or one
that decodes in neither, is an error naming it.

Readers never drop data silently.  A row that cannot be used (malformed JSON, undecodable bytes, empty text, the
label ``-``, a span that does not match its text, ...) is counted in ``Task.skipped`` by reason (and per split in
``Task.split_skipped``), and the first few are kept as ``file:line: reason`` in ``Task.skip_examples``.  A split
file with no usable example at all is an error naming the file and why, and so is a dev/test label that the
training split never uses (with file and line).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qingbert.data import builtin
from qingbert.data.corpus import sniff_encoding
from qingbert.errors import QingbertError, closest

SPLITS = ("train", "dev", "test")
TYPES = ("classification", "pair", "ner", "mrc")
MAX_SKIP_EXAMPLES = 20
DATA_EXTS = (".jsonl", ".json", ".tsv", ".csv", ".txt")


# ---------------------------------------------------------------------------
# examples and tasks


@dataclass
class TextExample:
    """A single sentence (``text_b`` None) or a sentence pair, with an optional label."""

    id: object
    text: str
    text_b: str | None = None
    label: str | None = None


@dataclass
class SpanExample:
    """A text with entity spans ``(start, end_exclusive, type)`` in characters."""

    id: object
    text: str
    entities: list = field(default_factory=list)


@dataclass
class QAExample:
    """A SQuAD-style question; ``answers`` is a list of ``(text, start)``."""

    id: object
    context: str
    question: str
    answers: list = field(default_factory=list)


@dataclass
class Task:
    """A task as read.  Per split: ``files`` (the file read), ``encodings`` (``utf-8``, ``utf-8-sig`` or
    ``gb18030``) and ``split_skipped`` (skip reason -> count); ``accepted`` lists the file names looked for per
    split in ``data_dir`` (None for built-in sets and single files)."""

    name: str
    type: str
    labels: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    skip_examples: list = field(default_factory=list)
    fixed: Counter = field(default_factory=Counter)
    label_names: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    encodings: dict = field(default_factory=dict)
    split_skipped: dict = field(default_factory=dict)
    accepted: dict = field(default_factory=dict)
    data_dir: str | None = None
    _reading: str | None = field(default=None, init=False, repr=False, compare=False)  # the split being read

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        if self._reading is not None:
            self.split_skipped.setdefault(self._reading, Counter())[reason] += 1
        if len(self.skip_examples) < MAX_SKIP_EXAMPLES:
            self.skip_examples.append(f"{where}: {reason}")

    def summary(self) -> str:
        lines = []
        for split, examples in self.splits.items():
            line = f"{self.name} {split}: {len(examples)} examples"
            if self.type in ("classification", "pair"):
                n_lab = sum(1 for e in examples if e.label is not None)
                if n_lab != len(examples):
                    line += f" ({n_lab} labelled)"
            elif self.type == "ner":
                line += f", {sum(len(e.entities) for e in examples)} entities"
            elif self.type == "mrc":
                line += f", {sum(len(e.answers) for e in examples)} answers"
            lines.append(line)
        for split, enc in self.encodings.items():
            if not enc.startswith("utf-8"):
                lines.append(f"{self.name} {split}: read as {enc.upper()} ({self.files.get(split)})")
        lines.append(f"{self.name} labels: {len(self.labels)}")
        skips = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        lines.append(f"{self.name} skipped: {skips}")
        if self.fixed:
            lines.append(f"{self.name} fixed: " + ", ".join(f"{r} {n}" for r, n in sorted(self.fixed.items())))
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# low-level file reading


def _where(path: Path, lineno: int) -> str:
    return f"{path}:{lineno}"


def _not_text(path: Path, why: str) -> QingbertError:
    return QingbertError(f"{path}: not text in UTF-8 or GB18030 ({why})",
                         hint="check that this is the task's text file (not an archive or a spreadsheet); "
                              "other encodings: convert to UTF-8 first, e.g. with iconv")


def _read_bytes(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes and its encoding as ``prepare`` sniffs it (None: the first MiB decodes in neither)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise QingbertError(f"cannot read {path}: {e.strerror or e}") from None
    nul = data.find(b"\x00", 0, 1 << 16)
    if nul != -1:
        raise _not_text(path, f"binary: NUL byte at offset {nul}")
    return data, sniff_encoding(data[:1 << 20])


def _decode(raw: bytes, enc: str) -> str | None:
    try:
        return raw.decode(enc)
    except UnicodeDecodeError:
        return None


def _read_lines(path: Path, task: Task):
    """``(lineno, text)`` for each non-blank line; lines that do not decode are counted skips (``undecodable``).

    When not even the first MiB decodes as a whole, the encoding is the one more lines decode in (UTF-8 on a tie).
    """
    data, enc = _read_bytes(path)
    raw_lines = [(i, raw.rstrip(b"\r")) for i, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    if enc is None:
        decodes = {e: sum(_decode(raw, e) is not None for _, raw in raw_lines) for e in ("utf-8", "gb18030")}
        enc = max(decodes, key=decodes.get)
        if not decodes[enc]:
            raise _not_text(path, "no line decodes in either")
    if task._reading is not None:
        task.encodings[task._reading] = enc
    for i, raw in raw_lines:
        line = _decode(raw, enc)
        if line is None:
            task.skip(_where(path, i), "undecodable")
            continue
        yield i, line


def _read_jsonl(path: Path, task: Task):
    """``(lineno, dict)`` for each JSON-lines record; malformed lines are counted skips."""
    for i, line in _read_lines(path, task):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            task.skip(_where(path, i), "malformed_json")
            continue
        yield i, row


def _read_json(path: Path, task: Task):
    """A whole JSON document, decoded like :func:`_read_lines` but all or nothing."""
    data, enc = _read_bytes(path)
    try:
        text = data.decode(enc or "utf-8")
    except UnicodeDecodeError as e:
        raise _not_text(path, f"{e.reason} at byte {e.start}") from None
    if task._reading is not None:
        task.encodings[task._reading] = enc
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise QingbertError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


# header names of TSV files -> the row keys readers use (other names are kept, lower-cased)
TSV_COLUMNS = {"sentence": "text", "text_a": "text", "sentence1": "text", "title": "text",
               "sentence2": "text_b", "qid": "id", "idx": "id"}


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def _tsv_columns(cols: list, pair: bool) -> dict | None:
    """A headerless row: ``text_a, text_b[, label]`` for pairs; ``text, label`` (or just ``text``) else, or
    ``label, text`` when the first column is an integer and the last is not.  None: wrong number of columns."""
    if pair:
        return dict(zip(("text", "text_b", "label"), cols)) if len(cols) in (2, 3) else None
    if len(cols) == 1:
        return {"text": cols[0]}
    if _is_int(cols[0]) and not _is_int(cols[-1]):
        return {"label": cols[0], "text": "\t".join(cols[1:])}
    return {"text": "\t".join(cols[:-1]), "label": cols[-1]}


def _read_tsv(path: Path, task: Task, pair: bool):
    """``(lineno, row)`` for each data line of a TSV file; ``row`` has the keys ``text``, ``text_b``, ``label``, ``id``
    (the data line's index when no column names one) and any other header names.

    A first line naming a text column (``text``, ``sentence``, ``text_a``, ``sentence1``, ...) is a header;
    without one the columns are read by :func:`_tsv_columns`.
    """
    header, n = None, 0
    for lineno, line in _read_lines(path, task):
        cols = [c.strip() for c in line.split("\t")]
        if header is None and n == 0:
            names = [TSV_COLUMNS.get(c.lower(), c.lower()) for c in cols]
            if "text" in names:
                header = names
                continue
        if header is not None:
            row = dict(zip(header, cols)) if len(cols) == len(header) else None
        else:
            row = _tsv_columns(cols, pair)
        if row is None:
            task.skip(_where(path, lineno), "bad_columns")
        else:
            row["id"] = row.get("id") or n
            yield lineno, row
        n += 1


def label_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    return s or None


def _text(value) -> str:
    if value is None:
        return ""
    return str(value).strip()


# ---------------------------------------------------------------------------
# finding the split files


def _resolve_dir(name: str, data_dir) -> Path:
    if data_dir is None:
        env = os.environ.get("QINGBERT_TASK_DIR")
        if not env:
            raise QingbertError(
                f"task '{name}' reads files: give its data directory",
                hint=f"load_task('{name}', data_dir=...) or set QINGBERT_TASK_DIR to a folder holding {name}/",
            )
        data_dir = Path(env) / name
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise QingbertError(f"data directory for task '{name}' not found: {data_dir}")
    return data_dir


def _folder_files(d: Path) -> str:
    """The data-like files in ``d``, for error hints."""
    names = sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix.lower() in DATA_EXTS)
    return ", ".join(names[:30]) + (", ..." if len(names) > 30 else "") if names else "(none)"


def _one_of(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def missing_splits_error(task: Task, needed=("train", "dev")) -> QingbertError:
    """The error for a task without some of the ``needed`` splits: which are missing, every file name looked for
    per missing split, and the data files the folder does hold."""
    missing = [s for s in needed if s not in task.splits] or list(needed)
    where = f" in {task.data_dir}" if task.data_dir else ""
    looked = "; ".join(f"{s}: {', '.join(task.accepted[s])}" for s in missing if task.accepted.get(s))
    hint = f"looked for {looked}" if looked else f"task '{task.name}' has the splits {', '.join(task.splits)}"
    if task.data_dir:
        hint += f"; found: {_folder_files(Path(task.data_dir))}"
    return QingbertError(f"task '{task.name}': no {_one_of(missing)} file{where}", hint=hint)


def _train_file(task: Task, d: Path, train_file) -> Path:
    """``train_file``: a name inside ``d`` or a path."""
    for p in (d / train_file, Path(train_file)):
        if p.is_file():
            return p
    raise QingbertError(f"task '{task.name}': train file '{train_file}' not found in {d}",
                        hint=f"files there: {_folder_files(d)}")


def _split_files(task: Task, data_dir, candidates: dict, train_file=None) -> dict:
    """split -> file: the first of each split's ``candidates`` present in the task's folder (``train_file``, when
    given, for train).  No file for any split is an error listing the names looked for."""
    d = _resolve_dir(task.name, data_dir)
    task.data_dir = str(d)
    task.accepted = {s: list(names) for s, names in candidates.items()}
    files = {}
    for split, names in candidates.items():
        if split == "train" and train_file is not None:
            files[split] = _train_file(task, d, train_file)
            continue
        found = next((d / n for n in names if (d / n).is_file()), None)
        if found is not None:
            files[split] = found
    if not files:
        raise missing_splits_error(task, SPLITS)
    return files


def _each_split(task: Task, files: dict):
    """``(split, path)`` for each split file, recording it in ``task.files`` and counting its skips per split."""
    for split, path in files.items():
        task.files[split] = str(path)
        task._reading = split
        yield split, path
    task._reading = None


# ---------------------------------------------------------------------------
# records -> splits and labels


def _text_record(task: Task, split: str, where: str, ex_id, text, text_b, label, labelled: bool = True):
    """A classification/pair row as a record ``(where, example, labels)``, or None after counting why it is skipped:
    the label ``-`` (``label_dash``), no label outside the test split (``missing_label``), an empty text."""
    text, text_b = _text(text), (_text(text_b) if task.type == "pair" else None)
    if label == "-":
        reason = "label_dash"
    elif labelled and label is None and split != "test":
        reason = "missing_label"
    elif not text or (task.type == "pair" and not text_b):
        reason = "empty_text"
    else:
        return where, TextExample(ex_id, text, text_b, label), ([label] if label is not None else [])
    task.skip(where, reason)
    return None


def _no_examples_error(task: Task, split: str) -> QingbertError:
    path = task.files.get(split, f"task '{task.name}' {split} split")
    skips = task.split_skipped.get(split)
    if skips:
        n = sum(skips.values())
        unit = ("question" if task.type == "mrc" else "line") + ("s" if n != 1 else "")
        why = f"{n} {unit} skipped: " + ", ".join(f"{r} {c}" for r, c in skips.most_common())
        first = next((e for e in task.skip_examples if e.startswith(str(path))), None)
        hint = f"first: {first}" if first else None
    elif Path(path).is_file() and not Path(path).read_bytes().strip():
        why, hint = "empty file", "check that the download or extraction finished"
    else:
        why, hint = "no data " + ("questions" if task.type == "mrc" else "lines"), None
    return QingbertError(f"{path}: no usable examples ({why})", hint=hint)


def _sort_labels(labels) -> list:
    labels = list(labels)
    if labels and all(str(lab).lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=lambda lab: int(lab))
    return sorted(labels)


def _finish(task: Task, records: dict, label_order: list | None = None) -> None:
    """Check that every split has examples, set ``task.labels`` from train (or the first labelled split), check the
    other splits' labels, and set ``task.splits``.

    ``records`` maps split -> list of ``(where, example, labels_used)``.
    """
    for split, recs in records.items():
        if not recs:
            raise _no_examples_error(task, split)
    base = "train" if "train" in records else None
    if base is None:
        for s, recs in records.items():
            if any(used for _, _, used in recs):
                base = s
                break
    known: set = set()
    if base is not None:
        for _, _, used in records[base]:
            known.update(used)
    if label_order:
        ordered = [lab for lab in label_order if lab in known] + _sort_labels(known - set(label_order))
    else:
        ordered = _sort_labels(known)
    task.labels = ordered
    for split, recs in records.items():
        if split == base:
            continue
        for where, _, used in recs:
            for lab in used:
                if lab not in known:
                    hint = closest(lab, ordered) if ordered else None
                    raise QingbertError(
                        f"{where}: label '{lab}' does not occur in the {base} split of task '{task.name}'",
                        hint=f"did you mean '{hint}'?" if hint else f"{base} labels: {', '.join(ordered[:20])}",
                    )
    task.splits = {s: [ex for _, ex, _ in recs] for s, recs in records.items()}


# ---------------------------------------------------------------------------
# JSON-lines classification (CLUE / FewCLUE), or their TSV mirrors


TSV_SUFFIXES = (".tsv", ".txt")
TSV_FILES = {s: [s + e for e in TSV_SUFFIXES] for s in SPLITS}


CLUE_FILES = {
    "train": ["train.json", "train_few_all.json", "train.jsonl"],
    "dev": ["dev.json", "dev_few_all.json", "dev.jsonl"],
    "test": ["test.json", "test_public.json", "test.jsonl"],
}
# OCNLI is distributed with train.50k.json and train.3k.json (no train.json)
OCNLI_FILES = {**CLUE_FILES, "train": ["train.50k.json", "train.json", "train.3k.json", "train.jsonl"]}


def _with_tsv(candidates: dict) -> dict:
    return {s: names + TSV_FILES[s] for s, names in candidates.items()}


def _fields(a: str, b: str | None = None):
    def get(row, task, where):
        return _text(row.get(a)), (_text(row.get(b)) if b else None)

    return get


def _clue_reader(task_type: str, fields=None, row_to_texts: Callable | None = None, desc_fields=(), label_file=None,
                 files: dict = CLUE_FILES):
    """Build a reader for a CLUE-style JSON-lines task.

    ``fields``: the JSON keys of the text (and text_b); such tasks also read TSV mirrors (``train.tsv``, ...)
    through :func:`_read_tsv`.  Else ``row_to_texts(row, task, where)`` returns ``(text, text_b)`` or None (already
    a counted skip).
    """
    if fields is not None:
        row_to_texts, files = _fields(*fields), _with_tsv(files)
    tsv_texts = _fields("text", "text_b" if task_type == "pair" else None)

    def read(name: str, data_dir, train_file=None) -> Task:
        task = Task(name=name, type=task_type)
        paths = _split_files(task, data_dir, files, train_file)
        records: dict = {}
        for split, path in _each_split(task, paths):
            tsv = path.suffix.lower() in TSV_SUFFIXES
            rows = _read_tsv(path, task, task_type == "pair") if tsv else _read_jsonl(path, task)
            texts_of = tsv_texts if tsv else row_to_texts
            recs = records[split] = []
            for n, (lineno, row) in enumerate(rows):
                where = _where(path, lineno)
                label = label_str(row.get("label"))
                desc = next((_text(row[f]) for f in desc_fields if row.get(f) is not None), None)
                if label is None and desc:
                    label = desc
                texts = texts_of(row, task, where)
                if texts is None:
                    continue
                rec = _text_record(task, split, where, row.get("id", row.get("idx", n)), *texts, label)
                if rec is None:
                    continue
                if label is not None and desc and desc != label:
                    task.label_names.setdefault(label, desc)
                recs.append(rec)
        order = _label_order_file(Path(task.data_dir), label_file, task) if label_file else None
        _finish(task, records, order)
        return task

    return read


def _label_order_file(d: Path, names, task: Task) -> list | None:
    for n in names:
        p = d / n
        if p.is_file():
            order = []
            for _, row in _read_jsonl(p, Task(name="", type="")):
                lab = label_str(row.get("label"))
                if lab is not None:
                    order.append(lab)
                    desc = row.get("label_desc") or row.get("label_des")
                    if desc:
                        task.label_names.setdefault(lab, str(desc))
            return order
    return None


def _csl_texts(row, task, where):
    kw = row.get("keyword")
    if isinstance(kw, list):
        text = " ".join(_text(k) for k in kw if _text(k))
    else:
        text = _text(kw)
    return text, _text(row.get("abst"))


def _wsc_texts(row, task, where):
    text = row.get("text")
    target = row.get("target")
    if not isinstance(text, str) or not text.strip():
        task.skip(where, "empty_text")
        return None
    if not isinstance(target, dict):
        task.skip(where, "missing_target")
        return None
    spans = []
    for k, (left, right) in ((1, ("_", "_")), (2, ("[", "]"))):
        try:
            start = int(target[f"span{k}_index"])
            span_text = str(target[f"span{k}_text"])
        except (KeyError, TypeError, ValueError):
            task.skip(where, "missing_target")
            return None
        if not span_text or text[start:start + len(span_text)] != span_text:
            task.skip(where, "span_text_mismatch")
            return None
        spans.append((start, start + len(span_text), left, right))
    (s1, e1, _, _), (s2, e2, _, _) = spans
    if s1 < e2 and s2 < e1:
        task.skip(where, "overlapping_spans")
        return None
    out = text
    for start, end, left, right in sorted(spans, reverse=True):
        out = out[:start] + left + out[start:end] + right + out[end:]
    return out, None


# ---------------------------------------------------------------------------
# TSV tasks


def _class_names(path: Path, task: Task) -> list | None:
    """THUCNews ``class.txt``: the label name of each label id, one a line."""
    if not path.is_file():
        return None
    names = [line.strip() for _, line in _read_lines(path, task)]
    task.label_names.update({str(i): nm for i, nm in enumerate(names)})
    return names


def _tsv_reader(task_type: str, class_file: str | None = None):
    """Build a reader for a TSV task: LCQMC / BQ (``text_a<TAB>text_b<TAB>label``, no header), ChnSentiCorp (a
    header such as ``label<TAB>text_a``), THUCNews (``title<TAB>label_id``, with ``class_file`` naming the ids)."""

    def read(name: str, data_dir, train_file=None) -> Task:
        task = Task(name=name, type=task_type)
        paths = _split_files(task, data_dir, TSV_FILES, train_file)
        names = _class_names(Path(task.data_dir) / class_file, task) if class_file else None
        records: dict = {}
        for split, path in _each_split(task, paths):
            recs = records[split] = []
            for lineno, row in _read_tsv(path, task, task_type == "pair"):
                where = _where(path, lineno)
                label = label_str(row.get("label"))
                if names is not None and label not in (None, "-"):
                    if not label.isdigit() or int(label) >= len(names):
                        raise QingbertError(f"{where}: label id '{label}' is not in {class_file} ({len(names)} "
                                            "classes)")
                    label = names[int(label)]
                rec = _text_record(task, split, where, row["id"], row.get("text"), row.get("text_b"), label)
                if rec is not None:
                    recs.append(rec)
        _finish(task, records, names)
        return task

    return read


# ---------------------------------------------------------------------------
# NER


def _cluener_entities(text: str, label) -> tuple[list, str | None]:
    """``(spans, None)`` from a CLUENER label, or ``(_, reason)`` when it is malformed or does not match the text."""
    if not isinstance(label, dict):
        return [], "malformed_label"
    ents = []
    for typ, by_entity in label.items():
        if not isinstance(by_entity, dict):
            return [], "malformed_label"
        for entity, spans in by_entity.items():
            for span in spans or []:
                try:
                    start, end = int(span[0]), int(span[1])
                except (TypeError, ValueError, IndexError):
                    return [], "malformed_label"
                if start < 0 or text[start:end + 1] != entity:
                    return [], "span_text_mismatch"
                ents.append((start, end + 1, str(typ)))
    return sorted(ents), None


def _read_cluener(name: str, data_dir, train_file=None) -> Task:
    """CLUENER2020: ``{"text", "label": {type: {entity: [[start, end_inclusive], ...]}}}``."""
    task = Task(name=name, type="ner")
    paths = _split_files(task, data_dir, CLUE_FILES, train_file)
    records: dict = {}
    for split, path in _each_split(task, paths):
        recs = records[split] = []
        for n, (lineno, row) in enumerate(_read_jsonl(path, task)):
            where = _where(path, lineno)
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                task.skip(where, "empty_text")
                continue
            ents, bad = _cluener_entities(text, row.get("label") or {})
            if bad:
                task.skip(where, bad)
                continue
            recs.append((where, SpanExample(row.get("id", n), text, ents), sorted({t for _, _, t in ents})))
    _finish(task, records)
    return task


# ---------------------------------------------------------------------------
# MRC


def _fix_start(context: str, text: str, start) -> int | None:
    """The occurrence of ``text`` in ``context`` nearest to ``start``, or None."""
    found, i = [], context.find(text)
    while i != -1:
        found.append(i)
        i = context.find(text, i + 1)
    if not found:
        return None
    try:
        s = int(start)
    except (TypeError, ValueError):
        s = 0
    return min(found, key=lambda p: (abs(p - s), p))


def _squad_questions(path: Path, doc, task: Task):
    """``(where, QAExample)`` for each usable question of a SQuAD-style document; the others are counted skips."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise QingbertError(f"{path}: not SQuAD-style JSON (expected a top-level 'data' list)")
    for a_i, article in enumerate(doc["data"]):
        for p_i, para in enumerate(article.get("paragraphs") or []):
            context = para.get("context")
            for q_i, qa in enumerate(para.get("qas") or []):
                qid = qa.get("id", f"{a_i}-{p_i}-{q_i}")
                where = f"{path}: question {qid}"
                question = _text(qa.get("question"))
                if not isinstance(context, str) or not context.strip():
                    task.skip(where, "empty_context")
                    continue
                if not question:
                    task.skip(where, "empty_question")
                    continue
                raw = qa.get("answers") or []
                answers = []
                for ans in raw:
                    t = ans.get("text") if isinstance(ans, dict) else None
                    if not isinstance(t, str) or not t:
                        task.skip(where, "empty_answer")
                        continue
                    s = ans.get("answer_start")
                    if isinstance(s, int) and context[s:s + len(t)] == t:
                        answers.append((t, s))
                        continue
                    fixed = _fix_start(context, t, s)
                    if fixed is None:
                        task.skip(where, "answer_not_in_context")
                        continue
                    task.fixed["fixed_answer_start"] += 1
                    answers.append((t, fixed))
                if raw and not answers:
                    task.skip(where, "no_valid_answer")
                    continue
                yield where, QAExample(qid, context, question, answers)


def _squad_reader(file_candidates: dict):
    def read(name: str, data_dir, train_file=None) -> Task:
        task = Task(name=name, type="mrc")
        paths = _split_files(task, data_dir, file_candidates, train_file)
        records = {split: [(where, q, []) for where, q in _squad_questions(path, _read_json(path, task), task)]
                   for split, path in _each_split(task, paths)}
        _finish(task, records)
        return task

    return read


# ---------------------------------------------------------------------------
# built-in sets


def _no_train_file(name: str, train_file) -> None:
    if train_file is not None:
        raise QingbertError(f"task '{name}' is built in: it has no train file to replace with '{train_file}'")


def _builtin_reviews(name: str, data_dir=None, train_file=None) -> Task:
    _no_train_file(name, train_file)
    task = Task(name=name, type="classification")
    records = {}
    for split in SPLITS:
        records[split] = [
            (f"{name}:{split}:{i}", TextExample(i, text, None, label), [label])
            for i, (text, label) in enumerate(builtin.reviews(split))
        ]
    _finish(task, records)
    return task


NER_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def pos_to_spans(words, tags) -> tuple[str, list]:
    """Text and PER/LOC/ORG spans from People's Daily words and POS tags.

    Consecutive ``nr`` tokens (surname + given name, e.g. 江/nr 泽民/nr) form one
    person; places and organisations are one span per token.
    """
    text_parts, spans, pos = [], [], 0
    prev_tag = None
    for w, t in zip(words, tags):
        typ = NER_TAGS.get(t)
        if typ is not None:
            if typ == "PER" and prev_tag == "nr" and spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(w), typ)
            else:
                spans.append((pos, pos + len(w), typ))
        text_parts.append(w)
        pos += len(w)
        prev_tag = t
    return "".join(text_parts), spans


def _builtin_peoples_daily(name: str, data_dir=None, train_file=None) -> Task:
    _no_train_file(name, train_file)
    task = Task(name=name, type="ner")
    records = {}
    for split in SPLITS:
        recs = records[split] = []
        for i, (words, tags) in enumerate(builtin.peoples_daily(split)):
            text, spans = pos_to_spans(words, tags)
            recs.append((f"{name}:{split}:{i}", SpanExample(i, text, spans), sorted({t for _, _, t in spans})))
    _finish(task, records, ["PER", "LOC", "ORG"])
    task.labels = ["PER", "LOC", "ORG"]
    return task


# ---------------------------------------------------------------------------
# registry

PAIR_FIELDS = ("sentence1", "sentence2")

#: name -> reader ``(name, data_dir, train_file=None) -> Task``
TASKS: dict[str, Callable[..., Task]] = {
    "afqmc": _clue_reader("pair", PAIR_FIELDS),
    "tnews": _clue_reader("classification", ("sentence",), desc_fields=("label_desc",),
                          label_file=("labels.json", "label_index2en2zh.json")),
    "iflytek": _clue_reader("classification", ("sentence",), desc_fields=("label_des", "label_desc"),
                            label_file=("labels.json",)),
    "cmnli": _clue_reader("pair", PAIR_FIELDS),
    "ocnli": _clue_reader("pair", PAIR_FIELDS, files=OCNLI_FILES),
    "cluewsc2020": _clue_reader("classification", row_to_texts=_wsc_texts),
    "csl": _clue_reader("pair", row_to_texts=_csl_texts),
    "eprstmt": _clue_reader("classification", ("sentence",)),
    "bustm": _clue_reader("pair", PAIR_FIELDS),
    "lcqmc": _tsv_reader("pair"),
    "bq": _tsv_reader("pair"),
    "chnsenticorp": _tsv_reader("classification"),
    "thucnews": _tsv_reader("classification", class_file="class.txt"),
    "cmrc2018": _squad_reader({
        "train": ["cmrc2018_train.json", "train.json"],
        "dev": ["cmrc2018_dev.json", "dev.json"],
        "test": ["cmrc2018_test.json", "cmrc2018_trial.json", "test.json"],
    }),
    "drcd": _squad_reader({
        "train": ["DRCD_training.json", "DRCD_train.json", "train.json"],
        "dev": ["DRCD_dev.json", "dev.json"],
        "test": ["DRCD_test.json", "test.json"],
    }),
    "cluener": _read_cluener,
    "builtin:reviews-sentiment": _builtin_reviews,
    "builtin:peoples-daily-ner": _builtin_peoples_daily,
}
ALIASES = {"wsc": "cluewsc2020", "cluewsc": "cluewsc2020", "cluener2020": "cluener", "bq_corpus": "bq"}


def load_task(name: str, data_dir=None, train_file=None, need=()) -> Task:
    """Read task ``name`` from ``data_dir`` (the folder holding its train/dev/test files).

    ``train_file`` (a file name inside ``data_dir``, or a path) replaces the default train file, e.g.
    ``train.3k.json`` for OCNLI.  ``need`` lists splits the caller cannot do without (e.g. ``("train", "dev")``):
    a missing one is :func:`missing_splits_error`.
    """
    key = ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in TASKS:
        hint = closest(str(name), list(TASKS) + list(ALIASES))
        raise QingbertError(
            f"unknown task '{name}'",
            hint=(f"did you mean '{hint}'? " if hint else "") + "available: " + ", ".join(TASKS),
        )
    task = TASKS[key](key, data_dir, train_file)
    if any(s not in task.splits for s in need):
        raise missing_splits_error(task, need)
    return task


# ---------------------------------------------------------------------------
# generic reader


def _column(row, c, where: str):
    if c is None:
        return None
    if isinstance(row, dict):
        if c not in row:
            raise QingbertError(f"{where}: no column '{c}'", hint=f"columns: {', '.join(map(str, row))}")
        return row[c]
    return row[c] if c < len(row) else None


def _generic_rows(path: Path, task: Task, header: bool):
    """``(lineno, row)`` where row is a dict (JSON / headed tables) or a list (headerless tables)."""
    ext = path.suffix.lower()
    if ext in (".jsonl", ".json"):
        yield from _read_jsonl(path, task)
        return
    names = None
    for lineno, line in _read_lines(path, task):
        if ext == ".csv":
            try:
                cols = next(csv.reader(io.StringIO(line)))
            except (csv.Error, StopIteration):
                task.skip(_where(path, lineno), "bad_columns")
                continue
        else:
            cols = line.split("\t")
        if header and names is None:
            names = [c.strip() for c in cols]
            continue
        if names is not None:
            if len(cols) != len(names):
                task.skip(_where(path, lineno), "bad_columns")
                continue
            yield lineno, dict(zip(names, cols))
        else:
            yield lineno, cols


def load_generic(path_or_dir, type: str, text_col, text_b_col=None, label_col=None, id_col=None,
                 name: str | None = None) -> Task:
    """Read any JSONL / TSV / CSV classification data with a column mapping.

    ``path_or_dir`` is one file (split ``train``, or ``dev``/``test`` when the file
    is named so) or a folder holding ``train.*``, ``dev.*``, ``test.*``.  Columns
    are names (JSON keys, or a table's header row) or 0-based ints (headerless tables).
    """
    if type not in ("classification", "pair"):
        raise QingbertError(f"generic reader type must be 'classification' or 'pair', not '{type}'")
    if type == "pair" and text_b_col is None:
        raise QingbertError("generic reader type 'pair' needs text_b_col")
    p = Path(path_or_dir)
    task = Task(name=name or p.stem, type=type)
    if p.is_dir():
        files = _split_files(task, p, {s: [s + ext for ext in DATA_EXTS] for s in SPLITS})
    elif p.is_file():
        files = {p.stem if p.stem in SPLITS else "train": p}
    else:
        raise QingbertError(f"missing file {p}")
    cols = [c for c in (text_col, text_b_col, label_col, id_col) if c is not None]
    named = [isinstance(c, str) for c in cols]
    if any(named) and not all(named):
        raise QingbertError("generic reader columns must be all names or all 0-based indexes")
    header = all(named)
    records: dict = {}
    for split, path in _each_split(task, files):
        recs = records[split] = []
        for n, (lineno, row) in enumerate(_generic_rows(path, task, header)):
            where = _where(path, lineno)

            def get(c, row=row, where=where):
                return _column(row, c, where)

            if isinstance(row, list) and len(row) <= max(c for c in cols if c != label_col or split != "test"):
                task.skip(where, "bad_columns")
                continue
            if isinstance(row, dict) and label_col is not None and split == "test" and label_col not in row:
                label = None
            else:
                label = label_str(get(label_col))
            ex_id = get(id_col) if id_col is not None else n
            rec = _text_record(task, split, where, ex_id, get(text_col), get(text_b_col), label,
                               labelled=label_col is not None)
            if rec is not None:
                recs.append(rec)
    _finish(task, records)
    return task


__all__ = [
    "ALIASES",
    "TASKS",
    "QAExample",
    "SpanExample",
    "Task",
    "TextExample",
    "load_generic",
    "load_task",
    "missing_splits_error",
    "pos_to_spans",
]
