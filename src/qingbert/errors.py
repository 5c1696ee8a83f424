"""User-facing errors.

Anything a user can cause (a bad file, a wrong name, no network) raises
:class:`QingbertError` with a one-line message.  The CLI prints that line and
exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class QingbertError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


def closest(name: str, choices) -> str | None:
    """The closest of ``choices`` to ``name``, for 'did you mean' hints."""
    import difflib

    found = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
    if not found:
        return None
    for c in choices:
        if c.lower() == found[0]:
            return c
    return None


#: the optional dependency groups of ``pip install 'qingbert[...]'``: import name -> extra (pyproject.toml)
EXTRAS = {"onnx": "export", "onnxruntime": "export", "onnxscript": "export", "fastapi": "serve", "uvicorn": "serve",
          "faiss": "search", "gensim": "macbert", "scipy": "embeddings", "matplotlib": "plots",
          "sentence_transformers": "embeddings"}


def require(module: str, what: str):
    """Import an optional dependency, or say which extra to install: ``what`` (e.g. "qingbert export") needs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise QingbertError(f"{what} needs the '{module.split('.')[0]}' package, which is not installed",
                            hint=f"pip install 'qingbert[{extra}]'") from None


def explain(exc: BaseException) -> QingbertError | None:
    """An expected failure that a library raised (a file that cannot be written, a truncated weights file or shard,
    a file that is not UTF-8 or not JSON, no memory) as a one-line :class:`QingbertError`; ``None`` for anything
    else (a bug)."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else name
    if isinstance(exc, OSError):
        where = exc.filename or ""
        what = exc.strerror or text
        hint = {28: "free some disk space", 13: "check the permissions of that path",
                30: "write somewhere that is not read-only"}.get(exc.errno or 0)
        return QingbertError(f"{where}: {what}" if where else what, hint=hint)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return QingbertError(f"out of memory ({name})", hint="lower --batch-size or --max-len")
    if name == "SafetensorError" or "deserializing header" in text or "incomplete metadata" in text.lower():
        return QingbertError(f"a weights file is truncated or corrupt ({text})",
                             hint="re-run the stage that wrote it, or copy the folder again")
    if name in ("ArrowInvalid", "ArrowIOError") or "arrow" in type(exc).__module__.lower():
        return QingbertError(f"a prepared data shard is truncated or corrupt ({text})",
                             hint="run `qingbert prepare` again")
    if isinstance(exc, UnicodeDecodeError):
        return QingbertError(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                             hint="save it as UTF-8")
    if name == "JSONDecodeError":
        return QingbertError(f"a file is not valid JSON ({text})")
    return None
