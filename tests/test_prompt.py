"""Prompt-based (PET) fine-tuning: one [MASK] that truncation keeps, label scores that are the MLM logits at the
mask, a few-shot run in the one loop whose folder loads without qingbert, and bad input refused before training."""

import json
import random

import pytest
import torch

from qingbert.errors import QingbertError
from qingbert.tasks import prompt
from qingbert.tasks.prompt import (
    PromptCollator,
    PromptObjective,
    encode_prompts,
    evaluate_prompt,
    parse_template,
    parse_verbalizer,
    prompt_finetune,
    prompt_predict,
    sample_examples,
)
from qingbert.tasks.readers import TextExample

from .conftest import run_without_qingbert

TEMPLATE = "{text}。总之很[MASK]。"
VERB = {"1": "好", "0": "差"}
FAST = {"max_steps": 20, "batch_size": 16, "lr": 5e-3, "log_every": 1, "progress": False, "threads": 1}
FILLERS = ["这家店的", "昨天买的", "朋友送的", "网上看到的", "第二次买的", "商场里的"]
THINGS = ["衣服", "手机", "书", "耳机", "杯子", "鞋子"]


def _review(rnd, label: str) -> str:
    word = "好" if label == "1" else "差"
    return f"{rnd.choice(FILLERS)}{rnd.choice(THINGS)}质量{word}，{rnd.choice(['真的', '确实', '感觉'])}{word}"


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory):
    """A ChnSentiCorp-format task (``label<TAB>text_a`` with a header): the label is readable from one word."""
    rnd = random.Random(0)
    d = tmp_path_factory.mktemp("senti")
    for split, n in (("train", 80), ("dev", 24)):
        rows = ["label\ttext_a\n"] + [f"{lab}\t{_review(rnd, lab)}\n" for lab in ("1", "0") * (n // 2)]
        (d / f"{split}.tsv").write_text("".join(rows), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def tok_and_model(sentiment_dir, tmp_path_factory):
    """A tiny vocabulary of the task's characters (no 龘, no Latin) and a tiny random BERT masked-LM folder."""
    from transformers import BertConfig, BertForMaskedLM

    from qingbert.data.text import clean_text
    from qingbert.data.vocab import train_vocab
    from qingbert.models.tokenizer import make_tokenizer

    texts = [line.split("\t", 1)[1] for f in sorted(sentiment_dir.glob("*.tsv"))
             for line in f.read_text(encoding="utf-8").splitlines()[1:]]
    texts += ["总之很满意。", "是不是？对的，不对", "一般"] * 2
    # cleaned as `qingbert vocab` cleans its corpus (the full-width comma becomes ",")
    tok = make_tokenizer(train_vocab([clean_text(t) for t in texts], size=300))
    folder = tmp_path_factory.mktemp("tiny-mlm") / "model"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok, folder


# ---------------------------------------------------------------------------
# templates and verbalisers (no model)


def test_templates_parse_and_bad_templates_are_refused():
    t = parse_template(TEMPLATE, "classification")
    assert t.fields == ["text_a"] and not t.pair and t.render("不错") == "不错。总之很[MASK]。"
    assert parse_template("{text_a}？[MASK]，{text_b}", "pair").pair
    for bad, match in [("{text}。总之很好。", "no \\[MASK\\]"), ("[MASK]{text}[MASK]", "2 \\[MASK\\]s"),
                       ("总之很[MASK]。", "no text placeholder"), ("{txt}很[MASK]", "did you mean \\{text\\}"),
                       ("{text}{text}[MASK]", "twice"), ("", "empty")]:
        with pytest.raises(QingbertError, match=match):
            parse_template(bad)
    with pytest.raises(QingbertError, match="pair task needs"):
        parse_template(TEMPLATE, "pair")
    with pytest.raises(QingbertError, match="single-text task"):
        parse_template("{text_a}[MASK]{text_b}", "classification")


def test_verbalizer_forms(tmp_path):
    want = {"1": "好", "0": "差"}
    assert parse_verbalizer(want) == want
    assert parse_verbalizer("1:好,0:差") == want
    assert parse_verbalizer("1：好，0=差") == want
    assert parse_verbalizer('{"1": "好", "0": "差"}') == want
    (tmp_path / "v.json").write_text(json.dumps(want, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "v.yaml").write_text("1: 好\n0: 差\n", encoding="utf-8")
    assert parse_verbalizer(str(tmp_path / "v.json")) == want
    assert parse_verbalizer(tmp_path / "v.yaml") == want  # YAML's int keys become the labels' strings
    for bad, match in [("1:好", "at least two"), ({"1": ["好", "棒"], "0": "差"}, "one word per label"),
                       (str(tmp_path / "nope.yaml"), "not found"), ("1好,0差", "LABEL:WORD"),
                       ("1:好,1:棒", "twice")]:
        with pytest.raises(QingbertError, match=match):
            parse_verbalizer(bad)


def test_stratified_sample_is_reproducible():
    ex = [TextExample(i, "x", None, "a" if i < 75 else "b") for i in range(100)]
    s = sample_examples(ex, 8, seed=1, labels=["a", "b"])
    assert [e.label for e in s].count("a") == 6 and [e.label for e in s].count("b") == 2
    assert [e.id for e in s] == [e.id for e in sample_examples(ex, 8, seed=1, labels=["a", "b"])]
    assert [e.id for e in s] != [e.id for e in sample_examples(ex, 8, seed=2, labels=["a", "b"])]
    assert len(sample_examples(ex, 0, seed=1)) == 100
    assert [e.label for e in sample_examples(ex, 2, seed=0, labels=["a", "b"])] == ["a", "b"]  # one of each


# ---------------------------------------------------------------------------
# encoding and scores


def test_one_mask_and_truncation_cuts_only_the_text(tok_and_model):
    tok, _ = tok_and_model
    tpl = parse_template(TEMPLATE)
    short = TextExample(0, "昨天买的手机质量好", None, "1")
    long = TextExample(1, "这家店的衣服质量差" * 20, None, "0")
    sneaky = TextExample(2, "书[MASK]质量好", None, "1")
    rows, report = encode_prompts([short, long, sneaky], tok, tpl, {"0": 0, "1": 1}, max_len=24)
    tail = tok("。总之很", add_special_tokens=False)["input_ids"] + [tok.mask_token_id] + \
        tok("。", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    for ids, pos in zip(rows["input_ids"], rows["mask_pos"]):
        assert ids.count(tok.mask_token_id) == 1 and ids[pos] == tok.mask_token_id
        assert ids[0] == tok.cls_token_id and ids[-len(tail):] == tail  # the template survives whole
    assert len(rows["input_ids"][1]) == 24 and report["truncated_to_max_len"] == 1
    assert report["mask_tokens_in_text"] == 1 and rows["label"] == [1, 0, 1]
    # untruncated Chinese: the same tokens as tokenizing the rendered prompt in one go
    assert rows["input_ids"][0] == tok(tpl.render(short.text))["input_ids"]
    # pairs: both texts are cut (longest first), the template is not
    pair = parse_template("{text_a}？[MASK]，{text_b}", "pair")
    rows, report = encode_prompts([TextExample(0, "好" * 30, "差" * 4, "1")], tok, pair, {"1": 0}, max_len=16)
    ids = rows["input_ids"][0]
    assert len(ids) == 16 and ids.count(tok.mask_token_id) == 1 and report["truncated_to_max_len"] == 1
    assert tok.convert_ids_to_tokens(ids).count("差") == 4  # the shorter text fits in half: kept whole
    with pytest.raises(QingbertError, match="no room for the text"):
        encode_prompts([short], tok, tpl, {"1": 0}, max_len=7)


def test_label_scores_are_the_mlm_logits_of_the_words_at_the_mask(tok_and_model):
    from transformers import AutoModelForMaskedLM

    from qingbert.data.text import clean_text

    tok, folder = tok_and_model
    net = AutoModelForMaskedLM.from_pretrained(folder).eval()
    tpl = parse_template("[MASK]满意。{text}")
    texts = ["书质量好", "网上看到的耳机质量差，真的差", "杯子"]
    rows, _ = encode_prompts([TextExample(i, t) for i, t in enumerate(texts)], tok, tpl, {}, max_len=64)
    ids = [tok.convert_tokens_to_ids(w) for w in ("好", "差")]
    obj = PromptObjective(net, ids)
    batch = PromptCollator(tok.pad_token_id)([{k: rows[k][i] for k in rows.columns} for i in range(len(texts))])
    with torch.no_grad():
        got = obj.label_logits(batch)
        for i, text in enumerate(texts):
            enc = tok(clean_text(tpl.render(text)), return_tensors="pt")  # the text clean-up of all stages
            pos = enc["input_ids"][0].tolist().index(tok.mask_token_id)
            want = net(**enc).logits[0, pos, ids]
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# the stage


def test_pet_few_shot_end_to_end_loads_without_qingbert(tok_and_model, sentiment_dir, tmp_path):
    _, folder = tok_and_model
    out = tmp_path / "pet"
    m = prompt_finetune(str(folder), "chnsenticorp", out, str(sentiment_dir), template=TEMPLATE,
                        verbalizer="1:好,0:差", train_examples=32, **FAST)
    assert m["steps"] == 20 and m["train_examples"] == 32 and m["stage"] == "prompt-finetune"
    assert m["dev"]["examples"] == 24 and m["dev"]["metric"] == "accuracy"
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["format"] == prompt.FORMAT and saved["template"] == TEMPLATE
    assert saved["verbalizer"] == {"0": "差", "1": "好"} and saved["labels"] == ["0", "1"]
    assert saved["label_tokens"] == ["差", "好"] and saved["encode"]["train"]["examples"] == 32
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert len(losses) == 20 and all(x == x and x < 1e3 for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    assert len((out / "predictions-dev.jsonl").read_text().splitlines()) == 24
    texts = ["第二次买的鞋子质量好确实好", "商场里的书质量差"]  # nothing clean_text changes
    preds = prompt_predict(out, texts)  # template and verbaliser from the manifest
    assert [set(p) for _, p in preds] == [{"0", "1"}] * 2
    assert all(abs(sum(p.values()) - 1) < 1e-5 and lab == max(p, key=p.get) for lab, p in preds)
    code = f"""
import json, torch
from transformers import AutoModelForMaskedLM, BertTokenizer
out = {str(out)!r}
m = json.load(open(out + "/manifest.json", encoding="utf-8"))
net = AutoModelForMaskedLM.from_pretrained(out).eval()
tok = BertTokenizer.from_pretrained(out)
res = []
for text in {texts!r}:
    enc = tok(m["template"].replace("{{text}}", text), return_tensors="pt")
    pos = enc["input_ids"][0].tolist().index(tok.mask_token_id)
    with torch.no_grad():
        logits = net(**enc).logits[0, pos, m["label_token_ids"]]
    res.append(dict(zip(m["labels"], torch.softmax(logits, -1).tolist())))
print(json.dumps(res))
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    plain = json.loads(res.stdout.strip().splitlines()[-1])
    for (_, p), q in zip(preds, plain):
        assert all(abs(p[k] - q[k]) < 1e-4 for k in p), (p, q)


def test_zero_shot_scores_a_pretrained_mlm_without_training(tok_and_model, sentiment_dir, tmp_path, monkeypatch):
    _, folder = tok_and_model
    r = evaluate_prompt(str(folder), "chnsenticorp", TEMPLATE, VERB, str(sentiment_dir))
    assert r["scores"]["examples"] == 24 and r["label_tokens"] == ["差", "好"]

    def no_training(*a, **k):
        raise AssertionError("zero-shot must not train")

    monkeypatch.setattr(prompt, "Trainer", no_training)
    m = prompt_finetune(str(folder), "chnsenticorp", tmp_path / "zs", str(sentiment_dir), template=TEMPLATE,
                        verbalizer=VERB, epochs=0, threads=1)
    assert m["zero_shot"] and m["steps"] == 0 and m["dev"]["accuracy"] == r["scores"]["accuracy"]
    assert "train" not in m["encode"]
    zs = prompt_predict(folder, ["书质量好"], TEMPLATE, VERB)  # a plain MLM folder: template given
    assert zs[0][0] in VERB


def _write_cluener(d):
    d.mkdir()
    row = {"text": "小明住在北京", "label": {"address": {"北京": [[4, 5]]}}}
    for split in ("train", "dev"):
        (d / f"{split}.json").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return d


def _write_cmrc(d):
    d.mkdir()
    doc = {"data": [{"paragraphs": [{"context": "小明住在北京。", "qas": [
        {"id": "q1", "question": "小明住在哪里？", "answers": [{"text": "北京", "answer_start": 4}]}]}]}]}
    for split in ("train", "dev"):
        (d / f"cmrc2018_{split}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return d


def test_bad_input_is_refused_before_training(tok_and_model, sentiment_dir, tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel, XLNetConfig, XLNetLMHeadModel

    tok, folder = tok_and_model

    def no_training(*a, **k):
        raise AssertionError("bad input reached training")

    monkeypatch.setattr(prompt, "Trainer", no_training)

    def run(model=str(folder), task="chnsenticorp", data=str(sentiment_dir), template=TEMPLATE, verbalizer=VERB,
            **kw):
        return prompt_finetune(model, task, tmp_path / "o", data, template=template, verbalizer=verbalizer,
                               **{**FAST, **kw})

    with pytest.raises(QingbertError, match="no \\[MASK\\]"):
        run(template="{text}。总之很好。")
    with pytest.raises(QingbertError, match="no text placeholder"):
        run(template="总之很[MASK]。")
    with pytest.raises(QingbertError, match="'满意' \\(label '1'\\) is 2 tokens in this vocabulary: 满 意"):
        run(verbalizer={"1": "满意", "0": "差"})
    with pytest.raises(QingbertError, match="'龘' \\(label '0'\\) becomes \\[UNK\\]"):
        run(verbalizer="1:好,0:龘")
    with pytest.raises(QingbertError, match="same word token"):
        run(verbalizer="1:好,0:好")
    with pytest.raises(QingbertError, match="missing '0'; not labels of task 'chnsenticorp': '2'"):
        run(verbalizer="1:好,2:差")
    with pytest.raises(QingbertError, match="missing '0'"):
        run(verbalizer={"1": "好", "positive": "差"})
    with pytest.raises(QingbertError, match="ner task; prompts"):
        run(task="cluener", data=str(_write_cluener(tmp_path / "ner")))
    with pytest.raises(QingbertError, match="mrc task; prompts"):
        run(task="cmrc2018", data=str(_write_cmrc(tmp_path / "mrc")))
    with pytest.raises(QingbertError, match="unknown prompt fine-tuning option 'doc_stride'"):
        run(doc_stride=32)
    with pytest.raises(QingbertError, match="no room for the text"):
        run(max_len=8)
    # models that cannot fill a [MASK]: a bare encoder (no MLM head weights), an architecture without one
    small = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    BertModel(small).save_pretrained(tmp_path / "encoder")
    tok.save_pretrained(tmp_path / "encoder")
    with pytest.raises(QingbertError, match="has no trained MLM head"):
        run(model=str(tmp_path / "encoder"))
    XLNetLMHeadModel(XLNetConfig(vocab_size=len(tok), d_model=32, n_layer=1, n_head=2, d_inner=64)) \
        .save_pretrained(tmp_path / "xlnet")
    tok.save_pretrained(tmp_path / "xlnet")
    with pytest.raises(QingbertError, match="xlnet model has no masked-LM head"):
        run(model=str(tmp_path / "xlnet"))
    assert not (tmp_path / "o").exists()


def test_cli_finetune_prompt_few_shot_and_flag_errors(tok_and_model, sentiment_dir, tmp_path, capsys):
    """`qingbert finetune --prompt ... --verbalizer ... --train-examples 16` runs PET; a half-given pair is refused."""
    from qingbert.cli.main import main

    _, folder = tok_and_model
    out = tmp_path / "cli-pet"
    code = main(["finetune", "--model", str(folder), "--task", "chnsenticorp", "--data", str(sentiment_dir),
                 "--out", str(out), "--prompt", TEMPLATE, "--verbalizer", "1:好,0:差", "--train-examples", "16",
                 "--batch-size", "8", "--max-steps", "4", "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0 and "4 steps on 16 examples" in printed and "dev:" in printed
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["stage"] == "prompt-finetune" and m["template"] == TEMPLATE
    # `qingbert predict` labels a task split through the folder's own template and verbaliser
    sub = tmp_path / "dev-submission.jsonl"
    assert main(["predict", "--model", str(out), "--task", "chnsenticorp", "--data", str(sentiment_dir),
                 "--split", "dev", "--out", str(sub)]) == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in sub.read_text(encoding="utf-8").splitlines()]
    texts = [line.split("\t", 1)[1] for line in (sentiment_dir / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert len(rows) == len(texts) == 24
    assert [r["label"] for r in rows] == [lab for lab, _ in prompt_predict(out, texts)]
    assert json.loads((out / "dev_metrics.json").read_text())["accuracy"] == pytest.approx(
        100 * sum(r["label"] == line[0] for r, line in zip(rows, (sentiment_dir / "dev.tsv").read_text(
            encoding="utf-8").splitlines()[1:])) / 24)
    # ... and texts given on the command line, one JSON result per line
    assert main(["predict", "--model", str(out), "--text", texts[0], "--text", texts[1]]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == [r["label"] for r in rows[:2]]
    assert all(x["score"] == max(x["scores"].values()) and set(x["scores"]) == {"1", "0"} for x in lines)
    assert main(["finetune", "--model", str(folder), "--task", "chnsenticorp", "--data", str(sentiment_dir),
                 "--out", str(tmp_path / "x"), "--prompt", TEMPLATE]) == 2
    assert "--prompt and --verbalizer go together" in capsys.readouterr().err
