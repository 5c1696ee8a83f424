"""The state of one app (:class:`ServerState`): the model, the optional index, the batchers and the metrics.

The model runs in one thread of its own; ``/encode``, ``/v1/embeddings`` and ``/search`` go through the encode
batcher, ``/classify`` through the predict batcher.
"""

import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qingbert import __version__
from qingbert.deploy.index import embed, load_index
from qingbert.deploy.inference import load
from qingbert.embeddings.encoder import TruncationWarning
from qingbert.errors import QingbertError
from qingbert.serve.batcher import Batcher
from qingbert.serve.config import ApiError, ServeConfig
from qingbert.serve.metrics import Metrics

log = logging.getLogger(__name__)


class ServerState:
    """The model, the optional index, the batchers and the metrics of one app."""

    def __init__(self, model_dir: str | Path, index_dir: str | Path | None, config: ServeConfig, model=None):
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
        # the texts of a micro-batch arrive in any order; the encoder sorts them by length and runs sub-batches of
        # encode_batch, so short texts are not padded to the longest one of the whole micro-batch
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

    def health(self, paths: bool = False) -> dict:
        """What ``/health`` answers; ``paths``: the folders' absolute paths (else their names only -- the route is
        open without the API key, and a path tells a stranger about the machine)."""

        def where(folder) -> str:
            return str(Path(folder).resolve()) if paths else Path(folder).name

        index = None
        if self.index is not None:
            m = self.index.manifest
            model = m.get("model")
            index = {"size": len(self.index), "dim": self.index.dim, "factory": m.get("factory"),
                     "model": model if paths or not model else Path(str(model)).name,
                     "folder": where(self.index.folder)}
        return {"status": "ok", "model": self.name, "model_dir": where(self.model_dir), "kind": self.model.kind,
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


__all__ = ["ServerState"]
