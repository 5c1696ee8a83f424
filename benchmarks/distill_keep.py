"""Issue #5's "keeps >= 98 %" figure: a same-width H256 student from the demo teacher, with transfer-set KD.

From a finished ``qingbert demo --full`` folder (``--demo DIR``: its ``teacher/``, ``corpus/`` and the fine-tuned
teachers ``teacher-sentiment/``, ``teacher-ner/``):

1. general stage: ``distill_general`` teacher -> a 1 x 256 student initialised from the teacher's layer 1
   (``init_from_teacher_layers: [1]``: embeddings, that layer and the MLM head), the demo's general recipe
   (400 steps of 16 x 128 tokens, KD at the masked positions + hidden-state matches);
2. task stage, per built-in task: ``distill_task`` from the demo's fine-tuned teacher with the gold labels
   switched off (``hard_weight 0``) over the *whole* training split's texts -- the teacher's soft labels as
   transfer data (TinyBERT's recipe; the teacher itself was fine-tuned on the demo's 2,000 labelled
   examples), the demo's fine-tuning schedule (3 epochs, batch 32, lr 3e-4, T = 2);
3. speed: encoder forward latency (32 x 128 tokens, torch eager) of the teacher and the student.

Writes ``benchmarks/results/distill_keep.{json,md}``; PASS/MISS per task against 98 % of the teacher's dev
score (the teacher's score is read from its fine-tuned folder).  About 25 minutes on 2 cores:

    python benchmarks/distill_keep.py --demo demo-output [--layers 1] [--tasks builtin:reviews-sentiment,...]
                                      [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, versions  # noqa: E402

GOAL = 0.98


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished `qingbert demo --full` output folder")
    ap.add_argument("--layers", default="1", help="teacher layers the student starts from (default 1)")
    ap.add_argument("--tasks", default="builtin:reviews-sentiment,builtin:peoples-daily-ner")
    ap.add_argument("--work", default=str(HERE / "work" / "distill_keep"))
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps, 300 texts (figures meaningless)")
    args = ap.parse_args()

    from transformers.utils import logging as tlog

    from qingbert.demo import FINETUNE_RECIPE, GENERAL_DISTILL_RECIPE, STUDENT, TASK_DISTILL_RECIPE, _latency_ms
    from qingbert.distillation.distill import distill_general, distill_task
    from qingbert.manifest import read_manifest

    tlog.set_verbosity_error()
    demo, work = Path(args.demo), Path(args.work + ("-quick" if args.quick else ""))
    layers = [int(x) for x in args.layers.split(",")]
    for need in ("teacher", "corpus"):
        if not (demo / need / "manifest.json").exists():
            raise SystemExit(f"{demo / need}: missing; run `qingbert demo --full` first (or give its output folder)")
    t0 = time.time()
    student = work / "general"
    shutil.rmtree(student, ignore_errors=True)
    general = dict(GENERAL_DISTILL_RECIPE, init_from_teacher_layers=layers, progress=False, save_every=0)
    if args.quick:
        general.update(max_steps=5, eval_batches=1)
    g = distill_general(str(demo / "teacher"), STUDENT, demo / "corpus", student, general)
    res = {"demo": str(demo.resolve()), "student_layers_from_teacher": layers, "general": {
        "steps": g.get("steps"), "eval_after": g.get("eval_after"), "parameters": g.get("parameters"),
        "seconds": round(time.time() - t0, 1)}}
    res["latency_ms"] = {"teacher": round(_latency_ms(demo / "teacher"), 1), "student": round(_latency_ms(student), 1)}
    schedule = {k: v for k, v in FINETUNE_RECIPE.items() if k not in ("max_len", "max_train_examples")}
    if args.quick:
        schedule.update(epochs=1)
    rows = []
    for task in args.tasks.split(","):
        short = task.split(":")[-1]
        teacher = demo / {"reviews-sentiment": "teacher-sentiment", "peoples-daily-ner": "teacher-ner"}.get(
            short, f"teacher-{short}")  # builtin:demo-full's fine-tuned teachers
        tm = read_manifest(teacher)
        if tm is None:
            raise SystemExit(f"{teacher}: no fine-tuned teacher for {task} in the demo folder")
        t = time.time()
        r = distill_task(str(teacher), str(student), task, work / "task" / short,
                         config=dict(TASK_DISTILL_RECIPE, hard_weight=0.0, **schedule, progress=False),
                         finetune_config={"max_len": 128, "max_train_examples": 300 if args.quick else 0})
        ref, got = tm["dev"]["score"], r["dev"]["score"]
        sm = read_manifest(work / "task" / short) or {}
        rows.append({"task": task, "metric": tm["dev"].get("metric"), "teacher": ref, "student": got,
                     "kept": got / ref, "pass": got / ref >= GOAL, "transfer_texts": sm.get("train_examples"),
                     "steps": sm.get("steps"), "seconds": round(time.time() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    res.update(rows=rows, speedup=res["latency_ms"]["teacher"] / res["latency_ms"]["student"],
               machine=machine(), versions=versions(["torch", "transformers", "qingbert"]),
               date=time.strftime("%Y-%m-%d"), quick=args.quick, wall_s=round(time.time() - t0, 1))
    lines = [f"Same-width student ({len(layers)} x 256 from teacher layer(s) {layers}, "
             f"{(g.get('parameters') or {}).get('student', 0) / 1e6:.2f} M parameters), general stage {g.get('steps')} steps, task stage "
             "KD-only (hard_weight 0) over each task's whole training split; "
             f"encoder 32 x 128: {res['latency_ms']['teacher']} ms -> {res['latency_ms']['student']} ms "
             f"({res['speedup']:.2f}x).", "", "| task | teacher | student | kept | transfer texts | goal |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} ({r['metric']}) | {r['teacher']:.2f} | {r['student']:.2f} | "
                     f"{100 * r['kept']:.1f} % | {r['transfer_texts'] or 0:,} | {'PASS' if r['pass'] else 'MISS'} |")
    out = HERE / "results" / ("distill_keep_quick" if args.quick else "distill_keep")
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
