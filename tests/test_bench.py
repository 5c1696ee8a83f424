"""bench: aggregation math, resume, crash safety and reports with a fake finetune; one real end-to-end run."""

import csv
import json
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel

from qingbert.errors import QingbertError
from qingbert.tasks.bench import BenchConfig, bench, count_params, data_dirs, default_lrs, fmt_lr, run_name, slug

# score = BASE[model][task] + LR_BONUS[lr] + EPOCH_BONUS[model][epochs] + NOISE[seed]
BASE = {"A": {"t1": 80.0, "t2": 60.0}, "B": {"t1": 72.0, "t2": 57.0}}
LR_BONUS = {1e-4: 0.0, 2e-4: 1.0}
EPOCH_BONUS = {"A": {1.0: 0.0, 3.0: 2.0}, "B": {1.0: 3.0, 3.0: 0.0}}
NOISE = {1: -1.0, 2: 0.0, 3: 1.0}  # mean 0, sample std 1
METRIC = {"t1": "accuracy", "t2": "f1"}


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    """A tiny bare BERT folder that the fake finetune copies as its 'fine-tuned' output."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("enc") / "enc"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def _n_params(folder) -> int:
    return sum(p.numel() for p in BertModel.from_pretrained(folder).parameters())


class FakeFinetune:
    """Deterministic scores from (model, task, lr, epochs, seed); records its calls; may fail on one run."""

    def __init__(self, folder, fail_on=None):
        self.folder, self.fail_on, self.calls = folder, fail_on, []

    def __call__(self, model, task, out, data_dir=None, *, max_len=None, config=None):
        key = (model, task, config["lr"], config["epochs"], config["seed"])
        self.calls.append({"key": key, "data_dir": data_dir, "max_len": max_len, "config": dict(config)})
        if task not in METRIC:
            raise QingbertError(f"unknown task '{task}'")
        shutil.copytree(self.folder, out, dirs_exist_ok=True)
        if key == self.fail_on:
            raise RuntimeError("out of memory")
        score = BASE[model][task] + LR_BONUS[key[2]] + EPOCH_BONUS[model][key[3]] + NOISE[key[4]]
        return {"dev": {"metric": METRIC[task], "score": score, METRIC[task]: score, "examples": 10},
                "steps": 7, "out": out, "elapsed_s": 0.5}


def _config(out, **kw):
    base = dict(models=["A", "B"], tasks=["t1", "t2"], out=str(out), lrs=[1e-4, 2e-4], epochs=[1, 3],
                seeds=[1, 2, 3], max_len=16, speed_repeats=1, threads=1)
    return BenchConfig(**{**base, **kw})


def test_aggregation_reports_and_resume(encoder_folder, tmp_path, capsys):
    fake = FakeFinetune(encoder_folder)
    res = bench(_config(tmp_path / "b", data_dir="t1=/data/t1"), finetune_fn=fake)
    assert len(fake.calls) == 2 * 2 * 2 * 2 * 3
    call = fake.calls[0]
    assert call["max_len"] == 16 and call["data_dir"] == "/data/t1"
    assert {c["data_dir"] for c in fake.calls if c["key"][1] == "t2"} == {None}
    assert {k: call["config"][k] for k in ("lr", "epochs", "seed", "batch_size", "save_every", "progress",
                                           "max_train_examples")} == {
        "lr": 1e-4, "epochs": 1.0, "seed": 1, "batch_size": 32, "save_every": 0, "progress": False,
        "max_train_examples": 0}

    # by hand: A's best is lr 2e-4 / 3 epochs (80+1+2, 60+1+2), B's is lr 2e-4 / 1 epoch (72+1+3, 57+1+3)
    best = res["best"]
    a1, b1, b2 = best["A"]["tasks"]["t1"], best["B"]["tasks"]["t1"], best["B"]["tasks"]["t2"]
    assert (a1["lr"], a1["epochs"], a1["mean"], a1["std"]) == (2e-4, 3.0, 83.0, 1.0)
    assert (b1["lr"], b1["epochs"], b1["mean"]) == (2e-4, 1.0, 76.0)
    assert best["A"]["tasks"]["t2"]["mean"] == 63.0 and b2["mean"] == 61.0 and b2["metric"] == "f1"
    assert best["A"]["average"] == 73.0 and best["B"]["average"] == 68.5
    assert best["A"]["relative_average"] == pytest.approx(100.0)
    assert b1["relative"] == pytest.approx(76 / 83 * 100) and b2["relative"] == pytest.approx(61 / 63 * 100)
    assert best["B"]["relative_average"] == pytest.approx((76 / 83 + 61 / 63) * 50)
    worst = next(s for s in res["settings"] if (s["model"], s["task"], s["lr"], s["epochs"]) == ("B", "t1", 1e-4, 3))
    assert worst["scores"] == [71.0, 72.0, 73.0] and worst["mean"] == 72.0 and not worst["best"]

    out = tmp_path / "b"
    run = json.loads((out / "runs" / "A" / "t1" / "lr2e-4-ep3-seed3.json").read_text())
    assert run["score"] == 84.0 and run["metric"] == "accuracy" and run["steps"] == 7 and run["dev"]["examples"] == 10
    assert not (out / "models").exists()  # fine-tuned folders are deleted once scored
    speed = res["models"]["A"]["speed"]
    assert speed["seq_per_s"] > 0 and speed["batch_size"] == 32 and speed["max_len"] == 16
    assert res["models"]["A"]["params"] == _n_params(encoder_folder)

    md = (out / "results.md").read_text()
    assert "83.00 ± 1.00 (lr 2e-4, 3 ep)" in md and "61.00 ± 1.00 (lr 2e-4, 1 ep)" in md
    assert "| 91.6 | 96.8 | 94.2 |" in md and "t2 (f1)" in md and "Relative to A (= 100 %)" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 16
    row = next(r for r in rows if (r["model"], r["task"], r["best"]) == ("B", "t2", "1"))
    assert (float(row["mean"]), float(row["std"]), row["scores"]) == (61.0, 1.0, "60.0000;61.0000;62.0000")
    assert float(row["relative"]) == pytest.approx(61 / 63 * 100) and row["seq_per_s"]
    assert (out / "score_vs_speed.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["best"]["B"]["average"] == 68.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "qingbert.bench/1" and manifest["status"] == "complete" and "versions" in manifest

    # resume: nothing to redo; then exactly the deleted run
    capsys.readouterr()
    again = FakeFinetune(encoder_folder)
    bench(_config(out, data_dir="t1=/data/t1"), finetune_fn=again)
    assert again.calls == [] and "48 skip (done), 0 to run" in capsys.readouterr().out
    (out / "runs" / "B" / "t2" / "lr1e-4-ep3-seed2.json").unlink()
    res2 = bench(_config(out, data_dir="t1=/data/t1"), finetune_fn=again)
    assert [c["key"] for c in again.calls] == [("B", "t2", 1e-4, 3.0, 2)]
    assert res2["best"] == res["best"] and res2["models"] == res["models"]  # speed kept from runs/A/speed.json
    # other settings in the same folder are refused rather than mixed in
    with pytest.raises(QingbertError, match="other settings"):
        bench(_config(out, max_len=32), finetune_fn=again)


def test_crashed_run_leaves_no_json_and_resumes(encoder_folder, tmp_path, capsys):
    out = tmp_path / "c"
    cfg = _config(out, models=["A"], tasks=["t1"], lrs=[1e-4], epochs=[1], seeds=[1, 2], reference="A")
    fake = FakeFinetune(encoder_folder, fail_on=("A", "t1", 1e-4, 1.0, 2))
    with pytest.raises(RuntimeError, match="out of memory"):
        bench(cfg, finetune_fn=fake)
    assert (out / "runs" / "A" / "t1" / "lr1e-4-ep1-seed1.json").exists()
    assert not (out / "runs" / "A" / "t1" / "lr1e-4-ep1-seed2.json").exists()
    assert not (out / "models" / "A" / "t1" / "lr1e-4-ep1-seed2").exists()
    fixed = FakeFinetune(encoder_folder)
    res = bench(cfg, finetune_fn=fixed)
    assert [c["key"][4] for c in fixed.calls] == [2]
    assert res["best"]["A"]["tasks"]["t1"]["mean"] == 79.5  # (79 + 80) / 2
    assert "only 2 seeds" in res["warnings"][0] and "only 2 seeds" in capsys.readouterr().out
    assert "only 2 seeds" in (out / "results.md").read_text()


def test_keep_models_and_unknown_task(encoder_folder, tmp_path):
    out = tmp_path / "k"
    bench(_config(out, models=["A"], tasks=["t1"], lrs=[1e-4], epochs=[1], seeds=[1], keep_models=True),
          finetune_fn=FakeFinetune(encoder_folder))
    assert (out / "models" / "A" / "t1" / "lr1e-4-ep1-seed1" / "config.json").exists()
    with pytest.raises(QingbertError, match="unknown task 'nope'"):
        bench(_config(tmp_path / "u", tasks=["nope"]), finetune_fn=FakeFinetune(encoder_folder))
    assert not list((tmp_path / "u").glob("runs/**/*.json"))


@pytest.mark.parametrize("kw, message", [
    ({"lrs": []}, "lrs must be a non-empty list"),
    ({"lrs": [1e-4, 0.0]}, "lrs must be positive"),
    ({"epochs": [3, -1]}, "epochs must be positive"),
    ({"epochs": []}, "epochs must be a non-empty list"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [1, 1]}, "same value twice"),
    ({"batch_size": 0}, "batch_size must be a positive"),
    ({"models": []}, "non-empty list of models"),
    ({"reference": "C"}, "reference model 'C'"),
    ({"finetune_options": {"lr": 1.0}}, "set by bench itself"),
    ({"data_dir": "t3=/x"}, "not benchmarked"),
])
def test_bad_config(kw, message, tmp_path):
    with pytest.raises(QingbertError, match=message):
        bench(_config(tmp_path / "x", **kw), finetune_fn=lambda *a, **k: pytest.fail("must not run"))


def test_helpers(encoder_folder, tmp_path):
    assert default_lrs(10.4e6) == [1e-4, 2e-4, 5e-4]
    assert default_lrs(38e6) == [5e-5, 1e-4, 2e-4]
    assert default_lrs(102e6) == [2e-5, 3e-5, 5e-5]
    assert count_params(str(encoder_folder)) == _n_params(encoder_folder)
    assert 10e6 < count_params("minirbt-h256") < 11e6
    with pytest.raises(QingbertError):
        count_params(str(tmp_path / "missing" / "folder"))
    assert fmt_lr(1e-4) == "1e-4" and fmt_lr(2.5e-5) == "2.5e-5"
    assert run_name(3e-5, 2.0, 1) == "lr3e-5-ep2-seed1" and run_name(1e-4, 0.5, 2) == "lr1e-4-ep0.5-seed2"
    assert slug("builtin:reviews-sentiment") == "builtin_reviews-sentiment" and slug("/a/b") == "a_b"
    assert slug("a b") != slug("a?b")
    (tmp_path / "d" / "tnews").mkdir(parents=True)
    assert data_dirs(str(tmp_path / "d"), ["tnews", "afqmc"]) == {"tnews": str(tmp_path / "d" / "tnews"),
                                                                   "afqmc": str(tmp_path / "d")}
    cfg = BenchConfig.from_dict({"models": "a,b", "tasks": ["t1"], "out": "o", "lrs": "1e-4, 2e-4", "seeds": [1]})
    assert cfg.models == ["a", "b"] and cfg.lrs == [1e-4, 2e-4] and cfg.epochs == [2, 3, 5, 10]
    with pytest.raises(QingbertError, match="unknown bench option 'lr'"):
        BenchConfig.from_dict({"models": "a", "tasks": "t", "out": "o", "lr": 1})


def test_default_lr_grid_for_a_small_folder(encoder_folder, tmp_path):
    fake = FakeFinetune(encoder_folder)
    BASE[str(encoder_folder)] = {"t1": 50.0}
    EPOCH_BONUS[str(encoder_folder)] = {1.0: 0.0}
    LR_BONUS.update({5e-4: 0.5})
    try:
        res = bench(_config(tmp_path / "g", models=[str(encoder_folder)], tasks=["t1"], lrs=None, epochs=[1],
                            seeds=[1]), finetune_fn=fake)
    finally:
        del BASE[str(encoder_folder)], EPOCH_BONUS[str(encoder_folder)], LR_BONUS[5e-4]
    assert sorted({c["key"][2] for c in fake.calls}) == [1e-4, 2e-4, 5e-4]
    assert res["labels"][str(encoder_folder)] == "enc"  # a folder is shown by its name
    assert res["models"][str(encoder_folder)]["speed"]["source"] == str(encoder_folder)


def test_real_finetune_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "real"
    res = bench(BenchConfig(models=[str(tiny_model)], tasks=["builtin:reviews-sentiment"], out=str(out),
                            lrs=[2e-3], epochs=[1], seeds=[1], max_len=48, max_train_examples=300, threads=1,
                            speed_repeats=2, finetune_options={"log_every": 100}))
    run = json.loads((out / "runs" / slug(str(tiny_model)) / "builtin_reviews-sentiment"
                      / "lr2e-3-ep1-seed1.json").read_text())
    assert run["metric"] == "accuracy" and 0 < run["score"] <= 100 and run["steps"] == 300 // 32
    assert run["dev"]["examples"] > 0
    best = res["best"][str(tiny_model)]
    assert best["tasks"]["builtin:reviews-sentiment"]["mean"] == run["score"] and best["relative_average"] == 100
    assert res["models"][str(tiny_model)]["speed"]["seq_per_s"] > 0
    assert not (out / "models").exists()
    for name in ("results.md", "results.csv", "results.json", "score_vs_speed.png", "manifest.json"):
        assert (out / name).stat().st_size > 0
