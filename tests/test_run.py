"""``qingbert run RECIPE``: a tiny recipe of every stage kind end to end; a changed option reruns exactly the stages
downstream of it; a killed run resumes; ``--dry-run`` plans what runs; bad recipes are one error naming file:line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qingbert.cli.main import main
from qingbert.pipeline.recipe import load_recipe
from qingbert.pipeline.runner import plan, run_recipe

from .conftest import cli_env

TINY_SHAPE = "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}"

# every stage kind, tiny: a vocab from a file, WWM shards with it, a 1 x 32 teacher, a general-distilled student,
# the teacher fine-tuned, the student task-distilled from it, bench, export, index, serve
TINY = f"""\
name: tiny
stages:
  vocab:
    sources: [corpus.txt]
    size: 600
  corpus:
    do: prepare
    sources: [corpus.txt]
    tokenizer: ${{vocab}}
    max_seq_len: 32
    eval_fraction: 0.1
    progress: false
  teacher:
    do: pretrain
    model: minirbt-h256
    overrides: {TINY_SHAPE}
    data: ${{corpus}}
    max_steps: 6
    batch_size: 8
    save_every: 3
    eval_batches: 1
    progress: false
  student:
    do: distill
    teacher: ${{teacher}}
    student: minirbt-h256
    overrides: {TINY_SHAPE}
    data: ${{corpus}}
    max_steps: 3
    batch_size: 8
    eval_batches: 1
    save_every: 0
    progress: false
  teacher-sentiment:
    do: finetune
    model: ${{teacher}}
    task: builtin:reviews-sentiment
    max_train_examples: 64
    max_steps: 4
    batch_size: 16
    max_len: 32
    progress: false
  student-sentiment:
    do: distill
    teacher: ${{teacher-sentiment}}
    student: ${{student}}
    task: builtin:reviews-sentiment
    hard_weight: 0.0
    max_train_examples: 64
    max_steps: 4
    batch_size: 16
    max_len: 32
    progress: false
  bench:
    models: ["${{teacher}}"]
    tasks: [builtin:reviews-sentiment]
    lrs: [1.0e-3]
    epochs: [1]
    seeds: [1]
    max_train_examples: 32
    max_len: 32
    speed_repeats: 1
  export:
    model: ${{student-sentiment}}
    task: builtin:reviews-sentiment
    max_dev_examples: 64
    speed_batch: 4
    speed_seq: 16
  index:
    model: ${{export}}
    corpus: corpus.txt
    limit: 40
  serve:
    model: ${{export}}
    index: ${{index}}
    requests: 5
"""
ALL = ["vocab", "corpus", "teacher", "student", "teacher-sentiment", "student-sentiment", "bench", "export", "index",
       "serve"]


def _recipe(tmp_path, text=TINY, name="recipe.yaml"):
    from qingbert.data.builtin import reviews

    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(t for t, _ in reviews("train")[:300]) + "\n", encoding="utf-8")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _check_report(out, stages):
    """The report of a real run: HTML that parses, a row per stage, the charts embedded, nothing online."""
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.links, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.imgs.append(a.get("src", ""))
            for key in ("src", "href"):
                if a.get(key):
                    self.links.append(a[key])

        def handle_data(self, data):
            self.text.append(data)

    page = Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert all(name in text for name in stages)
    assert len(page.imgs) >= 3 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert not [x for x in page.links if x.startswith(("http:", "https:", "//"))]
    for title in ("Training curves", "Dev scores", "Score vs speed"):
        assert title.lower() in text.lower(), title


def _statuses(run_dir):
    return {s["name"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny recipe run once (its record and output shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("run")
    path = _recipe(tmp)
    lines = []
    record = run_recipe(str(path), tmp / "out", progress=False, echo=lines.append)
    return path, tmp / "out", record, "\n".join(map(str, lines))


def test_every_stage_runs_end_to_end(tiny_run):
    path, out, record, printed = tiny_run
    assert record["status"] == "done"
    assert _statuses(out) == {name: "done" for name in ALL}
    run = json.loads((out / "run.json").read_text())
    by = {s["name"]: s for s in run["stages"]}
    assert by["teacher"]["depends"] == ["corpus"] and set(by["student-sentiment"]["depends"]) == {
        "teacher-sentiment", "student"}
    for name in ALL:  # each stage's folder says which recipe stage made it, with the fingerprint
        m = json.loads((out / name / "manifest.json").read_text())
        assert m["run"] == {"recipe": str(path), "stage": name, "kind": by[name]["kind"],
                            "fingerprint": by[name]["fingerprint"]}
        assert by[name]["duration_s"] >= 0 and by[name]["size_bytes"] > 0
    # the stages used each other's outputs: the corpus was tokenized with the vocab stage's vocabulary
    corpus = json.loads((out / "corpus" / "manifest.json").read_text())
    assert str(out / "vocab") in json.dumps(corpus["config"])
    student = by["student-sentiment"]["metrics"]
    assert student["teacher"] == "teacher-sentiment" and student["metric"] == "accuracy"
    assert 0 <= student["score"] <= 100 and student["speed"]["torch"] > 0
    assert by["export"]["metrics"]["source"] == "student-sentiment"
    assert {"torch", "onnx", "onnx-int8"} <= set(by["export"]["metrics"]["speed"])
    assert by["serve"]["metrics"]["requests"] == 5 and by["serve"]["metrics"]["latency_ms"]["p50"] > 0
    assert by["index"]["metrics"]["count"] == 40
    assert "% of teacher-sentiment" in printed  # the summary: each student against its teacher
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    _check_report(out, ALL)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()  # the verb, on its own
    assert main(["report", str(out / "teacher")]) == 2  # not a run folder: one error
    from transformers import AutoModelForSequenceClassification  # a stage's folder is a plain transformers folder

    AutoModelForSequenceClassification.from_pretrained(str(out / "student-sentiment"))


def test_unchanged_recipe_is_up_to_date_and_a_change_reruns_exactly_downstream(tiny_run, capsys):
    path, out, _, _ = tiny_run
    steps = plan(load_recipe(str(path)), out)
    assert {s["stage"]: s["action"] for s in steps} == {name: "up-to-date" for name in ALL}
    # the fine-tuned teacher changes: it, the student distilled from it, and what is built on that student rerun
    changed = ["--set", "teacher-sentiment.max_steps=5"]
    steps = plan(load_recipe(str(path), changed[1:]), out)
    expected = {"teacher-sentiment", "student-sentiment", "export", "index", "serve"}
    assert {s["stage"] for s in steps if s["action"] == "run"} == expected
    why = {s["stage"]: s["why"] for s in steps}
    assert "max_steps 4 -> 5" in why["teacher-sentiment"] and "upstream" in why["student-sentiment"]
    code = main(["run", str(path), "--out", str(out), "--dry-run", *changed])  # the plan, and nothing runs
    assert code == 0 and "max_steps 4 -> 5" in capsys.readouterr().out
    assert _statuses(out)["teacher-sentiment"] == "done"
    before = {n: (out / n / "manifest.json").stat().st_mtime_ns for n in ALL}
    record = run_recipe(str(path), out, sets=changed[1:], progress=False, report=False, echo=lambda *a: None)
    ran = {s["name"] for s in record["stages"] if s["status"] == "done"}
    assert ran == expected  # what the plan said, and only that
    assert {s["name"] for s in record["stages"] if s["status"] == "up-to-date"} == set(ALL) - expected
    after = {n: (out / n / "manifest.json").stat().st_mtime_ns for n in ALL}
    assert {n for n in ALL if after[n] != before[n]} == expected
    assert json.loads((out / "teacher-sentiment" / "manifest.json").read_text())["steps"] == 5


def test_until_only_and_a_folder_the_run_did_not_make(tmp_path, capsys):
    path = _recipe(tmp_path)
    out = tmp_path / "out"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "notes.txt").write_text("mine")
    assert main(["run", str(path), "--out", str(out), "--until", "corpus"]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert "teacher: exists and was not made by this recipe's stage 'teacher'" in err and "--overwrite" in err
    assert not (out / "vocab").exists() and (out / "teacher" / "notes.txt").read_text() == "mine"
    (out / "teacher" / "notes.txt").unlink()
    (out / "teacher").rmdir()
    assert main(["run", str(path), "--out", str(out), "--until", "corpus", "--no-report"]) == 0
    assert _statuses(out) == {"vocab": "done", "corpus": "done", **{n: "pending" for n in ALL[2:]}}
    assert json.loads((out / "run.json").read_text())["status"] == "partial"
    # --only a stage whose inputs are not there yet: refused, naming the stage it needs
    assert main(["run", str(path), "--out", str(out), "--only", "student"]) == 2
    assert "needs stage 'teacher', which is not up to date" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(out), "--only", "vocab", "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["vocab"])
    assert line.split()[2] == "up-to-date"


@pytest.mark.timeout(300)
def test_a_killed_run_resumes_the_interrupted_stage(tmp_path):
    text = TINY.replace("max_steps: 6\n", "max_steps: 150\n").replace("save_every: 3\n", "save_every: 10\n")
    path = _recipe(tmp_path, text)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "qingbert", "run", str(path), "--out", str(out), "--until",
                             "teacher", "--no-report"], env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "teacher").glob("checkpoints/step-*")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1].decode(errors="replace")
    assert list((out / "teacher").glob("checkpoints/step-*")), f"no checkpoint before the deadline: {err[-2000:]}"
    assert _statuses(out)["teacher"] == "running"
    steps = {s["stage"]: s["action"] for s in plan(load_recipe(str(path)), out)}
    assert steps["vocab"] == steps["corpus"] == "up-to-date" and steps["teacher"] == "resume"
    lines = []
    run_recipe(str(path), out, until="teacher", report=False, progress=False, echo=lines.append)
    assert _statuses(out)["teacher"] == "done"
    m = json.loads((out / "teacher" / "manifest.json").read_text())
    assert m["steps"] == 150
    log = [json.loads(line) for line in (out / "teacher" / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [r["step"] for r in log if r.get("split") == "train"]
    assert steps_logged == sorted(steps_logged)  # continued, not restarted from step 0
    assert any("resuming" in str(x) for x in lines)


BAD = {
    "not YAML": ("stages:\n  corpus: do: prepare\n  teacher: {}\n", ":2: not valid YAML (mapping values are not allowed"),
    "unquoted reference in a list": ("stages:\n  b:\n    models: [${a}]\n",
                                     ':3: not valid YAML (expected \',\' or \']\', but got \'{\') (inside [...] or {...} '
                                     'write a reference in quotes: ["${stage}"])'),
    "not a mapping": ("- a\n- b\n", "a recipe is a YAML mapping"),
    "unknown top key": ("stage:\n  corpus: {do: prepare, sources: [corpus.txt]}\n",
                        ":1: unknown key 'stage' (did you mean 'stages'?"),
    "unknown kind": ("stages:\n  corpus:\n    do: prepair\n    sources: [corpus.txt]\n",
                     ":3: stage 'corpus': unknown kind 'prepair' (did you mean 'prepare'?"),
    "unknown option": ("stages:\n  corpus: {do: prepare, sources: [corpus.txt]}\n  teacher:\n    do: pretrain\n"
                       "    model: minirbt-h256\n    data: ${corpus}\n    max_step: 3\n",
                       ":7: stage 'teacher' (pretrain): unknown key 'max_step' (did you mean 'max_steps'?"),
    "missing stage": ("stages:\n  corpus: {do: prepare, sources: [corpus.txt]}\n  teacher:\n    do: pretrain\n"
                      "    model: minirbt-h256\n    data: ${corpsu}\n",
                      ":6: stage 'teacher': 'data' refers to '${corpsu}', which is not a stage of this recipe "
                      "(did you mean '${corpus}'?"),
    "cycle": ("stages:\n  a: {do: finetune, model: '${b}', task: builtin:reviews-sentiment}\n"
              "  b: {do: finetune, model: '${a}', task: builtin:reviews-sentiment}\n", "cycle: a -> b -> a"),
    "missing file": ("stages:\n  corpus:\n    do: prepare\n    sources: [nope.txt]\n",
                     ":4: stage 'corpus': sources 'nope.txt' does not exist"),
    "missing input": ("stages:\n  teacher: {do: pretrain, model: minirbt-h256}\n",
                      ":2: stage 'teacher' (pretrain): missing 'data'"),
    "bad number": ("stages:\n  corpus: {do: prepare, sources: [corpus.txt]}\n  teacher:\n    do: pretrain\n"
                   "    model: minirbt-h256\n    data: ${corpus}\n    lr: -1\n",
                   ":7: stage 'teacher' (pretrain): training option lr must be a positive number"),
    "unknown task": ("stages:\n  ft: {do: finetune, model: minirbt-h256, task: tnewz}\n",
                     ":2: stage 'ft': unknown task 'tnewz' (did you mean 'tnews'?"),
    "duplicate key": ("stages:\n  corpus: {do: prepare, sources: [corpus.txt]}\n"
                      "  corpus: {do: prepare, sources: [corpus.txt]}\n", ":3: key 'corpus' appears twice"),
    "general and task": ("stages:\n  corpus: {do: prepare, sources: [corpus.txt]}\n  s:\n    do: distill\n"
                         "    teacher: minirbt-h256\n    student: minirbt-h256\n    data: ${corpus}\n"
                         "    task: builtin:reviews-sentiment\n",
                         "takes either 'data' (general stage, a prepared corpus) or 'task'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_is_one_error_before_anything_runs(case, tmp_path, capsys):
    text, expected = BAD[case]
    path = _recipe(tmp_path, text)
    code = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"qingbert: error: {path}") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_set_and_unknown_builtin(tmp_path, capsys):
    path = _recipe(tmp_path, "stages:\n  corpus: {do: prepare, sources: [corpus.txt]}\n")
    assert main(["run", str(path), "--set", "corpsu.max_seq_len=64", "--dry-run"]) == 2
    assert "has no stage 'corpsu' (did you mean 'corpus'?" in capsys.readouterr().err
    assert main(["run", str(path), "--set", "corpus.max_seq_len", "--dry-run"]) == 2
    assert "expected STAGE.KEY=VALUE" in capsys.readouterr().err
    assert main(["run", "builtin:dmeo", "--dry-run"]) == 2
    assert "did you mean 'builtin:demo'?" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo", "demo-full", "minirbt"])
def test_shipped_recipes_are_valid(name, tmp_path, capsys):
    assert main(["run", f"builtin:{name}", "--out", str(tmp_path / name), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "corpus" in out and "export" in out and not (tmp_path / name).exists()


def test_the_readme_recipe_example_is_valid(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## One recipe for the whole chain", 1)[1]
    text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "my_corpus.txt").write_text("今天天气很好\n", encoding="utf-8")
    path = _recipe(tmp_path, text)
    recipe = load_recipe(str(path))
    assert list(recipe.stages) == ["corpus", "teacher", "teacher-sentiment", "student", "student-sentiment", "export",
                                   "index", "serve"]
    assert recipe.stages["serve"].depends == ["export", "index"]


def test_a_failing_stage_stops_the_run_and_a_rerun_continues_there(tmp_path, capsys):
    text = """\
stages:
  vocab: {sources: [corpus.txt], size: 600}
  bad:
    do: prepare
    sources: [empty.txt]
    tokenizer: ${vocab}
    max_seq_len: 32
    progress: false
  corpus:
    do: prepare
    sources: [corpus.txt]
    tokenizer: ${vocab}
    max_seq_len: 32
    progress: false
"""
    path = _recipe(tmp_path, text)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qingbert: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    run = json.loads((out / "run.json").read_text())
    by = {s["name"]: s for s in run["stages"]}
    assert run["status"] == "failed" and by["bad"]["status"] == "failed" and by["bad"]["error"]
    assert by["vocab"]["status"] == "done" and by["corpus"]["status"] == "pending"  # stopped there
    vocab_made = (out / "vocab" / "manifest.json").stat().st_mtime_ns
    steps = {s["stage"]: (s["action"], s["why"]) for s in plan(load_recipe(str(path)), out)}
    assert steps["bad"] == ("run", "failed before") and steps["corpus"] == ("run", "new")  # (corpus: never started)
    (tmp_path / "empty.txt").write_text("今天天气很好，我们去公园散步。\n这本书写得很好，值得一看。\n", encoding="utf-8")
    steps = {s["stage"]: (s["action"], s["why"]) for s in plan(load_recipe(str(path)), out)}
    assert steps["vocab"][0] == "up-to-date" and steps["bad"] == ("run", "changed: sources.0 (file changed)")
    assert main(["run", str(path), "--out", str(out), "--no-report"]) == 0
    assert _statuses(out) == {"vocab": "up-to-date", "bad": "done", "corpus": "done"}
    assert (out / "vocab" / "manifest.json").stat().st_mtime_ns == vocab_made  # the earlier stage's output kept
