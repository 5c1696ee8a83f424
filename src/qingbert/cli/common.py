"""What the verbs share: source, training and task flags, YAML recipes, and how skipped rows are reported."""

from __future__ import annotations

import argparse

from qingbert.errors import QingbertError
from qingbert.tasks.readers import load_generic


def add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="builtin:peoples-daily, builtin:reviews (optionally :dev/:test/:all), "
                        ".txt (one text per line), .jsonl, .gz of those, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl files (default: text)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicate lines")


TRAIN_FLAGS = (("batch-size", int, "sequences per process per step (default 32)"),
               ("grad-accum", int, "gradient accumulation steps (default 1)"),
               ("epochs", float, "passes over the data"),
               ("max-steps", int, "optimizer steps; overrides --epochs"),
               ("lr", float, "peak learning rate"),
               ("warmup-ratio", float, "share of steps warming up (default 0.06)"),
               ("weight-decay", float, "AdamW weight decay (default 0.01)"),
               ("mixed-precision", str, "no | fp16 | bf16 (default no; fp32 on CPU)"),
               ("eval-every", int, "evaluate every N steps (default: at the end)"),
               ("save-every", int, "checkpoint every N steps (0 = never)"),
               ("keep-last", int, "checkpoints kept (default 2)"),
               ("log-every", int, "log every N steps (default 10)"),
               ("seed", int, "random seed (default 42)"),
               ("threads", int, "torch CPU threads per process (default: torch's)"))
PRETRAIN_FLAGS = (("mlm-probability", float, "share of tokens masked, whole words (default 0.15)"),
                  ("max-ngram", int, "n-gram whole-word masking up to n words (default 1)"),
                  ("init", str, "a zoo shape's initialisation: local-attention (default; first-layer heads start "
                                "out looking at the neighbouring tokens) or default (transformers' own)"),
                  ("train-dropout", float, "dropout while pretraining (default: the model's; the saved config "
                                           "keeps the model's own for fine-tuning)"))
FINETUNE_FLAGS = (("max-len", int, "tokens per sequence / MRC window (default 128)"),
                  ("doc-stride", int, "MRC: tokens shared by consecutive windows (default max-len/4)"),
                  ("max-query-len", int, "MRC: question tokens kept (default 64)"),
                  ("max-answer-len", int, "MRC: longest answer in tokens (default 50)"),
                  ("n-best", int, "MRC: candidates per window (default 20)"),
                  ("max-train-examples", int, "use a fixed random subset of the training set"),
                  ("tokenizer", str, "vocabulary for --model random:<zoo name>"))

DISTILL_FLAGS = (("temperature", float, "KD temperature (default 1; a schedule in --config)"),
                 ("kd-loss", str, "kd_ce (default) or kd_mse"),
                 ("kd-weight", float, "weight of the logits KD loss (default 1)"),
                 ("hard-weight", float, "weight of the hard-label loss (default: 0 general, 1 task stage)"),
                 ("fit-teacher-head", int, "train an untrained teacher MLM head alone for N steps first"),
                 ("mlm-probability", float, "general stage: share of tokens masked, whole words (default 0.15)"),
                 ("init", str, "a student built from scratch (zoo shape): local-attention (default) or default"),
                 ("teacher-backend", str, "general stage, CPU: auto (default: onnx where it applies, else torch), "
                  "torch, onnx (fused ONNX Runtime graph, same outputs) or onnx-int8 (int8 teacher: faster, "
                  "checked to stay within 5 %% of torch's hidden states)"))


def add_train_args(p: argparse.ArgumentParser, extra=()) -> None:
    for name, typ, hlp in TRAIN_FLAGS + tuple(extra):
        p.add_argument("--" + name, type=typ, default=None, help=hlp)


def recipe_with_flags(args: argparse.Namespace, extra=()) -> dict:
    """The YAML recipe (--config) with every given flag on top (flags beat the recipe)."""
    recipe = load_recipe(args.config)
    for name, _, _ in TRAIN_FLAGS + tuple(extra):
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            recipe[name.replace("-", "_")] = value
    return recipe


def add_task_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--task", required=required, default=None,
                   help="tnews, afqmc, iflytek, cmnli, ocnli, cluewsc2020, csl, eprstmt, bustm, lcqmc, bq, "
                        "chnsenticorp, thucnews, cmrc2018, drcd, cluener, builtin:reviews-sentiment, "
                        "builtin:peoples-daily-ner; or classification / pair with --text-col etc. for any file")
    p.add_argument("--data", default=None, help="folder with the task's files as distributed "
                                                "(default $QINGBERT_TASK_DIR/<task>), or one file for a generic task")
    p.add_argument("--text-col", default=None, help="generic task: column of the text (name or 0-based index)")
    p.add_argument("--text-b-col", default=None, help="generic pair task: column of the second text")
    p.add_argument("--label-col", default=None, help="generic task: column of the label")
    p.add_argument("--id-col", default=None, help="generic task: column of the id")


def task_from_args(args: argparse.Namespace):
    """A task name, or a Task read with the generic column mapping."""
    if args.task in ("classification", "pair"):
        if args.data is None or args.text_col is None:
            raise QingbertError(f"a generic {args.task} task needs --data FILE_OR_DIR and --text-col")

        def col(c):
            return int(c) if c is not None and str(c).isdigit() else c

        return load_generic(args.data, args.task, col(args.text_col), col(args.text_b_col), col(args.label_col),
                            col(args.id_col))
    return args.task


def print_skips(r: dict) -> None:
    """Rows the task readers could not use (counted, never silently dropped) and what they repaired."""
    if r.get("skipped"):
        print("skipped rows: " + ", ".join(f"{why} {n}" for why, n in sorted(r["skipped"].items()))
              + "".join(f"\n  e.g. {w}" for w in r.get("skip_examples", [])))
    if r.get("fixed"):
        print("repaired: " + ", ".join(f"{why} {n}" for why, n in sorted(r["fixed"].items())))


def load_recipe(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as e:
        raise QingbertError(f"{path}: cannot read recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise QingbertError(f"{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise QingbertError(f"{path}: a recipe must be a mapping of option: value")
    return data


def load_recipe_any(path: str):
    """A YAML/JSON file holding any value (a list of matches)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise QingbertError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML/JSON") from None
