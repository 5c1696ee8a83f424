"""``qingbert run RECIPE``: the stages of a recipe, in order, each the existing Python function, unchanged.

A stage is skipped when its folder's manifest carries the stage's fingerprint (its kind, inputs, options, the
fingerprints of the stages it uses, and the size and time of the local files it reads); a changed stage runs again,
and so does everything downstream of it (their fingerprints include its own).  A training stage that was interrupted
resumes from its last checkpoint (the training loop's ``--resume``, which itself refuses another run's checkpoints).
``run.json`` in the run folder records every stage: inputs, fingerprint, status, duration and key metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

from qingbert.errors import QingbertError
from qingbert.manifest import atomic_write_text, read_json, read_manifest, write_manifest
from qingbert.pipeline.recipe import REF, Recipe, Stage, build_configs, kinds, load_recipe
from qingbert.pipeline.report import RUN_FORMAT, folder_size

SERVE_FORMAT = "qingbert.serve-check/1"
RUN_JSON = "run.json"


# ---------------------------------------------------------------------------
# planning: what runs, what is up to date


def output_dir(run_dir: Path, st: Stage) -> Path:
    """The folder ``${stage}`` stands for: the stage's folder (a general distillation with an assistant: its
    ``student/``)."""
    folder = run_dir / st.name
    return folder / "student" if st.kind == "distill" and "assistant" in st.inputs else folder


def _base(recipe: Recipe) -> Path:
    return Path.cwd() if recipe.source.startswith("builtin:") else recipe.path.parent.resolve()


def _local(value: str, base: Path) -> Path | None:
    """A value that names an existing local file or folder (relative to the recipe), else None."""
    if value.startswith(("builtin:", "random:")) or "://" in value:
        return None
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    return p.resolve() if p.exists() else None


def _stamp(path: Path) -> list:
    """Size and time of a local input: a file's own, a folder's manifest (or its files, up to 2,000)."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    if (path / "manifest.json").is_file():
        return _stamp(path / "manifest.json")
    files = sorted(p for p in path.rglob("*") if p.is_file())[:2000]
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _resolve(value, run_dir: Path, recipe: Recipe, fps: dict | None):
    """``${stage}`` -> the stage's folder (``fps`` given: its fingerprint, for the signature); local paths made
    absolute (and stamped, for the signature)."""
    base = _base(recipe)
    if isinstance(value, dict):
        return {k: _resolve(v, run_dir, recipe, fps) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, run_dir, recipe, fps) for v in value]
    if not isinstance(value, str):
        return value
    if REF.search(value):
        def sub(m):
            name, _, rest = m.group(1).strip().partition("/")
            st = recipe.stages[name]
            if fps is not None:
                return f"${{{name}@{fps[name]}}}" + (f"/{rest}" if rest else "")
            return str(output_dir(run_dir, st) / rest if rest else output_dir(run_dir, st))
        return REF.sub(sub, value)
    local = _local(value, base)
    if local is None:
        return value
    return {"path": str(local), "stamp": _stamp(local)} if fps is not None else str(local)


def signature(st: Stage, run_dir: Path, recipe: Recipe, fps: dict) -> dict:
    return {"kind": st.kind, "inputs": _resolve(st.inputs, run_dir, recipe, fps),
            "options": _resolve(st.options, run_dir, recipe, fps)}


def fingerprint(sig: dict) -> str:
    return hashlib.sha256(json.dumps(sig, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def read_run(run_dir: Path) -> dict | None:
    path = run_dir / RUN_JSON
    return read_json(path, hint=f"delete {path} to start the run's record over") if path.is_file() else None


def _what_changed(old: dict | None, new: dict) -> str:
    if not old:
        return "new"

    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, list) and any(isinstance(x, dict) for x in v):
                v = {str(i): x for i, x in enumerate(v)}
            if isinstance(v, dict) and "stamp" not in v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    named = []
    for k in keys:
        short = k.split(".", 1)[-1]
        ups = sorted(set(REF.findall(json.dumps(b.get(k)))) - set(REF.findall(json.dumps(a.get(k)))))
        if ups:
            named.append(f"{short} (upstream {', '.join(u.split('@')[0] for u in ups)} changed)")
        elif isinstance(b.get(k), dict) and "stamp" in b.get(k):
            named.append(f"{short} (file changed)")
        else:
            named.append(f"{short} {a.get(k)!r} -> {b.get(k)!r}")
    return "changed: " + "; ".join(named) if named else "changed"


def plan(recipe: Recipe, run_dir: Path, until: str | None = None, only: str | None = None,
         overwrite: bool = False) -> list[dict]:
    """One entry per stage, in order: ``{"stage", "kind", "action", "why", "fingerprint", "signature"}``; action is
    ``run``, ``resume``, ``up-to-date`` or ``not selected``.  Refuses a stage folder that this run did not make."""
    for name in (until, only):
        if name is not None and name not in recipe.stages:
            from qingbert.errors import closest

            guess = closest(name, recipe.stages)
            raise QingbertError(f"{recipe.source}: no stage '{name}'",
                                hint=(f"did you mean '{guess}'? " if guess else "") + "stages: "
                                + ", ".join(recipe.stages))
    selected = set(recipe.stages)
    if until is not None:
        selected, todo = set(), [until]
        while todo:
            name = todo.pop()
            if name not in selected:
                selected.add(name)
                todo.extend(recipe.stages[name].depends)
    if only is not None:
        selected = {only}
    previous = {s["name"]: s for s in (read_run(run_dir) or {}).get("stages", [])}
    fps: dict[str, str] = {}
    steps = []
    table = kinds()
    for name, st in recipe.stages.items():
        sig = signature(st, run_dir, recipe, fps)
        fps[name] = fp = fingerprint(sig)
        folder = run_dir / name
        manifest = _safe_manifest(folder)
        done = (manifest or {}).get("run", {}).get("fingerprint") == fp
        prev = previous.get(name)
        ours = prev is not None or (manifest or {}).get("run", {}).get("stage") == name
        if folder.exists() and any(folder.iterdir()) and not ours and not overwrite:
            raise QingbertError(f"{folder}: exists and was not made by this recipe's stage '{name}'",
                                hint="pass --overwrite to let the run replace it, or give the run another --out")
        upstream_stale = [d for d in st.depends if any(s["stage"] == d and s["action"] in ("run", "resume")
                                                       for s in steps)]
        if done and not upstream_stale:
            action, why = "up-to-date", "its folder's manifest has this fingerprint"
        elif (prev and prev.get("fingerprint") == fp and prev.get("status") in ("running", "failed")
              and table[st.kind].trains and _has_checkpoints(folder)):
            action, why = "resume", f"interrupted ({prev.get('status')}); its checkpoints are this run's"
        elif prev and prev.get("signature") == sig and prev.get("status") in ("running", "failed", "pending"):
            action, why = "run", {"running": "interrupted before it finished", "failed": "failed before",
                                  "pending": "not run yet"}[prev["status"]]
        else:
            action, why = "run", _what_changed((prev or {}).get("signature"), sig) if prev else "new"
        if name not in selected and action != "up-to-date":
            action, why = "not selected", why
        if only is not None and name != only and name in {d for d in recipe.stages[only].depends} \
                and action != "up-to-date":
            raise QingbertError(f"--only {only}: it needs stage '{name}', which is not up to date ({why})",
                                hint=f"run `--until {only}` instead, or run '{name}' first")
        steps.append({"stage": name, "kind": st.kind, "action": action, "why": why, "fingerprint": fp,
                      "signature": sig, "depends": list(st.depends)})
    return steps


def _safe_manifest(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except QingbertError:
        return None


def _has_checkpoints(folder: Path) -> bool:
    """The training loop's checkpoints in the stage folder (or a sub-run's: a distillation's assistant/student)."""
    from qingbert.training.loop import list_checkpoints

    if not folder.is_dir():
        return False
    return any(list_checkpoints(d) for d in [folder, *(p for p in folder.iterdir() if p.is_dir())])


def format_plan(steps: list[dict]) -> str:
    width = max(len(s["stage"]) for s in steps)
    return "\n".join(f"  {s['stage']:<{width}}  {s['kind']:<8}  {s['action']:<12}  {s['why']}" for s in steps)


# ---------------------------------------------------------------------------
# running


def run_recipe(source: str | Path, out: str | Path | None = None, *, until: str | None = None,
               only: str | None = None, dry_run: bool = False, overwrite: bool = False, report: bool = True,
               progress: bool = True, sets: list[str] = (), echo=print) -> dict:
    """Run a recipe (a YAML file or ``builtin:NAME``; ``sets``: ``STAGE.KEY=VALUE`` overrides); returns the run
    record (``run.json``)."""
    recipe = load_recipe(source, sets)
    run_dir = Path(out or recipe.out or f"runs/{recipe.name}").resolve()
    steps = plan(recipe, run_dir, until, only, overwrite)
    echo(f"recipe {recipe.source} -> {run_dir}")
    echo(format_plan(steps))
    if dry_run:
        return {"plan": steps, "out": str(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    record = read_run(run_dir) or {}
    old = {s["name"]: s for s in record.get("stages", [])}
    record = {"format": RUN_FORMAT, "recipe": recipe.source, "name": recipe.name, "out": str(run_dir),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running",
              "stages": [old.get(s["stage"]) or {"name": s["stage"], "kind": s["kind"], "status": "pending"}
                         for s in steps]}
    by_name = {s["name"]: s for s in record["stages"]}
    t_run = time.time()
    for step in steps:
        rec = by_name[step["stage"]]
        rec.update(kind=step["kind"], folder=step["stage"], depends=step["depends"])
        if step["action"] in ("not selected", "up-to-date"):
            if step["action"] == "up-to-date":
                rec.update(status="up-to-date", fingerprint=step["fingerprint"], signature=step["signature"])
                echo(f"\n== {step['stage']} ({step['kind']}): up to date ==")
            continue
        st = recipe.stages[step["stage"]]
        echo(f"\n== {st.name} ({st.kind}): {'resuming' if step['action'] == 'resume' else step['why']} ==")
        rec.update(status="running", fingerprint=step["fingerprint"], signature=step["signature"], error=None,
                   duration_s=None, metrics={})
        _write_run(run_dir, record)
        t0 = time.time()
        try:
            metrics = run_stage(st, recipe, run_dir, resume=step["action"] == "resume", progress=progress,
                                echo=echo)
        except BaseException as e:
            rec.update(status="failed", duration_s=round(time.time() - t0, 1),
                       error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            record.update(status="failed", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          elapsed_s=round(time.time() - t_run, 1))
            _write_run(run_dir, record)
            raise
        _mark_done(run_dir / st.name, recipe, st, step["fingerprint"])
        rec.update(status="done", duration_s=round(time.time() - t0, 1), metrics=metrics,
                   size_bytes=folder_size(run_dir / st.name))
        _write_run(run_dir, record)
    for rec in record["stages"]:  # metrics and sizes of every stage, for the report
        folder = run_dir / rec["name"]
        if rec.get("status") == "up-to-date" and not rec.get("metrics"):
            rec["metrics"] = collect_metrics(recipe.stages[rec["name"]], folder, run_dir)
        if folder.exists():
            rec["size_bytes"] = folder_size(folder)
    if any(s["action"] in ("run", "resume") for s in steps):
        measure_models(record, run_dir, echo=echo)
    selected_all = all(s["action"] != "not selected" for s in steps)
    record.update(status="done" if selected_all else "partial", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  elapsed_s=round(time.time() - t_run, 1))
    _write_run(run_dir, record)
    echo("\n" + summary(record))
    if report:
        from qingbert.pipeline.report import write_report

        paths = write_report(run_dir)
        record["report"] = {k: str(v) for k, v in paths.items() if k in ("html", "markdown")}
        echo(f"report: {paths['html']} (Markdown: {paths['markdown']})")
    return record


def _write_run(run_dir: Path, record: dict) -> None:
    atomic_write_text(run_dir / RUN_JSON, json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n")


def _mark_done(folder: Path, recipe: Recipe, st: Stage, fp: str) -> None:
    """The stage's folder says which recipe stage made it and with which fingerprint (what makes it up to date)."""
    m = read_manifest(folder) or {"format": SERVE_FORMAT if st.kind == "serve" else "qingbert.stage/1"}
    m["run"] = {"recipe": recipe.source, "stage": st.name, "kind": st.kind, "fingerprint": fp}
    write_manifest(folder, m)


def summary(record: dict) -> str:
    """The run in a few lines: each stage's status and time; each student's % of its teacher and speed-up."""
    lines = [f"run {record['name']}: {record['status']} in {record.get('elapsed_s', 0):.0f} s"]
    for s in record["stages"]:
        t = f"{s['duration_s']:.0f} s" if s.get("duration_s") is not None else ""
        lines.append(f"  {s['name']:<22} {s.get('status', ''):<11} {t}")
    stages = {s["name"]: s for s in record["stages"]}
    for s in record["stages"]:
        m = s.get("metrics") or {}
        ref = (stages.get(m.get("teacher")) or {}).get("metrics") or {}
        if m.get("score") is not None and ref.get("score"):
            speed = (m.get("speed") or {}).get("torch")
            tspeed = (ref.get("speed") or {}).get("torch")
            up = f", {speed / tspeed:.2f}x the teacher's speed" if speed and tspeed else ""
            lines.append(f"{s['name']}: {m['task']} dev {m['metric']} {m['score']:.2f} = "
                         f"{100 * m['score'] / ref['score']:.1f} % of {m['teacher']} ({ref['score']:.2f}){up}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the stages: each calls the existing function


def run_stage(st: Stage, recipe: Recipe, run_dir: Path, resume: bool = False, progress: bool = True,
              echo=print) -> dict:
    """Run one stage into ``run_dir/<stage>``; returns its key metrics."""
    inputs = _resolve(st.inputs, run_dir, recipe, None)
    options = _resolve(st.options, run_dir, recipe, None)
    out = run_dir / st.name
    return STAGES[st.kind](st, inputs, options, out, resume=resume, progress=progress, echo=echo)


def _train(cfg, resume: bool, progress: bool):
    cfg.train.resume = resume
    cfg.train.overwrite = not resume  # the folder is this stage's own earlier output
    cfg.train.progress = progress
    return cfg


def _prepare(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.data.prepare import prepare, prepare_summary

    m = prepare(inp["sources"] if isinstance(inp["sources"], list) else [inp["sources"]], out,
                **{"progress": progress, **opts, "overwrite": True})
    echo(prepare_summary(m))
    return collect_metrics(st, out, out.parent)


def _vocab(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.data.vocab import build_vocab, vocab_summary

    r = build_vocab(inp["sources"] if isinstance(inp["sources"], list) else [inp["sources"]], out,
                    **{**opts, "overwrite": True})
    echo(vocab_summary(r))
    return collect_metrics(st, out, out.parent)


def _pretrain(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.pretraining.pretrain import pretrain

    cfg = _train(build_configs(st, opts)["config"], resume, progress)
    m = pretrain(inp["model"], inp["data"], out, cfg)
    a, b = m.get("eval_after") or {}, m.get("eval_before") or {}
    if a:
        echo(f"{m['steps']} steps in {m['elapsed_s']:.0f} s; held-out masked accuracy "
             f"{100 * b.get('masked_accuracy', 0):.1f}% -> {100 * a.get('masked_accuracy', 0):.1f}%")
    return collect_metrics(st, out, out.parent)


def _finetune(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.tasks.finetune import finetune, format_scores

    cfg = _train(build_configs(st, opts)["config"], resume, progress)
    r = finetune(inp["model"], inp["task"], out, inp.get("data_dir"), config=cfg)
    echo(f"{inp['task']}: dev {format_scores(r['dev'])}")
    return collect_metrics(st, out, out.parent)


def _distill(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.distillation.distill import distill, distill_task
    from qingbert.tasks.finetune import format_scores

    built = build_configs(st, opts)
    cfg = _train(built["config"], resume, progress)
    teacher = inp["teacher"]
    if st.general:
        if inp.get("assistant"):
            distill(teacher, inp["student"], inp["data"], out, assistant=inp["assistant"], config=cfg)
        else:
            from qingbert.distillation.distill import distill_general

            distill_general(teacher, inp["student"], inp["data"], out, cfg)
    else:
        r = distill_task(teacher, inp["student"], inp["task"], out, inp.get("data_dir"), config=cfg,
                         finetune_config=built["finetune_config"])
        echo(f"{inp['task']}: dev {format_scores(r['dev'])}")
    metrics = collect_metrics(st, out, out.parent)
    if st.general and metrics.get("masked_accuracy_after") is not None:
        echo(f"{metrics.get('steps')} steps; student masked accuracy {100 * metrics['masked_accuracy_after']:.1f}%, "
             f"top-1 agreement with the teacher {100 * (metrics.get('teacher_agreement') or 0):.1f}%")
    return metrics


def _bench(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.tasks.bench import bench

    tasks = inp["tasks"] if isinstance(inp["tasks"], list) else [inp["tasks"]]
    models = inp["models"] if isinstance(inp["models"], list) else [inp["models"]]
    res = bench({**opts, "models": models, "tasks": tasks, "out": str(out), "data_dir": inp.get("data_dir")})
    return {"best": res.get("best")} if isinstance(res, dict) else {}


def _export(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.deploy.export import export, export_summary

    rec = export(inp["model"], out, task=inp.get("task"), data_dir=inp.get("data_dir"), overwrite=True, **opts)
    echo(export_summary(rec))
    return collect_metrics(st, out, out.parent)


def _index(st, inp, opts, out, *, resume, progress, echo):
    from qingbert.deploy.index import build_index

    opts = dict(opts)
    limit = opts.pop("limit", None)
    corpus = inp["corpus"]
    if corpus.startswith("builtin:") or limit:  # texts of a built-in source (or the first ``limit``): a file first
        from qingbert.data.corpus import read_sources
        from qingbert.data.text import Stats

        texts = []
        for text, _ in read_sources([corpus], Stats(), opts.get("text_field", "text")):
            if text.strip():
                texts.append(" ".join(text.split()))
            if limit and len(texts) >= limit:
                break
        work = out.parent / ".inputs"
        work.mkdir(exist_ok=True)
        corpus = work / f"{st.name}.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    m = build_index(inp["model"], corpus, out, overwrite=True, progress=progress, **opts)
    echo(f"index: {m['count']:,} texts, {m['dim']} dimensions, faiss {m['factory']}")
    return collect_metrics(st, out, out.parent)


SERVE_TEXTS = ["质量很好，下次还买", "太差了，再也不买了", "物流很快，包装也很好", "客服态度不好，不推荐"]


def _serve(st, inp, opts, out, *, resume, progress, echo):
    """Start ``qingbert serve`` on the model (and index) as its own process, as a user would, on a free loopback port;
    send encode, classify, search and one bad request; time ``requests`` single-text requests; stop it."""
    import httpx
    import numpy as np

    texts = list(opts.get("texts") or SERVE_TEXTS)
    n = int(opts.get("requests", 50))
    rec: dict = {"format": SERVE_FORMAT, "model": inp["model"], "index": inp.get("index"), "requests": n}
    out.mkdir(parents=True, exist_ok=True)
    with _server(inp["model"], inp.get("index"), int(opts.get("max_batch", 32)), out / "server.log") as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        health = c.get("/health").json()
        rec["backend"], rec["kind"] = health.get("backend"), health.get("kind")
        echo(f"server at {url}: a {health.get('kind')} model on {health.get('backend')}")
        enc = c.post("/encode", json={"id": 1, "texts": texts, "is_tokenized": False}).json()
        echo(f"POST /encode   -> {len(enc['results'])} vectors of {len(enc['results'][0])} floats")
        route = "/classify" if health.get("kind") not in (None, "encoder") else "/encode"
        if route == "/classify":
            for t, r in zip(texts, c.post("/classify", json={"texts": texts}).json()["results"]):
                label = r.get("label") if isinstance(r, dict) else r
                echo(f"POST /classify -> {t}: {label}" + (f" ({r['score']:.2f})" if isinstance(r, dict)
                                                          and "score" in r else ""))
        if inp.get("index"):
            query = opts.get("query") or texts[0]
            hits = c.post("/search", json={"query": query, "top_k": 3}).json()["results"]
            echo(f"POST /search   -> {query}:")
            for h in hits:
                echo(f"    {h['score']:.3f}  {h['text'][:40]}")
        bad = c.post("/encode", json={"id": 2, "texts": []})
        echo(f"POST /encode with no texts -> {bad.status_code}: {bad.json()['error']['message']}")
        times = []
        body = (lambda t: {"texts": [t]}) if route == "/classify" else (lambda t: {"id": 0, "texts": [t]})
        for i in range(n):
            t0 = time.perf_counter()
            r = c.post(route, json=body(texts[i % len(texts)]))
            times.append(1000 * (time.perf_counter() - t0))
            if r.status_code != 200:
                raise QingbertError(f"serve check: {route} answered {r.status_code}: {r.text[:200]}")
    p = {f"p{q}": round(float(np.percentile(times, q)), 2) for q in (50, 90, 99)}
    rec.update(route=route, latency_ms=p, bad_request_status=bad.status_code)
    echo(f"{n} single-text {route} requests, one at a time: p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms; "
         "server stopped")
    write_manifest(out, rec)
    return collect_metrics(st, out, out.parent)


@contextmanager
def _server(model: str, index: str | None, max_batch: int, log: Path, timeout_s: float = 180.0):
    """``qingbert serve`` in a child process on a free loopback port; yields its URL once /health answers."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "qingbert", "serve", str(model), "--port", str(port), "--max-batch", str(max_batch),
           "--log-level", "warning"] + (["--index", str(index)] if index else [])
    url = f"http://127.0.0.1:{port}"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
                raise QingbertError(f"qingbert serve exited with status {proc.returncode}: {' '.join(tail)}",
                                    hint=f"its output is in {log}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise QingbertError(f"qingbert serve did not answer within {timeout_s:.0f} s", hint=f"see {log}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


STAGES = {"prepare": _prepare, "vocab": _vocab, "pretrain": _pretrain, "distill": _distill, "finetune": _finetune,
          "bench": _bench, "export": _export, "index": _index, "serve": _serve}


# ---------------------------------------------------------------------------
# key metrics of a finished stage (from its manifest), for run.json and the report


def measure_models(record: dict, run_dir: Path, rounds: int = 2, repeats: int = 5, echo=print) -> None:
    """Sentences/s of every fine-tuned or distilled model of the run (the encoder, torch, batch 32 x 128 tokens, this
    machine; bench's measurement), the models interleaved and the best of ``rounds`` kept, so that a teacher and its
    student are timed under the same conditions."""
    from qingbert.tasks.bench import measure_speed

    models = [s for s in record["stages"] if (s.get("metrics") or {}).get("score") is not None
              and s.get("kind") in ("finetune", "distill") and (run_dir / s["name"]).is_dir()]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for s in models:
            try:
                speed = measure_speed(run_dir / s["name"], repeats=repeats)["seq_per_s"]
            except Exception:  # noqa: BLE001 - a figure for the report, never a reason to fail the run
                continue
            best[s["name"]] = max(best.get(s["name"], 0.0), speed)
    for s in models:
        if s["name"] in best:
            s["metrics"]["speed"] = {"torch": best[s["name"]]}
    if best:
        echo(f"speed (sentences/s, encoder, batch 32 x 128, torch, best of {rounds} interleaved rounds): "
             + ", ".join(f"{k} {v:,.0f}" for k, v in best.items()))


def _params(folder: Path) -> int | None:
    """Parameters of the folder's encoder (bench's count: from the config, no weights loaded)."""
    from qingbert.tasks.bench import count_params

    try:
        return count_params(str(folder))
    except QingbertError:
        return None


def collect_metrics(st: Stage, folder: Path, run_dir: Path) -> dict:
    m = _safe_manifest(folder if not (st.kind == "distill" and "assistant" in st.inputs) else folder / "student")
    if not m:
        return {}
    k = st.kind
    if k == "prepare":
        splits = m.get("splits") or {}
        return {"sequences": sum((s or {}).get("sequences", 0) for s in splits.values()),
                "texts": sum((s or {}).get("texts", 0) for s in splits.values()),
                "chars_per_s": m.get("chars_per_s"),
                "segmentation_f1": (m.get("segmentation_vs_gold") or {}).get("word_f1")}
    if k == "vocab":
        return {"size": m.get("vocab_size"), "unk_rate": m.get("heldout_unk_rate")}
    if k in ("pretrain",) or (k == "distill" and st.general):
        before, after = m.get("eval_before") or {}, m.get("eval_after") or {}
        params = m.get("parameters")
        return {"stage": "general" if k == "distill" else "pretrain", "steps": m.get("steps"),
                "parameters": params.get("student") if isinstance(params, dict) else params,
                "masked_accuracy_before": before.get("masked_accuracy"),
                "masked_accuracy_after": after.get("masked_accuracy"),
                "teacher_agreement": after.get("teacher_agreement")}
    if k in ("finetune", "distill"):
        dev = m.get("dev") or {}
        out = {"task": m.get("task") or st.inputs.get("task"), "metric": dev.get("metric"), "score": dev.get("score"),
               "parameters": m.get("parameters") or _params(folder)}
        if k == "distill":
            out["stage"] = "task"
            teacher = st.inputs.get("teacher")
            refs = REF.findall(teacher if isinstance(teacher, str) else (teacher or [""])[0])
            if refs:
                out["teacher"] = refs[0].strip().split("/")[0]
        return out
    if k == "export":
        ex = m.get("export") or {}
        backends = ex.get("backends") or {}
        scores = {b: (r.get("parity") or {}).get("dev_score", (r.get("parity") or {}).get("dev_score_torch"))
                  for b, r in backends.items()}
        torch_score = next((r["parity"].get("dev_score_torch") for r in backends.values()
                            if (r.get("parity") or {}).get("dev_score_torch") is not None), None)
        if torch_score is not None:
            scores["torch"] = torch_score
        src = st.inputs.get("model", "")
        refs = REF.findall(src) if isinstance(src, str) else []
        files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
                 if p.is_file() and p.suffix in (".onnx", ".safetensors")}
        return {"source": refs[0].strip().split("/")[0] if refs else src, "task": (m.get("dev") or {}).get("task")
                or m.get("task"), "metric": (m.get("dev") or {}).get("metric"),
                "scores": {b: s for b, s in scores.items() if s is not None},
                "speed": {b: r.get("seq_per_s") for b, r in backends.items()}, "files": files,
                "parameters": m.get("parameters") or _params(folder)}
    if k == "index":
        return {"count": m.get("count"), "dim": m.get("dim"), "factory": m.get("factory")}
    if k == "serve":
        return {"requests": m.get("requests"), "latency_ms": m.get("latency_ms"), "backend": m.get("backend"),
                "route": m.get("route")}
    return {}


__all__ = ["run_recipe", "plan", "format_plan", "run_stage", "summary", "output_dir", "RUN_FORMAT"]
