"""The server against generated requests (hypothesis over the routes' request shapes): no body makes it answer 5xx,
every answer is our JSON error or a result, and the keep-alive connection stays the one connection throughout.

Two servers run in this process (uvicorn in a thread, the real ASGI app): an encoder with an index (``/encode``,
``/v1/embeddings``, ``/search``, and ``/classify``'s 409) and a classifier (``/classify``).  The texts mix ordinary
Chinese with what broke servers before: lone UTF-16 surrogates (sent as JSON ``\\ud800`` escapes), NUL, zero-width
and other invisible characters, the byte-order mark, non-characters; bodies are JSON of the right shape with wrong
values, JSON of any shape, raw bytes, and bodies of about 1 MB."""

import json
import logging

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qingbert.serve.config import ServeConfig
from qingbert.serve.workers import running_server

from .test_serve import TEXTS, _small_head_model

SPECIAL = ["\ud800", "\udfff", "\ud83d", "\x00", "\u200b", "\u200b\u200c\u200d", "\ufeff", "\uffff", "\ufffe",
           "\u2028", "\x7f", "\u00ad", "\U0010ffff", "  ", "", "[CLS]", "[MASK]", "##", "|||", "a ||| ", "好 ||| 好"]
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(TEXTS),
                 st.text(ANY_CHAR, max_size=40),
                 st.lists(st.one_of(st.sampled_from(SPECIAL), st.sampled_from(list("今天天气很好"))), max_size=12)
                 .map("".join))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False), TEXT)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=10)
TEXTS_FIELD = st.one_of(st.lists(TEXT, min_size=0, max_size=6), st.lists(st.lists(TEXT, max_size=4), max_size=3),
                        st.lists(VALUE, max_size=3), VALUE)


def _shaped(fields: dict):
    """A JSON object with the route's fields (each maybe left out) and maybe some unknown ones."""
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(TEXT, VALUE, max_size=2).map(lambda extra: {**extra, **d}))


BODIES = {
    "/encode": _shaped({"id": VALUE, "texts": TEXTS_FIELD, "is_tokenized": st.one_of(st.booleans(), VALUE)}),
    "/v1/embeddings": _shaped({"input": st.one_of(TEXT, TEXTS_FIELD), "model": st.one_of(TEXT, VALUE),
                               "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), VALUE),
                               "dimensions": st.one_of(st.sampled_from([64, 3]), VALUE), "user": VALUE}),
    "/classify": _shaped({"texts": st.one_of(TEXTS_FIELD, st.lists(st.lists(TEXT, min_size=2, max_size=2),
                                                                   max_size=3))}),
    "/search": _shaped({"query": TEXT, "top_k": st.one_of(st.integers(-3, 300), VALUE)}),
}
REQUEST = st.one_of(
    st.sampled_from(sorted(BODIES)).flatmap(lambda path: BODIES[path].map(lambda body: (path, body))),
    st.tuples(st.sampled_from(sorted(BODIES)), VALUE),  # JSON of any shape
    st.tuples(st.sampled_from(sorted(BODIES)), st.binary(max_size=64)),  # not JSON, maybe not UTF-8
)


def _encode(body) -> bytes:
    # ensure_ascii: a lone surrogate goes over the wire as the JSON escape "\ud800", as a client would send it
    return body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=True).encode("ascii")


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    from qingbert.deploy.index import build_index

    corpus = tmp_path_factory.mktemp("fuzz-corpus") / "corpus.txt"
    corpus.write_text("\n".join(TEXTS[:20]) + "\n", encoding="utf-8")
    index = tmp_path_factory.mktemp("fuzz-index") / "index"
    build_index(tiny_model, corpus, index, progress=False)
    classifier = _small_head_model(tiny_model, tmp_path_factory, "fuzz-cls", "BertForSequenceClassification",
                                   ["negative", "positive"])
    cfg = dict(max_texts=8, max_chars=300)
    with running_server(tiny_model, index, ServeConfig(**cfg)) as enc, \
            running_server(classifier, config=ServeConfig(**cfg)) as cls:
        yield {"enc": enc, "cls": cls}


class Session:
    """One keep-alive connection per server; every answer is checked and counted."""

    def __init__(self, urls: dict):
        self.urls = urls
        self.clients = {k: httpx.Client(base_url=u, trust_env=False, timeout=60) for k, u in urls.items()}
        self.ports: dict[str, set] = {k: set() for k in urls}
        self.statuses: list[int] = []

    def send(self, server: str, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        r = self.clients[server].request(method, path, content=content,
                                         headers={"content-type": "application/json"} if content is not None else None)
        self.statuses.append(r.status_code)
        self.ports[server].add(r.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert r.status_code < 500, (path, content[:300] if content else None, r.text[:500])
        assert r.headers.get("connection", "").lower() != "close", r.headers
        if path != "/metrics":
            body = r.json()  # our JSON, whatever was sent
            if r.status_code >= 400:
                assert body["status"] == r.status_code and body["error"]["message"], body
        return r

    def close(self):
        for c in self.clients.values():
            c.close()


def test_generated_requests_never_get_a_5xx_and_keep_the_connection(servers, caplog):
    session = Session(servers)
    caplog.set_level(logging.WARNING)

    @settings(max_examples=330, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(REQUEST, st.sampled_from(["enc", "cls"]))
    def one(request, server):
        path, body = request
        session.send(server, "POST", path, _encode(body))

    try:
        one()
        # ~1 MB bodies: within the byte limit (texts too long: 413) and just over it (413 before it is read)
        for size in (1_000_000, (1 << 20) + 10):
            for path, field in (("/encode", "texts"), ("/v1/embeddings", "input"), ("/classify", "texts")):
                session.send("enc" if path != "/classify" else "cls", "POST", path,
                             json.dumps({field: ["好" * (size // 3)]}, ensure_ascii=False).encode()[:size])
        # the specials one by one on every text route, then the read-only routes
        for s in SPECIAL:
            for path, body in (("/encode", {"id": s, "texts": [s, "好"]}), ("/v1/embeddings", {"input": s}),
                               ("/search", {"query": s, "top_k": 2}), ("/encode", {"texts": [[s]],
                                                                                   "is_tokenized": True})):
                session.send("enc", "POST", path, _encode(body))
            session.send("cls", "POST", "/classify", _encode({"texts": [s, [s, "好"], f"{s} ||| 好"]}))
        for server in servers:
            for path in ("/health", "/metrics"):
                session.send(server, "GET", path)
    finally:
        session.close()
    assert len(session.statuses) >= 300
    assert all(len(p) == 1 for p in session.ports.values()), session.ports  # one connection per server, kept
    assert 200 in session.statuses and 422 in session.statuses and 413 in session.statuses
    assert not [r for r in caplog.records if r.exc_info], "a request was logged with a traceback"


def test_surrogates_and_invisible_texts(servers):
    with httpx.Client(trust_env=False, timeout=60) as c:
        enc, cls = servers["enc"], servers["cls"]
        post = lambda url, body: c.post(url, content=_encode(body), headers={"content-type": "application/json"})  # noqa: E731
        a = post(enc + "/encode", {"id": "\ud800", "texts": ["今天\ud800天气很好"]})
        b = post(enc + "/encode", {"texts": ["今天天气很好"]})
        assert a.status_code == 200 and a.json()["id"] == "\ufffd"
        assert a.json()["results"] == b.json()["results"]  # the surrogate is not text: dropped like U+FFFD
        for blank in ("\x00", "\u200b\u200c", "\ufeff \ud800", " \u2028 "):
            r = post(enc + "/v1/embeddings", {"input": ["好", blank]})
            assert r.status_code == 422 and r.json()["error"]["param"] == "input[1]", r.text
            assert "empty text" in r.json()["error"]["message"]
        s = post(enc + "/search", {"query": "\ud800好", "top_k": 1})
        assert s.status_code == 200 and s.json()["query"] == "\ufffd好"
        k = post(cls + "/classify", {"texts": ["\udfff很好"]})
        assert k.status_code == 200 and k.json()["results"][0]["label"] in ("negative", "positive")


def test_health_names_folders_and_shows_paths_only_with_the_key(tiny_model, tmp_path):
    with running_server(tiny_model, config=ServeConfig(api_key="k3y")) as url, \
            httpx.Client(trust_env=False, timeout=60) as c:
        open_ = c.get(url + "/health").json()
        keyed = c.get(url + "/health", headers={"X-API-Key": "k3y"}).json()
        wrong = c.get(url + "/health", headers={"X-API-Key": "nope"}).json()
    assert open_["model_dir"] == wrong["model_dir"] == tiny_model.name
    assert str(tmp_path.parent) not in json.dumps(open_)
    assert keyed["model_dir"] == str(tiny_model.resolve())
