"""HTTP serving: every endpoint against the model API, bad input -> 4xx JSON, micro-batching, API key."""

import asyncio
import base64
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from qingbert.cli.main import build_parser
from qingbert.data.builtin import reviews
from qingbert.data.text import clean_text
from qingbert.deploy.inference import load
from qingbert.errors import QingbertError
from qingbert.serve.app import app_from_env
from qingbert.serve.batcher import Batcher
from qingbert.serve.config import ServeConfig
from qingbert.serve.metrics import Histogram, Metrics
from qingbert.serve.validation import detokenize
from qingbert.serve.workers import listen_socket, resolve_workers, running_server

TEXTS = [t.strip() for t, _ in reviews("dev") if len(t.strip()) <= 150][:40]  # within max_chars below
LIMITS = dict(max_texts=8, max_chars=200, max_body_bytes=16 * 1024, max_wait_ms=20.0)


def _client(**kw) -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=60, **kw)


def _small_head_model(base, tmp_path_factory, name: str, arch: str, labels: list[str]):
    """A tiny randomly initialised model with a task head and the base model's tokenizer."""
    import torch
    import transformers

    from qingbert.models.loading import load_tokenizer

    torch.manual_seed(1)
    tok = load_tokenizer(str(base))
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, id2label=dict(enumerate(labels)),
                                     label2id={x: i for i, x in enumerate(labels)})
    folder = tmp_path_factory.mktemp(name) / "model"
    getattr(transformers, arch)(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory):
    return _small_head_model(tiny_model, tmp_path_factory, "cls", "BertForSequenceClassification",
                             ["negative", "positive"])


@pytest.fixture(scope="module")
def ner_model(tiny_model, tmp_path_factory):
    return _small_head_model(tiny_model, tmp_path_factory, "ner", "BertForTokenClassification",
                             ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])


@pytest.fixture(scope="module")
def index_dir(tiny_model, tmp_path_factory):
    from qingbert.deploy.index import build_index

    corpus = tmp_path_factory.mktemp("serve-corpus") / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("serve-index") / "index"
    build_index(tiny_model, corpus, out, progress=False)
    return out


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return load(tiny_model)


@pytest.fixture(scope="module")
def enc_url(tiny_model, index_dir):
    with running_server(tiny_model, index_dir, ServeConfig(**LIMITS)) as url:
        yield url


@pytest.fixture(scope="module")
def cls_url(classifier):
    with running_server(classifier, config=ServeConfig(**LIMITS)) as url:
        yield url


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{want}}}" if want else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


# ---------------------------------------------------------------------------
# endpoints


def test_encode_matches_the_model(enc_url, encoder):
    texts = TEXTS[:3]
    with _client() as c:
        r = c.post(enc_url + "/encode", json={"id": 7, "texts": texts, "is_tokenized": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == 7 and body["status"] == 200
    got = np.asarray(body["results"], dtype=np.float32)
    want = encoder.encode(texts)
    assert got.shape == want.shape == (3, 64)
    assert np.allclose(got, want, atol=1e-5)


def test_encode_tokenized_equals_text(enc_url, encoder):
    text = min(TEXTS, key=len) + "，qingbert tokenizer好！"
    assert len(text) < 100
    tokens = encoder.tokenizer.tokenize(clean_text(text))  # what the model tokenises
    assert "[UNK]" not in tokens
    assert detokenize(["今", "天", "qing", "##bert"]) == "今 天 qingbert"
    with _client() as c:
        a = c.post(enc_url + "/encode", json={"texts": [tokens], "is_tokenized": True})
        b = c.post(enc_url + "/encode", json={"texts": [text]})
    assert a.status_code == b.status_code == 200, a.text
    assert a.json()["id"] is None and len(" ".join(tokens)) > len(text)
    with _client() as c:  # the character limit counts the tokens' characters, not the joining spaces
        r = c.post(enc_url + "/encode", json={"texts": [["字"] * 201], "is_tokenized": True})
    assert r.status_code == 413 and "201 characters in its tokens" in r.json()["error"]["message"]
    assert np.allclose(a.json()["results"], b.json()["results"], atol=1e-5)


def test_openai_embeddings(enc_url, encoder):
    texts = TEXTS[5:8]
    want = encoder.encode(texts, normalize=True)
    with _client() as c:
        one = c.post(enc_url + "/v1/embeddings", json={"input": texts[0], "model": "whatever"}).json()
        many = c.post(enc_url + "/v1/embeddings", json={"input": texts}).json()
        b64 = c.post(enc_url + "/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    assert one["object"] == "list" and one["model"] == "model" and len(one["data"]) == 1
    assert one["data"][0]["object"] == "embedding" and one["data"][0]["index"] == 0
    assert np.allclose(one["data"][0]["embedding"], want[0], atol=1e-5)
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    got = np.asarray([d["embedding"] for d in many["data"]])
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5) and np.allclose(got, want, atol=1e-5)
    tokens = sum(len(encoder.tokenizer(clean_text(t), truncation=True, max_length=encoder.cfg.max_len)["input_ids"])
                 for t in texts)
    assert many["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    assert np.allclose(decoded, got, atol=1e-6)


def test_classify_equals_predict(cls_url, classifier):
    texts = TEXTS[:6]
    want = load(classifier).predict(texts)
    with _client() as c:
        r = c.post(cls_url + "/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "classification"
    assert [x["label"] for x in body["results"]] == [x["label"] for x in want]
    assert np.allclose([x["score"] for x in body["results"]], [x["score"] for x in want], atol=1e-5)


def test_classify_ner(ner_model):
    texts = ["张三在北京工作。", TEXTS[2]]
    want = load(ner_model).predict(texts)
    with running_server(ner_model) as url, _client() as c:
        r = c.post(url + "/classify", json={"texts": texts})
        health = c.get(url + "/health").json()
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [x["text"] for x in got] == texts and health["kind"] == "ner"
    strip = lambda res: [[(e["start"], e["end"], e["type"]) for e in x["entities"]] for x in res]  # noqa: E731
    assert strip(got) == strip(want)


def test_classify_on_an_encoder_is_a_409(enc_url):
    with _client() as c:
        r = c.post(enc_url + "/classify", json={"texts": ["很好"]})
    assert r.status_code == 409
    assert "without a task head" in r.json()["error"]["message"] and r.json()["error"]["type"] == "no_task_head"


def test_search_returns_the_corpus_text(enc_url, cls_url):
    with _client() as c:
        r = c.post(enc_url + "/search", json={"query": TEXTS[11], "top_k": 3})
        none = c.post(cls_url + "/search", json={"query": TEXTS[11]})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 3 and hits[0]["text"] == TEXTS[11] and hits[0]["id"] == 11
    assert hits[0]["score"] > 0.999 and hits[0]["score"] >= hits[1]["score"]
    assert none.status_code == 409 and "no index is loaded" in none.json()["error"]["message"]


def test_health(enc_url, cls_url):
    with _client() as c:
        h = c.get(enc_url + "/health").json()
        h2 = c.get(enc_url + "/health").json()
        hc = c.get(cls_url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "model" and h["kind"] == "encoder" and h["backend"] == "torch"
    assert h["dim"] == 64 and h["index_size"] == len(TEXTS) and h["index"]["factory"] == "Flat"
    assert h2["uptime_s"] >= h["uptime_s"] >= 0
    assert hc["kind"] == "classification" and hc["index"] is None and hc["labels"] == ["negative", "positive"]


def test_metrics_counters_increase(enc_url):
    with _client() as c:
        before = c.get(enc_url + "/metrics")
        assert c.post(enc_url + "/encode", json={"texts": TEXTS[:3]}).status_code == 200
        assert c.post(enc_url + "/encode", json={"texts": []}).status_code == 422
        assert c.post(enc_url + "/encode", json={"texts": ["好" * 190]}).status_code == 200  # > 128 tokens: cut
        after = c.get(enc_url + "/metrics")
    assert before.headers["content-type"].startswith("text/plain")
    a, b = before.text, after.text
    assert "# TYPE qingbert_batch_texts histogram" in b and "# TYPE qingbert_requests_total counter" in b
    assert _metric(b, "qingbert_requests_total", route="/encode", status=200) == \
        _metric(a, "qingbert_requests_total", route="/encode", status=200) + 2
    assert _metric(b, "qingbert_requests_total", route="/encode", status=422) == \
        _metric(a, "qingbert_requests_total", route="/encode", status=422) + 1
    assert _metric(b, "qingbert_texts_total", op="encode") == _metric(a, "qingbert_texts_total", op="encode") + 4
    assert _metric(b, "qingbert_requests_total", route="/metrics", status=200) >= 1
    assert _metric(b, "qingbert_batch_texts_count", op="encode") > _metric(a, "qingbert_batch_texts_count", op="encode")
    assert 'qingbert_queue_texts{op="encode"} 0' in b and f"qingbert_index_size {len(TEXTS)}" in b
    import os

    assert f'qingbert_process_info{{pid="{os.getpid()}"}} 1' in b  # the test server runs in this process
    assert _metric(b, "qingbert_texts_truncated_total") == _metric(a, "qingbert_texts_truncated_total") + 1


# ---------------------------------------------------------------------------
# bad input: 4xx JSON naming the problem, and the server keeps serving

JSON = {"content-type": "application/json"}


def _chunks():
    yield b'{"texts": ["'
    for _ in range(40):
        yield b"a" * 1000
    yield b'"]}'


BAD = [
    ("malformed-json", "POST", "/encode", dict(content=b'{"texts": [', headers=JSON), 400, "malformed JSON"),
    ("empty-body", "POST", "/encode", dict(content=b"", headers=JSON), 400, "body is empty"),
    ("not-an-object", "POST", "/encode", dict(json=[1, 2]), 422, "must be a JSON object"),
    ("missing-field", "POST", "/encode", dict(json={"id": 1}), 422, "field 'texts' is required"),
    ("wrong-type", "POST", "/encode", dict(json={"texts": "abc"}), 422, "field 'texts'"),
    ("item-not-string", "POST", "/encode", dict(json={"texts": ["好", 5]}), 422, "'texts[1]' must be a string"),
    ("empty-list", "POST", "/encode", dict(json={"texts": []}), 422, "'texts' is empty"),
    ("empty-text", "POST", "/encode", dict(json={"texts": ["好", "  "]}), 422, "'texts[1]' is an empty text"),
    ("too-many-texts", "POST", "/encode", dict(json={"texts": ["好"] * 9}), 413, "max_texts = 8"),
    ("text-too-long", "POST", "/encode", dict(json={"texts": ["好" * 201]}), 413, "max_chars = 200"),
    ("body-too-large", "POST", "/encode", dict(json={"texts": ["a" * 20000]}), 413,  # by Content-Length
     "Content-Length is 200"),
    ("body-too-large-chunked", "POST", "/encode", dict(content=_chunks, headers=JSON), 413,
     "more than 16384 bytes were sent; the limit is max_body_bytes = 16384"),
    ("not-utf8", "POST", "/encode", dict(content=b'{"texts": ["\xff\xfe"]}', headers=JSON), 400, "not UTF-8"),
    ("wrong-content-type", "POST", "/encode", dict(content=b'{"texts": ["a"]}', headers={"content-type": "text/plain"}),
     415, "application/json"),
    ("tokenized-not-lists", "POST", "/encode", dict(json={"texts": ["好"], "is_tokenized": True}), 422,
     "array of tokens"),
    ("tokens-without-flag", "POST", "/encode", dict(json={"texts": [["好"]]}), 422, "set is_tokenized"),
    ("is-tokenized-type", "POST", "/encode", dict(json={"texts": ["好"], "is_tokenized": "yes"}), 422,
     "is_tokenized"),
    ("embeddings-missing-input", "POST", "/v1/embeddings", dict(json={"model": "m"}), 422, "'input' is required"),
    ("embeddings-int", "POST", "/v1/embeddings", dict(json={"input": 5}), 422, "'input' must be"),
    ("embeddings-token-ids", "POST", "/v1/embeddings", dict(json={"input": [1, 2, 3]}), 422, "token ids"),
    ("embeddings-dimensions", "POST", "/v1/embeddings", dict(json={"input": "好", "dimensions": 3}), 422,
     "have 64"),
    ("search-missing-query", "POST", "/search", dict(json={"top_k": 2}), 422, "'query' is required"),
    ("search-top-k", "POST", "/search", dict(json={"query": "好", "top_k": 0}), 422, "'top_k' must be between"),
    ("search-top-k-type", "POST", "/search", dict(json={"query": "好", "top_k": "3"}), 422, "top_k"),
    ("unknown-route", "POST", "/nope", dict(json={}), 404, "no route POST /nope"),
    ("wrong-method", "GET", "/encode", {}, 405, "GET is not allowed"),
]


@pytest.mark.parametrize("name,method,path,kw,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx(enc_url, name, method, path, kw, status, message):
    kw = dict(kw)
    if callable(kw.get("content")):
        kw["content"] = kw["content"]()
    with _client() as c:
        r = c.request(method, enc_url + path, **kw)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert message in err["message"], err
        assert r.json()["status"] == status and err["type"]
        assert c.get(enc_url + "/health").status_code == 200


def test_limits_are_named_in_413_params(enc_url):
    with _client() as c:
        r = c.post(enc_url + "/v1/embeddings", json={"input": ["好"] * 9})
    assert r.status_code == 413 and r.json()["error"]["param"] == "input"
    assert r.json()["error"]["type"] == "limit_exceeded"


# ---------------------------------------------------------------------------
# concurrency and micro-batching


def test_concurrent_clients_are_batched_and_correct(enc_url, encoder):
    jobs = [TEXTS[(i * 3) % len(TEXTS):(i * 3) % len(TEXTS) + 1 + i % 3] for i in range(64)]
    want = {t: v for t, v in zip(TEXTS, encoder.encode(TEXTS))}
    with _client() as c:
        before = c.get(enc_url + "/metrics").text
    start = threading.Barrier(16)

    def worker(k):
        start.wait()
        out = []
        with _client() as c:
            for texts in jobs[k::16]:
                r = c.post(enc_url + "/encode", json={"id": k, "texts": texts})
                out.append((texts, r.status_code, r.json()))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [x for part in pool.map(worker, range(16)) for x in part]
    assert len(results) == 64
    for texts, status, body in results:
        assert status == 200, body
        assert np.allclose(body["results"], [want[t] for t in texts], atol=1e-4)
    with _client() as c:
        after = c.get(enc_url + "/metrics").text
    assert _metric(after, "qingbert_batch_requests_max", op="encode") >= 2
    n_batches = _metric(after, "qingbert_batch_texts_count", op="encode") - \
        _metric(before, "qingbert_batch_texts_count", op="encode")
    assert 0 < n_batches < 64  # fewer model calls than requests: they were merged


def test_batcher_merges_and_isolates_a_failing_request():
    calls = []

    def fn(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def main():
        executor = ThreadPoolExecutor(1)
        b = Batcher("t", fn, executor, Metrics(), max_batch=8, max_wait_ms=50, max_queue=100)
        b.start()
        res = await asyncio.gather(b.submit(["a", "b"], 10), b.submit(["bad"], 10), b.submit(["c"], 10),
                                   return_exceptions=True)
        big = await b.submit(list("abcdefghijk"), 10)  # larger than max_batch: one call of its own
        await b.stop()
        executor.shutdown()
        return res, big

    res, big = asyncio.run(main())
    assert res[0] == ["A", "B"] and res[2] == ["C"] and isinstance(res[1], ValueError)
    assert calls[0] == ["a", "b", "bad", "c"]  # merged first, then retried one by one
    assert ["a", "b"] in calls[1:] and ["c"] in calls[1:]
    assert big == list("ABCDEFGHIJK") and calls[-1] == list("abcdefghijk")


def test_histogram_is_cumulative():
    h = Histogram((1, 2, 4))
    for v in (1, 3, 3, 9):
        h.observe(v)
    lines = h.lines("x", {"op": "e"})
    assert lines[:4] == ['x_bucket{op="e",le="1"} 1', 'x_bucket{op="e",le="2"} 1', 'x_bucket{op="e",le="4"} 3',
                         'x_bucket{op="e",le="+Inf"} 4']
    assert lines[4:] == ['x_sum{op="e"} 16', 'x_count{op="e"} 4']


# ---------------------------------------------------------------------------
# API key, factory, CLI


def test_api_key(tiny_model):
    with running_server(tiny_model, config=ServeConfig(api_key="s3cret")) as url, _client() as c:
        body = {"texts": ["好"]}
        missing = c.post(url + "/encode", json=body)
        wrong = c.post(url + "/encode", json=body, headers={"Authorization": "Bearer nope"})
        bearer = c.post(url + "/encode", json=body, headers={"Authorization": "Bearer s3cret"})
        header = c.post(url + "/encode", json=body, headers={"X-API-Key": "s3cret"})
        metrics = c.get(url + "/metrics")
        health = c.get(url + "/health")
    assert missing.status_code == 401 and "API key is required" in missing.json()["error"]["message"]
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]["message"]
    assert bearer.status_code == 200 and header.status_code == 200
    assert metrics.status_code == 401 and health.status_code == 200


def test_app_factory_from_environment(tiny_model, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("QINGBERT_SERVE", json.dumps({"model_dir": str(tiny_model), "config": {"max_texts": 2}}))
    monkeypatch.setenv("QINGBERT_API_KEY", "k")
    with TestClient(app_from_env()) as c:
        assert c.get("/health").json()["kind"] == "encoder"
        assert c.post("/encode", json={"texts": ["好"]}).status_code == 401
        r = c.post("/encode", json={"texts": ["好"] * 3}, headers={"X-API-Key": "k"})
        assert r.status_code == 413 and "max_texts = 2" in r.json()["error"]["message"]


def test_cli_flags():
    args = build_parser().parse_args(["serve", "M", "--port", "9001", "--api-key", "k", "--index", "I", "--max-batch", "8",
                              "--max-wait-ms", "2", "--workers", "2"])
    assert (args.model, args.port, args.api_key, args.index, args.max_batch, args.max_wait_ms, args.workers) == \
        ("M", 9001, "k", "I", 8, 2.0, "2")
    assert args.host == "127.0.0.1" and callable(args.run)
    assert resolve_workers(args.workers, args.threads, args.encode_batch) == (2, 0, ServeConfig().encode_batch)
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers("auto", 0, None) == (cores, 1, 1)
    assert resolve_workers("auto", 2, 4) == (cores, 2, 4)  # what is given stays
    with pytest.raises(QingbertError, match="--workers must be a number or 'auto', got 'many'"):
        resolve_workers("many", 0, None)


def test_server_threads_sleep_between_requests_unless_told_to_spin():
    """The server's ONNX Runtime threads do not busy-wait between requests (ServeConfig.spin False), so an idle
    server leaves the cores to its clients; batch work keeps ONNX Runtime's spinning."""
    from qingbert.models.backends import session_options

    assert ServeConfig().spin is False
    idle = session_options(2, spin=False)
    assert idle.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: spinning
        session_options(2).get_session_config_entry("session.intra_op.allow_spinning")


def test_worker_listener_gives_keep_alive_connections_tcp_nodelay():
    """The socket `--workers N` processes share is made with proto IPPROTO_TCP, so asyncio sets TCP_NODELAY on
    every accepted connection (uvicorn's own listener has proto 0: Nagle stays on and each keep-alive request
    waits ~40 ms for a delayed ACK)."""
    import socket

    sock = listen_socket("127.0.0.1", 0)
    seen = {}

    async def main():
        async def handle(reader, writer):
            seen["nodelay"] = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        _, w = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        for _ in range(100):
            if "nodelay" in seen:
                break
            await asyncio.sleep(0.01)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen["nodelay"] != 0
    with pytest.raises(QingbertError, match="cannot listen on 127.0.0.1"):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            listen_socket("127.0.0.1", taken.getsockname()[1])
        finally:
            taken.close()


def test_two_worker_processes_serve_one_port(tiny_model):
    """`qingbert serve --workers 2`: two processes answer on one port (their pids tell them apart), each with a
    correct vector, and the server stops cleanly on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "qingbert", "serve", str(tiny_model), "--port", str(port),
                             "--workers", "2", "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    base, pids = f"http://127.0.0.1:{port}", set()
    try:
        deadline = time.monotonic() + 180
        with _client() as c:
            while len(pids) < 2 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                try:
                    with httpx.Client(trust_env=False, timeout=10) as fresh:  # a new connection each time
                        pids.add(fresh.get(base + "/health").json()["pid"])
                except httpx.TransportError:
                    time.sleep(0.3)
            assert len(pids) == 2
            want = load(tiny_model).encode([TEXTS[0]])[0]
            for _ in range(4):  # one keep-alive connection
                r = c.post(base + "/encode", json={"id": 1, "texts": [TEXTS[0]]})
                assert r.status_code == 200
                assert np.allclose(r.json()["results"][0], want, atol=1e-4)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode is not None
