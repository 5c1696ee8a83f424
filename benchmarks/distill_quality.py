"""What a distilled student keeps: the demo teacher -> a narrow-deep student, on the built-in tasks.

Takes the demo's teacher (pretrains it with the demo's recipe on the built-in corpus, as
``benchmarks/finetune.py`` does, or ``--teacher DIR --data DIR``: an existing teacher folder and the
prepared corpus folder it was trained on, e.g. ``<demo>/teacher`` and ``<demo>/corpus``), then:

* general stage, two ways at equal total steps N (``--steps``, default the demo's 400):
  one-stage teacher -> student for N steps (``qingbert.distillation.distill.distill_general``, the demo's recipe and
  student shape), and two-stage teacher -> assistant (the teacher's width, initialised from teacher layers
  ``--assistant-layers``) for N/2 steps -> student for N/2 steps (``qingbert.distillation.distill.distill``);
  held-out masked accuracy and top-1 agreement with the demo teacher for each student;
* speed: encoder forward latency (batch 32 x 128 tokens) of the teacher, the assistant and the student;
* task stage, on each built-in task: the teacher fine-tuned (the demo's recipe), then for each student
  task-stage distillation from that fine-tuned teacher (``qingbert.distillation.distill.distill_task``, as the demo's
  ``distill_section``) and, as the baseline, the same student fine-tuned without distillation.

Writes ``<results>/distill_quality.{json,md}`` (default benchmarks/results).  Goal (issue #5): the student
keeps >= 98 % of the teacher's dev score on each task; PASS/MISS is printed, a miss never fails the script.

    python benchmarks/distill_quality.py [--teacher DIR --data DIR] [--steps 400] [--train-examples 2000]
                                         [--tasks builtin:reviews-sentiment,...] [--assistant-layers 1]
                                         [--out WORK_DIR] [--results DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, versions  # noqa: E402

GOAL_PCT = 98.0


def _short(task: str) -> str:
    return task.split(":")[-1]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _kept(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} %"


def make_teacher(work: Path, teacher: str | None, data: str | None, quick: bool, threads: int) -> tuple:
    """(teacher folder, corpus folder, info): the given ones, or the demo's teacher pretrained the way
    ``benchmarks/finetune.py`` does it (the demo's corpus and ``TEACHER_RECIPE``)."""
    from qingbert.demo import SEQ_LEN, SOURCES, TEACHER, TEACHER_RECIPE
    from qingbert.manifest import read_manifest

    if teacher:
        t = Path(teacher)
        m = read_manifest(t) or {}
        if data is None:  # the corpus the teacher was pretrained on, as its manifest records it
            data = (m.get("data") or {}).get("path")
            if not data or not Path(data).exists():
                sys.exit(f"{t}: give --data (the prepared corpus the teacher was trained on)")
        return t, Path(data), {"given": True, "masked_accuracy": (m.get("eval_after") or {}).get("masked_accuracy"),
                               "steps": m.get("steps"), "tokens_seen": m.get("tokens_seen")}
    from qingbert.data.prepare import prepare
    from qingbert.pretraining.pretrain import pretrain

    t, corpus = work / "teacher", Path(data) if data else work / "corpus"
    recipe = dict(TEACHER_RECIPE, progress=False, **({"threads": threads} if threads else {}))
    if quick:
        recipe.update(max_steps=10, save_every=0, eval_batches=2)
    m = read_manifest(t)
    t0 = time.time()
    if not (m and m.get("eval_after")):
        if not data:
            prepare(SOURCES, corpus, overwrite=True, max_seq_len=SEQ_LEN, progress=False)
        m = pretrain(TEACHER, corpus, t, recipe)
    return t, corpus, {"given": False, "recipe": recipe, "masked_accuracy": m["eval_after"]["masked_accuracy"],
                       "steps": m["steps"], "tokens_seen": m["tokens_seen"], "seconds": round(time.time() - t0, 1)}


def agreement(teacher: Path, student: Path, data: Path, work: Path, recipe: dict) -> dict:
    """Held-out masked accuracy of ``student`` and its top-1 agreement with ``teacher`` at the masked positions,
    on the corpus's eval split with the masks the general stage evaluates with (same collator, seed, batches)."""
    from qingbert.distillation.config import DistillConfig
    from qingbert.distillation.objectives import GeneralDistillObjective
    from qingbert.pretraining.mlm import WWMCollator
    from qingbert.pretraining.mlm import load_mlm, tokenizer_info
    from qingbert.pretraining.pretrain import open_data
    from qingbert.training.loop import Trainer

    train_ds, eval_ds, tok, _ = open_data(data)
    cfg = DistillConfig.from_dict(dict(recipe, save_every=0, progress=False))
    collate = WWMCollator(tokenizer_info(tok), cfg.masking, seed=cfg.train.seed)
    t, _ = load_mlm(str(teacher), tok, weights=True)
    s, _ = load_mlm(str(student), tok, weights=True)
    objective = GeneralDistillObjective([t], s, cfg, matches=[])
    ev = Trainer(objective, train_ds, collate, work, cfg.train, eval_data=eval_ds).evaluate() or {}
    return {k: ev.get(k) for k in ("masked_accuracy", "teacher_agreement", "masked_tokens")}


def latencies(models: dict[str, Path], repeats: int, batch: int = 32, rounds: int = 2) -> dict[str, float]:
    """Encoder forward ms per model (``qingbert.demo._latency_ms``), models interleaved, best of ``rounds``."""
    from qingbert.demo import _latency_ms

    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, path in models.items():
            ms = _latency_ms(path, batch=batch, seq=128, repeats=repeats)
            best[name] = min(best.get(name, ms), ms)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="an existing teacher folder (default: pretrain the demo's)")
    ap.add_argument("--data", default=None, help="the prepared corpus folder the teacher was pretrained on")
    ap.add_argument("--steps", type=int, default=None, help="general-stage steps N (default: the demo's 400); "
                    "two-stage: N/2 teacher -> assistant + N/2 assistant -> student")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the demo's built-in tasks)")
    ap.add_argument("--train-examples", type=int, default=None, help="training examples per task (default: "
                    "the demo's 2000)")
    ap.add_argument("--assistant-layers", default="1", help="teacher layers (from 0) the assistant is made of")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run (not a measurement): a 10-step teacher, 6 "
                    "general steps, 4 task steps on 96 examples, 150 dev examples")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()

    from transformers.utils import logging as tlog

    from qingbert.demo import (
        FINETUNE_RECIPE, FINETUNE_TASKS, GENERAL_DISTILL_RECIPE, STUDENT, STUDENT_SHAPE, TASK_DISTILL_RECIPE)
    from qingbert.distillation.distill import distill, distill_general, distill_task
    from qingbert.tasks.finetune import finetune
    from qingbert.tasks.readers import load_task

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    t_start = time.time()
    load_start = [round(x, 2) for x in os.getloadavg()]
    n_steps = args.steps or (6 if args.quick else GENERAL_DISTILL_RECIPE["max_steps"])
    n_train = args.train_examples or (96 if args.quick else FINETUNE_RECIPE["max_train_examples"])
    tasks = args.tasks.split(",") if args.tasks else list(FINETUNE_TASKS)
    a_layers = [int(x) for x in args.assistant_layers.split(",")]
    dev_limit = 150 if args.quick else 0
    threads = {"threads": args.threads} if args.threads else {}
    temp = args.out is None
    work = Path(tempfile.mkdtemp(prefix="qingbert-distill-quality-") if temp else args.out)
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)

    # -- the teacher ------------------------------------------------------------------------------------
    teacher, data, t_info = make_teacher(work, args.teacher, args.data, args.quick, args.threads)
    print(f"teacher: {teacher} (held-out masked accuracy {_pct(t_info['masked_accuracy'])}), corpus: {data}",
          flush=True)

    # -- general stage: one-stage N steps vs two-stage N/2 + N/2 -----------------------------------------
    base = dict(GENERAL_DISTILL_RECIPE, progress=False, save_every=0, **threads)
    if args.quick:
        base["eval_batches"] = 2
    half = n_steps // 2
    one = distill_general(str(teacher), STUDENT, data, work / "one-stage",
                          dict(base, overrides=STUDENT_SHAPE, max_steps=n_steps))
    print(f"one-stage general distillation: {one['steps']} steps, {one['elapsed_s']:.0f} s", flush=True)
    two = distill(str(teacher), STUDENT, data, work / "two-stage", assistant=STUDENT,
                  config=dict(base, overrides=STUDENT_SHAPE, max_steps=n_steps - half),
                  assistant_config=dict(base, init_from_teacher_layers=a_layers, max_steps=half))
    a_m, s_m = two["stages"]
    print(f"two-stage general distillation: {a_m['steps']} + {s_m['steps']} steps, "
          f"{a_m['elapsed_s'] + s_m['elapsed_s']:.0f} s", flush=True)
    one_dir = work / "one-stage"
    students = {"one-stage": one_dir, "two-stage": Path(two["student"])}
    assistant_dir = work / "two-stage" / "assistant"
    general = {
        "one-stage": {"steps": [one["steps"]], "seconds": one["elapsed_s"], "eval_after": one["eval_after"],
                      "parameters": one["parameters"]["student"], "dir": str(one_dir)},
        "two-stage": {"steps": [a_m["steps"], s_m["steps"]], "seconds": round(a_m["elapsed_s"] + s_m["elapsed_s"], 2),
                      "eval_after": s_m["eval_after"], "assistant_eval_after": a_m["eval_after"],
                      "parameters": s_m["parameters"]["student"], "assistant_parameters": a_m["parameters"]["student"],
                      "assistant_layers": a_layers, "dir": two["student"]},
    }
    for name, d in students.items():  # agreement with the demo teacher itself (two-stage: not the assistant)
        general[name]["vs_demo_teacher"] = agreement(teacher, d, data, work / "eval" / name, base)
    general["two-stage"]["assistant_vs_demo_teacher"] = agreement(teacher, assistant_dir, data,
                                                                  work / "eval" / "assistant", base)
    t_params = one["parameters"]["teacher"]

    # -- speed ----------------------------------------------------------------------------------------------
    timed = {"teacher": teacher, "assistant": assistant_dir, "student": students["one-stage"]}
    lat = latencies(timed, repeats=3 if args.quick else 10)
    lat1 = latencies(timed, repeats=5 if args.quick else 30, batch=1)
    speedup, speedup1 = lat["teacher"] / lat["student"], lat1["teacher"] / lat1["student"]
    print(f"encoder forward 32 x 128: teacher {lat['teacher']:.0f} ms, assistant {lat['assistant']:.0f} ms, "
          f"student {lat['student']:.0f} ms (speedup {speedup:.2f}x); 1 x 128: teacher {lat1['teacher']:.1f} ms, "
          f"student {lat1['student']:.1f} ms ({speedup1:.2f}x)", flush=True)

    # -- task stage -----------------------------------------------------------------------------------------
    ft_recipe = dict(FINETUNE_RECIPE, max_train_examples=n_train, progress=False, **threads)
    if args.quick:
        ft_recipe["max_steps"] = 4
    train_part = {k: v for k, v in ft_recipe.items() if k not in ("max_len", "max_train_examples")}
    task_only = {k: ft_recipe[k] for k in ("max_len", "max_train_examples")}
    rows = []
    for task_name in tasks:
        task = load_task(task_name)
        n_dev = len(task.splits["dev"])
        if dev_limit and n_dev > dev_limit:  # a fixed random subset (dev files can be sorted by label)
            keep = sorted(random.Random(0).sample(range(n_dev), dev_limit))
            task.splits["dev"] = [task.splits["dev"][i] for i in keep]
        where = work / "tasks" / _short(task_name)
        t_res = finetune(str(teacher), task, where / "teacher", config=ft_recipe)
        metric, ref = t_res["dev"]["metric"], t_res["dev"]["score"]
        row = {"task": task_name, "metric": metric, "dev_examples": len(task.splits["dev"]),
               "dev_examples_all": n_dev, "teacher": ref, "teacher_seconds": t_res["elapsed_s"]}
        print(f"{task_name}: teacher dev {metric} {ref:.2f}", flush=True)
        for name, sdir in students.items():
            d = distill_task(str(where / "teacher"), str(sdir), task, where / f"{name}-distilled",
                             config=dict(TASK_DISTILL_RECIPE, **train_part), finetune_config=task_only)
            b = finetune(str(sdir), task, where / f"{name}-finetuned", config=ft_recipe)
            ds, bs = d["dev"]["score"], b["dev"]["score"]
            row[name] = {"distilled": ds, "kept_pct": 100 * ds / ref if ref else None, "finetuned": bs,
                         "finetuned_kept_pct": 100 * bs / ref if ref else None,
                         "distillation_adds": ds - bs,
                         "seconds": {"distill": d["elapsed_s"], "finetune": b["elapsed_s"]}}
            kept = f" ({_kept(row[name]['kept_pct'])} of the teacher)"
            print(f"  {name} student: distilled {ds:.2f}{kept}, fine-tuned without distillation {bs:.2f}",
                  flush=True)
        rows.append(row)

    # -- goal, results ------------------------------------------------------------------------------------
    goal = {}
    for name in students:
        kept = [r[name]["kept_pct"] for r in rows]
        worst = None if any(k is None for k in kept) else min(kept)
        goal[name] = {"min_kept_pct": worst, "pass": worst is not None and worst >= GOAL_PCT}
    seconds = time.time() - t_start
    date = time.strftime("%Y-%m-%d")
    out = {"date": date, "quick": args.quick, "machine": machine(),
           "versions": versions(["torch", "transformers", "qingbert"]),
           "load_avg": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
           "teacher": {"dir": str(teacher), "data": str(data), **t_info, "parameters": t_params},
           "student": {"zoo": STUDENT, "overrides": STUDENT_SHAPE},
           "recipes": {"general": base, "finetune": ft_recipe, "task_distill": dict(TASK_DISTILL_RECIPE, **train_part)},
           "steps_total": n_steps, "general": general, "latency_ms": {"batch_32x128": lat, "batch_1x128": lat1},
           "speedup": {"batch_32x128": speedup, "batch_1x128": speedup1},
           "tasks": rows, "goal": {"kept_pct_at_least": GOAL_PCT, **goal}, "seconds": round(seconds, 1)}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "distill_quality.json").write_text(json.dumps(out, indent=2, ensure_ascii=False, default=str) + "\n")

    shape = f"{STUDENT_SHAPE['num_hidden_layers']} x {STUDENT_SHAPE['hidden_size']}"
    with open(teacher / "config.json") as fh:
        tc = json.load(fh)
    t_shape = f"{tc['num_hidden_layers']} x {tc['hidden_size']}"
    lines = []
    if args.quick:
        lines += ["**QUICK SMOKE RUN** (`--quick`: a 10-step teacher, a few steps everywhere, 150 dev examples) — "
                  "not a measurement.", ""]
    lines += [
        f"Distillation quality: the demo teacher ({t_shape}, {t_params / 1e6:.2f} M parameters) → a narrow-deep "
        f"student ({STUDENT} shape with {shape}, FFN {STUDENT_SHAPE['intermediate_size']}, "
        f"{general['one-stage']['parameters'] / 1e6:.2f} M parameters), the demo's recipes: general stage on the "
        f"built-in corpus (hidden-state matches + KD at masked positions), then task stage from the fine-tuned "
        f"teacher on each built-in task ({n_train:,} training examples, {ft_recipe['epochs']:g} epochs, "
        f"lr {ft_recipe['lr']:g}, batch {ft_recipe['batch_size']}; "
        + (f"{dev_limit} dev examples per task (a fixed random subset)" if dev_limit else "full dev sets")
        + "); single seed; "
        f"{args.threads or 'default'} torch threads, {out['machine'].get('cpu_affinity', os.cpu_count())} CPU cores, "
        f"torch {out['versions']['torch']} / transformers {out['versions']['transformers']}, {date}.",
        "",
        f"Note: the demo teacher is weak — held-out masked-token accuracy {_pct(t_info['masked_accuracy'])} "
        "(see BENCHMARKS.md, \"What pretraining is worth\": it is no better a starting point than random "
        "weights) — so \"% kept\" is measured against a weak teacher, and a student can keep or exceed 100 % of it "
        "without having learned much from it; the \"fine-tuned without distillation\" column shows what the "
        "task-stage distillation itself adds.",
        "",
        f"### The goal: student dev score vs the teacher's (one-stage student, {n_steps} general steps)",
        "",
        "| task | metric | teacher | student, distilled | % kept | student, fine-tuned only | distillation adds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["one-stage"]
        lines.append(f"| {_short(r['task'])} | {r['metric']} | {r['teacher']:.2f} | {s['distilled']:.2f} | "
                     f"**{_kept(s['kept_pct'])}** | {s['finetuned']:.2f} | {s['distillation_adds']:+.2f} |")
    lines += ["", f"Speed, encoder forward (torch eager, this machine, best of 2 interleaved medians): on 32 × 128 "
              f"tokens teacher {lat['teacher']:.0f} ms → student {lat['student']:.0f} ms, **speedup {speedup:.2f}×**; "
              f"on 1 × 128 tokens {lat1['teacher']:.1f} ms → {lat1['student']:.1f} ms, {speedup1:.2f}× "
              f"({t_params / 1e6:.2f} M → {general['one-stage']['parameters'] / 1e6:.2f} M parameters; "
              f"the {len(a_layers)}-layer assistant: {lat['assistant']:.0f} ms / {lat1['assistant']:.1f} ms)."
              + ("" if speedup >= 1.2 else
                 " The student has half the teacher's width but twice its depth: the elementwise work that does not "
                 "shrink with the width (softmax over heads × tokens² attention maps, GELU over FFN × tokens) is the "
                 "same in total, and on CPU that, not the matrix products, likely sets the forward time."), "",
              f"### Two-stage vs one-stage at equal total steps ({n_steps} general-distillation steps)", "",
              "Held-out masked accuracy and top-1 agreement are measured against the demo teacher on the corpus's "
              "eval split with the same masks for every model; dev scores as above (% of the teacher's in brackets).",
              ""]
    head = "| general stage | steps | masked acc. | agreement with teacher | " + " | ".join(
        f"{_short(r['task'])} distilled | {_short(r['task'])} fine-tuned only" for r in rows) + " | general-stage s |"
    lines += [head, "|---|---|---:|---:|" + "---:|---:|" * len(rows) + "---:|"]
    labels = {"one-stage": "one-stage: teacher → student",
              "two-stage": f"two-stage: teacher → assistant (teacher layers {a_layers}) → student"}
    for name in students:
        g = general[name]
        v = g["vs_demo_teacher"]
        cells = " | ".join(f"{r[name]['distilled']:.2f} ({_kept(r[name]['kept_pct'])}) | {r[name]['finetuned']:.2f}"
                           for r in rows)
        lines.append(f"| {labels[name]} | {' + '.join(str(x) for x in g['steps'])} | {_pct(v['masked_accuracy'])} | "
                     f"{_pct(v['teacher_agreement'])} | {cells} | {g['seconds']:.0f} |")
    av = general["two-stage"]["assistant_vs_demo_teacher"]
    lines += ["", f"(The assistant after its {half} steps: masked accuracy {_pct(av['masked_accuracy'])}, agreement "
              f"with the teacher {_pct(av['teacher_agreement'])}. Teacher dev scores: "
              + ", ".join(f"{_short(r['task'])} {r['teacher']:.2f}" for r in rows) + ".)", ""]
    for name in students:
        g = goal[name]
        verdict = "PASS" if g["pass"] else "MISS"
        worst = _kept(g["min_kept_pct"])
        lines.append(f"Goal: the {name} student keeps >= {GOAL_PCT:g} % of the teacher's dev score on every task: "
                     f"**{verdict}** (lowest {worst}).")
    lines += ["", f"The whole run took {seconds / 60:.1f} min (load average {load_start} at the start, "
              f"{out['load_avg']['end']} at the end)."]
    (results / "distill_quality.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    if temp:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
