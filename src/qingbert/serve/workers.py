"""Running a server: :func:`serve` (``qingbert serve``), its ``--workers`` processes and their supervisor, and
:func:`running_server` (a server in a background thread, for tests and the demo).

With ``--workers N > 1`` N processes each load their own model, batcher and metrics, from the factory
``qingbert.serve.app:app_from_env`` (the configuration travels in the ``QINGBERT_SERVE`` environment variable).
Where the platform has SO_REUSEPORT each process listens on a socket of its own and our own supervisor replaces the
ones that die (see :func:`_supervise` for why not uvicorn's ``--workers``); elsewhere uvicorn's supervisor shares one
socket.  A ``/metrics`` scrape then answers for the one process it reaches: every series of it is that process's,
and ``qingbert_process_info{pid="..."}`` (also ``pid`` in ``/health``) says which, so a collector keeps the
processes apart and sums them.
"""

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from qingbert.errors import QingbertError
from qingbert.serve.app import create_app
from qingbert.serve.config import ENV_API_KEY, ENV_CONFIG, ServeConfig

log = logging.getLogger(__name__)


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

    ucfg = uvicorn.Config("qingbert.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                          log_level=log_level, timeout_graceful_shutdown=5)
    try:
        Multiprocess(ucfg, sockets=[listen_socket(host, port)]).run()
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

    sock = listen_socket(host, port, reuse_port=True)
    cfg = uvicorn.Config("qingbert.serve.app:app_from_env", factory=True, log_level=log_level,
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

    probe = listen_socket(host, port, reuse_port=True)  # a taken port fails here, once, by name; port 0 -> one port
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


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
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


__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "listen_socket", "resolve_workers", "running_server", "serve"]
