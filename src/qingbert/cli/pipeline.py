"""The ``run``, ``demo`` and ``report`` verbs: the whole chain from one recipe file, and its report."""

from __future__ import annotations

HELP = {
    "run": "run a recipe: the stages of the chain from one YAML file, resumable, with a report",
    "demo": "the pipeline on the built-in Chinese data (= qingbert run builtin:demo)",
    "report": "a run folder -> report.html (tables + charts, one offline file) and report.md",
}
RUN_EPILOG = """\
A recipe names the stages and their options; ${stage} is that stage's output folder:

  out: runs/mine
  stages:
    corpus:  {do: prepare, sources: [builtin:peoples-daily], max_seq_len: 128}
    teacher: {do: pretrain, model: minirbt-h256, data: "${corpus}", max_steps: 800}
    senti:   {do: finetune, model: "${teacher}", task: builtin:reviews-sentiment}

Kinds: prepare, vocab, pretrain, distill, finetune, bench, export, index, serve.  A stage whose folder already
holds its output for the same inputs and options is skipped; a changed one runs again with everything
downstream; an interrupted training stage resumes.  Shipped: builtin:demo, builtin:demo-full, builtin:minirbt."""


def _run_args(p) -> None:
    p.add_argument("--until", metavar="STAGE", help="run STAGE and the stages it needs, nothing after")
    p.add_argument("--only", metavar="STAGE", help="run only STAGE (the stages it needs must be up to date)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (what would run, what is up to date)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override one option of one stage (VALUE is YAML), e.g. --set teacher.max_steps=100")
    p.add_argument("--overwrite", action="store_true",
                   help="let the run replace stage folders it did not make (never its inputs)")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip report.html / report.md")


def add_run(sub) -> None:
    import argparse

    p = sub.add_parser("run", help=HELP["run"], description=HELP["run"], epilog=RUN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file, or builtin:demo / builtin:minirbt ...")
    p.add_argument("--out", help="the run folder (default: the recipe's 'out', else runs/<name>)")
    _run_args(p)
    p.set_defaults(run=run_run)


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help=HELP["demo"], description=HELP["demo"])
    p.add_argument("--out", default="demo-output", help="the run folder (default demo-output)")
    p.add_argument("--full", action="store_true",
                   help="the longer chain (builtin:demo-full): a random-init baseline next to the teacher and a "
                        "narrow-deep student built from scratch, about 30 minutes on 2 cores")
    _run_args(p)
    p.set_defaults(run=run_demo)


def _run(recipe: str, args) -> int:
    from qingbert.pipeline.runner import run_recipe

    run_recipe(recipe, args.out, until=args.until, only=args.only, dry_run=args.dry_run, overwrite=args.overwrite,
               report=args.report, sets=args.sets)
    return 0


def run_run(args) -> int:
    return _run(args.recipe, args)


def run_demo(args) -> int:
    return _run("builtin:demo-full" if args.full else "builtin:demo", args)


def add_report(sub) -> None:
    p = sub.add_parser("report", help=HELP["report"], description=HELP["report"])
    p.add_argument("run_dir", metavar="RUN_DIR", help="the folder `qingbert run` wrote (it holds run.json)")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from qingbert.pipeline.report import write_report

    res = write_report(args.run_dir)
    print(f"wrote {res['html']} ({len(res['figures'])} charts inside; open it in a browser)")
    print(f"wrote {res['markdown']} (charts in {res['markdown'].parent / 'report-figures'})")
    return 0


COMMANDS = {"run": add_run, "demo": add_demo, "report": add_report}
