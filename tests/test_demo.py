"""The README's main command runs end to end (with a few pretraining steps)."""

import subprocess
import sys

import pytest

from .conftest import cli_env


@pytest.mark.timeout(1200)  # ~200 s on an idle 2-core machine; a loaded one (other jobs) has needed 400+
def test_demo_runs_every_stage(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qingbert", "demo", "--out", str(tmp_path / "demo"), "--steps", "20"],
                       capture_output=True, text=True, env=cli_env(), timeout=1100)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for section in ("== model zoo", "== prepare", "== whole-word masks", "== pretrain", "== fine-tune", "== distil"):
        assert section in out
    assert "minirbt-h256" in out and "segmentation vs gold: word F1" in out
    assert out.count("masked: [CLS]") == 4 and "[MASK]" in out
    assert "held-out masked-token accuracy" in out and "demo finished" in out
    assert (tmp_path / "demo" / "teacher" / "model.safetensors").exists()
    # the teacher and a random-init model of its shape, side by side on both built-in tasks
    assert "builtin:reviews-sentiment: dev accuracy" in out and "builtin:peoples-daily-ner: dev f1" in out
    assert out.count("(random init) ->") == 2
    assert (tmp_path / "demo" / "finetune" / "peoples-daily-ner" / "teacher" / "dev_metrics.json").exists()
    # the teacher distilled into a narrow-deep student: size, speed, dev scores next to the teacher's
    assert "general stage:" in out and "parameters; encoder forward" in out
    assert out.count("(student)") == 2
    assert (tmp_path / "demo" / "student" / "manifest.json").exists()
    assert (tmp_path / "demo" / "distill" / "peoples-daily-ner" / "dev_metrics.json").exists()
    # and served: the distilled classifier over HTTP, with an index of built-in reviews
    assert "== serve" in out and "POST /encode   -> 2 vectors" in out
    assert out.count("POST /classify ->") == 2 and "POST /search" in out
    assert "POST /encode with no texts -> 4" in out and "server stopped" in out
    assert "Traceback" not in r.stderr
