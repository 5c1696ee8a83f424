"""Micro-batching: :class:`Batcher` merges the texts of concurrent requests into model calls.

Requests put their texts on an asyncio queue; one batching task per operation (encode, predict) takes up to
``max_batch`` texts, waiting at most ``max_wait_ms`` after the first for others to join, and runs them as one model
call in the server's single model thread (both operations share it, so the backend never runs in two threads at
once); the event loop never waits on the model.  A request larger than ``max_batch`` is one call of its own.  When
a merged call fails, its requests are retried one by one, so a bad request fails alone.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from qingbert.serve.config import ApiError
from qingbert.serve.metrics import Metrics


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


__all__ = ["Batcher"]
