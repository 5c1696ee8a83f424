"""Sentence embeddings: an encoder like sentence-transformers', BERT-whitening, SimCSE and STS evaluation.

* :class:`SentenceEncoder` turns texts into vectors with the pooling of your choice (``mean``, ``cls``,
  ``max``, ``first-last-avg``, ``last-avg``, ``pooler``, and bert-as-service's ``REDUCE_MEAN``,
  ``REDUCE_MAX``, ``REDUCE_MEAN_MAX``, ``CLS_TOKEN``, ``NONE``) from any layer, on any backend of
  :mod:`qingbert.inference`.  Texts longer than ``max_len`` tokens are counted and reported, never cut silently.
* :func:`fit_whitening` / :func:`whiten_model`: BERT-whitening (Su et al. 2021), stored with the model as an
  identity-activation ``Dense`` module, so sentence-transformers applies it too.
* :func:`train_simcse`: unsupervised SimCSE (dropout as augmentation, in-batch negatives, InfoNCE) or
  supervised training on labelled pairs (CoSENT, and/or in-batch negatives with the positive pairs), as
  objectives of the one training loop (:class:`qingbert.train.Trainer`).
* :func:`evaluate_sts`: Spearman correlation of cosine similarity with the gold labels of sentence pairs
  (LCQMC / BQ / AFQMC files through :mod:`qingbert.tasks`, or a list of ``(a, b, score)``).
* :func:`save_sentence_transformers`: the sentence-transformers folder layout (``modules.json``,
  ``1_Pooling/config.json``, ``2_Dense``, ``Normalize``, ``sentence_bert_config.json``, the transformers model
  and tokenizer with ``vocab.txt`` at the root), so ``SentenceTransformer(DIR)`` loads it without qingbert and
  gives the same vectors.  Module references and configs follow sentence-transformers 6.2.

Which poolings sentence-transformers can express: ``mean``, ``cls``, ``max`` and ``REDUCE_MEAN_MAX`` (its
``("mean", "max")`` pooling), all from the last layer.  ``first-last-avg``, ``pooler``, a ``pooling_layer``
other than -1 and ``NONE`` cannot be; such folders are written without ``modules.json`` (our encoder still
loads them from ``manifest.json``), and the result says so.

Texts are cleaned before tokenizing exactly as the training corpus was (:func:`qingbert.corpus.clean_text`:
full-width ASCII to half-width, control characters out), as :meth:`qingbert.inference.Model.predict` does: a
vocabulary built from cleaned text has no full-width comma, so raw ``，`` would be ``[UNK]``.  sentence-transformers
tokenizes the raw text, so the two give the same vectors on text without full-width characters (or with
``clean=False``); clean the texts with ``clean_text`` before handing them to sentence-transformers.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from qingbert.errors import QingbertError, closest
from qingbert.models.backends import HIDDEN, describe, open_backend
from qingbert.data.text import split_pair
from qingbert.manifest import EMBEDDINGS_FORMAT, atomic_write_text, read_manifest, write_manifest

# torch, transformers and the training loop are imported where they are used, so that building the command
# line (add_cli) stays as light as the rest of qingbert's.

FORMAT = EMBEDDINGS_FORMAT
POOLINGS = ("mean", "cls", "max", "mean-max", "first-last-avg", "pooler", "none")
POOLING_ALIASES = {"last-avg": "mean", "reduce-mean": "mean", "reduce-max": "max", "reduce-mean-max": "mean-max",
                   "cls-token": "cls"}
#: our pooling -> sentence-transformers' Pooling ``pooling_mode`` (only last-layer poolings have one)
ST_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "mean-max": ["mean", "max"]}
NEEDS_TORCH = ("first-last-avg", "pooler")  # poolings that need every layer / the pooler: torch backend only
PROGRESS_MIN = 2048  # show_progress_bar=None: a bar (on a terminal) from this many texts on
TOKENIZE_CHUNK = 8192  # texts tokenized at a time, so one call's memory stays bounded
ST_TYPES = {"Transformer": "sentence_transformers.base.modules.transformer.Transformer",
            "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            "Dense": "sentence_transformers.base.modules.dense.Dense",
            "Normalize": "sentence_transformers.base.modules.normalize.Normalize"}
IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")
RANK_TOLERANCE = 1e-10  # whitening: a direction with variance below this share of the largest has none


class TruncationWarning(UserWarning):
    """Some texts were longer than ``max_len`` tokens and were truncated (the message says how many)."""


# once per encode() call, even when the count repeats (a user's own filters still win)
warnings.filterwarnings("always", category=TruncationWarning, append=True)


# ---------------------------------------------------------------------------
# pooling


def canonical_pooling(name: str) -> str:
    """Our name for a pooling (``REDUCE_MEAN`` -> ``mean``, ``last-avg`` -> ``mean`` ...); an error names the
    known ones."""
    if not isinstance(name, str):
        raise QingbertError(f"pooling must be a name, not {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = POOLING_ALIASES.get(key, key)
    if key not in POOLINGS:
        known = list(POOLINGS) + ["last-avg", "REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "NONE"]
        hint = closest(name, known)
        raise QingbertError(f"unknown pooling '{name}'",
                            hint=(f"did you mean '{hint}'? " if hint else "") + "known: " + ", ".join(known))
    return key


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(1).values


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vectors from one layer's token vectors ``(batch, seq, d)`` over the real tokens of ``mask``
    (``[CLS]`` and ``[SEP]`` included, padding excluded): ``mean``, ``cls`` (the first token), ``max`` or
    ``mean-max`` (the two concatenated).  Differentiable: SimCSE trains through it."""
    if pooling == "mean":
        return _masked_mean(hidden, mask)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return _masked_max(hidden, mask)
    if pooling == "mean-max":
        import torch

        return torch.cat([_masked_mean(hidden, mask), _masked_max(hidden, mask)], dim=-1)
    raise QingbertError(f"pooling '{pooling}' does not pool one layer's tokens")


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
        self.model = _load_auto_model(folder)
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


def _has_trained_pooler(folder: Path) -> bool:
    """Whether the folder's weights hold a pooler (a masked-LM checkpoint has none: AutoModel would make a
    random one)."""
    import torch

    rec = ((read_manifest(folder) or {}).get("embed") or {})
    if "pooler_trained" in rec:
        return bool(rec["pooler_trained"])
    for f in folder.glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as fh:
            if any("pooler" in k for k in fh.keys()):
                return True
    for f in folder.glob("pytorch_model*.bin"):
        state = torch.load(f, map_location="cpu", weights_only=True)
        if any("pooler" in k for k in state):
            return True
    return False


# ---------------------------------------------------------------------------
# what a folder says about its pooling (our manifest, or a sentence-transformers modules.json)


@dataclass
class FolderSettings:
    model_root: Path
    pooling: str = "mean"
    pooling_layer: int = -1
    max_len: int | None = None
    dense: tuple | None = None  # (weight (k, d), bias (k,)) float32 tensors: y = x @ weight.T + bias
    normalize: bool = False
    source: str = "transformers folder"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise QingbertError(f"{path}: cannot read ({e})") from None


def _load_dense(folder: Path) -> tuple:
    """A sentence-transformers ``Dense`` folder with identity activation -> ``(weight, bias)``."""
    import torch

    cfg = _read_json(folder / "config.json")
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in IDENTITY:
        raise QingbertError(f"{folder}: a Dense module with activation {act} (only identity-activation Dense "
                            "modules, e.g. whitening, are supported)")
    if cfg.get("use_residual"):
        raise QingbertError(f"{folder}: a residual Dense module is not supported")
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise QingbertError(f"{folder}: no model.safetensors or pytorch_model.bin for the Dense module")
    w = state["linear.weight"].float()
    b = state.get("linear.bias")
    return w, (b.float() if b is not None else torch.zeros(w.shape[0]))


def _compose(first: tuple | None, then: tuple) -> tuple:
    """Two affine maps in a row as one."""
    if first is None:
        return then
    w1, b1 = first
    w2, b2 = then
    return w2 @ w1, w2 @ b1 + b2


def _st_pooling(cfg: dict, where: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:  # the configs of sentence-transformers < 5.4: one flag per mode (this order)
        legacy = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                  ("pooling_mode_mean_tokens", "mean"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                  ("pooling_mode_weightedmean_tokens", "weightedmean"), ("pooling_mode_lasttoken", "lasttoken"))
        mode = [m for k, m in legacy if cfg.get(k)] or ["mean"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    for ours, theirs in ST_POOLING.items():
        if modes == ([theirs] if isinstance(theirs, str) else theirs):
            return ours
    raise QingbertError(f"{where}: pooling {modes} has no qingbert equivalent",
                        hint="supported: mean, cls, max, and mean+max")


def _st_settings(folder: Path) -> FolderSettings:
    """Read a sentence-transformers folder: Transformer, Pooling, identity Dense modules, Normalize."""
    modules = _read_json(folder / "modules.json")
    s = FolderSettings(model_root=folder, source="sentence-transformers folder")
    kinds = []
    for mod in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        path = folder / mod.get("path", "")
        kinds.append(kind)
        if kind == "Transformer":
            s.model_root = path
            for name in ("sentence_bert_config.json", "sentence_roberta_config.json"):
                if (path / name).exists():
                    s.max_len = _read_json(path / name).get("max_seq_length") or None
                    break
            if s.max_len is None and (path / "tokenizer_config.json").exists():
                # sentence-transformers >= 5.4 keeps max_seq_length as the tokenizer's model_max_length
                limit = _read_json(path / "tokenizer_config.json").get("model_max_length")
                s.max_len = int(limit) if isinstance(limit, (int, float)) and 0 < limit < 100_000 else None
        elif kind == "Pooling":
            s.pooling = _st_pooling(_read_json(path / "config.json"), path)
        elif kind == "Dense":
            s.dense = _compose(s.dense, _load_dense(path))
        elif kind == "Normalize":
            s.normalize = True
        else:
            raise QingbertError(f"{folder}/modules.json: module {mod.get('type')} is not supported",
                                hint="supported: Transformer, Pooling, Dense (identity activation), Normalize")
    if kinds[:2] != ["Transformer", "Pooling"]:
        raise QingbertError(f"{folder}/modules.json: expected Transformer then Pooling, found {', '.join(kinds)}")
    return s


def folder_settings(folder: str | Path) -> FolderSettings:
    """Pooling, layer, max length, whitening (Dense) and normalisation a folder was saved with: from its
    qingbert manifest, else its sentence-transformers ``modules.json``, else the defaults (mean, last layer)."""
    folder = Path(folder)
    m = read_manifest(folder) or {}
    rec = m.get("embed") if m.get("format") == FORMAT else None
    if rec:
        dense = _load_dense(folder / rec["dense"]) if rec.get("dense") else None
        return FolderSettings(model_root=folder, pooling=rec.get("pooling", "mean"),
                              pooling_layer=int(rec.get("pooling_layer", -1)), max_len=rec.get("max_seq_length"),
                              dense=dense, normalize=bool(rec.get("normalize")), source="qingbert embeddings folder")
    if (folder / "modules.json").exists():
        return _st_settings(folder)
    return FolderSettings(model_root=folder)


# ---------------------------------------------------------------------------
# the encoder


def _tensor(x) -> torch.Tensor:
    """A backend output (numpy or torch) as a float32 tensor (no copy where it already is one)."""
    import torch

    return (x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))).float()


@contextmanager
def quiet_transformers():
    """No transformers progress bars or info lines (weights loading / writing, unused head weights) inside."""
    from transformers.utils import logging as tlog

    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()


def _load_auto_model(folder: str | Path, **kwargs):
    """``transformers.AutoModel`` of a folder, quietly."""
    import transformers

    with quiet_transformers():
        return transformers.AutoModel.from_pretrained(str(folder), **kwargs)


def _model_config(folder: Path) -> dict:
    return _read_json(folder / "config.json") if (folder / "config.json").exists() else {}


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
    already opened backend of this folder (e.g. :class:`qingbert.inference.Model`'s), so no second copy loads.

    Backends: ``mean``, ``cls``, ``max``, ``mean-max`` and ``none`` of the last layer run on any backend of
    :func:`qingbert.inference.open_backend` (``backend=None``: the fastest the folder has, as
    :func:`~qingbert.inference.available_backends` ranks them).  ``first-last-avg``, ``pooler`` and any
    ``pooling_layer`` other than -1 need every layer's hidden states (or the pooler), so they run on the torch
    backend with ``output_hidden_states=True``; asking for an ONNX backend with them is an error.
    """

    def __init__(self, model_dir: str | Path, pooling: str | None = None, pooling_layer: int | None = None,
                 max_len: int | None = None, backend: str | None = None, threads: int = 0,
                 truncation: str = "warn", whitening: bool = True, clean: bool = True, runner=None):
        from qingbert.models.loading import load_tokenizer

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
            if self.pooling == "pooler" and not _has_trained_pooler(self.model_root):
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
        from qingbert.data.text import clean_text

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

        from qingbert.training.batching import pad_rows

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
            pooled = (_masked_mean(_tensor(first), mask) + _masked_mean(_tensor(hs[-1]), mask)) / 2
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
        model = _load_auto_model(self.model_root)
        return save_sentence_transformers(out_dir, model, self.tokenizer, pooling=self.pooling,
                                          pooling_layer=self.pooling_layer, max_len=self.max_len, dense=self.dense,
                                          normalize=self.normalize,
                                          pooler_trained=_has_trained_pooler(self.model_root),
                                          record=dict({"stage": "save", "base_model": str(self.folder)},
                                                      **(record or {})))


# ---------------------------------------------------------------------------
# the sentence-transformers layout


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def save_sentence_transformers(out_dir: str | Path, model, tokenizer, *, pooling: str = "mean", pooling_layer: int = -1,
                               max_len: int = 128, dense: tuple | None = None, normalize: bool = False,
                               pooler_trained: bool = True, record: dict | None = None) -> dict:
    """Write ``model`` (a transformers encoder) and ``tokenizer`` in the sentence-transformers layout.

    Root: the transformers model (``config.json``, ``model.safetensors``) and tokenizer (with ``vocab.txt``),
    ``sentence_bert_config.json`` (``max_seq_length``), ``config_sentence_transformers.json`` and
    ``modules.json``; then ``1_Pooling/config.json``, ``2_Dense`` (the whitening: identity activation,
    ``weight`` = kernel.T, ``bias`` = bias @ kernel) and ``N_Normalize`` where present; and ``manifest.json``.
    A pooling sentence-transformers cannot express (``first-last-avg``, ``pooler``, ``none``, a layer other
    than -1) gets no ``modules.json`` (so sentence-transformers never loads it with a different pooling);
    qingbert's :class:`SentenceEncoder` still loads it.  Returns ``{"out", "sentence_transformers", "note",
    "dimension"}``."""
    import torch

    from qingbert.models.tokenizer import save_tokenizer

    out = Path(out_dir)
    pooling = canonical_pooling(pooling)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    hidden = int(model.config.hidden_size)
    st_ok = pooling in ST_POOLING and pooling_layer == -1
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TYPES["Transformer"]}]
    atomic_write_text(out / "sentence_bert_config.json",
                      json.dumps({"max_seq_length": int(max_len), "do_lower_case": False}, indent=2) + "\n")
    for stale in list(out.glob("[0-9]_Pooling")) + list(out.glob("[0-9]_Dense")) + list(out.glob("[0-9]_Normalize")):
        shutil.rmtree(stale)
    if st_ok:
        _write_module(out / "1_Pooling", {"embedding_dimension": hidden, "pooling_mode": ST_POOLING[pooling],
                                          "include_prompt": True})
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_TYPES["Pooling"]})
    dim = hidden * (2 if pooling == "mean-max" else 1)
    dense_path = None
    if dense is not None and pooling != "none":
        from safetensors.torch import save_file

        w, b = (torch.as_tensor(x, dtype=torch.float32).contiguous() for x in dense)
        if w.shape[1] != dim:
            raise QingbertError(f"the whitening takes {w.shape[1]}-dimensional vectors, the pooling gives {dim}")
        idx = len(modules)
        dense_path = f"{idx}_Dense"
        _write_module(out / dense_path, {"in_features": int(w.shape[1]), "out_features": int(w.shape[0]),
                                         "bias": True, "activation_function": IDENTITY[0]})
        save_file({"linear.weight": w, "linear.bias": b}, str(out / dense_path / "model.safetensors"))
        modules.append({"idx": idx, "name": str(idx), "path": dense_path, "type": ST_TYPES["Dense"]})
        dim = int(w.shape[0])
    if normalize and pooling != "none":
        idx = len(modules)
        _write_module(out / f"{idx}_Normalize", {})
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": ST_TYPES["Normalize"]})
    note = None
    if st_ok:
        atomic_write_text(out / "modules.json", json.dumps(modules, indent=2) + "\n")
        atomic_write_text(out / "config_sentence_transformers.json", json.dumps(_st_model_config(), indent=2) + "\n")
    else:
        for name in ("modules.json", "config_sentence_transformers.json"):
            (out / name).unlink(missing_ok=True)
        what = f"pooling '{pooling}'" + (f" of layer {pooling_layer}" if pooling_layer != -1 else "")
        note = (f"{what} has no sentence-transformers equivalent: no modules.json written, so only qingbert's "
                "SentenceEncoder loads this folder (sentence-transformers can express mean, cls, max and "
                "mean-max of the last layer)")
    embed = {"pooling": pooling, "pooling_layer": int(pooling_layer), "max_seq_length": int(max_len),
             "dense": dense_path, "normalize": bool(normalize), "dimension": dim,
             "sentence_transformers": st_ok, "pooler_trained": bool(pooler_trained)}
    manifest = {"format": FORMAT, **(record or {}), "embed": embed}
    if note:
        manifest["note"] = note
    write_manifest(out, manifest)
    return {"out": str(out), "sentence_transformers": st_ok, "note": note, "dimension": dim}


def _write_module(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=4) + "\n")


def _st_model_config() -> dict:
    versions = {}
    for lib, key in (("sentence-transformers", "sentence_transformers"), ("transformers", "transformers"),
                     ("torch", "pytorch")):
        try:
            versions[key] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return {"model_type": "SentenceTransformer", "__version__": versions, "prompts": {},
            "default_prompt_name": None, "similarity_fn_name": "cosine"}


# ---------------------------------------------------------------------------
# whitening


def fit_whitening(vectors, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT-whitening (Su et al. 2021): ``(kernel (d, k), bias (d,))`` with ``y = (x + bias) @ kernel`` giving
    zero mean and identity covariance on ``vectors``.  ``bias = -mean``; ``kernel = U diag(1/sqrt(s))`` from the
    SVD of the (sample) covariance, its first ``n_components`` columns (the largest-variance directions).

    ``n_components=None`` keeps every direction the vectors vary in.  That is usually ``d - 1``, not ``d``: a
    post-LayerNorm encoder's token vectors (and so their mean or [CLS]) lie on a hyperplane, so one direction
    has no variance and cannot be scaled to unit variance; asking for it explicitly is an error."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise QingbertError(f"whitening takes a 2-D array of vectors (n, d), got shape {x.shape}")
    n, d = x.shape
    k = d if n_components is None else n_components
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise QingbertError(f"n_components must be a positive integer, got {n_components!r}")
    if k > d:
        raise QingbertError(f"n_components {k} is larger than the vectors' dimension {d}")
    if n < k + 1:
        raise QingbertError(f"whitening to {k} dimensions needs at least {k + 1} vectors, got {n}",
                            hint="give more sentences or a smaller n_components")
    if not np.isfinite(x).all():
        raise QingbertError("the vectors hold NaN or infinite values")
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    u, s, _ = np.linalg.svd(cov)
    rank = int((s > max(s[0], 1e-300) * RANK_TOLERANCE).sum())
    if n_components is None:
        k = rank  # a direction without variance cannot be scaled to unit variance
    if rank == 0 or k > rank:
        raise QingbertError(f"the vectors span only {rank} dimensions, fewer than the {k} asked for",
                            hint="use more varied sentences or a smaller n_components")
    kernel = u[:, :k] / np.sqrt(s[:k])
    return kernel, -mu


def whitening_to_dense(kernel, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` as the affine map of an identity-activation Dense module: ``weight = kernel.T``,
    ``bias = bias @ kernel`` (so ``x @ weight.T + b == (x + bias) @ kernel``)."""
    import torch

    kernel = np.asarray(kernel, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    return (torch.from_numpy(kernel.T.astype(np.float32).copy()),
            torch.from_numpy((bias @ kernel).astype(np.float32)))


def read_corpus(path: str | Path) -> tuple[list[str], dict]:
    """Sentences of a text file (one per line, UTF-8) and ``{"file", "lines", "empty", "sentences"}``: blank lines
    are skipped and counted (the same reader as ``qingbert index build``)."""
    from qingbert.data.corpus import read_corpus as read_lines

    texts, _, empty = read_lines(path)
    return texts, {"file": str(path), "lines": len(texts) + len(empty), "empty": len(empty), "sentences": len(texts)}


def whiten_model(model_dir: str | Path, corpus, out_dir: str | Path, n_components: int | None = None,
                 pooling: str | None = None, pooling_layer: int | None = None, max_len: int | None = None,
                 batch_size: int = 64, show_progress_bar: bool | None = None) -> dict:
    """Fit BERT-whitening on ``corpus`` (a text file, one sentence per line, or a list of sentences) with the
    model's vectors and write the model plus the whitening to ``out_dir`` (sentence-transformers layout).
    A whitening the model already had is replaced (fitted on the un-whitened vectors)."""
    out = Path(out_dir)
    if _same_folder(out, Path(model_dir)):
        raise QingbertError(f"--out {out} is the model folder itself", hint="write the whitened model to a new folder")
    if isinstance(corpus, (str, Path)):
        texts, counts = read_corpus(corpus)
        where = str(corpus)
    else:
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
        counts = {"file": None, "lines": len(corpus), "empty": len(corpus) - len(texts), "sentences": len(texts)}
        where = "the corpus"
    enc = SentenceEncoder(model_dir, pooling=pooling, pooling_layer=pooling_layer, max_len=max_len, whitening=False)
    if enc.pooling == "none":
        raise QingbertError("whitening needs sentence vectors: pooling 'none' gives token vectors")
    k = n_components or enc.pooled_size
    if k > enc.pooled_size:
        raise QingbertError(f"n_components {k} is larger than the vectors' dimension {enc.pooled_size}")
    if len(texts) < k + 1:
        raise QingbertError(f"{where}: {len(texts)} usable lines ({counts['empty']} empty); whitening to {k} "
                            f"dimensions needs at least {k + 1}",
                            hint="give more sentences or a smaller n_components (--n-components)")
    normalize, enc.normalize = enc.normalize, False  # fitted on the pooled vectors: Dense comes before Normalize
    vecs = enc.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    truncated = enc.last_truncated
    kernel, bias = fit_whitening(vecs, n_components)
    enc.set_whitening(kernel, bias)
    enc.normalize = normalize
    res = enc.save(out, record={"stage": "whiten", "base_model": str(model_dir),
                                "whitening": {"corpus": counts, "n_components": int(kernel.shape[1]),
                                              "input_dimension": int(kernel.shape[0]), "truncated": truncated}})
    return {**res, **counts, "n_components": int(kernel.shape[1]), "truncated": truncated}


# ---------------------------------------------------------------------------
# SimCSE objectives (run by qingbert.train.Trainer)


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float,
             targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over cosine similarities: row ``i`` of ``anchors`` should pick ``candidates[targets[i]]``
    (default ``i``) among all candidates.  Returns ``(loss, number of rows whose best candidate is right)``."""
    import torch
    import torch.nn.functional as F

    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    logits = a @ c.T / temperature
    if targets is None:
        targets = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, targets)
    return loss, (logits.argmax(-1) == targets).sum()


def cosent_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: ``log(1 + sum over pairs (i, j) with label_i > label_j of exp(scale * (cos_j - cos_i)))`` —
    every pair ranked higher by the labels should have the higher cosine."""
    import torch
    import torch.nn.functional as F

    cos = F.cosine_similarity(a.float(), b.float(), dim=-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    labels = labels.float()
    wrong = labels[:, None] > labels[None, :]
    diff = diff[wrong]
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


_OBJECTIVES: dict = {}


def _objectives() -> dict:
    """The SimCSE objectives (``torch.nn.Module`` subclasses, defined on first use so importing this module
    does not import torch)."""
    if _OBJECTIVES:
        return _OBJECTIVES
    import torch

    class _EncoderObjective(torch.nn.Module):
        def __init__(self, encoder, pooling: str):
            super().__init__()
            self.encoder = encoder
            self.pooling = pooling

        def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
            kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            res = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw)
            return pool_tokens(res.last_hidden_state, attention_mask, self.pooling)

        def trained_model(self):
            return self.encoder

    class UnsupervisedSimCSE(_EncoderObjective):
        """Each sentence twice through the encoder in train mode (two dropout masks): the two views of a sentence
        are the positive pair, the other sentences of the batch the negatives; InfoNCE at ``temperature``."""

        accuracy_name = "view_accuracy"

        def __init__(self, encoder, pooling: str = "mean", temperature: float = 0.05):
            super().__init__(encoder, pooling)
            self.temperature = temperature

        def forward(self, batch):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            types = batch.get("token_type_ids")
            z = self.embed(torch.cat([ids, ids]), torch.cat([mask, mask]),
                           torch.cat([types, types]) if types is not None else None)
            n = ids.shape[0]
            loss, correct = info_nce(z[:n], z[n:], self.temperature)
            return loss, {"correct": int(correct), "count": n}

    class SupervisedSimCSE(_EncoderObjective):
        """Labelled pairs ``(a, b, score)``: CoSENT on the pairs' cosines (``loss="cosent"``), InfoNCE of each
        positive pair (score >= ``positive``) against the batch's other second sentences (``"in-batch"``), or both."""

        accuracy_name = "pair_accuracy"

        def __init__(self, encoder, pooling: str = "mean", loss: str = "cosent", temperature: float = 0.05,
                     scale: float = 20.0, positive: float = 1.0):
            super().__init__(encoder, pooling)
            self.loss, self.temperature, self.scale, self.positive = loss, temperature, scale, positive

        def forward(self, batch):
            za = self.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            zb = self.embed(batch["b_input_ids"], batch["b_attention_mask"], batch.get("b_token_type_ids"))
            labels = batch["label"]
            total = za.sum() * 0.0
            metrics = {}
            if self.loss in ("cosent", "both"):
                total = total + cosent_loss(za, zb, labels, self.scale)
            if self.loss in ("in-batch", "both"):
                pos = (labels >= self.positive).nonzero().flatten()
                if len(pos):
                    loss, correct = info_nce(za[pos], zb, self.temperature, targets=pos)
                    total = total + loss
                    metrics = {"correct": int(correct), "count": int(len(pos))}
            return total, metrics

    for cls in (UnsupervisedSimCSE, SupervisedSimCSE):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        _OBJECTIVES[cls.__name__] = cls
    return _OBJECTIVES


def __getattr__(name: str):
    """``UnsupervisedSimCSE`` and ``SupervisedSimCSE``, made on first access."""
    if name in ("UnsupervisedSimCSE", "SupervisedSimCSE"):
        return _objectives()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _train_config(**kw):
    from qingbert.training.loop import TrainConfig

    return TrainConfig(**kw)


@dataclass
class SimCSEConfig:
    """SimCSE / supervised pair training; ``train`` is the loop's :class:`~qingbert.train.TrainConfig`."""

    train: TrainConfig = field(default_factory=lambda: _train_config(batch_size=64, lr=3e-5, epochs=1.0,
                                                                    save_every=0))
    temperature: float = 0.05  # InfoNCE temperature
    pooling: str = "mean"  # mean | cls | max | mean-max (sentence-transformers can load all four)
    max_len: int = 64  # tokens per sentence while training (longer ones are cut and counted)
    max_seq_length: int | None = None  # saved for inference; None: the model's limit (at most 512)
    sup_loss: str = "cosent"  # labelled pairs: cosent | in-batch | both
    scale: float = 20.0  # CoSENT scale on the cosines
    positive: float = 1.0  # in-batch: pairs with score >= this are positives
    dropout: float | None = None  # None: the model's own (0.1 if the model has none: SimCSE needs dropout)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SimCSEConfig":
        """Flat or nested (``train:``) dict -> config; unknown keys are an error."""
        from qingbert.training.loop import fill_config

        return fill_config(cls(), d, "SimCSE")


def _tokenize_texts(tokenizer, texts: list[str], max_len: int) -> tuple[dict, int]:
    enc = tokenizer(texts, truncation=False, verbose=False)
    truncated = sum(len(x) > max_len for x in enc["input_ids"])
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return {"input_ids": enc["input_ids"], "token_type_ids": types}, int(truncated)


class _PairCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        from qingbert.training.batching import pad_rows

        a = pad_rows([{"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"]} for r in rows], self.pad_id)
        b = pad_rows([{"input_ids": r["b_input_ids"], "token_type_ids": r["b_token_type_ids"]} for r in rows],
                     self.pad_id)
        batch = dict(a)
        batch.update({"b_" + k: v for k, v in b.items()})
        batch["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
        return batch


class _TextCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        from qingbert.training.batching import pad_rows

        return pad_rows([{"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"]} for r in rows],
                        self.pad_id)


def _check_pairs(pairs) -> list[tuple[str, str, float]]:
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 3:
            raise QingbertError(f"pair {i}: expected (text_a, text_b, score)")
        a, b, y = p
        if not isinstance(a, str) or not isinstance(b, str):
            raise QingbertError(f"pair {i}: the texts must be strings")
        try:
            y = float(y)
        except (TypeError, ValueError):
            raise QingbertError(f"pair {i}: score {y!r} is not a number") from None
        if not math.isfinite(y):
            raise QingbertError(f"pair {i}: score {y!r} is not finite")
        out.append((a, b, y))
    return out


def task_pairs(task, data_dir=None, split: str = "train") -> tuple[list[tuple[str, str, float]], dict]:
    """``(a, b, score)`` of a sentence-pair task split (LCQMC / BQ / AFQMC files via :func:`qingbert.tasks.load_task`,
    or a loaded Task) and a description; labels must be numbers."""
    from qingbert.tasks.readers import Task, load_task

    t = task if isinstance(task, Task) else load_task(task, data_dir)
    if t.type != "pair":
        raise QingbertError(f"task '{t.name}' is a {t.type} task, not sentence pairs",
                            hint="use lcqmc, bq, afqmc (or another pair task)")
    if split not in t.splits:
        raise QingbertError(f"task '{t.name}' has no {split} split", hint="found: " + ", ".join(t.splits))
    pairs = []
    for e in t.splits[split]:
        if e.label is None:
            continue
        try:
            y = float(e.label)
        except ValueError:
            raise QingbertError(f"task '{t.name}' {split}: label '{e.label}' is not a number (example {e.id})",
                                hint="similarity evaluation needs numeric labels (0/1 or a score)") from None
        pairs.append((e.text, e.text_b, y))
    if not pairs:
        raise QingbertError(f"task '{t.name}' {split}: no labelled pairs")
    return pairs, {"task": t.name, "split": split, "file": t.files.get(split), "skipped": dict(t.skipped)}


def train_simcse(model_dir: str | Path, out_dir: str | Path, texts=None, pairs=None,
                 config: SimCSEConfig | dict | None = None) -> dict:
    """SimCSE: unsupervised on ``texts`` (a list, or a text file with one sentence per line), or supervised on
    labelled ``pairs`` (``(a, b, score)``; see :class:`SupervisedSimCSE`).  The loop is
    :class:`qingbert.train.Trainer`; ``out_dir`` gets the encoder in the sentence-transformers layout (plus the
    loop's ``metrics.jsonl``) and a ``manifest.json`` saying what made it.  Returns ``{"out", "objective",
    "steps", "losses", "first_loss", "final_loss", ...}``."""
    import transformers
    from datasets import Dataset

    from qingbert.training.loop import Trainer, seed_everything
    from qingbert.models.loading import load_tokenizer

    cfg = config if isinstance(config, SimCSEConfig) else SimCSEConfig.from_dict(config)
    if texts is None and pairs is None:
        raise QingbertError("give texts (unsupervised SimCSE) or labelled pairs (supervised)")
    if texts is not None and pairs is not None:
        raise QingbertError("give either texts (unsupervised SimCSE) or labelled pairs (supervised), not both")
    pooling = canonical_pooling(cfg.pooling)
    if pooling not in ST_POOLING:
        raise QingbertError(f"SimCSE pooling '{cfg.pooling}' is not supported", hint="mean, cls, max or mean-max")
    if cfg.sup_loss not in ("cosent", "in-batch", "both"):
        raise QingbertError(f"unknown supervised loss '{cfg.sup_loss}'", hint="cosent, in-batch or both")
    if not cfg.temperature > 0:
        raise QingbertError(f"temperature must be positive, got {cfg.temperature}")
    model_dir, out = Path(model_dir), Path(out_dir)
    describe(model_dir)  # a clear error when it is not a model folder
    if _same_folder(out, model_dir):
        raise QingbertError(f"--out {out} is the model folder itself", hint="write to a new folder")
    tokenizer = load_tokenizer(str(model_dir))
    seed_everything(cfg.train.seed)
    hf_config = transformers.AutoConfig.from_pretrained(str(model_dir))
    positions = int(getattr(hf_config, "max_position_embeddings", 512) or 512)
    if not 4 <= cfg.max_len <= positions:
        raise QingbertError(f"max_len {cfg.max_len}: the model takes 4 ... {positions} tokens")
    keep_len = int(cfg.max_seq_length or min(positions, 512))
    if not 4 <= keep_len <= positions:
        raise QingbertError(f"max_seq_length {keep_len}: the model takes 4 ... {positions} tokens")
    kw = {}
    dropout = cfg.dropout
    if dropout is None and not (getattr(hf_config, "hidden_dropout_prob", 0.1) or
                                getattr(hf_config, "attention_probs_dropout_prob", 0.1)):
        dropout = 0.1  # SimCSE's augmentation is dropout
    if dropout is not None:
        kw = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    encoder = _load_auto_model(model_dir, **kw)
    data_report: dict = {}
    if texts is not None:
        if isinstance(texts, (str, Path)):
            texts, data_report = read_corpus(texts)
        else:
            texts = list(texts)
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise QingbertError(f"text {i}: expected a string, got {type(t).__name__}")
            data_report = {"sentences": len(texts)}
        unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
        data_report["duplicates_removed"] = len([t for t in texts if t.strip()]) - len(unique)
        cols, data_report["truncated"] = _tokenize_texts(tokenizer, unique, cfg.max_len)
        train = Dataset.from_dict(cols)
        objective = _objectives()["UnsupervisedSimCSE"](encoder, pooling, cfg.temperature)
        collate = _TextCollator(tokenizer.pad_token_id)
        what = "unsupervised SimCSE (InfoNCE, in-batch negatives, dropout views)"
        kind = "unsup-simcse"
    else:
        pairs = _check_pairs(pairs)
        a, ta = _tokenize_texts(tokenizer, [p[0] for p in pairs], cfg.max_len)
        b, tb = _tokenize_texts(tokenizer, [p[1] for p in pairs], cfg.max_len)
        train = Dataset.from_dict({**a, "b_input_ids": b["input_ids"], "b_token_type_ids": b["token_type_ids"],
                                   "label": [p[2] for p in pairs]})
        data_report.update(pairs=len(pairs), truncated=ta + tb)
        objective = _objectives()["SupervisedSimCSE"](encoder, pooling, cfg.sup_loss, cfg.temperature, cfg.scale,
                                                      cfg.positive)
        collate = _PairCollator(tokenizer.pad_token_id)
        what = {"cosent": f"supervised CoSENT (scale {cfg.scale})",
                "in-batch": "supervised SimCSE (in-batch negatives, positive pairs)",
                "both": f"supervised CoSENT (scale {cfg.scale}) + in-batch negatives"}[cfg.sup_loss]
        kind = "sup-" + cfg.sup_loss
    trainer = Trainer(objective, train, collate, out, cfg.train)
    history = trainer.run()
    losses = [r["loss"] for r in history if r.get("split") == "train"]
    result = {"out": str(out), "objective": kind, "steps": trainer.state["step"], "losses": losses,
              "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
              "data": data_report}
    if trainer.acc.is_main_process:
        trained = trainer.unwrapped_objective().trained_model()
        trained.eval()
        if dropout is not None and cfg.dropout is None:  # the folder keeps the model's own (zero) dropout
            trained.config.hidden_dropout_prob = getattr(hf_config, "hidden_dropout_prob", 0.0)
            trained.config.attention_probs_dropout_prob = getattr(hf_config, "attention_probs_dropout_prob", 0.0)
        record = {"stage": "simcse", "base_model": str(model_dir), "objective": kind, "description": what,
                  "temperature": cfg.temperature, "steps": trainer.state["step"], "final_loss": result["final_loss"],
                  "first_loss": result["first_loss"], "data": data_report,
                  "config": {**asdict(cfg), "train": asdict(cfg.train)}, "processes": trainer.world}
        saved = save_sentence_transformers(out, trained, tokenizer, pooling=pooling, max_len=keep_len,
                                           pooler_trained=_has_trained_pooler(model_dir), record=record)
        result.update(saved)
    trainer.acc.wait_for_everyone()
    return result


# ---------------------------------------------------------------------------
# evaluation


def evaluate_sts(model, pairs=None, task=None, data_dir=None, split: str = "dev", batch_size: int = 64,
                 **encoder_kwargs) -> dict:
    """Spearman (and Pearson) correlation, in percent, between the cosine similarity of each pair's vectors and
    its gold label.  ``model``: a :class:`SentenceEncoder` or a folder (``encoder_kwargs`` go to the encoder);
    the pairs: a list of ``(a, b, score)``, or ``task`` (lcqmc / bq / afqmc ...) read from ``data_dir``.
    Returns ``{"spearman", "pearson", "pairs", "metric": "spearman", "score", ...}``."""
    from scipy.stats import pearsonr, spearmanr

    info: dict = {}
    if pairs is None:
        if task is None:
            raise QingbertError("give pairs (a, b, score) or a task to evaluate on")
        pairs, info = task_pairs(task, data_dir, split)
    else:
        pairs = _check_pairs(pairs)
    if len(pairs) < 2:
        raise QingbertError(f"a correlation needs at least 2 pairs, got {len(pairs)}")
    enc = model if isinstance(model, SentenceEncoder) else SentenceEncoder(model, **encoder_kwargs)
    if enc.pooling == "none":
        raise QingbertError("similarity evaluation needs sentence vectors: pooling 'none' gives token vectors")
    texts = list(dict.fromkeys([p[0] for p in pairs] + [p[1] for p in pairs]))
    where = {t: i for i, t in enumerate(texts)}
    vecs = enc.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    a = vecs[[where[p[0]] for p in pairs]]
    b = vecs[[where[p[1]] for p in pairs]]
    cos = (a * b).sum(1).astype(np.float64)
    labels = np.array([p[2] for p in pairs], dtype=np.float64)
    if np.ptp(labels) == 0:
        raise QingbertError(f"all {len(labels)} labels are {labels[0]:g}: the correlation is undefined")
    if np.ptp(cos) == 0:
        raise QingbertError("every pair has the same cosine similarity: the correlation is undefined")
    rho = float(spearmanr(cos, labels).statistic)
    r = float(pearsonr(cos, labels).statistic)
    return {"spearman": 100 * rho, "pearson": 100 * r, "pairs": len(pairs), "metric": "spearman",
            "score": 100 * rho, "truncated": enc.last_truncated, "pooling": enc.pooling, "backend": enc.backend,
            **info}


# ---------------------------------------------------------------------------
# command line (cli.py wires these in: add_cli(subparsers); run_cli(args))

VERBS = {
    "encode": "sentence vectors of texts (--text / --input FILE) -> .npy, with any pooling",
    "whiten": "fit BERT-whitening on a corpus; write the model + whitening (sentence-transformers layout)",
    "simcse": "SimCSE: unsupervised on a corpus, or supervised on a pair task (CoSENT); sentence-transformers "
              "layout",
    "eval-sts": "Spearman correlation of cosine similarity with the labels of a sentence-pair task",
}


def _add_encoder_args(p, pooling_default=None) -> None:
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--pooling", default=pooling_default,
                   help="mean, cls, max, first-last-avg, last-avg, pooler, REDUCE_MEAN, REDUCE_MAX, REDUCE_MEAN_MAX, "
                        "CLS_TOKEN (default: the folder's own, else mean)")
    p.add_argument("--pooling-layer", type=int, default=None, help="layer to pool, -1 = last (default), -2 ...")
    p.add_argument("--max-len", type=int, default=None, help="tokens per text (default: the folder's / model's)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default 64)")


def add_cli(subparsers) -> None:
    """Add the verbs ``encode``, ``whiten``, ``simcse`` and ``eval-sts`` to an argparse subparsers object."""
    p = subparsers.add_parser("encode", help=VERBS["encode"], description=VERBS["encode"])
    _add_encoder_args(p)
    p.add_argument("--text", action="append", default=None, help="a text (repeatable); 'a ||| b' is a pair")
    p.add_argument("--input", default=None, help="UTF-8 file, one text per line ('-' = stdin); one row per line")
    p.add_argument("--out", default=None, help="write the vectors to this .npy file (default: print JSON lines)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest present)")
    p.add_argument("--strict-length", action="store_true", help="fail on texts longer than --max-len instead of "
                                                                "truncating them with a warning")

    p = subparsers.add_parser("whiten", help=VERBS["whiten"], description=VERBS["whiten"])
    _add_encoder_args(p)
    p.add_argument("--corpus", required=True, help="UTF-8 text file, one sentence per line")
    p.add_argument("--out", required=True, help="output folder (model + whitening)")
    p.add_argument("--n-components", type=int, default=None, help="keep the first K dimensions (default: all)")

    p = subparsers.add_parser("simcse", help=VERBS["simcse"], description=VERBS["simcse"])
    p.add_argument("--model", required=True, help="model folder to start from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", default=None, help="unsupervised: UTF-8 text file, one sentence per line")
    src.add_argument("--task", default=None, help="supervised: a sentence-pair task (lcqmc, bq, afqmc ...)")
    p.add_argument("--data", default=None, help="the task's folder (default $QINGBERT_TASK_DIR/<task>)")
    p.add_argument("--split", default="train", help="task split to train on (default train)")
    p.add_argument("--out", required=True, help="output folder (sentence-transformers layout)")
    p.add_argument("--temperature", type=float, default=None, help="InfoNCE temperature (default 0.05)")
    p.add_argument("--pooling", default=None, help="mean (default), cls, max or mean-max")
    p.add_argument("--sup-loss", default=None, help="supervised: cosent (default), in-batch or both")
    p.add_argument("--max-len", type=int, default=None, help="tokens per sentence (default 64)")
    for name, typ, hlp in (("max-steps", int, "optimizer steps (overrides --epochs)"),
                           ("epochs", float, "passes over the data (default 1)"),
                           ("batch-size", int, "sentences (pairs) per step (default 64)"),
                           ("lr", float, "peak learning rate (default 3e-5)"),
                           ("seed", int, "random seed (default 42)"),
                           ("save-every", int, "checkpoint every N steps (default 0 = never)")):
        p.add_argument("--" + name, type=typ, default=None, help=hlp)

    p = subparsers.add_parser("eval-sts", help=VERBS["eval-sts"], description=VERBS["eval-sts"])
    _add_encoder_args(p)
    p.add_argument("--task", required=True, help="lcqmc, bq, afqmc (or another pair task with numeric labels)")
    p.add_argument("--data", default=None, help="the task's folder (default $QINGBERT_TASK_DIR/<task>)")
    p.add_argument("--split", default="dev", help="split to evaluate (default dev)")
    p.add_argument("--backend", default=None, help="torch, onnx or onnx-int8 (default: the fastest present)")


def _read_inputs(args) -> list[str]:
    from qingbert.data.corpus import input_lines

    texts, empty = input_lines(args.text, args.input)
    if empty:
        print(f"note: {args.input} has {empty} empty lines, encoded as empty texts (one row per line)")
    if not texts:
        raise QingbertError("nothing to encode: give --text or --input")
    return texts


def _run_encode(args) -> int:
    enc = SentenceEncoder(args.model, pooling=args.pooling, pooling_layer=args.pooling_layer, max_len=args.max_len,
                          backend=args.backend, truncation="raise" if args.strict_length else "warn")
    if enc.pooling == "none":
        raise QingbertError("the encode command writes sentence vectors; pooling NONE (token vectors) is for the "
                            "Python API", hint="use mean, cls, max ...")
    texts = _read_inputs(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        vecs = enc.encode(texts, batch_size=args.batch_size, normalize_embeddings=args.normalize)
    if enc.last_truncated:
        print(f"note: {enc.last_truncated} of {len(texts)} texts were longer than {enc.max_len} tokens and were "
              "truncated (--max-len, --strict-length)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(out)
        print(f"wrote {out}: {vecs.shape[0]} x {vecs.shape[1]} float32 ({enc.pooling} pooling, backend "
              f"{enc.backend})")
    else:
        for v in vecs:
            print(json.dumps([round(float(x), 6) for x in v]))
    return 0


def _run_whiten(args) -> int:
    r = whiten_model(args.model, args.corpus, args.out, n_components=args.n_components, pooling=args.pooling,
                     pooling_layer=args.pooling_layer, max_len=args.max_len, batch_size=args.batch_size)
    print(f"{r['file']}: {r['sentences']} sentences ({r['empty']} empty lines skipped)"
          + (f", {r['truncated']} truncated" if r["truncated"] else ""))
    print(f"whitening: {r['n_components']} dimensions; wrote {r['out']}"
          + ("" if r["sentence_transformers"] else f"\nnote: {r['note']}"))
    return 0


def _run_simcse(args) -> int:
    d = {}
    for key in ("temperature", "pooling", "sup_loss", "max_len", "max_steps", "epochs", "batch_size", "lr", "seed",
                "save_every"):
        v = getattr(args, key)
        if v is not None:
            d[key] = v
    if args.corpus:
        r = train_simcse(args.model, args.out, texts=args.corpus, config=d)
    else:
        pairs, info = task_pairs(args.task, args.data, args.split)
        r = train_simcse(args.model, args.out, pairs=pairs, config=d)
    print(f"{r['objective']}: {r['steps']} steps, loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}")
    print(f"wrote {r['out']} (loads with sentence_transformers.SentenceTransformer)")
    return 0


def _run_eval_sts(args) -> int:
    r = evaluate_sts(args.model, task=args.task, data_dir=args.data, split=args.split, batch_size=args.batch_size,
                     pooling=args.pooling, pooling_layer=args.pooling_layer, max_len=args.max_len,
                     backend=args.backend)
    print(f"{r['task']} {r['split']}: Spearman {r['spearman']:.2f}, Pearson {r['pearson']:.2f} "
          f"({r['pairs']} pairs, {r['pooling']} pooling, backend {r['backend']})")
    return 0


def run_cli(args) -> int:
    """Run one of the verbs added by :func:`add_cli` (``args.verb``); user errors raise QingbertError."""
    runners = {"encode": _run_encode, "whiten": _run_whiten, "simcse": _run_simcse, "eval-sts": _run_eval_sts}
    verb = getattr(args, "verb", None)
    if verb not in runners:
        raise QingbertError(f"not an embeddings verb: {verb!r}", hint="encode, whiten, simcse or eval-sts")
    return runners[verb](args)


__all__ = ["SentenceEncoder", "TruncationWarning", "fit_whitening", "whitening_to_dense", "whiten_model",
           "train_simcse", "SimCSEConfig", "UnsupervisedSimCSE", "SupervisedSimCSE", "info_nce", "cosent_loss",
           "evaluate_sts", "task_pairs", "save_sentence_transformers", "folder_settings", "canonical_pooling",
           "pool_tokens", "read_corpus", "add_cli", "run_cli", "VERBS", "POOLINGS"]
