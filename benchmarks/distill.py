"""Throughput benchmark for ``qingbert distill`` (general stage) against TextBrewer 0.2.1 ``GeneralDistiller``.

Prepares the built-in People's Daily texts once (``qingbert prepare``, sequences of
at most ``--seq-len`` tokens), saves one randomly initialised teacher of the RBT6
shape (BERT, 6 x 768, FFN 3072, 12 heads) and one student of the MiniRBT-H256 shape
(6 x 256, FFN 1024, 8 heads), both ``BertForMaskedLM`` with the real 21,128-token
vocabulary of the HFL checkpoints (so the vocabulary heads cost what they really
cost), and then distils teacher -> student with each method in a fresh subprocess:

* ``qingbert``: ``qingbert.distillation.distill.GeneralDistillObjective`` run by
  ``qingbert.training.loop.Trainer`` (the loop behind ``qingbert distill``), WWM batches
  from ``qingbert.mlm.WWMCollator``;
* ``textbrewer``: ``textbrewer.GeneralDistiller`` (0.2.1) on the same models, with
  adaptors returning the logits, the hidden states, ``inputs_mask`` (the attention
  mask) and ``logits_mask`` (the masked positions), fed by a ``DataLoader`` that
  collates the same examples with the same ``WWMCollator``.

The loss is the same on both sides: KD cross-entropy at the masked positions only
(temperature 8, no T^2 factor, as TextBrewer computes it) + hidden-state MSE over
the real tokens for teacher layer i <-> student layer i, i = 0..6 (0 = the
embeddings output), each through a trainable linear 256 -> 768 projection of the
student's states; no hard-label loss.  Teacher in eval mode without gradients,
student in train mode (dropout on).  Same initial weights, batch size, learning
rate, linear warmup/decay schedule, weight decay, gradient clipping (norm 1.0),
torch threads, and the same masked batches in the same order: the TextBrewer side
is fed the train split in the order qingbert's loop draws it, masked by the same
collator with the same seed (the script checks it batch by batch).

What is timed, on both sides alike: the wall time between the ends of optimizer
steps (an ``Optimizer.register_step_post_hook`` on the torch optimizer), steady
state -- steps ``W+1 .. N`` from the end of step ``W`` (``--warmup-steps``,
default 3) to the end of step ``N``.  A step so includes the scheduler step,
``zero_grad``, each loop's per-step bookkeeping and logging, fetching and masking
the next batch, the teacher's and the student's forward, the losses, backward,
clipping and the optimizer step; it excludes model loading and what runs after
the last optimizer step (the final save/log).  Checkpointing and evaluation are
off on both sides (qingbert ``save_every: 0``, no eval data; TextBrewer's one
forced save comes after its last step).  TextBrewer's own per-step TensorBoard
scalars (``log_dir`` in the run's folder) are part of its step, as in any real
TextBrewer run; qingbert logs at its last step only (``log_every`` = 10^9).

Details of the TextBrewer side: its models are the HF modules behind a thin
wrapper that does not pass the batch's ``labels`` on (the adaptor reads the masked
positions from them; passing them would make HF compute an MLM loss that is not
used), ``batch_postprocessor=dict`` (TextBrewer 0.2.1 passes a batch to the models
as keywords only if its type is exactly ``dict``, else positionally; the collator
returns a plain dict, so here it is a cheap copy), ``output_hidden_states=True`` as a model argument,
``max_grad_norm=1.0``, ``get_linear_schedule_with_warmup``; the optimizer is the
one qingbert uses, ``torch.optim.AdamW(fused=True)`` with the same two weight-decay
groups (``--textbrewer-optimizer default`` gives it torch's default AdamW
instead), TextBrewer adds its projections as a third group.  By construction HF
models compute the full-vocabulary logits at every position (teacher and student)
and TextBrewer selects the masked ones afterwards; qingbert runs both heads at
the masked positions only.

Runs alternate A B B A (``--repeats``, default 1) and the best run per method
counts, since other load on a shared machine only ever slows a run down.  Goal:
qingbert >= 2x TextBrewer steps/s.  A miss is printed, not raised.  Results go to
``benchmarks/results/distill.json`` and ``.md``.

    python benchmarks/distill.py              # 3 warm-up + 15 timed steps per method, batch 16 x 128
    python benchmarks/distill.py --quick      # smoke run: 4 steps each
    python benchmarks/distill.py --repeats 2  # A B B A
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common  # benchmarks/_common.py (the script folder is on sys.path)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOAL_RATIO = 2.0  # qingbert / TextBrewer steps per second
VOCAB = 21128  # the real vocabulary size of the HFL Chinese checkpoints
SOURCES = ["builtin:peoples-daily"]  # a slice of the built-in texts is plenty for a few dozen batches
TEACHER, STUDENT = "rbt6", "minirbt-h256"
SHAPE_NAMES = {TEACHER: "RBT6 (6 x 768, FFN 3072, 12 heads)", STUDENT: "MiniRBT-H256 (6 x 256, FFN 1024, 8 heads)"}
METHODS = ("qingbert", "qingbert-int8", "textbrewer")
LABELS = {"qingbert": "qingbert distill (GeneralDistillObjective + Trainer)",
          "qingbert-int8": "qingbert distill, int8 teacher (`--teacher-backend onnx-int8`)",
          "textbrewer": "TextBrewer 0.2.1 GeneralDistiller"}
TEMPERATURE = 8.0
LR = 1e-4
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
SEED = 42
IGNORE = -100


def _matches(n_layers: int, s_width: int, t_width: int) -> list[dict]:
    """Hidden MSE, teacher layer i <-> student layer i (0 = embeddings), student states projected."""
    return [{"layer_T": i, "layer_S": i, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", s_width, t_width]} for i in range(n_layers + 1)]


# ---------------------------------------------------------------------------
# Helpers shared by the children

def _steady(ends: list[float], warmup: int, cpu: list[float] | None = None, threads: int = 1) -> dict:
    """Steps/s over steps warmup+1..N from the optimizer-step end times ends[0..N-1].

    ``cpu``: the process's CPU time at the same moments; CPU seconds per wall second over the window,
    divided by the torch threads, says how much of the cores the run got (well below the other
    method's figure: other load on the machine slowed this run down)."""
    n = len(ends)
    w = max(1, min(warmup, n - 1))
    secs = ends[-1] - ends[w - 1]
    step_s = [b - a for a, b in zip(ends[w - 1:], ends[w:])]
    res = {"steps_timed": n - w, "first_timed_step": w + 1, "seconds": round(secs, 3),
           "steps_per_s": round((n - w) / secs, 4) if secs > 0 else None,
           "s_per_step": round(secs / (n - w), 3),
           # less sensitive to a burst of load from other processes than the window mean
           "median_s_per_step": round(statistics.median(step_s), 3),
           "step_s": [round(b - a, 3) for a, b in itertools.pairwise(ends)]}
    if cpu and secs > 0:
        res["cpu_per_thread"] = round((cpu[-1] - cpu[w - 1]) / secs / max(1, threads), 3)
    return res


def _step_clock(ends: list[float], cpu: list[float]):
    """An optimizer step post-hook recording the wall clock and the process's CPU time."""
    def hook(*_):
        ends.append(time.perf_counter())
        cpu.append(time.process_time())
    return hook


def _order(n: int, seed: int):
    """The order qingbert's loop draws the train split in during epoch 0 (qingbert.training.loop.Trainer._order)."""
    import numpy as np

    return np.random.default_rng([seed, 0]).permutation(n)


def _fingerprinting_collator(tokenizer, seed: int):
    """qingbert's WWMCollator, also recording (real tokens, masked tokens, sum of input ids) of each batch."""
    from qingbert.pretraining.mlm import MaskingConfig, WWMCollator
    from qingbert.pretraining.mlm import tokenizer_info

    class FingerprintCollator(WWMCollator):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.seen: list[list[int]] = []

        def __call__(self, examples):
            b = super().__call__(examples)
            self.seen.append([int(b["attention_mask"].sum()), int((b["labels"] != IGNORE).sum()),
                              int(b["input_ids"].sum())])
            return b

    return FingerprintCollator(tokenizer_info(tokenizer), MaskingConfig(), seed=seed)


def _losses_summary(rows: list[list[float]]) -> dict:
    """rows: per step [total, kd, matches]."""
    if not rows:
        return {}
    keys = ("total", "kd", "match")
    return {"first_step_loss": dict(zip(keys, (round(x, 4) for x in rows[0]))),
            "last_step_loss": dict(zip(keys, (round(x, 4) for x in rows[-1])))}


def _load_models(work: Path):
    from transformers import BertForMaskedLM

    teacher = BertForMaskedLM.from_pretrained(str(work / "teacher"))
    student = BertForMaskedLM.from_pretrained(str(work / "student"))
    return teacher, student


# ---------------------------------------------------------------------------
# Children

def run_setup(args) -> dict:
    """Prepare the data and save the initial teacher and student; one process, not timed."""
    work = Path(args.work)
    tok, out = _common.prepare_corpus(SOURCES, work, args.seq_len)
    out["models"] = {role: {"shape": SHAPE_NAMES[name],
                            **_common.save_initial_mlm(name, VOCAB, tok, work / "data", work / role, SEED)}
                     for role, name in (("teacher", TEACHER), ("student", STUDENT))}
    return out


def run_qingbert(args, teacher_backend: str | None = None) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from qingbert.distillation.config import DistillConfig
    from qingbert.distillation.objectives import GeneralDistillObjective
    from qingbert.pretraining.pretrain import open_data
    from qingbert.training.loop import Trainer

    torch.manual_seed(SEED)  # (the projections are initialised before the Trainer seeds everything)
    work = Path(args.work)
    teacher, student = _load_models(work)
    t_w, s_w, n_layers = teacher.config.hidden_size, student.config.hidden_size, student.config.num_hidden_layers
    cfg = DistillConfig.from_dict({
        "temperature": TEMPERATURE, "kd_loss": "kd_ce", "kd_t2": False, "hard_weight": 0.0,
        "matches": _matches(n_layers, s_w, t_w),
        "batch_size": args.batch, "lr": LR, "max_steps": args.steps, "warmup_ratio": WARMUP_RATIO,
        "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "save_every": 0, "log_every": 10**9,
        "progress": False, "threads": args.threads, "seed": SEED,
        "teacher_backend": teacher_backend or args.teacher_backend})
    train_ds, _, tok, _ = open_data(work / "data")
    collate = _fingerprinting_collator(tok, SEED)
    objective = GeneralDistillObjective(teacher, student, cfg)

    losses: list[list[float]] = []

    def record_loss(module, inputs, output):  # (loss, metrics) of each forward
        loss, m = output
        losses.append([float(loss.detach()), float(m.get("kd_loss", float("nan"))),
                       float(m.get("match_loss", float("nan")))])

    objective.register_forward_hook(record_loss)
    tr = Trainer(objective, train_ds, collate, args.out, cfg.train)
    ends: list[float] = []
    cpu: list[float] = []
    opt = getattr(tr.optimizer, "optimizer", tr.optimizer)  # accelerate's wrapper -> the torch optimizer
    opt.register_step_post_hook(_step_clock(ends, cpu))
    t = time.perf_counter()
    tr.run()
    wall = time.perf_counter() - t
    if len(ends) != args.steps:
        raise SystemExit(f"expected {args.steps} optimizer steps, saw {len(ends)}")
    res = _steady(ends, args.warmup_steps, cpu, torch.get_num_threads())
    res.update(steps=tr.state["step"], train_wall_s=round(wall, 2), batches=collate.seen[: args.steps],
               torch_threads=torch.get_num_threads(), optimizer=type(opt).__name__ + (
                   " (fused)" if any(g.get("fused") for g in opt.param_groups) else ""),
               trainable_parameters=sum(p.numel() for p in objective.parameters() if p.requires_grad),
               teacher_backend=objective.teacher_backend_used,
               teacher_backend_check=objective.teacher_backend_check or None,
               **_losses_summary(losses))
    return res


def _no_labels(model):
    """The HF model as TextBrewer calls it, minus the batch's ``labels`` (read by the adaptor, not the model)."""
    import torch

    class NoLabels(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels=None, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)

    return NoLabels(model)


def run_textbrewer(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from qingbert.pretraining.pretrain import open_data

    torch.manual_seed(SEED)
    work, out = Path(args.work), Path(args.out)
    teacher, student = _load_models(work)
    t_w, s_w, n_layers = teacher.config.hidden_size, student.config.hidden_size, student.config.num_hidden_layers
    train_ds, _, tok, _ = open_data(work / "data")
    collate = _fingerprinting_collator(tok, SEED)
    order = _order(len(train_ds), SEED)
    index_batches = [order[m * args.batch:(m + 1) * args.batch] for m in range(args.steps)]

    def fetch(indices):  # one batch: the rows, their dataset index (the masking seed), masked and padded
        rows = train_ds[[int(i) for i in indices]]
        examples = [dict(zip(rows, vals)) for vals in zip(*rows.values())]
        for e, i in zip(examples, indices):
            e["index"] = int(i)
        return collate(examples)

    loader = DataLoader(index_batches, batch_size=None, shuffle=False, collate_fn=fetch, num_workers=0)

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states,
                "inputs_mask": batch["attention_mask"], "logits_mask": batch["labels"] != IGNORE}

    train_cfg = TrainingConfig(device="cpu", ckpt_steps=args.steps, log_dir=str(out / "tb"),
                               output_dir=str(out / "saved"))
    distill_cfg = DistillationConfig(temperature=TEMPERATURE, kd_loss_type="ce", hard_label_weight=0,
                                     kd_loss_weight=1, intermediate_matches=_matches(n_layers, s_w, t_w))
    model_T, model_S = _no_labels(teacher), _no_labels(student)
    distiller = GeneralDistiller(train_config=train_cfg, distill_config=distill_cfg, model_T=model_T,
                                 model_S=model_S, adaptor_T=adaptor, adaptor_S=adaptor)

    losses: list[list[float]] = []
    compute_loss = distiller.compute_loss

    def recording_compute_loss(results_S, results_T):
        total, parts = compute_loss(results_S, results_T)
        kd = float(parts["unweighted_kd_loss"].detach()) if "unweighted_kd_loss" in parts else float("nan")
        match = sum(float(v.detach()) for k, v in parts.items() if k.startswith("unweighted_hidden"))
        losses.append([float(total.detach()), kd, match])
        return total, parts

    distiller.compute_loss = recording_compute_loss

    params = [p for p in student.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if args.textbrewer_optimizer == "fused":
        opt = torch.optim.AdamW(groups, lr=LR, fused=True)
    else:
        opt = torch.optim.AdamW(groups, lr=LR)
    ends: list[float] = []
    cpu: list[float] = []
    opt.register_step_post_hook(_step_clock(ends, cpu))
    t = time.perf_counter()
    with distiller:  # teacher eval, student train (TextBrewer's context manager)
        distiller.train(opt, loader, num_steps=args.steps, max_grad_norm=MAX_GRAD_NORM,
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": int(WARMUP_RATIO * args.steps),
                                        "num_training_steps": args.steps},
                        batch_postprocessor=dict, output_hidden_states=True)
    wall = time.perf_counter() - t
    if len(ends) != args.steps:
        raise SystemExit(f"expected {args.steps} optimizer steps, saw {len(ends)}")
    res = _steady(ends, args.warmup_steps, cpu, torch.get_num_threads())
    res.update(steps=len(ends), train_wall_s=round(wall, 2), batches=collate.seen[: args.steps],
               torch_threads=torch.get_num_threads(),
               optimizer="AdamW" + (" (fused)" if args.textbrewer_optimizer == "fused" else " (torch default)"),
               trainable_parameters=sum(p.numel() for g in opt.param_groups for p in g["params"]),
               textbrewer=textbrewer.__version__, **_losses_summary(losses))
    return res


def child(args) -> None:
    fn = {"setup": run_setup, "qingbert": run_qingbert, "textbrewer": run_textbrewer,
          "qingbert-int8": lambda a: run_qingbert(a, teacher_backend="onnx-int8")}[args.child]
    res = fn(args)
    res["peak_rss_mib"] = _common.peak_rss_mib()[0]
    print("RESULT " + json.dumps(res), flush=True)


def run_child(method: str, args, work: Path, timeout: float) -> dict:
    out = work / f"out-{method}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--work", str(work),
           "--out", str(out), "--steps", str(args.steps), "--batch", str(args.batch),
           "--seq-len", str(args.seq_len), "--threads", str(args.threads),
           "--warmup-steps", str(args.warmup_steps), "--textbrewer-optimizer", args.textbrewer_optimizer,
           "--teacher-backend", args.teacher_backend]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        return _common.run_result_child(cmd, env, timeout, tail_lines=6)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------
# Report

def versions() -> dict:
    return _common.versions(("qingbert", "textbrewer", "torch", "transformers", "accelerate", "datasets",
                             "numpy"))


def _fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    info, data, res = report["machine"], report["data"], report["results"]
    t, s = data["models"]["teacher"], data["models"]["student"]
    lines = [
        (f"General distillation throughput (optimizer steps per second, steady state): teacher "
         f"{t['shape']} → student {s['shape']}, both `BertForMaskedLM` with vocabulary {VOCAB:,}, "
         f"KD cross-entropy at the masked positions (T = {TEMPERATURE:g}) + hidden MSE on layers 0–"
         f"{s['layers']} (linear {s['hidden']}→{t['hidden']} projections); batch {report['batch']} × ≤"
         f"{report['seq_len']} tokens of the built-in People's Daily texts (mean {data['mean_len']}), WWM "
         f"masking; {report['threads']} torch threads, {info['cpu_count']} CPU cores, "
         f"{report['versions']['torch']} torch / {report['versions']['transformers']} transformers / "
         f"{report['versions']['textbrewer']} textbrewer, {report['date'][:10]}."),
        "",
        ("| method | steps (timed) | runs | steps/s (best run) | all runs | s/step | median s/step | "
         "CPU use | peak RSS MiB | qingbert / TextBrewer |"),
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for m in [m for m in METHODS if m in report["runs"]]:
        r = res.get(m, {})
        if "skipped" in r or not r:
            lines.append(f"| {LABELS[m]} | – | – | – | – | – | – | – | – | skipped: {r.get('skipped', 'not run')} |")
            continue
        ratio = ""
        rr = (report.get("ratios") or {}).get(m)
        if rr:
            ratio = f"**{rr['steps_per_s']:.2f}×** ({rr['median_step']:.2f}× by median step)"
        runs = report["runs"].get(m, [r])
        every = ", ".join(_fmt(x.get("steps_per_s")) for x in runs)
        lines.append(f"| {LABELS[m]} | {r['steps']} ({r['steps_timed']}) | {len(runs)} | "
                     f"{_fmt(r['steps_per_s'])} | {every} | {_fmt(r['s_per_step'])} | "
                     f"{_fmt(r['median_s_per_step'])} | {_fmt(r.get('cpu_per_thread'), '.2f')} | "
                     f"{_fmt(r['peak_rss_mib'], ',.0f')} | {ratio} |")
    q, tb = res.get("qingbert", {}), res.get("textbrewer", {})
    lines += ["", (f"Timed window: steps {report['warmup_steps'] + 1}..N, between the ends of optimizer steps "
               "(scheduler, zero_grad, each loop's bookkeeping and logging, batch fetch + masking, teacher and "
               "student forward, losses, backward, clipping, optimizer); each run a fresh process, runs "
               "alternating A B B A, the best run per method counts; *CPU use* = the process's CPU seconds per "
               "wall second per torch thread over the window (a run that got much less than the other was "
               "slowed by other load); load average "
               f"{info.get('load_avg_at_start', '?')} at the start, {report.get('load_avg_at_end', '?')} at the "
               f"end. Same initial weights, hyper-parameters and masked batches in the same order on both sides "
               f"({'checked batch by batch' if report.get('same_batches') else 'NOT verified'}). "
               "TextBrewer gets the full-vocabulary logits of both models at every position, as HF models "
               "return them, and selects the masked positions (`logits_mask`); qingbert runs both vocabulary "
               f"heads at the masked positions only. Optimizers: qingbert `{q.get('optimizer', '?')}`, "
               f"TextBrewer `{tb.get('optimizer', '?')}`; no checkpoints or evaluation in the window "
               "(TextBrewer writes its per-step TensorBoard scalars, as it always does).")]
    if q.get("first_step_loss") and tb.get("first_step_loss"):
        lines += ["", "First-step losses (total / KD / hidden MSE; projections are initialised differently and "
                  "dropout draws differ): qingbert " + " / ".join(f"{v:.3f}" for v in q["first_step_loss"].values())
                  + ", TextBrewer " + " / ".join(f"{v:.3f}" for v in tb["first_step_loss"].values()) + "."]
    qi = res.get("qingbert-int8", {})
    if qi.get("first_step_loss") and q.get("first_step_loss"):
        chk = qi.get("teacher_backend_check") or {}
        lines += ["", (f"The int8 teacher (`{qi.get('teacher_backend')}`): its last hidden state is "
                   f"{100 * chk.get('relative_error', float('nan')):.2f} % off the fp32 teacher's (relative "
                   "Frobenius error on the first batch; refused above 5 %); first-step losses with the same "
                   "student, projections and dropout draws as the qingbert row: "
                   + " / ".join(f"{v:.3f}" for v in qi["first_step_loss"].values()) + " (fp32 teacher: "
                   + " / ".join(f"{v:.3f}" for v in q["first_step_loss"].values()) + "). The qingbert row's "
                   f"teacher ran in `{q.get('teacher_backend')}`.")]
    if report.get("cpu_use_gap", 0) > 0.1:
        lines += ["", (f"**Warning**: the methods got different shares of the CPU (CPU use differs by "
                   f"{100 * report['cpu_use_gap']:.0f} %): other load on the machine disturbed a run, so the "
                   "ratio is not reliable.")]
    lines += ["", "Goals: " + "; ".join(f"{g['goal']}: **{g['status']}** ({g['measured']})"
                                        for g in report["goals"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=128, help="max sequence length for prepare (default 128)")
    ap.add_argument("--steps", type=int, default=18,
                    help="optimizer steps per run, warm-up included (default 18: 3 warm-up + 15 timed)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per method, alternating A B B A; the best counts (default 1)")
    ap.add_argument("--warmup-steps", type=int, default=3, help="first steps left out of the timing (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both (default: all cores)")
    ap.add_argument("--textbrewer-optimizer", choices=("fused", "default"), default="fused",
                    help="TextBrewer side's AdamW: fused (what qingbert uses, default) or torch's default")
    ap.add_argument("--teacher-backend", choices=("torch", "onnx", "auto"), default="auto",
                    help="qingbert's frozen teacher: torch, or ONNX Runtime's fused graph (default auto = onnx on CPU)")
    ap.add_argument("--no-int8", action="store_true", help="leave out the int8-teacher row")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 steps per method (1 warm-up)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary folder, removed after)")
    ap.add_argument("--results", default=str(RESULTS), help="where distill.json / distill.md go")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    # internal: one method in a subprocess
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0

    methods = tuple(m for m in METHODS if not (args.no_int8 and m == "qingbert-int8"))
    if args.quick:
        args.steps, args.repeats, args.warmup_steps = min(args.steps, 4), 1, 1
    if args.steps <= args.warmup_steps:
        ap.error("--steps must be larger than --warmup-steps")
    args.threads = args.threads or os.cpu_count() or 1
    info = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": _common.machine(), "versions": versions()}
    t_all = time.perf_counter()
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="qingbert-bench-distill-")
        work = Path(tmp)
    report = {"benchmark": "qingbert distill (general) throughput vs TextBrewer GeneralDistiller", **info,
              "seq_len": args.seq_len, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
              "threads": args.threads, "warmup_steps": args.warmup_steps, "temperature": TEMPERATURE, "lr": LR,
              "textbrewer_optimizer": args.textbrewer_optimizer, "teacher_backend": args.teacher_backend,
              "runs": {m: [] for m in methods}, "results": {}}
    try:
        t = time.perf_counter()
        setup = run_child("setup", args, work, timeout=args.timeout)
        if "skipped" in setup:
            raise SystemExit(f"setup failed: {setup['skipped']}")
        report["data"] = setup
        print(f"setup (prepare + initial models, not timed) {time.perf_counter() - t:.1f} s: "
              f"{setup['train_sequences']:,} sequences, {setup['train_tokens']:,} tokens; teacher "
              f"{setup['models']['teacher']['parameters']:,} parameters, student "
              f"{setup['models']['student']['parameters']:,}", flush=True)
        # A B B A ...: a slow drift in the machine's load hits both methods alike
        order = [methods if i % 2 == 0 else methods[::-1] for i in range(args.repeats)]
        for i, ms in enumerate(order):
            for m in ms:
                print(f"running {m} ({args.steps} steps x batch {args.batch}"
                      f"{f', run {i + 1}/{args.repeats}' if args.repeats > 1 else ''}) ...", flush=True)
                r = run_child(m, args, work, args.timeout)
                r["label"] = LABELS[m]
                report["runs"][m].append(r)
                if "skipped" in r:
                    print(f"  skipped: {r['skipped']}", flush=True)
                else:
                    print(f"  {r['steps_per_s']:.3f} steps/s ({r['s_per_step']:.2f} s/step, median "
                          f"{r['median_s_per_step']:.2f}) over steps {r['first_timed_step']}..{r['steps']}, "
                          f"CPU use {r.get('cpu_per_thread', 0):.2f} per thread, peak RSS {r['peak_rss_mib']:,.0f} "
                          f"MiB, process {r['process_wall_s']:.0f} s", flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for m in methods:  # the best run: the one least disturbed by other load on the machine
        ok = [r for r in report["runs"][m] if r.get("steps_per_s")]
        report["results"][m] = max(ok, key=lambda r: r["steps_per_s"]) if ok else report["runs"][m][0]
    tb = report["results"]["textbrewer"]
    report["ratios"] = {}
    for m in methods:
        q = report["results"][m]
        if m == "textbrewer" or not (q.get("steps_per_s") and tb.get("steps_per_s")):
            continue
        report["ratios"][m] = {"steps_per_s": round(q["steps_per_s"] / tb["steps_per_s"], 3),
                               "median_step": round(tb["median_s_per_step"] / q["median_s_per_step"], 3)}
        if q["batches"] != tb["batches"]:
            report["different_batches"] = sorted(set(report.get("different_batches", [])) | {m})
            print(f"WARNING: {m} and textbrewer saw different batches (real tokens, masked tokens, id sum per "
                  "batch)", flush=True)
    report["same_batches"] = bool(report["ratios"]) and not report.get("different_batches")
    ratio = (report["ratios"].get("qingbert") or {}).get("steps_per_s")
    if ratio:
        report["ratio"] = ratio
        report["ratio_median_step"] = report["ratios"]["qingbert"]["median_step"]
    cpus = [report["results"][m].get("cpu_per_thread") for m in methods]
    if all(cpus):
        # every loop keeps the cores busy about equally when alone on the machine; a gap means other load
        report["cpu_use_gap"] = round((max(cpus) - min(cpus)) / max(cpus), 3)
        if report["cpu_use_gap"] > 0.1:
            print(f"WARNING: the methods got different shares of the CPU ({', '.join(f'{c:.2f}' for c in cpus)} "
                  "CPU s per thread per s): other load on the machine disturbed a run; the ratio is not reliable, "
                  "run again on a quiet machine (or with --repeats 2)", flush=True)
    report["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    try:
        report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    disturbed = "; runs disturbed by other load, not reliable" if report.get("cpu_use_gap", 0) > 0.1 else ""
    report["goals"] = []
    for m in [m for m in methods if m != "textbrewer"]:
        r = (report["ratios"].get(m) or {}).get("steps_per_s")
        what = "" if m == "qingbert" else " with the int8 teacher"
        report["goals"].append({
            "goal": f"qingbert{what} >= {GOAL_RATIO:g}x TextBrewer GeneralDistiller steps/s "
                    f"(RBT6 -> MiniRBT-H256, batch {args.batch} x {args.seq_len})",
            "status": "n/a" if r is None else "PASS" if r >= GOAL_RATIO else "MISS",
            "measured": "not run" if r is None else f"{r:.2f}x{disturbed}"})
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(report)
    (out / "distill.md").write_text(md, encoding="utf-8")
    print()
    print(md)
    for g in report["goals"]:
        print(f"{g['status']}: {g['goal']} (measured {g['measured']})")
    print(f"total {report['total_wall_s']:.0f} s; wrote {out / 'distill.json'} and {out / 'distill.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
