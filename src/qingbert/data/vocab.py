"""Vocabulary stage: a BERT-style WordPiece vocab for Chinese, built with HF ``tokenizers``.

Chinese characters are single tokens (the BERT normalizer isolates them),
Latin words are WordPiece pieces with ``##`` continuations, and the five BERT
specials come first (``[PAD]`` = 0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``),
like CLUE's 8 K vocabulary.  The output folder holds ``vocab.txt`` and
``tokenizer.json`` (+ config) that plain ``transformers`` loads as
``BertTokenizer`` / ``BertTokenizerFast`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from qingbert.data import corpus
from qingbert.data.text import Stats, is_cjk
from qingbert.errors import QingbertError
from qingbert.manifest import VOCAB_FORMAT, check_out_folder, replace_folder, write_manifest
from qingbert.models.tokenizer import make_tokenizer, save_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _continuations(chars: set[str], normalizer) -> list[str]:
    """``##c`` for every character that can continue a multi-character (non-Chinese) word.

    Registering them up front makes training deterministic: the trainer otherwise
    numbers them in hash-map order, and that order breaks ties between merges
    (huggingface/tokenizers#1794), so the same corpus gave a different vocab each run.
    """
    out = set()
    for c in chars:
        for d in normalizer.normalize_str(c):
            cat = unicodedata.category(d)
            if d.isspace() or is_cjk(d) or cat[0] in "PC" or (d.isascii() and not d.isalnum()):
                continue  # the BERT pre-tokenizer splits these off, so they never continue a word
            out.add("##" + d)
    return sorted(out)


def _char_counts(texts: Sequence[str] | None, files: list[str] | None) -> Counter:
    counts: Counter = Counter()
    for t in texts or ():
        counts.update(t)
    for f in files or ():
        with open(f, encoding="utf-8") as fh:
            while block := fh.read(1 << 22):
                counts.update(block)
    return counts


def _alphabet(counts: Counter, normalizer, limit: int) -> list[str]:
    """The ``limit`` most frequent characters (after normalization), ties broken by the character.

    Chosen here because the trainer's own ``limit_alphabet`` breaks frequency ties in hash-map order,
    so a corpus with more distinct characters than the limit gave a different vocab on each run.
    """
    norm: Counter = Counter()
    for c, n in counts.items():
        for d in normalizer.normalize_str(c):
            if not d.isspace():
                norm[d] += n
    return [c for c, _ in sorted(norm.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def train_vocab(texts: Sequence[str], size: int = 8000, *, min_frequency: int = 2,
                lowercase: bool = True, files: list[str] | None = None) -> dict[str, int]:
    """Train a WordPiece vocabulary (token -> id) on cleaned texts, or on text files (read in Rust).

    The same input always gives the same vocabulary.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if size < len(SPECIALS) + 100:
        raise QingbertError(f"vocab size {size} is too small", hint="use at least 105")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = _char_counts(texts, files)
    # keep room for Latin pieces; the most frequent characters win
    alphabet = _alphabet(counts, tok.normalizer, int(size * 0.9))
    trainer = trainers.WordPieceTrainer(
        vocab_size=size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS + _continuations(set(counts), tok.normalizer),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    if files:
        tok.train(files, trainer)
    else:
        tok.train_from_iterator(texts, trainer)
    vocab = tok.get_vocab()
    if len(vocab) <= len(SPECIALS):
        raise QingbertError("no text to build a vocabulary from")
    return vocab


def unk_rate(backend, texts: Iterable[str], batch: int = 4096) -> tuple[float, int]:
    """Share of [UNK] tokens when tokenizing ``texts``; returns (rate, tokens)."""
    unk = backend.token_to_id("[UNK]")
    n_unk = n_tok = 0
    buf: list[str] = []

    def flush():
        nonlocal n_unk, n_tok
        for enc in backend.encode_batch_fast(buf, add_special_tokens=False):
            n_tok += len(enc.ids)
            n_unk += enc.ids.count(unk)
        buf.clear()

    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            flush()
    if buf:
        flush()
    return (n_unk / n_tok if n_tok else 0.0), n_tok


def build_vocab(sources: list[str], out: str | Path, size: int = 8000, *, min_frequency: int = 2,
                heldout: float = 0.01, lowercase: bool = True, text_field: str = "text",
                dedup: bool = True, overwrite: bool = False) -> dict:
    """``qingbert vocab``: read and clean sources, train on all but a held-out slice, report UNK rate there.

    ``out`` is a new folder, or with ``overwrite`` an earlier vocabulary folder (never a model folder: its
    embeddings would no longer match), replaced only once the new one is complete."""
    check_out_folder(out, overwrite, what="a vocabulary folder", fmt=VOCAB_FORMAT)
    t0 = time.time()
    stats = Stats()
    train, held = [], []
    cut = int(heldout * 10000)
    for text, _, h in corpus.clean_records(corpus.read_sources(sources, stats, text_field), stats,
                                           dedup=dedup, min_chars=1, max_chars=10**9):
        (held if int.from_bytes(h, "big") % 10000 < cut else train).append(text)
    if not train:
        raise QingbertError("no text in " + ", ".join(sources), hint=stats.summary())
    vocab = train_vocab(train, size, min_frequency=min_frequency, lowercase=lowercase)
    tokenizer = make_tokenizer(vocab, lowercase=lowercase)
    rate, n_tok = unk_rate(tokenizer.backend_tokenizer, held)
    n_cjk = sum(1 for t in vocab if len(t) == 1 and is_cjk(t))
    report = {
        "format": VOCAB_FORMAT,
        "stage": "vocab",
        "sources": list(sources),
        "vocab_size": len(vocab),
        "requested_size": size,
        "cjk_single_chars": n_cjk,
        "wordpiece_continuations": sum(1 for t in vocab if t.startswith("##")),
        "lowercase": lowercase,
        "min_frequency": min_frequency,
        "train_texts": len(train),
        "heldout_texts": len(held),
        "heldout_tokens": n_tok,
        "heldout_unk_rate": round(rate, 6),
        "corpus": stats.to_dict(),
        "elapsed_s": round(time.time() - t0, 2),
    }
    with replace_folder(out, overwrite, what="a vocabulary folder", fmt=VOCAB_FORMAT) as stage:
        save_tokenizer(tokenizer, stage)
        write_manifest(stage, report)
    return report


def vocab_summary(report: dict) -> str:
    return (f"vocab: {report['vocab_size']:,} tokens ({report['cjk_single_chars']:,} Chinese characters, "
            f"{report['wordpiece_continuations']:,} ## pieces); UNK rate on {report['heldout_texts']:,} "
            f"held-out texts: {100 * report['heldout_unk_rate']:.3f}%")


__all__ = ["train_vocab", "unk_rate", "build_vocab", "vocab_summary", "SPECIALS"]
