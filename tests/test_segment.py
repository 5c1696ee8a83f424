"""Segmenters: rjieba matches jieba, gold/char modes, the F1 used in the manifest."""

import pytest

from qingbert.data import builtin
from qingbert.data.segment import get_segmenter, span_counts
from qingbert.data.text import is_cjk
from qingbert.errors import QingbertError


def test_rjieba_matches_jieba_on_real_text():
    """Same Chinese words as jieba; rjieba only keeps runs like URLs or "3-74" in one piece."""
    texts = [t for t, _ in builtin.reviews("dev")[:500]] + ["".join(w) for w, _ in builtin.peoples_daily("dev")[:300]]
    fast, slow = get_segmenter("rjieba")(texts), get_segmenter("jieba")(texts)
    same = sum(a == b for a, b in zip(fast, slow))
    assert same >= 0.97 * len(texts)

    def chinese_words(ws):
        return [w for w in ws if any(is_cjk(c) for c in w)]

    for a, b in zip(fast, slow):
        assert chinese_words(a) == chinese_words(b)


def test_gold_and_char_modes():
    assert get_segmenter("gold")(["我们 在 北京"]) == [["我们", "在", "北京"]]
    assert get_segmenter("char")(["北京 好"]) == [["北", "京", "好"]]


def test_span_counts_word_f1():
    # gold: 我们|在|北京|天安门 ; pred: 我们|在|北京天安门  -> 2 correct of 3 predicted, 4 gold
    # boundaries (word ends before the text end): pred {2, 3}, gold {2, 3, 5}
    assert span_counts(["我们", "在", "北京天安门"], ["我们", "在", "北京", "天安门"]) == (2, 3, 4, 2, 2, 3)
    # spaces as words do not count on either side
    assert span_counts(["我们", " ", "在"], ["我们", "在"]) == (2, 2, 2, 1, 1, 1)


def test_unknown_and_missing_segmenters():
    with pytest.raises(QingbertError, match="did you mean 'jieba'"):
        get_segmenter("jeiba")
    try:
        import ltp  # noqa: F401
    except ImportError:
        with pytest.raises(QingbertError, match="pip install"):
            get_segmenter("ltp")
