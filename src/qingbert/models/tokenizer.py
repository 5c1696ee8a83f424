"""Writing and copying BERT-style WordPiece tokenizers (``tokenizer.json`` + the ``vocab.txt`` older loaders
need); loading one is :func:`qingbert.models.loading.load_tokenizer`."""

from __future__ import annotations

import shutil
from pathlib import Path

from qingbert.errors import QingbertError
from qingbert.manifest import atomic_write_text
from qingbert.models.loading import load_tokenizer


def make_tokenizer(vocab: dict[str, int], *, lowercase: bool = True, model_max_length: int = 512):
    """A transformers ``BertTokenizer`` (the fast one in transformers 5) over ``vocab``."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=dict(vocab), do_lower_case=lowercase, model_max_length=model_max_length)


def save_tokenizer(tokenizer, out: str | Path) -> Path:
    """``save_pretrained`` plus ``vocab.txt`` (transformers 5 no longer writes it; older loaders need it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    write_vocab_txt(tokenizer.get_vocab(), out)
    return out


def write_vocab_txt(vocab: dict[str, int], out: Path) -> None:
    """``vocab.txt``: one token per line, line number = id."""
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise QingbertError("vocabulary ids are not contiguous; cannot write vocab.txt")
    atomic_write_text(out / "vocab.txt", "".join(t + "\n" for t, _ in ordered))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def copy_tokenizer(name_or_path: str, out: str | Path):
    """Put a copy of a tokenizer in ``out`` and return its ``tokenizers.Tokenizer``.

    A folder with ``tokenizer.json`` is copied file by file (no transformers import);
    anything else (a ``vocab.txt``-only folder, a hub id) goes through transformers.
    """
    src, out = Path(name_or_path), Path(out)
    if (src / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(src / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - a corrupt file; say which
            raise QingbertError(f"{src / 'tokenizer.json'}: cannot load ({type(e).__name__}: {e})") from None
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        if not (src / "vocab.txt").is_file():
            write_vocab_txt(backend.get_vocab(), out)
        return backend
    tokenizer = load_tokenizer(name_or_path)
    save_tokenizer(tokenizer, out)
    return tokenizer.backend_tokenizer
