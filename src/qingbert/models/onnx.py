"""ONNX graphs of transformers models: export (eager attention, dynamic batch and length), ONNX Runtime's
transformer fusions, dynamic int8 quantisation, a frozen encoder run as a fused graph (:class:`OnnxEncoder`,
the distillation teacher), and timing a runner on random inputs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from qingbert.errors import QingbertError, require
from qingbert.models.backends import HIDDEN, OnnxBackend
from qingbert.models.loading import quiet_load

ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "electra": "bert", "ernie": "bert", "albert": "bert",
                   "xlm-roberta": "bert", "distilbert": "bert"}


class ExportError(QingbertError):
    pass


def _wrapper(model, outputs: tuple = (), all_hidden: bool = False):
    """A module returning ``(head outputs..., [every layer's hidden states...,] last hidden state)`` as a tuple,
    for the exporter."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            res = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             output_hidden_states=True)
            hidden = res.last_hidden_state if getattr(res, "last_hidden_state", None) is not None \
                else res.hidden_states[-1]
            layers = tuple(res.hidden_states) if all_hidden else ()
            return tuple(getattr(res, n) for n in outputs) + layers + (hidden,)

    return Wrapped().eval()


def trace_inputs(vocab_size: int):
    """Example inputs for tracing: two rows, the second padded, so the attention-mask path is in the graph."""
    import torch

    ids = torch.full((2, 16), min(100, vocab_size - 1), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    return ids, mask, torch.zeros_like(ids)


def export_module(module, path: Path, output_names: list[str], example: tuple, per_token: set | None = None,
                  opset: int = 17) -> float:
    """TorchScript-export ``module(input_ids, attention_mask, token_type_ids) -> tuple`` with dynamic batch and
    sequence axes (``per_token``: the outputs that have a sequence axis; default all); returns the seconds."""
    import warnings

    import torch

    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    per_token = set(output_names) if per_token is None else per_token
    axes = {k: {0: "batch", 1: "sequence"} for k in inputs + [n for n in output_names if n in per_token]}
    axes.update({n: {0: "batch"} for n in output_names if n not in per_token})
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), input_names=inputs, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    return time.time() - t0


def export_onnx(folder: Path, path: Path, auto_class: str, outputs: tuple, opset: int = 17) -> dict:
    """Export ``folder``'s model (eager attention) to ``path``: its head ``outputs`` and the last hidden state."""
    model = quiet_load(auto_class, folder, attn_implementation="eager")
    model.eval()
    names = list(outputs) + [HIDDEN]
    per_token = set(names) - ({"logits"} if auto_class == "AutoModelForSequenceClassification" else set())
    try:
        seconds = export_module(_wrapper(model, outputs), path, names, trace_inputs(model.config.vocab_size),
                                per_token, opset)
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds of errors
        raise ExportError(f"{folder}: ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                          hint="export supports BERT-family encoders and the finetune heads") from None
    return {"seconds": round(seconds, 2), "opset": opset, "exporter": "torchscript",
            "attention": "eager", "model_type": model.config.model_type,
            "num_heads": model.config.num_attention_heads, "hidden_size": model.config.hidden_size}


def optimize_onnx(path: Path, out: Path, model_type: str, num_heads: int, hidden_size: int) -> dict:
    """ONNX Runtime's transformer optimiser (operator fusion); returns the fused operator counts."""
    optimizer = require("onnxruntime.transformers.optimizer", "ONNX Runtime's graph optimiser")

    ort_type = ORT_MODEL_TYPES.get(model_type)
    if ort_type is None:  # no fusion patterns for this architecture: keep the plain graph
        shutil.copyfile(path, out)
        return {"fused": {}, "note": f"no ONNX Runtime fusion for model type {model_type}"}
    import logging

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimizer.optimize_model(str(path), model_type=ort_type, num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=1)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(out))
    return {"fused": stats}


def quantize_int8(path: Path, out: Path) -> dict:
    """Dynamic int8 quantisation (int8 weights per channel, activations quantised at run time)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    t0 = time.time()
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"seconds": round(time.time() - t0, 2), "mode": "dynamic", "weights": "int8 per channel"}


class OnnxEncoder:
    """A frozen transformers encoder (e.g. a distillation teacher's base model) compiled to a fused ONNX Runtime
    graph; called like the encoder, it returns ``last_hidden_state`` and, if built with ``hidden_states``, the
    hidden states of every layer (embeddings first), as torch tensors.

    With ``int8`` the fused graph is dynamically quantised (int8 weights per channel): faster, and no longer equal
    to the torch model -- callers measure how far it is (:meth:`compare`).

    Only for a frozen model on the CPU with a 2-D padding mask (no attention outputs, no 4-D masks)."""

    def __init__(self, encoder, hidden_states: bool = True, threads: int = 0, int8: bool = False):
        import tempfile

        cfg = encoder.config
        if getattr(cfg, "_attn_implementation", "eager") != "eager":
            encoder = _eager_copy(encoder)
        layers = cfg.num_hidden_layers
        self.names = ([f"hidden_{i}" for i in range(layers + 1)] if hidden_states else []) + [HIDDEN]
        self.hidden_states = hidden_states
        self._dir = Path(tempfile.mkdtemp(prefix="qingbert-onnx-encoder-"))
        raw, fused = self._dir / "raw.onnx", self._dir / "model.onnx"

        was_training = encoder.training
        encoder.eval()
        export_module(_wrapper(encoder, all_hidden=hidden_states), raw, self.names, trace_inputs(cfg.vocab_size))
        encoder.train(was_training)
        self.fused = optimize_onnx(raw, fused, cfg.model_type, cfg.num_attention_heads, cfg.hidden_size)
        raw.unlink()
        self.name = "onnx"
        if int8:
            quantize_int8(fused, self._dir / "model.int8.onnx")
            fused, self.name = self._dir / "model.int8.onnx", "onnx-int8"
        self.runner = OnnxBackend(fused, self.name, threads=threads)

    def compare(self, encoder, input_ids, attention_mask) -> dict:
        """How far this graph's last hidden state is from ``encoder``'s on one batch (real tokens only):
        ``max_abs_diff`` and ``relative_error`` (Frobenius norm of the difference / norm of torch's)."""
        import torch

        with torch.no_grad():
            ref = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = self(input_ids, attention_mask).last_hidden_state
        keep = attention_mask.bool()
        d = (got - ref)[keep]
        return {"max_abs_diff": float(d.abs().max()),
                "relative_error": float(d.norm() / ref[keep].norm().clamp_min(1e-12))}

    def __call__(self, input_ids, attention_mask, output_hidden_states: bool = False,
                 output_attentions: bool = False, **_):
        from types import SimpleNamespace

        import torch

        if output_attentions or attention_mask.dim() != 2:
            raise QingbertError("OnnxEncoder returns no attentions and takes a 2-D padding mask only")
        ids = input_ids.cpu().numpy()
        out = self.runner({"input_ids": ids, "attention_mask": attention_mask.cpu().numpy(),
                           "token_type_ids": np.zeros_like(ids)})
        res = SimpleNamespace(last_hidden_state=torch.from_numpy(out[HIDDEN]), hidden_states=None)
        if output_hidden_states:
            res.hidden_states = tuple(torch.from_numpy(out[n]) for n in self.names[:-1])
        return res

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self):  # pragma: no cover - best effort
        self.close()


def _eager_copy(encoder):
    """The same weights with eager attention (ONNX Runtime fuses only that pattern)."""
    import copy

    clone = copy.deepcopy(encoder)
    clone.set_attn_implementation("eager")
    return clone


def random_inputs(vocab: int, batch: int, seq: int, cls_id: int = 2) -> dict:
    """A ``batch x seq`` block of random token ids (no padding) starting with ``[CLS]``."""
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, size=(batch, seq)).astype(np.int64)
    ids[:, 0] = cls_id
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def time_runner(runner, inputs: dict, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        runner(inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(inputs)
        times.append(time.perf_counter() - t0)
    return times
