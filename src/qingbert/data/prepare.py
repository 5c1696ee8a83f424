"""``qingbert prepare``: sources -> clean/dedup -> segment -> tokenize + WWM references -> packed Arrow shards.

Two passes over the data, both streaming with bounded memory:

1. read every source, clean, deduplicate, cut long lines, filter by length, and
   write the surviving texts to a work file; each text is assigned to ``train``
   or ``eval`` by a hash of its line, so the split is deterministic and leak-free;
2. (build a vocabulary from the train texts unless ``tokenizer`` is given, then)
   segment, tokenize and pack the work file in chunks on a pool of worker
   processes, writing ``train-00000.arrow``... and ``eval-00000.arrow`` shards in
   input order (the output does not depend on the number of workers).

The output folder holds the shards (HF ``datasets`` Arrow files, columns
``input_ids`` and ``word_ids``), the tokenizer in ``tokenizer/``, and
``manifest.json``.  :func:`load_prepared` opens it as a ``datasets.Dataset``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qingbert.data import corpus
from qingbert.data.segment import get_segmenter, span_counts
from qingbert.data.text import Stats, summarize
from qingbert.data.vocab import train_vocab
from qingbert.data.wwm import WordTokenizer, pack
from qingbert.errors import QingbertError
from qingbert.manifest import PREPARED_FORMAT, read_manifest, replace_folder, write_manifest
from qingbert.models.tokenizer import copy_tokenizer, make_tokenizer, save_tokenizer

SPLITS = ("train", "eval")
SEP_WORDS = "\x1f"  # between gold words in the work file; cleaning removes control characters from text
FORMAT = PREPARED_FORMAT


@dataclass
class PrepareConfig:
    segmenter: str = "rjieba"
    tokenizer: str | None = None  # folder or hub id; None = build a vocab from the corpus
    vocab_size: int = 8000
    max_seq_len: int = 512
    pack: bool = True  # several lines per sequence ([CLS] a [SEP] b [SEP] ...)
    fill: bool = True  # cut a text at a word start to fill each sequence to max_seq_len
    dedup: bool = True
    min_chars: int = 2
    max_chars: int | None = None  # cut longer lines at sentence ends; default max_seq_len - 2
    eval_fraction: float = 0.01
    text_field: str = "text"
    workers: int = 0  # 0 = one per CPU core
    chunk_chars: int = 1 << 20
    shard_rows: int = 100_000
    overwrite: bool = False
    progress: bool = True
    sources: list = field(default_factory=list)


# ---------------------------------------------------------------------------
# Worker side: segment, tokenize, pack one chunk

_W: dict = {}


def _init_worker(tokenizer_json: str, segmenter: str, max_seq_len: int, pack: bool, fill: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    _W.update(
        tok=WordTokenizer(backend),
        seg=get_segmenter(segmenter),
        gold=segmenter == "gold",
        max_seq_len=max_seq_len,
        pack=pack,
        fill=fill,
        cls=backend.token_to_id("[CLS]"),
        sep=backend.token_to_id("[SEP]"),
        unk=backend.token_to_id("[UNK]"),
    )


def _process_chunk(chunk: tuple[str, list[str]]) -> dict:
    """One chunk of work-file lines of one split -> packed arrays + counts."""
    split, lines = chunk
    f1 = [0] * 6
    if _W["gold"]:
        # gold words where the source has them; plain-text lines are taken as space-segmented
        rows = [line.split(SEP_WORDS) if SEP_WORDS in line else line.split() for line in lines]
    else:
        rows = _W["seg"]([line.replace(SEP_WORDS, "") for line in lines])
        for line, words in zip(lines, rows):
            if SEP_WORDS in line:  # the source carries a gold segmentation: score ours against it
                f1 = [a + b for a, b in zip(f1, span_counts(words, line.split(SEP_WORDS)))]
    before = _W["tok"].specials_dropped
    ids, starts, lengths = _W["tok"].encode_lines(rows)
    packed = pack(ids, starts, lengths, _W["max_seq_len"], _W["cls"], _W["sep"], concat=_W["pack"], fill=_W["fill"])
    return {
        "split": split, "f1": f1, "chars": sum(map(len, lines)) - sum(line.count(SEP_WORDS) for line in lines),
        "ids": packed.ids, "word_ids": packed.word_ids, "offsets": packed.offsets,
        "hard_cuts": packed.hard_cuts, "empty_lines": int((lengths == 0).sum()),
        "unk": int((ids == _W["unk"]).sum()), "tokens": int(len(ids)),
        "specials_dropped": _W["tok"].specials_dropped - before,
    }


# ---------------------------------------------------------------------------
# Shard writing

class ShardWriter:
    """Write packed sequences to ``{split}-00000.arrow``... (Arrow IPC stream, as ``datasets`` stores them)."""

    def __init__(self, folder: Path, split: str, rows_per_shard: int):
        import pyarrow as pa

        self.pa = pa
        self.folder, self.split, self.rows_per_shard = folder, split, rows_per_shard
        self.schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("word_ids", pa.list_(pa.int32()))])
        self.shard = -1
        self.rows_in_shard = 0
        self.writer = None
        self.files: list[str] = []
        self.rows = 0
        self.tokens = 0

    def _open(self) -> None:
        self.close()
        self.shard += 1
        self.path = self.folder / f"{self.split}-{self.shard:05d}.arrow"
        self.tmp = self.path.with_name("." + self.path.name + ".tmp")
        self.sink = self.pa.OSFile(str(self.tmp), "wb")
        self.writer = self.pa.ipc.new_stream(self.sink, self.schema)
        self.rows_in_shard = 0

    def write(self, ids: np.ndarray, word_ids: np.ndarray, offsets: np.ndarray) -> None:
        pa = self.pa
        n = len(offsets) - 1
        start = 0
        while start < n:
            if self.writer is None or self.rows_in_shard >= self.rows_per_shard:
                self._open()
            take = min(n - start, self.rows_per_shard - self.rows_in_shard)
            off = offsets[start:start + take + 1]
            a, b = int(off[0]), int(off[-1])
            rel = (off - a).astype(np.int32)
            batch = pa.record_batch([
                pa.ListArray.from_arrays(pa.array(rel), pa.array(ids[a:b])),
                pa.ListArray.from_arrays(pa.array(rel), pa.array(word_ids[a:b])),
            ], schema=self.schema)
            self.writer.write_batch(batch)
            self.rows_in_shard += take
            self.rows += take
            self.tokens += b - a
            start += take

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.sink.close()
            os.replace(self.tmp, self.path)
            self.files.append(self.path.name)
            self.writer = None


# ---------------------------------------------------------------------------
# Driver

def _progress(total: int | None, desc: str, enabled: bool, unit: str = "char"):
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal, so logs and CI output stay clean
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=None if enabled else True, leave=False)


def _chunks(work_files: dict, chunk_chars: int):
    """``(split, lines)`` chunks of about ``chunk_chars`` characters, train first, in file order."""
    for split in SPLITS:
        buf, n = [], 0
        with open(work_files[split], encoding="utf-8") as fh:
            for line in fh:
                buf.append(line[:-1])
                n += len(line)
                if n >= chunk_chars:
                    yield split, buf
                    buf, n = [], 0
        if buf:
            yield split, buf


def prepare(sources: list[str], out: str | Path, config: PrepareConfig | None = None, **overrides) -> dict:
    """Turn text sources into WWM-ready packed shards in ``out``; returns the manifest."""
    cfg = config or PrepareConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown prepare option {k!r}")
        setattr(cfg, k, v)
    cfg.sources = list(sources)
    if not sources:
        raise QingbertError("no sources given")
    max_chars = cfg.max_chars or cfg.max_seq_len - 2
    get_segmenter(cfg.segmenter)  # fail early on a bad name or a missing package
    t0 = time.time()
    stats = Stats()
    files = corpus.expand_sources(sources, stats)  # fail early on a missing file
    out = Path(out)
    local = {f"source {f}": f for f in files if not f.startswith("builtin:")}
    # written beside ``out`` and swapped in when complete: never half a corpus, never a source inside it
    with replace_folder(out, cfg.overwrite, what="a prepared corpus", fmt=FORMAT, inputs=local) as stage:
        return _run(files, stage, cfg, stats, max_chars, t0)


def _run(files: list[str], out: Path, cfg: PrepareConfig, stats, max_chars: int, t0: float) -> dict:
    sources = cfg.sources
    work = out / ".work"
    work.mkdir()
    timings = {}

    # pass 1: read, clean, dedup, split long lines, filter, assign train/eval
    cut = int(round(cfg.eval_fraction * 10000))
    n_split = {"train": 0, "eval": 0}
    work_files = {s: work / f"{s}.txt" for s in SPLITS}  # one text per line; gold words joined by SEP_WORDS
    with open(work_files["train"], "w", encoding="utf-8") as f_train, \
            open(work_files["eval"], "w", encoding="utf-8") as f_eval, \
            _progress(None, "clean", cfg.progress, "line") as bar:
        records = corpus.read_sources(files, stats, cfg.text_field)
        for text, words, h in corpus.clean_records(records, stats, dedup=cfg.dedup,
                                                   min_chars=cfg.min_chars, max_chars=max_chars):
            is_eval = int.from_bytes(h, "big") % 10000 < cut
            n_split["eval" if is_eval else "train"] += 1
            (f_eval if is_eval else f_train).write((SEP_WORDS.join(words) if words else text) + "\n")
            bar.update(1)
    timings["read_clean_dedup_s"] = round(time.time() - t0, 3)
    if stats.records_kept == 0:
        raise QingbertError("no text left in " + ", ".join(sources), hint=stats.summary())

    # tokenizer: given, or built from the train texts
    t1 = time.time()
    tok_dir = out / "tokenizer"
    if cfg.tokenizer:
        backend = copy_tokenizer(cfg.tokenizer, tok_dir)
        tokenizer_info = {"source": cfg.tokenizer, "built": False}
    else:
        # the BERT normalizer drops the SEP_WORDS control character, so the work file trains as is
        vocab = train_vocab([], cfg.vocab_size, files=[str(work_files["train"])])
        tokenizer = make_tokenizer(vocab, model_max_length=cfg.max_seq_len)
        save_tokenizer(tokenizer, tok_dir)
        backend = tokenizer.backend_tokenizer
        tokenizer_info = {"source": "built from the corpus (train split)", "built": True,
                          "requested_size": cfg.vocab_size}
    tokenizer_info.update(vocab_size=backend.get_vocab_size(), path="tokenizer")
    timings["vocab_s"] = round(time.time() - t1, 3)

    # pass 2: segment + tokenize + pack on worker processes, write shards in order
    t2 = time.time()
    workers = cfg.workers or os.cpu_count() or 1
    writers = {s: ShardWriter(out, s, cfg.shard_rows) for s in SPLITS}
    agg = {"f1": [0] * 6, "hard_cuts": 0, "specials_dropped": 0, "empty_lines": 0, "unk": {"train": 0, "eval": 0},
           "line_tokens": {"train": 0, "eval": 0}, "chars": 0}
    init = (backend.to_str(), cfg.segmenter, cfg.max_seq_len, cfg.pack, cfg.fill)

    def consume(res: dict) -> None:
        agg["chars"] += res["chars"]
        agg["specials_dropped"] += res["specials_dropped"]
        agg["f1"] = [a + b for a, b in zip(agg["f1"], res["f1"])]
        split = res["split"]
        writers[split].write(res["ids"], res["word_ids"], res["offsets"])
        agg["hard_cuts"] += res["hard_cuts"]
        agg["empty_lines"] += res["empty_lines"]
        agg["unk"][split] += res["unk"]
        agg["line_tokens"][split] += res["tokens"]
        bar.update(res["chars"])

    with _progress(stats.chars_kept, "segment+tokenize", cfg.progress) as bar:
        if workers == 1:
            _init_worker(*init)
            for chunk in _chunks(work_files, cfg.chunk_chars):
                consume(_process_chunk(chunk))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
                pending: deque = deque()
                for chunk in _chunks(work_files, cfg.chunk_chars):
                    pending.append(pool.submit(_process_chunk, chunk))
                    if len(pending) >= 2 * workers:  # bounded memory: at most 2 chunks per worker in flight
                        consume(pending.popleft().result())
                while pending:
                    consume(pending.popleft().result())
    for w in writers.values():
        w.close()
    timings["segment_tokenize_pack_s"] = round(time.time() - t2, 3)
    shutil.rmtree(work)

    elapsed = time.time() - t0
    c, p, g, bc, bp, bg = agg["f1"]
    seg_eval = None
    if g:
        seg_eval = {"word_precision": round(c / p if p else 0.0, 5), "word_recall": round(c / g, 5),
                    "word_f1": round(2 * c / (p + g), 5), "gold_words": g,
                    "boundary_f1": round(2 * bc / (bp + bg), 5) if bp + bg else None,
                    "note": "segmenter output vs the gold segmentation the source carries: "
                            "word F1 over word spans, boundary F1 over word-end positions"}
    if agg["empty_lines"]:
        stats.dropped["no_tokens"] += agg["empty_lines"]
    manifest = {
        "format": FORMAT,
        "stage": "prepare",
        "sources": list(sources),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("sources", "overwrite", "progress")},
        "max_chars": max_chars,
        "corpus": stats.to_dict(),
        "segmenter": cfg.segmenter,
        "segmentation_vs_gold": seg_eval,
        "tokenizer": tokenizer_info,
        "splits": {
            s: {"texts": n_split[s], "sequences": w.rows, "tokens": w.tokens, "files": w.files,
                "unk_rate": round(agg["unk"][s] / agg["line_tokens"][s], 6) if agg["line_tokens"][s] else 0.0}
            for s, w in writers.items()
        },
        "words_cut_at_sequence_end": agg["hard_cuts"],
        "special_token_strings_removed": agg["specials_dropped"],
        "columns": {"input_ids": "token ids: [CLS] text [SEP] text [SEP] ...",
                    "word_ids": "whole-word-masking reference: tokens with the same id form one word; "
                                "-1 = special token"},
        "workers": workers,
        "timings": timings,
        "elapsed_s": round(elapsed, 3),
        "chars_per_s": round(stats.chars_kept / elapsed) if elapsed else None,
    }
    write_manifest(out, manifest)
    return manifest


def load_prepared(folder: str | Path, split: str = "train"):
    """Open a prepared folder's split as a ``datasets.Dataset`` (memory-mapped Arrow)."""
    from datasets import Dataset, concatenate_datasets

    folder = Path(folder)
    m = read_manifest(folder)
    if m is None or m.get("format") != FORMAT:
        raise QingbertError(f"{folder}: not a prepared corpus (no qingbert manifest)",
                            hint="make one with `qingbert prepare SOURCE --out DIR`")
    files = m["splits"].get(split, {}).get("files", [])
    if not files:
        raise QingbertError(f"{folder}: split '{split}' has no data")
    parts = []
    for f in files:
        path = folder / f
        if not path.exists():
            raise QingbertError(f"{path}: shard listed in the manifest is missing")
        try:
            parts.append(Dataset.from_file(str(path)))
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a cut or overwritten file vary
            raise QingbertError(f"{path}: truncated or corrupt shard ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})",
                                hint="run `qingbert prepare` again") from None
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def prepare_summary(m: dict) -> str:
    lines = [summarize(m["corpus"])]
    sp = m["splits"]
    lines.append(
        f"segmenter {m['segmenter']}, tokenizer: {m['tokenizer']['source']} ({m['tokenizer']['vocab_size']:,} tokens)")
    if m.get("segmentation_vs_gold"):
        s = m["segmentation_vs_gold"]
        lines.append(f"segmentation vs gold: word F1 {100 * s['word_f1']:.2f} "
                     f"(P {100 * s['word_precision']:.2f}, R {100 * s['word_recall']:.2f}), "
                     f"boundary F1 {100 * (s['boundary_f1'] or 0):.2f}")
    for s in ("train", "eval"):
        lines.append(f"{s}: {sp[s]['texts']:,} texts -> {sp[s]['sequences']:,} sequences, "
                     f"{sp[s]['tokens']:,} tokens, UNK {100 * sp[s]['unk_rate']:.3f}%")
    lines.append(f"{m['elapsed_s']:.1f} s, {m['chars_per_s']:,} chars/s on {m['workers']} workers")
    return "\n".join(lines)
