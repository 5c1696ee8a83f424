"""The data verbs: ``zoo``, ``prepare``, ``vocab``, ``similar-words``."""

from __future__ import annotations

import argparse
import json

from qingbert.cli.common import add_source_args, count, load_recipe, positive_int, ratio, seq_len
from qingbert.data.prepare import PrepareConfig, prepare, prepare_summary
from qingbert.data.similar import build_similar_words, similar_words_summary
from qingbert.data.vocab import build_vocab, vocab_summary
from qingbert.errors import QingbertError
from qingbert.models import zoo

HELP = {
    "zoo": "list the model zoo: shapes, parameter counts, hub ids",
    "prepare": "text sources -> cleaned, deduplicated, segmented, WWM-ready packed shards",
    "vocab": "build a BERT-style WordPiece vocabulary (vocab.txt + tokenizer.json)",
    "similar-words": "build the MacBERT similar-word table (Word2Vec over a prepared corpus, same-length neighbours)",
}


def add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help=HELP["zoo"], description=HELP["zoo"])
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.set_defaults(run=run_zoo)


def run_zoo(args) -> int:
    print(json.dumps(zoo.zoo_records(), ensure_ascii=False, indent=2) if args.json else zoo.zoo_table())
    return 0


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help=HELP["prepare"], description=HELP["prepare"])
    add_source_args(p)
    p.add_argument("--segmenter", default="rjieba",
                   help="rjieba (default), jieba, ltp[:MODEL], gold (use the source's segmentation), char")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id (default: build a vocab from the corpus itself)")
    p.add_argument("--vocab-size", type=positive_int, default=8000, help="size of the vocab built when no --tokenizer")
    p.add_argument("--max-seq-len", type=seq_len, default=512)
    p.add_argument("--no-pack", dest="pack", action="store_false", help="one text per sequence")
    p.add_argument("--no-fill", dest="fill", action="store_false",
                   help="start a text that does not fit in a new sequence instead of cutting it to fill this one")
    p.add_argument("--min-chars", type=count, default=2, help="drop texts shorter than this")
    p.add_argument("--max-chars", type=positive_int, default=None,
                   help="cut longer lines at sentence ends (default: max-seq-len - 2)")
    p.add_argument("--eval-fraction", type=ratio, default=0.01, help="share of texts held out for evaluation")
    p.add_argument("--workers", type=count, default=0, help="worker processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")
    p.add_argument("--config", default=None, help="YAML recipe with any of these options")
    p.set_defaults(run=run_prepare)


def run_prepare(args) -> int:
    from dataclasses import fields

    recipe = load_recipe(args.config)
    known = {f.name for f in fields(PrepareConfig)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise QingbertError(f"{args.config}: unknown option(s) {', '.join(unknown)}",
                            hint="known: " + ", ".join(sorted(known)))
    cfg = PrepareConfig(**recipe)
    sub = argparse.ArgumentParser().add_subparsers()
    add_prepare(sub)
    defaults = sub.choices["prepare"].parse_args(["x", "--out", "x"])
    for name in ("segmenter", "tokenizer", "vocab_size", "max_seq_len", "pack", "fill", "min_chars", "max_chars",
                 "eval_fraction", "workers", "overwrite", "dedup", "text_field"):
        value = getattr(args, name)
        if value != getattr(defaults, name) or name not in recipe:  # flags beat the recipe
            setattr(cfg, name, value)
    m = prepare(args.sources, args.out, cfg)
    print(prepare_summary(m))
    print(f"wrote {args.out} (manifest.json lists what made it)")
    return 0


def add_vocab(sub) -> None:
    p = sub.add_parser("vocab", help=HELP["vocab"], description=HELP["vocab"])
    add_source_args(p)
    p.add_argument("--size", type=positive_int, default=8000, help="vocabulary size (default 8000, like CLUE's)")
    p.add_argument("--min-frequency", type=positive_int, default=2)
    p.add_argument("--cased", action="store_true", help="keep case (default: lowercase, like Chinese BERT)")
    p.add_argument("--heldout", type=ratio, default=0.01, help="share of texts held out to measure the UNK rate")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier vocabulary folder in --out")
    p.set_defaults(run=run_vocab)


def run_vocab(args) -> int:
    r = build_vocab(args.sources, args.out, args.size, min_frequency=args.min_frequency, heldout=args.heldout,
                    lowercase=not args.cased, text_field=args.text_field, dedup=args.dedup,
                    overwrite=args.overwrite)
    print(vocab_summary(r))
    print(f"wrote {args.out}: vocab.txt, tokenizer.json (loads with transformers' BertTokenizer)")
    return 0


def add_similar_words(sub) -> None:
    p = sub.add_parser("similar-words", help=HELP["similar-words"], description=HELP["similar-words"])
    p.add_argument("data", metavar="DATA", help="a prepared folder (qingbert prepare)")
    p.add_argument("--out", required=True, help="output folder (table.npz + manifest.json)")
    p.add_argument("--dim", type=positive_int, default=64, help="word vector size (default 64)")
    p.add_argument("--min-count", type=positive_int, default=5,
                   help="words seen fewer times get no table entry (default 5)")
    p.add_argument("--top-k", type=positive_int, default=10, help="similar words kept per word (default 10)")
    p.add_argument("--epochs", type=positive_int, default=5, help="Word2Vec passes over the data (default 5)")
    p.add_argument("--max-sequences", type=positive_int, default=None,
                   help="read at most N train sequences (default all)")
    p.add_argument("--workers", type=count, default=0, help="Word2Vec threads (default: one per CPU core)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table folder")
    p.set_defaults(run=run_similar_words)


def run_similar_words(args) -> int:
    r = build_similar_words(args.data, args.out, dim=args.dim, min_count=args.min_count, top_k=args.top_k,
                            epochs=args.epochs, max_sequences=args.max_sequences, workers=args.workers,
                            overwrite=args.overwrite)
    print(similar_words_summary(r))
    print(f"wrote {args.out} (pretrain with objective macbert, similar_words: {args.out})")
    return 0


COMMANDS = {"zoo": add_zoo, "prepare": add_prepare, "vocab": add_vocab, "similar-words": add_similar_words}
