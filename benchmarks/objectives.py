"""Pretraining objectives and model surgery on the built-in data: WWM vs MacBERT vs ELECTRA at the same wall clock,
PET with 32 labelled examples vs ordinary fine-tuning on the same 32, and what vocabulary pruning saves.

1. **Objectives.** The demo teacher's shape and recipe (MiniRBT-H256 width, 2 layers, batch 16, lr 1e-3, 40 % of
   words masked for the MLM objectives, packed texts kept apart) pretrained with each objective for the same
   wall-clock budget: the time WWM takes for the demo's 1,200 steps on this machine.  Each objective's speed is
   calibrated first (a short run, steps/s from its logged tokens/s), so it gets ``budget x steps/s`` steps and a
   full learning-rate schedule.  Then every model is fine-tuned on both built-in tasks with the demo's recipe
   (2,000 examples, 3 epochs, lr 3e-4) for each seed; dev scores are the mean over seeds.
   MacBERT's similar-word table (``qingbert similar-words``) is built once beforehand; its time is reported
   separately (it is made once per corpus, like the WWM references).
2. **PET vs fine-tuning on 32 examples** of ``builtin:reviews-sentiment`` (stratified, one sample per seed), from
   the WWM model: ``finetune --prompt "{text}。总之很[MASK]。" --verbalizer "positive:好,negative:差"`` vs
   ``finetune --max-train-examples 32``; plus the prompt's zero-shot score.
3. **Vocabulary pruning.**  A MiniRBT-H256-shape masked LM (6 x 256) with a 21,128-token vocabulary (the size of
   HFL's Chinese checkpoints: our corpus vocabulary plus CJK characters the corpus never uses, as a general
   vocabulary has them) pruned to the tokens of the built-in corpus: vocabulary, parameters and file size before
   and after, and pretraining steps/s of both (the MLM decoder is the vocabulary-sized part of a step).

    python benchmarks/objectives.py [--work DIR] [--seeds 1,2] [--skip objectives,pet,prune]
                                    [--objectives electra]   # a subset, against the stored WWM budget

Results: ``benchmarks/results/objectives.{json,md}``.  About 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, versions  # noqa: E402

OBJECTIVES = ("wwm", "macbert", "electra")
CALIBRATION_STEPS = 40
BUDGET_STEPS = 1200  # the demo teacher's steps with WWM: the budget is the time they take here
TEMPLATE = "{text}。总之很[MASK]。"
VERBALIZER = "positive:好,negative:差"
FEW_SHOT = 32
PRUNED_VOCAB = 21128
QUICK = False  # --quick: a smoke run of every part (a few steps, small slices); its figures mean nothing


def steps_per_second(run_dir: Path, tokens_per_step: float) -> float:
    """Steady-state optimizer steps/s of a finished run: its logged tokens/s windows after the first."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if r.get("split") == "train"][1:]
    return statistics.median(rates) / tokens_per_step


def recipe_for(objective: str, base: dict, similar: Path) -> dict:
    r = dict(base, objective=objective, progress=False)
    if objective == "macbert":
        r["macbert"] = {"similar_words": str(similar)}
    if objective == "electra":
        r["mlm_probability"] = 0.15  # ELECTRA's generator masks 15 % (Clark et al.; Chinese-ELECTRA)
    return r


def finetune_scores(model: Path, out: Path, seeds: list[int], recipe: dict, tasks: list[str]) -> dict:
    from qingbert.tasks.finetune import finetune

    scores = {}
    for task in tasks:
        runs = []
        for seed in seeds:
            r = finetune(str(model), task, out / task.split(":")[-1] / f"seed{seed}",
                         config=dict(recipe, seed=seed, progress=False))
            metric = "f1" if "ner" in task else "accuracy"
            runs.append(r["dev"][metric])  # already in points
        scores[task] = {"mean": statistics.mean(runs), "std": statistics.pstdev(runs), "runs": runs}
    return scores


def bench_objectives(work: Path, corpus: Path, seeds: list[int], only: tuple[str, ...] = OBJECTIVES,
                     previous: dict | None = None) -> dict:
    """Pretrain and fine-tune each objective in ``only``.  With a ``previous`` result whose budget was set by WWM,
    a run of a subset without WWM keeps that budget and merges its rows into the previous ones."""
    from qingbert.demo import FINETUNE_RECIPE, FINETUNE_TASKS, TEACHER, TEACHER_RECIPE
    from qingbert.pretraining.macbert import build_similar_words
    from qingbert.pretraining.pretrain import pretrain

    global BUDGET_STEPS, CALIBRATION_STEPS
    if QUICK:
        BUDGET_STEPS, CALIBRATION_STEPS = 30, 20
        FINETUNE_RECIPE = dict(FINETUNE_RECIPE, max_train_examples=200, epochs=1)
    previous = previous or {}
    similar = work / "similar-words"
    sim, similar_s = previous.get("similar_words", {}), None
    if "macbert" in only:
        t0 = time.time()
        sim = build_similar_words(corpus, similar, overwrite=True, workers=2, epochs=1 if QUICK else 5)
        similar_s = time.time() - t0
    reuse_budget = "wwm" not in only and previous.get("budget_s")
    calibrate = tuple(dict.fromkeys(("wwm",) + tuple(only)))  # WWM always: the budget is its speed right now
    tokens_per_step = TEACHER_RECIPE["batch_size"] * 128
    base = dict(TEACHER_RECIPE, save_every=0, log_every=10)
    rates = {}
    for obj in calibrate:  # calibration: steady-state steps/s of each objective
        d = work / "calibrate" / obj
        shutil.rmtree(d, ignore_errors=True)
        pretrain(TEACHER, corpus, d, dict(recipe_for(obj, base, similar), max_steps=CALIBRATION_STEPS,
                                          eval_batches=1))
        rates[obj] = steps_per_second(d, tokens_per_step)
        print(f"{obj}: {rates[obj]:.2f} steps/s", flush=True)
    # Each objective gets the steps it fits into the time WWM takes for BUDGET_STEPS, at the speeds measured now
    # (so a subset run on a busier or quieter machine still gets the steps a full run would give it).
    budget_s = previous["budget_s"] if reuse_budget else BUDGET_STEPS / rates["wwm"]
    rows = [r for r in previous.get("rows", []) if r["objective"] not in only] if reuse_budget else []
    if reuse_budget:
        rates = {**previous.get("calibrated_steps_per_s", {}), **{o: rates[o] for o in only},
                 f"wwm_with_{'_'.join(only)}": rates["wwm"]}
    for obj in only:
        wwm_now = rates.get(f"wwm_with_{'_'.join(only)}", rates["wwm"])
        steps = int(round(BUDGET_STEPS * rates[obj] / wwm_now))
        d = work / "pretrain" / obj
        shutil.rmtree(d, ignore_errors=True)
        t = time.time()
        m = pretrain(TEACHER, corpus, d, dict(recipe_for(obj, base, similar), max_steps=steps,
                                              log_every=50))
        seconds = time.time() - t
        ft = finetune_scores(d, work / "finetune" / obj, seeds, FINETUNE_RECIPE, FINETUNE_TASKS)
        ev = m.get("eval_after") or {}
        rows.append({"objective": obj, "steps": m["steps"], "pretrain_s": round(seconds, 1),
                     "steps_per_s": round(rates[obj], 3), "parameters": m["parameters"],
                     "masked_accuracy": ev.get("masked_accuracy"), "disc_accuracy": ev.get("disc_accuracy"),
                     "scores": ft})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    rows.sort(key=lambda r: OBJECTIVES.index(r["objective"]))
    if similar_s is not None:
        sim = {"seconds": round(similar_s, 1), "words": sim.get("words_with_candidates")}
    return {"budget_s": round(budget_s, 1), "calibrated_steps_per_s": {k: round(v, 3) for k, v in rates.items()},
            "similar_words": sim, "finetune_recipe": FINETUNE_RECIPE, "seeds": seeds, "rows": rows,
            "tasks": FINETUNE_TASKS}


def bench_pet(model: Path, work: Path, seeds: list[int]) -> dict:
    from qingbert.demo import FINETUNE_RECIPE
    from qingbert.tasks.finetune import finetune
    from qingbert.tasks.prompt import evaluate_prompt, prompt_finetune

    task = "builtin:reviews-sentiment"
    zero = evaluate_prompt(str(model), task, TEMPLATE, VERBALIZER)
    pet, head = [], []
    for seed in seeds:
        r = prompt_finetune(str(model), task, work / "pet" / f"seed{seed}", template=TEMPLATE, verbalizer=VERBALIZER,
                            train_examples=FEW_SHOT, config={"seed": seed, "batch_size": 8,
                                                             "max_steps": 10 if QUICK else 100,
                                                             "lr": 1e-4, "progress": False, "save_every": 0})
        pet.append(r["dev"]["accuracy"])
        f = finetune(str(model), task, work / "head" / f"seed{seed}",
                     config=dict(FINETUNE_RECIPE, max_train_examples=FEW_SHOT, batch_size=8,
                                 epochs=3 if QUICK else 25, seed=seed,
                                 progress=False))
        head.append(f["dev"]["accuracy"])
    return {"task": task, "template": TEMPLATE, "verbalizer": VERBALIZER, "examples": FEW_SHOT, "seeds": seeds,
            "zero_shot": zero["scores"]["accuracy"],
            "pet": {"mean": statistics.mean(pet), "std": statistics.pstdev(pet), "runs": pet,
                    "recipe": "100 steps, batch 8, lr 1e-4"},
            "finetune": {"mean": statistics.mean(head), "std": statistics.pstdev(head), "runs": head,
                         "recipe": "25 epochs (100 steps), batch 8, lr 3e-4"}}


def wide_vocab_model(corpus: Path, out: Path) -> Path:
    """A MiniRBT-H256-shape masked LM whose vocabulary is the corpus's plus unused CJK characters, 21,128 in all."""
    from qingbert.models import zoo
    from qingbert.models.loading import load_tokenizer
    from qingbert.models.tokenizer import make_tokenizer, save_tokenizer

    tok = load_tokenizer(str(corpus / "tokenizer"))
    vocab = dict(tok.get_vocab())
    cp = 0x4E00
    while len(vocab) < PRUNED_VOCAB:
        ch = chr(cp)
        if ch not in vocab:
            vocab[ch] = len(vocab)
        cp += 1
    wide = make_tokenizer(vocab)
    model = zoo.build_model("minirbt-h256", vocab_size=len(vocab), head="mlm")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(str(out))
    save_tokenizer(wide, out)
    return out


def bench_prune(work: Path, corpus: Path) -> dict:
    from qingbert.data.prepare import prepare
    from qingbert.deploy.prune import prune_vocab
    from qingbert.pretraining.pretrain import pretrain

    wide = wide_vocab_model(corpus, work / "wide")
    t = time.time()
    report = prune_vocab(str(wide), ["builtin:peoples-daily", "builtin:reviews"], work / "pruned", overwrite=True,
                         progress=False)
    prune_s = time.time() - t
    speed = {}
    for name, folder in (("before", wide), ("after", work / "pruned")):
        data = work / f"data-{name}"  # the same texts, tokenized by each model's own tokenizer
        prepare(["builtin:reviews"], data, tokenizer=str(folder), max_seq_len=128, overwrite=True, progress=False)
        run = work / f"speed-{name}"
        shutil.rmtree(run, ignore_errors=True)
        pretrain(str(folder), data, run, {"max_steps": 20 if QUICK else 60, "batch_size": 16, "log_every": 10, "save_every": 0,
                                          "eval_batches": 1, "progress": False})
        speed[name] = steps_per_second(run, 16 * 128)
    return {"vocab": report["vocab_size"], "parameters": report["parameters"], "file_bytes": report["file_bytes"],
            "prune_s": round(prune_s, 1), "pretrain_steps_per_s": speed,
            "speedup": speed["after"] / speed["before"], "parity": report.get("verified")}


def markdown(res: dict) -> str:
    lines = [f"Measured {res['date']} on {res['machine'].get('cpu_model', '?')} ({res['machine']['cpu_count']} "
             "cores).", ""]
    if "objectives" in res:
        o = res["objectives"]
        tasks = o["tasks"]
        lines += [f"**Objectives at the same wall clock** ({o['budget_s']:.0f} s of pretraining each; fine-tuned "
                  f"on 2,000 examples, 3 epochs, mean ± std over seeds {o['seeds']}):", "",
                  "| objective | steps | steps/s | held-out masked acc. | " + " | ".join(tasks) + " |",
                  "|---|---|---|---|" + "---|" * len(tasks)]
        for r in o["rows"]:
            acc = f"{100 * r['masked_accuracy']:.1f} %" if r["masked_accuracy"] is not None else "–"
            if r["objective"] == "electra":
                acc += f" (generator); RTD acc. {100 * r['disc_accuracy']:.1f} %" if r["disc_accuracy"] else ""
            lines.append(f"| {r['objective']} | {r['steps']} | {r['steps_per_s']:.2f} | {acc} | " + " | ".join(
                f"{r['scores'][t]['mean']:.2f} ± {r['scores'][t]['std']:.2f}" for t in tasks) + " |")
        if o.get("incomplete"):
            lines += ["", f"Incomplete: {o['incomplete']}."]
        if o["similar_words"].get("seconds") is not None:
            lines += ["", f"MacBERT's similar-word table: {o['similar_words']['seconds']:.0f} s, built once."]
        lines.append("")
    if "pet" in res:
        p = res["pet"]
        lines += [f"**PET vs fine-tuning with {p['examples']} labelled examples** ({p['task']}, dev accuracy, mean ± "
                  f"std over seeds {p['seeds']}; template `{p['template']}`, verbaliser `{p['verbalizer']}`):", "",
                  "| method | dev accuracy |", "|---|---|",
                  f"| zero-shot prompt | {p['zero_shot']:.2f} |",
                  f"| PET ({p['pet']['recipe']}) | {p['pet']['mean']:.2f} ± {p['pet']['std']:.2f} |",
                  f"| classifier head ({p['finetune']['recipe']}) | {p['finetune']['mean']:.2f} ± "
                  f"{p['finetune']['std']:.2f} |", ""]
    if "prune" in res:
        q = res["prune"]
        lines += ["**Vocabulary pruning** (MiniRBT-H256 shape, 21,128-token vocabulary pruned to the built-in corpus):",
                  "", "| | vocabulary | parameters | model file | pretraining steps/s |", "|---|---|---|---|---|"]
        for k in ("before", "after"):
            lines.append(f"| {k} | {q['vocab'][k]:,} | {q['parameters'][k] / 1e6:.2f} M | "
                         f"{q['file_bytes'][k] / 2**20:.1f} MiB | {q['pretrain_steps_per_s'][k]:.2f} |")
        lines += ["", f"Pretraining speed-up {q['speedup']:.2f}×; pruning took {q['prune_s']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(HERE / "work" / "objectives"))
    # (no time limit of its own: the full run takes about 50 minutes on 2 cores)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--pet-seeds", default="1,2,3")
    ap.add_argument("--skip", default="", help="comma list of objectives, pet, prune")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES),
                    help="which objectives to pretrain (a subset without wwm keeps the stored budget and rows)")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps of everything (figures meaningless)")
    args = ap.parse_args()
    global QUICK
    QUICK = args.quick
    if QUICK:
        args.work = str(Path(args.work).with_name("objectives-quick"))

    from transformers.utils import logging as tlog

    from qingbert.demo import SEQ_LEN, SOURCES
    from qingbert.data.prepare import prepare

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work)
    corpus = work / "corpus"
    if not (corpus / "manifest.json").exists():
        prepare(SOURCES[1:] if QUICK else SOURCES, corpus, overwrite=True, max_seq_len=SEQ_LEN, progress=False)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / ("objectives-quick.json" if QUICK else "objectives.json")
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update({"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                "versions": versions(["torch", "transformers", "gensim", "qingbert"])})
    seeds = [int(x) for x in args.seeds.split(",")]

    def save():
        path.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        path.with_suffix(".md").write_text(markdown(res))

    if "objectives" not in skip:
        only = tuple(o for o in OBJECTIVES if o in args.objectives.split(","))
        res["objectives"] = bench_objectives(work, corpus, seeds, only, res.get("objectives"))
        save()
    if "pet" not in skip:
        model = work / "pretrain" / "wwm"
        if not (model / "manifest.json").exists():
            raise SystemExit(f"{model}: run the objectives part first (the PET part starts from its WWM model)")
        res["pet"] = bench_pet(model, work, [int(x) for x in args.pet_seeds.split(",")])
        save()
    if "prune" not in skip:
        res["prune"] = bench_prune(work, corpus)
        save()
    print(markdown(res))


if __name__ == "__main__":
    main()
