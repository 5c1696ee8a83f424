"""Pretraining: objectives over prepared shards, trained in the one loop.

``mlm``: whole-word-masking MLM (the reproducible masking collator, the objective that runs the vocabulary head at
masked positions only) and what every objective shares (loading a masked LM, dropout, evaluation masking).
``macbert``: MacBERT's n-gram masking with similar words (+ SOP).  ``electra``: generator + replaced-token
detection.  ``pretrain``: the stage and its objective registry.

Floor 4: imports ``errors``, ``manifest``, ``training``, ``models`` and ``data``.
"""
