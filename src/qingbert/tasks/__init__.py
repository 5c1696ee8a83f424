"""Tasks: Chinese benchmarks, their heads and losses, fine-tuning, prediction and the fine-tuning protocol.

``readers``: CLUE, FewCLUE, CMRC 2018, DRCD, CLUENER, ChnSentiCorp, LCQMC, BQ, THUCNews, the built-in tasks and
generic files -> examples.  ``metrics``: the official scores.  ``classification`` / ``ner`` / ``mrc``: each task
type's head (encode, collate, objective = the loss, decode, score, submission).  ``heads``: them by task type.
``finetune``: the stage.  ``predict``: labelling a split into a submission file.  ``prompt``: PET-style prompt
fine-tuning.  ``bench``: the MiniRBT fine-tuning protocol (lr grid x epochs x seeds).

Floor 5: imports ``errors``, ``manifest``, ``training``, ``models``, ``data`` and ``pretraining``.
"""
