"""Export to ONNX (fused fp32, int8) with parity checks, and the one inference API over every folder kind."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qingbert
from qingbert.deploy.export import check_parity, export
from qingbert.errors import QingbertError
from qingbert.models.backends import available_backends, describe
from qingbert.tasks.finetune import finetune

from .conftest import run_cli

SENTI = {"max_steps": 30, "batch_size": 16, "lr": 1e-3, "max_train_examples": 480, "progress": False,
         "save_every": 0, "max_len": 64}


@pytest.fixture(scope="module")
def senti_model(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "senti"
    finetune(str(tiny_model), "builtin:reviews-sentiment", out, config=SENTI)
    return out


@pytest.fixture(scope="module")
def ner_model(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ner"
    finetune(str(tiny_model), "builtin:peoples-daily-ner", out, config=dict(SENTI, max_train_examples=300))
    return out


@pytest.fixture(scope="module")
def senti_export(senti_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "senti"
    rec = export(senti_model, out, max_dev_examples=300, speed_batch=4, speed_seq=32)
    return out, rec


def test_export_writes_parity_and_speed_and_keeps_hf_files(senti_export):
    out, rec = senti_export
    assert (out / "onnx" / "model.onnx").exists() and (out / "onnx" / "model.int8.onnx").exists()
    assert (out / "model.safetensors").exists() and (out / "config.json").exists() and (out / "vocab.txt").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "qingbert.finetuned/1" and m["task"] == "builtin:reviews-sentiment"  # still a fine-tuned folder
    e = m["export"]
    assert e["passed"] and set(e["backends"]) == {"torch", "onnx", "onnx-int8"}
    fp32 = e["backends"]["onnx"]["parity"]
    assert fp32["passed"] and max(fp32["max_abs_diff"].values()) < 1e-3
    assert fp32["dev_score"] == pytest.approx(fp32["dev_score_torch"], abs=0.1)
    int8 = e["backends"]["onnx-int8"]["parity"]
    assert int8["drop_points"] <= 0.5 and "dev_score" in int8
    assert e["optimizer"]["fused"].get("Attention", 0) >= 1  # ONNX Runtime fused the attention
    for b in e["backends"].values():
        assert b["seq_per_s"] > 0
    # the folder still loads with plain transformers
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.id2label[1] == "positive"


def test_every_backend_predicts_the_same_labels_as_torch(senti_export):
    out, _ = senti_export
    from qingbert.tasks.readers import load_task

    texts = [e.text for e in load_task("builtin:reviews-sentiment").splits["dev"][:64]]
    ref = qingbert.load(out, backend="torch").predict(texts)
    fp32 = qingbert.load(out, backend="onnx").predict(texts)
    assert [r["label"] for r in fp32] == [r["label"] for r in ref]
    assert np.allclose([r["score"] for r in fp32], [r["score"] for r in ref], atol=1e-4)
    int8 = qingbert.load(out, backend="onnx-int8").predict(texts)
    agree = np.mean([a["label"] == b["label"] for a, b in zip(int8, ref)])
    assert agree >= 0.9
    m = qingbert.load(out)  # default: the fastest backend that passed parity
    assert m.backend == available_backends(out)[0] and m.backend in ("onnx", "onnx-int8", "torch")
    one = m.predict("质量很好，很满意")
    assert set(one) == {"label", "score"} and one["label"] in ("positive", "negative")
    v = m.encode(["你好", "今天天气很好"])
    assert v.shape == (2, 64) and v.dtype == np.float32
    assert m.encode("你好").shape == (64,)


def test_parity_check_catches_a_corrupted_export(senti_export, tmp_path):
    out, _ = senti_export
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    path = bad / "onnx" / "model.onnx"
    g = onnx.load(str(path))
    big = max(g.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight (word embeddings)
    arr = numpy_helper.to_array(big).copy()
    arr *= -1.0
    big.CopyFrom(numpy_helper.from_array(arr, big.name))
    onnx.save(g, str(path))
    p = check_parity(bad, backends=("onnx",), max_dev_examples=100)
    assert not p["onnx"]["passed"] and max(p["onnx"]["max_abs_diff"].values()) > 1e-2


def test_int8_failure_is_refused_unless_forced(senti_model, tmp_path, monkeypatch):
    import qingbert.deploy.export as ex

    monkeypatch.setattr(ex, "INT8_MAX_DROP", -100.0)  # any int8 result now counts as a failure
    with pytest.raises(QingbertError, match=r"onnx-int8 loses -?[\d.]+ points of dev accuracy"):
        export(senti_model, tmp_path / "refused", max_dev_examples=100, speed_batch=2, speed_seq=16)
    assert not (tmp_path / "refused").exists()
    rec = export(senti_model, tmp_path / "forced", max_dev_examples=100, force=True, speed_batch=2, speed_seq=16)
    assert rec["forced"] and not rec["passed"]
    # a failed backend is never the default
    assert qingbert.load(tmp_path / "forced").backend != "onnx-int8"


def test_ner_export_and_entities(ner_model, tmp_path):
    out = tmp_path / "ner"
    rec = export(ner_model, out, max_dev_examples=100, speed_batch=2, speed_seq=16)
    assert rec["backends"]["onnx"]["parity"]["passed"]
    texts = ["江泽民主席在北京会见了美国客人。", "新华社记者报道。"]
    ref = qingbert.load(out, backend="torch").predict(texts)
    got = qingbert.load(out, backend="onnx").predict(texts)
    assert [[(e["start"], e["end"], e["type"]) for e in r["entities"]] for r in got] == \
        [[(e["start"], e["end"], e["type"]) for e in r["entities"]] for r in ref]
    for r, t in zip(got, texts):
        assert r["text"] == t
        for e in r["entities"]:
            assert t[e["start"]:e["end"]] == e["text"] and e["type"] in ("PER", "LOC", "ORG")


def test_load_works_on_every_folder_kind(tiny_model, senti_model, ner_model, tmp_path):
    enc = qingbert.load(tiny_model)  # a pretrained masked-LM folder: an encoder
    assert enc.kind == "encoder" and enc.backend == "torch"
    assert enc.encode(["你好"]).shape == (1, 64)
    with pytest.raises(QingbertError, match="encoder without a task head"):
        enc.predict("你好")
    assert qingbert.load(senti_model).kind == "classification"
    assert qingbert.load(ner_model).kind == "ner"
    # an exported encoder (no task): int8 parity by sentence-vector cosine
    rec = export(tiny_model, tmp_path / "enc", speed_batch=2, speed_seq=16)
    assert "mean_cosine" in rec["backends"]["onnx-int8"]["parity"]
    assert qingbert.load(tmp_path / "enc").encode("你好").shape == (64,)


def test_bad_inputs(tiny_model, senti_export, small_prepared, tmp_path):
    out, _ = senti_export
    with pytest.raises(QingbertError, match="prepared corpus"):
        export(small_prepared, tmp_path / "x")
    with pytest.raises(QingbertError, match="no such model folder"):
        qingbert.load(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QingbertError, match="not a model folder"):
        describe(empty)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "onnx" / "model.int8.onnx").unlink()
    with pytest.raises(QingbertError, match="model.int8.onnx is missing"):
        qingbert.load(broken, backend="onnx-int8")
    m = qingbert.load(out, backend="torch")
    with pytest.raises(QingbertError, match="takes texts"):
        m.predict([1, 2])


def test_cli_export_predict_and_submission(senti_export, tmp_path):
    out, _ = senti_export
    r = run_cli("predict", "--model", str(out), "--text", "太差了，不推荐",
                        "--text", "非常好用")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(x["label"] in ("positive", "negative") for x in lines)
    r = run_cli("predict", "--model", str(out), "--task",
                        "builtin:reviews-sentiment", "--split", "dev", "--out", str(tmp_path / "sub.jsonl"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend onnx" in r.stdout and "dev: accuracy" in r.stdout
    sub = [json.loads(x) for x in (tmp_path / "sub.jsonl").read_text().splitlines()]
    assert set(sub[0]) == {"id", "label"}
    r = run_cli("export", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a model folder" in r.stderr and "Traceback" not in r.stderr


def test_mrc_export_answers_like_torch(tiny_model, tmp_path):
    from .test_finetune import _write_cmrc

    data = _write_cmrc(tmp_path / "cmrc")
    ft = tmp_path / "ft"
    finetune(str(tiny_model), "cmrc2018", ft, data_dir=str(data), max_len=64,
             config={"max_steps": 60, "batch_size": 16, "lr": 3e-3, "save_every": 0, "progress": False})
    rec = export(ft, tmp_path / "exp", data_dir=str(data), speed_batch=2, speed_seq=16)
    p = rec["backends"]["onnx"]["parity"]
    assert p["passed"] and p["dev_task"] == "cmrc2018" and p["dev_score"] == pytest.approx(p["dev_score_torch"])
    q = [{"question": "张三住在哪里？", "context": "今天天气很好。张三住在上海，每天坐地铁上班。"},
         ("李四住在哪里？", "我们一起去公园。李四住在北京，每天坐地铁上班。")]
    ref = qingbert.load(tmp_path / "exp", backend="torch").predict(q)
    got = qingbert.load(tmp_path / "exp", backend="onnx").predict(q)
    assert [r["answer"] for r in got] == [r["answer"] for r in ref]
    for r, item in zip(got, q):
        ctx = item["context"] if isinstance(item, dict) else item[1]
        assert r["start"] < 0 or ctx[r["start"]:r["start"] + len(r["answer"])] == r["answer"]
