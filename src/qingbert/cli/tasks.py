"""The task verbs: ``finetune`` (and prompt fine-tuning), ``predict``, ``bench``."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from qingbert.cli.common import (
    FINETUNE_FLAGS,
    add_task_args,
    add_train_args,
    count,
    note,
    positive_int,
    print_skips,
    read_inputs,
    recipe_with_flags,
    seq_len,
    task_from_args,
)
from qingbert.data.text import is_blank, split_pair
from qingbert.deploy.inference import load
from qingbert.errors import QingbertError
from qingbert.manifest import PROMPT_FORMAT, atomic_write_text, check_out_file, read_manifest
from qingbert.tasks.bench import BenchConfig, bench

HELP = {
    "finetune": "fine-tune a model on a Chinese task (classification, pair, NER, MRC); dev scores + predictions",
    "predict": "predict texts (or a task split: CLUE / CMRC submission files) with any model folder, on its fastest "
               "backend",
    "bench": "the MiniRBT fine-tuning protocol: lr grid x epochs x seeds over models and tasks; tables + plot",
}


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help=HELP["finetune"], description=HELP["finetune"] + (
        ". Scale out with `accelerate launch --num_processes N -m qingbert finetune ...`."))
    p.add_argument("--model", required=True, help="a model folder, hub id or zoo name (pretrained weights), or "
                                                   "random:<folder or zoo name> for a random-init baseline")
    add_task_args(p)
    p.add_argument("--out", required=True, help="output folder (loads with transformers' AutoModelFor...)")
    p.add_argument("--config", default=None, help="YAML recipe: any option below (flat or training under train:)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing the checkpoints of an earlier run there")
    add_train_args(p, FINETUNE_FLAGS)
    p.add_argument("--layers", type=positive_int, default=None, help="for random:<zoo name>: number of layers")
    p.add_argument("--prompt", default=None, metavar="TEMPLATE",
                   help="PET-style prompt fine-tuning through the MLM head: a template with one [MASK] and {text} "
                        "({text_a} and {text_b} for pairs), e.g. '{text}。总之很[MASK]。'; --epochs 0 = zero-shot")
    p.add_argument("--verbalizer", default=None,
                   help="with --prompt: one single-token word per label, '1:好,0:差' or a JSON / YAML file")
    p.add_argument("--train-examples", type=positive_int, default=None,
                   help="with --prompt: a few-shot sample of the training set (e.g. 32), stratified by label, "
                        "drawn with --seed")
    p.set_defaults(run=run_finetune)


def run_finetune(args) -> int:
    from qingbert.tasks.finetune import finetune, format_scores

    recipe = recipe_with_flags(args, FINETUNE_FLAGS)
    if args.resume:
        recipe["resume"] = True
    if args.overwrite:
        recipe["overwrite"] = True
    if args.layers:
        recipe.setdefault("overrides", {})["num_hidden_layers"] = args.layers
    if args.prompt or args.verbalizer or args.train_examples:
        return _run_prompt(args, recipe)
    r = finetune(args.model, task_from_args(args), args.out, args.data, config=recipe)
    print_skips(r)
    if r.get("truncated"):
        note(f"{r['truncated']} of {r['train_examples']} training examples reached --max-len {r['max_len']} tokens "
             "and were cut there")
    if "dev" in r:
        print(f"dev: {format_scores(r['dev'])}")
        print(f"{r['steps']} steps in {r['elapsed_s']:.0f} s; wrote {args.out} (dev_metrics.json, "
              "predictions-dev.jsonl; loads with transformers)")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help=HELP["predict"], description=HELP["predict"] + (
        ". With --task: a split of the task -> a submission file; with --text / --input: one JSON result per line "
        "on stdout (or --out)."))
    p.add_argument("--model", required=True, help="a fine-tuned (or exported) folder")
    add_task_args(p, required=False)
    p.add_argument("--text", action="append", default=None,
                   help="a text to predict (repeatable); pairs as 'a ||| b'; MRC as 'question ||| context'")
    p.add_argument("--input", default=None, help="a file with one text per line (or - for stdin): one JSON record per "
                                                 "line, in order, with its \"line\" (blank lines get an \"error\")")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest in the folder)")
    p.add_argument("--split", default="test", help="train, dev or test (default test)")
    p.add_argument("--out", default=None, help="submission file (default MODEL/<task>_predict.json[l]), or the "
                                               "JSON-lines file of --text / --input results (default stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(run=run_predict)


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help=HELP["bench"], description=HELP["bench"])
    p.add_argument("--models", required=True, help="comma-separated models (folders, hub ids, random:...)")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--out", required=True, help="results folder (re-running it skips finished runs)")
    p.add_argument("--data", default=None, help="one folder of task folders (<DIR>/<task>/), or task=DIR,task=DIR")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (default: a grid by model size)")
    p.add_argument("--epochs", default="2,3,5,10", help="comma-separated epoch counts (default 2,3,5,10)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-len", type=seq_len, default=128)
    p.add_argument("--max-train-examples", type=count, default=0, help="a fixed subset of each training set")
    p.add_argument("--reference", default=None, help="the model scored 100%% in the relative table (default first)")
    p.add_argument("--keep-models", action="store_true", help="keep every fine-tuned folder (default: delete)")
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    def floats(s):
        try:
            return [float(x) for x in s.split(",") if x.strip()] if s else None
        except ValueError:
            raise QingbertError(f"not a comma-separated list of numbers: '{s}'") from None

    cfg = BenchConfig(models=[m for m in args.models.split(",") if m],
                      tasks=[t for t in args.tasks.split(",") if t],
                      out=args.out, lrs=floats(args.lrs), epochs=floats(args.epochs),
                      seeds=[int(x) for x in floats(args.seeds)], batch_size=args.batch_size,
                      max_len=args.max_len, data_dir=args.data, reference=args.reference,
                      max_train_examples=args.max_train_examples, keep_models=args.keep_models)
    bench(cfg)
    return 0


def _run_prompt(args: argparse.Namespace, recipe: dict) -> int:
    """``finetune --prompt T --verbalizer V``: PET-style fine-tuning (:mod:`qingbert.tasks.prompt`)."""
    if not (args.prompt and args.verbalizer):
        raise QingbertError("--prompt and --verbalizer go together (and --train-examples needs them)",
                            hint='e.g. --prompt "{text}。总之很[MASK]。" --verbalizer "1:好,0:差"; '
                                 "--max-train-examples subsets the data for head fine-tuning")
    from qingbert.tasks.prompt import format_prompt_scores, prompt_finetune

    r = prompt_finetune(args.model, task_from_args(args), args.out, args.data, template=args.prompt,
                        verbalizer=args.verbalizer, config=recipe, train_examples=args.train_examples or 0)
    print_skips(r)
    if "dev" in r:
        print(f"dev: {format_prompt_scores(r)}")
        done = "zero-shot (no training)" if r["zero_shot"] else f"{r['steps']} steps on {r['train_examples']} examples"
        print(f"{done} in {r['elapsed_s']:.0f} s; wrote {args.out} (dev_metrics.json, predictions-dev.jsonl; "
              "loads with transformers' AutoModelForMaskedLM)")
    return 0


def run_predict(args) -> int:
    inputs = read_inputs(args.text, args.input)
    if args.task is not None:
        if inputs:
            raise QingbertError("give --task (a split of a task) or --text / --input, not both")
        from qingbert.tasks.finetune import format_scores
        from qingbert.tasks.predict import predict

        if args.out:
            check_out_file(args.out, args.overwrite)
        r = predict(args.model, task_from_args(args), args.out, args.data, split=args.split,
                    batch_size=args.batch_size, backend=args.backend)
        if "scores" in r:
            print(f"{r['split']}: {format_scores(r['scores'])}")
        print(f"wrote {r['file']} ({r['examples']} {r['split']} examples, backend {r['backend']})")
        return 0
    if not inputs:
        raise QingbertError("nothing to predict: give --task (a task split) or --text / --input")
    out = check_out_file(args.out, args.overwrite, inputs={"--input file": args.input}) if args.out else None
    m = read_manifest(args.model) if Path(args.model).is_dir() else None
    model = None
    if m is not None and m.get("format") == PROMPT_FORMAT:  # a PET folder: its template and verbaliser label
        kind, backend = "prompt", "torch"
    else:
        model = load(args.model, backend=args.backend)
        kind, backend = model.kind, model.backend
    # one record per input, in order: a prediction, or why there is none
    items, errors = {}, {}
    for i, x in enumerate(inputs):
        pair = split_pair(x.text)
        if is_blank(x.text) or (pair is not None and not all(map(str.strip, pair))):
            errors[i] = "empty text"
        elif kind in ("pair", "mrc") and pair is None:
            errors[i] = "not 'question ||| context'" if kind == "mrc" else "not a pair 'text_a ||| text_b'"
        elif kind == "mrc":
            items[i] = {"question": pair[0], "context": pair[1]}
        else:
            items[i] = (pair or x.text) if kind in ("prompt", "pair") else x.text
    results = {}
    if items and model is None:
        from qingbert.tasks.prompt import prompt_predict

        results = {i: {"label": lab, "score": probs[lab], "scores": probs} for i, (lab, probs) in
                   zip(items, prompt_predict(args.model, list(items.values()), batch_size=args.batch_size))}
    elif items:
        results = dict(zip(items, model.predict(list(items.values()), batch_size=args.batch_size)))
    records = [{**x.key, **(results[i] if i in results else {"error": errors[i]})} for i, x in enumerate(inputs)]
    if errors:
        why = Counter(errors.values())
        note(f"{len(errors)} of {len(inputs)} inputs have no prediction ("
             + ", ".join(f"{n} {w}" for w, n in why.most_common()) + "): their records say \"error\"")
    if model is not None and model.last_truncated:
        note(f"{model.last_truncated} of {len(items)} inputs reached {model.cfg.max_len} tokens and were cut there "
             "(the model's max_len)")
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if out is not None:
        atomic_write_text(out, "\n".join(lines) + "\n")
        print(f"wrote {out} ({len(results)} predictions for {len(lines)} inputs, backend {backend})")
    else:
        print("\n".join(lines))
    return 0


COMMANDS = {"finetune": add_finetune, "predict": add_predict, "bench": add_bench}
