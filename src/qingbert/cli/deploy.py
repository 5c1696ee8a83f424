"""The deploy verbs: ``export``, ``speed``, ``index``, ``prune-vocab``."""

from __future__ import annotations

import json

from qingbert.cli.common import count, positive_int
from qingbert.deploy.index import POOLINGS, build_index, load_index
from qingbert.deploy.inference import load
from qingbert.deploy.prune import prune_summary, prune_vocab
from qingbert.deploy.speed import SpeedConfig, speed, speed_markdown
from qingbert.errors import QingbertError

HELP = {
    "export": "a model folder -> the same folder + ONNX (fused fp32, int8) with parity checks and measured speed",
    "speed": "the seeds' speed table on this machine: params, seq/s for torch / ONNX / int8, speedup vs the base",
    "index": "semantic search: build a faiss index of a corpus's sentence vectors, or query one",
    "prune-vocab": "drop the tokens a corpus never uses from a model's vocabulary (smaller embeddings, same outputs on "
                   "it)",
}


def add_export(sub) -> None:
    p = sub.add_parser("export", help=HELP["export"], description=HELP["export"])
    p.add_argument("model", help="a model folder (pretrained, distilled or fine-tuned)")
    p.add_argument("--out", required=True, help="output folder: a copy of the model plus onnx/")
    p.add_argument("--onnx", action="store_true", help="the fused fp32 ONNX graph")
    p.add_argument("--int8", action="store_true", help="the int8 (dynamically quantised) graph")
    p.add_argument("--task", default=None, help="task to check dev parity on (default: the model's own)")
    p.add_argument("--data", default=None, help="the task's files, when they are not built in")
    p.add_argument("--max-dev-examples", type=positive_int, default=1000, help="dev examples scored per backend")
    p.add_argument("--force", action="store_true", help="keep an export whose parity check failed")
    p.add_argument("--threads", type=count, default=0, help="threads for the measurements (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (never the model)")
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    from qingbert.deploy.export import export, export_summary

    both = not args.onnx and not args.int8  # neither flag: both graphs
    rec = export(args.model, args.out, onnx=args.onnx or both, int8=args.int8 or both, task=args.task,
                 data_dir=args.data, force=args.force, max_dev_examples=args.max_dev_examples,
                 threads=args.threads, overwrite=args.overwrite)
    print(export_summary(rec))
    print(f"wrote {args.out} (transformers files + onnx/; qingbert.load picks the fastest backend)")
    return 0


def add_speed(sub) -> None:
    p = sub.add_parser("speed", help=HELP["speed"], description=HELP["speed"])
    p.add_argument("models", nargs="*", help="zoo shapes or model folders (default: the seeds' shapes)")
    p.add_argument("--out", default="speed", help="folder for speed.json / speed.md / speed.png")
    p.add_argument("--grid", default="1x32,8x64,32x128", help="batch x sequence length points")
    p.add_argument("--backends", default="torch,onnx,onnx-int8")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=count, default=0, help="threads (default: one per core)")
    p.add_argument("--base", default="roberta-wwm-ext", help="the reference for speedups (torch eager fp32)")
    p.set_defaults(run=run_speed)


def run_speed(args) -> int:
    try:
        grid = [[int(x) for x in g.lower().split("x")] for g in args.grid.split(",") if g.strip()]
    except ValueError:
        raise QingbertError(f"--grid: expected points like 1x32,32x128, got '{args.grid}'") from None
    cfg = SpeedConfig(models=args.models or SpeedConfig().models, grid=grid,
                      backends=[b.strip() for b in args.backends.split(",") if b.strip()],
                      repeats=args.repeats, threads=args.threads, base=args.base, out=args.out)
    res = speed(cfg)

    print(speed_markdown(res))
    print(f"wrote {args.out}/speed.json, speed.md" + (", speed.png" if res.get("plot") else ""))
    return 0


def add_index(sub) -> None:
    p = sub.add_parser("index", help=HELP["index"], description=HELP["index"])
    actions = p.add_subparsers(dest="index_verb", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="encode a corpus (one text per line) and write an index folder",
                           description="encode a corpus (one text per line) and write an index folder: index.faiss, "
                                       "texts.jsonl, manifest.json")
    b.add_argument("--model", required=True, help="model folder (any qingbert.load folder)")
    b.add_argument("--corpus", required=True, help="UTF-8 text file, one text per line (empty lines are skipped), "
                                                    "or a .jsonl file of objects with a text field")
    b.add_argument("--text-field", default="text", help="the text field of a .jsonl corpus (default text)")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--factory", default="Flat",
                   help="faiss index factory string: Flat (exact, default), HNSW32, IVF<lists>,Flat, IVF<lists>,PQ<m>")
    b.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward pass (default 64)")
    b.add_argument("--pooling", default="mean", choices=POOLINGS, help="sentence vector pooling (default mean)")
    b.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest in the folder)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    q = actions.add_parser("query", help="print the nearest corpus texts of a query as JSON lines",
                           description="print the nearest corpus texts of each query as JSON lines "
                                       "{query, rank, id, text, score}")
    q.add_argument("--index", required=True, help="index folder written by `qingbert index build`")
    q.add_argument("--text", action="append", required=True, help="query text (repeat for several)")
    q.add_argument("--k", type=positive_int, default=5, help="hits per query (default 5)")
    q.add_argument("--model", default=None, help="model folder for the queries (default: the one the index names)")
    q.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest)")
    p.set_defaults(run=run_index)


def run_index(args) -> int:
    if args.index_verb == "build":
        r = build_index(args.model, args.corpus, args.out, factory=args.factory, batch_size=args.batch_size,
                        pooling=args.pooling, backend=args.backend, overwrite=args.overwrite,
                        text_field=args.text_field)
        skipped = r["skipped"]["empty_lines"]
        print(f"wrote {args.out}: {r['count']} texts, dim {r['dim']}, {r['factory']}, "
              f"{skipped} empty line{'s' if skipped != 1 else ''} skipped, {r['seconds']['total']:.1f} s")
        return 0
    encoder = load(args.model, backend=args.backend) if args.model else None
    index = load_index(args.index, encoder=encoder, backend=args.backend)
    for text, hits in zip(args.text, index.search(args.text, k=args.k)):
        for rank, hit in enumerate(hits, start=1):
            print(json.dumps({"query": text, "rank": rank, **hit}, ensure_ascii=False))
    return 0


def add_prune_vocab(sub) -> None:
    p = sub.add_parser("prune-vocab", help=HELP["prune-vocab"], description=HELP["prune-vocab"] + (
        ". Outputs on the corpus stay the same; a text outside it that uses a dropped token reads it as [UNK]."))
    p.add_argument("model", help="a model folder (masked-LM or fine-tuned) or hub id")
    p.add_argument("--corpus", action="append", required=True,
                   help="text the model will see: builtin:reviews (optionally :dev/:test/:all), .txt (one text per "
                        "line), .jsonl, .gz of those, or folders of them; repeatable")
    p.add_argument("--out", required=True, help="output folder (loads with plain transformers)")
    p.add_argument("--keep", default=None,
                   help="tokens to keep whatever the corpus says: a file with one token per line, or a comma list")
    p.add_argument("--min-count", type=positive_int, default=1,
                   help="keep tokens the corpus has at least N times (default 1: outputs on the corpus stay exact)")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl files (default: text)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(run=run_prune_vocab)


def run_prune_vocab(args) -> int:
    r = prune_vocab(args.model, args.corpus, args.out, keep=args.keep, min_count=args.min_count,
                    overwrite=args.overwrite, text_field=args.text_field)
    print(prune_summary(r))
    return 0


COMMANDS = {"export": add_export, "speed": add_speed, "index": add_index, "prune-vocab": add_prune_vocab}
