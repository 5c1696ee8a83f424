"""The ``distill`` verb: general (with an assistant) and task-stage distillation."""

from __future__ import annotations

from qingbert.cli.common import (
    DISTILL_FLAGS,
    FINETUNE_FLAGS,
    add_train_args,
    load_recipe_any,
    positive_int,
    print_skips,
    recipe_with_flags,
    task_from_args,
)
from qingbert.errors import QingbertError

HELP = {
    "distill": "knowledge distillation: teacher -> (assistant ->) student, general (WWM data) or task stage",
}


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help=HELP["distill"], description=HELP["distill"] + (
        ". General stage with --data (a prepared folder); task stage with --task (teachers = fine-tuned folders). "
        "Scale out with `accelerate launch --num_processes N -m qingbert distill ...`."))
    p.add_argument("--teacher", required=True, action="append",
                   help="teacher model folder or hub id; repeat for several teachers (soft targets averaged)")
    p.add_argument("--teacher-weights", default=None, help="comma-separated weights of the teachers")
    p.add_argument("--student", required=True,
                   help="zoo shape (from scratch, e.g. minirbt-h256), a model folder, or a hub id")
    p.add_argument("--assistant", default=None,
                   help="general stage: a middle model (e.g. rbt6), initialised from teacher layers when it has "
                        "the teacher's width; teacher -> assistant -> student in one run")
    p.add_argument("--data", default=None, help="general stage: a folder made by `qingbert prepare`; task stage: "
                                                "the task's files")
    p.add_argument("--task", default=None, help="task-stage distillation on this task (see `qingbert finetune`)")
    p.add_argument("--out", required=True, help="output folder (general: <out>/assistant, <out>/student)")
    p.add_argument("--matches", default=None,
                   help="intermediate matches: a preset (" + ", ".join(
                       ("hidden-uniform", "minirbt", "layer-to-layer", "attention-uniform", "none")) +
                        ") or a YAML/JSON file with a list of {layer_T, layer_S, loss, weight, proj}")
    p.add_argument("--init-from-teacher-layers", default=None,
                   help="comma-separated teacher layers (from 0) copied into the assistant, or into the student "
                        "when there is no assistant, e.g. 0,2,4,7,9,11")
    p.add_argument("--hidden-only", action="store_true", help="no logits KD: hidden-state matches only")
    p.add_argument("--no-t2", dest="kd_t2", action="store_false",
                   help="do not multiply the KD cross-entropy by T^2 (TextBrewer's convention)")
    p.add_argument("--assistant-steps", type=positive_int, default=None, help="optimizer steps of the assistant stage")
    p.add_argument("--config", default=None, help="YAML recipe: any option below, plus matches, schedules ...")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing the checkpoints of an earlier run there")
    add_train_args(p, DISTILL_FLAGS + FINETUNE_FLAGS[:1])
    p.add_argument("--layers", type=positive_int, default=None, help="for a zoo-shape student: number of layers")
    p.set_defaults(run=run_distill)


def _matches_arg(value: str | None):
    if value is None:
        return None
    from pathlib import Path

    if not Path(value).exists():
        return value  # a preset name (checked by the distillation stage)
    return load_recipe_any(value)


def _ints(value: str | None, what: str):
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise QingbertError(f"{what}: not a comma-separated list of integers: '{value}'") from None


def run_distill(args) -> int:
    from qingbert.distillation.distill import distill, distill_task

    recipe = recipe_with_flags(args, DISTILL_FLAGS + FINETUNE_FLAGS[:1])
    recipe.pop("max_len", None)
    if args.resume:
        recipe["resume"] = True
    if args.overwrite:
        recipe["overwrite"] = True
    if args.layers:
        recipe.setdefault("overrides", {})["num_hidden_layers"] = args.layers
    if args.matches is not None:
        recipe["matches"] = _matches_arg(args.matches)
    if args.hidden_only:
        recipe["hidden_only"] = True
    if not args.kd_t2:
        recipe["kd_t2"] = False
    if args.teacher_weights:
        try:
            recipe["teacher_weights"] = [float(x) for x in args.teacher_weights.split(",")]
        except ValueError:
            raise QingbertError(f"--teacher-weights: not numbers: '{args.teacher_weights}'") from None
    layers = _ints(args.init_from_teacher_layers, "--init-from-teacher-layers")
    teachers = args.teacher if len(args.teacher) > 1 else args.teacher[0]
    if args.task:
        if args.assistant:
            raise QingbertError("--assistant is for general distillation (--data DIR), not --task")
        ft = {"max_len": args.max_len} if args.max_len else {}
        if layers:
            raise QingbertError("--init-from-teacher-layers is for general distillation")
        args.text_col = args.text_b_col = args.label_col = args.id_col = None
        r = distill_task(teachers, args.student, task_from_args(args), args.out, args.data, config=recipe,
                         finetune_config=ft)
        from qingbert.tasks.finetune import format_scores

        print_skips(r)
        if "dev" in r:
            print(f"student dev: {format_scores(r['dev'])}")
            print(f"{r['steps']} steps in {r['elapsed_s']:.0f} s; wrote {args.out} (loads with transformers; "
                  "`qingbert predict` works on it)")
        return 0
    if not args.data:
        raise QingbertError("give --data DIR (a prepared folder) for general distillation, or --task for the "
                            "task stage")
    assistant_recipe = None
    if args.assistant:
        assistant_recipe = {k: v for k, v in recipe.items() if k != "overrides"}  # (--layers is the student's)
        if layers:
            assistant_recipe["init_from_teacher_layers"] = layers
        if args.assistant_steps:
            assistant_recipe["max_steps"] = args.assistant_steps
    elif layers:
        recipe["init_from_teacher_layers"] = layers
    r = distill(teachers, args.student, args.data, args.out, assistant=args.assistant, config=recipe,
                assistant_config=assistant_recipe)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # (under `accelerate launch`, one report)
        return 0
    for m in r["stages"]:
        ev = m.get("eval_after") or {}
        p = m.get("parameters", {})
        acc = f"masked-token accuracy {100 * ev['masked_accuracy']:.1f}%" if "masked_accuracy" in ev else ""
        agree = (f", top-1 agreement with the teacher {100 * ev['teacher_agreement']:.1f}%"
                 if "teacher_agreement" in ev else "")
        print(f"{m['stage']}: {p.get('teacher', 0) / 1e6:.1f} M -> {p.get('student', 0) / 1e6:.1f} M parameters, "
              f"{m['steps']} steps; {acc}{agree}")
    print(f"wrote {r['student']} (loads with transformers' AutoModelForMaskedLM)")
    return 0


COMMANDS = {"distill": add_distill}