"""The ASGI guard in front of the routes: API key, body size, UTF-8, content type, request metrics.

A missing or wrong API key is 401 (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; the routes in
``OPEN_ROUTES`` -- ``/health``, the docs -- stay open); a body over ``max_body_bytes`` 413 (by Content-Length and by
the bytes actually received); a non-UTF-8 body 400; a non-JSON Content-Type 415.
"""

import hmac
import logging
import time

from qingbert.serve.config import OPEN_ROUTES, ROUTES, ApiError
from qingbert.serve.state import ServerState

log = logging.getLogger(__name__)


class Guard:
    """Pure ASGI middleware in front of the routes: checks the API key, reads the body within
    ``max_body_bytes`` (Content-Length first, then the bytes received), refuses non-UTF-8 and non-JSON bodies,
    counts every request by route and status, and answers a bug in a route with one 500 (``Connection: close``,
    one log record) instead of letting the server log it twice and drop the connection."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        route = scope["path"] if scope["path"] in ROUTES else "other"

        started = False

        async def send_counted(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
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
                try:
                    await self.app(scope, receive, send_counted)
                except Exception:  # a bug: logged once, answered 500 with Connection: close, never re-raised
                    log.exception("internal error serving %s %s", scope["method"], scope["path"])
                    if not started:
                        await ApiError(500, "internal error (logged by the server)", "internal_error",
                                       headers={"Connection": "close"}).response()(scope, receive, send_counted)
        finally:
            self.state.metrics.request(route, status, time.perf_counter() - t0)

    def _auth(self, scope) -> ApiError | None:
        key = self.state.config.api_key
        if not key or scope["path"] in OPEN_ROUTES:
            return None
        given = given_key(scope)
        if given is None:
            return ApiError(401, "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                            "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        if not key_matches(given, key):
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
            err = ApiError(400, f"the request body is not UTF-8 ({e.reason} at byte {e.start})", "invalid_encoding")
            return err, b""
        return None, body

    def _too_large(self, what: str) -> ApiError:
        limit = self.state.config.max_body_bytes
        return ApiError(413, f"request body too large: {what}; the limit is max_body_bytes = {limit}",
                        "limit_exceeded", "body")


def given_key(scope) -> str | None:
    """The API key a request carries (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``), if any."""
    headers = _headers(scope)
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return given


def key_matches(given: str | None, key: str | None) -> bool:
    """``given`` is the server's API key (compared in constant time); never true when the server has none."""
    return bool(key) and given is not None and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                                   key.encode("utf-8"))


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


__all__ = ["Guard", "given_key", "key_matches"]
