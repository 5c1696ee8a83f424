"""``distill``: teacher -> (assistant ->) student, in the one training loop of :mod:`qingbert.training.loop`.

Two kinds of distillation, one objective interface:

* **general** (pretraining stage) on a prepared WWM folder: teacher and student
  are masked LMs; the KD loss is computed at the masked positions only, and both
  models run their vocabulary head only there (the teacher in eval mode, without
  gradients).  Optional hard MLM loss and intermediate *matches*.
* **task** stage for every task type of :mod:`qingbert.tasks.finetune`: the teacher is
  a fine-tuned folder (or several: their soft targets are averaged, optionally
  weighted), the student is a pretrained or distilled small model; logits KD +
  hard labels + optional matches.  Teacher logits may be cached across epochs.

*Matches* are data (a list of dicts, or a preset name), each pairing a teacher
layer with a student layer through a loss of :mod:`qingbert.distillation.losses`, with an
optional trainable projection (student width -> teacher width).  Keys as in
TextBrewer are accepted (``layer_T``, ``layer_S``, ``feature``, ``loss``,
``weight``, ``proj``).  Layer numbers count as TextBrewer does: for ``hidden``
features layer 0 is the embeddings output and layer *i* the output of
transformer layer *i*; for ``attention`` features layer *i* is the *i*-th
transformer layer counted from 0.

Two-stage distillation (MiniRBT): teacher -> assistant (same width, initialised
from chosen teacher layers) -> student, one command; each stage writes a folder
plain transformers loads (``AutoModelForMaskedLM``).
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from qingbert.distillation.config import DistillConfig
from qingbert.distillation.matches import Shape, resolve_matches
from qingbert.distillation.objectives import GeneralDistillObjective, IndexCollator, TaskDistillObjective, base_and_head
from qingbert.errors import QingbertError
from qingbert.manifest import DISTILLED_FORMAT, read_manifest, write_manifest
from qingbert.models import zoo
from qingbert.models.loading import load_tokenizer, transformers_class
from qingbert.pretraining.mlm import IGNORE, MLMObjective, WWMCollator, attention_of, load_mlm, tokenizer_info
from qingbert.pretraining.pretrain import open_data, train_and_save
from qingbert.tasks.finetune import FORMAT as FT_FORMAT
from qingbert.tasks.finetune import finetune
from qingbert.training.loop import SUB_RUNS, TrainConfig, Trainer, seed_everything

FORMAT = DISTILLED_FORMAT


# ---------------------------------------------------------------------------
# model shapes and matches


# ---------------------------------------------------------------------------
# features


# ---------------------------------------------------------------------------
# initialising a shallower model from teacher layers

_LAYER_KEY = re.compile(r"^(.*\.layers?\.)(\d+)(\..*)$")
_FFN_IN = re.compile(r"^\.intermediate\.dense\.(weight|bias)$")  # BERT / RoBERTa / ELECTRA feed-forward: [I, H], [I]
_FFN_OUT = re.compile(r"^\.output\.dense\.weight$")  # [H, I] (not attention.output.dense)


def _ffn_neurons(state: dict, size: int) -> dict:
    """Per layer (key prefix ``...layer.N``), the ``size`` feed-forward neurons with the largest
    ``|w_in| * |w_out|``, in their original order."""
    import torch

    keep = {}
    for k, w_in in state.items():
        m = _LAYER_KEY.match(k)
        if m is None or not _FFN_IN.match(m.group(3)) or not k.endswith("weight"):
            continue
        w_out = state.get(f"{m.group(1)}{m.group(2)}.output.dense.weight")
        if w_out is None:
            raise QingbertError(f"cannot prune the feed-forward of {k}: no output.dense.weight beside it")
        score = w_in.float().norm(dim=1) * w_out.float().norm(dim=0)
        keep[m.group(1) + m.group(2)] = torch.sort(torch.topk(score, size).indices).values
    return keep


def init_from_teacher_layers(teacher, layers: list[int], **config_overrides):
    """A model of the teacher's class and width with ``len(layers)`` layers: embeddings, the chosen layers
    (in the given order) and every head copied exactly from the teacher.

    ``intermediate_size`` smaller than the teacher's keeps, in each copied layer, the feed-forward neurons that
    matter most (largest ``|w_in| * |w_out|``: the norms of a neuron's input row and output column), in their
    order -- structured pruning of the FFN; the width and the heads cannot change."""
    n = Shape.of(teacher).layers
    layers = [int(x) for x in layers]
    if not layers:
        raise QingbertError("init_from_teacher_layers is empty")
    if len(layers) > n:
        raise QingbertError(f"{len(layers)} layers asked of a teacher with {n}: the assistant/student cannot be "
                            "deeper than the teacher it is initialised from")
    bad = [x for x in layers if not 0 <= x < n]
    if bad or len(set(layers)) != len(layers):
        raise QingbertError(f"init_from_teacher_layers {layers}: layers must be distinct and in 0..{n - 1} "
                            "(transformer layers, counted from 0)")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    for k in ("hidden_size", "num_attention_heads"):
        if k in config_overrides and config_overrides[k] != getattr(config, k):
            raise QingbertError(f"init_from_teacher_layers keeps the teacher's {k} ({getattr(config, k)}), not "
                                f"{config_overrides[k]}", hint=f"drop {k} from the overrides")
    for k, v in config_overrides.items():
        setattr(config, k, v)
    ffn, ffn_teacher = int(config.intermediate_size), int(teacher.config.intermediate_size)
    if not 0 < ffn <= ffn_teacher:
        raise QingbertError(f"intermediate_size {ffn}: a student initialised from teacher layers keeps at most the "
                            f"teacher's {ffn_teacher} feed-forward neurons")
    student = type(teacher)(config)
    pos = {t: s for s, t in enumerate(layers)}
    teacher_state = teacher.state_dict()
    keep = {} if ffn == ffn_teacher else _ffn_neurons(teacher_state, ffn)
    state = {}
    for k, v in teacher_state.items():
        m = _LAYER_KEY.match(k)
        if m is None:
            state[k] = v.clone()
        elif int(m.group(2)) in pos:
            rest = m.group(3)
            idx = keep.get(m.group(1) + m.group(2))
            if idx is not None and _FFN_IN.match(rest):
                v = v[idx]  # rows (and bias entries) of the kept neurons
            elif idx is not None and _FFN_OUT.match(rest):
                v = v[:, idx]  # their columns in the output projection
            state[f"{m.group(1)}{pos[int(m.group(2))]}{rest}"] = v.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise QingbertError(f"cannot copy layers of a {teacher.config.model_type} model "
                            f"({len(missing)} tensors missing, {len(unexpected)} unexpected, e.g. "
                            f"{(missing + unexpected)[0]})", hint="supported: models with an encoder.layer.N list")
    if getattr(config, "tie_word_embeddings", False) and hasattr(student, "tie_weights"):
        student.tie_weights()
    return student


def default_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spread teacher layers (12 -> 6 gives MiniRBT's 0,2,4,7,9,11)."""
    return [int(round(x)) for x in np.linspace(0, n_teacher - 1, n_student)]


# ---------------------------------------------------------------------------
# general distillation: one stage


def _teacher_accuracy(teacher, eval_ds, collate, batches: int = 4, batch_size: int = 16) -> float | None:
    """Masked-token accuracy of the teacher on a few held-out batches (an untrained head scores ~0)."""
    if eval_ds is None or len(eval_ds) == 0:
        return None
    teacher.eval()
    base, head = base_and_head(teacher)
    correct = total = 0
    with torch.no_grad():
        for lo in range(0, min(len(eval_ds), batches * batch_size), batch_size):
            rows = eval_ds[lo:lo + batch_size]
            ex = [dict(zip(rows, v)) for v in zip(*rows.values())]
            for j, e in enumerate(ex):
                e["index"] = lo + j
            b = collate(ex)
            sel = b["labels"] != IGNORE
            h = base(input_ids=b["input_ids"], attention_mask=attention_of(b)).last_hidden_state
            correct += int((head(h[sel]).argmax(-1) == b["labels"][sel]).sum())
            total += int(sel.sum())
    return correct / max(1, total)


def _fit_teacher_head(teacher, train_ds, eval_ds, collate, out: Path, cfg: DistillConfig, steps: int):
    """Train the teacher's MLM head alone (encoder frozen) for ``steps`` steps; the fitted teacher is saved."""
    base, _ = base_and_head(teacher)
    teacher.train()
    teacher.requires_grad_(True)
    base.requires_grad_(False)
    if teacher.get_input_embeddings().weight.requires_grad:  # (tied decoder = the frozen input embeddings)
        teacher.get_input_embeddings().weight.requires_grad_(False)
    tc = TrainConfig(**{**asdict(cfg.train), "max_steps": steps, "save_every": 0, "resume": False})
    Trainer(MLMObjective(teacher), train_ds, collate, out, tc, eval_data=eval_ds).run()
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.save_pretrained(str(out), safe_serialization=True)
    return teacher


def _load_student(student: str, tokenizer, overrides: dict, init: str = "default"):
    """A zoo shape or model folder (as pretraining loads them), or any config: a ``config.json`` file or a folder
    holding only one -> a random-init masked LM of that config with the data's vocabulary."""
    p = Path(student)
    config_file = p if p.is_file() and p.suffix == ".json" else p / "config.json"
    has_weights = p.is_dir() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin")))
    if config_file.is_file() and not has_weights:
        from transformers import AutoConfig, AutoModelForMaskedLM

        try:
            config = AutoConfig.from_pretrained(str(config_file))
        except (OSError, ValueError) as e:
            raise QingbertError(f"{config_file}: not a transformers config ({str(e).splitlines()[0][:200]})") from None
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        for k, v in overrides.items():
            setattr(config, k, v)
        return AutoModelForMaskedLM.from_config(config), {"init": f"random (config {config_file})"}
    return load_mlm(student, tokenizer, overrides, init=init)


def _once(out: Path, cfg: DistillConfig, run) -> dict:
    """Run a stage unless its folder already holds a complete one (then say so and return its manifest); with
    ``overwrite`` (a changed recipe) it is always run again."""
    m = read_manifest(out)
    if m and m.get("format") == FORMAT and m.get("complete") and not cfg.train.resume and not cfg.train.overwrite:
        print(f"{m.get('stage', 'stage')} already done: {out} (delete it to redo)", flush=True)
        return m
    return run()


def distill_general(teacher: str | list, student: str, data: str | Path, out: str | Path,
                    config: DistillConfig | dict | None = None) -> dict:
    """One general-distillation stage: ``teacher`` (folder / hub id / zoo name with weights, or a list)
    -> ``student`` (zoo shape, folder, or built from teacher layers with ``init_from_teacher_layers``)
    on a prepared WWM folder.  Returns the stage manifest."""
    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    out = Path(out)
    t0 = time.time()
    train_ds, eval_ds, tokenizer, data_manifest = open_data(data)
    seed_everything(cfg.train.seed)
    collate = WWMCollator(tokenizer_info(tokenizer), cfg.masking, seed=cfg.train.seed)
    names = teacher if isinstance(teacher, (list, tuple)) else [teacher]
    teachers, head_info = [], []
    for name in names:
        net, info = load_mlm(str(name), tokenizer, weights=True)
        acc = _teacher_accuracy(net, eval_ds, collate)
        info["masked_accuracy_before"] = acc
        if acc is not None and acc < 0.01 and not info.get("head_initialised"):
            print(f"qingbert: warning: teacher {name} fills only {100 * acc:.2f} % of held-out masks correctly; "
                  "is its MLM head trained?", flush=True)
        if info.get("head_initialised") and not cfg.hidden_only and cfg.kd_weight:
            if not cfg.fit_teacher_head:
                why = f"{len(info.get('missing_head_keys', []))} head tensors are missing from its checkpoint"
                raise QingbertError(f"teacher {name} has an untrained MLM head ({why}); its soft targets are noise",
                                    hint="train the head alone first with --fit-teacher-head STEPS, or distil "
                                         "hidden states only with --hidden-only")
            net = _fit_teacher_head(net, train_ds, eval_ds, collate, out / SUB_RUNS[0], cfg, cfg.fit_teacher_head)
            info["fitted_head_steps"] = cfg.fit_teacher_head
            info["masked_accuracy_after_fit"] = _teacher_accuracy(net, eval_ds, collate)
        teachers.append(net)
        head_info.append(info)
    if cfg.init_from_teacher_layers:
        layers = [int(x) for x in cfg.init_from_teacher_layers]
        seed_everything(cfg.train.seed)
        net = init_from_teacher_layers(teachers[0], layers, **cfg.overrides)
        s_init = {"init": f"teacher layers {layers} of {names[0]}"}
    else:
        net, s_init = _load_student(str(student), tokenizer, cfg.overrides, init=cfg.init)
    t_shape, s_shape = Shape.of(teachers[0]), Shape.of(net)
    matches = resolve_matches("hidden-uniform" if cfg.matches is None else cfg.matches, t_shape, s_shape)
    objective = GeneralDistillObjective(teachers, net, cfg, matches=matches)
    fingerprint = {"stage": "distill-general", "teachers": [str(n) for n in names], "student": str(student),
                   "data": str(Path(data).resolve()), "init": s_init.get("init")}
    trainer = Trainer(objective, train_ds, collate, out, cfg.train, eval_data=eval_ds, fingerprint=fingerprint)
    before, after, _, final = train_and_save(trainer, tokenizer, out, cfg.train.resume)
    if trainer.acc.is_main_process:
        proj = trainer.unwrapped_objective().projections
        if len(proj) and any(sum(p.numel() for p in q.parameters()) for q in proj):
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in proj.state_dict().items()},
                      str(out / "projections.safetensors"))
        manifest = {
            "format": FORMAT, "stage": "general-distill", "complete": True,
            "teacher": [str(x) for x in names], "teacher_info": head_info, "student": str(student),
            "student_init": s_init, "teacher_shape": asdict(t_shape), "student_shape": asdict(s_shape),
            "parameters": {"teacher": sum(p.numel() for p in teachers[0].parameters()),
                           "student": sum(p.numel() for p in final.parameters())},
            "matches": matches, "config": _config_record(cfg),
            "data": {"path": str(Path(data).resolve()), "sources": data_manifest.get("sources"),
                     "train_sequences": len(train_ds)},
            "steps": trainer.state["step"], "tokens_seen": trainer.state["tokens_seen"],
            "processes": trainer.world, "eval_before": before,
            "eval_after": {k: v for k, v in (after or {}).items() if k != "split"} or None,
            "teacher_backend": trainer.unwrapped_objective().teacher_backend_used,
            "teacher_backend_check": trainer.unwrapped_objective().teacher_backend_check or None,
            "elapsed_s": round(time.time() - t0, 2),
        }
        write_manifest(out, manifest)
    trainer.acc.wait_for_everyone()
    return read_manifest(out) or {}


def _config_record(cfg: DistillConfig) -> dict:
    d = asdict(cfg)
    return json.loads(json.dumps(d, default=str))


def distill(teacher: str | list, student: str, data: str | Path, out: str | Path, *,
            assistant: str | None = None, config: DistillConfig | dict | None = None,
            assistant_config: DistillConfig | dict | None = None) -> dict:
    """General distillation in one call: teacher -> student, or teacher -> assistant -> student.

    The assistant (e.g. ``rbt6``) has the teacher's width and is initialised from teacher layers
    (``init_from_teacher_layers``, default evenly spread: 12 -> 6 gives 0,2,4,7,9,11); a finished stage
    (a complete manifest in its folder) is not redone.  Returns ``{"stages": [manifests], "out"}``."""
    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    out = Path(out)
    stages = []
    current = teacher
    if assistant:
        if isinstance(assistant_config, DistillConfig):
            a_cfg = copy.deepcopy(assistant_config)
        elif assistant_config:
            a_cfg = DistillConfig.from_dict(assistant_config)
        else:  # the student's recipe, less the student's shape overrides
            a_cfg = copy.deepcopy(cfg)
            a_cfg.overrides = {}
        a_out = out / "assistant"

        def run_assistant():
            if not a_cfg.init_from_teacher_layers:
                spec = zoo.get_spec(assistant) if not Path(str(assistant)).exists() else None
                t_cfg = _peek_config(teacher[0] if isinstance(teacher, list) else teacher)
                if spec is not None and t_cfg is not None:
                    depth = int(a_cfg.overrides.get("num_hidden_layers", spec.layers))
                    width = int(a_cfg.overrides.get("hidden_size", spec.hidden))
                    if depth > t_cfg["layers"]:
                        raise QingbertError(f"assistant {assistant} has {depth} layers, the teacher "
                                            f"{t_cfg['layers']}: an assistant cannot be deeper than its teacher")
                    if width == t_cfg["width"]:
                        a_cfg.init_from_teacher_layers = default_layers(t_cfg["layers"], depth)
            return distill_general(teacher, assistant, data, a_out, a_cfg)

        stages.append(_once(a_out, a_cfg, run_assistant))
        current = str(a_out)
    s_out = out / "student"
    stages.append(_once(s_out, cfg, lambda: distill_general(current, student, data, s_out, cfg)))
    return {"stages": stages, "out": str(out), "student": str(s_out)}


def _peek_config(model: str) -> dict | None:
    """Depth and width of a local model folder (None for hub ids: known only once loaded)."""
    p = Path(str(model)) / "config.json"
    if not p.exists():
        return None
    c = json.loads(p.read_text())
    return {"layers": c.get("num_hidden_layers") or c.get("n_layer"), "width": c.get("hidden_size") or c.get("d_model")}


# ---------------------------------------------------------------------------
# task-stage distillation


class TaskDistiller:
    """Plugs task-stage distillation into :func:`qingbert.tasks.finetune.finetune` (the same stage, another
    objective)."""

    def __init__(self, teachers: list[str], cfg: DistillConfig):
        self.names = [str(t) for t in teachers]
        self.cfg = cfg
        self.matches: list[dict] = []

    def wrap_collator(self, collate):
        return IndexCollator(collate)

    def objective(self, head, student, tokenizer, task_type: str):
        teachers = []
        for name in self.names:
            m = read_manifest(name)
            if m is None or m.get("format") != FT_FORMAT:
                raise QingbertError(f"teacher {name}: not a fine-tuned folder (no qingbert fine-tuning manifest)",
                                    hint="fine-tune it first with `qingbert finetune --model M --task T --out DIR`")
            if m["task_type"] != task_type:
                raise QingbertError(f"teacher {name} was fine-tuned for a {m['task_type']} task, this is {task_type}")
            if head.labels and list(m["labels"]) != list(head.labels):
                raise QingbertError(f"teacher {name} has labels {m['labels'][:8]}, the task {head.labels[:8]}")
            if load_tokenizer(name).get_vocab() != tokenizer.get_vocab():
                raise QingbertError(f"teacher {name} and the student have different vocabularies: distillation "
                                    "feeds both the same token ids", hint="use a student built on the teacher's vocab")
            teachers.append(transformers_class(head.auto_class).from_pretrained(name))
        matches = resolve_matches("none" if self.cfg.matches is None else self.cfg.matches,
                                  Shape.of(teachers[0]), Shape.of(student))
        self.matches = matches
        return TaskDistillObjective(teachers, student, head, self.cfg, matches)

    def record(self) -> dict:
        return {"teachers": self.names, "matches": self.matches, "config": _config_record(self.cfg)}


def distill_task(teacher: str | list, student: str, task, out: str | Path, data_dir: str | None = None, *,
                 config: DistillConfig | dict | None = None, finetune_config: dict | None = None) -> dict:
    """Task-stage distillation: fine-tuned ``teacher`` folder(s) -> ``student`` on ``task``; the result is a
    fine-tuned folder (``qingbert predict`` works on it).  Returns :func:`qingbert.tasks.finetune.finetune`'s result."""
    cfg = config if isinstance(config, DistillConfig) else DistillConfig.from_dict(config)
    teachers = teacher if isinstance(teacher, (list, tuple)) else [teacher]
    ft = dict(finetune_config or {})
    ft.setdefault("train", asdict(cfg.train))
    return finetune(student, task, out, data_dir, config=ft, distill=TaskDistiller(teachers, cfg))


__all__ = ["init_from_teacher_layers", "default_layers", "distill", "distill_general", "distill_task", "TaskDistiller"]
