"""Whole-word-masking MLM: the masking collator and the pretraining objective.

Masking is *dynamic* and *reproducible*: the mask of an example is a function of
``(seed, epoch, example index)`` only, so every epoch sees new masks, and a
resumed run, or a run on a different number of processes, masks exactly the
same way.

Per sequence, words (the ``word_ids`` that ``qingbert prepare`` wrote) are taken
in random order until 15 % of the sequence's real tokens are covered (as Google's
``create_pretraining_data`` does for whole words); a chosen word gets ``[MASK]``
on all its tokens with probability 0.8, random tokens with 0.1, and is kept with
0.1.  With ``max_ngram > 1`` a chosen word may extend to an n-gram of following
words of the same text.  Special tokens and padding are never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qingbert.errors import QingbertError
from qingbert.models import loading, zoo
from qingbert.models.inits import apply_init

IGNORE = -100


@dataclass
class MaskingConfig:
    mlm_probability: float = 0.15
    mask_ratio: float = 0.8  # of chosen words: [MASK]
    random_ratio: float = 0.1  # random tokens; the rest (0.1) keep the original
    max_ngram: int = 1
    ngram_probs: list = field(default_factory=lambda: [1.0])  # P(n = 1..max_ngram)
    # packed sequences hold several texts ([CLS] a [SEP] b [SEP] ...): with document_mask a token attends only to
    # the tokens of its own text, as if each text were alone (the context is coherent, as fine-tuning sees it)
    document_mask: bool = False

    def __post_init__(self):
        if not 0 < self.mlm_probability < 1:
            raise ValueError("mlm_probability must be in (0, 1)")
        if self.mask_ratio + self.random_ratio > 1:
            raise ValueError("mask_ratio + random_ratio must be at most 1")
        if len(self.ngram_probs) != self.max_ngram:
            if self.max_ngram == 1:
                self.ngram_probs = [1.0]
            else:  # the usual 1/n weighting (as in SpanBERT / MacBERT style n-gram masking)
                w = 1.0 / np.arange(1, self.max_ngram + 1)
                self.ngram_probs = (w / w.sum()).tolist()


def mask_example(input_ids: np.ndarray, word_ids: np.ndarray, rng: np.random.Generator, cfg: MaskingConfig,
                 mask_id: int, random_pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked input ids and labels (``IGNORE`` where not predicted) for one sequence."""
    ids = input_ids.copy()
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    real = word_ids >= 0
    n_real = int(real.sum())
    if n_real == 0:
        return ids, labels
    budget = max(1, int(round(n_real * cfg.mlm_probability)))
    words, first, sizes = np.unique(word_ids[real], return_index=True, return_counts=True)
    # words of one text (between two specials) may form n-grams; a special breaks them
    segment = np.cumsum(~real)[real][first]
    order = rng.permutation(len(words))
    chosen = np.zeros(len(words), dtype=bool)
    covered = 0
    for w in order:
        if covered >= budget:
            break
        if chosen[w]:
            continue
        n = 1 if cfg.max_ngram == 1 else int(rng.choice(cfg.max_ngram, p=cfg.ngram_probs)) + 1
        span = [w]
        for k in range(w + 1, min(w + n, len(words))):
            if segment[k] != segment[w] or chosen[k]:
                break
            span.append(k)
        size = int(sizes[span].sum())
        if covered + size > budget:
            if len(span) > 1:  # try the unigram instead of skipping the word
                span, size = [w], int(sizes[w])
            if covered + size > budget:
                continue
        chosen[span] = True
        covered += size
    if not chosen.any():  # every word was longer than the budget: mask the shortest one
        chosen[int(np.argmin(sizes))] = True
    # one decision per word: [MASK] / random / keep
    action = rng.random(len(words))
    token_word = np.searchsorted(words, word_ids[real])
    positions = np.flatnonzero(real)
    sel = chosen[token_word]
    pos = positions[sel]
    act = action[token_word[sel]]
    labels[pos] = ids[pos]
    ids[pos[act < cfg.mask_ratio]] = mask_id
    rand = pos[(act >= cfg.mask_ratio) & (act < cfg.mask_ratio + cfg.random_ratio)]
    if len(rand):
        ids[rand] = random_pool[rng.integers(0, len(random_pool), size=len(rand))]
    return ids, labels


def document_attention(word_ids: np.ndarray, attention: np.ndarray) -> torch.Tensor:
    """Additive ``(batch, 1, seq, seq)`` attention bias that keeps each packed text to itself.

    A text runs from its first token through the ``[SEP]`` that closes it (the sequence's ``[CLS]`` belongs to
    the first text); ``word_ids`` marks special tokens with -1, and a ``[SEP]`` is a special right after a real
    token.  Padding is masked as well."""
    special = word_ids < 0
    closes = special & np.concatenate([np.zeros((len(word_ids), 1), bool), word_ids[:, :-1] >= 0], axis=1)
    doc = np.concatenate([np.zeros((len(word_ids), 1), np.int64), np.cumsum(closes, axis=1)[:, :-1]], axis=1)
    keep = (doc[:, :, None] == doc[:, None, :]) & (attention[:, None, :] > 0) & (attention[:, :, None] > 0)
    # a padded query row keeps itself, so no row is all -inf
    keep |= np.eye(word_ids.shape[1], dtype=bool)[None]
    bias = np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32)
    return torch.from_numpy(bias[:, None])


def attention_of(batch: dict) -> torch.Tensor:
    """What to pass as ``attention_mask``: the document bias when the batch has one, else the padding mask."""
    return batch["document_attention"] if "document_attention" in batch else batch["attention_mask"]


class WWMCollator:
    """Pads a list of prepared examples and masks them; examples carry their dataset index."""

    def __init__(self, tokenizer_info: dict, cfg: MaskingConfig | None = None, seed: int = 0):
        self.cfg = cfg or MaskingConfig()
        self.seed = seed
        self.epoch = 0
        self.pad_id = tokenizer_info["pad_id"]
        self.mask_id = tokenizer_info["mask_id"]
        special = set(tokenizer_info["special_ids"])
        self.random_pool = np.array([i for i in range(tokenizer_info["vocab_size"]) if i not in special],
                                    dtype=np.int64)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __call__(self, examples: list[dict]) -> dict:
        n = len(examples)
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = np.full((n, length), self.pad_id, dtype=np.int64)
        labels = np.full((n, length), IGNORE, dtype=np.int64)
        attention = np.zeros((n, length), dtype=np.int64)
        word_ids = np.full((n, length), -1, dtype=np.int64)
        for i, e in enumerate(examples):
            ids = np.asarray(e["input_ids"], dtype=np.int64)
            wid = np.asarray(e["word_ids"], dtype=np.int64)
            masked, lab = mask_example(ids, wid, self.rng(e["index"]), self.cfg, self.mask_id, self.random_pool)
            input_ids[i, :len(ids)] = masked
            labels[i, :len(ids)] = lab
            attention[i, :len(ids)] = 1
            word_ids[i, :len(ids)] = wid
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
                 "labels": torch.from_numpy(labels)}
        if self.cfg.document_mask:
            batch["document_attention"] = document_attention(word_ids, attention)
        return batch


def mlm_head(model):
    """The MLM head module of a masked-LM model, or None if its layout is unknown."""
    for name in ("cls", "lm_head", "predictions"):
        head = getattr(model, name, None)
        if head is not None:
            return head
    if getattr(model, "generator_lm_head", None) is not None:  # ELECTRA's generator: two modules, run in order
        return torch.nn.Sequential(model.generator_predictions, model.generator_lm_head)
    return None


def masked_lm_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """MLM loss with the vocabulary head run only at masked positions.

    For a MiniRBT-H256 shape the 21,128-way head is more than half the FLOPs of a
    full forward pass; at 15 % masking this skips most of it.  Models whose head
    is not a separate module fall back to the full forward.
    """
    labels = batch["labels"]
    head = mlm_head(model)
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or base is None:
        out = model(input_ids=batch["input_ids"], attention_mask=attention_of(batch), labels=labels)
        logits, target = out.logits[labels != IGNORE], labels[labels != IGNORE]
        loss = out.loss
    else:
        hidden = base(input_ids=batch["input_ids"], attention_mask=attention_of(batch)).last_hidden_state
        sel = labels != IGNORE
        target = labels[sel]
        logits = head(hidden[sel])
        loss = F.cross_entropy(logits.float(), target)
    with torch.no_grad():
        correct = (logits.argmax(-1) == target).sum()
    return loss, {"mlm_loss": loss.detach(), "masked_tokens": target.numel(), "correct": correct}


class MLMObjective(torch.nn.Module):
    """WWM-MLM pretraining: wraps a masked-LM model; ``forward(batch) -> (loss, metrics)``."""

    name = "wwm-mlm"
    accuracy_name = "masked_accuracy"

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        return masked_lm_loss(self.model, batch)

    def evaluate_batch(self, batch: dict) -> dict:
        loss, m = masked_lm_loss(self.model, batch)
        n = m["masked_tokens"]
        return {"loss_sum": float(loss) * n, "tokens": n, "correct": int(m["correct"])}

    @staticmethod
    def summarize(totals: dict) -> dict:
        n = max(1, totals.get("tokens", 0))
        loss = totals.get("loss_sum", 0.0) / n
        return {"masked_accuracy": totals.get("correct", 0) / n, "loss": loss,
                "perplexity": float(np.exp(min(loss, 50.0))), "masked_tokens": totals.get("tokens", 0)}

    def trained_model(self):
        return self.model


EVAL_MLM_PROBABILITY = 0.15


def tokenizer_info(tokenizer) -> dict:
    return {"pad_id": tokenizer.pad_token_id, "mask_id": tokenizer.mask_token_id,
            "special_ids": sorted(set(tokenizer.all_special_ids)), "vocab_size": len(tokenizer)}


def missing_mlm_head(loading_info: dict) -> list[str]:
    """The masked-LM head tensors a folder lacked when loaded (``from_pretrained(..., output_loading_info=True)``):
    a fine-tuned classifier or a bare encoder has none, so its head is random."""
    return [k for k in loading_info.get("missing_keys", []) if "cls." in k or "lm_head" in k or "predictions" in k]


def load_mlm(model: str, tokenizer, overrides: dict | None = None, weights: bool = False,
             init: str = "default") -> tuple[object, dict]:
    """A masked-LM model for ``model`` (zoo name -> from scratch; folder/hub id -> weights) + how it was made.

    With ``weights`` a zoo name means its published weights (its hub id), as a teacher needs.  ``init`` names
    the initialisation of a model built from scratch (:mod:`qingbert.models.inits`); weights are never
    re-initialised."""
    vocab = tokenizer.get_vocab()
    spec = None
    if not Path(model).exists() and not weights:
        try:
            spec = zoo.get_spec(model)
        except QingbertError:
            if "/" not in model:  # not a hub id either: the zoo's did-you-mean is the helpful message
                raise
    if spec is not None:
        m = zoo.build_model(spec, vocab_size=len(vocab), head="mlm", **(overrides or {}))
        m.config.pad_token_id = tokenizer.pad_token_id
        return m, {"init": "random (from scratch)", "zoo": spec.name, "head_initialised": False,
                   "initialisation": apply_init(m, init)}
    m, info = loading.load_model(model, head="mlm", loading_info=True)
    model_tok = None
    local = Path(model)
    has_tokenizer = not local.is_dir() or any((local / f).exists() for f in ("tokenizer.json", "vocab.txt"))
    if has_tokenizer:  # (transformers 5 makes an empty 5-token tokenizer from a folder without one)
        try:
            model_tok = loading.load_tokenizer(model)
        except QingbertError:
            model_tok = None
    if m.get_input_embeddings().num_embeddings < len(vocab):
        raise QingbertError(f"model {model} has {m.get_input_embeddings().num_embeddings} token embeddings but the "
                            f"data's tokenizer has {len(vocab)} tokens",
                            hint=f"prepare the data with --tokenizer {model}")
    if model_tok is not None and model_tok.get_vocab() != vocab:
        raise QingbertError(f"the data was tokenized with a different vocabulary than {model}'s",
                            hint=f"re-run `qingbert prepare ... --tokenizer {model}`")
    missing = missing_mlm_head(info)
    if missing:
        print(f"qingbert: {model} has no trained MLM head ({len(missing)} head tensors missing); "
              "initialised it randomly", flush=True)
    return m, {"init": f"weights from {model}", "head_initialised": bool(missing), "missing_head_keys": missing}


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def set_dropout(model, p: float | None) -> dict:
    """Set every dropout module of ``model`` to ``p`` for training (None: leave it); returns the config values to
    write back on save, so the saved model keeps its own dropout for fine-tuning."""
    if p is None:
        return {}
    if not 0 <= p < 1:
        raise QingbertError(f"train_dropout must be in [0, 1), got {p}")
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = p
    return {k: getattr(model.config, k) for k in DROPOUT_KEYS if hasattr(model.config, k)}
