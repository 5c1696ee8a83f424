"""The sentence encoder: texts in, sentence vectors out, with the API of sentence-transformers' ``encode``.

:class:`SentenceEncoder` turns texts into vectors with the pooling of your choice (``mean``, ``cls``, ``max``,
``first-last-avg``, ``last-avg``, ``pooler``, and bert-as-service's ``REDUCE_MEAN``, ``REDUCE_MAX``,
``REDUCE_MEAN_MAX``, ``CLS_TOKEN``, ``NONE``; see :mod:`qingbert.embeddings.pooling`) from any layer, on any
backend of :func:`qingbert.models.backends.open_backend`.  Texts longer than ``max_len`` tokens are counted and
reported (:class:`TruncationWarning`), never cut silently.  :class:`HiddenStatesRunner` is the torch runner for
the poolings that need every layer or the pooler.

Texts are cleaned before tokenizing exactly as the training corpus was (:func:`qingbert.data.text.clean_text`:
full-width ASCII to half-width, control characters out), as :meth:`qingbert.deploy.inference.Model.predict` does:
a vocabulary built from cleaned text has no full-width comma, so raw ``，`` would be ``[UNK]``.
sentence-transformers tokenizes the raw text, so the two give the same vectors on text without full-width
characters (or with ``clean=False``); clean the texts with ``clean_text`` before handing them to
sentence-transformers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qingbert.data.text import clean_text, split_pair
from qingbert.embeddings.pooling import NEEDS_TORCH, canonical_pooling, masked_mean, pool_tokens
from qingbert.embeddings.st_format import (
    folder_settings,
    has_trained_pooler,
    read_json,
    save_sentence_transformers,
    whitening_to_dense,
)
from qingbert.errors import QingbertError
from qingbert.models.backends import HIDDEN, describe, open_backend
from qingbert.models.loading import load_tokenizer, quiet_load

if TYPE_CHECKING:
    import torch

# torch (and the training package's batching, which imports it) are imported where they are used, so that
# building the command line stays as light as the rest of qingbert's.

PROGRESS_MIN = 2048  # show_progress_bar=None: a bar (on a terminal) from this many texts on
TOKENIZE_CHUNK = 8192  # texts tokenized at a time, so one call's memory stays bounded


class TruncationWarning(UserWarning):
    """Some texts were longer than ``max_len`` tokens and were truncated (the message says how many)."""


# once per encode() call, even when the count repeats (a user's own filters still win)
warnings.filterwarnings("always", category=TruncationWarning, append=True)


# ---------------------------------------------------------------------------
# runners: numpy inputs -> outputs


class HiddenStatesRunner:
    """The folder's encoder (``AutoModel``) on torch, returning every layer's hidden states and the pooler
    output, for the poolings that need more than the last layer."""

    name = "torch"

    def __init__(self, folder: str | Path, threads: int = 0):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = quiet_load("AutoModel", folder)
        self.model.eval()

    def __call__(self, inputs: dict) -> dict:
        import torch

        feed = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in inputs.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            res = self.model(**feed, output_hidden_states=True)
        out = {"hidden_states": [h.float() for h in res.hidden_states], HIDDEN: res.hidden_states[-1].float()}
        if getattr(res, "pooler_output", None) is not None:
            out["pooler_output"] = res.pooler_output.float()
        return out


# ---------------------------------------------------------------------------
# the encoder


def _tensor(x) -> torch.Tensor:
    """A backend output (numpy or torch) as a float32 tensor (no copy where it already is one)."""
    import torch

    return (x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))).float()


def _model_config(folder: Path) -> dict:
    return read_json(folder / "config.json") if (folder / "config.json").exists() else {}


class SentenceEncoder:
    """Sentence vectors from a model folder, with the API of sentence-transformers' ``encode``.

    ``model_dir``: any folder qingbert writes (pretrained, distilled, fine-tuned, exported, SimCSE, whitened),
    a plain transformers folder, or a sentence-transformers folder (Transformer + Pooling + identity Dense +
    Normalize).  ``pooling=None`` takes the folder's own (mean for a plain model); ``pooling_layer`` counts from
    the end (-1 the last layer, -2 the one before ..., ``-(layers + 1)`` the embedding output).
    ``max_len=None``: the folder's ``max_seq_length``, else the model's limit (at most 512 tokens).
    ``truncation``: ``"warn"`` (count the texts longer than ``max_len``, warn once per call with the count,
    keep it in :attr:`last_truncated`) or ``"raise"`` (a :class:`~qingbert.errors.QingbertError` instead).
    ``whitening=False`` ignores a whitening (Dense) module the folder holds.  ``clean=False`` tokenizes texts as
    given (as sentence-transformers does) instead of cleaning them like the training text.  After each
    :meth:`encode`, :attr:`last_lengths` holds every text's token count (after truncation).  ``runner``: an
    already opened backend of this folder (e.g. :class:`qingbert.deploy.inference.Model`'s), so no second copy loads.

    Backends: ``mean``, ``cls``, ``max``, ``mean-max`` and ``none`` of the last layer run on any backend of
    :func:`qingbert.models.backends.open_backend` (``backend=None``: the fastest the folder has, as
    :func:`~qingbert.models.backends.available_backends` ranks them).  ``first-last-avg``, ``pooler`` and any
    ``pooling_layer`` other than -1 need every layer's hidden states (or the pooler), so they run on the torch
    backend with ``output_hidden_states=True``; asking for an ONNX backend with them is an error.
    """

    def __init__(self, model_dir: str | Path, pooling: str | None = None, pooling_layer: int | None = None,
                 max_len: int | None = None, backend: str | None = None, threads: int = 0,
                 truncation: str = "warn", whitening: bool = True, clean: bool = True, runner=None):
        self.folder = Path(model_dir)
        if not self.folder.is_dir():
            raise QingbertError(f"no such model folder '{self.folder}'")
        s = folder_settings(self.folder)
        self.settings = s
        self.pooling = canonical_pooling(pooling) if pooling is not None else s.pooling
        self.pooling_layer = s.pooling_layer if pooling_layer is None else pooling_layer
        self.dense = s.dense if whitening else None
        self.normalize = s.normalize
        if self.dense is not None and (self.pooling, self.pooling_layer) != (s.pooling, s.pooling_layer):
            raise QingbertError(
                f"{self.folder}: its whitening was fitted on {s.pooling} pooling (layer {s.pooling_layer}), not "
                f"{self.pooling} (layer {self.pooling_layer})",
                hint="keep the folder's pooling, or pass whitening=False")
        self.model_root = s.model_root
        config = _model_config(self.model_root)
        self.hidden_size = int(config.get("hidden_size") or config.get("d_model") or 0)
        self.num_layers = int(config.get("num_hidden_layers") or 0)
        self._check_layer()
        positions = int(config.get("max_position_embeddings") or 512)
        self.max_len = int(max_len) if max_len else min(int(s.max_len or 512), positions)
        if self.max_len < 4:
            raise QingbertError(f"max_len {self.max_len} is too small (at least 4 tokens)")
        if self.max_len > positions:
            raise QingbertError(f"max_len {self.max_len} exceeds the model's {positions} positions")
        self.truncation = self._check_truncation(truncation)
        self.tokenizer = load_tokenizer(str(self.model_root))
        self.needs_torch = self.pooling in NEEDS_TORCH or self.pooling_layer != -1
        if self.needs_torch:
            if backend not in (None, "torch"):
                raise QingbertError(
                    f"pooling '{self.pooling}' (layer {self.pooling_layer}) needs every layer's hidden states or "
                    f"the pooler, which only the torch backend gives, not {backend}",
                    hint="use backend='torch' (or leave it unset) or a last-layer pooling: mean, cls, max")
            if self.pooling == "pooler" and not has_trained_pooler(self.model_root):
                raise QingbertError(f"{self.model_root}: the model has no trained pooler (a masked-LM checkpoint)",
                                    hint="use cls or mean pooling")
            self.runner = HiddenStatesRunner(self.model_root, threads)
        elif runner is not None:
            self.runner = runner
        else:
            self.runner = open_backend(self.model_root, backend, threads, describe(self.model_root))
        self.backend = self.runner.name
        self.clean = clean
        self.last_truncated = 0
        self.last_lengths: list[int] = []

    def __repr__(self) -> str:
        return (f"qingbert.SentenceEncoder({str(self.folder)!r}, pooling={self.pooling!r}, "
                f"pooling_layer={self.pooling_layer}, backend={self.backend!r}, dim={self.dimension})")

    # -- settings ----------------------------------------------------------------
    def _check_layer(self) -> None:
        layer = self.pooling_layer
        if not isinstance(layer, int) or isinstance(layer, bool) or layer >= 0:
            raise QingbertError(f"pooling_layer must be a negative integer (-1 = last layer), got {layer!r}")
        if self.num_layers and layer < -(self.num_layers + 1):
            raise QingbertError(f"pooling_layer {layer}: the model has {self.num_layers} layers",
                                hint=f"use -1 ... -{self.num_layers + 1} (the embedding output)")
        if self.pooling in NEEDS_TORCH and layer != -1:
            raise QingbertError(f"pooling '{self.pooling}' chooses its own layers; leave pooling_layer at -1")

    @staticmethod
    def _check_truncation(mode: str) -> str:
        if mode not in ("warn", "raise"):
            raise QingbertError(f"truncation must be 'warn' or 'raise', not {mode!r}")
        return mode

    @property
    def pooled_size(self) -> int:
        """Width of the pooled vector (before any whitening)."""
        return self.hidden_size * (2 if self.pooling == "mean-max" else 1)

    @property
    def dimension(self) -> int:
        """Width of the vectors ``encode`` returns."""
        return int(self.dense[0].shape[0]) if self.dense is not None else self.pooled_size

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    @property
    def max_seq_length(self) -> int:
        """sentence-transformers' name for :attr:`max_len`."""
        return self.max_len

    def set_whitening(self, kernel, bias) -> None:
        """Apply ``y = (x + bias) @ kernel`` to every pooled vector from now on (see :func:`fit_whitening`)."""
        self.dense = whitening_to_dense(kernel, bias)
        if self.dense[0].shape[1] != self.pooled_size:
            self.dense = None
            raise QingbertError(f"the whitening takes {np.shape(kernel)[0]}-dimensional vectors, this encoder's "
                                f"pooling gives {self.pooled_size}")

    # -- tokenization ------------------------------------------------------------
    def _split(self, items: list) -> list[tuple[str, str | None]]:
        tidy = clean_text if self.clean else (lambda t: t)
        out = []
        for i, x in enumerate(items):
            if not isinstance(x, str):
                raise QingbertError(f"input {i}: encode() takes texts (strings), got {type(x).__name__}",
                                    hint="write a sentence pair as 'text_a ||| text_b'")
            pair = split_pair(x)
            if pair is not None:
                out.append((tidy(pair[0]), tidy(pair[1])))
            else:
                out.append((tidy(x), None))
        return out

    def _tokenize(self, texts: list[tuple[str, str | None]]) -> tuple[list, list, list[int]]:
        """``input_ids`` and ``token_type_ids`` per text (cut to ``max_len``), and the indices of the cut ones."""
        ids: list = [None] * len(texts)
        types: list = [None] * len(texts)
        truncated: list[int] = []
        singles = [i for i, (_, b) in enumerate(texts) if b is None]
        pairs = [i for i, (_, b) in enumerate(texts) if b is not None]
        for group, is_pair in ((singles, False), (pairs, True)):
            if not group:
                continue
            a = [texts[i][0] for i in group]
            b = [texts[i][1] for i in group] if is_pair else None
            enc = self.tokenizer(a, b, truncation=False, verbose=False)
            long = [k for k, x in enumerate(enc["input_ids"]) if len(x) > self.max_len]
            cut = {}
            if long:  # only the long ones are tokenized again, cut the way sentence-transformers cuts
                again = self.tokenizer([a[k] for k in long], [b[k] for k in long] if is_pair else None,
                                       truncation=True, max_length=self.max_len)
                cut = {k: (again, j) for j, k in enumerate(long)}
            for k, i in enumerate(group):
                src, j = cut.get(k, (enc, k))
                ids[i] = src["input_ids"][j]
                tt = src.get("token_type_ids")
                types[i] = tt[j] if tt is not None else [0] * len(ids[i])
            truncated += [group[k] for k in long]
        return ids, types, sorted(truncated)

    # -- the API -----------------------------------------------------------------
    def encode(self, sentences, batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, show_progress_bar: bool | None = None, truncation: str | None = None):
        """Vectors of a text (a 1-D float32 array) or a list of texts (``(n, dim)`` float32; a torch tensor with
        ``convert_to_numpy=False``).  ``'a ||| b'`` encodes a sentence pair (``token_type_ids`` 1 on ``b``).
        Pooling ``none`` gives each text's token vectors instead: a list of ``(tokens_i, hidden)`` arrays
        ([CLS] and [SEP] included; no whitening or normalisation).  Rows come back in input order; batches are
        formed by length (less padding)."""
        import torch
        from tqdm.auto import tqdm

        if truncation is not None:
            self._check_truncation(truncation)
        mode = truncation or self.truncation
        if not isinstance(batch_size, int) or batch_size < 1:
            raise QingbertError(f"batch_size must be a positive integer, got {batch_size!r}")
        single = isinstance(sentences, str)
        if sentences is None:
            raise QingbertError("encode() takes a text or a list of texts, got None")
        items = [sentences] if single else list(sentences)
        texts = self._split(items)
        n = len(texts)
        disable = {True: False, False: True}.get(show_progress_bar, None if n >= PROGRESS_MIN else True)
        bar = tqdm(total=math.ceil(n / batch_size), desc="encode", unit="batch", disable=disable)
        tokens_out: list = [None] * n
        vecs = None if self.pooling == "none" else np.zeros((n, self.dimension), dtype=np.float32)
        truncated: list[int] = []
        lengths: list[int] = []
        try:
            for lo in range(0, n, TOKENIZE_CHUNK):
                chunk = texts[lo:lo + TOKENIZE_CHUNK]
                ids, types, cut = self._tokenize(chunk)
                truncated += [lo + i for i in cut]
                lengths += [len(x) for x in ids]
                if truncated and mode == "raise":
                    self.last_truncated = len(truncated)
                    raise QingbertError(f"input {truncated[0]} is longer than max_len={self.max_len} tokens "
                                        f"({len(truncated)} of the first {lo + len(chunk)} texts are)",
                                        hint="raise max_len, shorten the texts, or use truncation='warn'")
                order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: memory peaks early
                for s in range(0, len(chunk), batch_size):
                    idx = order[s:s + batch_size]
                    pooled = self._forward([ids[i] for i in idx], [types[i] for i in idx])
                    if vecs is None:
                        for j, i in enumerate(idx):
                            tokens_out[lo + int(i)] = pooled[j]
                    else:
                        vecs[lo + idx] = pooled
                    bar.update(1)
        finally:
            bar.close()
        self.last_truncated = len(truncated)
        self.last_lengths = lengths
        if truncated:
            warnings.warn(f"{len(truncated)} of {n} texts were longer than max_len={self.max_len} tokens and "
                          f"were truncated (first: input {truncated[0]})", TruncationWarning, stacklevel=2)
        if vecs is None:
            res = tokens_out if convert_to_numpy else [torch.from_numpy(t) for t in tokens_out]
            return res[0] if single else res
        if normalize_embeddings or self.normalize:
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        if single:
            vecs = vecs[0]
        return vecs if convert_to_numpy else torch.from_numpy(vecs)

    def _forward(self, ids: list, types: list):
        """One batch: pooled (and whitened) vectors ``(b, dim)`` float32, or a list of token arrays."""
        import torch.nn.functional as F

        from qingbert.training.batching import pad_rows  # imports torch: not at the top (CLI parser)

        batch = pad_rows([{"input_ids": a, "token_type_ids": t} for a, t in zip(ids, types)],
                         self.tokenizer.pad_token_id)
        out = self.runner({k: v.numpy() for k, v in batch.items()})
        mask = batch["attention_mask"]
        hidden = _tensor(out["hidden_states"][self.pooling_layer] if self.pooling_layer != -1 else out[HIDDEN])
        if self.pooling == "none":
            keep = mask.bool()
            return [hidden[j][keep[j]].numpy().copy() for j in range(hidden.shape[0])]
        if self.pooling == "first-last-avg":
            hs = out["hidden_states"]
            first = hs[1] if len(hs) > 1 else hs[0]
            pooled = (masked_mean(_tensor(first), mask) + masked_mean(_tensor(hs[-1]), mask)) / 2
        elif self.pooling == "pooler":
            if "pooler_output" not in out:
                raise QingbertError(f"{self.model_root}: the model has no pooler output", hint="use cls or mean")
            pooled = _tensor(out["pooler_output"])
        else:
            pooled = pool_tokens(hidden, mask, self.pooling)
        if self.dense is not None:
            pooled = F.linear(pooled, self.dense[0], self.dense[1])
        return pooled.numpy()

    # -- saving --------------------------------------------------------------------
    def save(self, out_dir: str | Path, record: dict | None = None) -> dict:
        """Write this encoder (model, tokenizer, pooling, whitening, normalisation) as a sentence-transformers
        folder; see :func:`save_sentence_transformers`."""
        model = quiet_load("AutoModel", self.model_root)
        return save_sentence_transformers(out_dir, model, self.tokenizer, pooling=self.pooling,
                                          pooling_layer=self.pooling_layer, max_len=self.max_len, dense=self.dense,
                                          normalize=self.normalize,
                                          pooler_trained=has_trained_pooler(self.model_root),
                                          record=dict({"stage": "save", "base_model": str(self.folder)},
                                                      **(record or {})))


__all__ = ["SentenceEncoder", "TruncationWarning", "HiddenStatesRunner"]
