"""``qingbert serve MODEL``: an HTTP JSON API (FastAPI + uvicorn) for any model folder, with micro-batching.

Endpoints (all JSON; errors are ``{"error": {"message", "type", "param"}, "status": code}`` with a 4xx code):

* ``POST /encode``: bert-as-service's HTTP format. ``{"id": ANY, "texts": [str, ...], "is_tokenized": false}`` ->
  ``{"id": ANY, "results": [[float, ...], ...], "status": 200}``: pooled last-layer vectors, not normalised
  (like bert-as-service).  With ``"is_tokenized": true`` each text is a list of tokens; they are joined back into
  a text (WordPiece ``##`` pieces glued to the token before, others separated by a space) and tokenised again, so
  the model tokenizer's own tokens of the cleaned text (``qingbert.corpus.clean_text``, which every model input
  goes through) give exactly the vectors of the untokenised text; the character limit counts the tokens'
  characters.
* ``POST /v1/embeddings``: OpenAI's format. ``{"input": str | [str], "model": ..., "encoding_format":
  "float" | "base64"}`` -> ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}],
  "model": NAME, "usage": {"prompt_tokens": n, "total_tokens": n}}``: unit-length vectors; ``base64`` is the
  little-endian float32 bytes (the official client asks for it); ``prompt_tokens`` counts tokens with [CLS]/[SEP],
  after truncation to the model's max length.  One model per server: ``model`` is accepted and not checked.
* ``POST /classify``: ``{"texts": [...]}`` -> ``{"results": [Model.predict(text), ...], "model", "kind"}`` for
  fine-tuned models: ``{"label", "score"}`` (classification, pairs as ``"a ||| b"`` or ``[a, b]``), ``{"text",
  "entities"}`` (NER), ``{"answer", "start", "score"}`` (MRC, items ``{"question", "context"}``).  409 for an
  encoder without a task head.
* ``POST /search``: ``{"query": str, "top_k": 5}`` -> ``{"query", "results": [{"id", "text", "score"}], "model"}``
  against the index given with ``--index`` (409 when there is none).
* ``GET /health``: model, kind, backend, dim, index size, uptime (never needs the API key).
* ``GET /metrics``: Prometheus text format: requests by route and status, request latency, texts encoded, batch
  sizes (texts and requests per model call), model seconds per batch, queue depth, uptime.

Limits (:class:`ServeConfig`): texts per request (``max_texts`` 256: 413), characters per text (``max_chars``
4096: 413; longer texts would be truncated to the model's max length anyway), body bytes (``max_body_bytes``
1 MiB: 413, by Content-Length and by the bytes actually received), texts waiting for the model (``max_queue``
4096: 503), seconds a request waits for its result (``request_timeout_s`` 60: 503).  Malformed JSON, a non-UTF-8
body or a missing body are 400; a non-JSON Content-Type 415; wrong or missing fields 422 naming the field (empty
lists and empty texts included); unknown routes 404, wrong methods 405; a missing or wrong API key 401
(``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; ``/health``, ``/docs`` and ``/openapi.json`` stay open).

Micro-batching: requests put their texts on an asyncio queue; one batching task per operation (encode, predict)
takes up to ``max_batch`` texts, waiting at most ``max_wait_ms`` after the first for others to join, and runs them
as one model call in the server's single model thread (both operations share it, so the backend never runs in two
threads at once); the event loop never waits on the model.  A request larger than ``max_batch`` is one call of its
own.  When a merged call fails, its requests are retried one by one, so a bad request fails alone.

With ``--workers N > 1`` uvicorn starts N processes, each with its own model, batcher and metrics, from the factory
``qingbert.serve:app_from_env`` (the configuration travels in the ``QINGBERT_SERVE`` environment variable).  A
``/metrics`` scrape then answers for the one process it reaches: every series of it is that process's, and
``qingbert_process_info{pid="..."}`` (also ``pid`` in ``/health``) says which, so a collector keeps the processes
apart and sums them.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, and the request
# models are local to create_app (so pydantic is only imported when an app is made).
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

from qingbert.data.text import split_pair
from qingbert.errors import QingbertError

log = logging.getLogger("qingbert.serve")

ENV_CONFIG = "QINGBERT_SERVE"
ENV_API_KEY = "QINGBERT_API_KEY"
ROUTES = ("/encode", "/v1/embeddings", "/classify", "/search", "/health", "/metrics")
OPEN_ROUTES = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")


# ---------------------------------------------------------------------------
# configuration


@dataclass
class ServeConfig:
    """Limits and batching of a server (the defaults are those of ``qingbert serve``)."""

    max_texts: int = 256  # texts in one request
    max_chars: int = 4096  # characters in one text (texts are cut to the model's max length in tokens anyway)
    max_body_bytes: int = 1 << 20  # request body, by Content-Length and by the bytes received
    max_batch: int = 32  # texts merged into one micro-batch
    # texts per model forward inside a micro-batch; the encoder sorts a micro-batch by length first, so smaller
    # runs mean less padding (benchmarks/serve.py picks it; 1 = no padding at all)
    encode_batch: int = 8
    # how long the first request of a batch waits for others. 0 (default): no waiting -- a batch is whatever queued
    # while the model was busy, so an idle server answers at once and a loaded one still batches (measured in
    # benchmarks/serve.py: 5 ms of waiting raised p99 at 50 requests/s from 15 to 21 ms and did not raise throughput)
    max_wait_ms: float = 0.0
    max_queue: int = 4096  # texts waiting for the model before requests get 503
    request_timeout_s: float = 60.0  # how long a request waits for its result before a 503
    max_top_k: int = 100  # largest top_k of /search
    api_key: str | None = None  # required on every route but /health and the docs when set
    backend: str | None = None  # torch, onnx, onnx-int8 (default: the fastest in the folder)
    threads: int = 0  # torch / ONNX Runtime threads (0: the library's default)
    spin: bool = False  # ONNX Runtime threads busy-wait between runs (off: idle cores stay free for the clients)
    pooling: str | None = None  # mean, cls, max or mean-max (default: the index's, else mean)
    nprobe: int | None = None  # IVF lists visited per /search query (default: qingbert.index's)

    def check(self) -> "ServeConfig":
        """Raise a clear error for values that cannot work; returns ``self``."""
        for name in ("max_texts", "max_chars", "max_body_bytes", "max_batch", "encode_batch", "max_queue",
                     "max_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise QingbertError(f"serve: {name} must be a positive integer, got {value!r}")
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            raise QingbertError(f"serve: max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if not self.request_timeout_s > 0:
            raise QingbertError(f"serve: request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        from qingbert.deploy.index import POOLINGS

        if self.pooling not in (None, *POOLINGS):
            raise QingbertError(f"serve: unknown pooling '{self.pooling}'", hint=", ".join(POOLINGS))
        if self.api_key is not None and not self.api_key:
            raise QingbertError("serve: the API key is empty")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "ServeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise QingbertError(f"serve: unknown option(s) {', '.join(unknown)}", hint="known: " + ", ".join(known))
        return cls(**d)


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param"}, "status"}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param},
                             "status": self.status}, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------
# metrics (Prometheus text exposition format; updated on the event loop only)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """A Prometheus histogram: cumulative buckets, sum and count."""

    def __init__(self, buckets: tuple):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.sum += value
        self.count += 1
        self.max = max(self.max, value)

    def lines(self, name: str, labels: dict) -> list[str]:
        out = [f"{name}_bucket{_labels({**labels, 'le': _num(b)})} {c}" for b, c in zip(self.buckets, self.counts)]
        out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.count}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


class Metrics:
    """What ``GET /metrics`` reports."""

    def __init__(self):
        self.requests: Counter = Counter()  # (route, status) -> n
        self.latency: dict[str, Histogram] = {}
        self.texts: Counter = Counter()  # op -> texts run through the model
        self.truncated = 0  # encoded texts cut at the model's max_len
        self.batch_texts: dict[str, Histogram] = {}
        self.batch_requests: dict[str, Histogram] = {}
        self.batch_seconds: dict[str, Histogram] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, op: str, texts: int, requests: int, seconds: float) -> None:
        self.texts[op] += texts
        self.batch_texts.setdefault(op, Histogram(SIZE_BUCKETS)).observe(texts)
        self.batch_requests.setdefault(op, Histogram(SIZE_BUCKETS)).observe(requests)
        self.batch_seconds.setdefault(op, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self, gauges: dict[str, tuple[str, dict]]) -> str:
        """The exposition text; ``gauges``: name -> (help, {label tuple or (): value})."""
        out: list[str] = []

        def family(name, kind, help_, lines):
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *lines])

        family("qingbert_requests_total", "counter", "HTTP requests by route and status code.",
               [f"{'qingbert_requests_total'}{_labels({'route': r, 'status': s})} {n}"
                for (r, s), n in sorted(self.requests.items())])
        family("qingbert_request_duration_seconds", "histogram", "HTTP request latency by route.",
               [ln for r, h in sorted(self.latency.items())
                for ln in h.lines("qingbert_request_duration_seconds", {"route": r})])
        family("qingbert_texts_total", "counter", "Texts run through the model, by operation.",
               [f"qingbert_texts_total{_labels({'op': op})} {n}" for op, n in sorted(self.texts.items())])
        family("qingbert_texts_truncated_total", "counter", "Encoded texts longer than max_len tokens, cut to it.",
               [f"qingbert_texts_truncated_total {self.truncated}"])
        for name, what, hists in (("qingbert_batch_texts", "Texts per model call (micro-batch size).",
                                   self.batch_texts),
                                  ("qingbert_batch_requests", "Requests merged into one model call.",
                                   self.batch_requests),
                                  ("qingbert_batch_duration_seconds", "Model seconds per micro-batch.",
                                   self.batch_seconds)):
            family(name, "histogram", what, [ln for op, h in sorted(hists.items()) for ln in h.lines(name, {"op": op})])
        family("qingbert_batch_requests_max", "gauge", "Most requests merged into one model call so far.",
               [f"qingbert_batch_requests_max{_labels({'op': op})} {_num(h.max)}"
                for op, h in sorted(self.batch_requests.items())])
        for name, (help_, values) in gauges.items():
            family(name, "gauge", help_, [f"{name}{_labels(dict(lab))} {_num(v)}" for lab, v in values.items()])
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# micro-batching


@dataclass
class _Job:
    items: list
    future: asyncio.Future


class Batcher:
    """Merges concurrent requests into model calls of up to ``max_batch`` items.

    ``fn(items) -> results`` (one result per item, in order) runs in ``executor`` (a single thread shared by all
    batchers of a model); one asyncio task collects jobs from a queue and resolves each job's future."""

    def __init__(self, op: str, fn: Callable[[list], list], executor: ThreadPoolExecutor, metrics: Metrics,
                 max_batch: int, max_wait_ms: float, max_queue: int):
        self.op, self.fn, self.executor, self.metrics = op, fn, executor, metrics
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.pending = 0  # texts submitted and not yet handed to the model
        self._carry: _Job | None = None

    def start(self) -> None:
        """Start the batching task (on the running event loop)."""
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"qingbert-batcher-{self.op}")

    async def stop(self) -> None:
        """Cancel the batching task; waiting requests get a 503."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        jobs = [self._carry] if self._carry else []
        while self.queue is not None and not self.queue.empty():
            jobs.append(self.queue.get_nowait())
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down", "unavailable"))

    async def submit(self, items: list, timeout_s: float) -> list:
        """Results of ``items`` once a model call has run them; 503 when the queue is full or it takes too long."""
        if self.queue is None:
            raise ApiError(503, "the server is not started", "unavailable")
        if self.pending + len(items) > self.max_queue:
            raise ApiError(503, f"server busy: {self.pending} texts are waiting for the model (max_queue = "
                                f"{self.max_queue}); retry later", "overloaded", headers={"Retry-After": "1"})
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self.pending += len(items)
        self.queue.put_nowait(job)
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        except TimeoutError:
            raise ApiError(503, f"no result within request_timeout_s = {timeout_s:g} s; the server is overloaded",
                           "timeout") from None
        finally:
            if not job.future.done():  # the client went away: make sure the batcher skips it
                job.future.cancel()

    async def _collect(self) -> list[_Job]:
        """The next batch: the first waiting job, then others until ``max_batch`` items or ``max_wait_ms``."""
        job = self._carry or await self.queue.get()
        self._carry = None
        jobs, n = [job], len(job.items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while n < self.max_batch:
            if self.queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                nxt = self.queue.get_nowait()
            if n + len(nxt.items) > self.max_batch:
                self._carry = nxt  # first in the next batch
                break
            jobs.append(nxt)
            n += len(nxt.items)
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            self.pending -= sum(len(j.items) for j in jobs)
            jobs = [j for j in jobs if not j.future.done()]
            if jobs:
                await self._run(jobs)

    async def _call(self, items: list) -> tuple[list, float]:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        results = await loop.run_in_executor(self.executor, self.fn, items)
        return results, time.perf_counter() - t0

    async def _run(self, jobs: list[_Job]) -> None:
        items = [x for j in jobs for x in j.items]
        try:
            results, seconds = await self._call(items)
        except Exception as e:  # noqa: BLE001 - handed to the requests
            if len(jobs) > 1:  # find the bad request: the others still get their answers
                for job in jobs:
                    await self._run([job])
                return
            _resolve(jobs[0].future, exc=e)
            return
        self.metrics.batch(self.op, len(items), len(jobs), seconds)
        lo = 0
        for job in jobs:
            _resolve(job.future, result=results[lo:lo + len(job.items)])
            lo += len(job.items)


def _resolve(future: asyncio.Future, result=None, exc: Exception | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------
# request checks


def _json_type(v) -> str:
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _check_list(items, field: str, cfg: ServeConfig) -> list:
    if not isinstance(items, list):
        raise ApiError(422, f"'{field}' must be an array, got {_json_type(items)}", param=field)
    if not items:
        raise ApiError(422, f"'{field}' is empty: send at least one text", param=field)
    if len(items) > cfg.max_texts:
        raise ApiError(413, f"too many texts in '{field}': {len(items)} (the limit is max_texts = {cfg.max_texts} "
                            "per request)", "limit_exceeded", field)
    return items


def _check_text(t, field: str, cfg: ServeConfig) -> str:
    if not isinstance(t, str):
        raise ApiError(422, f"'{field}' must be a string, got {_json_type(t)}", param=field)
    if not t.strip():
        raise ApiError(422, f"'{field}' is an empty text", param=field)
    if len(t) > cfg.max_chars:
        raise ApiError(413, f"'{field}' has {len(t)} characters (the limit is max_chars = {cfg.max_chars})",
                       "limit_exceeded", field)
    return t


def check_texts(items, field: str, cfg: ServeConfig) -> list[str]:
    """``items`` as a list of non-empty texts within the limits, else an :class:`ApiError` naming the field."""
    return [_check_text(t, f"{field}[{i}]", cfg) for i, t in enumerate(_check_list(items, field, cfg))]


def detokenize(tokens: list[str]) -> str:
    """Tokens back into a text: ``##`` pieces glued to the token before, the others separated by a space (the
    BERT pre-tokenizer splits Chinese characters and punctuation again, so the tokens come back the same)."""
    out = ""
    for t in tokens:
        out = out + t[2:] if t.startswith("##") and out else (f"{out} {t}" if out else t)
    return out


def check_tokenized(items, field: str, cfg: ServeConfig) -> list[str]:
    """``is_tokenized`` input: a list of token lists -> texts."""
    texts = []
    for i, toks in enumerate(_check_list(items, field, cfg)):
        where = f"{field}[{i}]"
        if not isinstance(toks, list):
            raise ApiError(422, f"'{where}' must be an array of tokens (is_tokenized is true), got {_json_type(toks)}",
                           param=where)
        if not toks:
            raise ApiError(422, f"'{where}' is an empty token list", param=where)
        for j, tok in enumerate(toks):
            if not isinstance(tok, str) or not tok.strip():
                raise ApiError(422, f"'{where}[{j}]' must be a non-empty token string, got {_json_type(tok)}",
                               param=f"{where}[{j}]")
        chars = sum(len(tok) for tok in toks)
        if chars > cfg.max_chars:
            raise ApiError(413, f"'{where}' has {chars} characters in its tokens (the limit is max_chars = "
                                f"{cfg.max_chars})", "limit_exceeded", where)
        texts.append(detokenize(toks))
    return texts


def check_predict_inputs(items, kind: str, cfg: ServeConfig) -> list:
    """Inputs of ``/classify`` for a model of ``kind``, in the forms :meth:`qingbert.inference.Model.predict`
    takes."""
    out = []
    for i, x in enumerate(_check_list(items, "texts", cfg)):
        where = f"texts[{i}]"
        if kind == "mrc":
            if isinstance(x, list) and len(x) == 2:
                x = {"question": x[0], "context": x[1]}
            if not isinstance(x, dict) or set(x) < {"question", "context"}:
                raise ApiError(422, f"'{where}': an MRC model takes {{\"question\": ..., \"context\": ...}} objects "
                                    "or [question, context] pairs", param=where)
            out.append({"question": _check_text(x["question"], f"{where}.question", cfg),
                        "context": _check_text(x["context"], f"{where}.context", cfg)})
        elif kind == "pair":
            pair = split_pair(x) if isinstance(x, str) else None
            if pair is not None:
                x = list(pair)
            if not isinstance(x, list) or len(x) != 2:
                raise ApiError(422, f"'{where}': a sentence-pair model takes [text_a, text_b] pairs or "
                                    "'text_a ||| text_b' strings", param=where)
            out.append((_check_text(x[0], f"{where}[0]", cfg), _check_text(x[1], f"{where}[1]", cfg)))
        else:
            out.append(_check_text(x, where, cfg))
    return out


def _param(loc) -> str:
    """A pydantic error location (without ``body``) as ``texts[2].question``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(errors: list[dict]) -> ApiError:
    """Our error for FastAPI's :class:`RequestValidationError` list: the first problem, naming its field."""
    if not errors:
        return ApiError(422, "invalid request")
    e = errors[0]
    loc = tuple(e.get("loc") or ())
    where = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    kind = e.get("type", "")
    if kind == "json_invalid":
        pos = where[0] if where else "?"
        return ApiError(400, f"malformed JSON body: {(e.get('ctx') or {}).get('error', 'decode error')} at "
                             f"position {pos}", "invalid_json")
    if not where:
        if kind == "missing":
            return ApiError(400, "the request body is empty: send a JSON object", "invalid_json")
        return ApiError(422, f"the request body must be a JSON object, got {_json_type(e.get('input'))}",
                        param="body")
    param = _param(where)
    if kind == "missing":
        return ApiError(422, f"field '{param}' is required", param=param)
    if kind == "extra_forbidden":
        return ApiError(422, f"unknown field '{param}'", param=param)
    got = f", got {_json_type(e.get('input'))}" if kind.endswith("_type") else ""
    return ApiError(422, f"field '{param}': {e.get('msg', 'invalid value')}{got}", param=param)


# ---------------------------------------------------------------------------
# the ASGI guard: API key, body size, UTF-8, content type, request metrics


class Guard:
    """Pure ASGI middleware in front of the routes: checks the API key, reads the body within
    ``max_body_bytes`` (Content-Length first, then the bytes received), refuses non-UTF-8 and non-JSON bodies, and
    counts every request by route and status."""

    def __init__(self, app, state: "ServerState"):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            error = self._auth(scope)
            if error is None and scope["method"] in ("POST", "PUT", "PATCH"):
                error, body = await self._read_body(scope, receive)
                if body is None and error is None:
                    status = 499  # the client went away before sending its body
                    return
                if error is None:
                    receive = _replay(body, receive)
            if error is not None:
                await error.response()(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            self.state.metrics.request(route, status, time.perf_counter() - t0)

    def _auth(self, scope) -> ApiError | None:
        key = self.state.config.api_key
        if not key or scope["path"] in OPEN_ROUTES:
            return None
        headers = _headers(scope)
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None:
            return ApiError(401, "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                            "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
            return ApiError(401, "wrong API key", "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _read_body(self, scope, receive) -> tuple[ApiError | None, bytes | None]:
        limit = self.state.config.max_body_bytes
        headers = _headers(scope)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        declared = headers.get("content-length")
        if declared is not None:
            try:
                declared = int(declared)
            except ValueError:
                return ApiError(400, f"invalid Content-Length header '{declared[:40]}'", "invalid_request"), b""
            if declared > limit:
                return self._too_large(f"Content-Length is {declared} bytes"), b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return self._too_large(f"more than {limit} bytes were sent"), b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and ctype and ctype != "application/json" and not ctype.endswith("+json"):
            return ApiError(415, f"Content-Type must be application/json, got '{ctype}'", "unsupported_media_type"), b""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return ApiError(400, f"the request body is not UTF-8 ({e.reason} at byte {e.start})", "invalid_encoding"), b""
        return None, body

    def _too_large(self, what: str) -> ApiError:
        limit = self.state.config.max_body_bytes
        return ApiError(413, f"request body too large: {what}; the limit is max_body_bytes = {limit}",
                        "limit_exceeded", "body")


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _replay(body: bytes, receive):
    """A ``receive`` that gives the already-read body once, then passes on to the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ---------------------------------------------------------------------------
# the server state: model, index, batchers


class ServerState:
    """The model, the optional index, the batchers and the metrics of one app."""

    def __init__(self, model_dir: str | Path, index_dir: str | Path | None, config: ServeConfig, model=None):
        from qingbert.deploy.index import load_index
        from qingbert.deploy.inference import load

        self.config = config.check()
        self.model_dir = Path(model_dir)
        self.model = model if model is not None else load(self.model_dir, backend=config.backend,
                                                          threads=config.threads, spin=config.spin)
        self.name = self.model_dir.name
        self.index = None
        pooling = config.pooling
        if index_dir is not None:
            self.index = load_index(index_dir, encoder=self.model, nprobe=config.nprobe)
            if pooling and pooling != self.index.pooling:
                raise QingbertError(f"serve: pooling '{pooling}' differs from the index's '{self.index.pooling}'",
                                    hint="leave --pooling out to use the index's")
            pooling = self.index.pooling
        self.pooling = pooling or "mean"
        self.metrics = Metrics()
        self.dim = int(self._encode(["测试"])[0][0].shape[0])  # also warms the model up
        if self.index is not None and self.index.dim != self.dim:
            raise QingbertError(f"serve: the index {index_dir} holds {self.index.dim}-dimensional vectors but the "
                                f"model gives {self.dim}", hint="serve the model the index was built with")
        if self.index is not None and Path(self.index.manifest.get("model", "")) != self.model_dir.resolve():
            log.warning("index %s was built with %s, not %s", index_dir, self.index.manifest.get("model"),
                        self.model_dir)
        self.started = time.monotonic()
        self.executor: ThreadPoolExecutor | None = None
        self.encoder: Batcher | None = None
        self.predictor: Batcher | None = None

    # -- work run in the model thread ------------------------------------------
    def _encode(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """``(vector, tokens)`` per text: raw pooled vectors (normalised where a route needs it)."""
        from qingbert.deploy.index import embed

        # the texts of a micro-batch arrive in any order; the encoder sorts them by length and runs sub-batches of
        # encode_batch, so short texts are not padded to the longest one of the whole micro-batch
        import warnings

        from qingbert.embed import TruncationWarning

        with warnings.catch_warnings():  # counted in /metrics (qingbert_texts_truncated_total), not logged per batch
            warnings.simplefilter("ignore", TruncationWarning)
            vecs = embed(self.model, texts, batch_size=min(self.config.encode_batch, self.config.max_batch),
                         pooling=self.pooling, normalize=False)
        enc = self.model.sentence_encoder(self.pooling)
        self.metrics.truncated += enc.last_truncated
        return list(zip(vecs, enc.last_lengths))  # token counts of that very call

    def _predict(self, items: list) -> list:
        return list(self.model.predict(items, batch_size=self.config.max_batch))

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the model thread and the batching tasks (inside the event loop)."""
        cfg = self.config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qingbert-model")
        args = (self.executor, self.metrics, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue)
        self.encoder = Batcher("encode", self._encode, *args)
        self.predictor = Batcher("predict", self._predict, *args)
        self.encoder.start()
        self.predictor.start()
        self.started = time.monotonic()

    async def stop(self) -> None:
        for b in (self.encoder, self.predictor):
            if b is not None:
                await b.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- operations ----------------------------------------------------------------
    async def run(self, batcher: Batcher, items: list) -> list:
        try:
            return await batcher.submit(items, self.config.request_timeout_s)
        except ApiError:
            raise
        except QingbertError as e:
            raise ApiError(422, e.message, "invalid_input") from None

    def health(self) -> dict:
        index = None
        if self.index is not None:
            m = self.index.manifest
            index = {"size": len(self.index), "dim": self.index.dim, "factory": m.get("factory"),
                     "model": m.get("model"), "folder": str(self.index.folder)}
        from qingbert import __version__

        return {"status": "ok", "model": self.name, "model_dir": str(self.model_dir), "kind": self.model.kind,
                "backend": self.model.backend, "dim": self.dim, "pooling": self.pooling,
                "labels": list(self.model.labels or []) if self.model.kind != "encoder" else [], "index": index,
                "index_size": len(self.index) if self.index is not None else 0,
                "uptime_s": round(time.monotonic() - self.started, 3), "pid": os.getpid(), "version": __version__}

    def metrics_text(self) -> str:
        gauges = {
            "qingbert_queue_texts": ("Texts waiting for the model, by operation.",
                                     {(("op", b.op),): b.pending for b in (self.encoder, self.predictor) if b}),
            "qingbert_index_size": ("Vectors in the loaded index (0: none).",
                                    {(): len(self.index) if self.index is not None else 0}),
            "qingbert_uptime_seconds": ("Seconds since the server started.",
                                        {(): round(time.monotonic() - self.started, 3)}),
            "qingbert_process_info": ("The server process these metrics are of (one per --workers process).",
                                      {(("pid", str(os.getpid())),): 1}),
        }
        return self.metrics.render(gauges)


# ---------------------------------------------------------------------------
# the app


def create_app(model_dir: str | Path, index_dir: str | Path | None = None, config: ServeConfig | None = None,
               model=None):
    """The FastAPI app serving ``model_dir`` (and the index in ``index_dir``); the model loads now, so a bad folder
    fails here, not at the first request.  ``model``: an already loaded :class:`qingbert.inference.Model`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    state = ServerState(model_dir, index_dir, config or ServeConfig(), model=model)
    cfg = state.config

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="qingbert", summary=f"qingbert serving {state.name} ({state.model.kind})",
                  lifespan=lifespan, strict_content_type=False)
    app.state.qingbert = state
    app.add_middleware(Guard, state=state)

    # -- errors -------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; routes: " + ", ".join(ROUTES)
            return ApiError(404, msg, "not_found").response()
        if exc.status_code == 405:
            return ApiError(405, f"method {request.method} is not allowed on {request.url.path}",
                            "method_not_allowed", headers=exc.headers).response()
        return ApiError(exc.status_code, str(exc.detail), "http_error", headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("error serving %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {type(exc).__name__}", "internal_error").response()

    # -- request bodies --------------------------------------------------------------
    class EncodeRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        id: Any = None
        texts: list[Any]
        is_tokenized: bool = Field(False, strict=True)

    class EmbeddingsRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        input: Any = Field(...)
        model: str | None = None
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: int | None = Field(None, strict=True)
        user: str | None = None

    class ClassifyRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        texts: list[Any]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        query: str = Field(..., strict=True)
        top_k: int = Field(5, strict=True)

    # -- routes -------------------------------------------------------------------------
    @app.post("/encode")
    async def encode(req: EncodeRequest):
        """bert-as-service's HTTP API: raw pooled vectors."""
        if not req.is_tokenized:
            for i, t in enumerate(req.texts[:cfg.max_texts]):
                if isinstance(t, list):
                    raise ApiError(422, f"'texts[{i}]' is a token list: set is_tokenized to true, or send strings",
                                   param=f"texts[{i}]")
        texts = check_tokenized(req.texts, "texts", cfg) if req.is_tokenized else check_texts(req.texts, "texts", cfg)
        out = await state.run(state.encoder, texts)
        return {"id": req.id, "results": [v.tolist() for v, _ in out], "status": 200}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingsRequest):
        """OpenAI's embeddings API: unit-length vectors."""
        if isinstance(req.input, list) and req.input and all(isinstance(x, int) and not isinstance(x, bool)
                                                             or isinstance(x, list) for x in req.input):
            raise ApiError(422, "'input' holds token ids; this server takes texts (a string or an array of strings)",
                           param="input")
        texts = [_check_text(req.input, "input", cfg)] if isinstance(req.input, str) else \
            check_texts(req.input, "input", cfg)
        if req.dimensions is not None and req.dimensions != state.dim:
            raise ApiError(422, f"'dimensions' is {req.dimensions} but this model's vectors have {state.dim}; "
                                "leave it out", param="dimensions")
        out = await state.run(state.encoder, texts)
        data, tokens = [], 0
        for i, (v, n) in enumerate(out):
            v = (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") \
                if req.encoding_format == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
            tokens += n
        return {"object": "list", "data": data, "model": state.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/classify")
    async def classify(req: ClassifyRequest):
        """Predictions of a fine-tuned model (classification, pairs, NER, MRC)."""
        if state.model.kind == "encoder":
            raise ApiError(409, f"model '{state.name}' is an encoder without a task head: /classify needs a "
                                "fine-tuned model (qingbert finetune); use /encode or /v1/embeddings for vectors",
                           "no_task_head")
        items = check_predict_inputs(req.texts, state.model.kind, cfg)
        results = await state.run(state.predictor, items)
        return {"results": results, "model": state.name, "kind": state.model.kind}

    @app.post("/search")
    async def search(req: SearchRequest):
        """The corpus texts nearest to ``query`` in the loaded index."""
        if state.index is None:
            raise ApiError(409, "no index is loaded: start the server with --index DIR (built by `qingbert index "
                                "build`)", "no_index")
        query = _check_text(req.query, "query", cfg)
        if not 1 <= req.top_k <= cfg.max_top_k:
            raise ApiError(422, f"'top_k' must be between 1 and {cfg.max_top_k}, got {req.top_k}", param="top_k")
        [(vec, _)] = await state.run(state.encoder, [query])
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(None, state.index.search_vectors, vec[None, :], req.top_k)
        return {"query": query, "results": hits[0], "model": state.name}

    @app.get("/health")
    async def health():
        """Model, backend, index size and uptime."""
        return state.health()

    @app.get("/metrics")
    async def metrics():
        """Prometheus text exposition format."""
        return PlainTextResponse(state.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env():
    """uvicorn factory (``qingbert.serve:app_from_env``) for ``--workers > 1``: the app from ``$QINGBERT_SERVE``."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise QingbertError(f"${ENV_CONFIG} is not set", hint="start the server with `qingbert serve`")
    spec = json.loads(raw)
    config = ServeConfig.from_dict(spec.get("config") or {})
    if config.api_key is None and os.environ.get(ENV_API_KEY):
        config.api_key = os.environ[ENV_API_KEY]
    return create_app(spec["model_dir"], spec.get("index_dir"), config)


# ---------------------------------------------------------------------------
# running it


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          index_dir: str | Path | None = None, config: ServeConfig | None = None, log_level: str = "info") -> None:
    """Serve ``model_dir`` with uvicorn until interrupted (one process per worker, each with its own model)."""
    import uvicorn

    config = (config or ServeConfig()).check()
    if workers < 1:
        raise QingbertError(f"serve: workers must be at least 1, got {workers}")
    if workers == 1:
        app = create_app(model_dir, index_dir, config)
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
        return
    if not config.threads:  # N processes share the cores
        config.threads = max(1, _cores() // workers)
    _check_in_child(model_dir, index_dir, config)  # fail now, once, on a bad folder or index
    spec = {"model_dir": str(Path(model_dir).resolve()),
            "index_dir": str(Path(index_dir).resolve()) if index_dir else None,
            "config": {k: v for k, v in asdict(config).items() if k != "api_key"}}
    os.environ[ENV_CONFIG] = json.dumps(spec)
    if config.api_key:
        os.environ[ENV_API_KEY] = config.api_key
    if hasattr(socket, "SO_REUSEPORT"):
        _supervise(workers, host, port, log_level)
        return
    from uvicorn.supervisors import Multiprocess  # no SO_REUSEPORT (Windows): one shared listening socket

    ucfg = uvicorn.Config("qingbert.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                          log_level=log_level, timeout_graceful_shutdown=5)
    try:
        Multiprocess(ucfg, sockets=[_listen_socket(host, port)]).run()
    except KeyboardInterrupt:
        pass


def _check_app(conn, model_dir, index_dir, config) -> None:
    try:
        create_app(model_dir, index_dir, config)
        conn.send(None)
    except QingbertError as e:
        conn.send(str(e))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it as a clear error
        conn.send(f"{type(e).__name__}: {e}")


def _check_in_child(model_dir, index_dir, config: ServeConfig) -> None:
    """Build the app once in a throw-away process: a bad folder or index fails before any worker starts, and the
    supervisor does not keep a model of its own in memory (each worker loads one)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_check_app, args=(child, str(model_dir), index_dir and str(index_dir), config))
    p.start()
    child.close()
    try:
        error = parent.recv()
    except EOFError:
        error = "the process checking the model folder died"
    p.join()
    if error is not None:
        raise QingbertError(error if error.startswith("serve") else f"serve: {error}")


def _worker(host: str, port: int, log_level: str) -> None:
    """One ``--workers`` process: its own SO_REUSEPORT listener on the shared port, the app from the environment."""
    import uvicorn

    sock = _listen_socket(host, port, reuse_port=True)
    cfg = uvicorn.Config("qingbert.serve:app_from_env", factory=True, log_level=log_level,
                         timeout_graceful_shutdown=5)
    uvicorn.Server(cfg).run(sockets=[sock])


MAX_RESTARTS = 5  # workers that die within RESTART_WINDOW_S of each other before the server gives up
RESTART_WINDOW_S = 60.0


def _supervise(workers: int, host: str, port: int, log_level: str) -> None:
    """Run ``workers`` processes, each listening on ``host:port`` with SO_REUSEPORT, until SIGINT / SIGTERM.

    Each process has its own listening socket, so the kernel spreads new connections evenly over them.  With
    one shared socket (uvicorn's ``--workers``), whichever idle process wakes first accepts: a burst of clients
    can land mostly on one worker and leave the other idle (measured: 179 vs 256 requests/s between two runs of
    the same load test).  A worker that dies is replaced; more than MAX_RESTARTS deaths within a minute stop the
    server."""
    import multiprocessing
    import signal

    probe = _listen_socket(host, port, reuse_port=True)  # a taken port fails here, once, by name; port 0 -> one port
    port = probe.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start():
        p = ctx.Process(target=_worker, args=(host, port, log_level), name="qingbert-serve-worker")
        p.start()
        return p

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start() for _ in range(workers)]
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d with %d worker processes (Press "
                                            "CTRL+C to quit)", host, port, workers)
    deaths: list[float] = []
    try:
        while not stop.wait(0.5):
            for i, p in enumerate(procs):
                if p.is_alive():
                    continue
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
                if len(deaths) > MAX_RESTARTS:
                    raise QingbertError(f"serve: {len(deaths)} worker processes died within "
                                        f"{RESTART_WINDOW_S:.0f} s (last exit code {p.exitcode}); stopping")
                log.warning("serve: worker pid %s exited with code %s; starting another", p.pid, p.exitcode)
                procs[i] = start()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        probe.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket for ``--workers`` processes (shared, or one per process with ``reuse_port``), made with
    ``proto=IPPROTO_TCP``.

    uvicorn's own (``Config.bind_socket``) leaves ``proto`` at 0; the workers' accepted sockets inherit it and
    asyncio then never sets ``TCP_NODELAY`` on them, so on Linux every keep-alive request after the first waits
    ~40 ms for a delayed ACK (uvicorn issue #3149; measured here: 8 ms -> 55 ms per request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise QingbertError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def running_server(model_dir: str | Path | None = None, index_dir: str | Path | None = None,
                   config: ServeConfig | None = None, app=None, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve in a background thread on a free loopback port; yields the base URL (``http://127.0.0.1:PORT``) and
    stops the server on exit.  Give ``model_dir`` (and ``index_dir``, ``config``) or a ready ``app``."""
    import uvicorn

    if app is None:
        if model_dir is None:
            raise QingbertError("running_server needs a model folder or an app")
        app = create_app(model_dir, index_dir, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="qingbert-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not server.started:
            if not thread.is_alive():
                raise QingbertError("the server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise QingbertError(f"the server did not start within {timeout_s:g} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


# ---------------------------------------------------------------------------
# command line (wired into ``qingbert`` by cli.py: ``add_cli(sub)`` and ``run_cli(args)``)

HELP = "serve a model folder over HTTP: /encode (bert-as-service), /v1/embeddings (OpenAI), /classify, /search"


def add_cli(subparsers) -> None:
    """Add the ``serve`` verb to ``qingbert``'s subparsers."""
    d = ServeConfig()
    p = subparsers.add_parser("serve", help=HELP, description=HELP + "; GET /health, /metrics")
    p.add_argument("model", metavar="MODEL", help="model folder (any qingbert.load folder)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", default="1",
                   help="server processes, each with its own model (default 1); 'auto': one per core, each with one "
                        "model thread and unpadded forwards (--encode-batch 1), the fastest on CPU (benchmarks/serve.py)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key (Authorization: Bearer KEY or X-API-Key); default ${ENV_API_KEY}")
    p.add_argument("--index", default=None, help="index folder (qingbert index build) for POST /search")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"texts per model call (default {d.max_batch})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long a batch waits for more requests (default {d.max_wait_ms:g})")
    p.add_argument("--encode-batch", type=int, default=None,
                   help=f"texts per model forward inside a micro-batch, sorted by length (default {d.encode_batch}; "
                        "1 with --workers auto)")
    p.add_argument("--max-texts", type=int, default=d.max_texts, help=f"texts per request (default {d.max_texts})")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help=f"characters per text (default {d.max_chars})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"request body size (default {d.max_body_bytes})")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest in the folder)")
    p.add_argument("--threads", type=int, default=0, help="model threads per worker (default: the library's)")
    p.add_argument("--spin", action="store_true",
                   help="let ONNX Runtime threads busy-wait between requests (lower latency under steady load, "
                        "but the server keeps its cores busy when idle)")
    p.add_argument("--pooling", default=None, choices=("mean", "cls", "max", "mean-max"), help="default: the index's, else mean")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(run_cli=run_cli)


def _cores() -> int:
    """CPUs this process may run on (its affinity, which containers and taskset narrow), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: str | int, threads: int, encode_batch: int | None) -> tuple[int, int, int]:
    """``--workers`` / ``--threads`` / ``--encode-batch`` as given -> ``(workers, threads, encode_batch)``.

    ``auto`` is one process per core with one model thread each and unpadded forwards: on 2 cores that served
    306 requests/s against 194 for one process with 2 threads (benchmarks/serve.py, BENCHMARKS.md)."""
    if str(workers).strip().lower() == "auto":
        return _cores(), threads or 1, encode_batch or 1
    try:
        n = int(workers)
    except ValueError:
        raise QingbertError(f"serve: --workers must be a number or 'auto', got '{workers}'") from None
    return n, threads, encode_batch or ServeConfig.encode_batch


def run_cli(args) -> int:
    """Run ``qingbert serve`` from parsed arguments; returns the exit status."""
    workers, args.threads, args.encode_batch = resolve_workers(args.workers, args.threads, args.encode_batch)
    config = ServeConfig(max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                         max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, encode_batch=args.encode_batch,
                         api_key=args.api_key or os.environ.get(ENV_API_KEY) or None, backend=args.backend,
                         threads=args.threads, pooling=args.pooling, spin=args.spin)
    serve(args.model, host=args.host, port=args.port, workers=workers, index_dir=args.index, config=config,
          log_level=args.log_level)
    return 0


__all__ = ["ServeConfig", "create_app", "serve", "running_server", "app_from_env", "add_cli", "run_cli", "ApiError",
           "resolve_workers",
           "Batcher", "Metrics", "check_texts", "detokenize"]
