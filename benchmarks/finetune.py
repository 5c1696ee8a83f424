"""What pretraining is worth: the demo teacher vs a random-init model of its shape, through `qingbert bench`.

Pretrains the demo's teacher (the same recipe as `qingbert demo --full`, on the same built-in corpus),
then runs the bench protocol (lr grid x epochs x seeds, mean +- std, best mean per model and task)
for the teacher and `random:<teacher>` on the two built-in tasks, and writes
`benchmarks/results/finetune.{json,md}` with the scores, the gap in points and the time the bench took.

    python benchmarks/finetune.py [--work DIR] [--lrs 1e-4,2e-4] [--epochs 3] [--seeds 1,2,3] [--train-examples 4000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, versions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(HERE / "work" / "finetune"))
    ap.add_argument("--teacher", default=None, help="an existing teacher folder (default: pretrain as the demo)")
    ap.add_argument("--lrs", default="1e-4,3e-4")
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--train-examples", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    from transformers.utils import logging as tlog

    from qingbert.tasks.bench import BenchConfig, bench
    from qingbert.demo import FINETUNE_TASKS, SEQ_LEN, SOURCES, TEACHER, TEACHER_RECIPE
    from qingbert.data.prepare import prepare
    from qingbert.pretraining.pretrain import pretrain

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    work = Path(args.work)
    teacher = Path(args.teacher) if args.teacher else work / "teacher"
    info: dict = {}
    if not (teacher / "manifest.json").exists():
        t0 = time.time()
        prepare(SOURCES, work / "corpus", overwrite=True, max_seq_len=SEQ_LEN, progress=False)
        pm = pretrain(TEACHER, work / "corpus", teacher, dict(TEACHER_RECIPE, progress=False))
        info["pretrain"] = {"recipe": TEACHER_RECIPE, "masked_accuracy": pm["eval_after"]["masked_accuracy"],
                            "steps": pm["steps"], "tokens_seen": pm["tokens_seen"],
                            "seconds": round(time.time() - t0, 1)}
    models = [str(teacher), f"random:{teacher}"]
    cfg = BenchConfig(models=models, tasks=list(FINETUNE_TASKS), out=str(work / "bench"),
                      lrs=[float(x) for x in args.lrs.split(",")], epochs=[float(x) for x in args.epochs.split(",")],
                      seeds=[int(x) for x in args.seeds.split(",")], max_len=128, batch_size=32,
                      max_train_examples=args.train_examples, reference=f"random:{teacher}", threads=args.threads,
                      finetune_options={"warmup_ratio": 0.1})
    t0 = time.time()
    res = bench(cfg)
    seconds = time.time() - t0
    best = {(s["model"], s["task"]): s for s in res["settings"] if s["best"]}
    rows = []
    for task in FINETUNE_TASKS:
        t, r = best[(str(teacher), task)], best[(f"random:{teacher}", task)]
        rows.append({"task": task, "metric": t["metric"], "teacher": t["mean"], "teacher_std": t["std"],
                     "random": r["mean"], "random_std": r["std"], "gain_points": t["mean"] - r["mean"],
                     "teacher_setting": {"lr": t["lr"], "epochs": t["epochs"]},
                     "random_setting": {"lr": r["lr"], "epochs": r["epochs"]}})
    n_runs = len(models) * len(FINETUNE_TASKS) * len(cfg.lrs) * len(cfg.epochs) * len(cfg.seeds)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
           "versions": versions(["torch", "transformers", "qingbert"]), "teacher": str(teacher), **info,
           "protocol": {"lrs": cfg.lrs, "epochs": cfg.epochs, "seeds": cfg.seeds, "train_examples": args.train_examples,
                        "batch_size": 32, "max_len": 128},
           "rows": rows, "bench_seconds": round(seconds, 1), "runs": n_runs}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "finetune.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    lines = [f"Demo teacher vs random init of the same shape, `qingbert bench` protocol: lr {args.lrs} x epochs "
             f"{args.epochs} x seeds {args.seeds}, {args.train_examples:,} training examples per task "
             f"(a fixed subset), full dev sets; best mean per model and task; {out['date']}.", "",
             "| task | metric | random init | demo teacher | pretraining worth |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['random']:.2f} ± {r['random_std'] or 0:.2f} | "
                     f"{r['teacher']:.2f} ± {r['teacher_std'] or 0:.2f} | {r['gain_points']:+.2f} points |")
    lines += ["", f"The bench ({n_runs} fine-tuning runs) took {seconds / 60:.1f} min on this machine."]
    if "pretrain" in info:
        p = info["pretrain"]
        lines.append(f"Teacher: {p['steps']} steps, {p['tokens_seen']:,} tokens, held-out masked accuracy "
                     f"{100 * p['masked_accuracy']:.1f}%, {p['seconds']:.0f} s (prepare + pretrain).")
    (results / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
