"""The embeddings verbs: ``encode``, ``whiten``, ``simcse`` and ``eval-sts``.

The encoder, whitening and STS modules import torch only when they run, so they are imported here at the top;
SimCSE training imports torch at its top and is imported when the verb runs.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from qingbert.cli.common import count, non_negative, note, positive, positive_int, read_inputs, seq_len
from qingbert.data.text import is_blank
from qingbert.embeddings.encoder import SentenceEncoder, TruncationWarning
from qingbert.embeddings.inputs import task_pairs
from qingbert.embeddings.sts import evaluate_sts
from qingbert.embeddings.whitening import whiten_model
from qingbert.errors import QingbertError
from qingbert.manifest import check_out_file

HELP = {
    "encode": "sentence vectors of texts (--text / --input FILE) -> .npy, with any pooling",
    "whiten": "fit BERT-whitening on a corpus; write the model + whitening (sentence-transformers layout)",
    "simcse": "SimCSE: unsupervised on a corpus, or supervised on a pair task (CoSENT); sentence-transformers "
              "layout",
    "eval-sts": "Spearman correlation of cosine similarity with the labels of a sentence-pair task",
}


def add_encoder_args(p, pooling_default=None) -> None:
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--pooling", default=pooling_default,
                   help="mean, cls, max, first-last-avg, last-avg, pooler, REDUCE_MEAN, REDUCE_MAX, REDUCE_MEAN_MAX, "
                        "CLS_TOKEN (default: the folder's own, else mean)")
    p.add_argument("--pooling-layer", type=int, default=None, help="layer to pool, -1 = last (default), -2 ...")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="tokens per text (default: the folder's / model's)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="texts per batch (default 64)")


def add_encode(sub) -> None:
    p = sub.add_parser("encode", help=HELP["encode"], description=HELP["encode"])
    add_encoder_args(p)
    p.add_argument("--text", action="append", default=None, help="a text (repeatable); 'a ||| b' is a pair")
    p.add_argument("--input", default=None, help="UTF-8 (or GB18030) file, one text per line ('-' = stdin); one row "
                                                 "per line, blank lines included")
    p.add_argument("--out", default=None, help="write the vectors to this .npy file, row i = input i (default: one "
                                               "JSON line per input on stdout: {\"line\" or \"arg\", \"embedding\"})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest present)")
    p.add_argument("--strict-length", action="store_true", help="fail on texts longer than --max-len instead of "
                                                                "truncating them with a warning")
    p.set_defaults(run=run_encode)


def add_whiten(sub) -> None:
    p = sub.add_parser("whiten", help=HELP["whiten"], description=HELP["whiten"])
    add_encoder_args(p)
    p.add_argument("--corpus", required=True, help="UTF-8 text file, one sentence per line")
    p.add_argument("--out", required=True, help="output folder (model + whitening)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier whiten / simcse output in --out")
    p.add_argument("--n-components", type=positive_int, default=None, help="keep the first K dimensions (default: all)")
    p.set_defaults(run=run_whiten)


def add_simcse(sub) -> None:
    p = sub.add_parser("simcse", help=HELP["simcse"], description=HELP["simcse"])
    p.add_argument("--model", required=True, help="model folder to start from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", default=None, help="unsupervised: UTF-8 text file, one sentence per line")
    src.add_argument("--task", default=None, help="supervised: a sentence-pair task (lcqmc, bq, afqmc ...)")
    p.add_argument("--data", default=None, help="the task's folder (default $QINGBERT_TASK_DIR/<task>)")
    p.add_argument("--split", default="train", help="task split to train on (default train)")
    p.add_argument("--out", required=True, help="output folder (sentence-transformers layout)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing the checkpoints of an earlier run there")
    p.add_argument("--temperature", type=positive, default=None, help="InfoNCE temperature (default 0.05)")
    p.add_argument("--pooling", default=None, help="mean (default), cls, max or mean-max")
    p.add_argument("--sup-loss", default=None, help="supervised: cosent (default), in-batch or both")
    p.add_argument("--max-len", type=seq_len, default=None, help="tokens per sentence (default 64)")
    for name, typ, hlp in (("max-steps", count, "optimizer steps (overrides --epochs)"),
                           ("epochs", non_negative, "passes over the data (default 1)"),
                           ("batch-size", positive_int, "sentences (pairs) per step (default 64)"),
                           ("lr", positive, "peak learning rate (default 3e-5)"),
                           ("seed", int, "random seed (default 42)"),
                           ("save-every", count, "checkpoint every N steps (default 0 = never)")):
        p.add_argument("--" + name, type=typ, default=None, help=hlp)
    p.set_defaults(run=run_simcse)


def add_eval_sts(sub) -> None:
    p = sub.add_parser("eval-sts", help=HELP["eval-sts"], description=HELP["eval-sts"])
    add_encoder_args(p)
    p.add_argument("--task", required=True, help="lcqmc, bq, afqmc (or another pair task with numeric labels)")
    p.add_argument("--data", default=None, help="the task's folder (default $QINGBERT_TASK_DIR/<task>)")
    p.add_argument("--split", default="dev", help="split to evaluate (default dev)")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest present)")
    p.set_defaults(run=run_eval_sts)


def run_encode(args) -> int:
    inputs = read_inputs(args.text, args.input)
    if not inputs:
        raise QingbertError("nothing to encode: give --text or --input")
    out = check_out_file(args.out, args.overwrite, inputs={"--input file": args.input}) if args.out else None
    enc = SentenceEncoder(args.model, pooling=args.pooling, pooling_layer=args.pooling_layer, max_len=args.max_len,
                          backend=args.backend, truncation="raise" if args.strict_length else "warn")
    if enc.pooling == "none":
        raise QingbertError("the encode command writes sentence vectors; pooling NONE (token vectors) is for the "
                            "Python API", hint="use mean, cls, max ...")
    blank = sum(is_blank(x.text) for x in inputs)
    if blank:
        note(f"{blank} of {len(inputs)} inputs are empty: encoded as empty texts, so rows still match inputs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        vecs = enc.encode([x.text for x in inputs], batch_size=args.batch_size, normalize_embeddings=args.normalize)
    if enc.last_truncated:
        note(f"{enc.last_truncated} of {len(inputs)} texts were longer than {enc.max_len} tokens and were truncated "
             "(--max-len, --strict-length)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(out)
        print(f"wrote {out}: {vecs.shape[0]} x {vecs.shape[1]} float32 ({enc.pooling} pooling, backend "
              f"{enc.backend}); row i is input i")
    else:
        for x, v in zip(inputs, vecs):
            print(json.dumps({**x.key, "embedding": [round(float(f), 6) for f in v]}))
    return 0


def run_whiten(args) -> int:
    r = whiten_model(args.model, args.corpus, args.out, n_components=args.n_components, pooling=args.pooling,
                     pooling_layer=args.pooling_layer, max_len=args.max_len, batch_size=args.batch_size,
                     overwrite=args.overwrite)
    print(f"{r['file']}: {r['sentences']} sentences ({r['empty']} empty lines skipped)"
          + (f", {r['truncated']} truncated" if r["truncated"] else ""))
    print(f"whitening: {r['n_components']} dimensions; wrote {r['out']}"
          + ("" if r["sentence_transformers"] else f"\nnote: {r['note']}"))
    return 0


def run_simcse(args) -> int:
    from qingbert.embeddings.simcse import train_simcse  # imports torch: not when the parser is built

    d = {}
    for key in ("temperature", "pooling", "sup_loss", "max_len", "max_steps", "epochs", "batch_size", "lr", "seed",
                "save_every", "resume", "overwrite"):
        v = getattr(args, key)
        if v is not None and v is not False:  # (seed 0 is a value)
            d[key] = v
    if args.corpus:
        r = train_simcse(args.model, args.out, texts=args.corpus, config=d)
    else:
        pairs, _ = task_pairs(args.task, args.data, args.split)
        r = train_simcse(args.model, args.out, pairs=pairs, config=d)
    print(f"{r['objective']}: {r['steps']} steps, loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}")
    print(f"wrote {r['out']} (loads with sentence_transformers.SentenceTransformer)")
    return 0


def run_eval_sts(args) -> int:
    r = evaluate_sts(args.model, task=args.task, data_dir=args.data, split=args.split, batch_size=args.batch_size,
                     pooling=args.pooling, pooling_layer=args.pooling_layer, max_len=args.max_len,
                     backend=args.backend)
    print(f"{r['task']} {r['split']}: Spearman {r['spearman']:.2f}, Pearson {r['pearson']:.2f} "
          f"({r['pairs']} pairs, {r['pooling']} pooling, backend {r['backend']})")
    return 0


COMMANDS = {"encode": add_encode, "whiten": add_whiten, "simcse": add_simcse, "eval-sts": add_eval_sts}
