"""SimCSE and supervised pair training of sentence encoders, as objectives of the one training loop.

:func:`train_simcse`: unsupervised SimCSE (dropout as augmentation, in-batch negatives, InfoNCE:
:class:`UnsupervisedSimCSE`) or supervised training on labelled pairs (CoSENT, and/or in-batch negatives with the
positive pairs: :class:`SupervisedSimCSE`), run by :class:`qingbert.training.loop.Trainer`; the result is saved in
the sentence-transformers layout (:mod:`qingbert.embeddings.st_format`).  :func:`info_nce` and
:func:`cosent_loss` are the losses.  Only training imports this module, so it imports torch at the top.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from qingbert.embeddings.inputs import check_pairs, read_corpus
from qingbert.embeddings.pooling import canonical_pooling, pool_tokens
from qingbert.embeddings.st_format import ST_POOLING, has_trained_pooler, save_sentence_transformers
from qingbert.errors import QingbertError
from qingbert.models.backends import describe
from qingbert.models.loading import load_tokenizer, quiet_load
from qingbert.training.batching import pad_rows
from qingbert.training.loop import TrainConfig, Trainer, fill_config, seed_everything


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float,
             targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over cosine similarities: row ``i`` of ``anchors`` should pick ``candidates[targets[i]]``
    (default ``i``) among all candidates.  Returns ``(loss, number of rows whose best candidate is right)``."""
    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    logits = a @ c.T / temperature
    if targets is None:
        targets = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, targets)
    return loss, (logits.argmax(-1) == targets).sum()


def cosent_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: ``log(1 + sum over pairs (i, j) with label_i > label_j of exp(scale * (cos_j - cos_i)))`` —
    every pair ranked higher by the labels should have the higher cosine."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    labels = labels.float()
    wrong = labels[:, None] > labels[None, :]
    diff = diff[wrong]
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


class _EncoderObjective(torch.nn.Module):
    """A transformers encoder whose pooled sentence vectors a SimCSE loss trains."""

    def __init__(self, encoder, pooling: str):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        res = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return pool_tokens(res.last_hidden_state, attention_mask, self.pooling)

    def trained_model(self):
        return self.encoder


class UnsupervisedSimCSE(_EncoderObjective):
    """Each sentence twice through the encoder in train mode (two dropout masks): the two views of a sentence
    are the positive pair, the other sentences of the batch the negatives; InfoNCE at ``temperature``."""

    accuracy_name = "view_accuracy"

    def __init__(self, encoder, pooling: str = "mean", temperature: float = 0.05):
        super().__init__(encoder, pooling)
        self.temperature = temperature

    def forward(self, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids")
        z = self.embed(torch.cat([ids, ids]), torch.cat([mask, mask]),
                       torch.cat([types, types]) if types is not None else None)
        n = ids.shape[0]
        loss, correct = info_nce(z[:n], z[n:], self.temperature)
        return loss, {"correct": int(correct), "count": n}


class SupervisedSimCSE(_EncoderObjective):
    """Labelled pairs ``(a, b, score)``: CoSENT on the pairs' cosines (``loss="cosent"``), InfoNCE of each
    positive pair (score >= ``positive``) against the batch's other second sentences (``"in-batch"``), or both."""

    accuracy_name = "pair_accuracy"

    def __init__(self, encoder, pooling: str = "mean", loss: str = "cosent", temperature: float = 0.05,
                 scale: float = 20.0, positive: float = 1.0):
        super().__init__(encoder, pooling)
        self.loss, self.temperature, self.scale, self.positive = loss, temperature, scale, positive

    def forward(self, batch):
        za = self.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        zb = self.embed(batch["b_input_ids"], batch["b_attention_mask"], batch.get("b_token_type_ids"))
        labels = batch["label"]
        total = za.sum() * 0.0
        metrics = {}
        if self.loss in ("cosent", "both"):
            total = total + cosent_loss(za, zb, labels, self.scale)
        if self.loss in ("in-batch", "both"):
            pos = (labels >= self.positive).nonzero().flatten()
            if len(pos):
                loss, correct = info_nce(za[pos], zb, self.temperature, targets=pos)
                total = total + loss
                metrics = {"correct": int(correct), "count": int(len(pos))}
        return total, metrics


@dataclass
class SimCSEConfig:
    """SimCSE / supervised pair training; ``train`` is the loop's :class:`~qingbert.training.loop.TrainConfig`."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64, lr=3e-5, epochs=1.0, save_every=0))
    temperature: float = 0.05  # InfoNCE temperature
    pooling: str = "mean"  # mean | cls | max | mean-max (sentence-transformers can load all four)
    max_len: int = 64  # tokens per sentence while training (longer ones are cut and counted)
    max_seq_length: int | None = None  # saved for inference; None: the model's limit (at most 512)
    sup_loss: str = "cosent"  # labelled pairs: cosent | in-batch | both
    scale: float = 20.0  # CoSENT scale on the cosines
    positive: float = 1.0  # in-batch: pairs with score >= this are positives
    dropout: float | None = None  # None: the model's own (0.1 if the model has none: SimCSE needs dropout)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SimCSEConfig":
        """Flat or nested (``train:``) dict -> config; unknown keys are an error."""
        return fill_config(cls(), d, "SimCSE")


def _tokenize_texts(tokenizer, texts: list[str], max_len: int) -> tuple[dict, int]:
    enc = tokenizer(texts, truncation=False, verbose=False)
    truncated = sum(len(x) > max_len for x in enc["input_ids"])
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return {"input_ids": enc["input_ids"], "token_type_ids": types}, int(truncated)


class _PairCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        a = pad_rows([{"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"]} for r in rows], self.pad_id)
        b = pad_rows([{"input_ids": r["b_input_ids"], "token_type_ids": r["b_token_type_ids"]} for r in rows],
                     self.pad_id)
        batch = dict(a)
        batch.update({"b_" + k: v for k, v in b.items()})
        batch["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
        return batch


class _TextCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        return pad_rows([{"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"]} for r in rows],
                        self.pad_id)


def train_simcse(model_dir: str | Path, out_dir: str | Path, texts=None, pairs=None,
                 config: SimCSEConfig | dict | None = None) -> dict:
    """SimCSE: unsupervised on ``texts`` (a list, or a text file with one sentence per line), or supervised on
    labelled ``pairs`` (``(a, b, score)``; see :class:`SupervisedSimCSE`).  The loop is
    :class:`qingbert.training.loop.Trainer`; ``out_dir`` gets the encoder in the sentence-transformers layout (plus the
    loop's ``metrics.jsonl``) and a ``manifest.json`` saying what made it.  Returns ``{"out", "objective",
    "steps", "losses", "first_loss", "final_loss", ...}``."""
    import transformers
    from datasets import Dataset

    cfg = config if isinstance(config, SimCSEConfig) else SimCSEConfig.from_dict(config)
    if texts is None and pairs is None:
        raise QingbertError("give texts (unsupervised SimCSE) or labelled pairs (supervised)")
    if texts is not None and pairs is not None:
        raise QingbertError("give either texts (unsupervised SimCSE) or labelled pairs (supervised), not both")
    pooling = canonical_pooling(cfg.pooling)
    if pooling not in ST_POOLING:
        raise QingbertError(f"SimCSE pooling '{cfg.pooling}' is not supported", hint="mean, cls, max or mean-max")
    if cfg.sup_loss not in ("cosent", "in-batch", "both"):
        raise QingbertError(f"unknown supervised loss '{cfg.sup_loss}'", hint="cosent, in-batch or both")
    if not cfg.temperature > 0:
        raise QingbertError(f"temperature must be positive, got {cfg.temperature}")
    model_dir, out = Path(model_dir), Path(out_dir)
    describe(model_dir)  # a clear error when it is not a model folder
    tokenizer = load_tokenizer(str(model_dir))
    seed_everything(cfg.train.seed)
    hf_config = transformers.AutoConfig.from_pretrained(str(model_dir))
    positions = int(getattr(hf_config, "max_position_embeddings", 512) or 512)
    if not 4 <= cfg.max_len <= positions:
        raise QingbertError(f"max_len {cfg.max_len}: the model takes 4 ... {positions} tokens")
    keep_len = int(cfg.max_seq_length or min(positions, 512))
    if not 4 <= keep_len <= positions:
        raise QingbertError(f"max_seq_length {keep_len}: the model takes 4 ... {positions} tokens")
    kw = {}
    dropout = cfg.dropout
    if dropout is None and not (getattr(hf_config, "hidden_dropout_prob", 0.1) or
                                getattr(hf_config, "attention_probs_dropout_prob", 0.1)):
        dropout = 0.1  # SimCSE's augmentation is dropout
    if dropout is not None:
        kw = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    encoder = quiet_load("AutoModel", model_dir, **kw)
    data_report: dict = {}
    if texts is not None:
        if isinstance(texts, (str, Path)):
            texts, data_report = read_corpus(texts)
        else:
            texts = list(texts)
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise QingbertError(f"text {i}: expected a string, got {type(t).__name__}")
            data_report = {"sentences": len(texts)}
        unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
        data_report["duplicates_removed"] = len([t for t in texts if t.strip()]) - len(unique)
        cols, data_report["truncated"] = _tokenize_texts(tokenizer, unique, cfg.max_len)
        train = Dataset.from_dict(cols)
        objective = UnsupervisedSimCSE(encoder, pooling, cfg.temperature)
        collate = _TextCollator(tokenizer.pad_token_id)
        what = "unsupervised SimCSE (InfoNCE, in-batch negatives, dropout views)"
        kind = "unsup-simcse"
    else:
        pairs = check_pairs(pairs)
        a, ta = _tokenize_texts(tokenizer, [p[0] for p in pairs], cfg.max_len)
        b, tb = _tokenize_texts(tokenizer, [p[1] for p in pairs], cfg.max_len)
        train = Dataset.from_dict({**a, "b_input_ids": b["input_ids"], "b_token_type_ids": b["token_type_ids"],
                                   "label": [p[2] for p in pairs]})
        data_report.update(pairs=len(pairs), truncated=ta + tb)
        objective = SupervisedSimCSE(encoder, pooling, cfg.sup_loss, cfg.temperature, cfg.scale,
                                                      cfg.positive)
        collate = _PairCollator(tokenizer.pad_token_id)
        what = {"cosent": f"supervised CoSENT (scale {cfg.scale})",
                "in-batch": "supervised SimCSE (in-batch negatives, positive pairs)",
                "both": f"supervised CoSENT (scale {cfg.scale}) + in-batch negatives"}[cfg.sup_loss]
        kind = "sup-" + cfg.sup_loss
    trainer = Trainer(objective, train, collate, out, cfg.train,
                      fingerprint={"stage": "simcse", "model": str(model_dir), "objective": kind})
    history = trainer.run()
    losses = [r["loss"] for r in history if r.get("split") == "train"]
    result = {"out": str(out), "objective": kind, "steps": trainer.state["step"], "losses": losses,
              "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
              "data": data_report}
    if trainer.acc.is_main_process:
        trained = trainer.unwrapped_objective().trained_model()
        trained.eval()
        if dropout is not None and cfg.dropout is None:  # the folder keeps the model's own (zero) dropout
            trained.config.hidden_dropout_prob = getattr(hf_config, "hidden_dropout_prob", 0.0)
            trained.config.attention_probs_dropout_prob = getattr(hf_config, "attention_probs_dropout_prob", 0.0)
        record = {"stage": "simcse", "base_model": str(model_dir), "objective": kind, "description": what,
                  "temperature": cfg.temperature, "steps": trainer.state["step"], "final_loss": result["final_loss"],
                  "first_loss": result["first_loss"], "data": data_report,
                  "config": {**asdict(cfg), "train": asdict(cfg.train)}, "processes": trainer.world}
        saved = save_sentence_transformers(out, trained, tokenizer, pooling=pooling, max_len=keep_len,
                                           pooler_trained=has_trained_pooler(model_dir), record=record)
        result.update(saved)
    trainer.acc.wait_for_everyone()
    return result


__all__ = ["train_simcse", "SimCSEConfig", "UnsupervisedSimCSE", "SupervisedSimCSE", "info_nce", "cosent_loss"]
