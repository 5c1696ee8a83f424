"""Whole-word-masking references: words -> token ids + which tokens belong to one word.

The reference of a token is its *word id* inside its sequence: tokens with the
same word id are masked together.  Special tokens (``[CLS]``, ``[SEP]``) and
padding have word id ``-1`` and never belong to a word.  A Chinese word of n
characters gives n tokens with one word id; a Latin word split into WordPiece
pieces (``iphone`` -> ``ip ##hone``) and a digit run likewise share one id.

Tokenization uses the real fast tokenizer (``tokenizers``) on each distinct
word once and caches the result: for a pre-segmented input the tokenizer treats
each word independently, so this gives exactly what
``tokenizer(words, is_split_into_words=True)`` gives (a test checks it), at a
fraction of the cost, because Chinese words repeat a lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np


class WordTokenizer:
    """Tokenize pre-segmented lines into ids and word-start flags, with a per-word cache.

    Each distinct word is tokenized once by the real tokenizer; its tokens are kept
    in a flat table (``word index -> token ids``), and a whole chunk of lines is then
    expanded with numpy gathers, so the per-word cost is one dict look-up.
    """

    def __init__(self, backend, cache_size: int = 2_000_000):
        self.backend = backend  # a tokenizers.Tokenizer
        self.cache_size = cache_size
        # a literal "[SEP]" or "[MASK]" in the text must not become a real special token
        # ([UNK] stays: it stands for real characters missing from the vocab)
        unk = getattr(backend.model, "unk_token", None)
        self.special_ids = {i for i, t in backend.get_added_tokens_decoder().items()
                            if t.special and t.content != unk}
        self.specials_dropped = 0
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.tok_ids = np.zeros(0, dtype=np.int32)  # tokens of all known words, back to back
        self.tok_off = np.zeros(0, dtype=np.int64)  # where word i's tokens start in tok_ids
        self.tok_len = np.zeros(0, dtype=np.int64)

    def _tokenize(self, w: str) -> list[int]:
        ids = self.backend.encode([w], is_pretokenized=True, add_special_tokens=False).ids
        if self.special_ids.intersection(ids):
            self.specials_dropped += sum(i in self.special_ids for i in ids)
            ids = [i for i in ids if i not in self.special_ids]
        return ids

    def _add(self, missing: set, words) -> bool:
        """Tokenize and store new words; returns True if the table had to be emptied first."""
        reset = len(self.index) + len(missing) > self.cache_size
        if reset:
            self._reset()
            missing = set(words)
        new = sorted(missing)  # sorted: the table layout does not depend on set order
        encoded = [self._tokenize(w) for w in new]
        lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(new))
        base = len(self.tok_ids)
        self.tok_off = np.concatenate([self.tok_off, base + np.cumsum(lens) - lens])
        self.tok_len = np.concatenate([self.tok_len, lens])
        self.tok_ids = np.concatenate([self.tok_ids, np.fromiter(chain.from_iterable(encoded), dtype=np.int32)])
        n = len(self.index)
        self.index.update(zip(new, range(n, n + len(new))))
        return reset

    def _expand(self, words: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        widx = np.fromiter(map(self.index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        unknown = np.flatnonzero(widx < 0)
        if len(unknown):
            if self._add({words[i] for i in unknown}, words):  # the table was reset: look all up again
                widx[:] = np.fromiter(map(self.index.__getitem__, words), dtype=np.int64, count=len(words))
            else:
                widx[unknown] = [self.index[words[i]] for i in unknown]
        wlen = self.tok_len[widx]
        out_start = np.cumsum(wlen) - wlen
        total = int(wlen.sum())
        src = np.repeat(self.tok_off[widx] - out_start, wlen) + np.arange(total)
        ids = self.tok_ids[src]
        starts = np.zeros(total, dtype=np.uint8)
        starts[out_start[wlen > 0]] = 1
        return ids, starts, wlen

    def encode_words(self, words: list[str]) -> tuple[list[int], list[int]]:
        """Token ids and word-start flags (1 = first token of a word) of one segmented line."""
        ids, starts, _ = self._expand(list(words))
        return ids.tolist(), starts.tolist()

    def encode_lines(self, lines: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat ids (int32), word-start flags (uint8) and per-line token counts (int64)."""
        ids, starts, wlen = self._expand(list(chain.from_iterable(lines)))
        n_words = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        csum = np.concatenate([[0], np.cumsum(wlen)])
        ends = np.cumsum(n_words)
        return ids, starts, csum[ends] - csum[ends - n_words]


@dataclass
class Packed:
    """Packed sequences as flat arrays: sequence i is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray
    word_ids: np.ndarray
    offsets: np.ndarray
    hard_cuts: int = 0  # words cut because one word alone was longer than a sequence

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.word_ids[a:b]


def _pieces(starts: np.ndarray, a: int, b: int, room: int) -> tuple[list[tuple[int, int]], int]:
    """Cut tokens [a, b) into pieces of at most ``room`` tokens at word starts."""
    if b - a <= room:
        return [(a, b)], 0
    out, hard = [], 0
    word_starts = a + np.flatnonzero(starts[a:b])
    while b - a > room:
        limit = a + room
        # last word start in (a, limit]
        k = np.searchsorted(word_starts, limit, side="right") - 1
        cut = int(word_starts[k]) if k >= 0 and word_starts[k] > a else limit
        if cut == limit and (k < 0 or word_starts[k] != limit):
            hard += 1
        out.append((a, cut))
        a = cut
    out.append((a, b))
    return out, hard


MIN_FILL = 8  # don't start a text in the last few positions of a sequence


def pack(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_seq_len: int,
         cls_id: int, sep_id: int, concat: bool = True, fill: bool = True) -> Packed:
    """Pack lines into ``[CLS] line [SEP] line [SEP] ...`` sequences of at most ``max_seq_len``.

    Lines never share a word; a line longer than a sequence is cut at word starts
    (only a single word longer than a sequence is cut inside).  With ``fill``, a
    line that does not fit in what is left of a sequence is cut at a word start
    and continues in the next one, so sequences come out full (no padding needed
    in training); without it, it starts the next sequence.  With ``concat=False``
    each line (or piece) is its own sequence.
    """
    if max_seq_len < 4:
        raise ValueError("max_seq_len must be at least 4")
    room = max_seq_len - 2
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    pieces: list[tuple[int, int]] = []
    hard = 0
    for i in range(len(lengths)):
        a, b = int(bounds[i]), int(bounds[i + 1])
        if b > a:
            ps, h = _pieces(starts, a, b, room)
            pieces.extend(ps)
            hard += h
    # group pieces into sequences: 1 ([CLS]) + sum(len + 1 ([SEP]))
    seqs: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    size = 1
    for a, b in pieces:
        if cur and concat and fill and size + (b - a + 1) > max_seq_len:
            # fill the rest of this sequence with the text's first words; the rest opens the next one
            left = max_seq_len - size - 1
            if left >= MIN_FILL:
                later = np.flatnonzero(starts[a + 1:a + left + 1])
                if len(later):
                    cut = a + 1 + int(later[-1])
                    cur.append((a, cut))
                    size += cut - a + 1
                    a = cut
        n = b - a + 1
        if cur and (not concat or size + n > max_seq_len):
            seqs.append(cur)
            cur, size = [], 1
        cur.append((a, b))
        size += n
    if cur:
        seqs.append(cur)
    total = sum(b - a + 1 for s in seqs for a, b in s) + len(seqs)
    out_ids = np.empty(total, dtype=np.int32)
    out_starts = np.zeros(total, dtype=np.uint8)
    special = np.zeros(total, dtype=bool)
    offsets = np.empty(len(seqs) + 1, dtype=np.int64)
    pos = 0
    for si, seq in enumerate(seqs):
        offsets[si] = pos
        out_ids[pos] = cls_id
        special[pos] = True
        pos += 1
        for a, b in seq:
            n = b - a
            out_ids[pos:pos + n] = ids[a:b]
            out_starts[pos:pos + n] = starts[a:b]
            out_starts[pos] = 1  # a piece always opens a new word
            pos += n
            out_ids[pos] = sep_id
            special[pos] = True
            pos += 1
    offsets[-1] = pos
    # word ids restart at 0 in each sequence
    csum = np.cumsum(out_starts, dtype=np.int64)
    base = np.concatenate([[0], csum[offsets[1:-1] - 1]]) if len(seqs) else np.zeros(0, dtype=np.int64)
    seq_index = np.repeat(np.arange(len(seqs)), np.diff(offsets))
    wid = (csum - base[seq_index] - 1).astype(np.int32)
    wid[special] = -1
    return Packed(out_ids, wid, offsets, hard)


def sample_word_mask(word_ids: np.ndarray, rng: np.random.Generator, prob: float = 0.15) -> np.ndarray:
    """Pick ``prob`` of the words of one sequence (at least one) and mask all their tokens."""
    words = np.unique(word_ids[word_ids >= 0])
    if len(words) == 0:
        return np.zeros(len(word_ids), dtype=bool)
    n = max(1, int(round(prob * len(words))))
    chosen = rng.choice(words, size=n, replace=False)
    return np.isin(word_ids, chosen)


def show_masked(tokens: list[str], word_ids: np.ndarray, mask: np.ndarray) -> tuple[str, str]:
    """Two display lines: words bracketed, and the masked version."""
    grouped, masked = [], []
    prev = None
    for tok, wid, m in zip(tokens, word_ids, mask):
        piece = tok[2:] if tok.startswith("##") else tok
        if wid < 0:
            grouped.append(f" {tok} ")
            masked.append(f" {tok} ")
            prev = None
            continue
        if wid != prev:
            grouped.append("|")
        grouped.append(piece)
        masked.append("[MASK]" if m else piece)
        prev = wid
    return "".join(grouped).strip(), "".join(masked).strip()
