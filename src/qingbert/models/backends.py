"""What a model folder holds and the runtimes that run it: numpy inputs -> numpy outputs.

:func:`describe` reads a folder (a fine-tuned classifier / pair / NER / MRC model, a pretrained or distilled
encoder, an exported folder with ONNX files, or a plain transformers folder); :func:`open_backend` runs it on
``torch`` (the transformers model), ``onnx`` (ONNX Runtime, fused graph, fp32) or ``onnx-int8`` (dynamically
quantised), by default the fastest one ``qingbert export`` measured among those that passed its parity check.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qingbert.errors import QingbertError, require
from qingbert.manifest import FINETUNED_FORMAT, PREPARED_FORMAT, read_json, read_manifest
from qingbert.models.loading import quiet_load

BACKENDS = ("onnx-int8", "onnx", "torch")


ONNX_FILES = {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model.int8.onnx"}


HIDDEN = "last_hidden_state"


TASK_OUTPUTS = {"classification": ("logits",), "pair": ("logits",), "ner": ("logits",),
                "mrc": ("start_logits", "end_logits"), "encoder": ()}


AUTO_CLASS = {"classification": "AutoModelForSequenceClassification", "pair": "AutoModelForSequenceClassification",
              "ner": "AutoModelForTokenClassification", "mrc": "AutoModelForQuestionAnswering",
              "encoder": "AutoModel"}


def describe(folder: str | Path) -> dict:
    """``{"kind", "auto_class", "outputs", "labels", "task", "manifest"}`` of a model folder; a clear error when
    it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QingbertError(f"no such model folder '{folder}'")
    if not (folder / "config.json").exists():
        m = read_manifest(folder)
        what = "a prepared corpus" if m and m.get("format") == PREPARED_FORMAT else "not a model folder"
        raise QingbertError(f"{folder}: {what} (no config.json)",
                            hint="give a folder written by pretrain, finetune, distill or export")
    m = read_manifest(folder) or {}
    kind = m.get("task_type") if m.get("format") == FINETUNED_FORMAT else None
    if kind is None:
        config = read_json(folder / "config.json")
        arch = " ".join(config.get("architectures") or [])
        kind = ("classification" if "SequenceClassification" in arch else "ner" if "TokenClassification" in arch
                else "mrc" if "QuestionAnswering" in arch else "encoder")
    if kind not in TASK_OUTPUTS:
        raise QingbertError(f"{folder}: unsupported head '{kind}'", hint="supported: " + ", ".join(TASK_OUTPUTS))
    return {"kind": kind, "auto_class": AUTO_CLASS[kind], "outputs": TASK_OUTPUTS[kind],
            "labels": list(m.get("labels") or []), "task": m.get("task"), "manifest": m}


def hf_labels(folder: Path) -> list:
    config = read_json(folder / "config.json")
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)] if id2label else []


class TorchBackend:
    """The transformers model of the folder (``outputs`` of its head, plus the last hidden state)."""

    name = "torch"

    def __init__(self, folder: str | Path, auto_class: str, outputs: tuple, threads: int = 0):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = quiet_load(auto_class, folder)
        self.model.eval()
        self.outputs = tuple(outputs)
        self.input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __call__(self, inputs: dict) -> dict:
        import torch

        feed = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in inputs.items() if k in self.input_names}
        with torch.inference_mode():
            res = self.model(**feed, output_hidden_states=True)
        out = {n: getattr(res, n).float().numpy() for n in self.outputs}
        out[HIDDEN] = (res.last_hidden_state if getattr(res, "last_hidden_state", None) is not None
                       else res.hidden_states[-1]).float().numpy()
        return out


def session_options(threads: int = 0, spin: bool = True):
    """ONNX Runtime session options used everywhere: all graph optimisations, ``threads`` intra-op threads
    (0: one per core), sequential execution.  ``spin=False`` lets idle worker threads sleep instead of
    busy-waiting for the next run: a server between requests leaves the cores to everything else (batch work,
    where runs follow each other, keeps spinning)."""
    ort = require("onnxruntime", "the ONNX Runtime backends")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class OnnxBackend:
    """An ONNX Runtime session on an exported graph (CUDA when onnxruntime-gpu has it, else CPU)."""

    def __init__(self, path: str | Path, name: str = "onnx", threads: int = 0, spin: bool = True):
        ort = require("onnxruntime", "the ONNX Runtime backends")

        path = Path(path)
        if not path.exists():
            raise QingbertError(f"exported model file {path} is missing", hint="re-run `qingbert export`")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, spin), providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise QingbertError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})",
                                hint="re-run `qingbert export`") from None
        self.name = name
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, inputs: dict) -> dict:
        ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        feed = {}
        for k in self.input_names:
            v = inputs.get(k)
            feed[k] = np.zeros_like(ids) if v is None else np.asarray(v, dtype=np.int64)
        return dict(zip(self.output_names, self.session.run(None, feed)))


def available_backends(folder: str | Path) -> list[str]:
    """Backends whose files are in ``folder``, fastest first by the export's measurements where it made them."""
    folder = Path(folder)
    m = (read_manifest(folder) or {}).get("export") or {}
    have = [b for b in BACKENDS if b == "torch" or b in (m.get("backends") or {})]
    if not m:  # not an export: whatever files are there
        have = [b for b in BACKENDS if b == "torch" or (folder / ONNX_FILES[b]).exists()]
    measured = m.get("backends") or {}

    def rank(b):
        rec = measured.get(b) or {}
        ok = rec.get("parity", {}).get("passed", True)
        return (not ok, -(rec.get("seq_per_s") or 0.0), BACKENDS.index(b))

    return sorted(have, key=rank)


def open_backend(folder: str | Path, backend: str | None = None, threads: int = 0, info: dict | None = None,
                 spin: bool = True):
    folder = Path(folder)
    info = info or describe(folder)
    if backend is None:
        backend = available_backends(folder)[0]
    if backend not in BACKENDS:
        raise QingbertError(f"unknown backend '{backend}'", hint="available: " + ", ".join(BACKENDS))
    if backend == "torch":
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise QingbertError(f"{folder}: no model weights (model.safetensors) for the torch backend")
        return TorchBackend(folder, info["auto_class"], info["outputs"], threads=threads)
    return OnnxBackend(folder / ONNX_FILES[backend], backend, threads=threads, spin=spin)
