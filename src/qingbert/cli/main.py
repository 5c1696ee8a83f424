"""``qingbert <verb>``: the parser of every verb and the one error boundary.

Each group module (``data``, ``pretraining``, ``tasks``, ``distillation``, ``embeddings``, ``deploy``, ``serve``,
``pipeline``) registers its verbs the same way: ``COMMANDS[verb](subparsers)`` adds the verb's parser with
``set_defaults(run=...)``, and ``run(args)`` calls one API function.  User errors
(:class:`~qingbert.errors.QingbertError`, and the expected failures of libraries that
:func:`~qingbert.errors.explain` recognises) print one line and exit with status 2; anything else is a bug: one line,
exit status 1, and ``--debug`` (anywhere on the line) or ``QINGBERT_DEBUG=1`` shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from qingbert import __version__
from qingbert.cli import data, deploy, distillation, embeddings, pipeline, pretraining, serve, tasks
from qingbert.errors import QingbertError, explain
from qingbert.models.loading import silence_transformers

#: verb -> the function that adds its parser
COMMANDS = {**data.COMMANDS, **pretraining.COMMANDS, **tasks.COMMANDS, **distillation.COMMANDS,
            **embeddings.COMMANDS, **deploy.COMMANDS, **serve.COMMANDS, **pipeline.COMMANDS}
#: the order of ``qingbert --help``
ORDER = ("run", "report", "demo", "zoo", "prepare", "vocab", "pretrain", "fill-mask", "finetune", "predict", "export", "speed", "distill",
         "bench", "encode", "whiten", "simcse", "eval-sts", "index", "serve", "prune-vocab", "similar-words")
#: verbs that load no transformers model: transformers' own progress bars and info lines stay on for the others' sake
LIGHT = ("zoo", "prepare", "vocab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qingbert", description="轻BERT: small, fast Chinese language models.")
    parser.add_argument("--version", action="version", version=f"qingbert {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in ORDER:
        COMMANDS[verb](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("QINGBERT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # anywhere on the line: show the traceback of an unexpected error
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 1
    if args.verb not in LIGHT:
        silence_transformers()  # their per-load progress bars and info lines would drown our own output
    try:
        return args.run(args)
    except QingbertError as e:
        print(f"qingbert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qingbert: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one boundary: a library's expected failure, or a bug
        if debug:
            raise
        known = explain(e)
        if known is not None:
            print(f"qingbert: error: {known}", file=sys.stderr)
            return 2
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"qingbert: error: unexpected {type(e).__name__}: {first} (a bug in qingbert; run again with --debug "
              "for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
