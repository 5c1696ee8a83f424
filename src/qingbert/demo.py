"""``qingbert demo``: the pipeline on the built-in Chinese data, end to end.

The model zoo; People's Daily + reviews -> clean/dedup -> rjieba segmentation ->
a vocab built from the corpus -> WWM-ready packed shards (a few sentences shown
with their whole-word masks); then a small teacher pretrained with whole-word
masking, with masked-token accuracy before and after and a few filled-in masks;
the teacher and a random-init model of its shape fine-tuned on the built-in
sentiment and NER tasks; and the teacher distilled into a narrow-deep student
(general stage, then task stage from each fine-tuned teacher) with its size,
speed and dev scores next to the teacher's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qingbert.data.builtin import reviews
from qingbert.data.prepare import load_prepared, prepare, prepare_summary
from qingbert.data.wwm import sample_word_mask, show_masked
from qingbert.deploy.index import build_index
from qingbert.distillation.distill import distill_general, distill_task
from qingbert.models import zoo
from qingbert.models.loading import load_tokenizer
from qingbert.pretraining.pretrain import fill_mask, format_fill, pretrain
from qingbert.serve.workers import running_server
from qingbert.tasks.finetune import finetune

SOURCES = ["builtin:peoples-daily", "builtin:reviews"]
SEQ_LEN = 128
# MiniRBT-H256's width with 2 layers, from the local-attention init (qingbert.models.inits), no dropout while
# pretraining, 40 % of words masked, packed texts kept apart (document mask), lr 1e-3: about 5 minutes on 2 CPU
# cores.  Measured here (held-out masked accuracy at 15 % masking / loss): transformers' default init stays near
# the unigram plateau (14 % / 5.71 after 2,500 steps); this recipe reaches 20 % / 5.06 in 1,200 steps, and
# fine-tuned NER gains ~30 F1 over random init.
TEACHER = "minirbt-h256"
TEACHER_RECIPE = {"max_steps": 1200, "batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.05, "eval_batches": 16,
                  "mlm_probability": 0.4, "train_dropout": 0.0, "init": "local-attention", "document_mask": True,
                  "save_every": 200, "log_every": 50, "overrides": {"num_hidden_layers": 2}}
# fine-tuning the teacher and a random-init model of the same shape on the built-in tasks (one recipe for both)
FINETUNE_TASKS = ["builtin:reviews-sentiment", "builtin:peoples-daily-ner"]
FINETUNE_RECIPE = {"epochs": 3, "batch_size": 32, "lr": 3e-4, "max_len": 128, "warmup_ratio": 0.1,
                   "save_every": 0, "log_every": 50, "max_train_examples": 2000}
# distillation: a narrow-deep student (half the teacher's width, twice its depth), general stage on the corpus
# (hidden-state matches + KD at masked positions), then task stage from each fine-tuned teacher
STUDENT = "minirbt-h256"
STUDENT_SHAPE = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512}
GENERAL_DISTILL_RECIPE = {"max_steps": 400, "batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.1, "temperature": 1.0,
                          "matches": "hidden-uniform", "eval_batches": 16, "save_every": 200, "log_every": 50}
TASK_DISTILL_RECIPE = {"temperature": 2.0, "hard_weight": 1.0, "kd_weight": 1.0}
# whole words masked, as in training (a WWM model never sees half a word masked)
FILL = ["今天[MASK][MASK]很好。", "这本书写得很[MASK][MASK]，值得一看。", "中国[MASK][MASK]发展很快。"]


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def demo(out: str | Path = "demo-output", examples: int = 4, seed: int = 0, steps: int | None = None) -> dict:
    t0 = time.time()
    out = Path(out)
    _section("model zoo (parameters computed from each architecture)")
    print(zoo.zoo_table())

    _section("prepare: built-in corpus -> clean/dedup -> rjieba -> vocab -> WWM shards")
    data = out / "corpus"
    m = prepare(SOURCES, data, overwrite=True, max_seq_len=SEQ_LEN)
    print(prepare_summary(m))
    print(f"folder: {data}")

    _section("whole-word masks (| starts a word; 15% of words masked, all their tokens together)")
    tok = load_tokenizer(str(data / "tokenizer"))
    ds = load_prepared(data, "eval")
    rng = np.random.default_rng(seed)
    shown = 0
    for row in ds:
        ids = np.asarray(row["input_ids"])
        wid = np.asarray(row["word_ids"])
        # show the first text of the sequence ([CLS] ... [SEP]), cut to a readable length
        end = int(np.flatnonzero(ids == tok.sep_token_id)[0]) + 1
        end = min(end, 60)
        tokens = tok.convert_ids_to_tokens(ids[:end].tolist())
        mask = sample_word_mask(wid[:end], rng)
        grouped, masked = show_masked(tokens, wid[:end], mask)
        print(f"words : {grouped}\nmasked: {masked}\n")
        shown += 1
        if shown >= examples:
            break
    _section(f"pretrain: a small teacher ({TEACHER} width, 2 layers, WWM-MLM from the local-attention init, "
             "about 6 minutes)")

    recipe = dict(TEACHER_RECIPE, max_steps=steps or TEACHER_RECIPE["max_steps"])
    teacher = out / "teacher"
    if teacher.exists():
        import shutil

        shutil.rmtree(teacher)
    pm = pretrain(TEACHER, data, teacher, recipe)
    b, a = pm["eval_before"], pm["eval_after"]
    print(f"{pm['parameters'] / 1e6:.1f} M parameters, {pm['steps']} steps, {pm['tokens_seen']:,} tokens "
          f"in {pm['elapsed_s']:.0f} s")
    print(f"held-out masked-token accuracy: {100 * b['masked_accuracy']:.1f}% before -> "
          f"{100 * a['masked_accuracy']:.1f}% after; perplexity {b['perplexity']:.0f} -> {a['perplexity']:.1f}")
    for text in FILL:
        print(format_fill(text, fill_mask(str(teacher), text, top_k=3)))
    ft = finetune_section(teacher, out, steps=steps)
    ds = distill_section(teacher, data, out, ft, steps=steps)
    sv = serve_section(out)
    print(f"\ndemo finished in {time.time() - t0:.0f} s; outputs in {out}/ "
          f"(the teacher loads with transformers: BertForMaskedLM.from_pretrained('{teacher}'))")
    return {"prepare": m, "pretrain": pm, "finetune": ft, "distill": ds, "serve": sv}


def finetune_section(teacher: Path, out: Path, steps: int | None = None) -> list[dict]:
    """Fine-tune the teacher and a random-init model of its shape on each built-in task; print both."""
    recipe = dict(FINETUNE_RECIPE)
    if steps is not None:  # a quick run (tests): a few steps, a small slice
        recipe.update(max_steps=max(10, steps), max_train_examples=min(500, recipe["max_train_examples"]))
    n = recipe["max_train_examples"]
    _section(f"fine-tune: the teacher vs a random-init model of the same shape ({n:,} training examples per task, "
             f"{recipe['epochs']:g} epochs, lr {recipe['lr']:g})")
    rows = []
    for task in FINETUNE_TASKS:
        scores = {}
        for label, model in (("random init", f"random:{teacher}"), ("teacher", str(teacher))):
            r = finetune(model, task, out / "finetune" / task.split(":")[-1] / label.replace(" ", "-"),
                         config=dict(recipe, progress=False))
            scores[label] = r["dev"]
        metric = scores["teacher"]["metric"]
        where = out / "finetune" / task.split(":")[-1]
        rows.append({"task": task, "metric": metric, "teacher_dir": str(where / "teacher"),
                     "random": scores["random init"]["score"], "teacher": scores["teacher"]["score"]})
        print(f"{task}: dev {metric} {rows[-1]['random']:.2f} (random init) -> {rows[-1]['teacher']:.2f} (teacher), "
              f"{rows[-1]['teacher'] - rows[-1]['random']:+.2f} points", flush=True)
    return rows


def _latency_ms(model_dir: Path, batch: int = 32, seq: int = 128, repeats: int = 5) -> float:
    """Median forward time of the encoder on a batch x seq block of token ids (torch eager, this machine)."""
    import torch
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(model_dir))
    m.eval()
    ids = torch.randint(5, m.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        m(input_ids=ids)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            m(input_ids=ids)
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def distill_section(teacher: Path, data: Path, out: Path, ft_rows: list[dict], steps: int | None = None) -> dict:
    """General distillation of the teacher into a narrow-deep student, then task-stage distillation from each
    fine-tuned teacher; prints sizes, speed and dev scores next to the teacher's."""
    shape = ", ".join(f"{k.split('_')[0] if k != 'num_hidden_layers' else 'layers'} {v}"
                      for k, v in STUDENT_SHAPE.items() if k in ("hidden_size", "num_hidden_layers"))
    _section(f"distil: the teacher -> a narrow-deep student ({shape}), general stage then task stage")
    recipe = dict(GENERAL_DISTILL_RECIPE, overrides=STUDENT_SHAPE, progress=False)
    if steps is not None:
        recipe.update(max_steps=max(10, steps), save_every=0)
    general = out / "student"
    if general.exists():
        import shutil

        shutil.rmtree(general)
    gm = distill_general(str(teacher), STUDENT, data, general, recipe)
    p, ev = gm["parameters"], gm["eval_after"]
    t_ms, s_ms = _latency_ms(teacher), _latency_ms(general)
    print(f"general stage: {gm['steps']} steps in {gm['elapsed_s']:.0f} s; student masked-token accuracy "
          f"{100 * ev['masked_accuracy']:.1f}%, top-1 agreement with the teacher {100 * ev['teacher_agreement']:.1f}%")
    print(f"size: {p['teacher'] / 1e6:.2f} M -> {p['student'] / 1e6:.2f} M parameters; encoder forward on 32 x 128 "
          f"tokens: {t_ms:.0f} ms -> {s_ms:.0f} ms ({t_ms / s_ms:.2f}x)")
    ft_recipe = dict(FINETUNE_RECIPE)
    if steps is not None:
        ft_recipe.update(max_steps=max(10, steps), max_train_examples=min(500, ft_recipe["max_train_examples"]))
    task_only = {k: ft_recipe.pop(k) for k in ("max_len", "max_train_examples")}
    rows = []
    for row in ft_rows:
        task = row["task"]
        r = distill_task(row["teacher_dir"], str(general), task, out / "distill" / task.split(":")[-1],
                         config=dict(TASK_DISTILL_RECIPE, **ft_recipe, progress=False), finetune_config=task_only)
        score, ref = r["dev"]["score"], row["teacher"]
        rows.append({"task": task, "metric": row["metric"], "teacher": ref, "student": score,
                     "kept_pct": 100 * score / ref if ref else None})
        kept = f" ({100 * score / ref:.1f} % of the teacher)" if ref else ""
        print(f"{task}: dev {row['metric']} {ref:.2f} (teacher) -> {score:.2f} (student){kept}", flush=True)
    return {"general": gm, "tasks": rows, "latency_ms": {"teacher": t_ms, "student": s_ms}}


SERVE_TEXTS = ["质量很好，下次还买", "太差了，再也不买了"]
SERVE_QUERY = "物流很快，包装也很好"


def serve_section(out: Path, corpus_size: int = 2000) -> dict:
    """Start ``qingbert serve`` on the distilled sentiment student for a few seconds, with a faiss index over
    built-in reviews; send encode, classify, search and one bad request; print the answers; stop the server."""
    import httpx

    model = out / "distill" / "reviews-sentiment"
    _section("serve: the distilled sentiment student over HTTP (encode, classify, search the built-in reviews)")
    work = out / "serve"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "reviews.txt"
    corpus.write_text("\n".join(t for t, _ in reviews("dev")[:corpus_size]) + "\n", encoding="utf-8")
    im = build_index(str(model), corpus, work / "index", factory="Flat", overwrite=True, progress=False)
    print(f"index: {im['count']:,} reviews, {im['dim']} dimensions, faiss {im['factory']}")
    with running_server(model, work / "index") as url, httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/health").json()
        print(f"server at {url}: model kind {health.get('kind')}, backend {health.get('backend')}")
        enc = client.post("/encode", json={"id": 1, "texts": SERVE_TEXTS, "is_tokenized": False}).json()
        print(f"POST /encode   -> {len(enc['results'])} vectors of {len(enc['results'][0])} floats "
              f"(status {enc['status']})")
        cls = client.post("/classify", json={"texts": SERVE_TEXTS}).json()["results"]
        for t, r in zip(SERVE_TEXTS, cls):
            print(f"POST /classify -> {t}: {r['label']} ({r['score']:.2f})")
        hits = client.post("/search", json={"query": SERVE_QUERY, "top_k": 3}).json()["results"]
        print(f"POST /search   -> {SERVE_QUERY}:")
        for h in hits:
            print(f"    {h['score']:.3f}  {h['text'][:40]}")
        bad = client.post("/encode", json={"id": 2, "texts": []})
        print(f"POST /encode with no texts -> {bad.status_code}: {bad.json()['error']['message']}")
    print("server stopped")
    return {"index": im, "health": health, "classify": cls, "search": hits, "bad_status": bad.status_code}

