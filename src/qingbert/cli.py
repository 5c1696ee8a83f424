"""``qingbert <verb>``: a thin command-line layer over the Python API.

Each verb parses its flags and calls one API function; user errors
(:class:`~qingbert.errors.QingbertError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qingbert.errors import QingbertError

# verb -> one-line help; later stages (pretrain, finetune, bench, distill, export,
# speed, serve, index) register here the same way.
VERBS = {
    "zoo": "list the model zoo: shapes, parameter counts, hub ids",
    "prepare": "text sources -> cleaned, deduplicated, segmented, WWM-ready packed shards",
    "vocab": "build a BERT-style WordPiece vocabulary (vocab.txt + tokenizer.json)",
    "pretrain": "pretraining on prepared shards (from scratch or continued): whole-word-masking MLM, MacBERT or "
                "ELECTRA",
    "fill-mask": "show a masked-LM model's top fillers for each [MASK] in a text",
    "finetune": "fine-tune a model on a Chinese task (classification, pair, NER, MRC); dev scores + predictions",
    "predict": "predict texts (or a task split: CLUE / CMRC submission files) with any model folder, on its fastest "
               "backend",
    "distill": "knowledge distillation: teacher -> (assistant ->) student, general (WWM data) or task stage",
    "bench": "the MiniRBT fine-tuning protocol: lr grid x epochs x seeds over models and tasks; tables + plot",
    "export": "a model folder -> the same folder + ONNX (fused fp32, int8) with parity checks and measured speed",
    "speed": "the seeds' speed table on this machine: params, seq/s for torch / ONNX / int8, speedup vs the base",
    "demo": "run the pipeline on the built-in Chinese data",
}


def _add_source_args(p: argparse.ArgumentParser) -> None:
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


def _add_train_args(p: argparse.ArgumentParser, extra=()) -> None:
    for name, typ, hlp in TRAIN_FLAGS + tuple(extra):
        p.add_argument("--" + name, type=typ, default=None, help=hlp)


def _recipe_with_flags(args: argparse.Namespace, extra=()) -> dict:
    """The YAML recipe (--config) with every given flag on top (flags beat the recipe)."""
    recipe = _load_recipe(args.config)
    for name, _, _ in TRAIN_FLAGS + tuple(extra):
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            recipe[name.replace("-", "_")] = value
    return recipe


def _add_task_args(p: argparse.ArgumentParser, required: bool = True) -> None:
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


def _run_prompt(args: argparse.Namespace, recipe: dict) -> int:
    """``finetune --prompt T --verbalizer V``: PET-style fine-tuning (:mod:`qingbert.prompt`)."""
    if not (args.prompt and args.verbalizer):
        raise QingbertError("--prompt and --verbalizer go together (and --train-examples needs them)",
                            hint='e.g. --prompt "{text}。总之很[MASK]。" --verbalizer "1:好,0:差"; '
                                 "--max-train-examples subsets the data for head fine-tuning")
    from qingbert.tasks.prompt import format_prompt_scores, prompt_finetune

    r = prompt_finetune(args.model, _task_from_args(args), args.out, args.data, template=args.prompt,
                        verbalizer=args.verbalizer, config=recipe, train_examples=args.train_examples or 0)
    _print_skips(r)
    if "dev" in r:
        print(f"dev: {format_prompt_scores(r)}")
        done = "zero-shot (no training)" if r["zero_shot"] else f"{r['steps']} steps on {r['train_examples']} examples"
        print(f"{done} in {r['elapsed_s']:.0f} s; wrote {args.out} (dev_metrics.json, predictions-dev.jsonl; "
              "loads with transformers' AutoModelForMaskedLM)")
    return 0


def _task_from_args(args: argparse.Namespace):
    """A task name, or a Task read with the generic column mapping."""
    if args.task in ("classification", "pair"):
        from qingbert.tasks.readers import load_generic

        if args.data is None or args.text_col is None:
            raise QingbertError(f"a generic {args.task} task needs --data FILE_OR_DIR and --text-col")

        def col(c):
            return int(c) if c is not None and str(c).isdigit() else c

        return load_generic(args.data, args.task, col(args.text_col), col(args.text_b_col), col(args.label_col),
                            col(args.id_col))
    return args.task


def _print_skips(r: dict) -> None:
    """Rows the task readers could not use (counted, never silently dropped) and what they repaired."""
    if r.get("skipped"):
        print("skipped rows: " + ", ".join(f"{why} {n}" for why, n in sorted(r["skipped"].items()))
              + "".join(f"\n  e.g. {w}" for w in r.get("skip_examples", [])))
    if r.get("fixed"):
        print("repaired: " + ", ".join(f"{why} {n}" for why, n in sorted(r["fixed"].items())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qingbert", description="轻BERT: small, fast Chinese language models.")
    parser.add_argument("--version", action="version", version=f"qingbert {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("zoo", help=VERBS["zoo"], description=VERBS["zoo"])
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")

    p = sub.add_parser("prepare", help=VERBS["prepare"], description=VERBS["prepare"])
    _add_source_args(p)
    p.add_argument("--segmenter", default="rjieba",
                   help="rjieba (default), jieba, ltp[:MODEL], gold (use the source's segmentation), char")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id (default: build a vocab from the corpus itself)")
    p.add_argument("--vocab-size", type=int, default=8000, help="size of the vocab built when no --tokenizer")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--no-pack", dest="pack", action="store_false", help="one text per sequence")
    p.add_argument("--no-fill", dest="fill", action="store_false",
                   help="start a text that does not fit in a new sequence instead of cutting it to fill this one")
    p.add_argument("--min-chars", type=int, default=2, help="drop texts shorter than this")
    p.add_argument("--max-chars", type=int, default=None,
                   help="cut longer lines at sentence ends (default: max-seq-len - 2)")
    p.add_argument("--eval-fraction", type=float, default=0.01, help="share of texts held out for evaluation")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    p.add_argument("--config", default=None, help="YAML recipe with any of these options")

    p = sub.add_parser("vocab", help=VERBS["vocab"], description=VERBS["vocab"])
    _add_source_args(p)
    p.add_argument("--size", type=int, default=8000, help="vocabulary size (default 8000, like CLUE's)")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--cased", action="store_true", help="keep case (default: lowercase, like Chinese BERT)")
    p.add_argument("--heldout", type=float, default=0.01, help="share of texts held out to measure the UNK rate")

    p = sub.add_parser("pretrain", help=VERBS["pretrain"], description=VERBS["pretrain"] + (
        ". Scale out with `accelerate launch --num_processes N -m qingbert pretrain ...`."))
    p.add_argument("--model", required=True,
                   help="zoo name (from scratch, e.g. minirbt-h256), a model folder or a hub id (continued)")
    p.add_argument("--data", required=True, help="a folder made by `qingbert prepare`")
    p.add_argument("--out", required=True, help="output model folder (checkpoints go inside)")
    p.add_argument("--config", default=None, help="YAML recipe: any option below (flat or under train:/masking:)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    _add_train_args(p, PRETRAIN_FLAGS)
    p.add_argument("--document-mask", action="store_true", default=None,
                   help="packed texts attend only to themselves (no attention across the texts of a sequence)")
    p.add_argument("--layers", type=int, default=None, help="for a zoo shape: number of layers (a smaller teacher)")
    p.add_argument("--objective", default=None, choices=("wwm", "macbert", "electra"),
                   help="wwm (whole-word-masking MLM, default), macbert (similar-word correction + n-grams, needs "
                        "--similar-words) or electra (generator + replaced-token detection)")
    p.add_argument("--similar-words", default=None, help="macbert: folder from `qingbert similar-words DATA`")
    p.add_argument("--sop", action="store_true", default=None, help="macbert: add sentence-order prediction")
    p.add_argument("--generator-hidden", type=int, default=None,
                   help="electra: generator width (default a quarter of the discriminator's)")
    p.add_argument("--disc-weight", type=float, default=None,
                   help="electra: weight of the discriminator loss (default 50, as Chinese-ELECTRA)")

    p = sub.add_parser("fill-mask", help=VERBS["fill-mask"], description=VERBS["fill-mask"])
    p.add_argument("model", help="a model folder or hub id")
    p.add_argument("text", help='text with [MASK], e.g. "今天[MASK]气很好"')
    p.add_argument("--top-k", type=int, default=5)

    p = sub.add_parser("finetune", help=VERBS["finetune"], description=VERBS["finetune"] + (
        ". Scale out with `accelerate launch --num_processes N -m qingbert finetune ...`."))
    p.add_argument("--model", required=True, help="a model folder, hub id or zoo name (pretrained weights), or "
                                                   "random:<folder or zoo name> for a random-init baseline")
    _add_task_args(p)
    p.add_argument("--out", required=True, help="output folder (loads with transformers' AutoModelFor...)")
    p.add_argument("--config", default=None, help="YAML recipe: any option below (flat or training under train:)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    _add_train_args(p, FINETUNE_FLAGS)
    p.add_argument("--layers", type=int, default=None, help="for random:<zoo name>: number of layers")
    p.add_argument("--prompt", default=None, metavar="TEMPLATE",
                   help="PET-style prompt fine-tuning through the MLM head: a template with one [MASK] and {text} "
                        "({text_a} and {text_b} for pairs), e.g. '{text}。总之很[MASK]。'; --epochs 0 = zero-shot")
    p.add_argument("--verbalizer", default=None,
                   help="with --prompt: one single-token word per label, '1:好,0:差' or a JSON / YAML file")
    p.add_argument("--train-examples", type=int, default=None,
                   help="with --prompt: a few-shot sample of the training set (e.g. 32), stratified by label, "
                        "drawn with --seed")

    p = sub.add_parser("predict", help=VERBS["predict"], description=VERBS["predict"] + (
        ". With --task: a split of the task -> a submission file; with --text / --input: one JSON result per line "
        "on stdout (or --out)."))
    p.add_argument("--model", required=True, help="a fine-tuned (or exported) folder")
    _add_task_args(p, required=False)
    p.add_argument("--text", action="append", default=None,
                   help="a text to predict (repeatable); pairs as 'a ||| b'; MRC as 'question ||| context'")
    p.add_argument("--input", default=None, help="a file with one text per line (or - for stdin)")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest in the folder)")
    p.add_argument("--split", default="test", help="train, dev or test (default test)")
    p.add_argument("--out", default=None, help="submission file (default MODEL/<task>_predict.json[l])")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("export", help=VERBS["export"], description=VERBS["export"])
    p.add_argument("model", help="a model folder (pretrained, distilled or fine-tuned)")
    p.add_argument("--out", required=True, help="output folder: a copy of the model plus onnx/")
    p.add_argument("--onnx", action="store_true", help="the fused fp32 ONNX graph")
    p.add_argument("--int8", action="store_true", help="the int8 (dynamically quantised) graph")
    p.add_argument("--task", default=None, help="task to check dev parity on (default: the model's own)")
    p.add_argument("--data", default=None, help="the task's files, when they are not built in")
    p.add_argument("--max-dev-examples", type=int, default=1000, help="dev examples scored per backend")
    p.add_argument("--force", action="store_true", help="keep an export whose parity check failed")
    p.add_argument("--threads", type=int, default=0, help="threads for the measurements (default: all cores)")

    p = sub.add_parser("speed", help=VERBS["speed"], description=VERBS["speed"])
    p.add_argument("models", nargs="*", help="zoo shapes or model folders (default: the seeds' shapes)")
    p.add_argument("--out", default="speed", help="folder for speed.json / speed.md / speed.png")
    p.add_argument("--grid", default="1x32,8x64,32x128", help="batch x sequence length points")
    p.add_argument("--backends", default="torch,onnx,onnx-int8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="threads (default: one per core)")
    p.add_argument("--base", default="roberta-wwm-ext", help="the reference for speedups (torch eager fp32)")

    p = sub.add_parser("distill", help=VERBS["distill"], description=VERBS["distill"] + (
        ". General stage with --data (a prepared folder); task stage with --task (teachers = fine-tuned folders). "
        "Scale out with `accelerate launch --num_processes N -m qingbert distill ...`."))
    p.add_argument("--teacher", required=True, action="append",
                   help="teacher model folder or hub id; repeat for several teachers (soft targets averaged)")
    p.add_argument("--teacher-weights", default=None, help="comma-separated weights of the teachers")
    p.add_argument("--student", required=True,
                   help="zoo shape (from scratch, e.g. minirbt-h256), a model folder, or a hub id")
    p.add_argument("--assistant", default=None,
                   help="general stage: a middle model (e.g. rbt6), initialised from teacher layers when it has "
                        "the teacher's width; teacher -> assistant -> student in one run")
    p.add_argument("--data", default=None, help="general stage: a folder made by `qingbert prepare`; task stage: "
                                                "the task's files")
    p.add_argument("--task", default=None, help="task-stage distillation on this task (see `qingbert finetune`)")
    p.add_argument("--out", required=True, help="output folder (general: <out>/assistant, <out>/student)")
    p.add_argument("--matches", default=None,
                   help="intermediate matches: a preset (" + ", ".join(
                       ("hidden-uniform", "minirbt", "layer-to-layer", "attention-uniform", "none")) +
                        ") or a YAML/JSON file with a list of {layer_T, layer_S, loss, weight, proj}")
    p.add_argument("--init-from-teacher-layers", default=None,
                   help="comma-separated teacher layers (from 0) copied into the assistant, or into the student "
                        "when there is no assistant, e.g. 0,2,4,7,9,11")
    p.add_argument("--hidden-only", action="store_true", help="no logits KD: hidden-state matches only")
    p.add_argument("--no-t2", dest="kd_t2", action="store_false",
                   help="do not multiply the KD cross-entropy by T^2 (TextBrewer's convention)")
    p.add_argument("--assistant-steps", type=int, default=None, help="optimizer steps of the assistant stage")
    p.add_argument("--config", default=None, help="YAML recipe: any option below, plus matches, schedules ...")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    _add_train_args(p, DISTILL_FLAGS + FINETUNE_FLAGS[:1])
    p.add_argument("--layers", type=int, default=None, help="for a zoo-shape student: number of layers")

    p = sub.add_parser("bench", help=VERBS["bench"], description=VERBS["bench"])
    p.add_argument("--models", required=True, help="comma-separated models (folders, hub ids, random:...)")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--out", required=True, help="results folder (re-running it skips finished runs)")
    p.add_argument("--data", default=None, help="one folder of task folders (<DIR>/<task>/), or task=DIR,task=DIR")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (default: a grid by model size)")
    p.add_argument("--epochs", default="2,3,5,10", help="comma-separated epoch counts (default 2,3,5,10)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--max-train-examples", type=int, default=0, help="a fixed subset of each training set")
    p.add_argument("--reference", default=None, help="the model scored 100%% in the relative table (default first)")
    p.add_argument("--keep-models", action="store_true", help="keep every fine-tuned folder (default: delete)")

    p = sub.add_parser("demo", help=VERBS["demo"], description=VERBS["demo"])
    p.add_argument("--out", default="demo-output", help="where the demo writes its folders")
    p.add_argument("--examples", type=int, default=4, help="sentences shown with their whole-word masks")
    p.add_argument("--steps", type=int, default=None, help="teacher pretraining steps (default 1,200)")

    # embeddings (encode, whiten, simcse, eval-sts), semantic search (index) and serving (serve): their stage modules
    # define their own verbs
    from qingbert.embeddings import commands as embed
    from qingbert.serve import commands as serve
    from qingbert.deploy import index, prune
    from qingbert.data import similar

    embed.add_cli(sub)
    index.add_cli(sub)
    serve.add_cli(sub)
    prune.add_cli(sub)
    similar.add_cli(sub)
    return parser


def _version() -> str:
    from qingbert import __version__

    return __version__


def _load_recipe(path: str | None) -> dict:
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


def run(args: argparse.Namespace) -> int:
    from qingbert.embeddings import commands as embed

    if args.verb in embed.VERBS:
        return embed.run_cli(args)
    if args.verb in ("index", "serve", "prune-vocab", "similar-words"):
        return args.run_cli(args)
    if args.verb == "zoo":
        from qingbert.models import zoo

        print(json.dumps(zoo.zoo_records(), ensure_ascii=False, indent=2) if args.json else zoo.zoo_table())
    elif args.verb == "prepare":
        from dataclasses import fields

        from qingbert.data.prepare import PrepareConfig, prepare, prepare_summary

        recipe = _load_recipe(args.config)
        known = {f.name for f in fields(PrepareConfig)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise QingbertError(f"{args.config}: unknown option(s) {', '.join(unknown)}",
                                hint="known: " + ", ".join(sorted(known)))
        cfg = PrepareConfig(**recipe)
        defaults = build_parser().parse_args(["prepare", "x", "--out", "x"])
        for name in ("segmenter", "tokenizer", "vocab_size", "max_seq_len", "pack", "fill", "min_chars", "max_chars",
                     "eval_fraction", "workers", "overwrite", "dedup", "text_field"):
            value = getattr(args, name)
            if value != getattr(defaults, name) or name not in recipe:  # flags beat the recipe
                setattr(cfg, name, value)
        m = prepare(args.sources, args.out, cfg)
        print(prepare_summary(m))
        print(f"wrote {args.out} (manifest.json lists what made it)")
    elif args.verb == "vocab":
        from qingbert.data.vocab import build_vocab, vocab_summary

        r = build_vocab(args.sources, args.out, args.size, min_frequency=args.min_frequency, heldout=args.heldout,
                        lowercase=not args.cased, text_field=args.text_field, dedup=args.dedup)
        print(vocab_summary(r))
        print(f"wrote {args.out}: vocab.txt, tokenizer.json (loads with transformers' BertTokenizer)")
    elif args.verb == "pretrain":
        from qingbert.pretraining.pretrain import pretrain

        recipe = _recipe_with_flags(args, PRETRAIN_FLAGS)
        if args.resume:
            recipe["resume"] = True
        if args.document_mask:
            recipe["document_mask"] = True
        if args.layers:
            recipe.setdefault("overrides", {})["num_hidden_layers"] = args.layers
        if args.objective:
            recipe["objective"] = args.objective
        for section, flag in (("macbert", "similar_words"), ("macbert", "sop"), ("electra", "generator_hidden"),
                              ("electra", "disc_weight")):
            if getattr(args, flag) is not None:
                recipe.setdefault(section, {})[flag] = getattr(args, flag)
        m = pretrain(args.model, args.data, args.out, recipe)
        if m:
            b, a = m.get("eval_before") or {}, m.get("eval_after") or {}
            if a:
                who = " (generator)" if m.get("objective") == "electra" else ""
                print(f"masked-token accuracy{who} {100 * b.get('masked_accuracy', 0):.1f}% -> "
                      f"{100 * a['masked_accuracy']:.1f}%, perplexity {b.get('perplexity', float('nan')):.1f} -> "
                      f"{a['perplexity']:.1f}")
                if "disc_accuracy" in a:
                    print(f"replaced-token detection: accuracy {100 * a['disc_accuracy']:.1f}%, "
                          f"F1 {100 * a.get('disc_f1', 0):.1f}% on replaced tokens")
            print(f"{m['steps']} steps in {m['elapsed_s']:.0f} s; wrote {args.out} (loads with transformers)")
    elif args.verb == "fill-mask":
        from qingbert.pretraining.pretrain import fill_mask, format_fill

        print(format_fill(args.text, fill_mask(args.model, args.text, args.top_k)))
    elif args.verb == "finetune":
        from qingbert.tasks.finetune import finetune, format_scores

        recipe = _recipe_with_flags(args, FINETUNE_FLAGS)
        if args.resume:
            recipe["resume"] = True
        if args.layers:
            recipe.setdefault("overrides", {})["num_hidden_layers"] = args.layers
        if args.prompt or args.verbalizer or args.train_examples:
            return _run_prompt(args, recipe)
        r = finetune(args.model, _task_from_args(args), args.out, args.data, config=recipe)
        _print_skips(r)
        if "dev" in r:
            print(f"dev: {format_scores(r['dev'])}")
            print(f"{r['steps']} steps in {r['elapsed_s']:.0f} s; wrote {args.out} (dev_metrics.json, "
                  "predictions-dev.jsonl; loads with transformers)")
    elif args.verb == "predict":
        _run_predict(args)
    elif args.verb == "export":
        from qingbert.deploy.export import export, export_summary

        both = not args.onnx and not args.int8  # neither flag: both graphs
        rec = export(args.model, args.out, onnx=args.onnx or both, int8=args.int8 or both, task=args.task,
                     data_dir=args.data, force=args.force, max_dev_examples=args.max_dev_examples,
                     threads=args.threads)
        print(export_summary(rec))
        print(f"wrote {args.out} (transformers files + onnx/; qingbert.load picks the fastest backend)")
    elif args.verb == "speed":
        from qingbert.deploy.speed import SpeedConfig, speed

        try:
            grid = [[int(x) for x in g.lower().split("x")] for g in args.grid.split(",") if g.strip()]
        except ValueError:
            raise QingbertError(f"--grid: expected points like 1x32,32x128, got '{args.grid}'") from None
        cfg = SpeedConfig(models=args.models or SpeedConfig().models, grid=grid,
                          backends=[b.strip() for b in args.backends.split(",") if b.strip()],
                          repeats=args.repeats, threads=args.threads, base=args.base, out=args.out)
        res = speed(cfg)
        from qingbert.deploy.speed import speed_markdown

        print(speed_markdown(res))
        print(f"wrote {args.out}/speed.json, speed.md" + (", speed.png" if res.get("plot") else ""))
    elif args.verb == "distill":
        _run_distill(args)
    elif args.verb == "bench":
        from qingbert.tasks.bench import BenchConfig, bench

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
    elif args.verb == "demo":
        from qingbert.demo import demo

        demo(args.out, examples=args.examples, steps=args.steps)
    else:
        build_parser().print_help()
        return 1
    return 0


def _matches_arg(value: str | None):
    if value is None:
        return None
    from pathlib import Path

    if not Path(value).exists():
        return value  # a preset name (checked by the distillation stage)
    return _load_recipe_any(value)


def _load_recipe_any(path: str):
    """A YAML/JSON file holding any value (a list of matches)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise QingbertError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML/JSON") from None


def _ints(value: str | None, what: str):
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise QingbertError(f"{what}: not a comma-separated list of integers: '{value}'") from None


def _run_distill(args: argparse.Namespace) -> None:
    from qingbert.distillation.distill import distill, distill_task

    recipe = _recipe_with_flags(args, DISTILL_FLAGS + FINETUNE_FLAGS[:1])
    recipe.pop("max_len", None)
    if args.resume:
        recipe["resume"] = True
    if args.layers:
        recipe.setdefault("overrides", {})["num_hidden_layers"] = args.layers
    if args.matches is not None:
        recipe["matches"] = _matches_arg(args.matches)
    if args.hidden_only:
        recipe["hidden_only"] = True
    if not args.kd_t2:
        recipe["kd_t2"] = False
    if args.teacher_weights:
        try:
            recipe["teacher_weights"] = [float(x) for x in args.teacher_weights.split(",")]
        except ValueError:
            raise QingbertError(f"--teacher-weights: not numbers: '{args.teacher_weights}'") from None
    layers = _ints(args.init_from_teacher_layers, "--init-from-teacher-layers")
    teachers = args.teacher if len(args.teacher) > 1 else args.teacher[0]
    if args.task:
        if args.assistant:
            raise QingbertError("--assistant is for general distillation (--data DIR), not --task")
        ft = {"max_len": args.max_len} if args.max_len else {}
        if layers:
            raise QingbertError("--init-from-teacher-layers is for general distillation")
        args.text_col = args.text_b_col = args.label_col = args.id_col = None
        r = distill_task(teachers, args.student, _task_from_args(args), args.out, args.data, config=recipe,
                         finetune_config=ft)
        from qingbert.tasks.finetune import format_scores

        _print_skips(r)
        if "dev" in r:
            print(f"student dev: {format_scores(r['dev'])}")
            print(f"{r['steps']} steps in {r['elapsed_s']:.0f} s; wrote {args.out} (loads with transformers; "
                  "`qingbert predict` works on it)")
        return
    if not args.data:
        raise QingbertError("give --data DIR (a prepared folder) for general distillation, or --task for the "
                            "task stage")
    assistant_recipe = None
    if args.assistant:
        assistant_recipe = {k: v for k, v in recipe.items() if k != "overrides"}  # (--layers is the student's)
        if layers:
            assistant_recipe["init_from_teacher_layers"] = layers
        if args.assistant_steps:
            assistant_recipe["max_steps"] = args.assistant_steps
    elif layers:
        recipe["init_from_teacher_layers"] = layers
    r = distill(teachers, args.student, args.data, args.out, assistant=args.assistant, config=recipe,
                assistant_config=assistant_recipe)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # (under `accelerate launch`, one report)
        return
    for m in r["stages"]:
        ev = m.get("eval_after") or {}
        p = m.get("parameters", {})
        acc = f"masked-token accuracy {100 * ev['masked_accuracy']:.1f}%" if "masked_accuracy" in ev else ""
        agree = (f", top-1 agreement with the teacher {100 * ev['teacher_agreement']:.1f}%"
                 if "teacher_agreement" in ev else "")
        print(f"{m['stage']}: {p.get('teacher', 0) / 1e6:.1f} M -> {p.get('student', 0) / 1e6:.1f} M parameters, "
              f"{m['steps']} steps; {acc}{agree}")
    print(f"wrote {r['student']} (loads with transformers' AutoModelForMaskedLM)")


def _run_predict(args) -> None:
    from qingbert.data.corpus import input_lines

    texts, empty = input_lines(args.text, args.input)
    if empty:
        print(f"note: skipped {empty} empty lines of {args.input}", file=sys.stderr)
    texts = [t for t in texts if t.strip()]
    if args.task is None and not texts:
        raise QingbertError("nothing to predict: give --task (a task split) or --text / --input")
    if args.task is not None:
        from qingbert.tasks.finetune import format_scores
        from qingbert.tasks.predict import predict

        r = predict(args.model, _task_from_args(args), args.out, args.data, split=args.split,
                    batch_size=args.batch_size, backend=args.backend)
        if "scores" in r:
            print(f"{r['split']}: {format_scores(r['scores'])}")
        print(f"wrote {r['file']} ({r['examples']} {r['split']} examples, backend {r['backend']})")
        return
    from qingbert.data.text import split_pair
    from qingbert.deploy.inference import load
    from qingbert.manifest import read_manifest
    from qingbert.tasks.prompt import FORMAT as PROMPT_FORMAT

    m = read_manifest(args.model) if Path(args.model).is_dir() else None
    if m is not None and m.get("format") == PROMPT_FORMAT:  # a PET folder: its template and verbaliser label
        from qingbert.tasks.prompt import prompt_predict

        items = [split_pair(t) or t for t in texts]
        results = [{"label": lab, "score": probs[lab], "scores": probs}
                   for lab, probs in prompt_predict(args.model, items, batch_size=args.batch_size)]
        _write_results(results, args.out, "torch")
        return
    model = load(args.model, backend=args.backend)
    if model.kind == "mrc":
        items = []
        for t in texts:
            pair = split_pair(t)
            if pair is None:
                raise QingbertError("an MRC model takes 'question ||| context' lines")
            items.append({"question": pair[0], "context": pair[1]})
    else:
        items = texts
    _write_results(model.predict(items, batch_size=args.batch_size), args.out, model.backend)


def _write_results(results, out, backend: str) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if out:
        from qingbert.manifest import atomic_write_text

        atomic_write_text(out, "\n".join(lines) + "\n")
        print(f"wrote {out} ({len(lines)} predictions, backend {backend})")
    else:
        print("\n".join(lines))


def _quiet_libraries() -> None:
    """transformers' per-load progress bars and info lines would drown our own output."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb in ("pretrain", "fill-mask", "finetune", "predict", "bench", "distill", "demo", "export", "speed",
                     "encode", "whiten", "simcse", "eval-sts", "index", "serve", "prune-vocab", "similar-words"):
        _quiet_libraries()
    try:
        return run(args)
    except QingbertError as e:
        print(f"qingbert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qingbert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
