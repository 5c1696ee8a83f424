"""``qingbert report RUN_DIR``: one self-contained page about a ``qingbert run`` folder.

Reads ``RUN_DIR/run.json`` (format ``qingbert.run/1``) and each training stage's ``metrics.jsonl``, and writes

    report.html      the page: tables + charts as base64 PNGs, inline CSS, no scripts, nothing fetched
    report.md        the same sections as Markdown
    report-figures/  the charts as PNG files, which report.md links to

Sections: the stages (status, time, key metric, size), training curves, dev scores against the teacher (% kept and
speed-up, as MiniRBT reports them), score vs speed per task, sizes on disk and serving latency.  Charts need
matplotlib (``pip install 'qingbert[plots]'``); without it the report has its tables only.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import math
import os
import re
import warnings
from pathlib import Path

from qingbert.errors import QingbertError
from qingbert.manifest import atomic_write_text, read_json, read_manifest

RUN_FORMAT = "qingbert.run/1"
TRAINING_KINDS = ("pretrain", "finetune", "distill")
FIGURES = "report-figures"
OWN_FIGURE = re.compile(r"^(curves-\d{2}-.+|pareto|sizes)$")  # the names of the charts this module writes
COLOURS = {"done": "#1a7f37", "up-to-date": "#1a7f37", "failed": "#cf222e", "running": "#0969da",
           "partial": "#9a6700", "pending": "#6e7781", "skipped": "#6e7781"}

# ---------------------------------------------------------------------------
# reading the run folder


def load_run(run_dir: str | Path) -> dict:
    """``run.json`` of a run folder, checked just enough to build a report from."""
    path = Path(run_dir) / "run.json"
    hint = "give the folder `qingbert run` wrote (it holds run.json)"
    if not path.is_file():
        raise QingbertError(f"{run_dir}: no run.json (not a `qingbert run` folder)", hint=hint)
    run = read_json(path, hint="run.json is damaged: run `qingbert run` again")
    if run.get("format") != RUN_FORMAT or not isinstance(run.get("stages"), list):
        raise QingbertError(f"{path}: not a {RUN_FORMAT} record (format {run.get('format')!r})", hint=hint)
    run["stages"] = [s for s in run["stages"] if isinstance(s, dict) and s.get("name")]
    for s in run["stages"]:  # the fields the report relies on, as strings / a dict whatever the file says
        s.update({k: str(s[k]) if s.get(k) else d for k, d in (("name", ""), ("kind", ""), ("status", "?"),
                                                               ("folder", None))})
        s["metrics"] = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
    return run


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` by step; a line that is not a JSON object (a run killed mid-write) is
    skipped, and a step logged again (a run resumed from a checkpoint) keeps its last record."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and num(rec.get("step")) is not None:
            out[(str(rec.get("split", "train")), rec["step"])] = rec
    return [out[k] for k in sorted(out, key=lambda k: k[1])]


def metrics_files(folder: Path) -> list[Path]:
    """``folder/metrics.jsonl``, else those of its subfolders (general distillation: ``assistant/``, ``student/``)."""
    if (folder / "metrics.jsonl").is_file():
        return [folder / "metrics.jsonl"]
    return sorted(folder.glob("*/metrics.jsonl"))


def folder_size(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def qingbert_version(run_dir: Path, stages: list[dict]) -> str | None:
    """The qingbert version in the first readable stage manifest."""
    for s in (s for s in stages if s["folder"]):
        try:
            m = read_manifest(run_dir / s["folder"])
        except QingbertError:
            continue
        if m and isinstance(m.get("versions"), dict) and m["versions"].get("qingbert"):
            return str(m["versions"]["qingbert"])
    return None


# ---------------------------------------------------------------------------
# numbers and their formats


def num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def fmt_time(s) -> str:
    s = num(s)
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_mb(b) -> str:
    return "" if num(b) is None else f"{b / 1e6:,.1f} MB"


def fmt_params(p) -> str:
    return "" if num(p) is None else f"{p / 1e6:.2f} M"


def fmt_num(x, spec=",.1f") -> str:
    return "" if num(x) is None else format(x, spec)


def key_metric(s: dict) -> str:
    """One short line of a stage's most telling numbers."""
    m, kind = s["metrics"], s["kind"]
    pct = lambda k: f"{100 * m[k]:.1f}%" if num(m.get(k)) is not None else "?"
    if s["status"] == "failed" and s.get("error"):
        return "error: " + str(s["error"]).strip().splitlines()[0][:300]
    if num(m.get("score")) is not None:
        return f"{m.get('task') or ''} {m.get('metric') or 'score'} {m['score']:.2f}".strip()
    if isinstance(m.get("scores"), dict):
        return f"{m.get('metric', 'score')}: " + ", ".join(f"{b} {fmt_num(v, '.2f')}" for b, v in m["scores"].items())
    if "masked_accuracy_after" in m:
        before = f"{pct('masked_accuracy_before')} -> " if "masked_accuracy_before" in m else ""
        agree = f", teacher agreement {pct('teacher_agreement')}" if num(m.get("teacher_agreement")) is not None else ""
        return f"masked accuracy {before}{pct('masked_accuracy_after')}{agree}"
    if kind == "serve" and isinstance(m.get("latency_ms"), dict):
        return f"p50 {fmt_num(m['latency_ms'].get('p50'))} ms ({m.get('backend', '?')})"
    if kind == "index" and num(m.get("count")) is not None:
        return f"{m['count']:,} vectors x {m.get('dim', '?')} ({m.get('factory', '?')})"
    if kind == "prepare" and num(m.get("sequences")) is not None:
        return f"{m['sequences']:,} sequences" + (f", {m['chars']:,} chars" if num(m.get("chars")) else "")
    plain = [f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in m.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return ", ".join(plain[:3])


def score_rows(run: dict) -> list[dict]:
    """The dev scores table: one row per fine-tuned / task-distilled model, one per backend of an export, with the
    reference teacher's score (% kept = 100 x score / teacher score) and speed (speed-up = speed / teacher speed)."""
    by_name = {s["name"]: s for s in run["stages"]}
    named = lambda x: x if isinstance(x, str) else None  # a stage name, or None for anything else
    teachers = {named(s["metrics"].get("teacher")) for s in run["stages"]}

    def reference(s: dict) -> dict | None:
        t = named(s["metrics"].get("teacher"))
        if t in by_name:
            return by_name[t]
        return s if s["name"] in teachers else None  # a teacher is its own reference: 100 %, 1.0x

    rows = []
    for s in run["stages"]:
        m = s["metrics"]
        if num(m.get("score")) is not None:
            speed = m.get("speed") if isinstance(m.get("speed"), dict) else {}
            rows.append({"model": s["name"], "backend": "torch", "task": m.get("task"), "metric": m.get("metric"),
                         "score": m["score"], "params": m.get("parameters"), "speed": speed.get("torch"),
                         "ref": reference(s)})
        elif isinstance(m.get("scores"), dict):  # an export: the source's model on every backend
            src = by_name.get(named(m.get("source")), {"name": named(m.get("source")), "metrics": {}})
            ref = reference(src)
            speed = m.get("speed") if isinstance(m.get("speed"), dict) else {}
            for backend, score in m["scores"].items():
                if num(score) is not None:
                    rows.append({"model": f"{s['name']} ({backend})", "backend": backend, "task": m.get("task"),
                                 "metric": m.get("metric"), "score": score, "params": src["metrics"].get("parameters"),
                                 "speed": speed.get(backend), "ref": ref or src})
    for r in rows:
        ref = r.pop("ref") or {"metrics": {}}
        t = ref["metrics"]
        t_speed = (t.get("speed") or {}).get("torch") if isinstance(t.get("speed"), dict) else None
        r["teacher"] = ref.get("name")
        r["teacher_score"] = num(t.get("score"))
        r["kept"] = 100 * r["score"] / r["teacher_score"] if r["teacher_score"] else None
        r["speedup"] = r["speed"] / t_speed if num(r["speed"]) and num(t_speed) else None
    return rows


# ---------------------------------------------------------------------------
# charts: matplotlib's Agg canvas, straight to PNG bytes


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():  # a non-ASCII stage name: boxes instead of glyphs, not an error
        warnings.simplefilter("ignore")
        fig.tight_layout()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_curves(title: str, records: list[dict]) -> bytes | None:
    """Loss, the accuracies and the learning rate of one training run, against the step."""
    train = [r for r in records if r.get("split", "train") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    accs = sorted({k for r in records for k in r if ("accuracy" in k or "agreement" in k) and num(r[k]) is not None})
    panels = [p for p in ("loss", "accuracy", "lr") if p != "accuracy" or accs]
    if not any(num(r.get("loss")) is not None for r in records) and not accs:
        return None
    fig = _figure(3.4 * len(panels), 2.8)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key in (["loss"] if panel == "loss" else accs if panel == "accuracy" else ["lr"]):
            for split, recs, style in (("train", train, "-"), ("eval", evals, "o--")):
                pts = [(r["step"], r[key]) for r in recs if num(r.get(key)) is not None]
                if pts:
                    ax.plot(*zip(*pts), style, lw=1.5, ms=4, label=f"{split} {key}" if panel != "lr" else None)
        ax.set_title({"loss": "loss", "accuracy": "accuracy", "lr": "learning rate"}[panel], fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0] and panel != "lr":
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def plot_pareto(rows: list[dict]) -> bytes | None:
    """Dev score against sentences/s (log scale), one panel per task; fp32 circles, int8 triangles; the dashed line
    joins the models no other model beats on both."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pts = [r for r in rows if num(r["speed"]) and r["speed"] > 0]
    tasks = list(dict.fromkeys(str(r["task"]) for r in pts))
    if not tasks:
        return None
    fig = _figure(max(6.4, 5.2 * len(tasks)), 4.2)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        same: dict[tuple, list[dict]] = {}  # one point, one label for models that coincide (a student, its export)
        for r in pts:
            if str(r["task"]) == task:
                same.setdefault((r["speed"], r["score"], "int8" in str(r["backend"])), []).append(r)
        for j, ((x, y, int8), group) in enumerate(sorted(same.items())):  # labels above and below, in turn
            ax.scatter([x], [y], s=50, marker="^" if int8 else "o", zorder=3)
            params = f" ({group[0]['params'] / 1e6:.1f}M)" if num(group[0]["params"]) else ""
            ax.annotate("\n".join(r["model"] for r in group) + params, (x, y), textcoords="offset points",
                        xytext=(6, 5 if j % 2 == 0 else -5), va="bottom" if j % 2 == 0 else "top", fontsize=7)
        front, best = [], -float("inf")
        for x, y, _ in sorted(same, key=lambda k: (-k[0], -k[1])):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*sorted(front)), "--", color="grey", lw=1, zorder=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sentences / s (log scale)", fontsize=9)
        ax.set_ylabel(f"dev {same[next(iter(same))][0]['metric'] or 'score'}", fontsize=9)
        ax.set_title(task, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.3, y=0.2)
        ax.legend(handles=[Line2D([], [], ls="", marker="o", color="grey", label="fp32"),
                           Line2D([], [], ls="", marker="^", color="grey", label="int8")], fontsize=7)
    return _png(fig)


def plot_sizes(sizes: list[tuple[str, float]]) -> bytes | None:
    """Size on disk per stage, MB, as horizontal bars."""
    if not sizes:
        return None
    fig = _figure(6.4, 0.9 + 0.32 * len(sizes))
    ax = fig.add_subplot()
    ax.barh([n for n, _ in sizes][::-1], [b / 1e6 for _, b in sizes][::-1], color="#4c78a8")
    ax.set_xlabel("MB on disk", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


# ---------------------------------------------------------------------------
# the document: sections of blocks, rendered as HTML and as Markdown
# a block: ("p", text) | ("pre", text) | ("md", Markdown shown as is) | ("table", header, rows) | ("img", chart, caption)


def chart(charts: dict, name: str, caption: str, plot, *args) -> list:
    """The block showing ``plot(*args)``'s PNG, kept as ``name`` (none without matplotlib or without data)."""
    png = plot(*args) if importlib.util.find_spec("matplotlib") else None
    if not png:
        return []
    charts[name] = png
    return [("img", name, caption)]


def stages_section(stages: list[dict], size: dict) -> list:
    rows = [[s["name"], s["kind"], s["status"], fmt_time(s.get("duration_s")), key_metric(s), fmt_mb(size[s["name"]])]
            for s in stages]
    errors = [("pre", f"{s['name']} failed: {s['error']}") for s in stages  # in full when the table cut it
              if s["status"] == "failed" and s.get("error") and key_metric(s) != f"error: {str(s['error']).strip()}"]
    return [("table", ["stage", "kind", "status", "time", "key metric", "size"], rows)] + errors


def curves_section(stages: list[dict], run_dir: Path, charts: dict) -> list:
    blocks = []
    for s in (s for s in stages if s["kind"] in TRAINING_KINDS and s["folder"]):
        for path in metrics_files(run_dir / s["folder"]):
            title = s["name"] if path.parent == run_dir / s["folder"] else f"{s['name']}/{path.parent.name}"
            name = f"curves-{sum(n.startswith('curves-') for n in charts):02d}-{_slug(title)}"
            blocks += chart(charts, name, f"{title}: training curves", plot_curves, f"{title} ({s['kind']})",
                            read_metrics(path))
    return blocks or [("p", "No training curves: no stage of this run left a metrics.jsonl.")]


def scores_section(run: dict, charts: dict) -> list:
    scores = score_rows(run)
    if not scores:
        return [("p", "No stage of this run has a dev score.")]
    head = ["model", "task", "metric", "score", "teacher", "teacher score", "% of teacher", "parameters",
            "sentences/s", "speed-up"]
    rows = [[r["model"], r["task"] or "", r["metric"] or "", fmt_num(r["score"], ".2f"), r["teacher"] or "",
             fmt_num(r["teacher_score"], ".2f"), fmt_num(r["kept"], ".1f") + (" %" if r["kept"] else ""),
             fmt_params(r["params"]), fmt_num(r["speed"]), fmt_num(r["speedup"], ".1f") + ("x" if r["speedup"] else "")]
            for r in scores]
    note = ("sentences/s: batch 32 x 128 tokens, on the machine that ran the recipe; % of teacher = 100 x score / the "
            "teacher's score; speed-up = sentences/s / the teacher's (torch)")
    return [("table", head, rows), ("p", note)] + chart(charts, "pareto", "dev score vs speed, per task",
                                                        plot_pareto, scores)


def sizes_section(stages: list[dict], size: dict, charts: dict) -> list:
    sizes = [(s["name"], size[s["name"]]) for s in stages if size[s["name"]] is not None]
    blocks = [("p", f"{fmt_mb(sum(b for _, b in sizes))} in all.")] if sizes else [("p", "No sizes recorded.")]
    blocks += chart(charts, "sizes", "size on disk per stage", plot_sizes, sizes)
    for s in stages:
        files = s["metrics"].get("files")
        if isinstance(files, dict) and files:
            blocks += [("p", f"Files of {s['name']}:"), ("table", ["file", "size"],
                                                          [[f, fmt_mb(b)] for f, b in files.items()])]
    return blocks


def latency_section(stages: list[dict]) -> list:
    rows = [[s["name"], str(s["metrics"].get("backend", "")), fmt_num(s["metrics"].get("requests"), ",.0f")]
            + [fmt_num(s["metrics"]["latency_ms"].get(p)) for p in ("p50", "p90", "p99")]
            for s in stages if isinstance(s["metrics"].get("latency_ms"), dict)]
    return [("table", ["stage", "backend", "requests", "p50 ms", "p90 ms", "p99 ms"], rows)] if rows else []


def build_sections(run: dict, run_dir: Path) -> tuple[list, dict]:
    """The report's sections, and the charts they show (name -> PNG bytes)."""
    stages, charts = run["stages"], {}
    size = {s["name"]: s["size_bytes"] if num(s.get("size_bytes")) is not None else
            folder_size(run_dir / s["folder"]) if s["folder"] else None for s in stages}
    sections = [("Stages", stages_section(stages, size)),
                ("Training curves", curves_section(stages, run_dir, charts)),
                ("Dev scores", scores_section(run, charts)),
                ("Sizes on disk", sizes_section(stages, size, charts)),
                ("Serving latency", latency_section(stages))]
    for s in (s for s in stages if s["kind"] == "bench" and s["folder"]):
        md = run_dir / s["folder"] / "results.md"
        if md.is_file():
            sections.append((f"Benchmark: {s['name']}", [("md", md.read_text(encoding="utf-8", errors="replace"))]))
    if not importlib.util.find_spec("matplotlib"):
        sections.insert(0, ("Charts", [("p", "No charts: matplotlib is not installed (pip install 'qingbert[plots]').")]))
    return [(title, blocks) for title, blocks in sections if blocks], charts


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "stage"


def header(run: dict, version: str | None) -> list[tuple[str, str]]:
    return [("recipe", str(run.get("recipe", "?"))), ("status", str(run.get("status", "?"))),
            ("started", str(run.get("started") or "?")), ("finished", str(run.get("finished") or "-")),
            ("total time", fmt_time(run.get("elapsed_s")) or "?")] + ([("qingbert", version)] if version else [])


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#1f2328}h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;
margin-top:1.6em}.meta{color:#59636e}table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;
padding:4px 9px;text-align:left;font-size:14px}th{background:#f6f8fa}img{max-width:100%;display:block;
margin:.6em 0}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}.failed td{background:#ffebe9}
figcaption{color:#59636e;font-size:13px}"""


def render_html(run: dict, version: str | None, sections: list, figures: dict) -> str:
    e = html.escape
    title = f"qingbert run: {run.get('name') or run.get('recipe') or '?'}"
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
           '<p class="meta">' + " &middot; ".join(
               f'{e(k)} <strong style="color:{COLOURS.get(v, "#1f2328")}">{e(v)}</strong>' if k == "status"
               else f"{e(k)} {e(v)}" for k, v in header(run, version)) + "</p>"]
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for block in blocks:
            if block[0] == "p":
                out.append(f"<p>{e(block[1])}</p>")
            elif block[0] in ("pre", "md"):
                out.append(f"<pre>{e(block[1])}</pre>")
            elif block[0] == "img":
                data = base64.b64encode(figures[block[1]]).decode("ascii")
                out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(block[2])}">'
                           f"<figcaption>{e(block[2])}</figcaption></figure>")
            else:
                out.append("<table>\n<tr>" + "".join(f"<th>{e(h)}</th>" for h in block[1]) + "</tr>")
                status = block[1].index("status") if "status" in block[1] else -1  # the stages table's colours
                for row in block[2]:
                    cells = "".join(f'<td style="color:{COLOURS[c]}">{e(c)}</td>' if j == status and c in COLOURS
                                    else f"<td>{e(str(c))}</td>" for j, c in enumerate(row))
                    out.append(f'<tr class="failed">{cells}</tr>' if status >= 0 and row[status] == "failed"
                               else f"<tr>{cells}</tr>")
                out.append("</table>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def render_markdown(run: dict, version: str | None, sections: list) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")
    out = [f"# qingbert run: {run.get('name') or run.get('recipe') or '?'}", "",
           " · ".join(f"{k} {v}" for k, v in header(run, version))]
    for heading, blocks in sections:
        out += ["", f"## {heading}", ""]
        for block in blocks:
            if block[0] == "p":
                out += [block[1], ""]
            elif block[0] == "pre":
                out += ["```", block[1].rstrip("\n"), "```", ""]
            elif block[0] == "md":
                out += [block[1], ""]
            elif block[0] == "img":
                out += [f"![{block[2]}]({FIGURES}/{block[1]}.png)", ""]
            else:
                out.append("| " + " | ".join(map(cell, block[1])) + " |")
                out.append("|" + "---|" * len(block[1]))
                out += ["| " + " | ".join(map(cell, row)) + " |" for row in block[2]] + [""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# the verb


def write_report(run_dir: str | Path) -> dict:
    """Write ``report.html``, ``report.md`` and ``report-figures/*.png`` into a run folder; returns
    ``{"html": Path, "markdown": Path, "figures": [names]}``."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    sections, charts = build_sections(run, run_dir)
    version = qingbert_version(run_dir, run["stages"])
    fig_dir = run_dir / FIGURES
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):  # charts an earlier report of this folder made (by their names) and no longer
        if old.stem not in charts and OWN_FIGURE.match(old.stem):
            old.unlink()
    for name, png in charts.items():
        tmp = fig_dir / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(png)
        os.replace(tmp, fig_dir / f"{name}.png")
    atomic_write_text(run_dir / "report.md", render_markdown(run, version, sections))
    atomic_write_text(run_dir / "report.html", render_html(run, version, sections, charts))
    return {"html": run_dir / "report.html", "markdown": run_dir / "report.md", "figures": list(charts)}


__all__ = ["load_run", "read_metrics", "score_rows", "write_report"]
