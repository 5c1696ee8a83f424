"""One inference API for every model folder qingbert writes: ``qingbert.load(DIR)``.

``load`` looks at the folder (a fine-tuned classifier / pair / NER / MRC model, a
pretrained or distilled encoder, an exported folder with ONNX files, or a plain
transformers folder) and returns a :class:`Model` with

* ``predict(inputs)``: labels with scores (classification and sentence pairs),
  entities with character offsets (NER), answers with their start (MRC);
* ``encode(texts)``: sentence vectors (mean or [CLS] pooling of the last layer).

The work runs on a *backend*: ``torch`` (the transformers model), ``onnx``
(ONNX Runtime, fused graph, fp32) or ``onnx-int8`` (dynamically quantised).
By default the fastest one present in the folder is used: the one
``qingbert export`` measured fastest among those that passed its parity check,
else int8, then ONNX fp32, then torch.  Preprocessing is the training code's
own (the heads of :mod:`qingbert.tasks.finetune`), so a model predicts exactly what it
scored on dev.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from qingbert.data.text import split_pair
from qingbert.embeddings.encoder import SentenceEncoder
from qingbert.embeddings.pooling import NEEDS_TORCH, canonical_pooling
from qingbert.errors import QingbertError
from qingbert.models.backends import describe, hf_labels, open_backend
from qingbert.models.loading import load_tokenizer
from qingbert.tasks.readers import QAExample, SpanExample, TextExample

# ---------------------------------------------------------------------------
# what a folder holds


# ---------------------------------------------------------------------------
# backends: numpy inputs -> numpy outputs


# ---------------------------------------------------------------------------
# the model object


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


class Model:
    """A loaded model folder: ``predict`` and ``encode`` on one backend (``self.backend``)."""

    def __init__(self, folder: str | Path, backend: str | None = None, threads: int = 0, max_len: int | None = None,
                 spin: bool = True):
        from qingbert.tasks.finetune import FinetuneConfig
        from qingbert.tasks.heads import HEADS
        self.folder = Path(folder)
        self.info = describe(self.folder)
        self.kind = self.info["kind"]
        self.tokenizer = load_tokenizer(str(self.folder))
        self.runner = open_backend(self.folder, backend, threads, self.info, spin=spin)
        self.backend = self.runner.name
        m = self.info["manifest"]
        cfg = FinetuneConfig.from_dict({k: v for k, v in (m.get("config") or {}).items() if k != "train"})
        if max_len:
            cfg.max_len = max_len
        self.cfg = cfg
        labels = self.info["labels"] or hf_labels(self.folder)
        self.labels = labels
        self.head = None
        self.last_truncated = 0  # how many inputs of the last predict() call were cut at cfg.max_len tokens
        if self.kind != "encoder":
            self.head = HEADS[self.kind](SimpleNamespace(labels=[]))
            if self.kind == "ner":
                self.head.labels = list(labels)
                self.head.types = [t[2:] for t in labels if t.startswith("B-")]
            elif self.kind != "mrc":
                self.head.labels = list(labels)

    def __repr__(self) -> str:
        return f"qingbert.Model({str(self.folder)!r}, kind={self.kind!r}, backend={self.backend!r})"

    # -- helpers ---------------------------------------------------------------
    def _run(self, ds, names, batch_size: int, token_level: bool) -> dict:
        from qingbert.training.batching import run_model

        collate = self.head.collator(self.tokenizer) if self.head else _EncoderCollator(self.tokenizer.pad_token_id)
        return run_model(self.runner, ds, collate, names, batch_size=batch_size, token_level=token_level)

    def _examples(self, inputs: list):
        out = []
        for i, x in enumerate(inputs):
            if self.kind == "mrc":
                if isinstance(x, dict):
                    q, c = x.get("question"), x.get("context")
                elif isinstance(x, (tuple, list)) and len(x) == 2:
                    q, c = x
                else:
                    raise QingbertError(f"input {i}: an MRC model takes {{'question', 'context'}} or "
                                        "(question, context)")
                if not isinstance(q, str) or not isinstance(c, str) or not c:
                    raise QingbertError(f"input {i}: question and context must be strings, context non-empty")
                out.append(QAExample(id=i, context=c, question=q))
            elif self.kind == "ner":
                if not isinstance(x, str):
                    raise QingbertError(f"input {i}: an NER model takes texts (strings)")
                out.append(SpanExample(id=i, text=x))
            else:
                a, b = _pair(x, i) if self.kind == "pair" else (x, None)
                if not isinstance(a, str):
                    raise QingbertError(f"input {i}: a {self.kind} model takes texts (strings)")
                out.append(TextExample(id=i, text=a, text_b=b))
        return out

    # -- the API ---------------------------------------------------------------
    def predict(self, inputs, batch_size: int = 64):
        """Predictions for one input or a list of them.

        * classification: ``str`` -> ``{"label", "score"}``; pair: ``"a ||| b"`` or ``(a, b)``, the same;
        * NER: ``str`` -> ``{"text", "entities": [{"text", "type", "start", "end" (exclusive), "score"}]}``;
        * MRC: ``{"question", "context"}`` or ``(question, context)`` -> ``{"answer", "start", "score"}``.
        """
        if self.kind == "encoder":
            raise QingbertError(f"{self.folder} is an encoder without a task head: use encode(), or fine-tune it "
                                "with `qingbert finetune`")
        single = isinstance(inputs, (str, dict)) or (self.kind in ("pair", "mrc") and isinstance(inputs, tuple))
        items = [inputs] if single else list(inputs)
        if not items:
            return []
        examples = self._examples(items)
        ds, report = self.head.encode(examples, self.tokenizer, self.cfg, train=False)
        # inputs cut at max_len (sentence and pair models; NER and MRC slide windows over long texts instead)
        self.last_truncated = int((report or {}).get("truncated_to_max_len", 0))
        out = self._run(ds, self.head.outputs, batch_size, self.head.token_level)
        if self.kind == "mrc":
            from qingbert.tasks.mrc import decode_qa

            _, nbest = decode_qa(out["start_logits"], out["end_logits"], ds, examples, n_best=self.cfg.n_best,
                                 max_answer_len=self.cfg.max_answer_len)
            res = []
            for e in examples:
                best = nbest[e.id][0] if nbest[e.id] else {"text": "", "start": -1, "score": float("-inf")}
                res.append({"answer": best["text"], "start": best["start"], "score": float(best["score"])})
        elif self.kind == "ner":
            res = self._entities(out["logits"], ds, examples)
        else:
            res = []
            for x in out["logits"]:
                p = _softmax(np.asarray(x, dtype=np.float64))
                k = int(p.argmax())
                res.append({"label": self.labels[k], "score": float(p[k])})
        return res[0] if single else res

    def _entities(self, logits, ds, examples) -> list[dict]:
        from qingbert.tasks.ner import window_spans

        found: list[dict] = [{} for _ in examples]
        for x, ei, ci in zip(logits, ds["example"], ds["char_index"]):
            x = np.asarray(x, dtype=np.float64)
            ci = np.asarray(ci, dtype=np.int64)
            prob = _softmax(x).max(-1)
            char_prob = {int(c): float(p) for c, p in zip(ci, prob) if c >= 0}
            for s, e, t in window_spans(x.argmax(-1), ci, self.head.labels):
                score = float(np.mean([char_prob.get(k, 0.0) for k in range(s, e)]))
                found[ei][(s, e, t)] = max(score, found[ei].get((s, e, t), 0.0))
        return [{"text": ex.text, "entities": [{"text": ex.text[s:e], "type": t, "start": s, "end": e, "score": sc}
                                               for (s, e, t), sc in sorted(f.items())]}
                for ex, f in zip(examples, found)]

    def encode(self, texts, batch_size: int = 32, pooling: str = "mean", normalize: bool = False) -> np.ndarray:
        """Sentence vectors: a ``str`` gives a 1-D float32 array, a list an ``(n, hidden)`` one.

        The work is :class:`qingbert.embeddings.encoder.SentenceEncoder`'s on this model's backend (one encoder in
        qingbert): ``pooling`` is any last-layer pooling it has (``mean`` over real tokens, [CLS]/[SEP] included,
        ``cls``, ``max``, ``mean-max``); texts are cleaned like the training text and cut at ``max_len`` tokens, counted
        and warned about (:attr:`last_lengths` / :attr:`last_truncated` of :meth:`sentence_encoder`)."""
        enc = self.sentence_encoder(pooling)
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            return np.zeros((0, enc.dimension), dtype=np.float32)
        vecs = enc.encode(items, batch_size=batch_size, normalize_embeddings=normalize)
        return vecs[0] if single else vecs

    def sentence_encoder(self, pooling: str = "mean"):
        """The :class:`qingbert.embeddings.encoder.SentenceEncoder` of this model for ``pooling``, sharing its
        backend."""
        name = canonical_pooling(pooling)
        if name in NEEDS_TORCH or name == "none":
            raise QingbertError(f"pooling '{pooling}' is not a sentence vector of the last layer",
                                hint="mean, cls, max or mean-max; other poolings: "
                                     "qingbert.embeddings.encoder.SentenceEncoder")
        cache = self.__dict__.setdefault("_encoders", {})
        if name not in cache:
            cache[name] = SentenceEncoder(self.folder, pooling=name, max_len=self.cfg.max_len, whitening=False,
                                          runner=self.runner)
        return cache[name]


class _EncoderCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        from qingbert.training.batching import pad_rows

        return pad_rows(rows, self.pad_id)


def _pair(x, i: int):
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    pair = split_pair(x) if isinstance(x, str) else None
    if pair is not None:
        return pair
    raise QingbertError(f"input {i}: a sentence-pair model takes (text_a, text_b) or 'text_a ||| text_b'")


def load(folder: str | Path, backend: str | None = None, threads: int = 0, max_len: int | None = None,
         spin: bool = True) -> Model:
    """Open any model folder qingbert wrote (or a plain transformers one) on its fastest backend."""
    return Model(folder, backend=backend, threads=threads, max_len=max_len, spin=spin)


__all__ = ["load", "Model"]
