"""``bench``: the MiniRBT / CLUE fine-tuning protocol over several models and tasks.

Every model is fine-tuned on every task for each learning rate x epoch count x
seed of a grid (one :func:`qingbert.tasks.finetune.finetune` call per run).  Scores
are averaged over seeds per setting (mean ± sample std), the setting with the
best mean is chosen per (model, task) on dev, and each model's best score is
also shown relative to a reference model (= 100 %), as the MiniRBT and
Chinese-BERT-wwm READMEs report them.

Learning rates
--------------
Without ``lrs`` each model gets a grid by its size (bare encoder parameters),
following MiniRBT's observation that small models need larger rates (~1e-4)
than the 2e-5 .. 5e-5 that BERT-base-sized models use:

* fewer than 30M parameters (MiniRBT, RBT4-h312): 1e-4, 2e-4, 5e-4
* 30M to 100M (RBT3, RBTL3): 5e-5, 1e-4, 2e-4
* 100M and more (base, large): 2e-5, 3e-5, 5e-5

Layout of ``out``::

    runs/<model>/<task>/lr<lr>-ep<epochs>-seed<seed>.json   one finished run (written atomically)
    runs/<model>/speed.json                                  the model's measured inference speed
    models/<model>/<task>/lr..-ep..-seed../                  fine-tuned folders (deleted unless keep_models)
    results.md  results.csv  results.json  score_vs_speed.png  manifest.json

A run whose json exists is not run again, so an interrupted bench resumes
where it stopped; a run that crashed leaves no json.  The reports cover the
runs of the current grid only (other run files in ``runs/`` are left alone),
and finished runs made with another batch size, max_len, training subset or
finetune options are refused rather than mixed in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from qingbert.errors import QingbertError
from qingbert.manifest import BENCH_FORMAT, BENCH_RUN_FORMAT, atomic_write_text, read_manifest, write_manifest
from qingbert.models import loading, zoo
from qingbert.tasks.readers import load_task

FORMAT = BENCH_FORMAT
RUN_FORMAT = BENCH_RUN_FORMAT
PROTOCOL_SEEDS = 3  # the protocol averages over at least this many seeds
SPEED_BATCH = 32  # sequences per forward pass when measuring inference speed

# (upper bound on parameters, learning rates); see the module docstring
LR_GRIDS = ((30e6, [1e-4, 2e-4, 5e-4]), (100e6, [5e-5, 1e-4, 2e-4]), (math.inf, [2e-5, 3e-5, 5e-5]))

# finetune() options that bench sets itself, and those that do not change a run's result
_CONTROLLED = {"lr", "epochs", "seed", "batch_size", "max_len", "max_train_examples", "save_every", "progress"}
_NO_EFFECT = {"threads", "log_every", "keep_last", "resume"}


@dataclass
class BenchConfig:
    """What to benchmark: models x tasks x lrs x epochs x seeds (from CLI flags or a YAML recipe)."""

    models: list[str]
    tasks: list[str]
    out: str
    lrs: list[float] | None = None  # None: a grid by model size (LR_GRIDS)
    epochs: list[float] = field(default_factory=lambda: [2, 3, 5, 10])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    batch_size: int = 32
    max_len: int = 128
    data_dir: str | dict | None = None  # folder of task folders (<DIR>/<task>/), "task=DIR,task=DIR" or a dict
    reference: str | None = None  # the model whose best scores are 100 %; default the first model
    max_train_examples: int = 0  # 0 = the whole training set; else a fixed subset (quick runs)
    keep_models: bool = False  # keep each fine-tuned folder (default: delete it once scored)
    threads: int = 0  # torch CPU threads for fine-tuning and speed measurement; 0 = torch's default
    finetune_options: dict = field(default_factory=dict)  # more finetune() options, e.g. warmup_ratio
    speed_repeats: int = 3  # timed forward passes per model (after one warm-up pass)

    @classmethod
    def from_dict(cls, d: dict) -> "BenchConfig":
        """A flat dict (a YAML recipe) -> config; lists may be comma-separated strings; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise QingbertError(f"unknown bench option '{unknown[0]}'", hint="known: " + ", ".join(sorted(known)))
        missing = [k for k in ("models", "tasks", "out") if d.get(k) in (None, "", [])]
        if missing:
            raise QingbertError(f"bench needs '{missing[0]}'")
        d = dict(d)
        for k in ("models", "tasks", "lrs", "epochs", "seeds"):
            if isinstance(d.get(k), str):
                d[k] = [x.strip() for x in d[k].split(",") if x.strip()]
        for k, conv in (("lrs", float), ("epochs", float), ("seeds", int)):
            if d.get(k) is not None:
                try:
                    d[k] = [conv(x) for x in d[k]]
                except (TypeError, ValueError):
                    raise QingbertError(f"bench option '{k}' must be a list of numbers, got {d[k]!r}") from None
        return cls(**d)

    def validate(self) -> None:
        """Raise :class:`QingbertError` for empty lists, non-positive values and unknown references."""
        for name in ("models", "tasks"):
            items = getattr(self, name)
            if isinstance(items, str) or not items or not all(isinstance(x, str) and x for x in items):
                raise QingbertError(f"bench needs a non-empty list of {name}")
            if len(set(items)) != len(items):
                raise QingbertError(f"{name} lists the same name twice: {', '.join(items)}")
        if self.lrs is not None:
            _check_numbers("lrs", self.lrs, positive=True)
        _check_numbers("epochs", self.epochs, positive=True)
        _check_numbers("seeds", self.seeds, positive=False)
        if any(int(s) != s for s in self.seeds):
            raise QingbertError(f"seeds must be whole numbers, got {list(self.seeds)}")
        for name in ("batch_size", "max_len", "speed_repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise QingbertError(f"{name} must be a positive whole number, got {v!r}")
        for name in ("max_train_examples", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise QingbertError(f"{name} must be 0 or a positive whole number, got {v!r}")
        if self.reference is not None and self.reference not in self.models:
            raise QingbertError(f"reference model '{self.reference}' is not one of the models",
                                hint="models: " + ", ".join(self.models))
        clash = sorted(_CONTROLLED & set(self.finetune_options))
        if clash:
            raise QingbertError(f"finetune option '{clash[0]}' is set by bench itself",
                                hint="use the bench option of that name")


def _check_numbers(name: str, values, positive: bool) -> None:
    if isinstance(values, (str, bytes)) or not values:
        raise QingbertError(f"{name} must be a non-empty list", hint=f"e.g. {name}: {list(_EXAMPLES[name])}")
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (positive and v == 0):
            what = "positive numbers" if positive else "numbers >= 0"
            raise QingbertError(f"{name} must be {what}, got {v!r}")
    if len(set(values)) != len(values):
        raise QingbertError(f"{name} lists the same value twice: {list(values)}")


_EXAMPLES = {"lrs": (1e-4, 2e-4, 5e-4), "epochs": (2, 3, 5, 10), "seeds": (1, 2, 3)}


# ---------------------------------------------------------------------------
# names


def default_lrs(n_params: float) -> list[float]:
    """The learning-rate grid for an encoder with ``n_params`` parameters (see the module docstring)."""
    for limit, lrs in LR_GRIDS:
        if n_params < limit:
            return list(lrs)
    return list(LR_GRIDS[-1][1])


def slug(name: str) -> str:
    """A file-name-safe, deterministic form of a model or task name.

    ``/`` and ``:`` become ``_``; any other change (or a very long name) appends a short hash of the name.
    """
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")
    if not s or len(s) > 80 or s != name.replace("/", "_").replace(":", "_").strip("_."):
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
        s = f"{s[:70]}-{digest}" if s else digest
    return s


def fmt_lr(lr: float) -> str:
    """``1e-4``, ``2.5e-5`` (no trailing zeros)."""
    mantissa, exp = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def run_name(lr: float, epochs: float, seed: int) -> str:
    return f"lr{fmt_lr(lr)}-ep{epochs:g}-seed{int(seed)}"


def _local_folder(model: str) -> Path | None:
    """The folder a model name points at (``random:`` stripped), if it is one."""
    p = Path(model.removeprefix("random:")).expanduser()
    return p if (p / "config.json").is_file() else None


def _display_names(models: list[str]) -> dict[str, str]:
    """Short labels for tables and the plot: a folder's own name, unless two folders share it."""
    short = {m: (_local_folder(m).name if _local_folder(m) else m) for m in models}
    if len(set(short.values())) != len(short):
        return {m: m for m in models}
    return {m: ("random:" + s if m.startswith("random:") and not s.startswith("random:") else s)
            for m, s in short.items()}


def count_params(model: str) -> int:
    """Parameters of the bare encoder (``AutoModel``, pooler included) without loading weights.

    A folder or hub id is counted from its config on the meta device; a zoo name in closed form.
    Unknown names raise the same :class:`QingbertError` that fine-tuning them would.
    """
    src = model.removeprefix("random:")
    folder = _local_folder(model)
    if folder is None:
        try:
            return zoo.count_parameters(zoo.get_spec(src))[0]
        except QingbertError:
            if model.startswith("random:"):  # random: needs a folder or a zoo shape
                raise
    import torch
    from transformers import AutoModel

    config = loading.load_config(str(folder or src))
    with torch.device("meta"):
        net = AutoModel.from_config(config)
    return sum(p.numel() for p in net.parameters())


def data_dirs(data_dir, tasks: list[str]) -> dict[str, str | None]:
    """Each task's data folder from ``None``, a folder of task folders, ``"task=DIR,task=DIR"`` or a dict."""
    if data_dir is None:
        return {t: None for t in tasks}
    if isinstance(data_dir, (str, os.PathLike)) and "=" not in str(data_dir):
        root = Path(data_dir)
        return {t: str(root / t) if (root / t).is_dir() else str(root) for t in tasks}
    if isinstance(data_dir, dict):
        mapping = {str(k): str(v) for k, v in data_dir.items()}
    else:
        mapping = {}
        for part in str(data_dir).split(","):
            task, sep, folder = part.partition("=")
            if not sep or not task.strip() or not folder.strip():
                raise QingbertError(f"data_dir: expected task=DIR, got '{part}'",
                                    hint="e.g. tnews=data/tnews,afqmc=data/afqmc")
            mapping[task.strip()] = folder.strip()
    unknown = sorted(set(mapping) - set(tasks))
    if unknown:
        raise QingbertError(f"data_dir names task '{unknown[0]}', which is not benchmarked",
                            hint="tasks: " + ", ".join(tasks))
    return {t: mapping.get(t) for t in tasks}


# ---------------------------------------------------------------------------
# inference speed


def measure_speed(folder: str | Path, max_len: int = 128, batch_size: int = SPEED_BATCH, repeats: int = 3,
                  threads: int = 0) -> dict:
    """Inference throughput of ``AutoModel`` from ``folder``: sequences/s on a full batch of ``max_len`` tokens.

    Eval mode, no grad, one warm-up pass, then the median of ``repeats`` timed passes.
    """
    import inspect

    import torch
    from transformers import AutoModel

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        net = loading.quiet_load(AutoModel, folder)  # a head-less load reports the head's weights: not our concern
        device = "cuda" if torch.cuda.is_available() else "cpu"
        net.eval().to(device)
        length = min(max_len, getattr(net.config, "max_position_embeddings", None) or max_len)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, net.config.vocab_size, (batch_size, length), generator=gen)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "token_type_ids" in inspect.signature(net.forward).parameters:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        times = []
        with torch.inference_mode():
            for i in range(repeats + 1):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                net(**inputs)
                if device == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first pass is the warm-up
                    times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        return {"seq_per_s": round(batch_size / seconds, 2), "batch_size": batch_size, "max_len": length,
                "repeats": repeats, "median_batch_s": round(seconds, 5), "device": device,
                "threads": torch.get_num_threads() if device == "cpu" else None,
                "params": sum(p.numel() for p in net.parameters()), "source": str(folder)}
    finally:
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------------------
# aggregation


def aggregate(records: list[dict], models: list[str], tasks: list[str], reference: str) -> dict:
    """Runs -> per-setting mean ± std over seeds, the best setting per (model, task) and relative scores.

    ``std`` is the sample standard deviation (n - 1), None for a single seed.  ``relative`` is a model's best
    mean / the reference's best mean x 100 per task; ``average`` and ``relative_average`` average over tasks.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["task"], r["lr"], r["epochs"]), []).append(r)
    settings = []
    for (model, task, lr, epochs), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        scores = [float(r["score"]) for r in runs]
        settings.append({
            "model": model, "task": task, "metric": runs[0]["metric"], "lr": lr, "epochs": epochs,
            "seeds": [r["seed"] for r in runs], "scores": scores, "n": len(scores),
            "mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else None,
            "min": min(scores), "max": max(scores),
            "mean_elapsed_s": statistics.fmean(float(r.get("elapsed_s") or 0) for r in runs),
            "mean_steps": statistics.fmean(float(r.get("steps") or 0) for r in runs)})
    best: dict[tuple, dict] = {}
    for s in settings:  # ties keep the first setting in grid order
        key = (s["model"], s["task"])
        if key not in best or s["mean"] > best[key]["mean"]:
            best[key] = s
    for s in settings:
        s["best"] = best.get((s["model"], s["task"])) is s
        ref = best.get((reference, s["task"]))
        s["relative"] = 100 * s["mean"] / ref["mean"] if ref and ref["mean"] else None
    table = {}
    for m in models:
        row = {"tasks": {}, "average": None, "relative_average": None}
        for t in tasks:
            b = best.get((m, t))
            if b is None:
                continue
            row["tasks"][t] = {k: b[k] for k in ("metric", "lr", "epochs", "mean", "std", "n", "relative")}
        if row["tasks"] and len(row["tasks"]) == len(tasks):
            row["average"] = statistics.fmean(v["mean"] for v in row["tasks"].values())
            rel = [v["relative"] for v in row["tasks"].values()]
            row["relative_average"] = statistics.fmean(rel) if None not in rel else None
        table[m] = row
    return {"settings": settings, "best": table}


# ---------------------------------------------------------------------------
# reports


def _fmt_params(n) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def _fmt_speed(s) -> str:
    return "?" if not s else f"{s['seq_per_s']:,.0f}" if s["seq_per_s"] >= 100 else f"{s['seq_per_s']:.1f}"


def _fmt_mean(mean, std) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _md_table(header: list[str], rows: list[list[str]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_markdown(res: dict) -> str:
    """The Markdown report: absolute scores with the chosen settings, relative scores, every setting."""
    cfg, names, tasks = res["config"], res["labels"], res["tasks"]
    metric = {t: res["metrics"].get(t, "score") for t in tasks}
    ref = names[res["reference"]]
    lrs = "; ".join(f"{names[m]}: {', '.join(fmt_lr(x) for x in v)}" for m, v in res["lrs"].items())
    lines = ["# qingbert bench", "",
             f"Dev scores, fine-tuned with each learning rate x epoch count x seed: lrs {lrs}; "
             f"epochs {', '.join(f'{e:g}' for e in cfg['epochs'])}; seeds {', '.join(map(str, cfg['seeds']))}; "
             f"batch {cfg['batch_size']}, max_len {cfg['max_len']}"
             + (f", {cfg['max_train_examples']:,} training examples per task" if cfg["max_train_examples"] else "")
             + ".  Speed: sequences/s of the bare encoder on batches of "
             f"{SPEED_BATCH} x {cfg['max_len']} tokens.", ""]
    lines += [f"**Warning:** {w}" for w in res["warnings"]] + ([""] if res["warnings"] else [])
    head = ["model", "params", "seq/s"]
    rows, rel_rows = [], []
    for m in cfg["models"]:
        info, best = res["models"][m], res["best"][m]
        row, rel = [names[m], _fmt_params(info["params"]), _fmt_speed(info["speed"])], []
        for t in tasks:
            b = best["tasks"].get(t)
            row.append("–" if b is None else
                       f"{_fmt_mean(b['mean'], b['std'])} (lr {fmt_lr(b['lr'])}, {b['epochs']:g} ep)")
            rel.append("–" if b is None or b["relative"] is None else f"{b['relative']:.1f}")
        avg, rel_avg = best["average"], best["relative_average"]
        rows.append(row + ["–" if avg is None else f"{avg:.2f}"])
        rel_rows.append(row[:3] + rel + ["–" if rel_avg is None else f"{rel_avg:.1f}"])
    n_seeds = len(cfg["seeds"])
    lines += [f"## Best mean ± std over {n_seeds} seed{'s' * (n_seeds > 1)} (lr and epochs chosen on dev)", "",
              _md_table(head + [f"{t} ({metric[t]})" for t in tasks] + ["average"], rows,
                        "lrr" + "l" * len(tasks) + "r"), "",
              f"## Relative to {ref} (= 100 %)", "",
              _md_table(head + tasks + ["average"], rel_rows, "lrr" + "r" * (len(tasks) + 1)), "",
              "## Every setting", "",
              _md_table(["model", "task", "lr", "epochs", "mean ± std", "seeds", "relative", "best"],
                        [[names[s["model"]], s["task"], fmt_lr(s["lr"]), f"{s['epochs']:g}",
                          _fmt_mean(s["mean"], s["std"]), str(s["n"]),
                          "–" if s["relative"] is None else f"{s['relative']:.1f}", "*" if s["best"] else ""]
                         for s in res["settings"]], "lllrlrrl"), ""]
    return "\n".join(lines)


CSV_FIELDS = ("model", "label", "task", "metric", "lr", "epochs", "n", "seeds", "scores", "mean", "std", "min",
              "max", "relative", "best", "params", "seq_per_s", "mean_steps", "mean_elapsed_s")


def results_csv(res: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for s in res["settings"]:
        info = res["models"][s["model"]]
        row = {k: s.get(k) for k in CSV_FIELDS}
        row.update(label=res["labels"][s["model"]], seeds=";".join(map(str, s["seeds"])),
                   scores=";".join(f"{x:.4f}" for x in s["scores"]), params=info["params"],
                   seq_per_s=(info["speed"] or {}).get("seq_per_s"), best=int(s["best"]))
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def plot_score_vs_speed(res: dict, path: Path) -> bool:
    """Average score over tasks against inference speed, one labelled point per model; False if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [(res["labels"][m], res["models"][m]["speed"]["seq_per_s"], res["best"][m]["average"])
              for m in res["config"]["models"]
              if res["models"][m]["speed"] and res["best"][m]["average"] is not None]
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, x, y in points:
        ax.scatter([x], [y], s=36)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    xs = [p[1] for p in points]
    if xs and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(f"inference speed (sequences/s, batch {SPEED_BATCH} x {res['config']['max_len']} tokens, "
                  f"{res['speed_device'] or '?'})")
    ax.set_ylabel(f"average dev score over {len(res['tasks'])} task(s)")
    ax.set_title("qingbert bench: score vs speed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return bool(points)


# ---------------------------------------------------------------------------
# the stage


def _jsonable(o):
    return o.item() if hasattr(o, "item") else str(o)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=_jsonable) + "\n")


class _Runner:
    """Paths and resume state of one bench output folder."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.model_slug = {m: slug(m) for m in cfg.models}
        self.task_slug = {t: slug(t) for t in cfg.tasks}
        for kind, slugs in (("models", self.model_slug), ("tasks", self.task_slug)):
            if len(set(slugs.values())) != len(slugs):
                raise QingbertError(f"two {kind} share the file name {sorted(slugs.values())}; rename one")
        # settings that change what a run means: finished runs must match them to be reused
        options = {k: v for k, v in sorted(cfg.finetune_options.items()) if k not in _NO_EFFECT}
        protocol = {"batch_size": cfg.batch_size, "max_len": cfg.max_len,
                    "max_train_examples": cfg.max_train_examples, "finetune_options": options}
        self.protocol = json.loads(json.dumps(protocol, default=_jsonable))  # as it reads back from a run file

    def run_json(self, model, task, lr, epochs, seed) -> Path:
        return (self.out / "runs" / self.model_slug[model] / self.task_slug[task]
                / f"{run_name(lr, epochs, seed)}.json")

    def run_dir(self, model, task, lr, epochs, seed) -> Path:
        return self.out / "models" / self.model_slug[model] / self.task_slug[task] / run_name(lr, epochs, seed)

    def speed_json(self, model) -> Path:
        return self.out / "runs" / self.model_slug[model] / "speed.json"

    def load_run(self, key) -> dict:
        path = self.run_json(*key)
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise QingbertError(f"{path}: unreadable finished run ({e})", hint="delete it to run it again") from None
        if rec.get("protocol") != self.protocol:
            raise QingbertError(f"{path} was run with other settings ({rec.get('protocol')}) than this bench "
                                f"({self.protocol})", hint="use another out folder, or the same settings")
        return rec


def bench(config: BenchConfig | dict, finetune_fn: Callable | None = None) -> dict:
    """Run every (model, task, lr, epochs, seed) not yet done in ``config.out``; write the tables and plot.

    ``finetune_fn`` defaults to :func:`qingbert.tasks.finetune.finetune` (tests inject a fake).  Returns the content
    of ``results.json``.
    """
    from tqdm.auto import tqdm

    cfg = config if isinstance(config, BenchConfig) else BenchConfig.from_dict(config)
    cfg.validate()
    reference = cfg.reference or cfg.models[0]
    runner = _Runner(cfg)
    dirs = data_dirs(cfg.data_dir, cfg.tasks)
    real = finetune_fn is None
    if real:
        from qingbert.tasks.finetune import finetune as finetune_fn

        for t in cfg.tasks:  # a wrong task name or data folder fails now, not after hours of runs
            load_task(t, dirs[t])
    params = {}
    if cfg.lrs is None or real:
        params = {m: count_params(m) for m in cfg.models}
    lrs = {m: list(cfg.lrs) if cfg.lrs is not None else default_lrs(params[m]) for m in cfg.models}

    warnings = []
    if len(cfg.seeds) < PROTOCOL_SEEDS:
        warnings.append(f"only {len(cfg.seeds)} seed{'s' * (len(cfg.seeds) > 1)}: the protocol averages "
                        f"over at least {PROTOCOL_SEEDS}, so differences between models may be noise")
    out = runner.out
    if out.exists() and not out.is_dir():
        raise QingbertError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and (read_manifest(out) or {}).get("format") != FORMAT:
        raise QingbertError(f"{out}: folder is not empty and is not a bench folder",
                            hint="give a new or empty --out (a bench folder of the same settings is resumed)")
    out.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "stage": "bench", "config": asdict(cfg), "reference": reference, "lrs": lrs}
    write_manifest(out, {**record, "status": "running"})

    plan = [(m, t, lr, float(ep), int(seed)) for m in cfg.models for t in cfg.tasks for lr in lrs[m]
            for ep in cfg.epochs for seed in cfg.seeds]
    done = {key for key in plan if runner.run_json(*key).exists()}
    for key in done:
        runner.load_run(key)  # settings check
    n_lrs = {len(v) for v in lrs.values()}
    print(f"bench: {len(plan)} runs (models {len(cfg.models)}, tasks {len(cfg.tasks)}, "
          f"lrs {n_lrs.pop() if len(n_lrs) == 1 else 'by model'}, epochs {len(cfg.epochs)}, "
          f"seeds {len(cfg.seeds)}); {len(done)} skip (done), {len(plan) - len(done)} to run", flush=True)
    for w in warnings:
        print(f"bench: warning: {w}", flush=True)

    speeds = {m: _read_speed(runner.speed_json(m), cfg.max_len) for m in cfg.models}
    ft_base = {"batch_size": cfg.batch_size, "save_every": 0, "progress": False,
               "max_train_examples": cfg.max_train_examples, **({"threads": cfg.threads} if cfg.threads else {}),
               **cfg.finetune_options}
    bar = tqdm(total=len(plan), initial=len(done), desc="bench", unit="run", disable=None)
    ran = 0
    try:
        for i, key in enumerate(plan, 1):
            if key in done:
                continue
            model, task, lr, epochs, seed = key
            folder = runner.run_dir(*key)
            shutil.rmtree(folder, ignore_errors=True)  # the leftovers of a crashed attempt
            try:
                res = finetune_fn(model, task, str(folder), dirs[task], max_len=cfg.max_len,
                                  config={**ft_base, "lr": lr, "epochs": epochs, "seed": seed})
                dev = (res or {}).get("dev") or {}
                if "score" not in dev:
                    raise QingbertError(f"finetune returned no dev score for {model} on {task}")
                rec = {"format": RUN_FORMAT, "model": model, "task": task, "lr": lr, "epochs": epochs,
                       "seed": seed, "metric": dev.get("metric", "score"), "score": float(dev["score"]),
                       "dev": dev, "steps": res.get("steps"), "elapsed_s": res.get("elapsed_s"),
                       "protocol": runner.protocol, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                _write_json(runner.run_json(*key), rec)
            except BaseException:
                if not cfg.keep_models:
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            ran += 1
            bar.update(1)
            bar.write(f"[{i}/{len(plan)}] {model} | {task} | lr {fmt_lr(lr)} | {epochs:g} ep | seed {seed}: "
                      f"{rec['metric']} {rec['score']:.2f} ({rec['steps']} steps, "
                      f"{float(rec['elapsed_s'] or 0):.0f} s)")
            if speeds[model] is None and _local_folder(model) is None and (folder / "config.json").is_file():
                speeds[model] = _measure_and_store(runner, model, folder)
            if not cfg.keep_models:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        bar.close()

    for m in cfg.models:  # folders given as models, or fine-tuned folders left by an earlier attempt
        if speeds[m] is None:
            left = sorted((out / "models" / runner.model_slug[m]).glob("*/*/config.json"))
            source = _local_folder(m) or (left[0].parent if left else None)
            if source is not None:
                speeds[m] = _measure_and_store(runner, m, source)
            else:
                old = _read_speed(runner.speed_json(m), None)
                if old:
                    warnings.append(f"speed of {m} was measured with max_len {old['max_len']}, "
                                    f"not {cfg.max_len} (no folder left to measure again)")
                else:
                    warnings.append(f"no folder of {m} left to measure its speed (rerun with keep_models)")
                speeds[m] = old
    if not cfg.keep_models:
        _remove_empty_dirs(out / "models")

    records = [runner.load_run(key) for key in plan]
    agg = aggregate(records, cfg.models, cfg.tasks, reference)
    devices = sorted({s["device"] for s in speeds.values() if s})
    res = {"format": FORMAT, "config": asdict(cfg), "reference": reference, "tasks": list(cfg.tasks),
           "metrics": {r["task"]: r["metric"] for r in records}, "labels": _display_names(cfg.models),
           "lrs": lrs, "runs": len(plan), "ran": ran, "skipped": len(done), "warnings": warnings,
           "speed_device": ", ".join(devices) or None,
           "models": {m: {"params": (speeds[m] or {}).get("params") or params.get(m), "speed": speeds[m],
                          "lrs": lrs[m]} for m in cfg.models},
           **agg}
    _write_json(out / "results.json", res)
    atomic_write_text(out / "results.md", results_markdown(res))
    atomic_write_text(out / "results.csv", results_csv(res))
    plotted = plot_score_vs_speed(res, out / "score_vs_speed.png")
    files = ["results.md", "results.csv", "results.json", "score_vs_speed.png"]
    write_manifest(out, {**record, "status": "complete", "runs": len(plan), "ran": ran, "skipped": len(done),
                         "warnings": warnings, "files": files})
    print(_console_summary(res), flush=True)
    print(f"bench: wrote {out}/results.md, results.csv, results.json"
          + (", score_vs_speed.png" if plotted else ", score_vs_speed.png (empty: no speeds)"), flush=True)
    return res


def _console_summary(res: dict) -> str:
    names = res["labels"]
    lines = []
    for m in res["config"]["models"]:
        b = res["best"][m]
        avg = "–" if b["average"] is None else f"{b['average']:.2f}"
        rel = "–" if b["relative_average"] is None else f"{b['relative_average']:.1f} %"
        lines.append(f"{names[m]}: average {avg} (relative {rel}), {_fmt_speed(res['models'][m]['speed'])} seq/s")
    return "\n".join(lines)


def _read_speed(path: Path, max_len: int | None) -> dict | None:
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return s if max_len is None or s.get("requested_max_len") == max_len else None


def _measure_and_store(runner: _Runner, model: str, folder: Path) -> dict:
    cfg = runner.cfg
    s = measure_speed(folder, cfg.max_len, repeats=cfg.speed_repeats, threads=cfg.threads)
    s["requested_max_len"] = cfg.max_len
    _write_json(runner.speed_json(model), s)
    return s


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        root.rmdir()
    except OSError:
        pass
