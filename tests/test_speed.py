"""`qingbert speed`: the table, speedups against the base, latency percentiles, files written."""

import json

import pytest

from qingbert.deploy.speed import SpeedConfig, speed
from qingbert.errors import QingbertError

from .conftest import run_cli


def test_speed_table_for_folders_and_a_base(tiny_model, tmp_path):
    cfg = SpeedConfig(models=[str(tiny_model)], base="roberta-tiny-clue", grid=[[1, 8], [2, 16]], repeats=2,
                      warmup=1, latency_seq=8, latency_runs=5, threads=1, out=str(tmp_path / "s"))
    res = speed(cfg)
    names = [r["model"] for r in res["models"]]
    assert names == ["roberta-tiny-clue", tiny_model.name]  # the base is measured first
    base, mine = res["models"]
    assert base["shape"]["num_hidden_layers"] == 4 and base["params"] > mine["params"] > mine["params_no_embeddings"]
    assert set(mine["results"]) == {"torch", "onnx", "onnx-int8"}
    cell = base["results"]["torch"]["2x16"]
    assert cell["speedup_vs_base_eager"] == pytest.approx(1.0)
    for b, grid in mine["results"].items():
        for key, c in grid.items():
            assert c["seq_per_s"] > 0 and len(c["times"]) == 2
            assert c["speedup_vs_base_eager"] == pytest.approx(c["seq_per_s"] / base["results"]["torch"][key]["seq_per_s"])
        lat = mine["latency_ms"][b]
        assert 0 < lat["p50"] <= lat["p99"]
    md = (tmp_path / "s" / "speed.md").read_text()
    assert "| roberta-tiny-clue |" in md and "ONNX Runtime int8" in md and "1 threads" in md
    assert json.loads((tmp_path / "s" / "speed.json").read_text())["threads"] == 1
    assert (tmp_path / "s" / "speed.png").stat().st_size > 1000


def test_speed_bad_inputs(tmp_path):
    with pytest.raises(QingbertError, match="unknown backend"):
        speed(SpeedConfig(models=["rbt3"], backends=["tensorrt"], out=str(tmp_path)))
    r = run_cli("speed", "no-such-shape", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no-such-shape" in r.stderr
    r = run_cli("speed", "--grid", "big", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--grid" in r.stderr
