"""The training loop: one plain loop on HF accelerate, shared by pretraining, distillation and fine-tuning.

An *objective* is a ``torch.nn.Module`` whose ``forward(batch)`` returns
``(loss, metrics)`` (metrics may carry ``correct`` and ``count`` for a running
accuracy, logged under the objective's ``accuracy_name``; more running accuracies are named by an optional
``extra_accuracies = {name: (correct key, count key)}``); it owns the model(s) being trained (and e.g. a frozen
teacher or projections).  The loop owns everything else: data order, gradient
accumulation, AdamW with linear warmup/decay, clipping, mixed precision,
logging (console, TensorBoard, ``metrics.jsonl``), evaluation, atomic
checkpoints and exact resume.

Objectives may also define ``evaluate_batch(batch) -> dict of sums`` and
``summarize(totals) -> dict`` for evaluation, and ``set_progress(fraction)``,
called before every step with ``step / total_steps`` (for scheduled
temperatures and loss weights).

Data order is a seeded permutation per epoch, and each process takes its own
slice of every global batch, so ``accelerate launch --num_processes N`` runs the
same job data-parallel; a resumed run sees exactly the batches it would have
seen, and with the same seed reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from qingbert.errors import QingbertError
from qingbert.manifest import (
    DISTILLED_FORMAT,
    EMBEDDINGS_FORMAT,
    FINETUNED_FORMAT,
    MODEL_FORMAT,
    PROMPT_FORMAT,
    check_out_folder,
)

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
#: the training options that change the weights a run produces: a checkpoint resumes only a run with the same ones.
#: The length (epochs, max_steps) is not among them: a run may be resumed with a longer budget to train on.
TRAJECTORY = ("batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "mixed_precision",
              "seed")


@dataclass
class TrainConfig:
    batch_size: int = 32  # sequences per process per micro-step
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = 0  # optimizer steps; > 0 overrides epochs
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16 (where the hardware has it)
    eval_every: int = 0  # optimizer steps; 0 = at the end only
    eval_batches: int = 0  # 0 = the whole eval set
    save_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    seed: int = 42
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace an earlier run's checkpoints in the same folder
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default
    progress: bool = True

    def check(self) -> "TrainConfig":
        """Every number in range (a recipe file is checked here as the command line's flags are at parsing)."""
        rules = {"batch_size": (1, None), "grad_accum": (1, None), "epochs": (0, None), "max_steps": (0, None),
                 "weight_decay": (0, None), "warmup_ratio": (0, 1), "max_grad_norm": (0, None),
                 "eval_every": (0, None), "eval_batches": (0, None), "save_every": (0, None), "keep_last": (1, None),
                 "log_every": (1, None), "threads": (0, None)}
        for name, (lo, hi) in rules.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (hi is not None and v >= hi):
                rng = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
                raise QingbertError(f"training option {name} must be a number {rng}, got {v!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise QingbertError(f"training option lr must be a positive number, got {self.lr!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise QingbertError(f"training option mixed_precision must be no, fp16 or bf16, got "
                                f"{self.mixed_precision!r}")
        return self


# ---------------------------------------------------------------------------
# RNG and checkpoint files

def fill_config(cfg, d: dict | None, what: str):
    """Fill a config dataclass that has a ``train: TrainConfig`` field from a flat or nested (``train:``) dict
    (a YAML recipe): its own fields by name, training fields flat or under ``train:``; unknown keys are an error
    naming ``what`` (e.g. "fine-tuning")."""
    from dataclasses import fields

    own = {f.name for f in fields(cfg)} - {"train"}
    tf = {f.name for f in fields(TrainConfig)}
    for k, v in (d or {}).items():
        if k == "train" and isinstance(v, dict):
            for kk, vv in v.items():
                if kk not in tf:
                    raise QingbertError(f"unknown training option '{kk}'", hint="known: " + ", ".join(sorted(tf)))
                setattr(cfg.train, kk, vv)
        elif k in own:
            setattr(cfg, k, v)
        elif k in tf:
            setattr(cfg.train, k, v)
        else:
            raise QingbertError(f"unknown {what} option '{k}'", hint="known: " + ", ".join(sorted(own | tf)))
    return cfg


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return meta, tensors


def _set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _has_accelerator() -> bool:
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mps_available()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, newest first (a checkpoint is complete once renamed into place)."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


# ---------------------------------------------------------------------------
# The loop

RUN_FORMATS = (MODEL_FORMAT, FINETUNED_FORMAT, PROMPT_FORMAT, DISTILLED_FORMAT, EMBEDDINGS_FORMAT)
SUB_RUNS = ("teacher-head",)  # runs a stage makes inside its own out folder first (distillation's fitted head)
INPUT_KEYS = ("model", "student", "teachers", "data")  # the fingerprint's entries that may name a local folder


def is_run_folder(folder: Path) -> bool:
    """A folder a training run wrote: its checkpoints or log, or the manifest of a trained model."""
    if (folder / CHECKPOINTS).is_dir() or (folder / "metrics.jsonl").is_file():
        return True
    if any(is_run_folder(folder / sub) for sub in SUB_RUNS if (folder / sub).is_dir()):
        return True
    try:
        return (json.loads((folder / "manifest.json").read_text("utf-8")) or {}).get("format") in RUN_FORMATS
    except (OSError, ValueError, AttributeError):
        return False


def check_run_folder(out: Path, fingerprint: dict) -> None:
    """The output-folder policy for training: a run writes into a new or empty folder or one a training run wrote
    (its own earlier output), never into someone's other folder, and never into (or above) the folders it reads."""
    inputs = {}
    for key in INPUT_KEYS:
        values = fingerprint.get(key)
        values = values if isinstance(values, list) else [values]
        for i, value in enumerate(values, 1):
            if value and Path(str(value)).is_dir():
                inputs[f"{key} folder {i}" if len(values) > 1 else f"{key} folder"] = value
    check_out_folder(out, True, what="a training run's folder (checkpoints, metrics.jsonl or a trained model)",
                     is_ours=is_run_folder, inputs=inputs)


class Trainer:
    """Runs one objective on a dataset. ``run()`` trains to the end (or resumes) and returns the history."""

    def __init__(self, objective: torch.nn.Module, train_data, collate: Callable, out: str | Path,
                 cfg: TrainConfig | None = None, eval_data=None, eval_collate: Callable | None = None,
                 fingerprint: dict | None = None):
        from accelerate import Accelerator

        self.cfg = (cfg or TrainConfig()).check()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        # without any accelerator, processes started by `accelerate launch --multi_gpu` or torchrun
        # still run data-parallel: on CPU, with gloo
        self.acc = Accelerator(gradient_accumulation_steps=self.cfg.grad_accum,
                               mixed_precision=self.cfg.mixed_precision, cpu=not _has_accelerator())
        self.out = Path(out)
        check_run_folder(self.out, fingerprint or {})
        self.train_data, self.collate = train_data, collate
        self.eval_data, self.eval_collate = eval_data, eval_collate or collate
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        n = len(train_data)
        # whole optimizer steps per epoch (the remainder is dropped, so accumulation never spans epochs)
        self.steps_per_epoch = n // (self.cfg.batch_size * self.world * self.cfg.grad_accum)
        self.micro_per_epoch = self.steps_per_epoch * self.cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise QingbertError(
                f"{n} training sequences are fewer than one optimizer step "
                f"({self.cfg.batch_size} x {self.world} processes x {self.cfg.grad_accum} accumulation)",
                hint="lower --batch-size or --grad-accum, or prepare more text")
        self.total_steps = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))
        # what makes this run this run: a checkpoint of any other run is never resumed into it
        self.run_id = json.loads(json.dumps({**(fingerprint or {}), "train_sequences": n,
                                             "train": {k: getattr(self.cfg, k) for k in TRAJECTORY}}, default=str))
        seed_everything(self.cfg.seed)
        self.objective = objective
        params = [p for p in objective.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases and LayerNorm weights
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        try:  # the fused kernel is ~4x faster than the per-tensor loop (CPU and CUDA)
            self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr)
        warmup = int(self.cfg.warmup_ratio * self.total_steps)
        total = self.total_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.model, self.optimizer = self.acc.prepare(self.objective, self.optimizer)
        self.state = {"step": 0, "epoch": 0, "micro": 0, "tokens_seen": 0}
        self.history: list[dict] = []
        self._writer = None

    # -- helpers ------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.acc.is_main_process:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self._writer = False
        if self._writer:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    self._writer.add_scalar(f"{record.get('split', 'train')}/{k}", v, record["step"])
            self._writer.flush()

    def _batch(self, data, indices, epoch: int, collate) -> dict:
        rows = data[[int(i) for i in indices]]
        examples = [dict(zip(rows, vals)) for vals in zip(*rows.values())]
        for e, i in zip(examples, indices):
            e["index"] = int(i)
        if hasattr(collate, "epoch"):
            collate.epoch = epoch
        batch = collate(examples)
        return {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.train_data))

    # -- evaluation -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        if self.eval_data is None or not hasattr(self.objective, "evaluate_batch"):
            return None
        self.model.eval()
        bs = self.cfg.batch_size
        n = len(self.eval_data)
        starts = list(range(self.rank * bs, n, bs * self.world))
        if self.cfg.eval_batches:
            starts = starts[: self.cfg.eval_batches]
        totals: dict[str, float] = {}
        fixed_epoch = 2**31 - 1  # the same masks at every evaluation
        for s in starts:
            idx = np.arange(s, min(s + bs, n))
            out = self.objective.evaluate_batch(self._batch(self.eval_data, idx, fixed_epoch, self.eval_collate))
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        keys = sorted(totals) or ["tokens"]
        vec = torch.tensor([totals.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.acc.device)
        vec = self.acc.reduce(vec, reduction="sum")
        self.model.train()
        return self.objective.summarize(dict(zip(keys, vec.tolist())))

    # -- checkpoints ------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file, save_model

        step = self.state["step"]
        root = self.out / CHECKPOINTS
        final = root / f"step-{step:07d}"
        tmp = root / f".step-{step:07d}.tmp"
        previous = list_checkpoints(self.out)
        self.acc.wait_for_everyone()
        try:
            if self.acc.is_main_process:
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
                save_model(self.acc.unwrap_model(self.model), str(tmp / "model.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                (tmp / "scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))
            self.acc.wait_for_everyone()
            meta, tensors = _rng_state()
            save_file(tensors, str(tmp / f"rng-{self.rank}.safetensors"))
            (tmp / f"rng-{self.rank}.json").write_text(json.dumps(meta))
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                record = {**self.state, "total_steps": self.total_steps, "world_size": self.world,
                          "config": asdict(self.cfg), "run": self.run_id}
                (tmp / STATE).write_text(json.dumps(record, indent=2))
                for f in tmp.iterdir():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync_dir(root)
                for old in list_checkpoints(self.out)[self.cfg.keep_last:]:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            if self.acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            keep = f"the previous checkpoint {previous[0].name} is intact" if previous else "no earlier checkpoint"
            raise QingbertError(f"cannot write checkpoint {final} ({e.strerror or e}); {keep}",
                                hint="free disk space and run again with --resume") from None
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self) -> Path | None:
        """Load the newest checkpoint that reads back; a corrupt one is reported and skipped."""
        from safetensors.torch import load_file, load_model

        for i, ckpt in enumerate(list_checkpoints(self.out)):
            if i == 0:
                self._check_same_run(ckpt)
            try:
                state = json.loads((ckpt / STATE).read_text())
                if state.get("world_size", 1) != self.world:
                    raise ValueError(f"it was written by {state.get('world_size')} processes, this run has "
                                     f"{self.world}")
                load_model(self.acc.unwrap_model(self.model), str(ckpt / "model.safetensors"))
                self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True,
                                                          map_location="cpu"))
                self.scheduler.load_state_dict(json.loads((ckpt / "scheduler.json").read_text()))
                rng_t = load_file(str(ckpt / f"rng-{self.rank}.safetensors"))
                rng_m = json.loads((ckpt / f"rng-{self.rank}.json").read_text())
            except Exception as e:  # noqa: BLE001 - any unreadable piece makes the checkpoint unusable
                if self.acc.is_main_process:
                    print(f"qingbert: checkpoint {ckpt} is unusable ({type(e).__name__}: {str(e)[:200]}); "
                          "trying an older one", flush=True)
                continue
            _set_rng_state(rng_m, rng_t)
            self.state = {k: state[k] for k in ("step", "epoch", "micro", "tokens_seen")}
            return ckpt
        return None

    def _check_same_run(self, ckpt: Path) -> None:
        """Refuse to resume from a checkpoint another run wrote (other model, data or recipe), naming what differs."""
        try:
            state = json.loads((ckpt / STATE).read_text())
        except (OSError, ValueError):
            return  # unreadable: load_checkpoint reports it and tries an older one
        saved = state.get("run") or {"train": {k: (state.get("config") or {}).get(k) for k in TRAJECTORY}}
        mine = self.run_id if "run" in state else {"train": self.run_id["train"]}

        def flat(d, prefix=""):
            out = {}
            for k, v in d.items():
                if isinstance(v, dict):
                    out.update(flat(v, f"{prefix}{k}."))
                else:
                    out[f"{prefix}{k}"] = v
            return out

        a, b = flat(saved), flat(mine)
        diff = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff or state.get("step", 0) > self.total_steps:
            why = "; ".join(diff) or f"it is at step {state.get('step')}, past this run's {self.total_steps} steps"
            raise QingbertError(f"cannot resume: {ckpt} belongs to another run ({why})",
                                hint="resume with the recipe that run used, write this run to another --out, or pass "
                                     "--overwrite to start this run over in that folder")

    def _start_clean(self) -> None:
        """A fresh run: an earlier run's checkpoints in the folder are never mixed with this one's."""
        found = list_checkpoints(self.out)
        if found and not self.cfg.overwrite:
            raise QingbertError(f"{self.out} holds checkpoints of an earlier run (newest: {found[0].name})",
                                hint="pass --resume to continue that run, --overwrite to start over in that folder, "
                                     "or write to another --out")
        if self.acc.is_main_process:
            if found or self.cfg.overwrite:
                # everything the loop wrote for the earlier run; the manifest goes too, so the folder no longer
                # claims to hold a finished model until this run writes its own
                (self.out / "manifest.json").unlink(missing_ok=True)
                for name in (CHECKPOINTS, "tensorboard"):  # moved aside in one rename, then deleted
                    aside = self.out / f".{name}.replaced"
                    shutil.rmtree(aside, ignore_errors=True)
                    if (self.out / name).exists():
                        (self.out / name).rename(aside)
                        shutil.rmtree(aside, ignore_errors=True)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.acc.wait_for_everyone()

    # -- training ---------------------------------------------------------------
    def run(self) -> list[dict]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        resumed = None
        if cfg.resume:
            resumed = self.load_checkpoint()
            if resumed is None and list_checkpoints(self.out):
                raise QingbertError(f"{self.out}: no checkpoint could be loaded to resume from")
            if resumed is not None and self.acc.is_main_process:
                print(f"resuming from {resumed} (step {self.state['step']} of {self.total_steps})", flush=True)
        else:
            self._start_clean()
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                   disable=None if (cfg.progress and self.acc.is_main_process) else True)
        # no terminal (a log file, CI, a scheduler): one plain line per logged window instead of a bar
        self._log_lines = cfg.progress and self.acc.is_main_process and bar.disable
        extras = dict(getattr(self.objective, "extra_accuracies", {}) or {})
        window = {"loss": 0.0, "n": 0, "tokens": 0, "masked": 0, "correct": 0, "t": time.time(),
                  "extra": {k: [0, 0] for k in extras}}
        bs, world = cfg.batch_size, self.world
        while self.state["step"] < self.total_steps:
            epoch = self.state["epoch"]
            order = self._order(epoch)
            while self.state["micro"] < self.micro_per_epoch and self.state["step"] < self.total_steps:
                m = self.state["micro"]
                lo = (m * world + self.rank) * bs
                batch = self._batch(self.train_data, order[lo:lo + bs], epoch, self.collate)
                if hasattr(self.objective, "set_progress"):  # scheduled temperatures / loss weights
                    self.objective.set_progress(self.state["step"] / self.total_steps)
                with self.acc.accumulate(self.model):
                    loss, metrics = self.model(batch)
                    self.acc.backward(loss)
                    if self.acc.sync_gradients and cfg.max_grad_norm:
                        self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                self.state["micro"] += 1
                ntok = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                self.state["tokens_seen"] += ntok * world
                window["loss"] += float(loss.detach())
                window["n"] += 1
                window["tokens"] += ntok
                window["masked"] += int(metrics.get("count", metrics.get("masked_tokens", 0)))
                window["correct"] += int(metrics.get("correct", 0))
                for name, (c, n) in extras.items():
                    if c in metrics:
                        window["extra"][name][0] += int(metrics[c])
                        window["extra"][name][1] += int(metrics[n])
                if not self.acc.sync_gradients:
                    continue
                self.scheduler.step()
                self.state["step"] += 1
                step = self.state["step"]
                bar.update(1)
                if step % cfg.log_every == 0 or step == self.total_steps:
                    self._log_train(step, window)
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}")
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                    ev = self.evaluate()
                    if ev:
                        self._log({"split": "eval", "step": step, **ev})
                if cfg.save_every and step % cfg.save_every == 0:
                    self.save_checkpoint()
            if self.state["micro"] >= self.micro_per_epoch:
                self.state["epoch"] += 1
                self.state["micro"] = 0
        bar.close()
        ev = self.evaluate()
        if ev:
            self._log({"split": "eval", "step": self.state["step"], **ev})
        if cfg.save_every:
            self.save_checkpoint()
        if self._writer:
            self._writer.close()
        return self.history

    def _log_train(self, step: int, w: dict) -> None:
        extra = w.get("extra", {})
        vec = torch.tensor([w["loss"], w["n"], w["tokens"], w["masked"], w["correct"]]
                           + [x for pair in extra.values() for x in pair], dtype=torch.float64, device=self.acc.device)
        vec = self.acc.reduce(vec, reduction="sum").tolist()
        elapsed = max(1e-9, time.time() - w["t"])
        rec = {"split": "train", "step": step, "epoch": self.state["epoch"], "loss": vec[0] / max(1, vec[1]),
               "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": vec[2] / elapsed}
        name = getattr(self.objective, "accuracy_name", "accuracy")
        if vec[3]:
            rec[name] = vec[4] / vec[3]
        names = [name]
        for i, key in enumerate(extra):
            correct, count = vec[5 + 2 * i], vec[6 + 2 * i]
            if count:
                rec[key] = correct / count
                names.append(key)
        self._log(rec)
        if getattr(self, "_log_lines", False):
            acc = "".join(f" {k.replace('_', '-')} {100 * rec[k]:.1f}%" for k in names if k in rec)
            print(f"step {step}/{self.total_steps} loss {rec['loss']:.4f} lr {rec['lr']:.2e}{acc} "
                  f"{rec['tokens_per_s']:,.0f} tok/s", flush=True)
        w.update(loss=0.0, n=0, tokens=0, masked=0, correct=0, t=time.time(), extra={k: [0, 0] for k in extra})

    def unwrapped_objective(self):
        return self.acc.unwrap_model(self.model)
