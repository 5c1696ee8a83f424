"""The seeds' speed table on this machine: `qingbert speed` on the zoo shapes, with the issue's goals checked.

Runs qingbert.deploy.speed.speed() (torch eager fp32, ONNX Runtime fp32 with the fused graph, ONNX Runtime int8) for
the 12-layer base (RoBERTa-wwm-ext shape), RBT6, RBT3, RBT4-H312, MiniRBT-H288/H256 and RoBERTa-tiny-clue, and
writes `benchmarks/results/speed.{json,md,png}` plus the goal lines:

* MiniRBT-H256's fastest path >= 20x the base in torch eager fp32 at batch 32 x 128 tokens;
* MiniRBT-H256's fastest path >= 2.5x MiniRBT-H256 itself in torch eager (HF) at batch 32 x 128.

    python benchmarks/speed.py [--repeats 5] [--threads 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, versions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="two small shapes, few repeats (a smoke run)")
    args = ap.parse_args()

    from transformers.utils import logging as tlog

    from qingbert.deploy.speed import DEFAULT_SHAPES, SpeedConfig, speed, speed_markdown

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    results = HERE / "results"
    cfg = SpeedConfig(models=list(DEFAULT_SHAPES), repeats=args.repeats, threads=args.threads,
                      out=str(results / "speed_work"))
    if args.quick:
        cfg.models, cfg.base, cfg.repeats, cfg.grid, cfg.latency_runs = ["rbt4-h312", "minirbt-h256"], \
            "rbt4-h312", 2, [[1, 32], [8, 64]], 10
    res = speed(cfg)
    key = "x".join(map(str, cfg.grid[-1]))
    h256 = next(r for r in res["models"] if r["model"] == "minirbt-h256")
    cells = {b: h256["results"][b][key] for b in h256["results"]}
    fastest = max(cells, key=lambda b: cells[b]["seq_per_s"])
    vs_base = cells[fastest]["speedup_vs_base_eager"] or 0.0
    vs_own = cells[fastest]["speedup_vs_own_eager"] or 0.0
    goals = [f"MiniRBT-H256 fastest path ({fastest}) vs the base in torch eager fp32 at {key}: {vs_base:.1f}x "
             f"(goal >= 20x): {'PASS' if vs_base >= 20 else 'MISS'}",
             f"MiniRBT-H256 fastest path ({fastest}) vs MiniRBT-H256 in HF torch eager at {key}: {vs_own:.2f}x "
             f"(goal >= 2.5x): {'PASS' if vs_own >= 2.5 else 'MISS'}"]
    res["goals"] = goals
    res["machine"] = machine()
    res["versions"].update(versions(["onnx", "onnxscript", "onnxruntime"]))
    name = "speed_quick" if args.quick else "speed"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    md = speed_markdown(res) + "\n\n" + "\n".join(f"- {g}" for g in goals) + "\n"
    (results / f"{name}.md").write_text(md)
    png = Path(cfg.out) / "speed.png"
    if png.exists():
        png.replace(results / f"{name}.png")
    for f in ("speed.json", "speed.md"):
        (Path(cfg.out) / f).unlink(missing_ok=True)
    Path(cfg.out).rmdir()
    print(md)


if __name__ == "__main__":
    main()
