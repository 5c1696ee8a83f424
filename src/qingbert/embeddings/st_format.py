"""The sentence-transformers folder layout: reading it (and our own manifest) and writing it.

:func:`save_sentence_transformers` writes ``modules.json``, ``1_Pooling/config.json``, ``2_Dense``,
``Normalize``, ``sentence_bert_config.json``, the transformers model and tokenizer with ``vocab.txt`` at the
root, so ``SentenceTransformer(DIR)`` loads it without qingbert and gives the same vectors.  Module references
and configs follow sentence-transformers 6.2.  A whitening is stored as an identity-activation ``Dense`` module
(:func:`whitening_to_dense`), so sentence-transformers applies it too.

Which poolings sentence-transformers can express: ``mean``, ``cls``, ``max`` and ``REDUCE_MEAN_MAX`` (its
``("mean", "max")`` pooling), all from the last layer (:data:`ST_POOLING`).  ``first-last-avg``, ``pooler``, a
``pooling_layer`` other than -1 and ``NONE`` cannot be; such folders are written without ``modules.json`` (our
encoder still loads them from ``manifest.json``), and the result says so.

:func:`folder_settings` reads back what a folder says about its pooling, layer, length, whitening and
normalisation: our manifest, else a sentence-transformers ``modules.json`` (Transformer, Pooling, identity
Dense, Normalize), else the defaults.  torch and safetensors are imported where they are used: the command line
imports this module.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qingbert.embeddings.pooling import canonical_pooling
from qingbert.errors import QingbertError
from qingbert.manifest import EMBEDDINGS_FORMAT, atomic_write_text, read_manifest, write_manifest
from qingbert.models.loading import quiet_transformers
from qingbert.models.tokenizer import save_tokenizer

if TYPE_CHECKING:
    import torch

FORMAT = EMBEDDINGS_FORMAT
#: our pooling -> sentence-transformers' Pooling ``pooling_mode`` (only last-layer poolings have one)
ST_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "mean-max": ["mean", "max"]}
#: module type -> the class path sentence-transformers writes in ``modules.json``
ST_TYPES = {"Transformer": "sentence_transformers.base.modules.transformer.Transformer",
            "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            "Dense": "sentence_transformers.base.modules.dense.Dense",
            "Normalize": "sentence_transformers.base.modules.normalize.Normalize"}
#: the activations of a Dense module that is an affine map (what we read and write)
IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")


# ---------------------------------------------------------------------------
# reading: what a folder says about its pooling (our manifest, or a sentence-transformers modules.json)


@dataclass
class FolderSettings:
    """What a folder was saved with (see :func:`folder_settings`)."""

    model_root: Path
    pooling: str = "mean"
    pooling_layer: int = -1
    max_len: int | None = None
    dense: tuple | None = None  # (weight (k, d), bias (k,)) float32 tensors: y = x @ weight.T + bias
    normalize: bool = False
    source: str = "transformers folder"


def read_json(path: Path) -> dict:
    """A JSON file; an unreadable one is a :class:`~qingbert.errors.QingbertError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise QingbertError(f"{path}: cannot read ({e})") from None


def has_trained_pooler(folder: Path) -> bool:
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


def _load_dense(folder: Path) -> tuple:
    """A sentence-transformers ``Dense`` folder with identity activation -> ``(weight, bias)``."""
    import torch

    cfg = read_json(folder / "config.json")
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
    modules = read_json(folder / "modules.json")
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
                    s.max_len = read_json(path / name).get("max_seq_length") or None
                    break
            if s.max_len is None and (path / "tokenizer_config.json").exists():
                # sentence-transformers >= 5.4 keeps max_seq_length as the tokenizer's model_max_length
                limit = read_json(path / "tokenizer_config.json").get("model_max_length")
                s.max_len = int(limit) if isinstance(limit, (int, float)) and 0 < limit < 100_000 else None
        elif kind == "Pooling":
            s.pooling = _st_pooling(read_json(path / "config.json"), path)
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
# writing


def whitening_to_dense(kernel, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` as the affine map of an identity-activation Dense module: ``weight = kernel.T``,
    ``bias = bias @ kernel`` (so ``x @ weight.T + b == (x + bias) @ kernel``)."""
    import torch

    kernel = np.asarray(kernel, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    return (torch.from_numpy(kernel.T.astype(np.float32).copy()),
            torch.from_numpy((bias @ kernel).astype(np.float32)))


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


__all__ = ["FORMAT", "ST_POOLING", "ST_TYPES", "IDENTITY", "FolderSettings", "folder_settings",
           "save_sentence_transformers", "whitening_to_dense", "read_json", "has_trained_pooler"]
