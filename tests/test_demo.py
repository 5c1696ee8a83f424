"""The README's main command, ``qingbert demo`` (= ``qingbert run builtin:demo``), runs every stage of its recipe
(here with a few steps each, through ``--set``) and ends with the report and each student against its teacher."""

import json

import pytest

from qingbert.cli.main import main

QUICK = ["teacher.max_steps=12", "teacher.save_every=0", "teacher-sentiment.max_train_examples=200",
         "teacher-ner.max_train_examples=200", "teacher-sentiment.epochs=1", "teacher-ner.epochs=1",
         "student.max_steps=6", "student.save_every=0", "student-sentiment.max_train_examples=300",
         "student-ner.max_train_examples=300", "export.max_dev_examples=200", "index.limit=200", "serve.requests=10",
         "export.force=true"]  # (a 12-step teacher's int8 graph may lose more than half a point: kept, marked)


@pytest.mark.timeout(1200)
def test_demo_runs_every_stage_of_its_recipe(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out)]
    for s in QUICK:
        args += ["--set", s]
    assert main(args) == 0
    printed = capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    names = ["corpus", "teacher", "teacher-sentiment", "teacher-ner", "student", "student-sentiment", "student-ner",
             "export", "index", "serve"]
    assert [s["name"] for s in run["stages"]] == names and run["status"] == "done"
    assert all(s["status"] == "done" for s in run["stages"])
    for name in names:
        assert f"== {name} (" in printed
    assert "segmentation vs gold: word F1" in printed  # prepare's summary
    assert "held-out masked accuracy" in printed  # the teacher's pretraining
    assert "top-1 agreement with the teacher" in printed  # the general stage
    assert "% of teacher-sentiment" in printed and "the teacher's speed" in printed  # the student vs its teacher
    by = {s["name"]: s for s in run["stages"]}  # (a 12-step teacher may score 0 NER F1: no % printed for it)
    assert by["student-ner"]["metrics"]["teacher"] == "teacher-ner" and by["student-ner"]["metrics"]["speed"]["torch"]
    assert "POST /classify ->" in printed and "POST /search" in printed and "POST /encode with no texts -> 4" in printed
    assert f"report: {out / 'report.html'}" in printed
    assert (out / "report.html").is_file()
    assert (out / "export" / "onnx" / "model.int8.onnx").is_file()
    # the student is the teacher's width with one layer, initialised from the teacher's layer 1
    student = json.loads((out / "student" / "config.json").read_text())
    teacher = json.loads((out / "teacher" / "config.json").read_text())
    assert student["hidden_size"] == teacher["hidden_size"] and student["num_hidden_layers"] == 1
    # a second run is all up to date, and runs nothing
    assert main(args + ["--no-report"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert all(s["status"] == "up-to-date" for s in run["stages"])


FULL_QUICK = ["teacher.max_steps=12", "teacher.save_every=0", "student.max_steps=6", "student.save_every=0",
              "export.max_dev_examples=100", "export.force=true", "index.limit=100", "serve.requests=5"] + [
    f"{stage}.{key}" for stage in ("teacher-sentiment", "teacher-ner", "random-sentiment", "random-ner",
                                   "student-sentiment", "student-ner")
    for key in ("max_train_examples=200", "epochs=1")]


@pytest.mark.timeout(1200)
def test_demo_full_runs_the_longer_chain(tmp_path, capsys):
    out = tmp_path / "full"
    args = ["demo", "--full", "--out", str(out), "--no-report"]
    for s in FULL_QUICK:
        args += ["--set", s]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"] == "builtin:demo-full" and all(s["status"] == "done" for s in run["stages"])
    by = {s["name"]: s for s in run["stages"]}
    # the random-init baseline has the teacher's shape; the student is narrower and deeper (built from scratch)
    teacher = json.loads((out / "teacher" / "config.json").read_text())
    baseline = json.loads((out / "random-sentiment" / "config.json").read_text())
    student = json.loads((out / "student" / "config.json").read_text())
    assert (baseline["hidden_size"], baseline["num_hidden_layers"]) == (teacher["hidden_size"],
                                                                         teacher["num_hidden_layers"])
    assert student["hidden_size"] < teacher["hidden_size"] and student["num_hidden_layers"] > teacher[
        "num_hidden_layers"]
    assert by["student-ner"]["metrics"]["teacher"] == "teacher-ner"
