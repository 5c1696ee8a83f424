"""Throughput benchmark for ``qingbert prepare``.

Builds a plain-text corpus (one text per line, default 20 M characters) by
repeating the built-in People's Daily and review texts, then times on that same
file, each method in a fresh subprocess (so one method's memory and warm caches
do not leak into the next):

* ``prepare`` end to end with a tokenizer built beforehand (``dedup=False``,
  ``workers=0`` = one per core) -- the number the goal is about;
* ``prepare`` end to end building its own vocabulary;
* jieba's ``jieba.lcut`` on every line, one process (what people do today);
* jieba's own parallel mode (``jieba.enable_parallel``), one worker per core;
* rjieba's ``rjieba.cut`` on every line, one process, for context.

Goals: prepare >= 1 M chars/s end to end on 2 cores, and >= 5x jieba alone.
A miss is printed, not raised.  Results go to ``benchmarks/results/prepare.json``
and ``benchmarks/results/prepare.md``.

    python benchmarks/prepare.py            # 20 M characters, a few minutes on 2 cores
    python benchmarks/prepare.py --quick    # ~2 M characters, smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common  # benchmarks/_common.py (the script folder is on sys.path)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOAL_CHARS_PER_S = 1_000_000
GOAL_RATIO = 5.0
BLOCK_LINES = 20_000  # lines per jieba.cut call in parallel mode (bounds memory)
METHODS = ("prepare", "prepare_vocab", "jieba", "jieba_parallel", "rjieba")
LABELS = {
    "prepare": "qingbert prepare, end to end (given tokenizer)",
    "prepare_vocab": "qingbert prepare, end to end (builds its vocab)",
    "jieba": "jieba.lcut, 1 process (segmentation only)",
    "jieba_parallel": "jieba.enable_parallel({n}) + jieba.cut (segmentation only)",
    "rjieba": "rjieba.cut, 1 process (segmentation only)",
}


# ---------------------------------------------------------------------------
# Corpus

def builtin_texts() -> list[str]:
    from qingbert.data import builtin

    texts = []
    for split in ("train", "dev", "test"):
        texts += ["".join(words) for words, _ in builtin.peoples_daily(split)]
        texts += [text for text, _ in builtin.reviews(split)]
    return [t for t in texts if t and "\n" not in t and "\r" not in t]


def write_corpus(path: Path, target_chars: int) -> dict:
    texts = builtin_texts()
    base = sum(len(t) for t in texts)
    chars = lines = repeats = 0
    with open(path, "w", encoding="utf-8") as fh:
        while chars < target_chars:
            repeats += 1
            for t in texts:
                fh.write(t + "\n")
                chars += len(t)
                lines += 1
                if chars >= target_chars:
                    break
    return {"path": str(path), "chars": chars, "lines": lines, "bytes": path.stat().st_size,
            "builtin_texts": len(texts), "builtin_chars": base, "repeats": repeats}


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()


# ---------------------------------------------------------------------------
# Methods, each run in its own subprocess (``--child METHOD``)

def _rss_mib() -> dict:
    own, kids = _common.peak_rss_mib()
    return {"peak_rss_self_mib": own, "peak_rss_children_mib": kids}


def run_prepare(corpus: str, out: str, tokenizer: str | None, workers: int) -> dict:
    from qingbert.data.prepare import prepare

    t = time.perf_counter()
    m = prepare([corpus], out, dedup=False, tokenizer=tokenizer, workers=workers,
                progress=False, overwrite=True, max_seq_len=512)
    wall = time.perf_counter() - t
    return {"chars": m["corpus"]["chars_kept"], "seconds": round(wall, 3),
            "manifest_elapsed_s": m["elapsed_s"], "manifest_chars_per_s": m["chars_per_s"],
            "timings": m["timings"], "workers": m["workers"], "corpus": m["corpus"],
            "splits": {s: {k: v[k] for k in ("texts", "sequences", "tokens", "unk_rate")}
                       for s, v in m["splits"].items()},
            "tokenizer": m["tokenizer"]}


def run_jieba(corpus: str) -> dict:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    t = time.perf_counter()
    jieba.initialize()
    setup = time.perf_counter() - t
    lines = read_lines(corpus)
    t = time.perf_counter()
    words = 0
    for line in lines:
        words += len(jieba.lcut(line))
    return {"chars": sum(map(len, lines)), "seconds": round(time.perf_counter() - t, 3),
            "words": words, "setup_s": round(setup, 3), "note": "dictionary load excluded"}


def run_jieba_parallel(corpus: str, procs: int) -> dict:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()  # load the dictionary before forking so the workers share it
    lines = read_lines(corpus)
    t = time.perf_counter()
    try:
        jieba.enable_parallel(procs)
    except Exception as e:  # noqa: BLE001 - e.g. NotImplementedError on Windows
        return {"skipped": f"jieba.enable_parallel({procs}) failed: {type(e).__name__}: {e}"}
    setup = time.perf_counter() - t
    # parallel mode only replaces jieba.cut (not lcut): it splits its input at line
    # breaks and maps the lines over a multiprocessing pool
    t = time.perf_counter()
    words = 0
    for i in range(0, len(lines), BLOCK_LINES):
        for w in jieba.cut("\n".join(lines[i:i + BLOCK_LINES])):
            if w != "\n":
                words += 1
    seconds = time.perf_counter() - t
    jieba.disable_parallel()
    return {"chars": sum(map(len, lines)), "seconds": round(seconds, 3), "words": words,
            "processes": procs, "setup_s": round(setup, 3),
            "note": "dictionary load and pool start excluded"}


def run_rjieba(corpus: str) -> dict:
    import rjieba

    lines = read_lines(corpus)
    rjieba.cut("预热")  # loads the dictionary
    t = time.perf_counter()
    words = 0
    for line in lines:
        words += len(rjieba.cut(line))
    return {"chars": sum(map(len, lines)), "seconds": round(time.perf_counter() - t, 3), "words": words}


def child(args) -> None:
    m = args.child
    if m == "prepare":
        res = run_prepare(args.corpus, args.out, args.tokenizer, 0)
    elif m == "prepare_vocab":
        res = run_prepare(args.corpus, args.out, None, 0)
    elif m == "jieba":
        res = run_jieba(args.corpus)
    elif m == "jieba_parallel":
        res = run_jieba_parallel(args.corpus, args.procs)
    elif m == "rjieba":
        res = run_rjieba(args.corpus)
    elif m == "tokenizer":
        from qingbert.data.prepare import prepare

        prepare(["builtin:peoples-daily", "builtin:reviews"], args.out, progress=False, overwrite=True)
        res = {"path": str(Path(args.out) / "tokenizer")}
    else:
        raise SystemExit(f"unknown method {m}")
    res.update(_rss_mib())
    print("RESULT " + json.dumps(res), flush=True)


def run_child(method: str, corpus: str, work: Path, tokenizer: str, procs: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--corpus", corpus,
           "--out", str(work / f"out-{method}"), "--tokenizer", tokenizer, "--procs", str(procs)]
    env = dict(os.environ)  # as a user runs it: tokenizers' own threading left at its default
    return _common.run_result_child(cmd, env, timeout)


# ---------------------------------------------------------------------------
# Report

def versions() -> dict:
    return _common.versions(("qingbert", "jieba", "rjieba", "tokenizers", "transformers", "pyarrow", "numpy"))


machine = _common.machine


def markdown(results: dict, corpus: dict, info: dict, goals: list) -> str:
    base = results.get("jieba", {}).get("chars_per_s")
    lines = [
        f"`qingbert prepare` throughput on {corpus['chars']:,} characters "
        f"({corpus['lines']:,} lines; built-in texts repeated), {info['machine']['cpu_count']} CPU cores, "
        f"Python {info['machine']['python']}, {info['date'][:10]}.",
        "",
        "| method | chars | seconds | chars/s | vs jieba |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        r = results.get(m)
        if r is None:
            continue
        label = r["label"]
        if "skipped" in r:
            lines.append(f"| {label} | – | – | – | skipped: {r['skipped']} |")
            continue
        ratio = f"{r['chars_per_s'] / base:.1f}×" if base else "–"
        lines.append(f"| {label} | {r['chars']:,} | {r['seconds']:.1f} | {r['chars_per_s']:,} | {ratio} |")
    p = results.get("prepare", {})
    if "timings" in p:
        t = p["timings"]
        lines += ["", "Where the time goes in `prepare` (given tokenizer): "
                  f"read+clean+dedup {t['read_clean_dedup_s']:.1f} s (main process), "
                  f"vocab {t['vocab_s']:.1f} s, segment+tokenize+pack {t['segment_tokenize_pack_s']:.1f} s "
                  f"({p['workers']} workers); peak RSS {p['peak_rss_self_mib']:.0f} MiB main, "
                  f"{p['peak_rss_children_mib']:.0f} MiB largest worker (counts pages shared with the main process)."]
    pv = results.get("prepare_vocab", {})
    if "timings" in pv:
        t = pv["timings"]
        lines += ["", "With vocab building: "
                  f"read+clean+dedup {t['read_clean_dedup_s']:.1f} s, vocab {t['vocab_s']:.1f} s, "
                  f"segment+tokenize+pack {t['segment_tokenize_pack_s']:.1f} s."]
    lines += ["", "Goals: " + "; ".join(f"{g['goal']}: **{g['status']}** ({g['measured']})" for g in goals) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=int, default=20_000_000, help="corpus size in characters (default 20 M)")
    ap.add_argument("--quick", action="store_true", help="smoke run on ~2 M characters")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary folder, removed after)")
    ap.add_argument("--results", default=str(RESULTS), help="where prepare.json / prepare.md go")
    ap.add_argument("--skip", default="", help="comma-separated methods to leave out: " + ",".join(METHODS))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per method")
    # internal: one method in a subprocess
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0

    target = 2_000_000 if args.quick else args.chars
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    procs = os.cpu_count() or 1
    info = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions()}
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="qingbert-bench-")
        work = Path(tmp)
    try:
        t = time.perf_counter()
        corpus = write_corpus(work / "corpus.txt", target)
        corpus["build_s"] = round(time.perf_counter() - t, 1)
        print(f"corpus: {corpus['chars']:,} chars, {corpus['lines']:,} lines "
              f"({corpus['builtin_chars']:,} built-in chars x {corpus['repeats']}) in {corpus['build_s']} s",
              flush=True)

        # tokenizer for the main run, built once outside the timing from the built-in corpus
        t = time.perf_counter()
        tok = run_child("tokenizer", corpus["path"], work, "", procs, args.timeout)
        if "skipped" in tok:
            raise SystemExit(f"could not build the tokenizer: {tok['skipped']}")
        tok_dir = tok["path"]
        print(f"tokenizer built in {time.perf_counter() - t:.1f} s (not timed): {tok_dir}", flush=True)

        results = {}
        for m in METHODS:
            label = LABELS[m].format(n=procs)
            if m in skip:
                results[m] = {"label": label, "skipped": "--skip"}
                continue
            print(f"running {m} ...", flush=True)
            r = run_child(m, corpus["path"], work, tok_dir, procs, args.timeout)
            r["label"] = label
            if "skipped" not in r:
                r["chars_per_s"] = round(r["chars"] / r["seconds"]) if r["seconds"] else None
                print(f"  {r['chars']:,} chars in {r['seconds']:.1f} s = {r['chars_per_s']:,} chars/s", flush=True)
                if "timings" in r:
                    print(f"  timings {r['timings']}", flush=True)
            else:
                print(f"  skipped: {r['skipped']}", flush=True)
            results[m] = r
            shutil.rmtree(work / f"out-{m}", ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    base = results.get("jieba", {}).get("chars_per_s")
    for r in results.values():
        if r.get("chars_per_s") and base:
            r["ratio_vs_jieba"] = round(r["chars_per_s"] / base, 2)
    p = results.get("prepare", {})
    goals = []
    speed = p.get("chars_per_s")
    goals.append({"goal": f"prepare >= {GOAL_CHARS_PER_S / 1e6:g} M chars/s end to end on {procs} cores",
                  "status": "n/a" if speed is None else "PASS" if speed >= GOAL_CHARS_PER_S else "MISS",
                  "measured": "not run" if speed is None else f"{speed / 1e6:.2f} M chars/s"})
    ratio = p.get("ratio_vs_jieba")
    goals.append({"goal": f"prepare >= {GOAL_RATIO:g}x jieba segmentation alone",
                  "status": "n/a" if ratio is None else "PASS" if ratio >= GOAL_RATIO else "MISS",
                  "measured": "not run" if ratio is None else f"{ratio:.1f}x"})

    report = {"benchmark": "qingbert prepare throughput", **info, "corpus": corpus,
              "goals": goals, "results": results}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(results, corpus, info, goals)
    (out / "prepare.md").write_text(md, encoding="utf-8")
    print()
    print(md)
    for g in goals:
        print(f"{g['status']}: {g['goal']} (measured {g['measured']})")
    print(f"wrote {out / 'prepare.json'} and {out / 'prepare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
