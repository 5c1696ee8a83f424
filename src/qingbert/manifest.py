"""Self-describing folders: every stage writes ``manifest.json`` saying what made it."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
_LIBS = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "rjieba", "jieba")


def _versions() -> dict:
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
    full.setdefault("versions", _versions())
    full.setdefault("machine", {"python": platform.python_version(), "platform": platform.platform(),
                                "cpus": os.cpu_count()})
    full.setdefault("command", " ".join(sys.argv))
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps(full, ensure_ascii=False, indent=2) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
