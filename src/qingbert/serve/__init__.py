"""Serving: ``qingbert serve MODEL``, an HTTP JSON API (FastAPI + uvicorn) for any model folder, with micro-batching.

``POST /encode`` (bert-as-service's format), ``POST /v1/embeddings`` (OpenAI's), ``POST /classify`` (fine-tuned
models), ``POST /search`` (an index from ``qingbert index build``), ``GET /health`` and ``GET /metrics``.

``config``: :class:`ServeConfig` (limits and batching), the routes, :class:`ApiError` and the status codes of
refused requests.  ``validation``: request checks (texts, token lists, ``/classify`` inputs, FastAPI's validation
errors as ours).  ``metrics``: the Prometheus text metrics.  ``batcher``: the micro-batcher merging concurrent
requests into model calls.  ``state``: one app's model, index, batchers and metrics.  ``guard``: the ASGI middleware
(API key, body size, UTF-8, content type, request metrics).  ``app``: the FastAPI app and its routes
(:func:`create_app`, :func:`app_from_env`).  ``workers``: :func:`serve` with its ``--workers`` processes and their
supervisor, and :func:`running_server`.  (The ``serve`` verb lives in
:mod:`qingbert.cli.serve`.)

Floor 9: imports every floor below (deploy, embeddings, tasks, models, data, ...); never pipeline, demo or cli.
"""
