"""Reading comprehension (CMRC 2018 / DRCD spans): windows, labels, decoding rules, and a tiny model that learns."""

import json
import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForQuestionAnswering

from qingbert.models.loading import load_tokenizer
from qingbert.tasks.mrc import QACollator, QAObjective, decode_qa, encode_qa, score_qa
from qingbert.tasks.readers import QAExample, load_task
from qingbert.training.batching import run_model
from qingbert.training.loop import TrainConfig, Trainer

LONG_CONTEXT = "".join(f"第{i}段介绍了这座城市在不同年代的历史、交通和文化。" for i in range(1, 41)) + \
    "在最后一场比赛中，来自南方的李明获得了冠军。"
FULL_WIDTH = "本届比赛由ＣＭＲＣ２０１８组委会主办，共有１２０支队伍参加，吉祥物名叫“𠀋𠀋熊”。"
ENGLISH = "该模型在SQuAD 1.1上的F1为93.2分，论文发表于2018年10月。"
TRADITIONAL = "臺北101是位於臺灣臺北市信義區的摩天大樓，於2004年落成，高度為508公尺。"


def _qa(qid, question, context, *answers):
    return {"id": qid, "question": question,
            "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}


def _squad(path, paragraphs):
    doc = {"version": "v1.0", "data": [{"title": "t", "id": "1", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """CMRC 2018 and DRCD style files, read by the task readers."""
    d = tmp_path_factory.mktemp("mrc")
    (d / "cmrc").mkdir()
    (d / "drcd").mkdir()
    _squad(d / "cmrc" / "cmrc2018_dev.json", [
        {"id": "P0", "context": LONG_CONTEXT, "qas": [
            _qa("LONG", "谁在最后一场比赛中获得了冠军？", LONG_CONTEXT, "李明")]},
        {"id": "P1", "context": FULL_WIDTH, "qas": [
            _qa("FW", "有多少支队伍参加？", FULL_WIDTH, "１２０支队伍", "１２０支"),
            _qa("ORG", "比赛由谁主办？", FULL_WIDTH, "ＣＭＲＣ２０１８组委会"),
            _qa("UNK", "吉祥物叫什么？", FULL_WIDTH, "𠀋𠀋熊")]},
        {"id": "P2", "context": ENGLISH, "qas": [
            _qa("EN", "模型在哪个数据集上测试？", ENGLISH, "SQuAD 1.1"),
            _qa("NUM", "F1是多少？", ENGLISH, "93.2"),
            _qa("DATE", "论文什么时候发表？", ENGLISH, "2018年10月")]},
    ])
    _squad(d / "drcd" / "DRCD_dev.json", [{"id": "T0", "context": TRADITIONAL, "qas": [
        _qa("TW1", "臺北101的高度是多少？", TRADITIONAL, "508公尺"),
        _qa("TW2", "哪一座大樓位於信義區？", TRADITIONAL, "臺北101")]}])
    return load_task("cmrc2018", d / "cmrc").splits["dev"] + load_task("drcd", d / "drcd").splits["dev"]


def _features_of(ds, i):
    return [r for r in ds if r["example"] == i]


def _question_ids(row):
    return row["input_ids"][:row["token_type_ids"].index(1)]


def _span_text(example, row):
    s, e = row["start_positions"], row["end_positions"]
    return example.context[row["offsets"][s][0]:row["offsets"][e][1]]


# --------------------------------------------------------------------------- encoding


def test_encode_windows_and_labels_cover_exactly_the_answer(tok, examples):
    max_len, stride = 64, 16
    ds, rep = encode_qa(examples, tok, max_len=max_len, doc_stride=stride, max_query_len=32, train=True)
    assert rep["examples"] == len(examples) == 9 and rep["features"] == len(ds)
    assert rep["long_contexts"] == 1 and rep["questions_truncated"] == 0 and rep["doc_stride_clamped"] == 0
    assert rep["answers_outside_all_windows"] == 0 and rep["answer_token_mismatch"] == 0
    assert sorted(set(ds["example"])) == list(range(len(examples)))
    for i, ex in enumerate(examples):
        feats = _features_of(ds, i)
        labelled = [r for r in feats if r["start_positions"] > 0]
        assert labelled, ex.id
        for r in feats:
            assert len(r["input_ids"]) <= max_len
            assert r["offsets"][0] == [-1, -1] and r["offsets"][-1] == [-1, -1]
            # question tokens (type 0) carry no offsets; the same question heads every window
            assert all(o == [-1, -1] for o, t in zip(r["offsets"], r["token_type_ids"]) if t == 0)
            assert _question_ids(r) == _question_ids(feats[0])
        for r in labelled:
            assert r["start_positions"] <= r["end_positions"]
            assert _span_text(ex, r) == ex.answers[0][0]

    # the long context: several overlapping windows covering every character; the answer only in the last
    i = next(k for k, e in enumerate(examples) if e.id == "LONG")
    feats = _features_of(ds, i)
    assert len(feats) >= 4
    assert [r["start_positions"] > 0 for r in feats] == [False] * (len(feats) - 1) + [True]
    ctx_offs = [[o for o in r["offsets"] if o != [-1, -1]] for r in feats]
    for a, b in zip(ctx_offs, ctx_offs[1:]):
        assert a[-stride:] == b[:stride]  # consecutive windows overlap by doc_stride tokens
    covered = {c for offs in ctx_offs for s, e in offs for c in range(s, e)}
    assert covered >= {c for c, ch in enumerate(LONG_CONTEXT) if not ch.isspace()}


def test_truncated_questions_snapped_answers_and_unreachable_answers(tok):
    long_q = "请问" + "这个问题真的非常非常长" * 10 + "？"
    word = "internationalization"
    ctx = f"这个模型名叫{word}，很有名。"
    w0 = ctx.index(word)
    enc = tok(ctx, add_special_tokens=False, return_offsets_mapping=True)
    first_piece = next(o for o in enc["offset_mapping"] if o[0] == w0)
    assert first_piece[1] - first_piece[0] > 1  # so an answer starting at w0 + 1 cuts through a token
    long_answer = "一二三四五六七八九十" * 4
    ctx2 = f"开头。{long_answer}。结尾。" * 2
    examples = [QAExample("q", ctx, long_q, [("模型", 2)]),
                QAExample("snap", ctx, "叫什么？", [(word[1:-1], w0 + 1)]),
                QAExample("far", ctx2, "中间是什么？", [(long_answer, 3)])]
    ds, rep = encode_qa(examples, tok, max_len=32, doc_stride=8, max_query_len=8, train=True)
    assert rep["questions_truncated"] == 1
    q_feat = _features_of(ds, 0)[0]
    assert q_feat["token_type_ids"].count(0) == 8 + 2  # [CLS] + 8 question tokens + [SEP]
    assert _span_text(examples[0], q_feat) == "模型"
    assert rep["answer_token_mismatch"] == 1
    snapped = [_span_text(examples[1], r) for r in _features_of(ds, 1) if r["start_positions"] > 0]
    assert snapped and all(word[1:-1] in s and s != word[1:-1] and s in ctx for s in snapped)
    # a 40-character answer never fits a 32-token window: reported, and every window points at [CLS]
    assert rep["answers_outside_all_windows"] == 1 and rep["answers_outside_ids"] == ["far"]
    assert all(r["start_positions"] == r["end_positions"] == 0 for r in _features_of(ds, 2))

    # an overlap the window cannot hold (the tokenizer would abort) is lowered to half a window
    ds, rep = encode_qa(examples[2:], tok, max_len=32, doc_stride=128, max_query_len=8)
    assert rep["doc_stride_clamped"] == 1 and rep["long_contexts"] == 1
    covered = {c for r in ds for s, e in r["offsets"] for c in range(s, e)}
    assert covered == set(range(len(ctx2)))


# --------------------------------------------------------------------------- decoding


def test_oracle_logits_recover_every_gold_answer(tok, examples):
    ds, _ = encode_qa(examples, tok, max_len=64, doc_stride=16, max_query_len=32, train=False)
    rng = np.random.default_rng(0)
    starts, ends = [], []
    for r in ds:
        s, e = rng.normal(size=(2, len(r["input_ids"])))
        if r["start_positions"] > 0:
            s[r["start_positions"]] += 20
            e[r["end_positions"]] += 20
        starts.append(s)
        ends.append(e)
    answers, nbest = decode_qa(starts, ends, ds, examples, n_best=5, max_answer_len=30)
    assert answers == {e.id: e.answers[0][0] for e in examples}  # full-width, [UNK], Latin text as written
    assert answers["FW"] == "１２０支队伍" and answers["UNK"] == "𠀋𠀋熊" and answers["EN"] == "SQuAD 1.1"
    for e in examples:
        assert nbest[e.id][0]["start"] == e.answers[0][1]
        scores = [c["score"] for c in nbest[e.id]]
        assert 0 < len(scores) <= 5 and scores == sorted(scores, reverse=True)
        spans = [(c["start"], len(c["text"])) for c in nbest[e.id]]
        assert len(set(spans)) == len(spans)
        assert all(e.context[c["start"]:c["start"] + len(c["text"])] == c["text"] for c in nbest[e.id])
    scores = score_qa(examples, answers)
    assert scores["em"] == scores["f1"] == scores["score"] == 100.0 and scores["metric"] == "f1"
    assert scores["total"] == len(examples) and scores["skipped"] == 0
    worse = score_qa(examples, {**answers, "FW": "１２０", "EN": "squad 1.1"})  # EN: case-insensitive
    assert worse["em"] == pytest.approx(100 * 8 / 9) and 100 * 8 / 9 < worse["f1"] < 100


def _hand_dataset(context, windows):
    """Features over ``context``: [CLS] q [SEP] + one token per character of each window + [SEP]."""
    offsets = [[[-1, -1]] * 3 + [[c, c + 1] for c in w] + [[-1, -1]] for w in windows]
    return Dataset.from_dict({"example": [0] * len(windows), "offsets": offsets})


def test_decode_rules_end_after_start_and_max_answer_len():
    ctx = "abcdefghij"
    ex = [QAExample("x", ctx, "q", [("cde", 2)])]
    ds = _hand_dataset(ctx, [range(10)])
    tok_of = {c: 3 + c for c in range(10)}  # character -> token index

    s, e = np.full(14, -10.0), np.full(14, -10.0)
    s[[0, 1]] = 50  # [CLS] and a question token are never answers
    s[tok_of[7]], s[tok_of[2]] = 9, 5
    e[tok_of[4]], e[tok_of[8]] = 9, 1
    answers, nbest = decode_qa([s], [e], ds, ex)
    assert answers["x"] == "cde"  # (h, e) scores 18 but ends before it starts
    assert nbest["x"][0]["score"] == 14 and {"text": "hi", "start": 7, "score": 10} in nbest["x"]

    s, e = np.full(14, -10.0), np.full(14, -10.0)
    s[tok_of[0]], e[tok_of[9]] = 10, 10
    s[tok_of[5]], e[tok_of[6]] = 4, 4
    assert decode_qa([s], [e], ds, ex, max_answer_len=10)[0]["x"] == ctx
    assert decode_qa([s], [e], ds, ex, max_answer_len=3)[0]["x"] == "fg"
    answers, nbest = decode_qa([s], [e], ds, ex, n_best=1, max_answer_len=3)
    assert answers["x"] == "" and nbest["x"] == []  # the only candidate pair is too long

    # two overlapping windows find the same span: it appears once, with its better score
    ds = _hand_dataset(ctx, [range(0, 6), range(3, 10)])
    s1, e1 = np.zeros(10), np.zeros(10)
    s2, e2 = np.zeros(11), np.zeros(11)
    s1[3 + 4], e1[3 + 5] = 5, 5  # "ef" in window 1 (tokens start at character 0)
    s2[3 + 1], e2[3 + 2] = 3, 3  # "ef" in window 2 (tokens start at character 3), scored lower
    answers, nbest = decode_qa([s1, s2], [e1, e2], ds, ex, n_best=3)
    assert answers["x"] == "ef" and nbest["x"][0]["score"] == 10
    assert [c["text"] for c in nbest["x"]].count("ef") == 1


# --------------------------------------------------------------------------- training


def test_collator_and_objective_sums_have_fixed_keys(tok):
    rows = [{"input_ids": [2, 5, 3, 7, 8, 3], "token_type_ids": [0, 0, 0, 1, 1, 1], "start_positions": 3,
             "end_positions": 4, "example": 0, "offsets": [], "index": 0},
            {"input_ids": [2, 5, 3, 9, 3], "token_type_ids": [0, 0, 0, 1, 1], "start_positions": 0,
             "end_positions": 0, "example": 1, "offsets": [], "index": 1}]
    b = QACollator(tok.pad_token_id)(rows)
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert b["input_ids"][1].tolist() == [2, 5, 3, 9, 3, tok.pad_token_id]
    assert b["attention_mask"].sum(1).tolist() == [6, 5] and b["token_type_ids"][1, -1] == 0
    assert b["start_positions"].tolist() == [3, 0] and b["end_positions"].tolist() == [4, 0]
    assert "token_type_ids" not in QACollator(0)([{k: v for k, v in r.items() if k != "token_type_ids"}
                                                  for r in rows])
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=128))
    obj = QAObjective(model).eval()
    with torch.no_grad():
        a, c = obj.evaluate_batch(b), obj.evaluate_batch(QACollator(tok.pad_token_id)(rows[:1]))
    assert sorted(a) == sorted(c) == ["correct", "count", "end_correct", "loss_sum", "start_correct"]
    m = obj.summarize({k: a[k] + c[k] for k in a})
    assert set(m) >= {"loss", "span_accuracy", "start_accuracy", "end_accuracy"} and m["features"] == 3
    assert 0 <= m["span_accuracy"] <= min(m["start_accuracy"], m["end_accuracy"]) <= 1
    assert obj.trained_model() is model and QAObjective.accuracy_name == "span_accuracy"


FILLER = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而"


def _synthetic(n, rng):
    """Contexts of random characters with one "房间在NNNN号" in a random place; the answer is "NNNN号"."""
    out = []
    for i in range(n):
        left = "".join(rng.choice(FILLER) for _ in range(rng.randint(0, 30)))
        right = "".join(rng.choice(FILLER) for _ in range(rng.randint(0, 30)))
        answer = f"{rng.randint(10, 9999)}号"
        ctx = f"{left}，房间在{answer}，{right}。"
        out.append(QAExample(f"s{i}", ctx, "房间是哪一个？", [(answer, len(left) + 4)]))
    return out


def test_tiny_model_learns_a_synthetic_span_task(tok, tmp_path):
    rng = random.Random(0)
    train, dev = _synthetic(480, rng), _synthetic(64, rng)
    train_ds, _ = encode_qa(train, tok, max_len=64, doc_stride=16, max_query_len=16)
    dev_ds, rep = encode_qa(dev, tok, max_len=64, doc_stride=16, max_query_len=16, train=False)
    assert rep["answer_token_mismatch"] == 0 and rep["answers_outside_all_windows"] == 0
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=128))
    collate = QACollator(tok.pad_token_id)
    cfg = TrainConfig(max_steps=60, batch_size=16, lr=3e-3, save_every=0, log_every=20, progress=False, threads=1)
    trainer = Trainer(QAObjective(model), train_ds, collate, tmp_path / "out", cfg, eval_data=dev_ds)
    before = trainer.evaluate()
    history = trainer.run()
    after = [h for h in history if h.get("split") == "eval"][-1]
    train_logs = [h for h in history if h.get("split") == "train"]
    assert train_logs[-1]["loss"] < 0.5 * train_logs[0]["loss"], train_logs
    assert after["loss"] < 0.3 * before["loss"], (before, after)
    assert before["span_accuracy"] < 0.1 and after["span_accuracy"] > 0.8, (before, after)

    out = run_model(trainer.unwrapped_objective().trained_model(), dev_ds, collate, ("start_logits", "end_logits"),
                    token_level=True)
    answers, _ = decode_qa(out["start_logits"], out["end_logits"], dev_ds, dev)
    scores = score_qa(dev, answers)
    assert scores["em"] > 80, scores
