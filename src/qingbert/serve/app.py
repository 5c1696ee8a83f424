"""The FastAPI app: :func:`create_app` (one model folder, optionally an index) and :func:`app_from_env` (the factory
of the ``--workers`` processes).

Endpoints (all JSON; errors are ``{"error": {"message", "type", "param"}, "status": code}`` with a 4xx code):

* ``POST /encode``: bert-as-service's HTTP format. ``{"id": ANY, "texts": [str, ...], "is_tokenized": false}`` ->
  ``{"id": ANY, "results": [[float, ...], ...], "status": 200}``: pooled last-layer vectors, not normalised
  (like bert-as-service).  With ``"is_tokenized": true`` each text is a list of tokens, joined back into a text
  and tokenised again (:func:`qingbert.serve.validation.check_tokenized`).
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
* ``GET /health``: model, kind, backend, dim, index size, uptime (never needs the API key; the folders are named,
  their absolute paths are shown only to a request that carries the API key).
* ``GET /metrics``: Prometheus text format (:mod:`qingbert.serve.metrics`).

The limits and the status codes of refused requests: :mod:`qingbert.serve.config`.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, and the request
# models are local to create_app (so pydantic is only imported when an app is made).
import asyncio
import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qingbert.errors import QingbertError
from qingbert.serve.config import ENV_API_KEY, ENV_CONFIG, ROUTES, ApiError, ServeConfig, json_response_class
from qingbert.serve.guard import Guard, given_key, key_matches
from qingbert.serve.state import ServerState
from qingbert.serve.validation import check_predict_inputs, check_text, check_texts, check_tokenized, validation_error


def create_app(model_dir: str | Path, index_dir: str | Path | None = None, config: ServeConfig | None = None,
               model=None):
    """The FastAPI app serving ``model_dir`` (and the index in ``index_dir``); the model loads now, so a bad folder
    fails here, not at the first request.  ``model``: an already loaded :class:`qingbert.deploy.inference.Model`."""
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
                  lifespan=lifespan, strict_content_type=False, default_response_class=json_response_class())
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
        texts = [check_text(req.input, "input", cfg)] if isinstance(req.input, str) else \
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
        query = check_text(req.query, "query", cfg)
        if not 1 <= req.top_k <= cfg.max_top_k:
            raise ApiError(422, f"'top_k' must be between 1 and {cfg.max_top_k}, got {req.top_k}", param="top_k")
        [(vec, _)] = await state.run(state.encoder, [query])
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(None, state.index.search_vectors, vec[None, :], req.top_k)
        return {"query": query, "results": hits[0], "model": state.name}

    @app.get("/health")
    async def health(request: Request):
        """Model, backend, index size and uptime; folders by name, their paths only to a request with the API key."""
        return state.health(paths=key_matches(given_key(request.scope), cfg.api_key))

    @app.get("/metrics")
    async def metrics():
        """Prometheus text exposition format."""
        return PlainTextResponse(state.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env():
    """uvicorn factory (``qingbert.serve.app:app_from_env``) for ``--workers > 1``: the app from ``$QINGBERT_SERVE``."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise QingbertError(f"${ENV_CONFIG} is not set", hint="start the server with `qingbert serve`")
    spec = json.loads(raw)
    config = ServeConfig.from_dict(spec.get("config") or {})
    if config.api_key is None and os.environ.get(ENV_API_KEY):
        config.api_key = os.environ[ENV_API_KEY]
    return create_app(spec["model_dir"], spec.get("index_dir"), config)


__all__ = ["app_from_env", "create_app"]
