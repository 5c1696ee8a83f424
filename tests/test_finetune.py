"""Fine-tuning (classification): runs in the one loop, beats the majority class, loads without qingbert."""

import json
from collections import Counter

import pytest
import torch

from qingbert.data import builtin
from qingbert.errors import QingbertError
from qingbert.models.loading import load_tokenizer
from qingbert.tasks.finetune import finetune

from .conftest import run_cli, run_without_qingbert


def test_sentiment_finetune_beats_majority_and_loads_without_qingbert(tiny_model, tmp_path):
    out = tmp_path / "ft"
    r = finetune(str(tiny_model), "builtin:reviews-sentiment", out, max_len=64,
                 config={"max_steps": 120, "batch_size": 32, "lr": 2e-3, "save_every": 0, "log_every": 20,
                         "progress": False, "threads": 1})
    dev = builtin.reviews("dev")
    majority = Counter(lab for _, lab in dev).most_common(1)[0][1] / len(dev)
    assert r["dev"]["examples"] == len(dev)
    assert r["dev"]["accuracy"] > majority + 0.05, (r["dev"], majority)
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"] == ["negative", "positive"] and m["task_type"] == "classification"
    code = f"""
from transformers import AutoModelForSequenceClassification, BertTokenizer
m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})
assert m.config.id2label == {{0: "negative", 1: "positive"}}, m.config.id2label
t = BertTokenizer.from_pretrained({str(out)!r})
logits = m(**t(["质量很好，非常满意"], return_tensors="pt")).logits
assert logits.shape == (1, 2)
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_finetune_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(QingbertError, match="did you mean"):
        finetune(str(tiny_model), "builtin:reviews-sentimnt", tmp_path / "o")
    with pytest.raises(QingbertError, match="unknown fine-tuning option 'learning_rate'"):
        finetune(str(tiny_model), "builtin:reviews-sentiment", tmp_path / "o", config={"learning_rate": 1e-4})
    with pytest.raises(QingbertError, match="needs a vocabulary"):
        finetune("random:minirbt-h256", "builtin:reviews-sentiment", tmp_path / "o")
    with pytest.raises(QingbertError, match="unknown task"):
        finetune(str(tiny_model), "tnewz", tmp_path / "o")


def test_zoo_name_means_hub_weights_and_fails_fast_offline(monkeypatch, tmp_path):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(QingbertError, match="hfl/rbt3"):
        finetune("rbt3", "builtin:reviews-sentiment", tmp_path / "o")
    assert time.monotonic() - start < 30


def test_empty_folder_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QingbertError):
        finetune(str(tmp_path / "empty"), "builtin:reviews-sentiment", tmp_path / "o")


FAST = {"max_steps": 12, "batch_size": 16, "lr": 1e-3, "save_every": 0, "progress": False, "threads": 1,
        "max_train_examples": 200}


def _tiny_folder(kind: str, tok, folder):
    """A tiny randomly initialised encoder of another family, saved with our BERT vocabulary."""
    from transformers import AlbertConfig, AutoModel, ErnieConfig, XLNetConfig

    torch.manual_seed(0)
    v = len(tok)
    config = {"albert": AlbertConfig(vocab_size=v, embedding_size=32, hidden_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=128),
              "ernie": ErnieConfig(vocab_size=v, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=128),
              "xlnet": XLNetConfig(vocab_size=v, d_model=64, n_layer=1, n_head=2, d_inner=128)}[kind]
    AutoModel.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["albert", "ernie", "xlnet"])
def test_other_encoders_through_auto_classes(kind, small_prepared, tmp_path):
    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    src = _tiny_folder(kind, tok, tmp_path / kind)
    out = tmp_path / "ft"
    r = finetune(str(src), "builtin:reviews-sentiment", out, max_len=48, config=FAST)
    assert r["dev"]["examples"] == len(builtin.reviews("dev"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["model_type"] == kind and m["steps"] == 12
    code = f"""
from transformers import AutoModelForSequenceClassification
m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})
assert m.config.model_type == {kind!r} and m.config.id2label[1] == "positive"
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_random_baseline_has_the_shape_not_the_weights(tiny_model, tmp_path):
    from safetensors.torch import load_file

    r = finetune(f"random:{tiny_model}", "builtin:reviews-sentiment", tmp_path / "rand", max_len=32,
                 config=dict(FAST, max_steps=1, lr=1e-9))
    assert json.loads((tmp_path / "rand" / "manifest.json").read_text())["init"].startswith("random")
    assert r["steps"] == 1
    pre = load_file(tiny_model / "model.safetensors")
    post = load_file(tmp_path / "rand" / "model.safetensors")
    key = next(k for k in post if k.endswith("word_embeddings.weight"))
    assert post[key].shape == pre["bert.embeddings.word_embeddings.weight"].shape
    assert not torch.allclose(post[key], pre["bert.embeddings.word_embeddings.weight"])
    # a zoo shape with our vocabulary and fewer layers
    r = finetune("random:minirbt-h256", "builtin:reviews-sentiment", tmp_path / "zoo", max_len=32,
                 config=dict(FAST, max_steps=1, tokenizer=str(tiny_model), overrides={"num_hidden_layers": 1}))
    cfg = json.loads((tmp_path / "zoo" / "config.json").read_text())
    assert cfg["hidden_size"] == 256 and cfg["num_hidden_layers"] == 1


TNEWS_LABELS = [("100", "news_story"), ("101", "news_culture"), ("102", "news_entertainment")]
TNEWS_WORDS = {"100": "故事", "101": "文化", "102": "娱乐"}


def _write_tnews(d):
    """A TNEWS-format fixture (label + label_desc, test without labels) whose label is readable from a word."""
    import random

    rnd = random.Random(0)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 240), ("dev", 60), ("test", 30)):
        with open(d / f"{split}.json", "w", encoding="utf-8") as fh:
            for i in range(n):
                lab, desc = TNEWS_LABELS[i % 3]
                when, how = rnd.choice(["今天", "昨天", "听说"]), rnd.choice(["很长", "不错", "火了"])
                text = f"{when}这条{TNEWS_WORDS[lab]}新闻{how}"
                row = {"label": lab, "label_desc": desc, "sentence": text, "keywords": ""}
                if split == "test":
                    row = {"id": i, "sentence": text, "keywords": ""}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return d


def test_cli_finetune_then_predict_writes_clue_submission(tiny_model, tmp_path):
    data = _write_tnews(tmp_path / "tnews")
    out = tmp_path / "ft"
    res = run_cli("finetune", "--model", str(tiny_model), "--task", "tnews", "--data", str(data), "--out", str(out),
                  "--max-steps", "60", "--batch-size", "16", "--lr", "3e-3", "--save-every", "0", "--max-len", "32",
                  "--threads", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dev: accuracy" in res.stdout
    dev = json.loads((out / "dev_metrics.json").read_text())
    assert dev["accuracy"] > 60, dev  # three balanced classes: chance is 33
    preds = [json.loads(x) for x in (out / "predictions-dev.jsonl").read_text().splitlines()]
    assert len(preds) == 60 and {"id", "label", "gold"} <= set(preds[0])
    res = run_cli("predict", "--model", str(out), "--task", "tnews",
                          "--data", str(data))
    assert res.returncode == 0, res.stderr[-3000:]
    sub = [json.loads(x) for x in (out / "tnews_predict.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sub] == list(range(30))
    assert {r["label"] for r in sub} <= {"100", "101", "102"}
    assert set(sub[0]) == {"id", "label"}
    # the wrong kind of task for this model: one clear line, exit 2
    res = run_cli("predict", "--model", str(out), "--task",
                          "builtin:peoples-daily-ner")
    assert res.returncode == 2 and "fine-tuned for a classification task" in res.stderr


CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津", "苏州"]
NAMES = ["小明", "小红", "老王", "张伟", "李娜", "王芳"]


def _write_cmrc(d):
    """CMRC 2018-format files: 'where does X live' questions over short contexts, test without answers."""
    import random

    rnd = random.Random(1)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 300), ("dev", 40), ("test", 12)):
        paragraphs = []
        for i in range(n):
            name, city = rnd.choice(NAMES), rnd.choice(CITIES)
            filler = "".join(rnd.choice("今天天气很好我们一起去公园散步吧") for _ in range(rnd.randint(5, 30)))
            context = f"{filler}。{name}住在{city}，每天坐地铁上班。{filler[::-1]}。"
            qa = {"id": f"{split.upper()}_{i}", "question": f"{name}住在哪里？", "answers": []}
            if split != "test":
                qa["answers"] = [{"text": city, "answer_start": context.index(city)}]
            paragraphs.append({"id": f"P{i}", "context": context, "qas": [qa]})
        doc = {"version": "v1.0", "data": [{"id": "D", "title": "t", "paragraphs": paragraphs}]}
        (d / f"cmrc2018_{split}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return d


def test_mrc_finetune_and_cmrc_submission(tiny_model, tmp_path):
    from qingbert.tasks.predict import predict

    data = _write_cmrc(tmp_path / "cmrc")
    out = tmp_path / "ft"
    r = finetune(str(tiny_model), "cmrc2018", out, data_dir=str(data), max_len=64,
                 config={"max_steps": 80, "batch_size": 16, "lr": 3e-3, "save_every": 0, "progress": False,
                         "threads": 1})
    assert r["dev"]["total"] == 40 and r["dev"]["metric"] == "f1"
    assert r["dev"]["f1"] > 50, r["dev"]  # a city out of a ~40-character context: chance is far below
    preds = [json.loads(x) for x in (out / "predictions-dev.jsonl").read_text().splitlines()]
    assert {"id", "answer", "gold"} <= set(preds[0])
    res = predict(out, "cmrc2018", data_dir=str(data))
    sub = json.loads((out / "cmrc2018_predict.json").read_text())
    assert res["examples"] == 12 and sorted(sub) == sorted(f"TEST_{i}" for i in range(12))
    assert all(isinstance(v, str) for v in sub.values())
    code = f"""
from transformers import AutoModelForQuestionAnswering
m = AutoModelForQuestionAnswering.from_pretrained({str(out)!r})
print("ok", type(m).__name__)
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and "ok BertForQuestionAnswering" in res.stdout, res.stderr[-3000:]


def test_two_processes_with_accelerate(tiny_model, tmp_path):
    """Data-parallel fine-tuning (gloo on CPU): both processes train, the main one scores and writes."""
    import subprocess
    import sys

    from .conftest import cli_env

    data = _write_tnews(tmp_path / "tnews")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "qingbert", "finetune", "--model", str(tiny_model), "--task", "tnews", "--data", str(data),
           "--out", str(out), "--max-steps", "20", "--batch-size", "8", "--lr", "3e-3", "--max-len", "32",
           "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 20 and m["dev"]["examples"] == 60
    assert r.stdout.count("dev: accuracy") == 1


def test_pair_task_lcqmc_format(tiny_model, tmp_path):
    """A sentence-pair task from LCQMC-style TSV (no header): both texts reach the model as one pair."""
    import random

    rnd = random.Random(2)
    d = tmp_path / "lcqmc"
    d.mkdir()
    for split, n in (("train", 400), ("dev", 80)):
        lines = []
        for i in range(n):
            a = "".join(rnd.choice("天气很好我们去公园") for _ in range(6))
            same = i % 2
            b = ("对的" if same else "不对") + a[::-1]  # the label is readable from the second text only
            lines.append(f"{a}\t{b}\t{same}\n")
        (d / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    r = finetune(str(tiny_model), "lcqmc", tmp_path / "ft", data_dir=str(d), max_len=32,
                 config={"max_steps": 60, "batch_size": 16, "lr": 3e-3, "save_every": 0, "progress": False,
                         "threads": 1})
    assert r["labels"] == ["0", "1"] and r["dev"]["examples"] == 80
    assert r["dev"]["accuracy"] > 75, r["dev"]  # chance is 50


def test_a_stale_run_is_never_resumed_or_shipped(tiny_model, tmp_path):
    """Run A to 40 steps; a fresh run B (other seed) into the same folder is refused, then started over with
    --overwrite, killed, and resumed: B's recipe continues and A's checkpoints and weights are gone."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from qingbert.training.loop import list_checkpoints

    from .conftest import cli_env

    out = tmp_path / "ft"
    common = ["finetune", "--model", str(tiny_model), "--task", "builtin:reviews-sentiment", "--out", str(out),
              "--max-len", "32", "--max-train-examples", "64", "--batch-size", "8", "--log-every", "5"]
    a = run_cli(*common, "--max-steps", "40", "--save-every", "10", "--seed", "1")
    assert a.returncode == 0, a.stderr[-2000:]
    a_weights = load_file(str(out / "model.safetensors"))

    b = ["--max-steps", "300", "--save-every", "5", "--seed", "2"]
    r = run_cli(*common, *b)
    assert r.returncode == 2 and "holds checkpoints of an earlier run" in r.stderr and "--overwrite" in r.stderr
    r = run_cli(*common, *b, "--resume")  # A's checkpoints for B's recipe: refused, naming what differs
    assert r.returncode == 2 and "belongs to another run" in r.stderr and "seed 1 -> 2" in r.stderr, r.stderr

    proc = subprocess.Popen([sys.executable, "-m", "qingbert", *common, *b, "--overwrite"], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ck = list_checkpoints(out)
        try:
            state = json.loads((ck[0] / "trainer_state.json").read_text()) if ck else {}
        except (OSError, ValueError):
            state = {}
        if state.get("config", {}).get("seed") == 2 and state["step"] >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(c.name.split("-")[1]) for c in list_checkpoints(out))
    assert steps and max(steps) < 300 and 40 not in steps, steps  # B's own checkpoints only, A's are gone
    assert not (out / "manifest.json").exists()  # the folder no longer claims A's finished model

    r = run_cli(*common, *b, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"(step {max(steps)} of 300)" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 300 and manifest["config"]["train"]["seed"] == 2, manifest
    b_weights = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(a_weights[k], b_weights[k]) for k in a_weights)
