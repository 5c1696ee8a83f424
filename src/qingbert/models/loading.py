"""The one way qingbert loads a model, config or tokenizer, and the one way it keeps transformers quiet.

A name is a local folder, a zoo name (its public hub id) or a hub id.  :func:`from_source` runs any
``from_pretrained``-like callable on it: a folder directly, the hub with every network failure turned into one
:class:`~qingbert.errors.QingbertError` that says what to download where (an offline machine fails in seconds,
not after the hub client's retries).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from qingbert.errors import QingbertError
from qingbert.models import zoo


def _looks_like_path(s: str) -> bool:
    return (s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1
            or os.path.isabs(s))


def resolve_source(name_or_path) -> tuple[str, bool]:
    """``(what to pass to from_pretrained, is_local_folder)``."""
    s = os.fspath(name_or_path)
    expanded = os.path.expanduser(s)
    if os.path.isdir(expanded):
        return expanded, True
    if os.path.exists(expanded):
        raise QingbertError(f"'{s}' is a file, not a model folder",
                            hint="pass the folder that holds config.json")
    if _looks_like_path(s):
        raise QingbertError(f"no such model folder '{s}'")
    spec = zoo.lookup(s)
    if spec is not None:
        if spec.hub_id is None:
            raise QingbertError(
                f"'{spec.name}' has no public weights on the Hugging Face hub",
                hint=f"build it from scratch with build_model('{spec.name}') and pre-train it",
            )
        return spec.hub_id, False
    return s, False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fast check that a TCP connection to the hub endpoint can be opened.

    The hub client retries connection errors with back-off (about 25 s before
    giving up), so without this probe an offline machine waits that long per
    file.  With a proxy configured a direct probe proves nothing, so we say
    "reachable" and let the real request decide.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(_hub_endpoint())
    host = url.hostname
    if not host:
        return True
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own, so the attempt runs in a thread.
    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_errors() -> tuple[type, ...]:
    errors: list[type] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    except ImportError:  # pragma: no cover - very old huggingface_hub
        pass
    # HTTP client errors that may escape un-wrapped; a client that was never
    # imported cannot have raised, so only look at the loaded ones.
    for mod, attr in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        exc = getattr(sys.modules.get(mod), attr, None)
        if isinstance(exc, type) and issubclass(exc, BaseException):
            errors.append(exc)
    return tuple(errors)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _no_network_error(repo: str, why: str) -> QingbertError:
    folder = repo.rsplit("/", 1)[-1]
    return QingbertError(
        f"cannot download '{repo}' ({why})",
        hint=f"on a connected machine run `hf download {repo} --local-dir {folder}` "
             "and pass that folder instead",
    )


def _from_hub(load, repo: str):
    """Run ``load(**kwargs)`` for a hub repo id, turning every hub failure into one QingbertError."""
    errors = _hub_errors()
    if _hub_offline():
        try:
            return load(local_files_only=True)
        except errors:
            raise _no_network_error(repo, "HF_HUB_OFFLINE is set and it is not in the local cache") from None
    if not _hub_reachable():
        # No network: still fine if the files are already in the local cache.
        try:
            return load(local_files_only=True)
        except errors:
            raise _no_network_error(repo, "no network access to the Hugging Face hub") from None
    try:
        return load()
    except errors as exc:
        msg = first_line(exc)
        low = msg.lower()
        if "couldn't connect" in low or "connection" in low or "timed out" in low:
            raise _no_network_error(repo, "the Hugging Face hub did not answer") from None
        if "not a valid model identifier" in low or "repository not found" in low or "404" in low:
            guess = zoo.did_you_mean(repo)
            hint = "check the name, or see `qingbert zoo`"
            if guess is not None:
                hint = f"did you mean '{guess}'? see `qingbert zoo`"
            raise QingbertError(
                f"'{repo}' is neither a local folder nor a model on the Hugging Face hub", hint=hint
            ) from None
        raise QingbertError(f"cannot load '{repo}' from the Hugging Face hub: {msg}") from None


def check_weights(folder) -> None:
    """Every ``*.safetensors`` file of a local model folder opens (its header and size agree): a truncated or damaged
    file is an error naming it, before transformers would report it as a traceback."""
    from safetensors import safe_open

    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="np") as fh:
                fh.keys()
        except Exception as e:  # noqa: BLE001 - safetensors' own error type
            raise QingbertError(f"{f}: truncated or corrupt weights ({first_line(e)})",
                                hint="re-run the stage that wrote it, or copy the folder again") from None


def from_source(name_or_path, load):
    """``load(source, **kw)`` for a local folder (its weights checked first) or a hub id (every hub failure one
    QingbertError)."""
    source, local = resolve_source(name_or_path)
    if local:
        check_weights(source)
        try:
            return load(source)
        except (OSError, ValueError) as exc:
            raise QingbertError(f"cannot load from folder '{source}': {first_line(exc)}") from None
    return _from_hub(lambda **kw: load(source, **kw), source)


def load_model(name_or_path, head: str = "mlm", loading_info: bool = False, **kwargs):
    """Load pretrained weights from a local folder, a zoo name (via its hub id) or a hub id.

    ``head`` is 'mlm' (masked-LM head; XLNetLMHeadModel for XLNet) or 'base'.
    With ``loading_info`` returns ``(model, info)`` where info lists missing/unexpected keys
    (e.g. an MLM head the checkpoint does not have).
    Extra keyword arguments (``revision``, ``cache_dir``, ``dtype`` ...) go to ``from_pretrained``.
    """
    zoo.check_head(head)

    def load(src, **kw):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(src, **{**kwargs, **kw})
        cls = zoo.model_class(config, head)
        return cls.from_pretrained(src, config=config, output_loading_info=loading_info, **{**kwargs, **kw})

    return from_source(name_or_path, load)


def load_tokenizer(name_or_path, **kwargs):
    """A fast BERT-style tokenizer from a folder (``tokenizer.json`` or only ``vocab.txt``), a zoo name or hub id;
    extra keyword arguments go to ``from_pretrained`` for the hub."""
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if path.is_dir():
        from transformers import AutoTokenizer, BertTokenizer

        if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
            try:
                return AutoTokenizer.from_pretrained(str(path))
            except Exception as e:  # noqa: BLE001 - a broken folder; say which
                raise QingbertError(f"{path}: cannot load tokenizer ({type(e).__name__}: {e})") from None
        if (path / "vocab.txt").exists():
            return BertTokenizer.from_pretrained(str(path))
        raise QingbertError(f"{path}: no tokenizer.json or vocab.txt in this folder")

    def load(src, **kw):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(src, **{**kwargs, **kw})

    return from_source(name_or_path, load)


def transformers_class(name: str):
    """A transformers class by name (``AutoModelForSequenceClassification`` ...)."""
    import transformers

    return getattr(transformers, name)


def load_pretrained(cls, name_or_path, **kwargs):
    """``cls.from_pretrained`` (a transformers class, or the name of one) for a folder / zoo name / hub id."""
    if isinstance(cls, str):
        cls = transformers_class(cls)
    return from_source(name_or_path, lambda src, **kw: cls.from_pretrained(src, **{**kwargs, **kw}))


def load_config(name_or_path, **kwargs):
    """The ``transformers`` config of a folder / zoo name / hub id."""
    return load_pretrained("AutoConfig", name_or_path, **kwargs)


def silence_transformers():
    """Turn off transformers' info lines and per-file progress bars; returns a function that restores them."""
    try:
        from transformers.utils import logging as tlog
    except ImportError:  # pragma: no cover
        return lambda: None
    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()

    def restore():
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()

    return restore


@contextmanager
def quiet_transformers():
    """No transformers progress bars or info lines (weights loading / writing, unused head weights) inside."""
    restore = silence_transformers()
    try:
        yield
    finally:
        restore()


def quiet_load(auto, folder, **kwargs):
    """``auto.from_pretrained(folder)`` (a class or its name in transformers) without transformers' chatter."""
    if isinstance(auto, str):
        auto = transformers_class(auto)
    check_weights(folder)
    with quiet_transformers():
        return auto.from_pretrained(str(folder), **kwargs)
