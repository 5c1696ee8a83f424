"""``qingbert <verb>``: the parser of every verb and the one error boundary.

Each group module (``data``, ``pretraining``, ``tasks``, ``distillation``, ``embeddings``, ``deploy``, ``serve``,
``demo``) registers its verbs the same way: ``COMMANDS[verb](subparsers)`` adds the verb's parser with
``set_defaults(run=...)``, and ``run(args)`` calls one API function.  User errors
(:class:`~qingbert.errors.QingbertError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from qingbert import __version__
from qingbert.cli import data, demo, deploy, distillation, embeddings, pretraining, serve, tasks
from qingbert.errors import QingbertError
from qingbert.models.loading import silence_transformers

#: verb -> the function that adds its parser
COMMANDS = {**data.COMMANDS, **pretraining.COMMANDS, **tasks.COMMANDS, **distillation.COMMANDS,
            **embeddings.COMMANDS, **deploy.COMMANDS, **serve.COMMANDS, **demo.COMMANDS}
#: the order of ``qingbert --help``
ORDER = ("zoo", "prepare", "vocab", "pretrain", "fill-mask", "finetune", "predict", "export", "speed", "distill",
         "bench", "demo", "encode", "whiten", "simcse", "eval-sts", "index", "serve", "prune-vocab", "similar-words")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
