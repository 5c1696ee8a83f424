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
