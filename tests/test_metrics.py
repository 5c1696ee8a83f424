"""Tests for qingbert.tasks.metrics against hand-computed expectations.

Every expected number below is a literal worked out by hand (see comments),
never obtained by calling the function under test.
"""

import pytest

from qingbert.tasks.metrics import (
    accuracy,
    bio_decode,
    bio_encode,
    cmrc_scores,
    entity_scores,
    exact_match,
    lcs_len,
    macro_f1,
    mixed_segmentation,
    pair_f1,
    remove_punctuation,
    spans_from_cluener,
)

# ---------------------------------------------------------------- classification

PREDS = ["a", "b", "a", "c", "b"]
GOLDS = ["a", "a", "a", "c", "c"]


def test_accuracy_hand_example():
    # positions 0, 2, 3 correct; 1 (b vs a) and 4 (b vs c) wrong -> 3/5
    assert accuracy(PREDS, GOLDS) == pytest.approx(0.6)
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_macro_f1_hand_example():
    # a: TP=2 (pos 0,2), FP=0, FN=1 (pos 1)  -> F1 = 4/5      = 0.8
    # b: TP=0, FP=2 (pos 1,4), FN=0          -> F1 = 0
    # c: TP=1 (pos 3), FP=0, FN=1 (pos 4)    -> F1 = 2/3
    # mean = (36/45 + 0 + 30/45) / 3 = 22/45
    assert macro_f1(PREDS, GOLDS) == pytest.approx(22 / 45)


def test_macro_f1_given_labels_skips_absent_label():
    # 'b' not listed; 'z' never predicted nor gold -> skipped (not a 0)
    # mean(F1_a, F1_c) = (4/5 + 2/3) / 2 = 11/15
    assert macro_f1(PREDS, GOLDS, labels=["a", "c", "z"]) == pytest.approx(11 / 15)


# ---------------------------------------------------------------- CMRC: normalisation

def test_mixed_segmentation_mixed_text():
    # CJK chars and punctuation are single tokens; ASCII runs stay whole, lowercased
    assert mixed_segmentation("我爱NLP2024年，ok!") == [
        "我", "爱", "nlp2024", "年", "，", "ok", "!",
    ]


def test_mixed_segmentation_whitespace_splits_ascii_runs():
    assert mixed_segmentation("  Hello World 你好 ") == ["hello", "world", "你", "好"]


def test_remove_punctuation_is_the_official_list():
    # the official list: Chinese marks plus only - : _ * ^ / \ ~ ` + = among ASCII; '……' is two
    # characters, so a single '…' stays; '!' '.' '%' are not in it either; inner spaces stay
    assert remove_punctuation(" 《三体》，“好”、-_+=/  ") == "三体好"
    assert remove_punctuation("A…b!. 3%") == "a…b!. 3%"
    # F1 tokens drop the listed marks only, and nltk splits the ASCII run
    assert mixed_segmentation("我爱NLP2024年，ok!", rm_punc=True) == ["我", "爱", "nlp2024", "年", "ok", "!"]
    assert mixed_segmentation("增长3.5%，约10亿") == ["增", "长", "3.5", "%", "，", "约", "10", "亿"]


def test_lcs_is_substring_not_subsequence():
    # common subsequence a,c,e has length 3, but longest common substring is 1
    assert lcs_len(list("abcde"), list("axcye")) == 1
    assert lcs_len(list("xabcy"), list("zabcw")) == 3
    assert lcs_len([], list("abc")) == 0


def test_pair_f1_partial_overlap():
    # pred 7 tokens, gold 3 tokens, LCS 3: P = 3/7, R = 1
    # F1 = 2 * (3/7) * 1 / (3/7 + 1) = (6/7) / (10/7) = 0.6
    assert pair_f1("北京天安门广场", "天安门") == pytest.approx(0.6)
    # no common token -> 0
    assert pair_f1("上海", "天安门") == 0.0


def test_exact_match_ignores_punctuation_and_case():
    assert exact_match("《三体》", "三体") == 1
    assert exact_match("NLP！", "nlp") == 1
    assert exact_match("new york", "newyork") == 0  # spaces inside an answer count, as in the official EM
    assert exact_match("三体", "三体二") == 0


def test_multi_answer_best_of():
    # vs "北京天安门广场": P=1, R=3/7 -> F1 = (6/7)/(10/7) = 0.6
    # vs "天安门广场":     P=1, R=3/5 -> F1 = (6/5)/(8/5)  = 0.75
    # best F1 = 0.75 -> 75.0 ; no exact match -> EM 0
    res = cmrc_scores({"q": "天安门"}, {"q": ["北京天安门广场", "天安门广场"]})
    assert res["f1"] == pytest.approx(75.0)
    assert res["em"] == 0.0
    # adding a gold equal after punctuation removal gives EM 100, F1 100
    res = cmrc_scores({"q": "天安门"}, {"q": ["北京天安门广场", "天安门。"]})
    assert res["em"] == pytest.approx(100.0)
    assert res["f1"] == pytest.approx(100.0)


def test_unanswered_question_counts_as_zero():
    refs = {"q1": ["《三体》"], "q2": ["天安门"], "q3": ["刘慈欣"]}
    preds = {"q1": "三体", "q2": "北京天安门广场", "q9": "ignored extra id"}
    res = cmrc_scores(preds, refs)
    # EM: q1 1, q2 0, q3 (unanswered) 0 -> 1/3 * 100 = 33.333...
    # F1: q1 1, q2 0.6, q3 0            -> 1.6/3 * 100 = 53.333...
    # average = (100/3 + 160/3) / 2 = 130/3 = 43.333...
    assert res["em"] == pytest.approx(100 / 3)
    assert res["f1"] == pytest.approx(160 / 3)
    assert res["average"] == pytest.approx(130 / 3)
    assert res["total"] == 3
    assert res["skipped"] == 1


def test_cmrc_scores_empty_references():
    res = cmrc_scores({}, {})
    assert (res["em"], res["f1"], res["total"], res["skipped"]) == (0.0, 0.0, 0, 0)


# ---------------------------------------------------------------- NER

TEXT = "李明在北京大学读书"  # 李0 明1 在2 北3 京4 大5 学6 读7 书8
CLUENER_LABEL = {"name": {"李明": [[0, 1]]}, "organization": {"北京大学": [[3, 6]]}}


def test_spans_from_cluener_inclusive_to_exclusive():
    spans = spans_from_cluener(CLUENER_LABEL)
    # inclusive [0,1] -> (0,2); inclusive [3,6] -> (3,7)
    assert spans == {(0, 2, "name"), (3, 7, "organization")}
    assert {TEXT[s:e] for s, e, _ in spans} == {"李明", "北京大学"}


def test_entity_scores_inclusive_end_conversion_matters():
    tags = ["B-name", "I-name", "O", "B-organization", "I-organization",
            "I-organization", "I-organization", "O", "O"]
    pred = bio_decode(tags)
    gold = spans_from_cluener(CLUENER_LABEL)
    assert entity_scores([pred], [gold])["micro"]["f1"] == pytest.approx(1.0)
    # using CLUENER's inclusive ends unconverted: no span matches
    raw = {(0, 1, "name"), (3, 6, "organization")}
    assert entity_scores([pred], [raw])["micro"]["f1"] == 0.0


def test_entity_scores_micro_per_type_macro():
    gold = [
        {(0, 2, "name"), (3, 7, "org")},
        {(1, 3, "name"), (5, 8, "address")},
        set(),
    ]
    pred = [
        {(0, 2, "name"), (3, 5, "org")},   # org boundary wrong
        {(1, 3, "name"), (5, 8, "org")},   # address predicted with wrong type
        {(0, 1, "name")},                  # spurious
    ]
    res = entity_scores(pred, gold)
    # name:    pred 3, gold 2, TP 2 -> P 2/3, R 1, F1 (4/3)/(5/3) = 0.8
    # org:     pred 2, gold 1, TP 0 -> 0, 0, 0
    # address: pred 0, gold 1, TP 0 -> 0, 0, 0
    name = res["per_type"]["name"]
    assert name["precision"] == pytest.approx(2 / 3)
    assert name["recall"] == pytest.approx(1.0)
    assert name["f1"] == pytest.approx(0.8)
    assert name["support"] == 2
    assert res["per_type"]["org"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert res["per_type"]["address"]["support"] == 1
    assert res["per_type"]["address"]["f1"] == 0.0
    # micro: TP 2, pred 5, gold 4 -> P 0.4, R 0.5, F1 0.4/0.9 = 4/9
    assert res["micro"]["precision"] == pytest.approx(0.4)
    assert res["micro"]["recall"] == pytest.approx(0.5)
    assert res["micro"]["f1"] == pytest.approx(4 / 9)
    # macro over {name, org, address}: (0.8 + 0 + 0) / 3 = 4/15
    assert res["macro_f1"] == pytest.approx(4 / 15)


def test_bio_encode_and_round_trip():
    spans = {(0, 2, "name"), (3, 7, "org")}
    tags = bio_encode(9, spans)
    assert tags == ["B-name", "I-name", "O", "B-org", "I-org", "I-org", "I-org", "O", "O"]
    assert bio_decode(tags) == spans
    # adjacent same-type entities are kept apart by B-
    adjacent = {(0, 2, "x"), (2, 3, "x")}
    assert bio_encode(3, adjacent) == ["B-x", "I-x", "B-x"]
    assert bio_decode(bio_encode(3, adjacent)) == adjacent
    # entity running to the end of the sequence
    assert bio_decode(["O", "B-loc", "I-loc"]) == {(1, 3, "loc")}


def test_bio_decode_lenient_i_rule():
    # I- after O starts a new entity
    assert bio_decode(["O", "I-per", "I-per", "O"]) == {(1, 3, "per")}
    # I- at position 0 starts an entity
    assert bio_decode(["I-per"]) == {(0, 1, "per")}
    # I- of a different type than the open entity starts a new one
    assert bio_decode(["B-per", "I-loc", "I-loc"]) == {(0, 1, "per"), (1, 3, "loc")}


def test_bio_errors():
    with pytest.raises(ValueError):
        bio_decode(["B"])
    with pytest.raises(ValueError):
        bio_decode(["X-per"])
    with pytest.raises(ValueError):
        bio_encode(4, {(0, 3, "a"), (2, 4, "b")})  # overlap
    with pytest.raises(ValueError):
        bio_encode(2, {(1, 3, "a")})  # out of range
