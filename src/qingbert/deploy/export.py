"""``qingbert export``: a model folder -> the same folder plus ONNX graphs (fp32 fused, int8), with parity checks.

The output folder is a copy of the input (it still loads with transformers and
with every qingbert verb) plus ``onnx/model.onnx`` and ``onnx/model.int8.onnx``,
and its ``manifest.json`` gains an ``export`` section: per backend the file, its
measured speed on this machine and its parity figures.  :func:`qingbert.load`
then runs the fastest backend that passed.

How the fast path was found (2 CPU cores, see BENCHMARKS.md): the graph is
exported with the TorchScript exporter from a model loaded with *eager*
attention, because ONNX Runtime's transformer optimiser only recognises that
pattern (the dynamo exporter's graph and SDPA attention stay un-fused, and an
un-fused fp32 graph is slower than torch eager for small models); the optimiser
then fuses embeddings + LayerNorm, attention, bias + GELU and skip + LayerNorm;
int8 is dynamic quantisation of that fused graph (weights int8 per channel,
activations quantised at run time), which needs no calibration data.

Parity, checked at export and recorded: the largest absolute difference of every
output against the torch model on real tokens of probe texts (fp32 must be
within ``FP32_TOLERANCE``), and for fine-tuned models the task metric on dev with
torch and with each ONNX graph: int8 may lose at most ``INT8_MAX_DROP`` points, or
the export is refused (``force=True`` keeps it, marked as failed).  For encoders
the check is the cosine similarity of mean-pooled sentence vectors.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from qingbert.deploy.inference import Model
from qingbert.errors import QingbertError
from qingbert.manifest import MODEL_FORMAT, read_manifest, replace_folder, write_manifest
from qingbert.models.backends import ONNX_FILES, describe, open_backend
from qingbert.models.onnx import ExportError, export_onnx, optimize_onnx, quantize_int8, random_inputs, time_runner
from qingbert.tasks.finetune import predict_split, subset
from qingbert.tasks.readers import load_task

FP32_TOLERANCE = 1e-3  # max abs difference of any output, fp32 graph vs torch
INT8_MAX_DROP = 0.5  # task metric points int8 may lose on dev
INT8_MIN_COSINE = 0.98  # encoders: mean cosine of int8 vs torch sentence vectors
PROBE_TEXTS = ["今天天气很好，我们去公园散步。", "这本书写得很精彩，值得一看！", "北京是中华人民共和国的首都。",
               "质量太差了，用了两天就坏了，非常失望。", "国务院总理李鹏在人民大会堂会见了外国客人。",
               "物流很快，包装完好，下次还会再来。"]
SKIP = {"checkpoints", "tensorboard", "onnx", "metrics.jsonl"}


# ---------------------------------------------------------------------------
# ONNX graphs


# ---------------------------------------------------------------------------
# parity


def _probe_inputs(tokenizer, texts: list[str], max_len: int = 128) -> dict:
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="np")
    out = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
    out["token_type_ids"] = np.asarray(enc["token_type_ids"], dtype=np.int64) if "token_type_ids" in enc \
        else np.zeros_like(out["input_ids"])
    return out


def max_abs_diff(ref: dict, got: dict, mask: np.ndarray) -> dict:
    """Largest absolute difference per output (token-level outputs on real tokens only)."""
    res = {}
    for name, r in ref.items():
        g = np.asarray(got[name])
        if g.shape != r.shape:
            res[name] = float("inf")
            continue
        d = np.abs(g.astype(np.float64) - r.astype(np.float64))
        if d.ndim >= 2 and d.shape[:2] == mask.shape:
            d = d[mask.astype(bool)]
        res[name] = float(d.max()) if d.size else 0.0
    return res


def _dev_task(info: dict, task, data_dir):
    """The task to score parity on: the given one, else the fine-tuned model's own when it can be read here."""
    name = task or info.get("task")
    if not name or info["kind"] == "encoder":
        return None
    try:
        return load_task(name, data_dir)
    except QingbertError:
        if task:  # asked for explicitly: say why not
            raise
        return None


def _dev_score(model, task, max_examples: int) -> float:
    examples = subset(task.splits["dev"], max_examples)

    preds, _ = predict_split(model.runner, model.head, model.tokenizer, examples, model.cfg)
    return float(model.head.score(examples, preds)["score"])


def check_parity(folder: str | Path, backends=("onnx", "onnx-int8"), task=None, data_dir=None,
                 max_dev_examples: int = 1000, threads: int = 0) -> dict:
    """Compare each ONNX backend of an exported ``folder`` with its torch model; returns per-backend records
    ``{"max_abs_diff", "passed", ...}``.  Used at export; run it again on any exported folder."""
    folder = Path(folder)
    info = describe(folder)
    torch_model = Model(folder, backend="torch", threads=threads)
    probe = _probe_inputs(torch_model.tokenizer, PROBE_TEXTS)
    ref = torch_model.runner(probe)
    dev = _dev_task(info, task, data_dir)
    ref_score = _dev_score(torch_model, dev, max_dev_examples) if dev else None
    ref_vecs = torch_model.encode(PROBE_TEXTS) if dev is None else None
    out = {}
    for b in backends:
        if not (folder / ONNX_FILES[b]).exists():
            continue
        m = Model(folder, backend=b, threads=threads)
        diff = max_abs_diff(ref, m.runner(probe), probe["attention_mask"])
        rec = {"max_abs_diff": diff}
        worst = max(diff.values()) if diff else 0.0
        if b == "onnx":
            rec["tolerance"] = FP32_TOLERANCE
            rec["passed"] = bool(worst <= FP32_TOLERANCE)
        if dev is not None:
            score = _dev_score(m, dev, max_dev_examples)
            drop = ref_score - score
            rec.update(dev_task=dev.name, dev_metric=info.get("manifest", {}).get("dev", {}).get("metric"),
                       dev_score_torch=ref_score, dev_score=score, drop_points=drop,
                       dev_examples=min(max_dev_examples, len(dev.splits["dev"])))
            if b == "onnx-int8":
                rec["max_drop"] = INT8_MAX_DROP
                rec["passed"] = bool(drop <= INT8_MAX_DROP)
            else:
                rec["passed"] = rec["passed"] and bool(abs(drop) <= 0.1)
        elif b == "onnx-int8":
            vecs = m.encode(PROBE_TEXTS)
            cos = np.sum(vecs * ref_vecs, 1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref_vecs, axis=1))
            rec.update(mean_cosine=float(cos.mean()), min_cosine_required=INT8_MIN_COSINE,
                       passed=bool(cos.mean() >= INT8_MIN_COSINE))
        out[b] = rec
    return out


# ---------------------------------------------------------------------------
# speed


def measure_backend(runner, tokenizer, batch: int = 32, seq: int = 128, repeats: int = 3, warmup: int = 1) -> dict:
    """Sequences/s of a backend on a ``batch x seq`` block of token ids (median of ``repeats``)."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else 2
    times = time_runner(runner, random_inputs(len(tokenizer), batch, seq, cls_id), repeats, warmup)
    med = float(np.median(times))
    return {"seq_per_s": round(batch / med, 2), "batch": batch, "seq": seq, "median_s": round(med, 5),
            "repeats": repeats}


# ---------------------------------------------------------------------------
# the stage


def _copy_model(src: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.name in SKIP or f.name.startswith("."):
            continue
        if f.is_file():
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


def export(model: str | Path, out: str | Path, onnx: bool = True, int8: bool = True, task: str | None = None,
           data_dir: str | None = None, force: bool = False, max_dev_examples: int = 1000, threads: int = 0,
           speed_batch: int = 32, speed_seq: int = 128, overwrite: bool = False) -> dict:
    """Export a model folder into ``out`` (a new folder, or with ``overwrite`` an earlier export, replaced only
    once the new one is complete); returns the ``export`` section written into ``out/manifest.json``."""
    src, final = Path(model), Path(out)
    info = describe(src)  # a clear error for anything that is not a model folder
    if not any(src.glob("*.safetensors")) and not any(src.glob("*.bin")):
        raise ExportError(f"{src}: no model weights (model.safetensors)")
    if not onnx and not int8:
        raise ExportError("nothing to export: give --onnx and/or --int8")
    with replace_folder(final, overwrite, what="an export (its manifest has no export section)",
                        is_ours=lambda d: "export" in (read_manifest(d) or {}), inputs={"model folder": src}) as out:
        return _export(src, out, info, onnx, int8, task, data_dir, force, max_dev_examples, threads, speed_batch,
                       speed_seq)


def _export(src: Path, out: Path, info: dict, onnx: bool, int8: bool, task, data_dir, force: bool,
            max_dev_examples: int, threads: int, speed_batch: int, speed_seq: int) -> dict:
    t0 = time.time()
    copied = _copy_model(src, out)
    fp32 = out / ONNX_FILES["onnx"]
    raw = out / "onnx" / "model.raw.onnx"
    rec: dict = {"source": str(src.resolve()), "kind": info["kind"], "copied": copied, "backends": {}}
    ex = export_onnx(src, raw, info["auto_class"], info["outputs"])
    rec["onnx_export"] = ex
    rec["optimizer"] = optimize_onnx(raw, fp32, ex["model_type"], ex["num_heads"], ex["hidden_size"])
    raw.unlink()
    if int8:
        rec["int8"] = quantize_int8(fp32, out / ONNX_FILES["onnx-int8"])
    parity = check_parity(out, task=task, data_dir=data_dir, max_dev_examples=max_dev_examples, threads=threads)

    tok = Model(out, backend="torch", threads=threads).tokenizer
    speeds = {}
    for b in ["torch"] + [b for b in ("onnx", "onnx-int8") if (out / ONNX_FILES[b]).exists()]:
        speeds[b] = measure_backend(open_backend(out, b, threads, info), tok, speed_batch, speed_seq)
    rec["backends"]["torch"] = {"file": "model.safetensors", **speeds["torch"], "parity": {"passed": True}}
    for b, p in parity.items():
        rec["backends"][b] = {"file": ONNX_FILES[b], **speeds[b], "parity": p}
    failed = {b: p for b, p in parity.items() if not p.get("passed")}
    rec["elapsed_s"] = round(time.time() - t0, 2)
    rec["passed"] = not failed
    if failed and not force:
        why = "; ".join(_why(b, p) for b, p in failed.items())
        raise ExportError(f"parity check failed: {why}", hint="pass --force to keep the export anyway")
    if not onnx:  # int8 only: the fp32 graph was a step
        fp32.unlink()
        rec["backends"].pop("onnx", None)
    if "onnx" in rec["backends"] and not rec["backends"]["onnx"]["parity"].get("passed") and force:
        rec["forced"] = True
    if failed and force:
        rec["forced"] = True
    manifest = read_manifest(out) or {"format": MODEL_FORMAT, "stage": "plain transformers folder"}
    manifest["export"] = rec
    write_manifest(out, manifest)
    return rec


def _why(backend: str, p: dict) -> str:
    if "drop_points" in p and backend == "onnx-int8":
        return (f"{backend} loses {p['drop_points']:.2f} points of dev {p.get('dev_metric') or 'score'} "
                f"({p['dev_score_torch']:.2f} -> {p['dev_score']:.2f}; at most {p['max_drop']} allowed)")
    if "mean_cosine" in p:
        return f"{backend} sentence vectors have mean cosine {p['mean_cosine']:.4f} to torch's (need {INT8_MIN_COSINE})"
    worst = max(p["max_abs_diff"].values()) if p.get("max_abs_diff") else float("nan")
    extra = f", dev {p['dev_score_torch']:.2f} -> {p['dev_score']:.2f}" if "dev_score" in p else ""
    return f"{backend} differs from torch by up to {worst:.3g} (tolerance {FP32_TOLERANCE}){extra}"


def export_summary(rec: dict) -> str:
    lines = [f"exported a {rec['kind']} model in {rec['elapsed_s']:.0f} s; fused: "
             + (", ".join(f"{k} {v}" for k, v in rec["optimizer"].get("fused", {}).items()) or "nothing")]
    for b, r in rec["backends"].items():
        p = r.get("parity", {})
        par = ""
        if "max_abs_diff" in p:
            par = f"; max |diff| {max(p['max_abs_diff'].values()):.2g}"
        if "dev_score" in p:
            par += f"; dev {p['dev_score_torch']:.2f} -> {p['dev_score']:.2f}"
        if "mean_cosine" in p:
            par += f"; cosine {p['mean_cosine']:.4f}"
        status = "" if p.get("passed", True) else "  PARITY FAILED"
        lines.append(f"  {b:10s} {r['seq_per_s']:8.1f} seq/s at {r['batch']} x {r['seq']}{par}{status}")
    return "\n".join(lines)


__all__ = ["export", "check_parity", "export_onnx", "optimize_onnx", "quantize_int8", "measure_backend",
           "export_summary", "ExportError", "FP32_TOLERANCE", "INT8_MAX_DROP"]
