"""Readers for Chinese benchmark task files, exactly as they are distributed.

``load_task(name, data_dir)`` reads one task (CLUE, FewCLUE, LCQMC, BQ,
ChnSentiCorp, THUCNews titles, CMRC 2018, DRCD, CLUENER2020, or a built-in set)
into a :class:`Task`: its type, its ordered labels and its splits of examples.

Readers never drop data silently.  A row that cannot be used (malformed JSON,
undecodable bytes, empty text, NLI label ``-``, a span that does not match its
text, ...) is counted in ``Task.skipped`` by reason, and the first few are kept
as ``file:line: reason`` in ``Task.skip_examples``.  A dev/test label that the
training split never uses is an error naming the file and line.
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
from qingbert.data.corpus import read_utf8
from qingbert.errors import QingbertError, closest

SPLITS = ("train", "dev", "test")
TYPES = ("classification", "pair", "ner", "mrc")
MAX_SKIP_EXAMPLES = 20


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
    name: str
    type: str
    labels: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    skip_examples: list = field(default_factory=list)
    fixed: Counter = field(default_factory=Counter)
    label_names: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
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


def _read_lines(path: Path, task: Task):
    """``(lineno, text)`` for each non-blank line; undecodable lines are counted skips."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise QingbertError(f"cannot read {path}: {e.strerror or e}") from None
    if data.startswith(b"\xef\xbb\xbf"):  # utf-8-sig
        data = data[3:]
    for i, raw in enumerate(data.split(b"\n"), 1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            task.skip(_where(path, i), "undecodable")
            continue
        yield i, line


def _read_jsonl(path: Path, task: Task):
    """``(lineno, dict)`` for each JSON-lines record; malformed lines are counted skips."""
    for i, line in _read_lines(path, task):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            task.skip(_where(path, i), "malformed_json")
            continue
        if not isinstance(row, dict):
            task.skip(_where(path, i), "malformed_json")
            continue
        yield i, row


def _read_json(path: Path):
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise QingbertError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


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


def _find_split_files(data_dir: Path, candidates: dict) -> dict:
    found = {}
    for split, names in candidates.items():
        for n in names:
            p = data_dir / n
            if p.is_file():
                found[split] = p
                break
    return found


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


def _require_files(name: str, data_dir: Path, candidates: dict) -> dict:
    files = _find_split_files(data_dir, candidates)
    if not files:
        expected = candidates["train"][0]
        raise QingbertError(
            f"task '{name}': missing file {data_dir / expected}",
            hint="expected " + " / ".join(c[0] for c in candidates.values()) + f" in {data_dir}",
        )
    return files


def _sort_labels(labels) -> list:
    labels = list(labels)
    if labels and all(str(lab).lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=lambda lab: int(lab))
    return sorted(labels)


def _finish_labels(task: Task, records: dict, label_order: list | None = None) -> None:
    """Set ``task.labels`` from train (or the first labelled split) and check the other splits.

    ``records`` maps split -> list of ``(where, example, labels_used)``.
    """
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
# JSON-lines classification (CLUE / FewCLUE)

CLUE_FILES = {
    "train": ["train.json", "train_few_all.json", "train.jsonl"],
    "dev": ["dev.json", "dev_few_all.json", "dev.jsonl"],
    "test": ["test.json", "test_public.json", "test.jsonl"],
}


def _clue_reader(task_type: str, row_to_texts: Callable, desc_fields=(), label_file=None, drop_dash=False):
    """Build a reader for a CLUE-style JSON-lines task.

    ``row_to_texts(row, task, where)`` returns ``(text, text_b)`` or None (already counted skip).
    """

    def read(name: str, data_dir) -> Task:
        d = _resolve_dir(name, data_dir)
        task = Task(name=name, type=task_type)
        files = _require_files(name, d, CLUE_FILES)
        task.files = {s: str(p) for s, p in files.items()}
        records: dict = {}
        for split, path in files.items():
            recs = records[split] = []
            n = -1
            for lineno, row in _read_jsonl(path, task):
                n += 1
                where = _where(path, lineno)
                label = label_str(row.get("label"))
                desc = None
                for f in desc_fields:
                    if row.get(f) is not None:
                        desc = _text(row.get(f))
                        break
                if label is None and desc:
                    label = desc
                if label == "-" and drop_dash:
                    task.skip(where, "label_dash")
                    continue
                if label is None and split != "test":
                    task.skip(where, "missing_label")
                    continue
                texts = row_to_texts(row, task, where)
                if texts is None:
                    continue
                text, text_b = texts
                if not text or (task_type == "pair" and not text_b):
                    task.skip(where, "empty_text")
                    continue
                ex_id = row.get("id", row.get("idx", n))
                if label is not None and desc and desc != label:
                    task.label_names.setdefault(label, desc)
                recs.append((where, TextExample(ex_id, text, text_b, label), [label] if label is not None else []))
        order = None
        if label_file:
            order = _label_order_file(d, label_file, task)
        _finish_labels(task, records, order)
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


def _fields(a: str, b: str | None = None):
    def get(row, task, where):
        return _text(row.get(a)), (_text(row.get(b)) if b else None)

    return get


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


def _tsv_files(stems=("train", "dev", "test"), exts=(".tsv", ".txt")) -> dict:
    return {s: [s + e for e in exts] for s in stems}


def _read_tsv_pair(name: str, data_dir) -> Task:
    """LCQMC / BQ corpus: ``text_a<TAB>text_b<TAB>label``, no header."""
    d = _resolve_dir(name, data_dir)
    task = Task(name=name, type="pair")
    files = _require_files(name, d, _tsv_files())
    task.files = {s: str(p) for s, p in files.items()}
    records: dict = {}
    for split, path in files.items():
        recs = records[split] = []
        n = -1
        for lineno, line in _read_lines(path, task):
            where = _where(path, lineno)
            cols = line.split("\t")
            if n == -1 and [c.strip().lower() for c in cols[:2]] in (["text_a", "text_b"], ["sentence1", "sentence2"]):
                continue  # a header some redistributions add
            n += 1
            if len(cols) == 2 and split == "test":
                cols.append("")
            if len(cols) != 3:
                task.skip(where, "bad_columns")
                continue
            a, b, label = cols[0].strip(), cols[1].strip(), label_str(cols[2])
            if not a or not b:
                task.skip(where, "empty_text")
                continue
            if label is None and split != "test":
                task.skip(where, "missing_label")
                continue
            recs.append((where, TextExample(n, a, b, label), [label] if label is not None else []))
    _finish_labels(task, records)
    return task


def _read_chnsenticorp(name: str, data_dir) -> Task:
    """ChnSentiCorp: TSV with a header naming the columns (``label``, ``text_a``, sometimes ``qid``)."""
    d = _resolve_dir(name, data_dir)
    task = Task(name=name, type="classification")
    files = _require_files(name, d, _tsv_files())
    task.files = {s: str(p) for s, p in files.items()}
    records: dict = {}
    for split, path in files.items():
        recs = records[split] = []
        header = None
        n = -1
        for lineno, line in _read_lines(path, task):
            where = _where(path, lineno)
            cols = line.split("\t")
            if header is None:
                header = [c.strip().lower() for c in cols]
                if "text_a" not in header:
                    raise QingbertError(
                        f"{where}: expected a header naming column 'text_a' (e.g. 'label<TAB>text_a'), "
                        f"got {line[:60]!r}"
                    )
                continue
            n += 1
            if len(cols) != len(header):
                task.skip(where, "bad_columns")
                continue
            row = dict(zip(header, cols))
            text = row["text_a"].strip()
            label = label_str(row.get("label"))
            if not text:
                task.skip(where, "empty_text")
                continue
            if label is None and split != "test":
                task.skip(where, "missing_label")
                continue
            ex_id = row.get("qid", "").strip() or n
            recs.append((where, TextExample(ex_id, text, None, label), [label] if label is not None else []))
    _finish_labels(task, records)
    return task


def _read_thucnews(name: str, data_dir) -> Task:
    """THUCNews titles: ``title<TAB>label_id``, no header; ``class.txt`` maps ids to names."""
    d = _resolve_dir(name, data_dir)
    task = Task(name=name, type="classification")
    files = _require_files(name, d, _tsv_files())
    task.files = {s: str(p) for s, p in files.items()}
    names = None
    cls = d / "class.txt"
    if cls.is_file():
        names = [line.strip() for _, line in _read_lines(cls, task)]
        for i, nm in enumerate(names):
            task.label_names[str(i)] = nm
    records: dict = {}
    for split, path in files.items():
        recs = records[split] = []
        n = -1
        for lineno, line in _read_lines(path, task):
            where = _where(path, lineno)
            n += 1
            cols = line.rsplit("\t", 1)
            if len(cols) != 2:
                task.skip(where, "bad_columns")
                continue
            title, lab = cols[0].strip(), cols[1].strip()
            if not title:
                task.skip(where, "empty_text")
                continue
            if names is not None:
                if not lab.isdigit() or int(lab) >= len(names):
                    raise QingbertError(f"{where}: label id '{lab}' is not in {cls} ({len(names)} classes)")
                lab = names[int(lab)]
            label = label_str(lab)
            if label is None and split != "test":
                task.skip(where, "missing_label")
                continue
            recs.append((where, TextExample(n, title, None, label), [label] if label is not None else []))
    _finish_labels(task, records, names)
    return task


# ---------------------------------------------------------------------------
# NER


def _read_cluener(name: str, data_dir) -> Task:
    """CLUENER2020: ``{"text", "label": {type: {entity: [[start, end_inclusive], ...]}}}``."""
    d = _resolve_dir(name, data_dir)
    task = Task(name=name, type="ner")
    files = _require_files(name, d, CLUE_FILES)
    task.files = {s: str(p) for s, p in files.items()}
    records: dict = {}
    for split, path in files.items():
        recs = records[split] = []
        n = -1
        for lineno, row in _read_jsonl(path, task):
            n += 1
            where = _where(path, lineno)
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                task.skip(where, "empty_text")
                continue
            label = row.get("label") or {}
            ents, bad = [], None
            if not isinstance(label, dict):
                bad = "malformed_label"
            else:
                for typ, by_entity in label.items():
                    if not isinstance(by_entity, dict):
                        bad = "malformed_label"
                        break
                    for entity, spans in by_entity.items():
                        for span in spans or []:
                            try:
                                start, end = int(span[0]), int(span[1])
                            except (TypeError, ValueError, IndexError):
                                bad = "malformed_label"
                                break
                            if start < 0 or text[start:end + 1] != entity:
                                bad = "span_text_mismatch"
                                break
                            ents.append((start, end + 1, str(typ)))
                        if bad:
                            break
                    if bad:
                        break
            if bad:
                task.skip(where, bad)
                continue
            ents.sort()
            recs.append((where, SpanExample(row.get("id", n), text, ents), sorted({t for _, _, t in ents})))
    _finish_labels(task, records)
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


def _squad_reader(file_candidates: dict):
    def read(name: str, data_dir) -> Task:
        d = _resolve_dir(name, data_dir)
        task = Task(name=name, type="mrc")
        files = _require_files(name, d, file_candidates)
        task.files = {s: str(p) for s, p in files.items()}
        for split, path in files.items():
            doc = _read_json(path)
            if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
                raise QingbertError(f"{path}: not SQuAD-style JSON (expected a top-level 'data' list)")
            out = task.splits[split] = []
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
                        out.append(QAExample(qid, context, question, answers))
        return task

    return read


# ---------------------------------------------------------------------------
# built-in sets


def _builtin_reviews(name: str, data_dir=None) -> Task:
    task = Task(name=name, type="classification")
    records = {}
    for split in SPLITS:
        records[split] = [
            (f"{name}:{split}:{i}", TextExample(i, text, None, label), [label])
            for i, (text, label) in enumerate(builtin.reviews(split))
        ]
    _finish_labels(task, records)
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


def _builtin_peoples_daily(name: str, data_dir=None) -> Task:
    task = Task(name=name, type="ner")
    records = {}
    for split in SPLITS:
        recs = records[split] = []
        for i, (words, tags) in enumerate(builtin.peoples_daily(split)):
            text, spans = pos_to_spans(words, tags)
            recs.append((f"{name}:{split}:{i}", SpanExample(i, text, spans), sorted({t for _, _, t in spans})))
    _finish_labels(task, records, ["PER", "LOC", "ORG"])
    task.labels = ["PER", "LOC", "ORG"]
    return task


# ---------------------------------------------------------------------------
# registry

TASKS: dict[str, Callable[..., Task]] = {
    "afqmc": _clue_reader("pair", _fields("sentence1", "sentence2")),
    "tnews": _clue_reader(
        "classification", _fields("sentence"), desc_fields=("label_desc",),
        label_file=("labels.json", "label_index2en2zh.json"),
    ),
    "iflytek": _clue_reader("classification", _fields("sentence"), desc_fields=("label_des", "label_desc"),
                            label_file=("labels.json",)),
    "cmnli": _clue_reader("pair", _fields("sentence1", "sentence2"), drop_dash=True),
    "ocnli": _clue_reader("pair", _fields("sentence1", "sentence2"), drop_dash=True),
    "cluewsc2020": _clue_reader("classification", _wsc_texts),
    "csl": _clue_reader("pair", _csl_texts),
    "eprstmt": _clue_reader("classification", _fields("sentence")),
    "bustm": _clue_reader("pair", _fields("sentence1", "sentence2")),
    "lcqmc": _read_tsv_pair,
    "bq": _read_tsv_pair,
    "chnsenticorp": _read_chnsenticorp,
    "thucnews": _read_thucnews,
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


def load_task(name: str, data_dir=None) -> Task:
    """Read task ``name`` from ``data_dir`` (the folder holding its train/dev/test files)."""
    key = ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in TASKS:
        hint = closest(str(name), list(TASKS) + list(ALIASES))
        raise QingbertError(
            f"unknown task '{name}'",
            hint=(f"did you mean '{hint}'? " if hint else "") + "available: " + ", ".join(TASKS),
        )
    task = TASKS[key](key, data_dir)
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


GENERIC_EXTS = (".jsonl", ".json", ".tsv", ".csv", ".txt")


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
    files: dict = {}
    if p.is_dir():
        for split in SPLITS:
            for ext in GENERIC_EXTS:
                if (p / (split + ext)).is_file():
                    files[split] = p / (split + ext)
                    break
        if not files:
            raise QingbertError(f"missing file {p / 'train.jsonl'}",
                                hint=f"expected train/dev/test with one of {', '.join(GENERIC_EXTS)}")
    elif p.is_file():
        files[p.stem if p.stem in SPLITS else "train"] = p
    else:
        raise QingbertError(f"missing file {p}")
    cols = [c for c in (text_col, text_b_col, label_col, id_col) if c is not None]
    named = [isinstance(c, str) for c in cols]
    if any(named) and not all(named):
        raise QingbertError("generic reader columns must be all names or all 0-based indexes")
    header = all(named)
    task.files = {s: str(f) for s, f in files.items()}
    records: dict = {}
    for split, path in files.items():
        recs = records[split] = []
        n = -1
        for lineno, row in _generic_rows(path, task, header):
            where = _where(path, lineno)
            n += 1

            def get(c, row=row, where=where):
                return _column(row, c, where)

            if isinstance(row, list) and len(row) <= max(c for c in cols if c != label_col or split != "test"):
                task.skip(where, "bad_columns")
                continue
            if isinstance(row, dict) and label_col is not None and split == "test" and label_col not in row:
                label = None
            else:
                label = label_str(get(label_col))
            text, text_b = _text(get(text_col)), (_text(get(text_b_col)) if text_b_col is not None else None)
            if not text or (type == "pair" and not text_b):
                task.skip(where, "empty_text")
                continue
            if label_col is not None and label is None and split != "test":
                task.skip(where, "missing_label")
                continue
            ex_id = get(id_col) if id_col is not None else n
            recs.append((where, TextExample(ex_id, text, text_b, label), [label] if label is not None else []))
    _finish_labels(task, records)
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
    "pos_to_spans",
]
