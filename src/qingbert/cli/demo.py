"""The ``demo`` verb: the pipeline on the built-in data."""

from __future__ import annotations

from qingbert.cli.common import count, positive_int

HELP = {
    "demo": "run the pipeline on the built-in Chinese data",
}


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help=HELP["demo"], description=HELP["demo"])
    p.add_argument("--out", default="demo-output", help="where the demo writes its folders")
    p.add_argument("--examples", type=count, default=4, help="sentences shown with their whole-word masks")
    p.add_argument("--steps", type=positive_int, default=None, help="teacher pretraining steps (default 1,200)")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from qingbert.demo import demo  # the whole chain: torch and the rest

    demo(args.out, examples=args.examples, steps=args.steps)
    return 0


COMMANDS = {"demo": add_demo}
