"""qingbert (轻BERT): small, fast Chinese pretrained language models, from raw text to a served model."""

from .errors import QingbertError

__version__ = "0.1.0"

__all__ = ["QingbertError", "__version__", "prepare", "load_prepared", "build_vocab", "zoo"]


def __getattr__(name):  # keep `import qingbert` light: load stages on first use
    if name in ("prepare", "load_prepared", "PrepareConfig"):
        from . import prepare as _p

        return getattr(_p, name)
    if name == "build_vocab":
        from .vocab import build_vocab

        return build_vocab
    if name == "zoo":
        import importlib

        return importlib.import_module(".zoo", __name__)
    raise AttributeError(name)
