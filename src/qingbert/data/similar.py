"""The similar-word table MacBERT corrects with: ``qingbert similar-words DATA --out DIR``.

A small skip-gram Word2Vec (gensim) over a prepared corpus's shards, where a "word" is the tuple of token ids
sharing a ``word_id`` (the unit whole-word masking chooses), and for each frequent word its top-k nearest words
by cosine *among words with the same token count*, so a replacement keeps every position aligned.  The folder
holds ``table.npz`` (int32 / float16 arrays, read without pickle) and ``manifest.json`` (format, the vocabulary's
size and sha256, the settings, counts and a few decoded examples); :func:`load_similar_words` refuses a table
built for another vocabulary.  This module needs no torch, so the command line stays light; the masking that
uses the table is :mod:`qingbert.pretraining.macbert`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from qingbert.data.prepare import load_prepared
from qingbert.errors import QingbertError, require
from qingbert.manifest import SIMILAR_WORDS_FORMAT, check_out_folder, read_manifest, replace_folder, write_manifest
from qingbert.models.loading import load_tokenizer

FORMAT = SIMILAR_WORDS_FORMAT
TABLE = "table.npz"
BUILD_HINT = "build one with `qingbert similar-words {data} --out DIR` and pass that folder as similar_words"

# ---------------------------------------------------------------------------
# The similar-word table


def vocab_fingerprint(tokenizer) -> dict:
    """Size and sha256 of the tokenizer's vocabulary (tokens in id order): a table only fits this vocabulary."""
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return {"vocab_size": len(vocab), "sha256": hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()}


class SimilarWords:
    """A loaded similar-word table: word (token ids) -> same-length candidate words.

    Stored per token count ``L``: ``words_L`` (N, L) the words, ``cands_L`` (N, k) rows of their nearest
    same-length words (-1 = none) and ``sims_L`` (N, k) the cosine scores."""

    def __init__(self, words: dict, cands: dict, sims: dict, manifest: dict, path: Path | None = None):
        self.words, self.cands, self.sims = words, cands, sims
        self.manifest, self.path = manifest, path
        self._index = {}
        for length, arr in words.items():
            for row, w in enumerate(arr):
                self._index[w.tobytes()] = (length, row)

    def __len__(self) -> int:
        return len(self._index)

    def candidates(self, ids) -> np.ndarray:
        """The stored candidates of a word, ``(k', len(ids))`` int32 (empty when it has none)."""
        ids = np.asarray(ids, dtype=np.int32)
        hit = self._index.get(ids.tobytes())
        if hit is None:
            return np.zeros((0, len(ids)), dtype=np.int32)
        length, row = hit
        c = self.cands[length][row]
        return self.words[length][c[c >= 0]]

    def sample(self, ids, rng: np.random.Generator) -> np.ndarray | None:
        """One candidate, uniform over the stored top-k; None when the word has none."""
        hit = self._index.get(np.asarray(ids, dtype=np.int32).tobytes())
        if hit is None:
            return None
        length, row = hit
        c = self.cands[length][row]
        c = c[c >= 0]
        if not len(c):
            return None
        return self.words[length][c[rng.integers(len(c))]]

    @classmethod
    def from_dict(cls, table: dict, manifest: dict | None = None) -> "SimilarWords":
        """A table from ``{word ids tuple: [candidate ids tuples]}`` (tests, hand-made tables); candidates of
        another length than their word are an error."""
        by_len: dict[int, list] = {}
        for w in set(table) | {c for cs in table.values() for c in cs}:
            by_len.setdefault(len(w), []).append(tuple(int(x) for x in w))
        words, cands, sims = {}, {}, {}
        for length, ws in by_len.items():
            ws.sort()
            pos = {w: i for i, w in enumerate(ws)}
            k = max([len(table.get(w, ())) for w in ws] + [1])
            c = np.full((len(ws), k), -1, dtype=np.int32)
            for w in ws:
                for j, cand in enumerate(table.get(w, ())):
                    if len(cand) != length:
                        raise ValueError(f"candidate {cand} of {w} has another token count")
                    c[pos[w], j] = pos[tuple(cand)]
            words[length] = np.asarray(ws, dtype=np.int32).reshape(len(ws), length)
            cands[length] = c
            sims[length] = np.where(c >= 0, 1.0, 0.0).astype(np.float16)
        return cls(words, cands, sims, manifest or {"format": FORMAT})


class _Sentences:
    """Restartable iterable of texts as lists of word keys ("12_345"), for gensim (it passes over it
    ``epochs + 1`` times); streams the Arrow shards, so memory stays bounded."""

    def __init__(self, ds, n: int):
        self.ds, self.n = ds, n
        self.sequences = self.texts = self.words = 0

    def __iter__(self):
        seen = 0
        sequences = texts = words = 0
        for rows in self.ds.iter(batch_size=1024):
            for ids, wid in zip(rows["input_ids"], rows["word_ids"]):
                if seen >= self.n:
                    break
                seen += 1
                sequences += 1
                ids = np.asarray(ids, dtype=np.int64)
                wid = np.asarray(wid, dtype=np.int64)
                for text in _texts(ids, wid):
                    texts += 1
                    words += len(text)
                    yield text
            if seen >= self.n:
                break
        self.sequences, self.texts, self.words = sequences, texts, words


def _texts(ids: np.ndarray, wid: np.ndarray) -> list[list[str]]:
    """The texts of one packed sequence as lists of word keys (specials separate texts)."""
    if not len(ids):
        return []
    change = np.flatnonzero(np.diff(wid) != 0) + 1
    bounds = np.concatenate([[0], change, [len(ids)]])
    out, cur = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if wid[a] < 0:
            if cur:
                out.append(cur)
            cur = []
            continue
        cur.append("_".join(map(str, ids[a:b].tolist())))
    if cur:
        out.append(cur)
    return out


def _key_ids(key: str) -> tuple[int, ...]:
    return tuple(int(x) for x in key.split("_"))


def build_similar_words(data_dir, out_dir, *, dim: int = 64, min_count: int = 5, top_k: int = 10, epochs: int = 5,
                        window: int = 5, max_sequences: int | None = None, workers: int = 0, seed: int = 0,
                        overwrite: bool = False) -> dict:
    """Train a small skip-gram Word2Vec over the prepared folder's train shards and write, for every word seen
    at least ``min_count`` times, its ``top_k`` nearest words with the same token count.

    ``out_dir`` gets ``table.npz`` (plain int32 / float16 arrays, no pickle) and ``manifest.json`` (format
    ``qingbert.similar-words/1``, the vocabulary fingerprint, the settings and counts, a few decoded
    examples).  ``workers`` 0 = one per CPU core (gensim is only reproducible with ``workers=1``).
    Returns the report (the manifest)."""
    for name, v, lo in (("dim", dim, 1), ("min_count", min_count, 1), ("top_k", top_k, 1), ("epochs", epochs, 1),
                        ("window", window, 1)):
        if not isinstance(v, int) or v < lo:
            raise QingbertError(f"{name} must be an integer >= {lo}, got {v!r}")
    if max_sequences is not None and max_sequences < 1:
        raise QingbertError(f"max_sequences must be at least 1, got {max_sequences}")
    Word2Vec = require("gensim.models", "building a similar-word table (qingbert similar-words)").Word2Vec
    data_dir, out = Path(data_dir), Path(out_dir)
    t0 = time.time()
    ds = load_prepared(data_dir, "train")  # a clear error if it is not a prepared folder
    tokenizer = load_tokenizer(str(data_dir / "tokenizer"))
    n = len(ds) if max_sequences is None else min(len(ds), int(max_sequences))
    out_policy = dict(what="a similar-word table", fmt=FORMAT, inputs={"prepared corpus": data_dir})
    check_out_folder(out, overwrite, **out_policy)  # fail before training; written at the end, all at once
    sentences = _Sentences(ds, n)
    workers = workers or os.cpu_count() or 1
    model = Word2Vec(vector_size=dim, window=window, min_count=min_count, sg=1, negative=5, workers=workers,
                     seed=seed, epochs=epochs)
    model.build_vocab(sentences, progress_per=10**9)
    if not len(model.wv):
        raise QingbertError(f"{data_dir}: no word occurs {min_count} times in {n} sequences",
                            hint="lower --min-count or use more data (--max-sequences)")
    model.train(sentences, total_examples=model.corpus_count, epochs=epochs)
    t_train = time.time() - t0

    keys = model.wv.index_to_key
    ids = [_key_ids(k) for k in keys]
    vectors = model.wv.get_normed_vectors().astype(np.float32)
    lengths = np.array([len(w) for w in ids])
    unk = tokenizer.unk_token_id
    arrays, by_length = {}, {}
    stored = with_candidates = 0
    for length in sorted(set(lengths.tolist())):
        members = np.flatnonzero(lengths == length)
        if len(members) < 2:
            continue  # a word needs another word of its length
        words = np.asarray([ids[i] for i in members], dtype=np.int32).reshape(len(members), length)
        usable = ~(words == unk).any(axis=1) if unk is not None else np.ones(len(members), bool)
        v = vectors[members]
        k = min(top_k, len(members) - 1)
        cands = np.full((len(members), k), -1, dtype=np.int32)
        sims = np.zeros((len(members), k), dtype=np.float16)
        step = max(1, (1 << 24) // max(1, len(members)))  # ~64 MB of float32 scores per block
        for a in range(0, len(members), step):
            s = v[a:a + step] @ v.T
            s[np.arange(s.shape[0]), np.arange(a, a + s.shape[0])] = -np.inf  # not itself
            s[:, ~usable] = -np.inf  # never replace a word by one holding [UNK]
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            ts = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-ts, axis=1)
            top, ts = np.take_along_axis(top, order, axis=1), np.take_along_axis(ts, order, axis=1)
            ok = np.isfinite(ts)
            cands[a:a + s.shape[0]] = np.where(ok, top, -1)
            sims[a:a + s.shape[0]] = np.where(ok, ts, 0).astype(np.float16)
        arrays[f"words_{length}"], arrays[f"cands_{length}"], arrays[f"sims_{length}"] = words, cands, sims
        have = int((cands >= 0).any(axis=1).sum())
        by_length[str(length)] = {"words": len(members), "with_candidates": have}
        stored += len(members)
        with_candidates += have
    if not arrays:
        raise QingbertError(f"{data_dir}: too few frequent words for a similar-word table",
                            hint="lower --min-count or use more data")
    table = SimilarWords(*_split_arrays(arrays), {})
    examples = []
    for key in keys[:12]:
        w = np.asarray(_key_ids(key), dtype=np.int32)
        c = table.candidates(w)[:5]
        if len(c):
            examples.append({"word": tokenizer.decode(w.tolist()).replace(" ", ""),
                             "similar": [tokenizer.decode(x.tolist()).replace(" ", "") for x in c]})
    report = {
        "format": FORMAT,
        "stage": "similar-words",
        "data": str(data_dir.resolve()),
        "tokenizer": vocab_fingerprint(tokenizer),
        "table": TABLE,
        "layout": "per token count L: words_L (N, L) int32 token ids; cands_L (N, k) int32 rows of words_L, "
                  "nearest first, -1 = none; sims_L (N, k) float16 cosine",
        "choice": "uniform over a word's stored candidates",
        "word": "the token ids sharing one word_id in the prepared shards",
        "settings": {"dim": dim, "min_count": min_count, "top_k": top_k, "epochs": epochs, "window": window,
                     "algorithm": "word2vec skip-gram, negative sampling 5", "seed": seed, "workers": workers,
                     "max_sequences": max_sequences},
        "sequences": sentences.sequences, "texts": sentences.texts, "word_tokens": sentences.words,
        "vocabulary_words": len(keys),
        "words_stored": stored,
        "words_with_candidates": with_candidates,
        "by_token_count": by_length,
        "examples": examples,
        "timings": {"word2vec_s": round(t_train, 2), "total_s": round(time.time() - t0, 2)},
    }
    with replace_folder(out, overwrite, **out_policy) as stage:
        np.savez(stage / TABLE, **arrays)
        write_manifest(stage, report)
    return report


def _split_arrays(arrays) -> tuple[dict, dict, dict]:
    words, cands, sims = {}, {}, {}
    for name in arrays:
        kind, _, length = name.partition("_")
        target = {"words": words, "cands": cands, "sims": sims}.get(kind)
        if target is None or not length.isdigit():
            raise ValueError(f"unexpected array {name}")
        target[int(length)] = np.asarray(arrays[name])
    if set(words) != set(cands):
        raise ValueError("words and candidates do not match")
    return words, cands, sims


def load_similar_words(path, tokenizer=None) -> SimilarWords:
    """Open a folder written by :func:`build_similar_words`; with ``tokenizer``, check that it was built for
    that vocabulary (a table of another vocabulary would replace words by unrelated ids)."""
    path = Path(path)
    hint = BUILD_HINT.format(data="DATA")
    if not path.is_dir():
        raise QingbertError(f"{path}: no such similar-word folder", hint=hint)
    try:
        m = read_manifest(path)
    except (OSError, ValueError):
        m = None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise QingbertError(f"{path}: not a similar-word table (no {FORMAT} manifest)", hint=hint)
    if tokenizer is not None:
        have, want = m.get("tokenizer") or {}, vocab_fingerprint(tokenizer)
        if have.get("sha256") != want["sha256"] or have.get("vocab_size") != want["vocab_size"]:
            raise QingbertError(f"{path}: the similar-word table was built for another vocabulary "
                                f"({have.get('vocab_size')} tokens, from {m.get('data')}) than this data's "
                                f"({want['vocab_size']} tokens)",
                                hint=BUILD_HINT.format(data="DATA") + " from the data you pretrain on")
    try:
        with np.load(path / m.get("table", TABLE), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        words, cands, sims = _split_arrays(arrays)
    except (OSError, ValueError, KeyError) as e:
        raise QingbertError(f"{path}: the similar-word table cannot be read ({e})", hint=hint) from None
    return SimilarWords(words, cands, sims, m, path)


# ---------------------------------------------------------------------------
# Command line


def similar_words_summary(r: dict) -> str:
    lens = ", ".join(f"{k} token{'s' if k != '1' else ''}: {v['with_candidates']:,}"
                     for k, v in r["by_token_count"].items())
    lines = [f"{r['sequences']:,} sequences, {r['texts']:,} texts, {r['word_tokens']:,} words; "
             f"{r['vocabulary_words']:,} words occur >= {r['settings']['min_count']} times",
             f"{r['words_with_candidates']:,} words have similar words ({lens})"]
    for e in r.get("examples", [])[:5]:
        lines.append(f"  {e['word']}: {' '.join(e['similar'])}")
    lines.append(f"{r['timings']['total_s']:.1f} s")
    return "\n".join(lines)


__all__ = ["SimilarWords", "build_similar_words", "load_similar_words", "vocab_fingerprint", "similar_words_summary",
           "FORMAT"]
