"""Whole-word-masking references: grouping, tokenizer equivalence, packing alignment."""

import numpy as np
import pytest
from transformers import BertTokenizer

from qingbert.data import builtin
from qingbert.data.text import clean_words
from qingbert.data.wwm import WordTokenizer, pack, sample_word_mask


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return BertTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def wt(tok):
    return WordTokenizer(tok.backend_tokenizer)


def groups(tokens, word_ids):
    """Token strings joined per word id (## stripped), in order."""
    out, prev = [], None
    for t, w in zip(tokens, word_ids):
        if w < 0:
            prev = None
            continue
        piece = t[2:] if t.startswith("##") else t
        if w != prev:
            out.append(piece)
        else:
            out[-1] += piece
        prev = w
    return out


def line_word_ids(starts):
    return np.cumsum(starts) - 1


def test_peoples_daily_gold_words_grouped_exactly(tok, wt):
    """Every one of the 19,484 lines: the WWM groups are exactly the gold words."""
    raw = builtin.peoples_daily_raw()
    assert len(raw) == 19484
    unk = tok.unk_token_id
    checked_words = 0
    for n, line in enumerate(raw, 1):
        words = clean_words(w for w, _ in line)
        ids, starts = wt.encode_words(words)
        assert unk not in ids, f"line {n}: vocab built from this corpus has no UNK"
        tokens = tok.convert_ids_to_tokens(ids)
        got = groups(tokens, line_word_ids(np.array(starts)))
        expected = [w.lower() for w in words]
        assert got == expected, f"line {n}"
        checked_words += len(words)
    assert checked_words > 1_000_000


def test_word_tokenizer_equals_hf_split_into_words(tok, wt):
    texts = [t for t, _ in builtin.reviews("dev")[:300]]
    import rjieba

    for text in texts:
        words = rjieba.cut(text)
        ids, starts = wt.encode_words(words)
        enc = tok(words, is_split_into_words=True, add_special_tokens=False)
        assert ids == enc["input_ids"], text
        # HF's word_ids index the input words; a new HF word id == a word start for us
        hf = enc.word_ids()
        hf_starts = [1 if i == 0 or hf[i] != hf[i - 1] else 0 for i in range(len(hf))]
        assert starts == hf_starts, text


def test_mixed_chinese_english_digits(tok, wt):
    words = clean_words(["我", "用", "iPhone12", "拍", "了", "２０２４", "年", "的", "GitHub", "照片", "，", "花了",
                         "3.5", "元"])
    assert words[5] == "2024" and words[10] == ","
    ids, starts = wt.encode_words(words)
    tokens = tok.convert_ids_to_tokens(ids)
    got = groups(tokens, line_word_ids(np.array(starts)))
    assert got == [w.lower() for w in words]
    # a Latin word split into WordPiece pieces stays one group
    i = tokens.index("iphone12") if "iphone12" in tokens else None
    if i is None:
        pieces = [t for t in tokens if t.startswith("##")]
        assert pieces, "expected some ## pieces for Latin words"
    # digit runs: every token of "2024" shares one word id
    wid = line_word_ids(np.array(starts))
    year = [k for k, w in enumerate(words) if w == "2024"][0]
    assert (wid == year).sum() >= 1 and len(set(wid[wid == year])) == 1


def test_literal_special_strings_never_become_specials(tok, wt):
    ids, starts = wt.encode_words(["我", "[MASK]", "你[SEP]好", "[PAD]"])
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id}
    assert not special.intersection(ids)
    assert len(ids) == len(starts) == 3


def test_pack_keeps_references_aligned(wt):
    rng = np.random.default_rng(0)
    sents = [list(w) for w, _ in builtin.peoples_daily("dev")[:400]]
    ids, starts, lengths = wt.encode_lines(sents)
    max_len = 64
    packed = pack(ids, starts, lengths, max_len, cls_id=2, sep_id=3)
    assert packed.offsets[-1] == len(packed.ids) == len(packed.word_ids)
    # re-cut the packed stream at [SEP]s: the word structure of the lines comes back intact
    rebuilt_ids, rebuilt_starts = [], []
    for i in range(len(packed)):
        sid, swid = packed.sequence(i)
        assert len(sid) <= max_len
        assert sid[0] == 2 and sid[-1] == 3 and swid[0] == -1 and swid[-1] == -1
        # special positions and only they have -1; groups are numbered 0.. in order
        assert ((sid == 2) | (sid == 3)).tolist() == (swid == -1).tolist()
        real = swid[swid >= 0]
        assert real[0] == 0 and np.all(np.diff(real) >= 0) and np.all(np.diff(real) <= 1)
        for k in range(1, len(sid)):
            if sid[k] in (2, 3):
                continue
            rebuilt_ids.append(sid[k])
            rebuilt_starts.append(int(swid[k - 1] < 0 or swid[k] != swid[k - 1]))
    assert rebuilt_ids == ids.tolist()
    # lines longer than a sequence were cut at word starts, which may only add starts
    orig = starts.astype(int).tolist()
    assert all(r >= o for r, o in zip(rebuilt_starts, orig))
    assert packed.hard_cuts == 0 or max(len(s) for s in sents) > 62
    mask = sample_word_mask(packed.sequence(0)[1], rng, 0.15)
    wid0 = packed.sequence(0)[1]
    for w in np.unique(wid0[mask]):
        assert mask[wid0 == w].all(), "whole words are masked together"
    assert not mask[wid0 < 0].any(), "special tokens are never masked"


def test_pack_cuts_long_lines_at_word_starts():
    # one line of 10 words x 3 tokens, sequences of room 8 -> cuts at multiples of 3
    ids = np.arange(100, 130, dtype=np.int32)
    starts = np.array([1, 0, 0] * 10, dtype=np.uint8)
    packed = pack(ids, starts, np.array([30]), max_seq_len=10, cls_id=2, sep_id=3)
    assert packed.hard_cuts == 0
    for i in range(len(packed)):
        sid, swid = packed.sequence(i)
        body = sid[1:-1]
        assert len(body) % 3 == 0 and (body[0] - 100) % 3 == 0
    # a single word longer than a sequence is cut inside, and counted
    packed = pack(ids[:12], np.array([1] + [0] * 11, dtype=np.uint8), np.array([12]), 6, 2, 3)
    assert packed.hard_cuts == 2 and len(packed) == 3
    assert all(packed.sequence(i)[1][1] == 0 for i in range(3))


def test_no_pack_gives_one_line_per_sequence(wt):
    sents = [list(w) for w, _ in builtin.peoples_daily("dev")[:50]]
    ids, starts, lengths = wt.encode_lines(sents)
    packed = pack(ids, starts, lengths, 512, 2, 3, concat=False)
    assert len(packed) == int((lengths > 0).sum())


def test_fill_packing_fills_sequences_and_keeps_words(wt):
    sents = [list(w) for w, _ in builtin.peoples_daily("dev")[:300]]
    ids, starts, lengths = wt.encode_lines(sents)
    loose = pack(ids, starts, lengths, 128, 2, 3, fill=False)
    full = pack(ids, starts, lengths, 128, 2, 3, fill=True)
    fill_rate = len(full.ids) / (128 * len(full))
    assert fill_rate > 0.97 > len(loose.ids) / (128 * len(loose))
    # every text token is still there, in order, and no word is split across sequences
    body = full.ids[full.word_ids >= 0]
    assert body.tolist() == ids.tolist()
    for i in range(len(full)):
        sid, swid = full.sequence(i)
        assert len(sid) <= 128
    # a word cut across sequences would show up as a start missing at a sequence's first token
    rebuilt = []
    for i in range(len(full)):
        _, swid = full.sequence(i)
        w = swid[swid >= 0]
        rebuilt.extend((np.diff(np.concatenate([[-1], w])) != 0).astype(int).tolist())
    assert full.hard_cuts == 0 and sum(rebuilt) == int(starts.sum())
