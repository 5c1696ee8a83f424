"""``qingbert report``: the HTML / Markdown report of a ``qingbert run`` folder, on synthetic run folders."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from qingbert.errors import QingbertError
from qingbert.manifest import write_manifest
from qingbert.pipeline.report import load_run, read_metrics, score_rows, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _stages() -> list[dict]:
    """The stages of the built-in demo recipe, as `qingbert run` records them."""
    return [
        {"name": "corpus", "kind": "prepare", "folder": "corpus", "depends": [], "fingerprint": "3f9a01",
         "status": "done", "duration_s": 12.3, "size_bytes": 12_345_678, "error": None,
         "metrics": {"sequences": 20000, "chars": 3_000_000}},
        {"name": "teacher", "kind": "pretrain", "folder": "teacher", "depends": ["corpus"], "status": "done",
         "duration_s": 200.0, "size_bytes": 15_000_000,
         "metrics": {"steps": 800, "parameters": 3_670_000, "masked_accuracy_before": 0.01,
                     "masked_accuracy_after": 0.2}},
        {"name": "teacher-sentiment", "kind": "finetune", "folder": "teacher-sentiment", "depends": ["teacher"],
         "status": "done", "duration_s": 95.5,
         "metrics": {"task": "builtin:reviews-sentiment", "metric": "accuracy", "score": 80.0,
                     "parameters": 3_670_000, "speed": {"torch": 410.5}}},
        {"name": "student", "kind": "distill", "folder": "student", "depends": ["teacher"], "status": "up-to-date",
         "duration_s": 0.2,
         "metrics": {"stage": "general", "steps": 200, "parameters": 2_880_000, "masked_accuracy_after": 0.18,
                     "teacher_agreement": 0.7}},
        {"name": "student-sentiment", "kind": "distill", "folder": "student-sentiment",
         "depends": ["teacher-sentiment", "student"], "status": "done", "duration_s": 60.0,
         "metrics": {"stage": "task", "task": "builtin:reviews-sentiment", "metric": "accuracy", "score": 78.0,
                     "parameters": 2_880_000, "speed": {"torch": 880.0}, "teacher": "teacher-sentiment"}},
        {"name": "export", "kind": "export", "folder": "export", "depends": ["student-sentiment"], "status": "done",
         "duration_s": 30.0,
         "metrics": {"source": "student-sentiment", "task": "builtin:reviews-sentiment", "metric": "accuracy",
                     "scores": {"torch": 78.0, "onnx": 78.0, "onnx-int8": 77.6},
                     "speed": {"torch": 880.0, "onnx": 1500.0, "onnx-int8": 2600.0},
                     "files": {"model.safetensors": 11_000_000, "onnx/model.onnx": 11_000_000,
                               "onnx/model.int8.onnx": 3_000_000}}},
        {"name": "index", "kind": "index", "folder": "index", "depends": ["export"], "status": "done",
         "duration_s": 8.0, "metrics": {"count": 2000, "dim": 256, "factory": "Flat"}},
        {"name": "serve", "kind": "serve", "folder": "serve", "depends": ["export", "index"], "status": "done",
         "duration_s": 3.0,
         "metrics": {"requests": 50, "latency_ms": {"p50": 4.1, "p90": 6.0, "p99": 9.5}, "backend": "onnx-int8"}},
    ]


def _curve(steps: int, every: int, *, acc: str | None = "masked_accuracy", lr: float = 1e-3,
           extra: tuple = ()) -> list[dict]:
    """metrics.jsonl records as the training loop writes them: train lines every `every` steps, eval at the end."""
    recs = []
    for step in range(every, steps + 1, every):
        t = step / steps
        rec = {"split": "train", "step": step, "epoch": int(2 * t), "loss": 6.0 * math.exp(-2.5 * t) + 0.5,
               "lr": lr * min(1.0, 10 * t) * (1 - t) + 1e-6, "tokens_per_s": 5000.0 + 10 * step}
        if acc:
            rec[acc] = 0.2 * t + 0.01
        for key in extra:
            rec[key] = 0.6 * t + 0.1
        recs.append(rec)
    ev = {"split": "eval", "step": steps, "loss": 1.2, "perplexity": 3.3}
    if acc:
        ev[acc] = 0.2
    return recs + [ev]


def _write_jsonl(path, records, truncated: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if truncated:  # a run killed mid-write
        text += '{"split": "train", "step": 99'
    path.write_text(text, encoding="utf-8")


def make_run(tmp_path, stages=None, *, status="done", curves=True):
    """A synthetic `qingbert run` folder: run.json, stage folders with manifests and metrics.jsonl."""
    run_dir = tmp_path / "run"
    stages = _stages() if stages is None else stages
    for s in stages:
        write_manifest(run_dir / s["folder"], {"format": "qingbert.model/1", "stage": s["name"]})
    if curves:
        _write_jsonl(run_dir / "teacher" / "metrics.jsonl", _curve(800, 50))
        _write_jsonl(run_dir / "teacher-sentiment" / "metrics.jsonl", _curve(300, 20, acc="accuracy", lr=5e-5),
                     truncated=True)
        _write_jsonl(run_dir / "student" / "assistant" / "metrics.jsonl", _curve(100, 10))
        _write_jsonl(run_dir / "student" / "student" / "metrics.jsonl", _curve(200, 10))
        _write_jsonl(run_dir / "student-sentiment" / "metrics.jsonl",
                     _curve(300, 20, acc="accuracy", extra=("teacher_agreement",)))
    run = {"format": "qingbert.run/1", "recipe": "builtin:demo", "name": "demo", "out": str(run_dir),
           "started": "2026-12-04T17:00:00+0000", "finished": "2026-12-04T17:09:00+0000", "elapsed_s": 540.2,
           "status": status, "stages": stages}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    return run_dir


class _Page(HTMLParser):
    """Collects tags, attributes, table rows and text; checks that every opened element is closed."""

    def __init__(self):
        super().__init__()
        self.stack, self.attrs, self.rows, self.text, self.errors = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"</{tag}> does not close the open element")

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] in ("td", "th") and self.rows:
            self.rows[-1].append(data)


def parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    return page


def images(page: _Page) -> list[np.ndarray]:
    """The pixels of every <img> of the page, which must all be inline PNGs."""
    import matplotlib.image

    out = []
    for tag, attrs in page.attrs:
        if tag == "img":
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,"), src[:60]
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
            assert data.startswith(PNG_MAGIC) and len(data) > 5000
            out.append(matplotlib.image.imread(io.BytesIO(data), format="png"))
    return out


def assert_not_blank(pixels: np.ndarray) -> None:
    rgb = pixels[..., :3].reshape(-1, 3)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 200
    assert len(np.unique(rgb, axis=0)) > 20, "a single-colour (blank) image"
    assert (rgb.min(axis=1) < 0.9).mean() > 0.01, "almost nothing drawn on the white background"
    coloured = (rgb.max(axis=1) - rgb.min(axis=1)) > 0.3  # a line or marker in colour, not only black axes
    assert coloured.sum() > 50


def row_of(page: _Page, first: str, width: int | None = None) -> list[str]:
    """The first table row starting with `first` (of a table `width` columns wide)."""
    rows = [r for r in page.rows if r and r[0] == first and width in (None, len(r))]
    assert rows, f"no table row for {first}"
    return rows[0]


# ---------------------------------------------------------------------------


def test_full_report(tmp_path):
    run_dir = make_run(tmp_path)
    res = write_report(run_dir)
    assert res["html"] == run_dir / "report.html" and res["markdown"] == run_dir / "report.md"
    page = parse(res["html"])
    text = "".join(page.text)
    assert "demo" in text and "builtin:demo" in text and "2026-12-04T17:00:00+0000" in text and "9 min 00 s" in text
    for s in _stages():  # a row for every stage, in the stages table
        row = row_of(page, s["name"])
        assert row[1] == s["kind"] and row[2] == s["status"]
    assert row_of(page, "corpus")[5] == "12.3 MB"
    assert "masked accuracy 1.0% -> 20.0%" in row_of(page, "teacher")[4]

    # every chart: an inline PNG that shows something
    pics = images(page)
    assert len(pics) == len(res["figures"]) >= 7  # 5 curves (2 for student/), pareto, sizes
    for pixels in pics:
        assert_not_blank(pixels)
    assert {"pareto", "sizes"} <= set(res["figures"])
    assert sum(f.startswith("curves-") for f in res["figures"]) == 5

    # offline: nothing fetched, no scripts
    for tag, attrs in page.attrs:
        assert tag not in ("script", "link", "iframe")
        for key in ("src", "href"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(key) or ""), (tag, attrs.get(key))
    assert "http://" not in res["html"].read_text() and "https://" not in res["html"].read_text()

    # the scores table: % of teacher and speed-up (teacher 80.0, student 78.0 -> 97.5 %; 880 / 410.5 -> 2.1x)
    student = row_of(page, "student-sentiment", 10)
    assert student[3:7] == ["78.00", "teacher-sentiment", "80.00", "97.5 %"]
    assert student[7] == "2.88 M" and student[9] == "2.1x"
    assert row_of(page, "teacher-sentiment", 10)[6] == "100.0 %"
    int8 = row_of(page, "export (onnx-int8)")
    assert int8[4] == "teacher-sentiment" and int8[6] == "97.0 %" and int8[9] == "6.3x"
    assert [r[3:] for r in page.rows if r[:2] == ["serve", "onnx-int8"]] == [["4.1", "6.0", "9.5"]]

    # the Markdown: same stages, the scores table, the charts as files beside it
    md = res["markdown"].read_text(encoding="utf-8")
    for s in _stages():
        assert f"| {s['name']} | {s['kind']} |" in md
    assert "| model | task | metric | score | teacher | teacher score | % of teacher |" in md
    assert "| student-sentiment | builtin:reviews-sentiment | accuracy | 78.00 | teacher-sentiment | 80.00 | 97.5 % |" \
        in md
    linked = re.findall(r"!\[[^\]]*\]\((report-figures/[^)]+\.png)\)", md)
    assert len(linked) == len(res["figures"])
    for rel in linked:
        assert (run_dir / rel).read_bytes().startswith(PNG_MAGIC)


def test_score_rows():
    run = {"stages": _stages()}
    rows = {r["model"]: r for r in score_rows(run)}
    assert rows["student-sentiment"]["kept"] == pytest.approx(97.5)
    assert rows["student-sentiment"]["speedup"] == pytest.approx(880.0 / 410.5)
    assert rows["teacher-sentiment"]["kept"] == pytest.approx(100.0)
    assert rows["export (onnx-int8)"]["kept"] == pytest.approx(97.0)
    assert rows["export (onnx-int8)"]["params"] == 2_880_000
    assert set(rows) == {"teacher-sentiment", "student-sentiment", "export (torch)", "export (onnx)",
                         "export (onnx-int8)"}


def test_failed_and_pending_stages(tmp_path):
    stages = _stages()[:5]
    stages[4].update(status="failed", duration_s=4.2, metrics={},
                     error="student-sentiment/train.jsonl:17: no 'label' field (QingbertError)")
    stages[3].update(status="failed", error="Traceback (most recent call last):\n  File \"loop.py\", line 9\n"
                                            "RuntimeError: CUDA error: device-side assert triggered")
    stages.append({"name": "export", "kind": "export", "folder": "export", "depends": ["student-sentiment"],
                   "status": "pending"})
    run_dir = make_run(tmp_path, stages, status="failed", curves=False)  # failed before logging anything
    _write_jsonl(run_dir / "teacher-sentiment" / "metrics.jsonl", _curve(300, 20, acc="accuracy", lr=5e-5))
    res = write_report(run_dir)
    page = parse(res["html"])
    row = row_of(page, "student-sentiment")
    assert row[2] == "failed" and "no 'label' field" in row[4]
    assert row_of(page, "export")[2] == "pending"
    assert row_of(page, "student")[4] == "error: Traceback (most recent call last):"  # the first line in the table,
    pre = [t for t in page.text if t.startswith("student failed: Traceback")]  # all of it below
    assert len(pre) == 1 and pre[0].endswith("device-side assert triggered")
    assert "no 'label' field" in res["markdown"].read_text(encoding="utf-8")
    assert [f for f in res["figures"] if f.startswith("curves-")] == ["curves-00-teacher-sentiment"]
    for pixels in images(page):
        assert_not_blank(pixels)


def test_stage_without_metrics_and_odd_records(tmp_path):
    stages = _stages()
    stages[2]["metrics"] = {"task": "builtin:reviews-sentiment"}  # no score, no speed
    del stages[3]["metrics"]
    stages.append({"name": "学生-分类", "kind": "finetune", "folder": "cn", "status": "done", "metrics": None})
    run_dir = make_run(tmp_path, stages, curves=False)
    _write_jsonl(run_dir / "teacher" / "metrics.jsonl", _curve(800, 50), truncated=True)
    _write_jsonl(run_dir / "cn" / "metrics.jsonl", _curve(40, 10, acc=None))
    res = write_report(run_dir)
    page = parse(res["html"])
    curves = [f for f in res["figures"] if f.startswith("curves-")]
    assert len(curves) == 2 and any("teacher" in f for f in curves)  # only the stages with metrics.jsonl
    assert "学生-分类" in "".join(page.text)
    row_of(page, "teacher-sentiment")
    for pixels in images(page):
        assert_not_blank(pixels)
    assert read_metrics(run_dir / "teacher" / "metrics.jsonl") == _curve(800, 50)  # less the cut last line
    resumed = _curve(100, 10)[:6] + _curve(100, 10)[3:]  # steps 40-60 logged again after a resume
    _write_jsonl(run_dir / "resumed.jsonl", resumed)
    assert read_metrics(run_dir / "resumed.jsonl") == _curve(100, 10)


def test_without_matplotlib_and_bench_table(tmp_path, monkeypatch):
    import importlib.util

    from qingbert.pipeline import report

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(report.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    stages = _stages()[:3] + [{"name": "bench", "kind": "bench", "folder": "bench", "status": "done",
                               "metrics": {"tasks": 1}}]
    run_dir = make_run(tmp_path, stages)
    table = "| model | reviews-sentiment |\n|---|---|\n| teacher | 80.0 |\n"
    (run_dir / "bench" / "results.md").write_text(table, encoding="utf-8")
    res = write_report(run_dir)
    assert res["figures"] == [] and not list((run_dir / "report-figures").glob("*.png"))
    page = parse(res["html"])
    assert images(page) == [] and "matplotlib is not installed" in "".join(page.text)
    assert "| teacher | 80.0 |" in "".join(page.text)  # the bench's table, as text
    md = res["markdown"].read_text(encoding="utf-8")
    assert table in md and "| teacher-sentiment | finetune | done |" in md


def test_rerun_replaces_charts(tmp_path):
    run_dir = make_run(tmp_path, _stages()[:2])
    assert write_report(run_dir)["figures"] == ["curves-00-teacher", "sizes"]
    (run_dir / "report-figures" / "my-notes.png").write_bytes(b"not ours")  # a file the report did not make
    (run_dir / "teacher" / "metrics.jsonl").unlink()
    second = write_report(run_dir)["figures"]
    assert second == ["sizes"]
    assert sorted(p.stem for p in (run_dir / "report-figures").glob("*.png")) == sorted(second + ["my-notes"])
    assert (run_dir / "report-figures" / "my-notes.png").read_bytes() == b"not ours"


def test_missing_or_damaged_run_json(tmp_path):
    with pytest.raises(QingbertError, match="no run.json") as e:
        write_report(tmp_path)
    assert str(tmp_path) in e.value.message and e.value.hint
    (tmp_path / "run.json").write_text('{"format": "qingbert.run/1", "stages": [', encoding="utf-8")
    with pytest.raises(QingbertError, match="run.json:1: not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text('{"format": "qingbert.bench/1"}', encoding="utf-8")
    with pytest.raises(QingbertError, match="not a qingbert.run/1 record"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_run_report(tmp_path, capsys):
    from qingbert.cli.pipeline import COMMANDS, run_report

    parser = argparse.ArgumentParser(prog="qingbert")
    sub = parser.add_subparsers(dest="verb")
    COMMANDS["report"](sub)
    run_dir = make_run(tmp_path, _stages()[:2])
    args = parser.parse_args(["report", str(run_dir)])
    assert args.run is run_report
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert str(run_dir / "report.html") in out and str(run_dir / "report.md") in out
    with pytest.raises(QingbertError, match="no run.json"):
        run_report(parser.parse_args(["report", str(tmp_path / "nowhere")]))
