"""Readers for benchmark task files, checked on small made-up fixtures in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qingbert.data import builtin
from qingbert.errors import QingbertError
from qingbert.tasks.readers import (
    TASKS,
    QAExample,
    SpanExample,
    TextExample,
    load_generic,
    load_task,
    missing_splits_error,
    pos_to_spans,
)


def jl(path: Path, rows, raw_lines=()) -> Path:
    """Write JSON lines (ensure_ascii off, like the distributed files), plus raw extra lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tsv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CLUE pairs


def test_afqmc_pairs_string_labels_and_test_ids(tmp_path):
    jl(tmp_path / "train.json", [
        {"sentence1": "借呗怎么提前还款", "sentence2": "借呗可以提前还吗", "label": "1"},
        {"sentence1": "花呗账单在哪里看", "sentence2": "余额宝收益怎么算", "label": "0"},
    ])
    jl(tmp_path / "dev.json", [{"sentence1": "怎么关闭花呗", "sentence2": "花呗能不能关掉", "label": "1"}])
    jl(tmp_path / "test.json", [{"id": 0, "sentence1": "充值失败怎么办", "sentence2": "为何充值没到账"}])
    t = load_task("afqmc", tmp_path)
    assert t.type == "pair" and t.labels == ["0", "1"]
    assert [len(t.splits[s]) for s in ("train", "dev", "test")] == [2, 1, 1]
    ex = t.splits["train"][0]
    assert isinstance(ex, TextExample)
    assert (ex.text, ex.text_b, ex.label) == ("借呗怎么提前还款", "借呗可以提前还吗", "1")
    test = t.splits["test"][0]
    assert test.id == 0 and test.label is None and test.text_b == "为何充值没到账"
    assert "afqmc train: 2 examples" in t.summary()


@pytest.mark.parametrize("name", ["cmnli", "ocnli"])
def test_nli_dash_rows_dropped_and_counted(tmp_path, name):
    jl(tmp_path / "train.json", [
        {"sentence1": "他每天早上跑步", "sentence2": "他有运动习惯", "label": "entailment"},
        {"sentence1": "她买了一把伞", "sentence2": "今天下雨了", "label": "neutral"},
        {"sentence1": "商店已经关门", "sentence2": "商店正在营业", "label": "contradiction"},
        {"sentence1": "会议推迟到明天", "sentence2": "会议取消了", "label": "-"},
    ])
    jl(tmp_path / "dev.json", [
        {"sentence1": "猫在沙发上睡觉", "sentence2": "猫醒着", "label": "-", "label0": "neutral", "genre": "lit", "id": 0},
        {"sentence1": "湖面结了冰", "sentence2": "天气很冷", "label": "entailment", "label0": "entailment", "genre": "lit", "id": 1},
    ])
    t = load_task(name, tmp_path)
    assert t.labels == ["contradiction", "entailment", "neutral"]
    assert len(t.splits["train"]) == 3 and len(t.splits["dev"]) == 1
    assert t.splits["dev"][0].id == 1
    assert t.skipped["label_dash"] == 2
    assert any(e.endswith("train.json:4: label_dash") for e in t.skip_examples)
    assert "label_dash 2" in t.summary()


# --------------------------------------------------------------------------- single sentence


def test_tnews_label_desc_and_unlabelled_test(tmp_path):
    jl(tmp_path / "train.json", [
        {"label": "103", "label_desc": "news_sports", "sentence": "主队在加时赛中逆转取胜", "keywords": "加时赛,逆转"},
        {"label": "104", "label_desc": "news_finance", "sentence": "央行宣布下调存款准备金率", "keywords": ""},
        {"label": "103", "label_desc": "news_sports", "sentence": "马拉松比赛周日开跑", "keywords": "马拉松"},
    ])
    jl(tmp_path / "test.json", [{"id": 0, "sentence": "新款手机将于下月发布", "keywords": ""},
                                {"id": 1, "sentence": "山区小学迎来新老师", "keywords": ""}])
    t = load_task("tnews", tmp_path)
    assert t.type == "classification" and t.labels == ["103", "104"]
    assert t.label_names == {"103": "news_sports", "104": "news_finance"}
    assert [e.label for e in t.splits["test"]] == [None, None]
    assert [e.id for e in t.splits["test"]] == [0, 1]


def test_iflytek_label_des_and_int_labels(tmp_path):
    jl(tmp_path / "train_few_all.json", [
        {"label": 12, "label_des": "记账", "sentence": "一款简单好用的个人记账工具", "id": 0},
        {"label": 7, "label_des": "地图导航", "sentence": "离线地图与实时路况导航", "id": 1},
    ])
    jl(tmp_path / "dev_few_all.json", [{"label": 7, "label_des": "地图导航", "sentence": "公交换乘查询助手", "id": 0}])
    t = load_task("iflytek", tmp_path)
    assert t.labels == ["7", "12"]  # strings, numeric order
    assert all(isinstance(e.label, str) for s in t.splits.values() for e in s)
    assert t.label_names == {"12": "记账", "7": "地图导航"}


def test_eprstmt_and_bustm(tmp_path):
    jl(tmp_path / "e" / "train.json", [{"id": 0, "sentence": "包装很结实，物流也快", "label": "Positive"},
                                      {"id": 1, "sentence": "用了两天就坏了", "label": "Negative"}])
    t = load_task("eprstmt", tmp_path / "e")
    assert t.labels == ["Negative", "Positive"] and t.splits["train"][1].text_b is None
    jl(tmp_path / "b" / "train.json", [{"id": 0, "sentence1": "今天心情不太好", "sentence2": "今天有点不开心", "label": "1"}])
    t = load_task("bustm", tmp_path / "b")
    assert t.type == "pair" and t.splits["train"][0].text_b == "今天有点不开心"


def test_csl_keywords_joined_with_abstract(tmp_path):
    jl(tmp_path / "train.json", [{"id": 3, "abst": "本文提出一种基于图的文本分类方法。", "keyword": ["图模型", "文本分类"], "label": "1"}])
    ex = load_task("csl", tmp_path).splits["train"][0]
    assert (ex.id, ex.text, ex.text_b, ex.label) == (3, "图模型 文本分类", "本文提出一种基于图的文本分类方法。", "1")


def test_cluewsc_marks_spans_and_counts_mismatch(tmp_path):
    text = "小明把书借给了小红，因为他已经看完了。"
    good = {"target": {"span2_index": 12, "span1_index": 0, "span1_text": "小明", "span2_text": "他"},
            "idx": 0, "label": "true", "text": text}
    bad = {"target": {"span2_index": 11, "span1_index": 7, "span1_text": "小红", "span2_text": "他"},
           "idx": 1, "label": "false", "text": text}
    jl(tmp_path / "train.json", [good, bad])
    t = load_task("wsc", tmp_path)
    assert t.name == "cluewsc2020" and t.labels == ["true"]
    assert [e.text for e in t.splits["train"]] == ["_小明_把书借给了小红，因为[他]已经看完了。"]
    assert t.skipped["span_text_mismatch"] == 1
    assert any("train.json:2: span_text_mismatch" in e for e in t.skip_examples)


# --------------------------------------------------------------------------- TSV tasks


@pytest.mark.parametrize("name", ["lcqmc", "bq"])
def test_tsv_pairs_without_header(tmp_path, name):
    tsv(tmp_path / "train.tsv", [("怎么修改登录密码", "登录密码如何更改", 1), ("贷款利息多少", "怎么注销账户", 0)])
    tsv(tmp_path / "dev.txt", [("还款日可以改吗", "能否更换还款日期", 1)])
    t = load_task(name, tmp_path)
    # the first line is data, not a header
    assert len(t.splits["train"]) == 2 and t.splits["train"][0].text == "怎么修改登录密码"
    assert t.labels == ["0", "1"] and t.splits["dev"][0].text_b == "能否更换还款日期"


def test_chnsenticorp_header_and_columns_per_split(tmp_path):
    tsv(tmp_path / "train.tsv", [("label", "text_a"), (1, "房間乾淨，服務周到"), (0, "早餐太差，不会再来")])
    tsv(tmp_path / "dev.tsv", [("qid", "label", "text_a"), (0, 1, "性价比很高，推荐")])
    tsv(tmp_path / "test.tsv", [("qid", "text_a"), (0, "屏幕有坏点")])
    t = load_task("chnsenticorp", tmp_path)
    assert [e.text for e in t.splits["train"]] == ["房間乾淨，服務周到", "早餐太差，不会再来"]
    assert t.labels == ["0", "1"]
    assert (t.splits["dev"][0].id, t.splits["dev"][0].label) == ("0", "1")
    assert t.splits["test"][0].label is None


def test_thucnews_class_names(tmp_path):
    tsv(tmp_path / "train.txt", [("股市三大指数集体收涨", 0), ("新赛季联赛揭幕战打响", 2)])
    (tmp_path / "class.txt").write_text("finance\nrealty\nsports", encoding="utf-8")  # no final newline
    t = load_task("thucnews", tmp_path)
    assert [e.label for e in t.splits["train"]] == ["finance", "sports"]
    assert t.labels == ["finance", "sports"]
    (tmp_path / "class.txt").unlink()
    assert load_task("thucnews", tmp_path).labels == ["0", "2"]


# --------------------------------------------------------------------------- NER


def test_cluener_inclusive_end_converted(tmp_path):
    text = "李雷在杭州的阿里巴巴上班"
    jl(tmp_path / "train.json", [
        {"text": text, "label": {"name": {"李雷": [[0, 1]]}, "address": {"杭州": [[3, 4]]}, "company": {"阿里巴巴": [[6, 9]]}}},
        {"text": "韩梅梅喜欢读书", "label": {"name": {"韩梅梅": [[0, 1]]}}},  # wrong end
    ])
    jl(tmp_path / "test.json", [{"id": 0, "text": "周末去西湖散步"}])
    t = load_task("cluener", tmp_path)
    assert t.type == "ner" and t.labels == ["address", "company", "name"]
    ex = t.splits["train"][0]
    assert isinstance(ex, SpanExample)
    assert all(ex.text[s:e] for s, e, _ in ex.entities)
    assert {(ex.text[s:e], ty) for s, e, ty in ex.entities} == {("李雷", "name"), ("杭州", "address"), ("阿里巴巴", "company")}
    assert t.skipped["span_text_mismatch"] == 1 and len(t.splits["train"]) == 1
    assert t.splits["test"][0].entities == [] and t.splits["test"][0].id == 0


# --------------------------------------------------------------------------- MRC


def squad(path: Path, paragraphs, version="v1.0"):
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "id": "1", "paragraphs": paragraphs}]},
                               ensure_ascii=False, indent=1), encoding="utf-8")


def test_cmrc_answer_start_checked_and_fixed(tmp_path):
    ctx = "长江是中国第一长河，全长约六千三百公里，流经十一个省级行政区。长江发源于青藏高原。"
    squad(tmp_path / "cmrc2018_dev.json", [{"id": "D0", "context": ctx, "qas": [
        {"question": "长江全长多少？", "id": "Q0", "answers": [{"text": "约六千三百公里", "answer_start": 12},
                                                        {"text": "六千三百公里", "answer_start": 13}]},
        {"question": "长江发源于哪里？", "id": "Q1", "answers": [{"text": "青藏高原", "answer_start": 30}]},  # off
        {"question": "长江有多宽？", "id": "Q2", "answers": [{"text": "两公里", "answer_start": 5}]},  # absent
    ]}])
    t = load_task("cmrc2018", tmp_path)
    dev = t.splits["dev"]
    assert [q.id for q in dev] == ["Q0", "Q1"] and isinstance(dev[0], QAExample)
    assert dev[0].answers == [("约六千三百公里", 12), ("六千三百公里", 13)]
    text, start = dev[1].answers[0]
    assert ctx[start:start + len(text)] == "青藏高原" and start != 30
    assert t.fixed["fixed_answer_start"] == 1
    assert t.skipped["answer_not_in_context"] == 1 and t.skipped["no_valid_answer"] == 1


def test_drcd_traditional_with_answer_ids(tmp_path):
    ctx = "臺北是臺灣的政治中心，故宮博物院位於臺北士林。"
    squad(tmp_path / "DRCD_dev.json", [{"context": ctx, "id": "9-1", "qas": [
        {"id": "9-1-1", "question": "故宮博物院位於哪裡？",
         "answers": [{"id": "1", "text": "臺北士林", "answer_start": 18}, {"id": "2", "text": "士林", "answer_start": 20}]},
    ]}], version="1.3")
    t = load_task("drcd", tmp_path)
    q = t.splits["dev"][0]
    assert q.question == "故宮博物院位於哪裡？" and q.answers == [("臺北士林", 18), ("士林", 20)]
    assert not t.skipped and not t.fixed


# --------------------------------------------------------------------------- errors and traps


def test_unseen_dev_label_raises_with_file_and_line(tmp_path):
    jl(tmp_path / "train.json", [{"sentence": "好看", "label": "Positive"}, {"sentence": "难看", "label": "Negative"}])
    jl(tmp_path / "dev.json", [{"sentence": "还行", "label": "Positive"}, {"sentence": "一般般", "label": "Neutral"}])
    with pytest.raises(QingbertError) as e:
        load_task("eprstmt", tmp_path)
    assert "dev.json:2" in str(e.value) and "Neutral" in str(e.value)
    assert "\n" not in e.value.message


def test_malformed_undecodable_and_empty_lines_are_counted(tmp_path):
    p = jl(tmp_path / "train.json", [{"sentence": "质量不错", "label": "Positive"}, {"sentence": "  ", "label": "Negative"}],
           raw_lines=['{"sentence": "少了括号", "label": "Negative"'])
    with open(p, "ab") as fh:
        fh.write('{"sentence": "坏字节'.encode() + b"\xff\xfe" + b'", "label": "Negative"}\n')
    t = load_task("eprstmt", tmp_path)
    assert len(t.splits["train"]) == 1
    assert t.skipped == {"empty_text": 1, "malformed_json": 1, "undecodable": 1}
    assert any(e.endswith("train.json:3: malformed_json") for e in t.skip_examples)
    assert any(e.endswith("train.json:4: undecodable") for e in t.skip_examples)


def test_utf8_bom_and_crlf(tmp_path):
    (tmp_path / "train.json").write_bytes(
        b"\xef\xbb\xbf" + '{"sentence": "物流很快", "label": "Positive"}\r\n{"sentence": "不满意", "label": "Negative"}\r\n'.encode())
    t = load_task("eprstmt", tmp_path)
    assert [e.text for e in t.splits["train"]] == ["物流很快", "不满意"] and not t.skipped


def test_unknown_task_suggests_closest(tmp_path):
    with pytest.raises(QingbertError) as e:
        load_task("afqcm", tmp_path)
    assert "afqmc" in e.value.hint


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(QingbertError) as e:
        load_task("lcqmc", tmp_path)
    assert "train.tsv" in str(e.value)
    with pytest.raises(QingbertError):
        load_task("lcqmc", tmp_path / "nope")


def test_registry_names():
    expected = {"afqmc", "tnews", "iflytek", "cmnli", "ocnli", "cluewsc2020", "csl", "eprstmt", "bustm", "lcqmc",
                "bq", "chnsenticorp", "thucnews", "cmrc2018", "drcd", "cluener",
                "builtin:reviews-sentiment", "builtin:peoples-daily-ner"}
    assert expected <= set(TASKS)


# --------------------------------------------------------------------------- encodings


def test_gb18030_files_read_and_reported(tmp_path):
    rows = [{"label": "103", "label_desc": "news_sports", "sentence": "主队在加时赛中逆转取胜"},
            {"label": "104", "label_desc": "news_finance", "sentence": "央行宣布下调存款准备金率"}]
    (tmp_path / "train.json").write_bytes(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("gb18030"))
    jl(tmp_path / "dev.json", rows[:1])
    t = load_task("tnews", tmp_path)
    assert [e.text for e in t.splits["train"]] == ["主队在加时赛中逆转取胜", "央行宣布下调存款准备金率"]
    assert not t.skipped
    assert t.encodings == {"train": "gb18030", "dev": "utf-8"}
    assert f"tnews train: read as GB18030 ({tmp_path / 'train.json'})" in t.summary()
    assert "dev: read as" not in t.summary()
    # a whole SQuAD document too
    ctx = "长江发源于青藏高原。"
    (tmp_path / "cmrc").mkdir()
    (tmp_path / "cmrc" / "cmrc2018_dev.json").write_bytes(json.dumps({"data": [{"paragraphs": [{"context": ctx, "qas": [
        {"id": "Q", "question": "长江发源于哪里？", "answers": [{"text": "青藏高原", "answer_start": 5}]}]}]}]},
        ensure_ascii=False).encode("gb18030"))
    t = load_task("cmrc2018", tmp_path / "cmrc")
    assert t.splits["dev"][0].answers == [("青藏高原", 5)] and t.encodings == {"dev": "gb18030"}


def test_bom_header_is_still_a_header(tmp_path):
    (tmp_path / "train.tsv").write_bytes(b"\xef\xbb\xbf" + "label\ttext_a\n1\t服务周到\n0\t早餐太差\n".encode())
    t = load_task("chnsenticorp", tmp_path)
    assert [(e.label, e.text) for e in t.splits["train"]] == [("1", "服务周到"), ("0", "早餐太差")]
    assert t.encodings["train"] == "utf-8-sig" and "read as" not in t.summary()


def test_mostly_utf8_file_keeps_its_bad_line_as_a_skip(tmp_path):
    good = "怎么修改登录密码\t登录密码如何更改\t1\n贷款利息是多少\t怎么注销我的账户\t0\n"
    (tmp_path / "train.tsv").write_bytes(good.encode() + "还款日可以改吗\t能否更换\t1\n".encode("gbk") + good.encode())
    t = load_task("lcqmc", tmp_path)
    assert t.encodings["train"] == "utf-8"
    assert t.skipped == {"undecodable": 1} and len(t.splits["train"]) == 4
    assert t.splits["train"][0].text == "怎么修改登录密码"
    assert any(e.endswith("train.tsv:3: undecodable") for e in t.skip_examples)


@pytest.mark.parametrize("content, why", [
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00train.tsv", "NUL byte at offset 5"),
    (b"\xff\xfe\xfd\t\xff\n\xff\xff\t\xfe\n", "no line decodes"),
])
def test_binary_or_undecodable_train_file_is_an_error(tmp_path, content, why):
    (tmp_path / "train.tsv").write_bytes(content)
    tsv(tmp_path / "dev.tsv", [("还款日可以改吗", "能否更换还款日期", 1)])
    with pytest.raises(QingbertError) as e:
        load_task("bq", tmp_path)
    assert e.value.message.startswith(f"{tmp_path / 'train.tsv'}: not text in UTF-8 or GB18030 (")
    assert why in e.value.message and e.value.hint


# --------------------------------------------------------------------------- empty splits


def test_empty_train_file_is_the_error_not_the_dev_labels(tmp_path):
    (tmp_path / "train.tsv").write_text("\n\n", encoding="utf-8")
    tsv(tmp_path / "dev.tsv", [("还款日可以改吗", "能否更换还款日期", 1)])
    with pytest.raises(QingbertError) as e:
        load_task("lcqmc", tmp_path)
    assert e.value.message == f"{tmp_path / 'train.tsv'}: no usable examples (empty file)"


def test_split_with_only_skipped_lines_says_why(tmp_path):
    p = jl(tmp_path / "train.json", [{"sentence": "好看", "label": "Positive"}, {"sentence": "难看", "label": "Negative"}])
    jl(tmp_path / "dev.json", [{"sentence": " ", "label": "Positive"}, {"sentence": "一般", "label": "-"}],
       raw_lines=["{broken"])
    with pytest.raises(QingbertError) as e:
        load_task("eprstmt", tmp_path)
    assert e.value.message == (f"{tmp_path / 'dev.json'}: no usable examples "
                               "(3 lines skipped: empty_text 1, label_dash 1, malformed_json 1)")
    assert str(p) not in e.value.message and "dev.json:1: empty_text" in e.value.hint


# --------------------------------------------------------------------------- the label "-"


def _dash_chnsenticorp(d):
    tsv(d / "train.tsv", [("label", "text_a"), (1, "服务周到"), ("-", "说不清"), (0, "早餐太差")])
    return load_task("chnsenticorp", d), 3


def _dash_lcqmc(d):
    tsv(d / "train.tsv", [("怎么改密码", "密码如何更改", 1), ("贷款利息", "怎么注销", "-"), ("能借多少", "注销账户", 0)])
    return load_task("lcqmc", d), 2


def _dash_thucnews(d):
    tsv(d / "train.txt", [("股市收涨", 0), ("联赛揭幕", "-"), ("楼市回暖", 1)])
    (d / "class.txt").write_text("finance\nrealty\n", encoding="utf-8")
    return load_task("thucnews", d), 2


def _dash_generic(d):
    jl(d / "train.jsonl", [{"q": "今天天气好", "y": 1}, {"q": "说不清", "y": "-"}, {"q": "明天要下雨", "y": 0}])
    return load_generic(d / "train.jsonl", "classification", text_col="q", label_col="y"), 2


def _dash_afqmc_tsv(d):
    tsv(d / "train.tsv", [("借呗怎么还", "借呗如何还款", 1), ("花呗账单", "余额宝收益", "-"), ("怎么关闭花呗", "充值失败", 0)])
    return load_task("afqmc", d), 2


@pytest.mark.parametrize("read", [_dash_chnsenticorp, _dash_lcqmc, _dash_thucnews, _dash_generic, _dash_afqmc_tsv])
def test_dash_label_dropped_and_counted_everywhere(tmp_path, read):
    t, dash_line = read(tmp_path)
    assert len(t.splits["train"]) == 2 and "-" not in t.labels and len(t.labels) == 2
    assert t.skipped == {"label_dash": 1} and t.split_skipped == {"train": {"label_dash": 1}}
    assert t.skip_examples == [f"{t.files['train']}:{dash_line}: label_dash"]


# --------------------------------------------------------------------------- file names


def _ocnli(d: Path, n_train: int, name: str):
    jl(d / name, [{"sentence1": f"句子{i}", "sentence2": f"另一句{i}", "label": "entailment", "id": i}
                  for i in range(n_train)])


def test_ocnli_as_distributed_and_train_file(tmp_path):
    _ocnli(tmp_path, 5, "train.50k.json")
    _ocnli(tmp_path, 3, "train.3k.json")
    _ocnli(tmp_path, 1, "dev.json")
    t = load_task("ocnli", tmp_path)
    assert t.files["train"] == str(tmp_path / "train.50k.json") and len(t.splits["train"]) == 5
    t = load_task("ocnli", tmp_path, train_file="train.3k.json")
    assert t.files["train"] == str(tmp_path / "train.3k.json") and len(t.splits["train"]) == 3
    assert list(t.splits) == ["train", "dev"]
    # a path outside the folder works too
    _ocnli(tmp_path / "elsewhere", 2, "mine.json")
    assert len(load_task("ocnli", tmp_path, train_file=tmp_path / "elsewhere" / "mine.json").splits["train"]) == 2
    with pytest.raises(QingbertError) as e:
        load_task("ocnli", tmp_path, train_file="train.30k.json")
    assert "train.30k.json" in e.value.message
    assert e.value.hint == "files there: dev.json, train.3k.json, train.50k.json"


def test_missing_train_file_lists_the_accepted_names(tmp_path):
    _ocnli(tmp_path, 1, "dev.json")
    _ocnli(tmp_path, 1, "test.json")
    with pytest.raises(QingbertError) as e:
        load_task("ocnli", tmp_path, need=("train", "dev"))
    assert e.value.message == f"task 'ocnli': no train file in {tmp_path}"
    assert e.value.hint == ("looked for train: train.50k.json, train.json, train.3k.json, train.jsonl, train.tsv, "
                            "train.txt; found: dev.json, test.json")
    t = load_task("ocnli", tmp_path)  # without need: the splits there
    assert list(t.splits) == ["dev", "test"]
    assert missing_splits_error(t, ("train", "dev")).hint == e.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(QingbertError) as e:
        load_task("cmrc2018", tmp_path / "empty", need=("train", "dev"))
    assert e.value.message.startswith("task 'cmrc2018': no train, dev or test file")
    assert "dev: cmrc2018_dev.json, dev.json" in e.value.hint and e.value.hint.endswith("found: (none)")


# --------------------------------------------------------------------------- TSV mirrors of CLUE tasks


def test_tnews_tsv_mirrors_headed_and_headerless(tmp_path):
    tsv(tmp_path / "h" / "train.tsv", [("id", "sentence", "label", "label_desc"), (7, "主队逆转取胜", 103, "news_sports"),
                                       (8, "央行下调准备金率", 104, "news_finance")])
    tsv(tmp_path / "h" / "test.tsv", [("id", "sentence"), (0, "新款手机发布")])
    t = load_task("tnews", tmp_path / "h")
    assert [(e.id, e.text, e.label) for e in t.splits["train"]] == [("7", "主队逆转取胜", "103"), ("8", "央行下调准备金率", "104")]
    assert t.label_names == {"103": "news_sports", "104": "news_finance"}
    assert t.splits["test"][0].label is None and t.splits["test"][0].text == "新款手机发布"
    tsv(tmp_path / "n" / "train.txt", [("主队逆转取胜", 103), ("央行下调准备金率", 104)])  # text, label
    tsv(tmp_path / "n" / "dev.txt", [(104, "股市收涨")])  # label, text
    t = load_task("tnews", tmp_path / "n")
    assert [(e.text, e.label) for e in t.splits["train"]] == [("主队逆转取胜", "103"), ("央行下调准备金率", "104")]
    assert (t.splits["dev"][0].text, t.splits["dev"][0].label) == ("股市收涨", "104")
    assert t.files["train"].endswith("train.txt") and not t.skipped


def test_afqmc_tsv_mirrors_headed_and_headerless(tmp_path):
    tsv(tmp_path / "h" / "train.tsv", [("sentence1", "sentence2", "label"), ("借呗怎么还", "借呗如何还款", 1),
                                       ("花呗账单", "余额宝收益", 0)])
    t = load_task("afqmc", tmp_path / "h")
    assert t.type == "pair" and t.labels == ["0", "1"]
    assert (t.splits["train"][0].text, t.splits["train"][0].text_b) == ("借呗怎么还", "借呗如何还款")
    tsv(tmp_path / "n" / "train.tsv", [("借呗怎么还", "借呗如何还款", 1), ("花呗账单", "余额宝收益", 0)])
    tsv(tmp_path / "n" / "test.tsv", [("怎么关闭花呗", "花呗能关掉吗")])
    t = load_task("afqmc", tmp_path / "n")
    assert [(e.text, e.text_b, e.label) for e in t.splits["train"]][1] == ("花呗账单", "余额宝收益", "0")
    assert [(e.id, e.text_b, e.label) for e in t.splits["test"]] == [(0, "花呗能关掉吗", None)]
    jl(tmp_path / "n" / "train.json", [{"sentence1": "来自JSON", "sentence2": "优先", "label": "1"}])
    assert load_task("afqmc", tmp_path / "n").splits["train"][0].text == "来自JSON"  # the official file wins


# --------------------------------------------------------------------------- generic


def test_generic_reader_jsonl_csv_tsv(tmp_path):
    jl(tmp_path / "j" / "train.jsonl", [{"q": "今天天气好", "y": 1}, {"q": "明天要下雨", "y": 0}])
    jl(tmp_path / "j" / "dev.jsonl", [{"q": "后天多云", "y": 1}])
    t = load_generic(tmp_path / "j", "classification", text_col="q", label_col="y")
    assert t.labels == ["0", "1"] and len(t.splits["dev"]) == 1
    (tmp_path / "pairs.csv").write_text('a,b,lab\n"你好，世界",世界你好,same\n再见,回头见,same\n', encoding="utf-8")
    t = load_generic(tmp_path / "pairs.csv", "pair", text_col="a", text_b_col="b", label_col="lab")
    assert t.splits["train"][0].text == "你好，世界" and t.splits["train"][0].text_b == "世界你好"
    tsv(tmp_path / "dev.tsv", [("短句一", "x"), ("短句二", "y")])
    t = load_generic(tmp_path / "dev.tsv", "classification", text_col=0, label_col=1)
    assert list(t.splits) == ["dev"] and t.labels == ["x", "y"]


# --------------------------------------------------------------------------- built-in


def test_pos_to_spans_merges_consecutive_person_tokens():
    text, spans = pos_to_spans(["王", "小明", "在", "上海", "浦东"], ["nr", "nr", "p", "ns", "ns"])
    assert [(text[s:e], t) for s, e, t in spans] == [("王小明", "PER"), ("上海", "LOC"), ("浦东", "LOC")]


def test_builtin_peoples_daily_ner_merges_names():
    t = load_task("builtin:peoples-daily-ner")
    assert t.type == "ner" and t.labels == ["PER", "LOC", "ORG"]
    for split in ("train", "dev", "test"):
        assert len(t.splits[split]) == len(builtin.peoples_daily(split))
    for i, (words, tags) in enumerate(builtin.peoples_daily("dev")):
        pairs = [j for j in range(len(tags) - 1) if tags[j] == tags[j + 1] == "nr"]
        if pairs:
            j = pairs[0]
            start = len("".join(words[:j]))
            name = words[j] + words[j + 1]
            ex = t.splits["dev"][i]
            assert ex.text == "".join(words)
            per = [(s, e) for s, e, ty in ex.entities if ty == "PER" and s <= start < e]
            assert len(per) == 1 and ex.text[per[0][0]:per[0][1]].startswith(name)
            break
    else:
        pytest.fail("no sentence with two consecutive nr tokens in the dev split")


def test_builtin_reviews_sentiment():
    t = load_task("builtin:reviews-sentiment")
    assert t.labels == ["negative", "positive"]
    seen = {}
    for split, examples in t.splits.items():
        assert examples
        for e in examples:
            assert seen.setdefault(e.text, split) == split
