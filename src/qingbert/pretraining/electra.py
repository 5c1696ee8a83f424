"""ELECTRA pretraining: a small generator MLM and a discriminator trained on replaced-token detection.

The recipe is Google's ELECTRA as HFL used it for Chinese-ELECTRA:

* **masking** reuses :class:`qingbert.pretraining.mlm.WWMCollator` (whole words, ``cfg.masking.mlm_probability``,
  n-grams and ``document_mask`` as configured), but a chosen word gets ``[MASK]`` with probability ``mask_ratio``
  (ELECTRA's 0.85) and keeps its tokens otherwise -- never random tokens: ELECTRA's own corruption comes from
  the generator, so BERT's 80/10/10 split of ``cfg.masking`` is replaced;
* the **generator** (``ElectraForMaskedLM``, about a quarter of the discriminator's width) learns MLM at the
  masked positions; its vocabulary head runs only there (as :func:`qingbert.pretraining.mlm.masked_lm_loss` does);
* at every masked position a token is **sampled** from the generator's softmax (temperature 1, no gradient
  through the sampling) and written into the discriminator's input;
* the **discriminator** (``ElectraForPreTraining``) labels every real token: 1 where the sampled token differs
  from the original, 0 elsewhere -- a sampled token that *equals* the original counts as original, as in the
  paper.  Special tokens are real tokens here (always label 0, as Google's code weights every non-padding
  position); padding is ignored;
* **loss** = generator MLM loss + ``disc_weight`` (50) x discriminator BCE (mean over real tokens);
* the two models **share the embeddings module** (word, position and token-type tables and their LayerNorm --
  one module object, so one set of tensors), and the generator's decoder is tied to the word embeddings.
  Each model keeps its own ``embeddings_project`` (``embedding_size -> hidden``).

Default generator shape, as Google's ``get_generator_config``: hidden = discriminator hidden // 4, the
discriminator's layer count, heads = max(1, hidden // 64), FFN = 4 x hidden (electra-small 256 -> 64/1/256,
electra-base 768 -> 192/3/768: HFL's published Chinese generators).

The trained model is the discriminator: a plain ``transformers`` ``ElectraForPreTraining`` folder that
``ElectraModel`` and every ``AutoModelFor*`` task class load; the generator goes to ``out/generator`` (an
``ElectraForMaskedLM`` folder with the tokenizer, e.g. for ``qingbert fill-mask``), and a later run that starts
from ``out`` picks it up again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qingbert.errors import QingbertError
from qingbert.models import loading, zoo
from qingbert.models.inits import apply_init
from qingbert.models.tokenizer import save_tokenizer
from qingbert.pretraining.mlm import (
    EVAL_MLM_PROBABILITY,
    IGNORE,
    WWMCollator,
    attention_of,
    set_dropout,
    tokenizer_info,
)
from qingbert.training.loop import seed_everything

GENERATOR = "generator"  # the generator's subfolder of a saved discriminator
GOOGLE_MASK_RATIO = 0.85  # ELECTRA's pretrain_helpers.mask: [MASK] at 85 % of chosen positions, the rest kept


@dataclass
class ElectraConfig:
    """ELECTRA-specific options (``options`` of :func:`make_objective`); ``None`` means the default shape."""

    generator_hidden: int | None = None  # default: discriminator hidden // 4
    generator_layers: int | None = None  # default: the discriminator's
    generator_heads: int | None = None  # default: max(1, generator hidden // 64)
    generator_ffn: int | None = None  # default: 4 x generator hidden
    disc_weight: float = 50.0  # lambda of the paper (Chinese-ELECTRA uses 50)
    mask_ratio: float = GOOGLE_MASK_RATIO  # of the chosen words: [MASK]; the rest keep their tokens
    generator: str | None = None  # a pretrained generator (folder or hub id) to start from

    @classmethod
    def from_dict(cls, d: dict | None) -> "ElectraConfig":
        """Options dict -> config; unknown keys and bad values are a QingbertError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d or {}) - known)
        if unknown:
            raise QingbertError(f"unknown ELECTRA option{'s' if len(unknown) > 1 else ''} "
                                + ", ".join(repr(k) for k in unknown), hint="known: " + ", ".join(sorted(known)))
        cfg = cls(**(d or {}))
        cfg.check()
        return cfg

    def check(self) -> None:
        for k in ("generator_hidden", "generator_layers", "generator_heads", "generator_ffn"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise QingbertError(f"ELECTRA option {k} must be a positive integer, got {v!r}")
        try:
            w = float(self.disc_weight)
        except (TypeError, ValueError):
            w = float("nan")
        if not math.isfinite(w) or w < 0:
            raise QingbertError(f"ELECTRA option disc_weight must be a finite number >= 0, got {self.disc_weight!r}")
        self.disc_weight = w
        if not 0 <= float(self.mask_ratio) <= 1:
            raise QingbertError(f"ELECTRA option mask_ratio must be in [0, 1], got {self.mask_ratio!r}")


def _default_heads(hidden: int) -> int:
    """Google's max(1, hidden // 64), lowered to the nearest divisor of ``hidden`` so the shape is valid."""
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return heads


def generator_config(disc_config, ecfg: ElectraConfig):
    """The generator's ``transformers.ElectraConfig``: the discriminator's, narrowed as ``ecfg`` says.

    Checked here, before anything is built or trained: the generator may not be wider than the discriminator
    (ELECTRA's generator is the weaker model on purpose -- a generator as strong as the discriminator makes
    the detection task too hard and the paper found it trains worse), and its heads must divide its width."""
    from transformers import ElectraConfig as HFElectraConfig

    hidden = ecfg.generator_hidden or max(1, disc_config.hidden_size // 4)
    if hidden > disc_config.hidden_size:
        raise QingbertError(f"the generator (hidden {hidden}) is wider than its discriminator "
                            f"(hidden {disc_config.hidden_size})",
                            hint=f"ELECTRA's generator is about 1/4 as wide: e.g. generator_hidden "
                                 f"{max(1, disc_config.hidden_size // 4)}")
    heads = ecfg.generator_heads or _default_heads(hidden)
    if hidden % heads:
        raise QingbertError(f"generator hidden {hidden} is not divisible by generator_heads {heads}",
                            hint=f"e.g. generator_heads {_default_heads(hidden)}")
    d = disc_config.to_dict()
    for k in ("architectures", "_name_or_path", "transformers_version", "model_type", "dtype", "torch_dtype"):
        d.pop(k, None)
    d.update(hidden_size=hidden, num_attention_heads=heads,
             num_hidden_layers=ecfg.generator_layers or disc_config.num_hidden_layers,
             intermediate_size=ecfg.generator_ffn or 4 * hidden, tie_word_embeddings=True)
    config = HFElectraConfig(**d)
    config.architectures = ["ElectraForMaskedLM"]
    return config


def share_embeddings(discriminator, generator) -> None:
    """Give the generator the discriminator's embeddings module and tie its decoder to the word embeddings.

    ELECTRA shares the whole embeddings block (tables + LayerNorm) between the two models: the generator's
    MLM gradient trains the embeddings the discriminator reads, which the paper found to help."""
    d_emb = discriminator.electra.embeddings
    g_emb = generator.electra.embeddings
    if (d_emb.word_embeddings.weight.shape != g_emb.word_embeddings.weight.shape
            or d_emb.position_embeddings.weight.shape != g_emb.position_embeddings.weight.shape
            or d_emb.token_type_embeddings.weight.shape != g_emb.token_type_embeddings.weight.shape):
        raise QingbertError("the generator's embeddings do not have the discriminator's shape "
                            f"(word {tuple(g_emb.word_embeddings.weight.shape)} vs "
                            f"{tuple(d_emb.word_embeddings.weight.shape)}); they cannot be shared",
                            hint="the generator needs the discriminator's vocabulary and embedding_size")
    generator.electra.embeddings = d_emb
    generator.generator_lm_head.weight = d_emb.word_embeddings.weight


def replace_tokens(input_ids: torch.Tensor, labels: torch.Tensor, sampled: torch.Tensor):
    """``(discriminator input, replaced mask)``: ``sampled`` (one token per masked position, in row-major order)
    written over the masked positions (``labels != IGNORE``, which hold the original tokens).

    A position is *replaced* only where the sampled token differs from the original: a generator that samples
    the right token has produced an original token, and the discriminator must call it one."""
    sel = labels != IGNORE
    fake = input_ids.clone()
    fake[sel] = sampled
    replaced = torch.zeros_like(sel)
    replaced[sel] = sampled != labels[sel]
    return fake, replaced


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


class ElectraObjective(torch.nn.Module):
    """Replaced-token detection with a generator: ``forward(batch) -> (loss, metrics)`` on WWM batches.

    The training log's accuracy is the generator's masked accuracy (comparable with a ``wwm`` run); the
    discriminator's figures are in the metrics and in :meth:`summarize`."""

    name = "electra"
    accuracy_name = "masked_accuracy"
    extra_accuracies = {"disc_accuracy": ("disc_correct", "disc_tokens")}  # replaced-token detection

    def __init__(self, discriminator, generator, disc_weight: float = 50.0, tokenizer=None, seed: int = 0):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.disc_weight = float(disc_weight)
        self.tokenizer = tokenizer  # saved next to the generator
        self.seed = int(seed)
        share_embeddings(discriminator, generator)

    # -- the generator's side -------------------------------------------------
    def generator_logits(self, batch: dict, sel: torch.Tensor) -> torch.Tensor:
        """Generator vocabulary logits at the masked positions ``sel`` only (fp32)."""
        g = self.generator
        hidden = g.electra(input_ids=batch["input_ids"], attention_mask=attention_of(batch)).last_hidden_state
        return g.generator_lm_head(g.generator_predictions(hidden[sel])).float()

    @staticmethod
    def sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One token per row from ``softmax(logits)`` (temperature 1).  Training draws from torch's global RNG,
        which the trainer checkpoints, so a resumed run samples the same; evaluation passes its own."""
        probs = torch.softmax(logits.detach().float(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def _eval_rng(self, batch: dict, device) -> torch.Generator:
        # the same samples at every evaluation of the same batch, and the training RNG stream is left alone
        ids = batch["input_ids"]
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + int(ids.sum()) * 31 + ids.numel()) % (2**63))
        return g

    # -- both -------------------------------------------------------------------
    def _step(self, batch: dict, evaluation: bool = False) -> tuple[torch.Tensor, dict]:
        labels = batch["labels"]
        sel = labels != IGNORE
        target = labels[sel]
        logits = self.generator_logits(batch, sel)
        if target.numel():
            gen_loss = F.cross_entropy(logits, target)
        else:  # nothing masked (only empty sequences): no generator signal
            gen_loss = logits.sum() * 0.0
        with torch.no_grad():
            sampled = self.sample(logits, self._eval_rng(batch, logits.device) if evaluation else None)
            fake, replaced = replace_tokens(batch["input_ids"], labels, sampled)
        d_logits = self.discriminator(input_ids=fake, attention_mask=attention_of(batch)).logits.float()
        real = batch["attention_mask"] > 0  # padding is ignored; [CLS]/[SEP] are real tokens, always label 0
        d_real, y = d_logits[real], replaced[real].float()
        disc_loss = F.binary_cross_entropy_with_logits(d_real, y) if y.numel() else d_real.sum() * 0.0
        loss = gen_loss + self.disc_weight * disc_loss
        with torch.no_grad():
            pred = d_real > 0
            truth = y > 0.5
            metrics = {
                "gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach(),
                "masked_tokens": target.numel(), "correct": (logits.argmax(-1) == target).sum(),
                "disc_tokens": y.numel(), "disc_correct": (pred == truth).sum(),
                "replaced": truth.sum(), "predicted_replaced": pred.sum(), "true_positive": (pred & truth).sum(),
            }
        return loss, metrics

    def forward(self, batch: dict):
        return self._step(batch)

    def evaluate_batch(self, batch: dict) -> dict:
        _, m = self._step(batch, evaluation=True)
        n, nd = m["masked_tokens"], m["disc_tokens"]
        return {"loss_sum": float(m["gen_loss"]) * n, "tokens": n, "correct": int(m["correct"]),
                "disc_loss_sum": float(m["disc_loss"]) * nd, "disc_tokens": nd,
                "disc_correct": int(m["disc_correct"]), "replaced": int(m["replaced"]),
                "predicted_replaced": int(m["predicted_replaced"]), "true_positive": int(m["true_positive"])}

    def summarize(self, totals: dict) -> dict:
        """Generator figures under the MLM names (``masked_accuracy``, ``loss``, ``perplexity``), the
        discriminator's under ``disc_*``; ``electra_loss`` is the training objective."""
        n = max(1, totals.get("tokens", 0))
        nd = max(1, totals.get("disc_tokens", 0))
        loss = totals.get("loss_sum", 0.0) / n
        disc_loss = totals.get("disc_loss_sum", 0.0) / nd
        tp = totals.get("true_positive", 0)
        precision = tp / max(1, totals.get("predicted_replaced", 0))
        recall = tp / max(1, totals.get("replaced", 0))
        return {"masked_accuracy": totals.get("correct", 0) / n, "loss": loss,
                "perplexity": float(np.exp(min(loss, 50.0))), "masked_tokens": totals.get("tokens", 0),
                "disc_loss": disc_loss, "disc_accuracy": totals.get("disc_correct", 0) / nd,
                "disc_precision": precision, "disc_recall": recall,
                "disc_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                "replaced_fraction": totals.get("replaced", 0) / nd,
                "electra_loss": loss + self.disc_weight * disc_loss}

    def trained_model(self):
        return self.discriminator

    def save_extra(self, out: Path) -> Path:
        """Save the generator as a plain ``ElectraForMaskedLM`` folder ``out/generator`` (with the tokenizer)."""
        folder = Path(out) / GENERATOR
        self.generator.save_pretrained(str(folder), safe_serialization=True)
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, folder)
        return folder


# ---------------------------------------------------------------------------
# building / loading the pair


def _check_shape(config, what: str) -> None:
    if config.hidden_size % config.num_attention_heads:
        raise QingbertError(f"{what} hidden {config.hidden_size} is not divisible by its "
                            f"{config.num_attention_heads} attention heads")


def _electra_spec(model: str):
    """The zoo spec of ``model`` as an ELECTRA shape (a BERT shape becomes the same-sized ELECTRA), or None when
    ``model`` is not a zoo name."""
    if Path(model).exists():
        return None
    try:
        spec = zoo.get_spec(model)
    except QingbertError:
        if "/" not in model:  # not a hub id either: the zoo's did-you-mean is the helpful message
            raise
        return None
    if spec.model_type == "xlnet":
        raise QingbertError(f"'{spec.name}' is an XLNet shape; ELECTRA needs a BERT-layout encoder",
                            hint="use electra-small, electra-base or a BERT shape such as minirbt-h256")
    return spec if spec.model_type == "electra" else dataclasses.replace(spec, model_type="electra")


def _check_vocab(model: str, net, tokenizer) -> None:
    """The data's vocabulary must be the model's (as :func:`qingbert.pretraining.pretrain.load_mlm` checks)."""
    vocab = tokenizer.get_vocab()
    if net.get_input_embeddings().num_embeddings < len(vocab):
        raise QingbertError(f"model {model} has {net.get_input_embeddings().num_embeddings} token embeddings but "
                            f"the data's tokenizer has {len(vocab)} tokens",
                            hint=f"prepare the data with --tokenizer {model}")
    local = Path(model)
    if local.is_dir() and not any((local / f).exists() for f in ("tokenizer.json", "vocab.txt")):
        return  # (transformers 5 makes an empty 5-token tokenizer from a folder without one)
    try:
        model_tok = loading.load_tokenizer(model)
    except QingbertError:
        return
    if model_tok.get_vocab() != vocab:
        raise QingbertError(f"the data was tokenized with a different vocabulary than {model}'s",
                            hint=f"re-run `qingbert prepare ... --tokenizer {model}`")


def _same_shape(ecfg: ElectraConfig, config, source: str) -> None:
    """Shape options given together with a pretrained generator must agree with it."""
    have = {"generator_hidden": config.hidden_size, "generator_layers": config.num_hidden_layers,
            "generator_heads": config.num_attention_heads, "generator_ffn": config.intermediate_size}
    clash = [f"{k} {getattr(ecfg, k)} (it has {v})" for k, v in have.items()
             if getattr(ecfg, k) is not None and getattr(ecfg, k) != v]
    if clash:
        raise QingbertError(f"the generator in {source} does not match " + ", ".join(clash),
                            hint="drop the generator_* options to continue with that generator")


def load_electra(model: str, tokenizer, ecfg: ElectraConfig, overrides: dict | None = None,
                 init: str = "default") -> tuple[object, object, dict]:
    """``(discriminator, generator, how they were made)`` for a zoo shape (from scratch), a local ELECTRA folder
    (its ``generator/`` subfolder too, when there is one) or a hub id.

    Both are checked before they are built; the embeddings are *not* shared yet (:class:`ElectraObjective` does
    that).  ``init`` (:mod:`qingbert.models.inits`) applies to a discriminator built from scratch; the generator has
    no initialisation of its own: its embeddings are the discriminator's, the rest transformers' random init."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    spec = _electra_spec(model)
    info: dict = {}
    if spec is not None:
        config = zoo.build_config(spec, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  **(overrides or {}))
        _check_shape(config, "the discriminator's")
        gen_config = generator_config(config, ecfg) if ecfg.generator is None else None  # fail before building
        config.architectures = ["ElectraForPreTraining"]
        disc = ElectraForPreTraining(config)
        try:
            initialisation = apply_init(disc, init)
        except QingbertError as e:
            if init != "local-attention":
                raise
            # the default init of `qingbert pretrain` needs embeddings as wide as the hidden size, which
            # ELECTRA-small's factorised 128-wide embeddings are not: fall back rather than refuse the default
            initialisation = {"init": "default", "requested": init, "skipped": e.message}
            print(f"qingbert: {init} init skipped for this ELECTRA shape ({e.message}); using transformers' "
                  "default init", flush=True)
        info.update({"init": "random (from scratch)", "zoo": spec.name, "initialisation": initialisation})
    else:
        if overrides:
            raise QingbertError(f"model overrides apply to zoo shapes built from scratch, not to {model}")
        config = loading.load_config(model)
        if getattr(config, "model_type", None) != "electra":
            raise QingbertError(f"{model} is a {getattr(config, 'model_type', '?')} model; ELECTRA pretraining "
                                "continues an ELECTRA discriminator",
                                hint="give an ELECTRA folder, or a zoo shape (e.g. electra-small) to start from "
                                     "scratch")
        if "ElectraForMaskedLM" in (config.architectures or []):
            raise QingbertError(f"{model} is an ELECTRA masked LM (a generator, or a wwm-pretrained model), "
                                "not a discriminator (ElectraForPreTraining)",
                                hint="give the discriminator; a generator goes in option `generator` or in the "
                                     "discriminator's generator/ subfolder")
        _check_shape(config, "the discriminator's")
        disc = loading.load_pretrained(ElectraForPreTraining, model)
        _check_vocab(model, disc, tokenizer)
        info.update({"init": f"weights from {model}"})
        gen_config = None
        if ecfg.generator is None and Path(model, GENERATOR, "config.json").is_file():
            ecfg = replace(ecfg, generator=str(Path(model) / GENERATOR))
        if ecfg.generator is None:
            gen_config = generator_config(disc.config, ecfg)
    if ecfg.generator is not None:
        g_conf = loading.load_config(ecfg.generator)
        if getattr(g_conf, "model_type", None) != "electra":
            raise QingbertError(f"generator {ecfg.generator} is not an ELECTRA model")
        _same_shape(ecfg, g_conf, ecfg.generator)
        if g_conf.hidden_size > disc.config.hidden_size:
            raise QingbertError(f"the generator in {ecfg.generator} (hidden {g_conf.hidden_size}) is wider than "
                                f"its discriminator (hidden {disc.config.hidden_size})")
        if g_conf.embedding_size != disc.config.embedding_size or g_conf.vocab_size != disc.config.vocab_size:
            raise QingbertError(f"the generator in {ecfg.generator} cannot share the discriminator's embeddings "
                                f"(embedding_size {g_conf.embedding_size} vs {disc.config.embedding_size}, "
                                f"vocabulary {g_conf.vocab_size} vs {disc.config.vocab_size})")
        gen = loading.load_pretrained(ElectraForMaskedLM, ecfg.generator)
        info["generator_init"] = f"weights from {ecfg.generator}"
    else:
        gen = ElectraForMaskedLM(gen_config)
        info["generator_init"] = "random (from scratch)"
    info["discriminator"] = {"hidden": disc.config.hidden_size, "layers": disc.config.num_hidden_layers,
                             "heads": disc.config.num_attention_heads, "ffn": disc.config.intermediate_size,
                             "embedding_size": disc.config.embedding_size, "parameters": _n_params(disc)}
    info["generator"] = {"hidden": gen.config.hidden_size, "layers": gen.config.num_hidden_layers,
                         "heads": gen.config.num_attention_heads, "ffn": gen.config.intermediate_size,
                         "embedding_size": gen.config.embedding_size,
                         # without the embeddings, which are the discriminator's
                         "own_parameters": _n_params(gen) - _n_params(gen.electra.embeddings)}
    return disc, gen, info


def electra_masking(masking, ecfg: ElectraConfig):
    """``cfg.masking`` with ELECTRA's corruption: [MASK] or keep, never random tokens."""
    return replace(masking, mask_ratio=float(ecfg.mask_ratio), random_ratio=0.0)


def make_objective(model: str, tokenizer, cfg, options: dict | None = None, data_dir=None):
    """``(objective, train collate, eval collate, info)`` for ELECTRA pretraining of ``model`` with ``cfg``
    (a :class:`qingbert.pretraining.pretrain.PretrainConfig`: its masking, seed, overrides, init and train_dropout).

    ``options``: :class:`ElectraConfig` fields.  Everything that can be wrong with them is raised here, before
    any training.  ``info`` is for the manifest; ``info["config_updates"]`` goes to ``train_and_save``.
    ``data_dir`` is accepted for the caller's convenience and recorded only."""
    ecfg = ElectraConfig.from_dict(options)
    seed_everything(cfg.train.seed)  # before the models are built: random init depends on it
    disc, gen, info = load_electra(model, tokenizer, ecfg, cfg.overrides, init=cfg.init)
    objective = ElectraObjective(disc, gen, disc_weight=ecfg.disc_weight, tokenizer=tokenizer, seed=cfg.train.seed)
    config_updates = set_dropout(disc, cfg.train_dropout)  # the saved configs keep the models' own dropout
    set_dropout(gen, cfg.train_dropout)
    masking = electra_masking(cfg.masking, ecfg)
    tinfo = tokenizer_info(tokenizer)
    collate = WWMCollator(tinfo, masking, seed=cfg.train.seed)
    # held-out figures are always at BERT's 15 %, so recipes with other rates compare
    eval_collate = WWMCollator(tinfo, replace(masking, mlm_probability=EVAL_MLM_PROBABILITY), seed=cfg.train.seed)
    info.update({"objective": ElectraObjective.name, "electra": asdict(ecfg), "masking": asdict(masking),
                 "shared_embeddings": True, "config_updates": config_updates,
                 "data": str(data_dir) if data_dir is not None else None})
    return objective, collate, eval_collate, info


__all__ = ["ElectraConfig", "ElectraObjective", "generator_config", "share_embeddings", "replace_tokens",
           "load_electra", "electra_masking", "make_objective", "GENERATOR"]
