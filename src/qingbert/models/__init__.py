"""Models: what they are, how they load, how they run.

``zoo``: the Chinese BERT-family shapes (HFL, CLUE) with parameter counts and hub ids, building configs and
random-init models.  ``inits``: initialisations of a model built from scratch.  ``loading``: the one loader of a
model / config / tokenizer from a folder, zoo name or hub id, and the one way of keeping transformers quiet.
``tokenizer``: writing and copying tokenizers.  ``backends``: describing a model folder and running it on torch or
ONNX Runtime.  ``onnx``: exporting a graph, int8 quantisation, timing.

Floor 2: imports only ``errors``, ``manifest`` and ``training``.
"""
