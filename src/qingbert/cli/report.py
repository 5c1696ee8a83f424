"""The ``report`` verb: one self-contained HTML page (and a Markdown twin) of a ``qingbert run`` folder."""

from __future__ import annotations

HELP = {
    "report": "a run folder -> report.html (tables + charts, one offline file) and report.md",
}


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


COMMANDS = {"report": add_report}
