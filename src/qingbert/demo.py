"""``qingbert demo``: the pipeline on the built-in Chinese data, end to end.

At this stage: the model zoo, then People's Daily + reviews -> clean/dedup ->
rjieba segmentation -> a vocab built from the corpus -> WWM-ready packed
shards, and a few sentences shown with their whole-word masks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SOURCES = ["builtin:peoples-daily", "builtin:reviews"]


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def demo(out: str | Path = "demo-output", examples: int = 4, seed: int = 0) -> dict:
    from . import zoo
    from .prepare import load_prepared, prepare, prepare_summary
    from .vocab import load_tokenizer
    from .wwm import sample_word_mask, show_masked

    t0 = time.time()
    out = Path(out)
    _section("model zoo (parameters computed from each architecture)")
    print(zoo.zoo_table())

    _section("prepare: built-in corpus -> clean/dedup -> rjieba -> vocab -> WWM shards")
    data = out / "corpus"
    m = prepare(SOURCES, data, overwrite=True)
    print(prepare_summary(m))
    print(f"folder: {data}")

    _section("whole-word masks (| starts a word; 15% of words masked, all their tokens together)")
    tok = load_tokenizer(str(data / "tokenizer"))
    ds = load_prepared(data, "eval")
    rng = np.random.default_rng(seed)
    shown = 0
    for row in ds:
        ids = np.asarray(row["input_ids"])
        wid = np.asarray(row["word_ids"])
        # show the first text of the sequence ([CLS] ... [SEP]), cut to a readable length
        end = int(np.flatnonzero(ids == tok.sep_token_id)[0]) + 1
        end = min(end, 60)
        tokens = tok.convert_ids_to_tokens(ids[:end].tolist())
        mask = sample_word_mask(wid[:end], rng)
        grouped, masked = show_masked(tokens, wid[:end], mask)
        print(f"words : {grouped}\nmasked: {masked}\n")
        shown += 1
        if shown >= examples:
            break
    print(f"demo finished in {time.time() - t0:.0f} s; outputs in {out}/")
    return m
