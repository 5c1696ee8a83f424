"""Issue #18's demo targets: ``qingbert demo`` (= ``qingbert run builtin:demo``) in under 10 minutes on 2 cores, with
a student keeping >= 97 % of its teacher on both built-in tasks at >= 2x the teacher's speed.

Runs the demo into a fresh folder (or reads a finished one with ``--run DIR``), then writes
``benchmarks/results/demo.{json,md}``: the wall time of the whole run and of each stage, and per task the teacher's
and the student's dev score, the % kept, and the speed-up (sentences/s of the encoder, batch 32 x 128 tokens, torch,
measured by the run).  PASS/MISS against each goal.

    python benchmarks/demo.py [--out DIR | --run DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, versions  # noqa: E402

GOALS = {"wall_s": 600, "kept": 0.97, "speedup": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="run the demo into this folder (default: a temporary one, removed after)")
    ap.add_argument("--run", help="a finished demo folder to read instead of running")
    args = ap.parse_args()
    load = None if args.run else [round(x, 2) for x in os.getloadavg()]
    if args.run:
        run_dir = Path(args.run)
        wall = None
    else:
        from qingbert.demo import demo

        run_dir = Path(args.out or tempfile.mkdtemp(prefix="qingbert-demo-")) / "demo"
        t0 = time.time()
        demo(run_dir)
        wall = time.time() - t0
    run = json.loads((run_dir / "run.json").read_text())
    stages = {s["name"]: s for s in run["stages"]}
    rows = []
    for s in run["stages"]:
        m = s.get("metrics") or {}
        teacher = (stages.get(m.get("teacher")) or {}).get("metrics") or {}
        if m.get("stage") != "task" or not teacher.get("score"):
            continue
        speed, tspeed = (m.get("speed") or {}).get("torch"), (teacher.get("speed") or {}).get("torch")
        rows.append({"task": m["task"], "metric": m["metric"], "teacher": teacher["score"], "student": m["score"],
                     "kept": m["score"] / teacher["score"], "speedup": speed / tspeed if speed and tspeed else None,
                     "teacher_params": teacher.get("parameters"), "student_params": m.get("parameters")})
    res = {"wall_s": round(wall if wall is not None else run.get("elapsed_s", 0), 1),
           "stages_s": {s["name"]: s.get("duration_s") for s in run["stages"]}, "rows": rows,
           "load_before": load, "machine": machine(), "versions": versions(["torch", "transformers", "qingbert"]),
           "date": time.strftime("%Y-%m-%d")}
    res["pass"] = {"wall": res["wall_s"] < GOALS["wall_s"],
                   "kept": bool(rows) and all(r["kept"] >= GOALS["kept"] for r in rows),
                   "speedup": bool(rows) and all((r["speedup"] or 0) >= GOALS["speedup"] for r in rows)}
    where = f"load before {load}" if load else "read from a finished run"
    lines = [f"`qingbert demo`: {res['wall_s']:.0f} s wall ({'PASS' if res['pass']['wall'] else 'MISS'} < 600 s; "
             f"{where}).", "",
             "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["stages_s"].items() if v is not None]
    lines += ["", "| task | teacher | student | kept | speed-up | parameters |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} ({r['metric']}) | {r['teacher']:.2f} | {r['student']:.2f} | "
                     f"{100 * r['kept']:.1f} % {'PASS' if r['kept'] >= GOALS['kept'] else 'MISS'} | "
                     f"{r['speedup'] or 0:.2f}x {'PASS' if (r['speedup'] or 0) >= GOALS['speedup'] else 'MISS'} | "
                     f"{(r['teacher_params'] or 0) / 1e6:.2f} M -> {(r['student_params'] or 0) / 1e6:.2f} M |")
    out = HERE / "results" / "demo"
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.run and not args.out:
        shutil.rmtree(run_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
