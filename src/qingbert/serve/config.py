"""What a server takes and how it refuses: :class:`ServeConfig` (limits and batching), the environment variables a
``--workers`` process reads its configuration from, the routes, and :class:`ApiError`.

Limits (:class:`ServeConfig`): texts per request (``max_texts`` 256: 413), characters per text (``max_chars``
4096: 413; longer texts would be truncated to the model's max length anyway), body bytes (``max_body_bytes``
1 MiB: 413, by Content-Length and by the bytes actually received), texts waiting for the model (``max_queue``
4096: 503), seconds a request waits for its result (``request_timeout_s`` 60: 503).  Malformed JSON, a non-UTF-8
body or a missing body are 400; a non-JSON Content-Type 415; wrong or missing fields 422 naming the field (empty
lists and empty texts included); unknown routes 404, wrong methods 405; a missing or wrong API key 401
(``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; ``/health``, ``/docs`` and ``/openapi.json`` stay open).
Every error is answered as ``{"error": {"message", "type", "param"}, "status": code}`` (:class:`ApiError`).
"""

import functools
import json
import math
from dataclasses import dataclass, fields

from qingbert.data.text import repair_text
from qingbert.deploy.index import POOLINGS
from qingbert.errors import QingbertError

ENV_CONFIG = "QINGBERT_SERVE"  # a --workers server's model folder, index and options (JSON), for its processes
ENV_API_KEY = "QINGBERT_API_KEY"  # the API key when --api-key is not given (and how it reaches the processes)
ROUTES = ("/encode", "/v1/embeddings", "/classify", "/search", "/health", "/metrics")
OPEN_ROUTES = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")  # no API key needed


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
    nprobe: int | None = None  # IVF lists visited per /search query (default: qingbert.deploy.index's)

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
        return json_response_class()({"error": {"message": self.message, "type": self.type, "param": self.param},
                                      "status": self.status}, status_code=self.status, headers=self.headers)


@functools.cache
def json_response_class():
    """The server's JSON response: Starlette's, except that a lone surrogate a client sent (and that comes back in
    an ``id``, a query or a message) is written as U+FFFD instead of failing to encode."""
    from fastapi.responses import JSONResponse

    class TextSafeJSONResponse(JSONResponse):
        def render(self, content) -> bytes:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
            return repair_text(text).encode("utf-8")

    return TextSafeJSONResponse


__all__ = ["ENV_API_KEY", "ENV_CONFIG", "OPEN_ROUTES", "ROUTES", "ApiError", "ServeConfig", "json_response_class"]
