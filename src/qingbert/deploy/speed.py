"""``qingbert speed``: the seeds' speed table, measured on this machine.

For zoo shapes (random weights of the shape: speed does not depend on the
values) and for any given model folders: total parameters, parameters without
the embeddings, and sequences per second over a (batch, sequence length) grid
for each backend -- torch eager fp32, ONNX Runtime fp32 (fused graph) and ONNX
Runtime int8 -- plus the speedup relative to the 12-layer base model in torch
eager fp32 at the same grid point, and batch-1 latency (p50 / p99) on short
texts.  Each figure is the median of ``repeats`` timed runs after ``warmup``
untimed ones; the thread count is stated.  Results go to ``speed.json``,
``speed.md`` and ``speed.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qingbert.errors import QingbertError
from qingbert.manifest import atomic_write_text, versions
from qingbert.models import zoo
from qingbert.models.backends import ONNX_FILES, describe, open_backend
from qingbert.models.onnx import export_onnx, optimize_onnx, quantize_int8, random_inputs, time_runner

DEFAULT_SHAPES = ["roberta-wwm-ext", "rbt6", "rbt3", "rbt4-h312", "minirbt-h288", "minirbt-h256",
                  "roberta-tiny-clue"]
BASE = "roberta-wwm-ext"
BACKEND_LABELS = {"torch": "torch eager fp32", "onnx": "ONNX Runtime fp32 (fused)", "onnx-int8": "ONNX Runtime int8"}


@dataclass
class SpeedConfig:
    models: list = field(default_factory=lambda: list(DEFAULT_SHAPES))
    grid: list = field(default_factory=lambda: [[1, 32], [8, 64], [32, 128]])  # (batch, sequence length)
    backends: list = field(default_factory=lambda: ["torch", "onnx", "onnx-int8"])
    repeats: int = 5
    warmup: int = 2
    latency_seq: int = 32  # batch-1 latency on texts of this many tokens
    latency_runs: int = 50
    threads: int = 0  # 0: one per core
    base: str = BASE  # the reference for speedups (torch eager fp32)
    out: str = "speed"


def _zoo_folder(name: str, work: Path) -> Path:
    """A random-init encoder folder of a zoo shape for timing (inputs are random ids: no tokenizer needed)."""
    spec = zoo.get_spec(name)
    folder = work / spec.name
    if (folder / "config.json").exists():
        return folder
    import torch

    torch.manual_seed(0)
    model = zoo.build_model(spec, head="base")
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _params(folder: Path) -> dict:
    from safetensors import safe_open

    total = emb = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                n = int(np.prod(fh.get_slice(k).get_shape()))
                total += n
                if "embeddings" in k:
                    emb += n
    return {"params": total, "params_no_embeddings": total - emb}


def measure_model(folder: Path, cfg: SpeedConfig, label: str, progress=print) -> dict:
    """Params, and per backend per grid point seq/s; batch-1 latency percentiles."""
    info = describe(folder)
    enc_info = dict(info, kind="encoder", auto_class="AutoModel", outputs=())
    config = json.loads((folder / "config.json").read_text())
    vocab = int(config["vocab_size"])
    rec = {"model": label, "folder": str(folder), **_params(folder),
           "shape": {k: config.get(k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                 "intermediate_size")}, "results": {}, "latency_ms": {}}
    onnx_dir = Path(tempfile.mkdtemp(prefix="qingbert-speed-"))
    try:
        (onnx_dir / "onnx").mkdir()
        for f in folder.iterdir():
            if f.is_file():
                os.symlink(f.resolve(), onnx_dir / f.name)
        if any(b != "torch" for b in cfg.backends):
            raw = onnx_dir / "onnx" / "raw.onnx"
            ex = export_onnx(folder, raw, "AutoModel", ())
            opt = optimize_onnx(raw, onnx_dir / ONNX_FILES["onnx"], ex["model_type"], ex["num_heads"],
                                ex["hidden_size"])
            rec["fused"] = opt.get("fused", {})
            raw.unlink()
            if "onnx-int8" in cfg.backends:
                quantize_int8(onnx_dir / ONNX_FILES["onnx"], onnx_dir / ONNX_FILES["onnx-int8"])
        for b in cfg.backends:
            runner = open_backend(onnx_dir, b, cfg.threads, enc_info)
            res = {}
            for batch, seq in cfg.grid:
                seq = min(seq, int(config.get("max_position_embeddings", seq)))
                times = time_runner(runner, random_inputs(vocab, batch, seq), cfg.repeats, cfg.warmup)
                med = float(np.median(times))
                res[f"{batch}x{seq}"] = {"batch": batch, "seq": seq, "median_s": med, "seq_per_s": batch / med,
                                         "times": [round(t, 5) for t in times]}
            lat = time_runner(runner, random_inputs(vocab, 1, cfg.latency_seq), cfg.latency_runs, cfg.warmup)
            rec["latency_ms"][b] = {"p50": 1000 * float(np.percentile(lat, 50)),
                                    "p99": 1000 * float(np.percentile(lat, 99)), "seq": cfg.latency_seq,
                                    "runs": cfg.latency_runs}
            rec["results"][b] = res
            best = res[f"{cfg.grid[-1][0]}x{cfg.grid[-1][1]}"]["seq_per_s"] if res else 0
            progress(f"  {label} {b}: {best:,.1f} seq/s at {cfg.grid[-1][0]} x {cfg.grid[-1][1]}, batch-1 p50 "
                     f"{rec['latency_ms'][b]['p50']:.1f} ms")
            del runner
    finally:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    return rec


def speed(config: SpeedConfig | dict | None = None, progress=print) -> dict:
    """Measure every model of the config; write ``speed.json``, ``speed.md`` and ``speed.png`` into ``out``."""
    import torch

    cfg = config if isinstance(config, SpeedConfig) else SpeedConfig(**(config or {}))
    for b in cfg.backends:
        if b not in BACKEND_LABELS:
            raise QingbertError(f"unknown backend '{b}'", hint="torch, onnx, onnx-int8")
    if "torch" not in cfg.backends:
        cfg.backends = ["torch"] + list(cfg.backends)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = cfg.threads or torch.get_num_threads()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qingbert-zoo-"))
    t0 = time.time()
    models = list(cfg.models)
    if cfg.base and cfg.base not in models:
        models = [cfg.base] + models

    resolved = []  # every name checked before anything is measured
    for name in models:
        if Path(name).is_dir():
            describe(name)
            resolved.append((name, Path(name).name))
        else:
            resolved.append((name, zoo.get_spec(name).name))
    records = []
    try:
        for name, label in resolved:
            folder = Path(name) if Path(name).is_dir() else _zoo_folder(name, work)
            progress(f"{label}:")
            records.append(measure_model(folder, cfg, label, progress))
            shutil.rmtree(work / label, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"config": asdict(cfg), "threads": threads, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
           "models": records, "elapsed_s": round(time.time() - t0, 1)}
    _speedups(res, cfg)

    res["versions"] = versions()
    try:
        import onnxruntime

        res["versions"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    atomic_write_text(out / "speed.json", json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "speed.md", speed_markdown(res) + "\n")
    res["plot"] = str(out / "speed.png") if plot_speed(res, out / "speed.png") else None
    return res


def _speedups(res: dict, cfg: SpeedConfig) -> None:
    base = next((r for r in res["models"] if r["model"] == _base_label(cfg.base)), None)
    for r in res["models"]:
        for b, grid in r["results"].items():
            for key, cell in grid.items():
                ref = base["results"]["torch"].get(key) if base else None
                cell["speedup_vs_base_eager"] = cell["seq_per_s"] / ref["seq_per_s"] if ref else None
                own = r["results"]["torch"].get(key)
                cell["speedup_vs_own_eager"] = cell["seq_per_s"] / own["seq_per_s"] if own else None


def _base_label(base: str) -> str:
    if not base:
        return ""

    try:
        return zoo.get_spec(base).name
    except QingbertError:
        return Path(base).name


def _fmt_m(n: int) -> str:
    return f"{n / 1e6:.1f} M"


def speed_markdown(res: dict) -> str:
    cfg = res["config"]
    grid = [f"{b}x{s}" for b, s in cfg["grid"]]
    lines = [f"Inference speed on this machine ({res['cpus']} CPUs, {res['threads']} threads, {res['date']}); "
             f"sequences/s, median of {cfg['repeats']} runs after {cfg['warmup']} warm-up; speedup = vs "
             f"{_base_label(cfg['base'])} in torch eager fp32 at the same batch x length.", ""]
    head = ["model", "params", "w/o emb.", "backend"] + [f"{g} seq/s (speedup)" for g in grid] + \
        [f"b1 x {cfg['latency_seq']} p50 / p99 ms"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---|" + "---:|" * (len(grid) + 1)]
    for r in res["models"]:
        for b, cells in r["results"].items():
            row = [r["model"], _fmt_m(r["params"]), _fmt_m(r["params_no_embeddings"]), BACKEND_LABELS[b]]
            for g in grid:
                key = next((k for k in cells if k.split("x")[0] == g.split("x")[0]), None)
                c = cells.get(g) or (cells.get(key) if key else None)
                if not c:
                    row.append("")
                    continue
                sp = c.get("speedup_vs_base_eager")
                row.append(f"{c['seq_per_s']:,.1f} ({sp:.1f}x)" if sp else f"{c['seq_per_s']:,.1f}")
            lat = r["latency_ms"].get(b)
            row.append(f"{lat['p50']:.1f} / {lat['p99']:.1f}" if lat else "")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_speed(res: dict, path: Path) -> bool:
    """Sequences/s at the largest grid point, per model and backend (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    b, s = res["config"]["grid"][-1]
    models = [r["model"] for r in res["models"]]
    backends = list(res["config"]["backends"])
    fig, ax = plt.subplots(figsize=(1.4 * len(models) + 3, 4.5))
    width = 0.8 / len(backends)
    for i, be in enumerate(backends):
        vals = [next((c["seq_per_s"] for k, c in r["results"].get(be, {}).items() if k.startswith(f"{b}x")), 0)
                for r in res["models"]]
        ax.bar(np.arange(len(models)) + i * width, vals, width, label=BACKEND_LABELS[be])
    ax.set_xticks(np.arange(len(models)) + width * (len(backends) - 1) / 2)
    ax.set_xticklabels(models, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(f"sequences / s at batch {b} x {s} tokens")
    ax.set_title(f"inference speed, {res['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


__all__ = ["speed", "SpeedConfig", "measure_model", "speed_markdown", "DEFAULT_SHAPES"]
