"""What the verbs share: source, training and task flags, YAML recipes, and how skipped rows are reported."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from qingbert.data.corpus import sniff_encoding
from qingbert.data.text import repair_text
from qingbert.errors import QingbertError
from qingbert.tasks.readers import load_generic, load_task

# ---------------------------------------------------------------------------
# numbers, checked when the arguments are parsed (a bad one is argparse's usage line + "argument --x: ...", exit 2)


def _number(cast, lo=None, hi=None, lo_open=False, hi_open=False, name="number"):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if cast is int else 'a number'}: '{text}'") from None
        if value != value or (lo is not None and (value < lo or (lo_open and value == lo))) or \
                (hi is not None and (value > hi or (hi_open and value == hi))):
            left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
            right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
            rng = f"in {left}, {right}" if lo is not None and hi is not None else (
                f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}")
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, lo=1, name="positive integer")
count = _number(int, lo=0, name="count")  # 0 allowed (0 = off / all / one per core, as each flag says)
positive = _number(float, lo=0, lo_open=True, name="positive number")
non_negative = _number(float, lo=0, name="non-negative number")
probability = _number(float, lo=0, hi=1, lo_open=True, hi_open=True, name="probability")
ratio = _number(float, lo=0, hi=1, hi_open=True, name="ratio")
port = _number(int, lo=1, hi=65535, name="port")
seq_len = _number(int, lo=8, name="sequence length")  # [CLS] + [SEP] + a few tokens: less cuts every text to nothing


def add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="builtin:peoples-daily, builtin:reviews (optionally :dev/:test/:all), "
                        ".txt (one text per line), .jsonl, .gz of those, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl files (default: text)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicate lines")


TRAIN_FLAGS = (("batch-size", positive_int, "sequences per process per step (default 32)"),
               ("grad-accum", positive_int, "gradient accumulation steps (default 1)"),
               ("epochs", non_negative, "passes over the data"),
               ("max-steps", count, "optimizer steps; overrides --epochs"),
               ("lr", positive, "peak learning rate"),
               ("warmup-ratio", ratio, "share of steps warming up (default 0.06)"),
               ("weight-decay", non_negative, "AdamW weight decay (default 0.01)"),
               ("mixed-precision", str, "no | fp16 | bf16 (default no; fp32 on CPU)"),
               ("eval-every", count, "evaluate every N steps (default: at the end)"),
               ("save-every", count, "checkpoint every N steps (0 = never)"),
               ("keep-last", positive_int, "checkpoints kept (default 2)"),
               ("log-every", positive_int, "log every N steps (default 10)"),
               ("seed", int, "random seed (default 42)"),
               ("threads", count, "torch CPU threads per process (default: torch's)"))
PRETRAIN_FLAGS = (("mlm-probability", probability, "share of tokens masked, whole words (default 0.15)"),
                  ("max-ngram", positive_int, "n-gram whole-word masking up to n words (default 1)"),
                  ("init", str, "a zoo shape's initialisation: local-attention (default; first-layer heads start "
                                "out looking at the neighbouring tokens) or default (transformers' own)"),
                  ("train-dropout", ratio, "dropout while pretraining (default: the model's; the saved config "
                                           "keeps the model's own for fine-tuning)"))
FINETUNE_FLAGS = (("max-len", seq_len, "tokens per sequence / MRC window (default 128)"),
                  ("doc-stride", count, "MRC: tokens shared by consecutive windows (default max-len/4)"),
                  ("max-query-len", positive_int, "MRC: question tokens kept (default 64)"),
                  ("max-answer-len", positive_int, "MRC: longest answer in tokens (default 50)"),
                  ("n-best", positive_int, "MRC: candidates per window (default 20)"),
                  ("max-train-examples", count, "use a fixed random subset of the training set"),
                  ("tokenizer", str, "vocabulary for --model random:<zoo name>"))

DISTILL_FLAGS = (("temperature", positive, "KD temperature (default 1; a schedule in --config)"),
                 ("kd-loss", str, "kd_ce (default) or kd_mse"),
                 ("kd-weight", non_negative, "weight of the logits KD loss (default 1)"),
                 ("hard-weight", non_negative, "weight of the hard-label loss (default: 0 general, 1 task stage)"),
                 ("fit-teacher-head", count, "train an untrained teacher MLM head alone for N steps first"),
                 ("mlm-probability", probability, "general stage: share of tokens masked, whole words (default 0.15)"),
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
    p.add_argument("--train-file", default=None, help="the train file to use, a name in --data or a path (e.g. "
                                                      "OCNLI's train.3k.json; default: the official full train file)")
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

        if getattr(args, "train_file", None):
            raise QingbertError("--train-file is for named tasks", hint="a generic task reads the file(s) in --data")
        return load_generic(args.data, args.task, col(args.text_col), col(args.text_b_col), col(args.label_col),
                            col(args.id_col))
    if getattr(args, "train_file", None):
        return load_task(args.task, args.data, train_file=args.train_file)
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


# ---------------------------------------------------------------------------
# texts given on the command line: --text values and the lines of --input


@dataclass
class Input:
    """One input of ``predict`` / ``encode``: its text and where it came from (``{"line": n}`` for the n-th line
    of ``--input``, ``{"arg": k}`` for the k-th ``--text``), echoed first in its output record."""

    text: str
    key: dict


def read_inputs(texts: list | None, path: str | None) -> list[Input]:
    """Every ``--text`` value, then every line of ``--input`` (a file, or ``-`` for stdin), blank lines included,
    so outputs line up with input lines.  UTF-8 (a BOM is dropped) or GB18030; lone surrogates (undecodable bytes
    on the command line) become U+FFFD."""
    out = [Input(repair_text(t), {"arg": k}) for k, t in enumerate(texts or [], 1)]
    if path:
        if path == "-":
            raw, name = sys.stdin.buffer.read(), "stdin"
        elif not Path(path).is_file():
            raise QingbertError(f"no such input file '{path}'")
        else:
            try:
                raw, name = Path(path).read_bytes(), path
            except OSError as e:
                raise QingbertError(f"{path}: cannot read the input file ({e.strerror or e})") from None
        lines = decode_bytes(raw, name).split("\n")  # not splitlines(): U+2028, \x1c ... are not line ends here
        if lines and lines[-1] == "":
            lines.pop()
        lines = [line.removesuffix("\r") for line in lines]
        out += [Input(line, {"line": n}) for n, line in enumerate(lines, 1)]
    return out


def decode_bytes(raw: bytes, name: str) -> str:
    """Text of a whole input: UTF-8 (BOM dropped), else GB18030; neither (or NUL bytes) is an error naming it."""
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise QingbertError(f"{name}:{line}: a NUL byte: this is not a text file", hint="one text per line, UTF-8")
    enc = sniff_encoding(raw)  # the same detection as `prepare` and the task readers
    try:
        if enc:
            return raw.decode(enc)
    except UnicodeDecodeError:
        pass
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        utf8_error = e
    line = raw.count(b"\n", 0, utf8_error.start) + 1
    raise QingbertError(f"{name}:{line}: neither UTF-8 nor GB18030 text ({utf8_error.reason} at byte "
                        f"{utf8_error.start})", hint="save the file as UTF-8")


def note(message: str) -> None:
    """A note for the person at the terminal: on stderr, so stdout stays the results."""
    print(f"note: {message}", file=sys.stderr)
