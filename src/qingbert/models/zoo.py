"""A registry of Chinese BERT-family model shapes, and building/loading them.

Every entry of :data:`ZOO` records the architecture of a published Chinese
encoder (layers, hidden size, FFN size, heads, vocabulary), where its weights
live on the Hugging Face hub, and -- where the publisher quotes one -- the
parameter count they published.  :func:`count_parameters` derives the count
from the architecture in closed form (no torch needed) so the published
figures can be checked, and :func:`build_config` / :func:`build_model` turn a
shape into a randomly initialised ``transformers`` model with any vocabulary.

Counting convention
-------------------
Counts are for the bare encoder as ``transformers.AutoModel`` builds it:
``BertModel`` *with* its pooler, ``ElectraModel`` (the discriminator body,
including ``embeddings_project`` when ``embedding_size != hidden``, no
discriminator head) and ``XLNetModel``.  "Non-embedding" is the total minus
the embeddings module, i.e. the word, position and token-type embeddings and
their LayerNorm (for XLNet: ``word_embedding`` and ``mask_emb``).  The pooler
and ELECTRA's ``embeddings_project`` count as non-embedding; with this
convention HFL's MiniRBT figures agree to within 1 %.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qingbert.errors import QingbertError, closest

__all__ = [
    "ModelSpec",
    "ZOO",
    "get_spec",
    "count_parameters",
    "zoo_records",
    "zoo_table",
    "build_config",
    "build_model",
]

HFL_VOCAB = 21128  # the Chinese BERT WordPiece vocabulary (Google's, reused by HFL)
CLUE_VOCAB = 8021  # CLUE's reduced vocabulary for its RoBERTa models
XLNET_ZH_VOCAB = 32000  # HFL's Chinese XLNet SentencePiece vocabulary

MODEL_TYPES = ("bert", "electra", "xlnet")
HEADS = ("mlm", "base")


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one published Chinese encoder, plus where to find it."""

    name: str
    display: str
    publisher: str
    model_type: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    vocab_size: int
    max_position: int = 512
    type_vocab_size: int = 2
    embedding_size: int | None = None
    hub_id: str | None = None
    aliases: tuple = ()
    published_total: float | None = None
    published_non_embedding: float | None = None
    published_source: str = ""
    note: str = ""

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"{self.name}: unknown model_type {self.model_type!r}")
        if self.hidden % self.heads:
            raise ValueError(f"{self.name}: hidden {self.hidden} is not divisible by {self.heads} heads")

    @property
    def emb_dim(self) -> int:
        """Width of the embedding tables (ELECTRA-small factorises them)."""
        return self.embedding_size or self.hidden


_MINIRBT = "MiniRBT README (HFL)"
_CBW = "Chinese-BERT-wwm README (HFL)"
_110M_NOTE = (
    "the quoted 110M is the English BERT-base figure (30,522-token vocab); with the "
    "21,128-token Chinese vocab this architecture has 102.3M, so the figure cannot be reconciled"
)

_SPECS = [
    # --- HFL whole-word-masking BERT / RoBERTa ------------------------------
    ModelSpec(
        "bert-wwm", "BERT-wwm", "HFL", "bert", 12, 768, 3072, 12, HFL_VOCAB,
        hub_id="hfl/chinese-bert-wwm",
        aliases=("chinese-bert-wwm", "bert-wwm-chinese"),
        published_total=110.0, published_source=_CBW,
        note="BERT-base with whole-word masking on Chinese Wikipedia; " + _110M_NOTE,
    ),
    ModelSpec(
        "bert-wwm-ext", "BERT-wwm-ext", "HFL", "bert", 12, 768, 3072, 12, HFL_VOCAB,
        hub_id="hfl/chinese-bert-wwm-ext",
        aliases=("chinese-bert-wwm-ext",),
        published_total=110.0, published_source=_CBW,
        note="BERT-wwm trained longer on Wikipedia plus extended data (5.4B words); " + _110M_NOTE,
    ),
    ModelSpec(
        "roberta-wwm-ext", "RoBERTa-wwm-ext", "HFL", "bert", 12, 768, 3072, 12, HFL_VOCAB,
        hub_id="hfl/chinese-roberta-wwm-ext",
        aliases=("chinese-roberta-wwm-ext", "rbt12"),
        published_total=102.3, published_non_embedding=85.7, published_source=_MINIRBT,
        note=(
            "the usual Chinese base encoder (BERT architecture, RoBERTa-style training); MiniRBT's "
            "teacher. The Chinese-BERT-wwm README quotes 110M instead, the English BERT-base figure"
        ),
    ),
    ModelSpec(
        "roberta-wwm-ext-large", "RoBERTa-wwm-ext-large", "HFL", "bert", 24, 1024, 4096, 16, HFL_VOCAB,
        hub_id="hfl/chinese-roberta-wwm-ext-large",
        aliases=("chinese-roberta-wwm-ext-large", "rbtl24"),
        published_total=330.0, published_source=_CBW,
        note=(
            "large variant; the quoted 330M does not match exactly: the 21,128-vocab architecture "
            "has 325.5M (MacBERT-large, the same shape, is quoted at 324M)"
        ),
    ),
    ModelSpec(
        "rbt3", "RBT3", "HFL", "bert", 3, 768, 3072, 12, HFL_VOCAB,
        hub_id="hfl/rbt3",
        aliases=("chinese-rbt3",),
        published_total=38.5, published_non_embedding=21.9, published_source=_MINIRBT,
        note="first 3 layers of RoBERTa-wwm-ext, further pre-trained; a cheap baseline",
    ),
    ModelSpec(
        "rbtl3", "RBTL3", "HFL", "bert", 3, 1024, 4096, 16, HFL_VOCAB,
        hub_id="hfl/rbtl3",
        aliases=("chinese-rbtl3",),
        published_total=61.0, published_source=_CBW,
        note="3 layers of RoBERTa-wwm-ext-large, further pre-trained",
    ),
    ModelSpec(
        "rbt4-h312", "RBT4-H312", "HFL", "bert", 4, 312, 1200, 12, HFL_VOCAB,
        hub_id="hfl/rbt4-h312",
        aliases=("chinese-rbt4-h312",),
        published_total=11.4, published_non_embedding=4.7, published_source=_MINIRBT,
        note="TinyBERT-shaped (FFN 1200) distilled baseline from the MiniRBT release",
    ),
    ModelSpec(
        "rbt6", "RBT6", "HFL", "bert", 6, 768, 3072, 12, HFL_VOCAB,
        hub_id=None,
        aliases=("rbt6-kd", "minirbt-assistant"),
        published_total=59.76, published_non_embedding=43.14, published_source=_MINIRBT,
        note=(
            "6-layer teacher assistant used to distil MiniRBT; no public weights on the hub, "
            "build it from scratch with build_model"
        ),
    ),
    ModelSpec(
        "minirbt-h256", "MiniRBT-H256", "HFL", "bert", 6, 256, 1024, 8, HFL_VOCAB,
        hub_id="hfl/minirbt-h256",
        aliases=("chinese-minirbt-h256",),
        published_total=10.4, published_non_embedding=4.8, published_source=_MINIRBT,
        note="narrow-and-deep small model distilled from RoBERTa-wwm-ext via RBT6",
    ),
    ModelSpec(
        "minirbt-h288", "MiniRBT-H288", "HFL", "bert", 6, 288, 1152, 8, HFL_VOCAB,
        hub_id="hfl/minirbt-h288",
        aliases=("chinese-minirbt-h288",),
        published_total=12.3, published_non_embedding=6.1, published_source=_MINIRBT,
        note="wider MiniRBT; distilled from RoBERTa-wwm-ext via RBT6",
    ),
    # --- Google -------------------------------------------------------------
    ModelSpec(
        "bert-base-chinese", "BERT-base-Chinese", "Google", "bert", 12, 768, 3072, 12, HFL_VOCAB,
        hub_id="google-bert/bert-base-chinese",
        aliases=("chinese-bert-base", "bert-chinese"),
        published_total=110.0, published_source="google-research/bert README",
        note="Google's original character-level Chinese BERT; " + _110M_NOTE,
    ),
    # --- HFL MacBERT / ELECTRA / XLNet --------------------------------------
    ModelSpec(
        "macbert-base", "MacBERT-base", "HFL", "bert", 12, 768, 3072, 12, HFL_VOCAB,
        hub_id="hfl/chinese-macbert-base",
        aliases=("chinese-macbert-base",),
        published_total=102.0, published_source="MacBERT README (HFL)",
        note="MLM-as-correction pre-training (similar-word masking); same architecture as BERT-base",
    ),
    ModelSpec(
        "macbert-large", "MacBERT-large", "HFL", "bert", 24, 1024, 4096, 16, HFL_VOCAB,
        hub_id="hfl/chinese-macbert-large",
        aliases=("chinese-macbert-large",),
        published_total=324.0, published_source="MacBERT README (HFL)",
        note="large MacBERT",
    ),
    ModelSpec(
        "electra-small", "ELECTRA-180G-small", "HFL", "electra", 12, 256, 1024, 4, HFL_VOCAB,
        embedding_size=128,
        hub_id="hfl/chinese-electra-180g-small-discriminator",
        aliases=("chinese-electra-small", "electra-180g-small", "chinese-electra-180g-small",
                 "chinese-electra-180g-small-discriminator"),
        published_total=12.0, published_source="Chinese-ELECTRA README (HFL)",
        note=(
            "discriminator with factorised 128-wide embeddings; a strong small model for "
            "fine-tuning (the quoted 12M is rounded from 12.3M)"
        ),
    ),
    ModelSpec(
        "electra-base", "ELECTRA-180G-base", "HFL", "electra", 12, 768, 3072, 12, HFL_VOCAB,
        hub_id="hfl/chinese-electra-180g-base-discriminator",
        aliases=("chinese-electra-base", "electra-180g-base", "chinese-electra-180g-base",
                 "chinese-electra-180g-base-discriminator"),
        published_total=102.0, published_source="Chinese-ELECTRA README (HFL)",
        note="base discriminator (no pooler, so slightly smaller than BERT-base)",
    ),
    ModelSpec(
        "xlnet-base", "XLNet-base (Chinese)", "HFL", "xlnet", 12, 768, 3072, 12, XLNET_ZH_VOCAB,
        hub_id="hfl/chinese-xlnet-base",
        aliases=("chinese-xlnet-base",),
        published_total=117.0, published_source="Chinese-XLNet README (HFL)",
        note="permutation-LM XLNet with a 32k SentencePiece vocab; relative positions, so max_position is unused",
    ),
    # --- CLUE RoBERTa (8021-token vocab) -------------------------------------
    ModelSpec(
        "roberta-tiny-clue", "RoBERTa-tiny-clue", "CLUE", "bert", 4, 312, 1248, 12, CLUE_VOCAB,
        hub_id="clue/roberta_chinese_clue_tiny",
        aliases=("roberta_chinese_clue_tiny", "roberta-chinese-clue-tiny"),
        note="CLUE's tiny RoBERTa for single-sentence tasks; no published figure recorded here",
    ),
    ModelSpec(
        "roberta-tiny-pair", "RoBERTa-tiny-pair", "CLUE", "bert", 4, 312, 1248, 12, CLUE_VOCAB,
        hub_id="clue/roberta_chinese_pair_tiny",
        aliases=("roberta_chinese_pair_tiny", "roberta-chinese-pair-tiny"),
        note="tiny RoBERTa trained for sentence-pair tasks (e.g. similarity); no published figure recorded here",
    ),
    ModelSpec(
        "roberta-3l768-clue", "RoBERTa-tiny3L768-clue", "CLUE", "bert", 3, 768, 3072, 12, CLUE_VOCAB,
        hub_id="clue/roberta_chinese_3L768_clue_tiny",
        aliases=("roberta_chinese_3l768_clue_tiny", "roberta-tiny3l768-clue"),
        note="3-layer base-width RoBERTa; no published figure recorded here",
    ),
    ModelSpec(
        "roberta-3l312-clue", "RoBERTa-tiny3L312-clue", "CLUE", "bert", 3, 312, 1248, 12, CLUE_VOCAB,
        hub_id="clue/roberta_chinese_3L312_clue_tiny",
        aliases=("roberta_chinese_3l312_clue_tiny", "roberta-tiny3l312-clue"),
        note="the smallest CLUE RoBERTa; no published figure recorded here",
    ),
    ModelSpec(
        "roberta-large-clue", "RoBERTa-large-clue", "CLUE", "bert", 24, 1024, 4096, 16, CLUE_VOCAB,
        hub_id="clue/roberta_chinese_clue_large",
        aliases=("roberta_chinese_clue_large", "roberta-chinese-clue-large"),
        note="CLUE's large RoBERTa; no published figure recorded here",
    ),
    ModelSpec(
        "roberta-large-pair", "RoBERTa-large-pair", "CLUE", "bert", 24, 1024, 4096, 16, CLUE_VOCAB,
        hub_id="clue/roberta_chinese_pair_large",
        aliases=("roberta_chinese_pair_large", "roberta-chinese-pair-large"),
        note="large RoBERTa trained for sentence-pair tasks; no published figure recorded here",
    ),
]

ZOO: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _build_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in ZOO.values():
        keys = {spec.name, spec.display, *spec.aliases}
        if spec.hub_id:
            keys.add(spec.hub_id)
            keys.add(spec.hub_id.split("/", 1)[1])
        for key in keys:
            k = _norm(key)
            if index.get(k, spec.name) != spec.name:
                raise ValueError(f"zoo alias {key!r} is claimed by {index[k]!r} and {spec.name!r}")
            index[k] = spec.name
    return index


_INDEX = _build_index()


def lookup(name: str) -> ModelSpec | None:
    key = _INDEX.get(_norm(name))
    return ZOO[key] if key else None


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The zoo entry for ``name`` (case-insensitive; display names, aliases and hub ids work)."""
    if isinstance(name, ModelSpec):
        return name
    spec = lookup(str(name))
    if spec is not None:
        return spec
    guess = closest(_norm(str(name)), list(_INDEX))
    hint = "see `qingbert zoo`"
    if guess is not None:
        hint = f"did you mean '{_INDEX[guess]}'? {hint}"
    raise QingbertError(f"unknown model '{name}'", hint=hint)


# --------------------------------------------------------------------------
# Parameter counting (closed form)
# --------------------------------------------------------------------------

def _bert_layer(h: int, f: int) -> int:
    # Q, K, V and attention-output projections (weights + biases), the FFN's two
    # projections, and two LayerNorms.
    return 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * (2 * h)


def _xlnet_layer(h: int, f: int) -> int:
    # q, k, v, o, r projections (no bias), r_r/r_s/r_w biases, segment embedding
    # (2 x h), the attention LayerNorm, FFN LayerNorm and two FFN projections.
    return 5 * h * h + 3 * h + 2 * h + 2 * h + 2 * h + (h * f + f) + (f * h + h)


def count_parameters(spec: ModelSpec | str, vocab_size: int | None = None) -> tuple[int, int]:
    """``(total, non_embedding)`` parameters of the bare encoder, computed analytically.

    ``vocab_size`` replaces the entry's vocabulary (only the word embeddings change).
    """
    spec = get_spec(spec)
    v = spec.vocab_size if vocab_size is None else int(vocab_size)
    h, f, n = spec.hidden, spec.ffn, spec.layers
    if spec.model_type == "xlnet":
        embeddings = v * h + h  # word_embedding + mask_emb
        body = n * _xlnet_layer(h, f)
        return embeddings + body, body
    e = spec.emb_dim
    embeddings = (v + spec.max_position + spec.type_vocab_size) * e + 2 * e
    body = n * _bert_layer(h, f)
    if spec.model_type == "bert":
        body += h * h + h  # pooler
    elif e != h:  # electra: projection from the factorised embedding width
        body += e * h + h
    return embeddings + body, body


def _diff_pct(computed: int, published_m: float | None) -> float | None:
    if published_m is None:
        return None
    return round((computed / 1e6 - published_m) / published_m * 100, 2)


def zoo_records() -> list[dict]:
    """One JSON-able dict per zoo entry: the spec fields, computed counts and Δ% vs published."""
    records = []
    for spec in ZOO.values():
        total, non_emb = count_parameters(spec)
        rec = dataclasses.asdict(spec)
        rec["aliases"] = list(spec.aliases)
        rec["total_params"] = total
        rec["non_embedding_params"] = non_emb
        rec["total_diff_pct"] = _diff_pct(total, spec.published_total)
        rec["non_embedding_diff_pct"] = _diff_pct(non_emb, spec.published_non_embedding)
        records.append(rec)
    return records


def _fmt_pair(a, b, fmt: str) -> str:
    if a is None and b is None:
        return "—"
    left = "—" if a is None else format(a, fmt)
    return left if b is None else f"{left} / {format(b, fmt)}"


def zoo_table() -> str:
    """The zoo as a Markdown table (published figures are ``total / non-embedding``, millions)."""
    cols = ["name", "publisher", "type", "L", "H", "FFN", "heads", "vocab", "total M", "non-emb M",
            "published", "Δ%", "hub id", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in zoo_records():
        h = r["hidden"] if not r["embedding_size"] else f"{r['hidden']} (E{r['embedding_size']})"
        row = [
            r["name"], r["publisher"], r["model_type"], r["layers"], h, r["ffn"], r["heads"],
            r["vocab_size"], f"{r['total_params'] / 1e6:.2f}", f"{r['non_embedding_params'] / 1e6:.2f}",
            _fmt_pair(r["published_total"], r["published_non_embedding"], "g"),
            _fmt_pair(r["total_diff_pct"], r["non_embedding_diff_pct"], "+.2f"),
            r["hub_id"] or "—", r["note"].replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------

def build_config(name_or_spec: str | ModelSpec, vocab_size: int | None = None, **overrides):
    """A ``transformers`` config (Bert/Electra/XLNet) for the shape; ``overrides`` are config kwargs."""
    spec = get_spec(name_or_spec)
    v = spec.vocab_size if vocab_size is None else int(vocab_size)
    if v < 1:
        raise QingbertError(f"vocab_size must be positive, got {v}")
    if spec.model_type == "xlnet":
        from transformers import XLNetConfig

        kw = dict(vocab_size=v, d_model=spec.hidden, n_layer=spec.layers, n_head=spec.heads,
                  d_inner=spec.ffn)
        kw.update(overrides)
        return XLNetConfig(**kw)
    kw = dict(vocab_size=v, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
              num_attention_heads=spec.heads, intermediate_size=spec.ffn,
              max_position_embeddings=spec.max_position, type_vocab_size=spec.type_vocab_size)
    if spec.model_type == "electra":
        from transformers import ElectraConfig

        kw["embedding_size"] = spec.emb_dim
        kw.update(overrides)
        return ElectraConfig(**kw)
    from transformers import BertConfig

    kw.update(overrides)
    return BertConfig(**kw)


def check_head(head: str) -> None:
    if head not in HEADS:
        raise QingbertError(f"unknown head '{head}'", hint="use 'mlm' or 'base'")


def model_class(config, head: str):
    check_head(head)
    if head == "base":
        from transformers import AutoModel

        return AutoModel
    if getattr(config, "model_type", None) == "xlnet":
        from transformers import XLNetLMHeadModel

        return XLNetLMHeadModel
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM


def build_model(name_or_spec: str | ModelSpec, vocab_size: int | None = None, head: str = "mlm",
                **overrides):
    """A randomly initialised model of the shape: ``head`` 'mlm' (masked-LM head) or 'base'."""
    config = build_config(name_or_spec, vocab_size, **overrides)
    cls = model_class(config, head)
    if cls.__name__.startswith("Auto"):
        return cls.from_config(config)
    return cls(config)


def did_you_mean(name: str) -> str | None:
    """The hub id of the zoo model whose name is closest to ``name``, if one is close."""
    guess = closest(_norm(name), list(_INDEX))
    return None if guess is None else _INDEX[guess]
