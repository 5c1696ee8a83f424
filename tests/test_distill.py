"""Distillation: matches as data, layer copying, the general and task objectives, two stages, resume, CLI."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

from qingbert.distillation.config import DistillConfig
from qingbert.distillation.distill import (
    default_layers,
    distill,
    distill_general,
    distill_task,
    init_from_teacher_layers,
)
from qingbert.distillation.losses import kd_ce
from qingbert.distillation.matches import Shape, preset_matches, resolve_matches
from qingbert.distillation.objectives import GeneralDistillObjective
from qingbert.errors import QingbertError
from qingbert.models.loading import load_tokenizer
from qingbert.pretraining.mlm import IGNORE, WWMCollator, tokenizer_info
from qingbert.pretraining.pretrain import pretrain
from qingbert.training.loop import list_checkpoints

from .conftest import cli_env, run_cli, run_without_qingbert

STUDENT = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
FAST = {"batch_size": 8, "lr": 2e-3, "log_every": 2, "eval_batches": 2, "progress": False, "threads": 1,
        "warmup_ratio": 0.0, "save_every": 0}


def bert(vocab, hidden=64, layers=4, heads=2, seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, intermediate_size=2 * hidden))


def a_batch(prepared, n=8):
    from qingbert.data.prepare import load_prepared

    tok = load_tokenizer(str(prepared / "tokenizer"))
    ds = load_prepared(prepared, "train")
    rows = ds[:n]
    ex = [dict(zip(rows, v)) for v in zip(*rows.values())]
    for i, e in enumerate(ex):
        e["index"] = i
    return WWMCollator(tokenizer_info(tok))(ex), len(tok)


@pytest.fixture(scope="module")
def teacher_dir(small_prepared, tmp_path_factory):
    """A tiny 4-layer teacher with a trained (briefly) MLM head."""
    out = tmp_path_factory.mktemp("teacher") / "t"
    pretrain("minirbt-h256", small_prepared, out,
             {**FAST, "max_steps": 20, "lr": 3e-3,
              "overrides": {"num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128,
                            "num_attention_heads": 2}})
    return out


# ---------------------------------------------------------------------------
# matches


def test_minirbt_preset_is_the_published_mapping():
    t, s = Shape(12, 768, 12, 21128), Shape(6, 256, 8, 21128)
    m = resolve_matches("minirbt", t, s)
    assert [x["layer_T"] for x in m] == [0, 2, 4, 6, 8, 10, 12]
    assert [x["layer_S"] for x in m] == list(range(7))
    assert all(x["loss"] == "hidden_mse" and x["proj"] == ["linear", 256, 768] for x in m)
    assert default_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # MiniRBT's assistant initialisation
    same = resolve_matches("layer-to-layer", Shape(4, 64, 2, 10), Shape(4, 64, 2, 10))
    assert [(x["layer_T"], x["layer_S"], x["proj"]) for x in same] == [(i, i, None) for i in range(5)]
    att = preset_matches("attention-uniform", t, s)
    assert [(x["layer_T"], x["layer_S"]) for x in att] == [(1, 0), (3, 1), (5, 2), (7, 3), (9, 4), (11, 5)]


def test_matches_as_data_textbrewer_keys_and_errors():
    t, s = Shape(6, 768, 12, 100), Shape(3, 256, 4, 100)
    m = resolve_matches([{"layer_T": 6, "layer_S": 3, "feature": "hidden", "loss": "hidden_cos", "weight": 2,
                          "proj": ["linear", 256, 768]}, "none"], t, s)
    assert m == [dict(layer_T=6, layer_S=3, feature="hidden", loss="hidden_cos", weight=2, proj=["linear", 256, 768])]
    bad = [
        ({"layer_T": 7, "layer_S": 0, "loss": "hidden_mse", "proj": "linear"}, "teacher layer 7 does not exist"),
        ({"layer_T": 0, "layer_S": 4, "loss": "hidden_mse", "proj": "linear"}, "student layer 4 does not exist"),
        ({"layer_T": 0, "layer_S": 0, "loss": "hidden_mse", "proj": ["linear", 312, 768]}, "does not fit"),
        ({"layer_T": 0, "layer_S": 0, "loss": "hidden_mse"}, "projection"),
        ({"layer_T": 6, "layer_S": 3, "loss": "attention_mse"}, "attention layer"),
        ({"layer_T": 0, "layer_S": 0, "loss": "nope"}, "nope"),
        ({"layer_T": 0, "layer_S": 0}, "'loss' is missing"),
        ({"layer_T": 0, "layer_S": 0, "loss": "hidden_mse", "colour": 1}, "unknown key"),
        ("my-preset", "unknown match preset"),
    ]
    for spec, msg in bad:
        with pytest.raises(QingbertError, match=msg):
            resolve_matches([spec], t, s)
    with pytest.raises(QingbertError, match="equal depth"):
        resolve_matches("layer-to-layer", t, s)


# ---------------------------------------------------------------------------
# layer copying


def test_init_from_teacher_layers_copies_exactly():
    teacher = bert(50, layers=5)
    student = init_from_teacher_layers(teacher, [0, 2, 4])
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 5
    ts, ss = teacher.state_dict(), student.state_dict()
    for k, v in ss.items():
        if ".layer." in k:
            i = int(k.split(".layer.")[1].split(".")[0])
            src = k.replace(f".layer.{i}.", f".layer.{[0, 2, 4][i]}.")
            assert torch.equal(v, ts[src]), k
        else:
            assert torch.equal(v, ts[k]), k  # embeddings, MLM head
    ids = torch.randint(5, 50, (2, 7))
    teacher.eval()
    student.eval()
    # a student made of all the teacher's layers is the teacher
    full = init_from_teacher_layers(teacher, list(range(5)))
    full.eval()
    assert torch.allclose(full(ids).logits, teacher(ids).logits, atol=1e-6)
    for layers, msg in (([0, 1, 2, 3, 4, 5], "deeper"), ([0, 7], "0..4"), ([1, 1], "distinct"), ([], "empty")):
        with pytest.raises(QingbertError, match=msg):
            init_from_teacher_layers(teacher, layers)


def test_init_from_teacher_layers_prunes_the_feed_forward_to_the_most_important_neurons():
    teacher = bert(50, layers=2).eval()
    ffn = teacher.config.intermediate_size
    student = init_from_teacher_layers(teacher, [1], intermediate_size=ffn // 4).eval()
    t, s = teacher.bert.encoder.layer[1], student.bert.encoder.layer[0]
    assert s.intermediate.dense.weight.shape == (ffn // 4, teacher.config.hidden_size)
    score = t.intermediate.dense.weight.norm(dim=1) * t.output.dense.weight.norm(dim=0)
    kept = torch.sort(torch.topk(score, ffn // 4).indices).values
    assert torch.equal(s.intermediate.dense.weight, t.intermediate.dense.weight[kept])
    assert torch.equal(s.intermediate.dense.bias, t.intermediate.dense.bias[kept])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[:, kept])
    assert torch.equal(s.attention.self.query.weight, t.attention.self.query.weight)  # attention copied whole
    # the pruned layer computes the teacher layer's feed-forward with the other neurons switched off
    x = torch.randn(2, 5, teacher.config.hidden_size)
    mask = torch.zeros(ffn)
    mask[kept] = 1
    ref = torch.nn.functional.linear(t.intermediate(x) * mask, t.output.dense.weight, t.output.dense.bias)
    assert torch.allclose(s.output.dense(s.intermediate(x)), ref, atol=1e-6)
    for overrides, msg in (({"intermediate_size": ffn + 1}, "at most"), ({"hidden_size": 8}, "keeps the teacher's"),
                           ({"num_attention_heads": 1}, "keeps the teacher's")):
        with pytest.raises(QingbertError, match=msg):
            init_from_teacher_layers(teacher, [0], **overrides)


# ---------------------------------------------------------------------------
# the general objective


def test_general_objective_kd_only_at_masked_positions_and_projections_learn(small_prepared):
    batch, vocab = a_batch(small_prepared)
    teacher, student = bert(vocab, hidden=64, layers=4), bert(vocab, hidden=32, layers=2, seed=1)
    cfg = DistillConfig.from_dict({"temperature": 2.0, "kd_t2": True, "matches": "hidden-uniform"})
    obj = GeneralDistillObjective(teacher, student, cfg)
    # the teacher is not trained, not checkpointed, and stays in eval mode
    names = [n for n, _ in obj.named_parameters()]
    assert not any(n.startswith("_teachers") for n in names) and any(n.startswith("projections") for n in names)
    obj.train()
    assert not teacher.training and student.training
    assert len(obj.matches) == 3 and [m["layer_T"] for m in obj.matches] == [0, 2, 4]
    loss, m = obj(batch)
    # the KD term equals kd_ce over the full-sequence logits restricted to the masked positions
    sel = batch["labels"] != IGNORE
    with torch.no_grad():
        s_full = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    student.train()
    direct = kd_ce(s_full, t_full, temperature=2.0, mask=sel, t2=True)
    assert m["count"] == int(sel.sum())
    assert float(m["kd_loss"]) == pytest.approx(float(direct), rel=1e-4)
    assert float(loss) == pytest.approx(float(m["kd_loss"]) + float(m["match_loss"]), rel=1e-5)
    # projections (32 -> 64) get gradients and change; the teacher does not
    before = [p.detach().clone() for p in obj.projections.parameters()]
    t_before = teacher.bert.encoder.layer[0].output.dense.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-2)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.projections.parameters())
    assert teacher.bert.encoder.layer[0].output.dense.weight.grad is None
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, obj.projections.parameters()))
    assert torch.equal(t_before, teacher.bert.encoder.layer[0].output.dense.weight)


def test_general_objective_hard_loss_schedules_attention_and_multi_teacher(small_prepared):
    batch, vocab = a_batch(small_prepared)
    t1, t2 = bert(vocab, layers=2), bert(vocab, layers=2, seed=3)
    student = bert(vocab, hidden=64, layers=2, seed=1)
    cfg = DistillConfig.from_dict({"kd_weight": {"kind": "linear", "start": 1.0, "end": 0.0}, "hard_weight": 0.5,
                                   "matches": "attention-uniform", "teacher_weights": [3, 1]})
    obj = GeneralDistillObjective([t1, t2], student, cfg)
    assert obj.teacher_weights == [0.75, 0.25]
    obj.set_progress(0.0)
    loss0, m0 = obj(batch)
    assert {"kd_loss", "hard_loss", "match_loss"} <= set(m0)
    assert float(loss0) == pytest.approx(float(m0["kd_loss"]) + 0.5 * float(m0["hard_loss"])
                                         + float(m0["match_loss"]), rel=1e-5)
    obj.set_progress(1.0)  # the KD weight has decayed to 0
    loss1, m1 = obj(batch)
    assert float(loss1) == pytest.approx(0.5 * float(m1["hard_loss"]) + float(m1["match_loss"]), rel=1e-5)
    with pytest.raises(QingbertError, match="vocabularies differ"):
        GeneralDistillObjective(t1, bert(vocab + 5, layers=2), DistillConfig())


# ---------------------------------------------------------------------------
# stages end to end


def test_two_stage_distillation_runs_and_each_stage_loads_without_qingbert(small_prepared, teacher_dir, tmp_path):
    out = tmp_path / "d"
    cfg = {**FAST, "max_steps": 12, "temperature": 2.0, "overrides": STUDENT}
    r = distill(str(teacher_dir), "minirbt-h256", small_prepared, out, assistant="teacher-layers",
                config=cfg, assistant_config={**FAST, "max_steps": 12, "init_from_teacher_layers": [0, 3]})
    a, s = r["stages"]
    assert a["stage"] == "general-distill" and a["student_shape"]["layers"] == 2 and a["student_shape"]["width"] == 64
    assert a["student_init"]["init"].startswith("teacher layers [0, 3]")
    assert s["teacher"] == [str(out / "assistant")] and s["student_shape"]["width"] == 32
    assert s["parameters"]["student"] < a["parameters"]["student"] < a["parameters"]["teacher"]
    assert [m["layer_T"] for m in s["matches"]] == [0, 1, 2] and s["matches"][0]["proj"] == ["linear", 32, 64]
    assert (out / "student" / "projections.safetensors").exists()
    for stage in (a, s):
        assert stage["eval_after"]["masked_accuracy"] >= 0 and 0 <= stage["eval_after"]["teacher_agreement"] <= 1
    code = f"""
from transformers import AutoModelForMaskedLM, AutoTokenizer
for sub, width in (("assistant", 64), ("student", 32)):
    m = AutoModelForMaskedLM.from_pretrained({str(out)!r} + "/" + sub)
    t = AutoTokenizer.from_pretrained({str(out)!r} + "/" + sub)
    assert m.config.hidden_size == width and len(t) == m.config.vocab_size
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
    # a finished stage is not redone
    r2 = distill(str(teacher_dir), "minirbt-h256", small_prepared, out, assistant="teacher-layers", config=cfg)
    assert [x["created"] for x in r2["stages"]] == [a["created"], s["created"]]


def test_distillation_learns_from_the_teacher(small_prepared, teacher_dir, tmp_path):
    # KD only: the held-out loss is the cross-entropy to the teacher's (sharpened, T = 0.5) distribution, i.e. its
    # entropy (fixed) + KL(teacher || student): a drop is the student moving towards the teacher
    m = distill_general(str(teacher_dir), "minirbt-h256", small_prepared, tmp_path / "s",
                        {**FAST, "max_steps": 30, "temperature": 0.5, "kd_t2": False, "matches": "none",
                         "overrides": STUDENT})
    b, a = m["eval_before"], m["eval_after"]
    assert a["loss"] < b["loss"] - 0.5
    assert m["steps"] == 30 and m["matches"] == []


def cli(*args, **kw):
    """The command in this process (conftest.run_cli): same status and output, no interpreter start-up."""
    return run_cli(*args, **kw)


def test_kill_and_resume(small_prepared, teacher_dir, tmp_path):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**FAST, "max_steps": 14, "save_every": 2, "seed": 5, "overrides": STUDENT,
                                      "lr": 1e-3}))
    common = ["distill", "--teacher", str(teacher_dir), "--student", "minirbt-h256", "--data", str(small_prepared),
              "--config", str(recipe)]
    ref = cli(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "qingbert", *common, "--out", str(out)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = int(np.random.default_rng().integers(2, 6)) * 2
    deadline = time.time() + 300
    while time.time() < deadline:
        ck = list_checkpoints(out / "student")
        if ck and int(ck[0].name.split("-")[1]) >= target:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(list_checkpoints(out / "student")[0].name.split("-")[1])
    assert done < 14, "the run finished before it could be killed"
    res = cli(*common, "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout
    a = load_file(str(tmp_path / "ref" / "student" / "model.safetensors"))
    b = load_file(str(out / "student" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert json.loads((out / "student" / "manifest.json").read_text())["steps"] == 14


def test_bad_inputs_fail_before_training(small_prepared, teacher_dir, tmp_path):
    t = str(teacher_dir)
    cases = [
        (dict(config={"matches": "nope"}), "unknown match preset"),
        (dict(config={"init_from_teacher_layers": [0, 1, 2, 3, 4]}), "deeper"),
        (dict(assistant="rbt6"), "assistant rbt6 has 6 layers, the teacher 4"),
        (dict(config={"kd_loss": "kl"}), "unknown kd_loss"),
        (dict(config={"temperature": {"kind": "sideways"}}), "sideways"),
    ]
    for kw, msg in cases:
        out = tmp_path / "x"
        with pytest.raises(QingbertError, match=msg):
            distill(t, "minirbt-h256", small_prepared, out, **kw)
        assert not list_checkpoints(out / "student") and not list_checkpoints(out / "assistant")
    r = cli("distill", "--teacher", t, "--student", "minirbt-h256", "--data", str(small_prepared),
            "--out", str(tmp_path / "x"), "--matches", "nope")
    assert r.returncode == 2 and "unknown match preset" in r.stderr and "Traceback" not in r.stderr
    matches = tmp_path / "m.yaml"
    matches.write_text("- {layer_T: 9, layer_S: 0, loss: hidden_mse, proj: linear}\n")
    r = cli("distill", "--teacher", str(teacher_dir), "--student", "minirbt-h256", "--data", str(small_prepared),
            "--out", str(tmp_path / "y"), "--matches", str(matches), "--layers", "2")
    assert r.returncode == 2 and "teacher layer 9 does not exist" in r.stderr
    assert not list_checkpoints(tmp_path / "y" / "student")
    # a teacher on another vocabulary
    other = tmp_path / "other"
    bert(50, layers=1).save_pretrained(other)
    r = cli("distill", "--teacher", str(other), "--student", "minirbt-h256", "--data", str(small_prepared),
            "--out", str(tmp_path / "z"))
    assert r.returncode == 2 and "token embeddings" in r.stderr


def test_untrained_teacher_head_is_refused_then_fitted(small_prepared, tmp_path):
    from transformers import BertModel

    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    torch.manual_seed(0)
    folder = tmp_path / "headless"
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = {**FAST, "max_steps": 4, "overrides": STUDENT}
    with pytest.raises(QingbertError, match="untrained MLM head.*--fit-teacher-head"):
        distill_general(str(folder), "minirbt-h256", small_prepared, tmp_path / "a", cfg)
    m = distill_general(str(folder), "minirbt-h256", small_prepared, tmp_path / "b", {**cfg, "fit_teacher_head": 6})
    info = m["teacher_info"][0]
    assert info["fitted_head_steps"] == 6 and (tmp_path / "b" / "teacher-head" / "config.json").exists()
    m = distill_general(str(folder), "minirbt-h256", small_prepared, tmp_path / "c", {**cfg, "hidden_only": True})
    assert m["steps"] == 4 and "kd_loss" not in json.dumps(m["eval_after"])


# ---------------------------------------------------------------------------
# task stage


@pytest.fixture(scope="module")
def sentiment_teacher(tiny_model, tmp_path_factory):
    from qingbert.tasks.finetune import finetune

    out = tmp_path_factory.mktemp("ft") / "teacher"
    finetune(str(tiny_model), "builtin:reviews-sentiment", out,
             config={**FAST, "epochs": 2, "max_train_examples": 400, "lr": 3e-3, "max_len": 64})
    return out


def test_task_distillation_classification_multi_teacher(sentiment_teacher, tiny_model, tmp_path):
    out = tmp_path / "student"
    r = distill_task([str(sentiment_teacher), str(sentiment_teacher)], f"random:{tiny_model}",
                     "builtin:reviews-sentiment", out,
                     config={**FAST, "epochs": 2, "temperature": 2.0, "teacher_weights": [1, 1]},
                     finetune_config={"max_train_examples": 400, "max_len": 64})
    assert r["dev"]["accuracy"] > 55  # above chance (two balanced classes)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "task-distill" and len(m["distill"]["teachers"]) == 2
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    code = f"""
from transformers import AutoModelForSequenceClassification
m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})
assert set(m.config.id2label.values()) == {{"negative", "positive"}}, m.config.id2label
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_task_teacher_cache_gives_the_same_targets(sentiment_teacher, tiny_model):
    from qingbert.distillation.distill import TaskDistiller
    from qingbert.distillation.objectives import IndexCollator
    from qingbert.tasks.finetune import FinetuneConfig, load_for_task
    from qingbert.tasks.heads import HEADS
    from qingbert.tasks.readers import load_task

    t = load_task("builtin:reviews-sentiment")
    head = HEADS[t.type](t)
    cfg = FinetuneConfig.from_dict({"max_len": 64})
    student, tok, _ = load_for_task(f"random:{tiny_model}", head, cfg)
    ds, _ = head.encode(t.splits["train"][:16], tok, cfg, train=True)
    rows = ds[:16]
    ex = [dict(zip(rows, v), index=i) for i, v in enumerate(zip(*rows.values()))]
    batch = IndexCollator(head.collator(tok))(ex)
    dcfg = DistillConfig.from_dict({})
    obj = TaskDistiller([str(sentiment_teacher)], dcfg).objective(head, student, tok, t.type)
    assert obj.use_cache and obj.hard_weight(0.0) == 1.0
    torch.manual_seed(0)
    l1, _ = obj(batch)
    assert len(obj.cache) == 16
    torch.manual_seed(0)
    l2, _ = obj(batch)  # from the cache
    assert float(l1) == pytest.approx(float(l2), rel=1e-5)


def test_task_distillation_ner_and_label_mismatch(tiny_model, tmp_path):
    from qingbert.tasks.finetune import finetune

    teacher = tmp_path / "ner-teacher"
    finetune(str(tiny_model), "builtin:peoples-daily-ner", teacher,
             config={**FAST, "max_steps": 6, "max_train_examples": 64, "max_len": 64})
    r = distill_task(str(teacher), f"random:{tiny_model}", "builtin:peoples-daily-ner", tmp_path / "s",
                     config={**FAST, "max_steps": 6}, finetune_config={"max_train_examples": 64, "max_len": 64})
    assert "f1" in r["dev"]
    with pytest.raises(QingbertError, match="fine-tuned for a ner task"):
        distill_task(str(teacher), f"random:{tiny_model}", "builtin:reviews-sentiment", tmp_path / "x",
                     config={**FAST, "max_steps": 2}, finetune_config={"max_train_examples": 32})
    with pytest.raises(QingbertError, match="not a fine-tuned folder"):
        distill_task(str(tiny_model), f"random:{tiny_model}", "builtin:reviews-sentiment", tmp_path / "y",
                     config={**FAST, "max_steps": 2}, finetune_config={"max_train_examples": 32})


def test_student_from_any_config_and_mrc_task_stage(small_prepared, teacher_dir, tiny_model, tmp_path):
    from qingbert.tasks.finetune import finetune

    from .test_finetune import _write_cmrc

    # a student given as a bare config.json (any architecture transformers knows), built on the data's vocab
    cfg_file = tmp_path / "student.json"
    cfg_file.write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3,
                                    "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 7}))
    m = distill_general(str(teacher_dir), str(cfg_file), small_prepared, tmp_path / "g", {**FAST, "max_steps": 3})
    assert m["student_shape"]["layers"] == 3 and m["student_shape"]["vocab"] == m["teacher_shape"]["vocab"]
    assert m["student_init"]["init"].startswith("random (config")
    # task stage on span-extraction reading comprehension (start/end distributions over positions)
    data = _write_cmrc(tmp_path / "cmrc")
    teacher = tmp_path / "mrc-teacher"
    finetune(str(tiny_model), "cmrc2018", teacher, data_dir=str(data), max_len=64,
             config={**FAST, "max_steps": 8})
    r = distill_task(str(teacher), f"random:{tiny_model}", "cmrc2018", tmp_path / "s", str(data),
                     config={**FAST, "max_steps": 8, "temperature": 2.0}, finetune_config={"max_len": 64})
    assert {"em", "f1"} <= set(r["dev"])
    log = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["loss"]) for x in log)


def test_two_processes_with_accelerate(small_prepared, teacher_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "qingbert", "distill", "--teacher", str(teacher_dir), "--student", "minirbt-h256", "--layers", "2",
           "--data", str(small_prepared), "--out", str(out), "--max-steps", "8", "--batch-size", "4",
           "--save-every", "4", "--threads", "1", "--log-every", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "student" / "manifest.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 8
    assert r.stdout.count("general-distill:") == 1
    assert list_checkpoints(out / "student")


def _torch_and_onnx_objectives(small_prepared, teacher_dir, backend: str):
    """The same teacher -> student objective with the teacher in torch and in ``backend`` (same projections),
    and their (loss, metrics) on one batch."""
    batch, vocab = a_batch(small_prepared)
    teacher = BertForMaskedLM.from_pretrained(str(teacher_dir)).eval()
    student = bert(vocab, hidden=32, layers=2, seed=1)
    cfg = {"temperature": 2.0, "matches": "hidden-uniform"}
    ref = GeneralDistillObjective(teacher, student, DistillConfig.from_dict({**cfg, "teacher_backend": "torch"}))
    ref.eval()
    other = GeneralDistillObjective(teacher, student, DistillConfig.from_dict({**cfg, "teacher_backend": backend}))
    other.projections.load_state_dict(ref.projections.state_dict())
    other.eval()
    with torch.no_grad():
        out_ref, out_other = ref(batch), other(batch)
    return {"batch": batch, "teacher": teacher, "student": student, "cfg": cfg, "ref": ref, "other": other,
            "out_ref": out_ref, "out_other": out_other}


def test_teacher_in_onnx_runtime_gives_the_same_losses(small_prepared, teacher_dir, tmp_path):
    """The frozen teacher's encoder compiled to ONNX Runtime: same KD and match losses as the torch teacher."""
    r = _torch_and_onnx_objectives(small_prepared, teacher_dir, "onnx")
    ref, ort, batch, teacher, student = r["ref"], r["other"], r["batch"], r["teacher"], r["student"]
    (l_ref, m_ref), (l_ort, m_ort) = r["out_ref"], r["out_other"]
    assert ort.teacher_backend_used == "onnx" and ref.teacher_backend_used == "torch"
    assert float(l_ort) == pytest.approx(float(l_ref), rel=1e-4)
    assert float(m_ort["kd_loss"]) == pytest.approx(float(m_ref["kd_loss"]), rel=1e-4)
    assert float(m_ort["match_loss"]) == pytest.approx(float(m_ref["match_loss"]), rel=1e-4)
    # attention matches need the attention maps: the onnx teacher is not used for them
    att = GeneralDistillObjective(teacher, student, DistillConfig.from_dict(
        {"matches": "attention-uniform", "teacher_backend": "auto"}))
    att(batch)
    assert att.teacher_backend_used == "torch"
    with pytest.raises(QingbertError, match="teacher_backend"):
        DistillConfig.from_dict({"teacher_backend": "tensorrt"})
    m = distill_general(str(teacher_dir), "minirbt-h256", small_prepared, tmp_path / "s",
                        {**FAST, "max_steps": 3, "overrides": STUDENT, "teacher_backend": "auto"})
    assert m["teacher_backend"] == "onnx" and m["steps"] == 3
    assert m["teacher_backend_check"]["max_abs_diff"] <= 1e-3


def test_int8_teacher_is_checked_against_torch(small_prepared, teacher_dir, monkeypatch):
    """onnx-int8: a quantised teacher, close to torch's but not equal; past the tolerance it is refused."""
    import qingbert.distillation.objectives as distill_mod

    r = _torch_and_onnx_objectives(small_prepared, teacher_dir, "onnx-int8")
    q, batch, teacher, student, cfg = r["other"], r["batch"], r["teacher"], r["student"], r["cfg"]
    (_, m_ref), (_, m_q) = r["out_ref"], r["out_other"]
    assert q.teacher_backend_used == "onnx-int8"
    err = q.teacher_backend_check["relative_error"]
    assert 0 < err <= distill_mod.INT8_TEACHER_MAX_RELATIVE_ERROR  # quantised: not bit-equal, but close
    assert float(m_q["kd_loss"]) == pytest.approx(float(m_ref["kd_loss"]), rel=0.1)
    monkeypatch.setattr(distill_mod, "INT8_TEACHER_MAX_RELATIVE_ERROR", 0.0)
    strict = GeneralDistillObjective(teacher, student,
                                     DistillConfig.from_dict({**cfg, "teacher_backend": "onnx-int8"}))
    with pytest.raises(QingbertError, match="int8 hidden states"):
        strict(batch)
