"""Sentence embeddings: an encoder like sentence-transformers', BERT-whitening, SimCSE and STS evaluation.

``pooling``: the poolings and their names (``mean``, ``cls``, ``max``, ``mean-max``, ``first-last-avg``,
``pooler``, ``none``, bert-as-service's ``REDUCE_*``), pooling one layer's tokens.  ``st_format``: the
sentence-transformers folder layout, read (:func:`~qingbert.embeddings.st_format.folder_settings`) and written
(:func:`~qingbert.embeddings.st_format.save_sentence_transformers`).  ``encoder``:
:class:`~qingbert.embeddings.encoder.SentenceEncoder`, texts to vectors on any backend, truncation counted and
warned about.  ``inputs``: what the stages read (a corpus file, labelled sentence pairs of a task).
``whitening``: BERT-whitening, fitted and stored with the model.  ``simcse``: unsupervised SimCSE and supervised
pair training (CoSENT, in-batch negatives) on the one training loop.  ``sts``: Spearman correlation on
sentence-pair tasks.  (Their verbs live in
:mod:`qingbert.cli.embeddings`.)

Floor 7: imports ``errors``, ``manifest``, ``training``, ``models``, ``data``, ``pretraining`` and ``tasks``;
never its sibling ``distillation``, nor ``deploy``, ``serve``, ``cli``.
"""
