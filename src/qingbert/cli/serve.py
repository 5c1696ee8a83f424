"""The ``serve`` verb: a model folder (and an index) over HTTP, on one or several worker processes."""

from __future__ import annotations

import os

from qingbert.cli.common import count, non_negative, port, positive_int
from qingbert.serve.config import ENV_API_KEY, ServeConfig
from qingbert.serve.workers import resolve_workers, serve

HELP = {"serve": "serve a model folder over HTTP: /encode (bert-as-service), /v1/embeddings (OpenAI), /classify, "
                  "/search"}


def add_serve(sub) -> None:
    d = ServeConfig()
    p = sub.add_parser("serve", help=HELP["serve"], description=HELP["serve"] + "; GET /health, /metrics")
    p.add_argument("model", metavar="MODEL", help="model folder (any qingbert.load folder)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    p.add_argument("--workers", default="1",
                   help="server processes, each with its own model (default 1); 'auto': one per core, each with one "
                        "model thread and unpadded forwards (--encode-batch 1), the fastest on CPU "
                        "(benchmarks/serve.py)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key (Authorization: Bearer KEY or X-API-Key); default ${ENV_API_KEY}")
    p.add_argument("--index", default=None, help="index folder (qingbert index build) for POST /search")
    p.add_argument("--max-batch", type=positive_int, default=d.max_batch,
                   help=f"texts per model call (default {d.max_batch})")
    p.add_argument("--max-wait-ms", type=non_negative, default=d.max_wait_ms,
                   help=f"how long a batch waits for more requests (default {d.max_wait_ms:g})")
    p.add_argument("--encode-batch", type=positive_int, default=None,
                   help=f"texts per model forward inside a micro-batch, sorted by length (default {d.encode_batch}; "
                        "1 with --workers auto)")
    p.add_argument("--max-texts", type=positive_int, default=d.max_texts,
                   help=f"texts per request (default {d.max_texts})")
    p.add_argument("--max-chars", type=positive_int, default=d.max_chars,
                   help=f"characters per text (default {d.max_chars})")
    p.add_argument("--max-body-bytes", type=positive_int, default=d.max_body_bytes,
                   help=f"request body size (default {d.max_body_bytes})")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest in the folder)")
    p.add_argument("--threads", type=count, default=0, help="model threads per worker (default: the library's)")
    p.add_argument("--spin", action="store_true",
                   help="let ONNX Runtime threads busy-wait between requests (lower latency under steady load, "
                        "but the server keeps its cores busy when idle)")
    p.add_argument("--pooling", default=None, choices=("mean", "cls", "max", "mean-max"),
                   help="default: the index's, else mean")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    workers, args.threads, args.encode_batch = resolve_workers(args.workers, args.threads, args.encode_batch)
    config = ServeConfig(max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                         max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, encode_batch=args.encode_batch,
                         api_key=args.api_key or os.environ.get(ENV_API_KEY) or None, backend=args.backend,
                         threads=args.threads, pooling=args.pooling, spin=args.spin)
    serve(args.model, host=args.host, port=args.port, workers=workers, index_dir=args.index, config=config,
          log_level=args.log_level)
    return 0


COMMANDS = {"serve": add_serve}
