"""Self-describing folders: every stage writes ``manifest.json`` saying what made it."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

from qingbert.errors import QingbertError

MANIFEST = "manifest.json"

# Every folder format qingbert writes (the manifest's "format"), in one place.
PREPARED_FORMAT = "qingbert.prepared/1"  # prepare: packed, WWM-ready shards
MODEL_FORMAT = "qingbert.model/1"  # pretrain, prune-vocab: a masked-LM / encoder folder
FINETUNED_FORMAT = "qingbert.finetuned/1"  # finetune: a model with a task head
PROMPT_FORMAT = "qingbert.prompt/1"  # prompt fine-tuning (PET): an MLM + template + verbaliser
DISTILLED_FORMAT = "qingbert.distilled/1"  # distill: a student
EMBEDDINGS_FORMAT = "qingbert.embeddings/1"  # whiten, simcse: a sentence-transformers folder
INDEX_FORMAT = "qingbert.index/1"  # index build: a faiss index of a corpus
SIMILAR_WORDS_FORMAT = "qingbert.similar-words/1"  # similar-words: MacBERT's similar-word table
VOCAB_FORMAT = "qingbert.vocab/1"  # vocab: a tokenizer folder
BENCH_FORMAT = "qingbert.bench/1"  # bench: a whole protocol run
BENCH_RUN_FORMAT = "qingbert.bench-run/1"  # bench: one fine-tuning run of it
_LIBS = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "rjieba", "jieba")


def versions() -> dict:
    out = {}
    for lib in ("qingbert",) + _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file via a temporary name and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_manifest(folder: str | Path, record: dict) -> Path:
    """Write ``folder/manifest.json``: the record plus versions, time, machine and command line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = dict(record)
    full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    full.setdefault("versions", versions())
    full.setdefault("machine", {"python": platform.python_version(), "platform": platform.platform(),
                                "cpus": os.cpu_count()})
    full.setdefault("command", " ".join(sys.argv))
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps(full, ensure_ascii=False, indent=2) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's manifest, ``None`` when it has none; a manifest that is not a JSON object is an error naming it."""
    path = Path(folder) / MANIFEST
    return read_json(path) if path.is_file() else None


def read_json(path: str | Path, hint: str = "the folder was damaged: re-run the stage that wrote it") -> dict:
    """A JSON object from a file a stage wrote (a manifest, a ``config.json``); anything else is an error naming the
    file and line."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise QingbertError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", hint=hint) from None
    except json.JSONDecodeError as e:
        raise QingbertError(f"{path}:{e.lineno}: not valid JSON ({e.msg})", hint=hint) from None
    if not isinstance(record, dict):
        raise QingbertError(f"{path}: a JSON {type(record).__name__}, not an object", hint=hint)
    return record


def check_out_folder(out: str | Path, overwrite: bool, *, what: str, fmt: str | tuple = (), is_ours=None,
                     inputs: dict | None = None) -> Path:
    """The one output-folder policy: may a stage write ``what`` (e.g. "a prepared corpus") into ``out``?

    A path that exists and is not a folder, or a folder that is (or is inside, or holds) one of ``inputs``
    (``{"model folder": path}``), is refused.  A non-empty folder is refused unless ``overwrite``, and even then
    only a folder this kind of stage made is accepted: its manifest's format is ``fmt`` (one or several), or
    ``is_ours(folder)`` says so -- so a mistyped path never replaces someone's data.  Nothing is removed here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QingbertError(f"{out}: exists and is not a folder")
    for name, src in (inputs or {}).items():
        if src is None:
            continue
        try:
            o, i = out.resolve(), Path(src).resolve()
        except OSError:
            continue
        if o == i or i in o.parents:
            raise QingbertError(f"--out {out} is inside the {name}", hint="write the output elsewhere")
        if o in i.parents:
            raise QingbertError(f"--out {out} holds the {name} ({src})", hint="write the output elsewhere")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise QingbertError(f"{out}: folder exists and is not empty", hint="pass --overwrite to replace it")
        fmts = (fmt,) if isinstance(fmt, str) else tuple(fmt)
        ours = (read_manifest(out) or {}).get("format") in fmts if fmts else False
        if not ours and not (is_ours is not None and is_ours(out)):
            raise QingbertError(f"{out}: refusing to overwrite a folder that is not {what}")
    return out


def check_out_file(out: str | Path, overwrite: bool, *, inputs: dict | None = None) -> Path:
    """The output-file policy (a submission, predictions, vectors): an existing file is replaced only with
    ``overwrite``; a folder, or one of ``inputs`` (``{"--input": path}``), never."""
    out = Path(out)
    if out.is_dir():
        raise QingbertError(f"{out}: is a folder, not a file name", hint="give a file path to --out")
    for name, src in (inputs or {}).items():
        if src is not None and out.exists() and Path(src).exists() and out.samefile(src):
            raise QingbertError(f"--out {out} is the {name}", hint="write the output to another file")
    if out.exists() and not overwrite:
        raise QingbertError(f"{out}: file exists", hint="pass --overwrite to replace it, or give another --out")
    return out


@contextmanager
def replace_folder(out: str | Path, overwrite: bool, *, what: str, fmt: str | tuple = (), is_ours=None,
                   inputs: dict | None = None) -> Iterator[Path]:
    """Write a folder all at once: :func:`check_out_folder`, then yield a fresh staging folder beside ``out``; when the
    block ends without error the staging folder takes ``out``'s place (a replaced folder of ours is removed only
    then), and when it fails the staging folder is removed and ``out`` is as it was."""
    import shutil

    out = check_out_folder(out, overwrite, what=what, fmt=fmt, is_ours=is_ours, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.qingbert-{os.getpid()}.tmp"
    if stage.exists():  # (a name only this function makes, left by a killed run of this process id)
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.qingbert-{os.getpid()}.old"
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
