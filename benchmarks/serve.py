"""Issue #7's load test: `qingbert serve` with the MiniRBT-H256 student against sentence-transformers in-process.

Setup (untimed): a MiniRBT-H256-shape encoder (6 layers x 256, 8 heads, FFN 1024, random weights: speed does not
depend on them) with a real WordPiece vocabulary built from the built-in reviews, exported with
`qingbert.deploy.export` (ONNX fp32 + int8, parity-checked) for the server, and the same torch weights saved in the
sentence-transformers layout (Transformer + mean Pooling) for the competitor.  Inputs: 2,000 cleaned built-in
reviews of 10-60 characters, one sentence per request, cycled in a fixed order.

Phases, one at a time:

1. closed loop: `python -m qingbert serve EXPORTED` in its own process (default backend = the folder's fastest,
   `--threads` model threads), C concurrent clients (one keep-alive HTTP/1.1 connection each, a small asyncio
   client written here so the load generator costs as little CPU as possible) each sending single-sentence
   `POST /encode` requests back to back; after a warm-up, for a fixed time: requests/s (= sentences/s), latency
   p50/p90/p99/max, errors (non-200, a malformed answer, a connection error or a 10 s timeout), the mean
   micro-batch size from `/metrics`, and the CPU seconds of the server and of the load generator.
2. open loop: requests started on a fixed schedule (R requests/s, not waiting for earlier answers; latency is
   counted from the scheduled start, so a stalled server cannot hide its queue), a short warm-up at that rate, then
   a measured window: latency p50/p90/p99/max, errors, and the server's RSS (VmRSS of its process) every second;
   growth = (last sample - first sample of the window) / first sample.
3. sentence-transformers `SentenceTransformer(DIR, device="cpu")` in a fresh process with the same torch thread
   count: (a) `model.encode(sentence)` one sentence per call for a fixed time (what a request-per-sentence
   service does) and (b) `model.encode(all_sentences, batch_size=32)` (its best case) -> sentences/s.

Goals (PASS/MISS printed, never raises): closed-loop throughput >= 3x sentence-transformers' one-per-call
throughput (the issue's workload is single-sentence requests, so that is "its throughput"; the ratio to the
batched call is reported next to it as a reference); p99 <= 20 ms at 50 requests/s; RSS growth < 10 % over the
60 s window; 0 errors in every server phase.  Both sides use the whole machine: the load generator shares the
cores with the server (reported), ST runs alone.  About 3-4 minutes on 2 cores:

    python benchmarks/serve.py          # --quick (10 s phases); --clients 32 --duration 30 --rate 50
                                        # --open-duration 60 --threads 2 --max-batch 32 --max-wait-ms 0
                                        # --workers auto (= 2 x 1 thread, encode_batch 1 on 2 cores) --st-threads 2

Results: `benchmarks/results/serve.json` and `serve.md` (`serve_quick.*` with --quick; `--results NAME` for
another name).  `--workers auto` is the tuned deployment (`qingbert serve --workers auto`: one process per
core, one thread, no padding); the defaults are `qingbert serve`'s own (1 worker, all cores, encode_batch 8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import machine, run_result_child, versions  # noqa: E402

ZOO = "minirbt-h256"
VOCAB_SIZE = 8000
REQUEST_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------
# setup: sentences and model folders


def load_sentences(n: int, lo: int = 10, hi: int = 60) -> list[str]:
    """``n`` cleaned built-in reviews of ``lo``-``hi`` characters (train split first, then dev and test)."""
    from qingbert.data import builtin

    out: list[str] = []
    for split in ("train", "dev", "test"):
        out += [t for t, _ in builtin.reviews(split) if lo <= len(t) <= hi]
        if len(out) >= n:
            break
    return out[:n]


def build_models(work: Path) -> dict:
    """The H256 encoder folder (real tokenizer), its export (ONNX + int8) and its sentence-transformers copy;
    reused when already built.  Returns the folders and the shape."""
    import torch
    from transformers.utils import logging as tlog

    from qingbert.models import zoo
    from qingbert.embeddings.st_format import save_sentence_transformers
    from qingbert.deploy.export import export
    from qingbert.data.vocab import build_vocab
    from qingbert.models.loading import load_tokenizer
    from qingbert.models.tokenizer import save_tokenizer

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    model_dir, exported, st_dir = work / "h256", work / "h256-exported", work / "h256-st"
    t0 = time.perf_counter()
    if not (exported / "manifest.json").exists() or not (st_dir / "modules.json").exists():
        tok_dir = work / "tokenizer"
        if not (tok_dir / "vocab.txt").exists():
            build_vocab(["builtin:reviews"], tok_dir, size=VOCAB_SIZE)
        tok = load_tokenizer(str(tok_dir))
        torch.manual_seed(0)
        model = zoo.build_model(ZOO, vocab_size=len(tok), head="base")
        model.config.pad_token_id = tok.pad_token_id
        model.eval()
        model.save_pretrained(str(model_dir), safe_serialization=True)
        save_tokenizer(tok, model_dir)
        export(model_dir, exported, onnx=True, int8=True)
        save_sentence_transformers(st_dir, model, tok, pooling="mean", max_len=128)
    cfg = json.loads((model_dir / "config.json").read_text())
    manifest = json.loads((exported / "manifest.json").read_text())
    backends = {b: {k: r.get(k) for k in ("seq_per_s", "batch", "seq")} | {"parity": r.get("parity", {}).get("passed")}
                for b, r in (manifest.get("export") or {}).get("backends", {}).items()}
    return {"model_dir": str(model_dir), "exported": str(exported), "st_dir": str(st_dir),
            "setup_s": round(time.perf_counter() - t0, 1), "zoo": ZOO,
            "shape": {k: cfg.get(k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                               "intermediate_size", "vocab_size")},
            "export_backends": backends}


# ---------------------------------------------------------------------------
# the server process


def free_port() -> int:
    """A free loopback TCP port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: str, port: int, args) -> subprocess.Popen:
    """``python -m qingbert serve`` in its own process (its own GIL and cores' worth of threads)."""
    cmd = [sys.executable, "-m", "qingbert", "serve", folder, "--port", str(port), "--threads", str(args.threads),
           "--workers", str(args.workers),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--encode-batch", str(args.encode_batch), "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_health(base: str, proc: subprocess.Popen, timeout_s: float = 120.0, workers: int = 1) -> dict:
    """Poll ``GET /health`` (a new connection each time) until ``workers`` different server processes have
    answered -- clients that connect while only some workers listen would all stay on those; raises with the
    server's stderr tail if the process dies."""
    deadline = time.monotonic() + timeout_s
    pids: set = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join((proc.stderr.read() or "").strip().splitlines()[-5:])
            raise RuntimeError(f"the server exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                health = json.loads(r.read())
            pids.add(health.get("pid"))
            if len(pids) >= workers:
                return health
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"not all {workers} server processes answered /health within {timeout_s:.0f} s")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants (uvicorn's ``--workers`` processes are children of the first)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_mib(pid: int) -> float:
    """VmRSS of process ``pid`` and its descendants (every server process), in MiB."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants (all their threads) so far."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this (load generator) process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def batch_stats(base: str, workers: int = 1) -> dict:
    """Texts, requests and model time of the encode batcher from ``GET /metrics``, summed over the ``workers``
    server processes (each scrape reaches one of them; ``qingbert_process_info`` says which)."""
    per_pid: dict[str, dict] = {}
    for _ in range(20 * workers):
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        vals, pid = {}, None
        for line in text.splitlines():
            if line.startswith("qingbert_process_info{"):
                pid = line.split('pid="', 1)[1].split('"', 1)[0]
            for name in ("qingbert_batch_texts", "qingbert_batch_requests", "qingbert_batch_duration_seconds"):
                for suffix in ("_sum", "_count"):
                    if line.startswith(f'{name}{suffix}{{op="encode"}}'):
                        vals[name + suffix] = float(line.rsplit(" ", 1)[1])
        per_pid[pid] = vals
        if len(per_pid) >= workers:
            break
    total: dict = {}
    for vals in per_pid.values():
        for k, v in vals.items():
            total[k] = total.get(k, 0.0) + v
    return total


def batch_delta(before: dict, after: dict) -> dict:
    """Mean micro-batch size and model time per call between two :func:`batch_stats` readings."""
    calls = after.get("qingbert_batch_texts_count", 0) - before.get("qingbert_batch_texts_count", 0)
    if calls <= 0:
        return {"model_calls": 0}

    def mean(name):
        return (after.get(name + "_sum", 0) - before.get(name + "_sum", 0)) / calls

    return {"model_calls": int(calls), "mean_texts_per_call": round(mean("qingbert_batch_texts"), 2),
            "mean_model_ms_per_call": round(1000 * mean("qingbert_batch_duration_seconds"), 2),
            "model_s_total": round(after.get("qingbert_batch_duration_seconds_sum", 0)
                                   - before.get("qingbert_batch_duration_seconds_sum", 0), 2)}


# ---------------------------------------------------------------------------
# a minimal keep-alive HTTP/1.1 client (cheap on CPU, so the server gets the cores)


class Connection:
    """One keep-alive connection sending ``POST /encode`` requests one at a time."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects once if the kept-alive connection was closed."""
        for attempt in (0, 1):
            if self.writer is None:
                await self._open()
            try:
                self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n" % (path.encode(), self.host.encode(), self.port,
                                                                   len(body)) + body)
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
                continue
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = dict(ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
            data = await self.reader.readexactly(int(headers["content-length"]))
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, data
        raise ConnectionError("unreachable")


def request_body(i: int, text: str) -> bytes:
    """bert-as-service JSON for one sentence."""
    return json.dumps({"id": i, "texts": [text], "is_tokenized": False}, ensure_ascii=False).encode("utf-8")


def answer_ok(status: int, data: bytes, i: int, dim: int) -> bool:
    """A 200 whose JSON carries our id and exactly one ``dim``-long vector."""
    if status != 200:
        return False
    try:
        out = json.loads(data)
        return out.get("id") == i and out.get("status") == 200 and len(out["results"]) == 1 \
            and len(out["results"][0]) == dim
    except (ValueError, KeyError, TypeError):
        return False


async def one_request(conn: Connection, i: int, text: str, dim: int) -> tuple[bool, str | None]:
    """Send request ``i``; (ok, error description or None)."""
    try:
        status, data = await asyncio.wait_for(conn.post("/encode", request_body(i, text)), REQUEST_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, KeyError) as e:
        conn.close()
        return False, type(e).__name__
    if answer_ok(status, data, i, dim):
        return True, None
    return False, f"HTTP {status}" if status != 200 else "malformed answer"


def latency_summary(lat_s: list[float]) -> dict:
    """p50/p90/p99/max and mean in milliseconds."""
    import numpy as np

    if not lat_s:
        return {}
    a = np.asarray(lat_s) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2),
            "mean_ms": round(float(a.mean()), 2)}


def count_errors(kinds: list[str]) -> dict:
    """Error kinds -> counts."""
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return out


# ---------------------------------------------------------------------------
# load phases


async def closed_loop(port: int, sentences: list[str], clients: int, warmup_s: float, duration_s: float,
                      dim: int) -> dict:
    """``clients`` connections sending requests back to back; stats over requests started after the warm-up and
    finished inside the window."""
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t_warm, t_end = t_start + warmup_s, t_start + warmup_s + duration_s
    counter = iter(range(10**9))
    lat: list[float] = []
    errors: list[str] = []
    done = [0]

    async def client() -> None:
        conn = Connection("127.0.0.1", port)
        while loop.time() < t_end:
            i = next(counter)
            t0 = loop.time()
            ok, err = await one_request(conn, i, sentences[i % len(sentences)], dim)
            t1 = loop.time()
            if t0 >= t_warm and t1 <= t_end:
                if ok:
                    lat.append(t1 - t0)
                    done[0] += 1
                else:
                    errors.append(err)
            elif not ok and t0 >= t_warm:
                errors.append(err)
        conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"clients": clients, "warmup_s": warmup_s, "duration_s": duration_s, "requests_ok": done[0],
            "requests_per_s": round(done[0] / duration_s, 1), **latency_summary(lat),
            "errors": len(errors), "error_kinds": count_errors(errors)}


async def open_loop(port: int, sentences: list[str], rate: float, warmup_s: float, duration_s: float, dim: int,
                    pid: int) -> dict:
    """Requests started every ``1/rate`` s whatever the answers; latency from the scheduled start; the server's
    RSS sampled every second of the measured window."""
    loop = asyncio.get_running_loop()
    idle: list[Connection] = []
    opened = [0]
    lat: list[float] = []
    errors: list[str] = []
    rss: list[tuple[float, float]] = []
    t0 = loop.time() + 0.05
    t_warm = t0 + warmup_s
    n_total = int(round((warmup_s + duration_s) * rate))

    async def fire(i: int, t_sched: float) -> None:
        if idle:
            conn = idle.pop()
        else:
            conn = Connection("127.0.0.1", port)
            opened[0] += 1
        ok, err = await one_request(conn, i, sentences[i % len(sentences)], dim)
        t_done = loop.time()
        idle.append(conn)
        if t_sched >= t_warm:
            if ok:
                lat.append(t_done - t_sched)
            else:
                errors.append(err)

    async def sample_rss() -> None:
        await asyncio.sleep(max(0.0, t_warm - loop.time()))
        k = 0
        while True:
            rss.append((round(loop.time() - t_warm, 2), round(rss_mib(pid), 1)))
            k += 1
            if k > duration_s:
                return
            await asyncio.sleep(max(0.0, t_warm + k - loop.time()))

    sampler = loop.create_task(sample_rss())
    tasks = []
    for i in range(n_total):
        t_sched = t0 + i / rate
        delay = t_sched - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(fire(i, t_sched)))
    await asyncio.gather(*tasks)
    await sampler
    for c in idle:
        c.close()
    measured = n_total - int(round(warmup_s * rate))
    first, last = rss[0][1], rss[-1][1]
    return {"rate_per_s": rate, "warmup_s": warmup_s, "duration_s": duration_s, "requests": measured,
            "requests_ok": len(lat), **latency_summary(lat), "errors": len(errors),
            "error_kinds": count_errors(errors), "connections_opened": opened[0],
            "rss_first_mib": first, "rss_last_mib": last, "rss_max_mib": max(v for _, v in rss),
            "rss_growth_pct": round(100 * (last - first) / first, 2), "rss_samples": rss}


def run_server_phases(exported: str, sentences: list[str], args) -> dict:
    """Start the server, run the closed-loop then the open-loop phase, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    proc = start_server(exported, port, args)
    try:
        health = wait_health(base, proc, workers=args.workers)
        out = {"health": {k: health.get(k) for k in ("backend", "dim", "pooling", "kind", "version")},
               "startup_s": round(time.perf_counter() - t, 1), "rss_after_start_mib": round(rss_mib(proc.pid), 1),
               "server": {"workers": args.workers, "threads": args.threads, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                          "encode_batch": args.encode_batch}}
        dim = int(health["dim"])
        print(f"server up ({health.get('backend')}, dim {dim}) in {out['startup_s']} s; closed loop ...", flush=True)
        m0, c0, g0 = batch_stats(base, args.workers), cpu_seconds(proc.pid), own_cpu_seconds()
        closed = asyncio.run(closed_loop(port, sentences, args.clients, args.warmup, args.duration, dim))
        m1, c1, g1 = batch_stats(base, args.workers), cpu_seconds(proc.pid), own_cpu_seconds()
        window = args.warmup + args.duration
        closed["batching"] = batch_delta(m0, m1)
        closed["cpu"] = {"server_cores": round((c1 - c0) / window, 2), "load_generator_cores": round((g1 - g0) / window, 2),
                         "note": "CPU seconds per wall second over warm-up + window"}
        out["closed_loop"] = closed
        out["rss_after_closed_mib"] = round(rss_mib(proc.pid), 1)
        print(f"  {closed['requests_per_s']} req/s, p99 {closed.get('p99_ms')} ms, {closed['errors']} errors; "
              f"open loop at {args.rate}/s ...", flush=True)
        c0, g0 = cpu_seconds(proc.pid), own_cpu_seconds()
        opened = asyncio.run(open_loop(port, sentences, args.rate, args.open_warmup, args.open_duration, dim,
                                       proc.pid))
        m2 = batch_stats(base, args.workers)
        opened["batching"] = batch_delta(m1, m2)
        window = args.open_warmup + args.open_duration
        opened["cpu"] = {"server_cores": round((cpu_seconds(proc.pid) - c0) / window, 2),
                         "load_generator_cores": round((own_cpu_seconds() - g0) / window, 2)}
        out["open_loop"] = opened
        print(f"  p99 {opened.get('p99_ms')} ms, RSS {opened['rss_first_mib']} -> {opened['rss_last_mib']} MiB, "
              f"{opened['errors']} errors", flush=True)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------
# sentence-transformers in-process (run as a child: python serve.py --st-child ...)


def st_child(st_dir: str, sentences_file: str, threads: int, seconds: float) -> None:
    """Time SentenceTransformer.encode one sentence per call (for ``seconds``) and batched; prints RESULT."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    sentences = json.loads(Path(sentences_file).read_text())
    model = SentenceTransformer(st_dir, device="cpu")
    dim = model.encode(sentences[:4], batch_size=32).shape[1]
    for s in sentences[:50]:  # warm-up
        model.encode(s)
    n, lat = 0, []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        model.encode(sentences[n % len(sentences)])
        lat.append(time.perf_counter() - t)
        n += 1
    single_s = time.perf_counter() - t0
    model.encode(sentences[:256], batch_size=32)  # warm-up
    t = time.perf_counter()
    vecs = model.encode(sentences, batch_size=32)
    batched_s = time.perf_counter() - t
    res = {"threads": torch.get_num_threads(), "dim": int(dim), "pooling": str(getattr(model[1], "pooling_mode", None) or model[1].get_config_dict().get("pooling_mode")),
           "max_seq_length": model.max_seq_length,
           "one_per_call": {"sentences": n, "seconds": round(single_s, 2), "sentences_per_s": round(n / single_s, 1),
                            **latency_summary(lat)},
           "batched": {"sentences": len(vecs), "batch_size": 32, "seconds": round(batched_s, 2),
                       "sentences_per_s": round(len(vecs) / batched_s, 1)}}
    print("RESULT " + json.dumps(res))


def run_st(st_dir: str, sentences: list[str], work: Path, args) -> dict:
    """The sentence-transformers child, in a fresh process."""
    f = work / "sentences.json"
    f.write_text(json.dumps(sentences, ensure_ascii=False))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--st-child", st_dir, str(f), str(args.st_threads),
           str(args.st_seconds)]
    return run_result_child(cmd, dict(os.environ), timeout=600)


# ---------------------------------------------------------------------------
# report


def goals(res: dict) -> list[str]:
    """The issue's goal lines, PASS/MISS."""
    srv, st = res["serve"], res["sentence_transformers"]
    rps = srv["closed_loop"]["requests_per_s"]
    single = (st.get("one_per_call") or {}).get("sentences_per_s")
    batched = (st.get("batched") or {}).get("sentences_per_s")
    out = []
    if single:
        r = rps / single
        out.append(f"qingbert serve {rps:.0f} req/s vs sentence-transformers encode one sentence per call "
                   f"{single:.0f}/s: {r:.1f}x (goal >= 3x): {'PASS' if r >= 3 else 'MISS'}")
    else:
        out.append(f"throughput goal: MISS (sentence-transformers {st.get('skipped', 'did not run')})")
    if batched:
        r = rps / batched
        out.append(f"(reference, not the goal) vs sentence-transformers batched encode (batch 32) {batched:.0f}/s: "
                   f"{r:.1f}x ({'>=' if r >= 3 else '<'} 3x)")
    op = srv["open_loop"]
    p99 = op.get("p99_ms", float("inf"))
    out.append(f"p99 at {op['rate_per_s']:g} requests/s: {p99:.1f} ms (goal <= 20 ms): {'PASS' if p99 <= 20 else 'MISS'}")
    g = op["rss_growth_pct"]
    out.append(f"server RSS growth over {op['duration_s']:g} s at {op['rate_per_s']:g}/s: {g:+.1f} % "
               f"({op['rss_first_mib']:.0f} -> {op['rss_last_mib']:.0f} MiB; goal < 10 %): {'PASS' if g < 10 else 'MISS'}")
    errs = srv["closed_loop"]["errors"] + op["errors"]
    out.append(f"errors: {errs} (closed loop {srv['closed_loop']['errors']}, open loop {op['errors']}; goal 0): "
               f"{'PASS' if errs == 0 else 'MISS'}")
    return out


def markdown(res: dict) -> str:
    """The table for BENCHMARKS.md plus the goal lines."""
    srv, st = res["serve"], res["sentence_transformers"]
    cl, op = srv["closed_loop"], srv["open_loop"]
    shape = res["model"]["shape"]
    lines = [f"Load test: MiniRBT-H256 shape ({shape['num_hidden_layers']} x {shape['hidden_size']}, "
             f"{shape['num_attention_heads']} heads, FFN {shape['intermediate_size']}, vocab {shape['vocab_size']}), "
             f"{res['sentences']['count']} built-in reviews of {res['sentences']['min_chars']}-"
             f"{res['sentences']['max_chars']} characters (mean {res['sentences']['mean_chars']}), one per request, "
             f"mean pooling; {res['machine'].get('cpu_count')} CPUs ({res['machine'].get('cpu_model', '?')}), load "
             f"{res['machine'].get('load_avg_at_start')} at start; server backend `{srv['health']['backend']}`, "
             f"{srv['server'].get('workers', 1)} worker(s) x {srv['server']['threads']} model threads, max_batch {srv['server']['max_batch']}, max_wait_ms "
             f"{srv['server']['max_wait_ms']:g}, encode_batch {srv['server'].get('encode_batch', 8)}; sentence-transformers {res['versions'].get('sentence-transformers')} "
             f"torch fp32, torch threads {st.get('threads', '?')}.", "",
             "| method | sentences/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| qingbert serve, {cl['clients']} clients closed loop ({cl['duration_s']:g} s) | {cl['requests_per_s']:.0f} "
             f"| {cl.get('p50_ms', '-')} | {cl.get('p90_ms', '-')} | {cl.get('p99_ms', '-')} | {cl.get('max_ms', '-')} "
             f"| {cl['errors']} |",
             f"| qingbert serve, open loop {op['rate_per_s']:g}/s ({op['duration_s']:g} s) | {op['rate_per_s']:g} (offered) "
             f"| {op.get('p50_ms', '-')} | {op.get('p90_ms', '-')} | {op.get('p99_ms', '-')} | {op.get('max_ms', '-')} "
             f"| {op['errors']} |"]
    if "one_per_call" in st:
        s1, sb = st["one_per_call"], st["batched"]
        lines += [f"| sentence-transformers `encode(sentence)`, one per call | {s1['sentences_per_s']:.0f} | "
                  f"{s1.get('p50_ms')} | {s1.get('p90_ms')} | {s1.get('p99_ms')} | {s1.get('max_ms')} | - |",
                  f"| sentence-transformers `encode(all, batch_size=32)` | {sb['sentences_per_s']:.0f} | - | - | - | - | - |"]
    else:
        lines.append(f"| sentence-transformers | skipped: {st.get('skipped')} | | | | | |")
    b = cl.get("batching", {})
    lines += ["", f"Closed loop: {b.get('mean_texts_per_call', '-')} texts per model call on average, "
                  f"{b.get('mean_model_ms_per_call', '-')} ms model time per call; CPU: server "
                  f"{cl['cpu']['server_cores']} cores, load generator {cl['cpu']['load_generator_cores']} cores "
                  f"(both on the same machine). Open loop: server RSS {op['rss_first_mib']:.0f} -> "
                  f"{op['rss_last_mib']:.0f} MiB (max {op['rss_max_mib']:.0f}), "
                  f"{op['batching'].get('mean_texts_per_call', '-')} texts per model call.", ""]
    lines += [f"- {g}" for g in res["goals"]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 s phases (a smoke run)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients in the closed loop (default 32)")
    ap.add_argument("--duration", type=float, default=None, help="closed-loop window, s (default 30; quick 10)")
    ap.add_argument("--warmup", type=float, default=None, help="closed-loop warm-up, s (default 5; quick 2)")
    ap.add_argument("--rate", type=float, default=50.0, help="open-loop requests/s (default 50)")
    ap.add_argument("--open-duration", type=float, default=None, help="open-loop window, s (default 60; quick 10)")
    ap.add_argument("--open-warmup", type=float, default=None, help="open-loop warm-up, s (default 5; quick 2)")
    ap.add_argument("--st-seconds", type=float, default=None,
                    help="sentence-transformers one-per-call timing, s (default 20; quick 5)")
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0, help="model threads per server worker (default: all CPUs)")
    ap.add_argument("--st-threads", type=int, default=0, help="sentence-transformers' torch threads (default: all CPUs)")
    ap.add_argument("--workers", default="1", help="server processes (qingbert serve --workers N or auto)")
    ap.add_argument("--results", default=None, help="results name (default serve, serve_quick with --quick)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=None, help="default: qingbert serve's own (ServeConfig)")
    ap.add_argument("--encode-batch", type=int, default=None, help="default: qingbert serve's own (ServeConfig)")
    ap.add_argument("--st-child", nargs=4, metavar=("ST_DIR", "SENTENCES", "THREADS", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from qingbert.serve.workers import resolve_workers

    # `auto`: what `qingbert serve --workers auto` picks (one process per core, 1 thread, encode_batch 1)
    args.workers, args.threads, args.encode_batch = resolve_workers(args.workers, args.threads, args.encode_batch)
    if args.max_wait_ms is None:
        from qingbert.serve.config import ServeConfig

        args.max_wait_ms = ServeConfig().max_wait_ms
    q = args.quick
    for name, full, quick in (("duration", 30, 10), ("warmup", 5, 2), ("open_duration", 60, 10),
                              ("open_warmup", 5, 2), ("st_seconds", 20, 5)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.threads = args.threads or max(1, cpus // args.workers)
    args.st_threads = args.st_threads or cpus
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.st_child:
        st_dir, f, threads, seconds = args.st_child
        st_child(st_dir, f, int(threads), float(seconds))
        return
    t0 = time.perf_counter()
    info = machine()
    load1 = (info.get("load_avg_at_start") or [0.0])[0]
    if load1 > 0.5:
        print(f"WARNING: load average {load1} at start: other processes share the CPUs, the numbers will be low "
              "(with --threads = all CPUs, busy cores can slow torch / ONNX Runtime many times over)", flush=True)
    work = ROOT / "benchmarks" / "work" / "serve"
    work.mkdir(parents=True, exist_ok=True)
    sentences = load_sentences(args.sentences)
    print(f"{len(sentences)} sentences; building / reusing the H256 folders in {work} ...", flush=True)
    model = build_models(work)
    serve_res = run_server_phases(model["exported"], sentences, args)
    print("sentence-transformers in-process ...", flush=True)
    st = run_st(model["st_dir"], sentences, work, args)
    lens = [len(s) for s in sentences]
    res = {"benchmark": "serve", "quick": args.quick, "model": model,
           "sentences": {"count": len(sentences), "source": "builtin:reviews (cleaned, 10-60 chars)",
                         "min_chars": min(lens), "max_chars": max(lens), "mean_chars": round(sum(lens) / len(lens), 1)},
           "serve": serve_res, "sentence_transformers": st,
           "args": {k: v for k, v in vars(args).items() if k != "st_child"}}
    rps = serve_res["closed_loop"]["requests_per_s"]
    res["ratios"] = {k: round(rps / st[k]["sentences_per_s"], 2) for k in ("one_per_call", "batched") if k in st}
    res["goal_uses"] = ("one_per_call: the load is single-sentence requests, so the in-process equivalent is one "
                        "encode call per sentence; the batched ratio is a reference")
    res["machine"] = info
    res["versions"] = versions(["qingbert", "torch", "transformers", "sentence-transformers", "onnxruntime", "fastapi",
                                "uvicorn", "numpy"])
    res["goals"] = goals(res)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    name = args.results or ("serve_quick" if args.quick else "serve")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    md = markdown(res)
    (results / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
