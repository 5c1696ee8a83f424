"""The command line: ``qingbert <verb>``, a thin layer over the Python API.

``main``: the parser and the one error boundary (a user error is one line, exit status 2).  ``common``: the flags
and recipe handling the verbs share.  One module per group of verbs, each registering its verbs the same way
(``COMMANDS``): ``data`` (zoo, prepare, vocab, similar-words), ``pretraining`` (pretrain, fill-mask), ``tasks``
(finetune, predict, bench), ``distillation`` (distill), ``embeddings`` (encode, whiten, simcse, eval-sts),
``deploy`` (export, speed, index, prune-vocab), ``serve`` (serve), ``pipeline`` (run, demo, report).

Floor 12, the top: imports any floor.  Building the parser stays torch-free: a verb imports a module that loads
torch at its top only when it runs.
"""
