"""MacBERT pretraining: "MLM as correction" with similar words, n-gram whole-word masking and optional SOP.

MacBERT (Cui et al., 2020, "Revisiting Pre-Trained Models for Chinese NLP") keeps BERT's architecture and
changes what the model sees at the masked positions: instead of ``[MASK]`` (a token fine-tuning never shows),
a chosen word is replaced by a *similar word*, so pretraining looks like correcting a plausible but wrong
text.  Here, per sequence:

* whole words (the ``word_ids`` that ``qingbert prepare`` wrote) are chosen as word-level n-grams,
  n = 1..4 with probability 40/30/20/10 %, until 15 % of the sequence's real tokens are covered;
* of the chosen words (one decision per word, also inside an n-gram), 80 % are replaced by a similar word,
  10 % by random tokens and 10 % are kept; the labels are the original ids at every chosen position;
* a similar word always has the **same number of tokens** as the word it replaces, so positions, labels and
  the other words stay aligned; a word with no similar word gets random tokens of its length instead (a
  *fallback*, counted in :attr:`MacBERTCollator.stats`);
* with ``sop`` a packed sequence of two or more texts is split at a random ``[SEP]`` into segments A and B,
  swapped with probability 0.5 (sentence-order prediction, ALBERT's replacement for NSP, which MacBERT uses),
  and gets ``token_type_ids`` (0 for ``[CLS]`` + A, 1 for B).

Similar words come from an offline table built from the corpus itself (:func:`build_similar_words`,
``qingbert similar-words DATA --out DIR``): a small skip-gram Word2Vec over the prepared shards, where a
"word" is the tuple of token ids sharing a ``word_id`` (the same unit that is masked), and for each frequent
word its top-k nearest words by cosine *among words with the same token count*.  The paper used the
``Synonyms`` toolkit; a corpus-built table needs no extra data, works for any vocabulary and domain, and
speaks in exactly the units the masking chooses.  A candidate is drawn **uniformly** from the stored top-k:
on a corpus of the size this toolkit pretrains on, the cosine scores of the top-k are close together and
noisy, so weighting by them mostly repeats the first neighbour; uniform sampling gives more varied
corrections (the scores are still stored in the table for inspection).

Masking is a pure function of ``(seed, epoch, example index)`` (and the table), like
:class:`~qingbert.pretraining.mlm.WWMCollator`; SOP draws from a separate stream, so turning it on does not change
the masks.  Held-out evaluation uses the plain WWM collator at 15 %, so masked accuracy compares across
objectives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qingbert.data.similar import (  # noqa: F401
    BUILD_HINT,
    FORMAT,
    SimilarWords,
    build_similar_words,
    load_similar_words,
    vocab_fingerprint,
)
from qingbert.errors import QingbertError
from qingbert.pretraining.mlm import (
    EVAL_MLM_PROBABILITY,
    IGNORE,
    MLMObjective,
    WWMCollator,
    attention_of,
    document_attention,
    load_mlm,
    masked_lm_loss,
    set_dropout,
    tokenizer_info,
)
from qingbert.training.loop import seed_everything

DEFAULT_NGRAM_PROBS = (0.4, 0.3, 0.2, 0.1)
REJECTION_TRIES = 8
SOP_STREAM = 1  # the SOP decisions draw from rng([seed, epoch, index, SOP_STREAM]): independent of the masks
OPTIONS = ("similar_words", "sop", "ngram_probs", "similar_ratio", "random_ratio")


# ---------------------------------------------------------------------------
# Configuration

@dataclass
class MacBERTConfig:
    mlm_probability: float = 0.15  # share of real tokens covered by the chosen words
    ngram_probs: list = field(default_factory=lambda: list(DEFAULT_NGRAM_PROBS))  # P(n = 1, 2, ...) words
    similar_ratio: float = 0.8  # of chosen words: a similar word of the same token count
    random_ratio: float = 0.1  # random tokens; the rest (0.1) keep the original
    sop: bool = False  # sentence-order prediction as a second head (BertForPreTraining)
    document_mask: bool = False  # as mlm.MaskingConfig.document_mask (not with sop: B could not see A)

    def __post_init__(self):
        if not 0 < self.mlm_probability < 1:
            raise QingbertError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        try:
            probs = [float(p) for p in self.ngram_probs]
        except (TypeError, ValueError):
            raise QingbertError(f"ngram_probs must be a list of numbers, got {self.ngram_probs!r}",
                                hint="e.g. [0.4, 0.3, 0.2, 0.1] for 1- to 4-grams") from None
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise QingbertError(f"ngram_probs must be non-negative and sum to 1, got {self.ngram_probs!r}",
                                hint="e.g. [0.4, 0.3, 0.2, 0.1] for 1- to 4-grams")
        self.ngram_probs = probs
        for name in ("similar_ratio", "random_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise QingbertError(f"{name} must be a number in [0, 1], got {v!r}")
        if self.similar_ratio + self.random_ratio > 1 + 1e-9:
            raise QingbertError(f"similar_ratio + random_ratio must be at most 1, got "
                                f"{self.similar_ratio} + {self.random_ratio}")
        if not isinstance(self.sop, bool):
            raise QingbertError(f"sop must be true or false, got {self.sop!r}")
        if self.sop and self.document_mask:
            raise QingbertError("sop and document_mask do not go together: with document attention segment B "
                                "cannot see segment A, so their order cannot be predicted",
                                hint="turn one of them off")


def parse_options(options: dict | None, *, mlm_probability: float = 0.15, document_mask: bool = False,
                  data_dir=None) -> tuple[MacBERTConfig, str]:
    """``options`` (the ``macbert`` objective's settings) -> ``(MacBERTConfig, similar-words path)``.

    Unknown keys and a missing ``similar_words`` are errors naming what is expected."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise QingbertError(f"unknown macbert option(s) {', '.join(unknown)}", hint="known: " + ", ".join(OPTIONS))
    path = options.pop("similar_words", None)
    if not path:
        raise QingbertError("the macbert objective needs a similar-word table (option similar_words)",
                            hint=BUILD_HINT.format(data=data_dir or "DATA"))
    cfg = MacBERTConfig(mlm_probability=mlm_probability, document_mask=document_mask, **options)
    return cfg, str(path)


# ---------------------------------------------------------------------------
# Masking

def choose_ngrams(word_ids: np.ndarray, rng: np.random.Generator, mlm_probability: float,
                  ngram_probs) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Word n-grams covering ``mlm_probability`` of the real tokens of one sequence.

    Returns ``(words, first, sizes, spans)``: the sorted word ids, the index of each word's first token among
    the real tokens, its token count, and ``(first word index, n)`` per chosen n-gram.

    Unlike :func:`qingbert.pretraining.mlm.mask_example`, which truncates an n-gram that runs into a text end or an
    already chosen word, here n is drawn first and the start is drawn uniformly among the places where n free words of
    one text fit the remaining budget; only when no place fits is n lowered.  So the realised n-gram lengths
    follow ``ngram_probs`` except for the last span or two of a sequence, where long n-grams no longer fit:
    measured 42/30/19/9 % on 180-word sequences, 47/29/17/7 % on 64-token ones (a budget of ~9 tokens)."""
    real = word_ids >= 0
    n_real = int(real.sum())
    if n_real == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, []
    budget = max(1, int(round(n_real * mlm_probability)))
    words, first, sizes = np.unique(word_ids[real], return_index=True, return_counts=True)
    segment = np.cumsum(~real)[real][first]  # a special between two words separates their texts
    n_words = len(words)
    csize = np.concatenate([[0], np.cumsum(sizes)])
    seg_l, csize_l = segment.tolist(), csize.tolist()
    free = [True] * n_words
    draws = (rng.choice(len(ngram_probs), size=budget, p=ngram_probs) + 1).tolist()  # at most `budget` spans
    spans = []
    remaining = budget
    for n in draws:
        if remaining <= 0:
            break
        m = min(n, n_words)
        start = None
        # rejection sampling from a uniform start is uniform over the starts that fit; while most words are
        # free it needs a try or two, so the exact (vectorised) search runs only near the end of the budget
        for _ in range(REJECTION_TRIES):
            s = int(rng.integers(n_words - m + 1))
            if (seg_l[s] == seg_l[s + m - 1] and csize_l[s + m] - csize_l[s] <= remaining
                    and all(free[s:s + m])):
                start = s
                break
        if start is None:
            cfree = np.concatenate([[0], np.cumsum(free)])
            for m in range(m, 0, -1):
                s = np.arange(n_words - m + 1)
                ok = ((cfree[s + m] - cfree[s] == m) & (segment[s + m - 1] == segment[s])
                      & (csize[s + m] - csize[s] <= remaining))
                fits = np.flatnonzero(ok)
                if len(fits):
                    start = int(fits[rng.integers(len(fits))])
                    break
        if start is None:
            break
        free[start:start + m] = [False] * m
        spans.append((start, m))
        remaining -= csize_l[start + m] - csize_l[start]
    if not spans:  # every word is longer than the budget: the shortest one
        spans.append((int(np.argmin(sizes)), 1))
    return words, first, sizes, spans


def macbert_mask(input_ids: np.ndarray, word_ids: np.ndarray, rng: np.random.Generator, cfg: MacBERTConfig,
                 similar: SimilarWords, random_pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Corrupted input ids, labels (``IGNORE`` where not predicted) and counts for one sequence.

    The counts: ``ngrams`` (chosen n-gram lengths), ``similar`` / ``fallback`` / ``random`` / ``kept`` (words;
    a fallback is a word meant for a similar word that had none and got random tokens)."""
    ids = np.asarray(input_ids, dtype=np.int64).copy()
    word_ids = np.asarray(word_ids, dtype=np.int64)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    counts = {"ngrams": [], "similar": 0, "fallback": 0, "random": 0, "kept": 0}
    words, first, sizes, spans = choose_ngrams(word_ids, rng, cfg.mlm_probability, cfg.ngram_probs)
    if not spans:
        return ids, labels, counts
    real_pos = np.flatnonzero(word_ids >= 0)
    chosen = [w for start, n in spans for w in range(start, start + n)]
    counts["ngrams"] = [n for _, n in spans]
    action = rng.random(len(chosen))  # one decision per word
    for w, act in zip(chosen, action):
        pos = real_pos[first[w]:first[w] + sizes[w]]
        orig = ids[pos]
        labels[pos] = orig
        if act < cfg.similar_ratio:
            cand = similar.sample(orig, rng)
            if cand is not None:
                ids[pos] = cand
                counts["similar"] += 1
                continue
            counts["fallback"] += 1
        elif act < cfg.similar_ratio + cfg.random_ratio:
            counts["random"] += 1
        else:
            counts["kept"] += 1
            continue
        ids[pos] = random_pool[rng.integers(0, len(random_pool), size=len(pos))]
    return ids, labels, counts


def sop_example(input_ids: np.ndarray, word_ids: np.ndarray, labels: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Sentence-order prediction for one packed sequence ``[CLS] t1 [SEP] t2 [SEP] ...``.

    Split after a ``[SEP]`` chosen uniformly among the ones inside the sequence: A = ``[CLS] t1 [SEP] ...
    tk [SEP]``, B = ``t(k+1) [SEP] ... tn [SEP]``; with probability 0.5 the result is ``[CLS] B A`` (label 1,
    swapped) instead of ``[CLS] A B`` (label 0).  Returns the reordered ids, word ids and labels, the token
    type ids (0 for ``[CLS]`` and the first segment with its ``[SEP]``, 1 for the second) and the label;
    a sequence with one text (or one that does not end with a special) is left as is with label ``IGNORE``."""
    ids, wid, lab = np.asarray(input_ids), np.asarray(word_ids), np.asarray(labels)
    length = len(ids)
    types = np.zeros(length, dtype=np.int64)
    special = wid < 0
    closes = np.flatnonzero(special[1:] & (wid[:-1] >= 0)) + 1  # a [SEP] right after a real token
    if length < 2 or len(closes) < 2 or not special[0] or closes[-1] != length - 1:
        return ids, wid, lab, types, IGNORE
    b = int(closes[rng.integers(len(closes) - 1)])  # the last [SEP] of A
    swap = bool(rng.random() < 0.5)
    if swap:
        order = np.concatenate([[0], np.arange(b + 1, length), np.arange(1, b + 1)])
        types[length - b:] = 1  # [CLS] + B (length - 1 - b tokens) are type 0
    else:
        order = np.arange(length)
        types[b + 1:] = 1
    return ids[order], wid[order], lab[order], types, int(swap)


class MacBERTCollator(WWMCollator):
    """Pads prepared examples and applies MacBERT masking (and SOP); examples carry their dataset index.

    :attr:`stats` accumulates what this collator did (words chosen per kind, n-gram lengths, fallbacks, SOP
    labels and sequences with one text), for the run's manifest."""

    def __init__(self, tokenizer_info: dict, similar: SimilarWords, cfg: MacBERTConfig | None = None,
                 seed: int = 0):
        self.mcfg = cfg or MacBERTConfig()
        super().__init__(tokenizer_info, None, seed=seed)  # pad/mask ids, the random-token pool, rng()
        self.similar = similar
        self.stats = {"sequences": 0, "words_chosen": 0, "tokens_chosen": 0,
                      "ngrams": [0] * len(self.mcfg.ngram_probs), "similar": 0, "similar_fallback": 0,
                      "random": 0, "kept": 0, "sop_in_order": 0, "sop_swapped": 0, "sop_single_text": 0}

    def __call__(self, examples: list[dict]) -> dict:
        n = len(examples)
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = np.full((n, length), self.pad_id, dtype=np.int64)
        labels = np.full((n, length), IGNORE, dtype=np.int64)
        attention = np.zeros((n, length), dtype=np.int64)
        word_ids = np.full((n, length), -1, dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        sop = np.full(n, IGNORE, dtype=np.int64)
        fallbacks = 0
        for i, e in enumerate(examples):
            ids = np.asarray(e["input_ids"], dtype=np.int64)
            wid = np.asarray(e["word_ids"], dtype=np.int64)
            masked, lab, c = macbert_mask(ids, wid, self.rng(e["index"]), self.mcfg, self.similar, self.random_pool)
            st = self.stats
            st["sequences"] += 1
            st["tokens_chosen"] += int((lab != IGNORE).sum())
            st["words_chosen"] += c["similar"] + c["fallback"] + c["random"] + c["kept"]
            for g in c["ngrams"]:
                st["ngrams"][g - 1] += 1
            st["similar"] += c["similar"]
            st["similar_fallback"] += c["fallback"]
            st["random"] += c["random"]
            st["kept"] += c["kept"]
            fallbacks += c["fallback"]
            if self.mcfg.sop:
                sop_rng = np.random.default_rng([self.seed, self.epoch, int(e["index"]), SOP_STREAM])
                masked, wid, lab, tt, sop[i] = sop_example(masked, wid, lab, sop_rng)
                types[i, :len(ids)] = tt
                st["sop_single_text" if sop[i] == IGNORE else "sop_swapped" if sop[i] else "sop_in_order"] += 1
            input_ids[i, :len(ids)] = masked
            labels[i, :len(ids)] = lab
            attention[i, :len(ids)] = 1
            word_ids[i, :len(ids)] = wid
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
                 "labels": torch.from_numpy(labels), "similar_fallbacks": fallbacks}  # (an int: no device copy)
        if self.mcfg.sop:
            batch["token_type_ids"] = torch.from_numpy(types)
            batch["sop_labels"] = torch.from_numpy(sop)
        if self.mcfg.document_mask:
            batch["document_attention"] = document_attention(word_ids, attention)
        return batch


class SOPEvalCollator:
    """Held-out batches for MacBERT with SOP: each sequence split and (half the time) swapped as in training,
    with the same seeded draw every evaluation, then masked by the plain WWM ``base`` collator, so one
    evaluation gives both the masked accuracy and the held-out SOP accuracy."""

    def __init__(self, base: WWMCollator, seed: int = 0):
        self.base, self.seed = base, seed

    def __call__(self, examples: list[dict]) -> dict:
        reordered, types, sop = [], [], []
        for e in examples:
            ids = np.asarray(e["input_ids"], dtype=np.int64)
            wid = np.asarray(e["word_ids"], dtype=np.int64)
            rng = np.random.default_rng([self.seed, int(e["index"]), SOP_STREAM])
            ids, wid, _, tt, label = sop_example(ids, wid, np.zeros_like(ids), rng)
            reordered.append({**e, "input_ids": ids.tolist(), "word_ids": wid.tolist()})
            types.append(tt)
            sop.append(label)
        batch = self.base(reordered)
        tt = np.zeros(tuple(batch["input_ids"].shape), dtype=np.int64)
        for i, t in enumerate(types):
            tt[i, :len(t)] = t
        batch["token_type_ids"] = torch.from_numpy(tt)
        batch["sop_labels"] = torch.tensor(sop, dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------
# The objective

def pretraining_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """MLM (vocabulary head only at the masked positions, as :func:`qingbert.pretraining.mlm.masked_lm_loss`) + SOP
    cross-entropy for a ``BertForPreTraining``; without ``sop_labels`` in the batch, MLM alone."""
    labels = batch["labels"]
    out = model.bert(input_ids=batch["input_ids"], attention_mask=attention_of(batch),
                     token_type_ids=batch.get("token_type_ids"))
    sel = labels != IGNORE
    target = labels[sel]
    logits = model.cls.predictions(out.last_hidden_state[sel])
    mlm = F.cross_entropy(logits.float(), target)
    with torch.no_grad():
        correct = (logits.argmax(-1) == target).sum()
    metrics = {"mlm_loss": mlm.detach(), "masked_tokens": target.numel(), "correct": correct}
    if "sop_labels" not in batch:
        return mlm, metrics
    sop_labels = batch["sop_labels"]
    sop_logits = model.cls.seq_relationship(out.pooler_output)
    valid = sop_labels != IGNORE
    if bool(valid.any()):
        sop = F.cross_entropy(sop_logits[valid].float(), sop_labels[valid])
    else:  # only single-text sequences: no SOP signal, but the head stays in the graph (data-parallel)
        sop = sop_logits.sum() * 0.0
    with torch.no_grad():
        sop_correct = (sop_logits[valid].argmax(-1) == sop_labels[valid]).sum()
    n = int(valid.sum())
    metrics.update(sop_loss=sop.detach(), sop_correct=sop_correct, sop_count=n,
                   sop_accuracy=float(sop_correct) / n if n else float("nan"))
    return mlm + sop, metrics


class MacBERTObjective(torch.nn.Module):
    """MacBERT pretraining: wraps a masked-LM model (``BertForPreTraining`` with SOP);
    ``forward(batch) -> (loss, metrics)``, as :class:`qingbert.pretraining.mlm.MLMObjective`."""

    name = "macbert"
    accuracy_name = "masked_accuracy"
    extra_accuracies = {"sop_accuracy": ("sop_correct", "sop_count")}  # logged only when SOP is on

    def __init__(self, model, sop: bool = False):
        super().__init__()
        self.model = model
        self.sop = sop

    def _loss(self, batch: dict):
        if self.sop:
            return pretraining_loss(self.model, batch)
        return masked_lm_loss(self.model, batch)

    def forward(self, batch: dict):
        loss, metrics = self._loss(batch)
        if "similar_fallbacks" in batch:
            metrics["similar_fallbacks"] = int(batch["similar_fallbacks"])
        return loss, metrics

    def evaluate_batch(self, batch: dict) -> dict:
        loss, m = self._loss(batch)
        n = m["masked_tokens"]
        mlm = float(m["mlm_loss"])
        out = {"loss_sum": mlm * n, "tokens": n, "correct": int(m["correct"])}
        if m.get("sop_count"):
            out.update(sop_loss_sum=float(m["sop_loss"]) * m["sop_count"], sop_count=m["sop_count"],
                       sop_correct=int(m["sop_correct"]))
        return out

    @staticmethod
    def summarize(totals: dict) -> dict:
        out = MLMObjective.summarize(totals)
        if totals.get("sop_count"):
            n = totals["sop_count"]
            out.update(sop_accuracy=totals.get("sop_correct", 0) / n, sop_loss=totals.get("sop_loss_sum", 0.0) / n)
        return out

    def trained_model(self):
        return self.model


def to_pretraining_model(net, source: str | None = None) -> tuple[object, dict]:
    """A ``BertForPreTraining`` holding ``net``'s weights (a ``BertForMaskedLM``), for the SOP head.

    The pooler and the 2-way ``cls.seq_relationship`` head come from ``source``'s ``model.safetensors`` when
    it is a local folder that has them (continued pretraining of a folder saved this way), else they start
    random.  The saved folder still loads as ``BertForMaskedLM`` / ``AutoModelForMaskedLM`` (those tensors
    are then unused) and keeps a trained pooler for fine-tuning."""
    from transformers import BertForPreTraining

    if getattr(net.config, "model_type", None) != "bert":
        raise QingbertError(f"SOP needs a BERT-layout model; {type(net).__name__} "
                            f"({getattr(net.config, 'model_type', '?')}) has no BertForPreTraining form",
                            hint="set sop: false")
    model = BertForPreTraining(net.config)
    res = model.load_state_dict(net.state_dict(), strict=False)
    heads = ("bert.pooler.", "cls.seq_relationship.")
    bad = [k for k in res.missing_keys if not k.startswith(heads)] + list(res.unexpected_keys)
    if bad:
        raise QingbertError(f"cannot move {type(net).__name__} into BertForPreTraining: {', '.join(bad[:5])}",
                            hint="set sop: false")
    found = "random"
    weights = Path(source) / "model.safetensors" if source and Path(source).is_dir() else None
    if weights is not None and weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            extra = {k: f.get_tensor(k) for k in f.keys() if k.startswith(heads)}
        if extra and set(extra) >= set(res.missing_keys):
            model.load_state_dict(extra, strict=False)
            found = f"from {source}"
    return model, {"sop_head": found}


def make_objective(model: str, tokenizer, cfg, options: dict, data_dir) -> tuple:
    """``(objective, train_collate, eval_collate, info)`` for ``qingbert pretrain`` with objective macbert.

    ``cfg`` is a :class:`qingbert.pretraining.pretrain.PretrainConfig` (``masking.mlm_probability`` and
    ``masking.document_mask``, ``train.seed``, ``overrides``, ``init``, ``train_dropout`` are used);
    ``options``: ``similar_words`` (required: a :func:`build_similar_words` folder), ``sop`` (false),
    ``ngram_probs`` ([0.4, 0.3, 0.2, 0.1]), ``similar_ratio`` (0.8), ``random_ratio`` (0.1).  Every bad
    option or table is a QingbertError raised before the model is built.

    ``info``: ``init`` (how the model was made), ``macbert`` (the masking settings and the table's
    provenance), ``config_updates`` (the config values ``train_dropout`` replaced, to write back on save) and
    ``collator_stats`` (the training collator's live counts: read them after training)."""
    mcfg, path = parse_options(options, mlm_probability=cfg.masking.mlm_probability,
                               document_mask=cfg.masking.document_mask, data_dir=data_dir)
    if not Path(path).exists():
        raise QingbertError(f"similar-word table {path} does not exist", hint=BUILD_HINT.format(data=data_dir))
    similar = load_similar_words(path, tokenizer)
    if cfg.train_dropout is not None and not 0 <= cfg.train_dropout < 1:
        raise QingbertError(f"train_dropout must be in [0, 1), got {cfg.train_dropout}")
    seed_everything(cfg.train.seed)  # random init (and the SOP head) depend on it
    net, init = load_mlm(model, tokenizer, cfg.overrides, init=cfg.init)
    sop_info = {}
    if mcfg.sop:
        net, sop_info = to_pretraining_model(net, model)
    config_updates = set_dropout(net, cfg.train_dropout)
    info_tok = tokenizer_info(tokenizer)
    objective = MacBERTObjective(net, sop=mcfg.sop)
    train_collate = MacBERTCollator(info_tok, similar, mcfg, seed=cfg.train.seed)
    # held-out masked accuracy: the plain WWM masks at BERT's 15 %, exactly as the wwm objective evaluates
    eval_collate = WWMCollator(info_tok, replace(cfg.masking, mlm_probability=EVAL_MLM_PROBABILITY),
                               seed=cfg.train.seed)
    if mcfg.sop:  # ... on sequences split and swapped as in training: held-out SOP accuracy too
        eval_collate = SOPEvalCollator(eval_collate, seed=cfg.train.seed)
    m = similar.manifest
    info = {
        "init": {**init, **sop_info},
        "macbert": {**asdict(mcfg), "similar_words": {"path": str(Path(path).resolve()), "built_from": m.get("data"),
                                                      "words": len(similar), "settings": m.get("settings"),
                                                      "choice": m.get("choice")},
                    "eval": f"plain whole-word masking at {EVAL_MLM_PROBABILITY:.0%} ([MASK] 80 / random 10 / "
                            "kept 10)" + ("; SOP on held-out sequences split and swapped as in training"
                                          if mcfg.sop else "")},
        "config_updates": config_updates,
        "collator_stats": train_collate.stats,
    }
    return objective, train_collate, eval_collate, info


__all__ = ["MacBERTConfig", "MacBERTCollator", "MacBERTObjective", "SOPEvalCollator", "SimilarWords",
           "build_similar_words", "load_similar_words", "choose_ngrams", "macbert_mask", "sop_example",
           "pretraining_loss",
           "to_pretraining_model", "make_objective", "parse_options",
           "vocab_fingerprint"]
