"""Vocabulary pruning: drop the tokens a corpus never uses from a model and its tokenizer.

A Chinese BERT carries 21,128 tokens; a product-review model sees a few thousand of them, and the rest of the
word-embedding table (and the tied MLM decoder) is dead weight: 16 M of RBT3's 38.5 M parameters, most of
MiniRBT's.  ``qingbert prune-vocab MODEL --corpus FILE --out DIR`` tokenizes the corpus with the model's own
tokenizer, keeps the tokens it uses (plus every special token and any ``--keep`` tokens), and writes a folder whose
tokenizer has only those tokens and whose model has only their embedding rows (and MLM decoder rows and bias).

What stays the same
-------------------
* Token order: the kept tokens keep their relative order, so ``[PAD]`` = 0 stays 0 and the specials keep
  theirs; new id = rank of the old id among the kept ones (``report["kept_old_ids"][new] == old``).
* Normalisation and pre-tokenisation (lower-casing, Chinese characters split, accents, ``##`` pieces): the
  new tokenizer is the old ``tokenizer.json`` with a smaller WordPiece vocabulary, and its config is copied.
* Outputs on the corpus: with ``min_count`` 1 every corpus text tokenizes to the old ids mapped through the
  old -> new map (checked on a sample of texts before writing), and the pruned model's hidden states,
  classification logits and MLM logits (the old logits at the kept columns) equal the original's; that too is
  checked on corpus texts before anything is written.  The share of corpus tokens that are ``[UNK]`` is the same
  before and after.  WordPiece spells each word on its own, so this holds for any text made of the corpus's
  words (pairs, truncations, concatenations), not only its lines.  Each line counts as read and as cleaned
  (:func:`qingbert.data.corpus.clean_text`, full-width to half-width ...), so both forms keep their tokens.

What changes
------------
A text outside the corpus may use a token that was dropped: the pruned tokenizer reads that word as ``[UNK]``
(WordPiece maps a word it cannot spell to one ``[UNK]``), so prune on text like what the model will see, and
``--keep`` any tokens you know you need.  With ``min_count`` above 1 rare corpus tokens are dropped as well and
the texts that use them change the same way (the report says how many corpus tokens that touches).

A subtle case, handled: a word the original tokenizer reads as ``[UNK]`` (say ``xyz`` with ``xy`` in the vocab
but no ``##z``) would, after ``xy`` was dropped, be spelled by the greedy WordPiece search another way
(``x`` ``##yz``) and stop being ``[UNK]``.  So the pieces the search *tried* for every ``[UNK]`` word are kept too
(``report["kept_for_unk_words"]``), which keeps those words ``[UNK]``.

The output folder is a plain transformers folder (``save_pretrained`` safetensors, the tokenizer with
``vocab.txt``) plus ``manifest.json``; a fine-tuned folder keeps its fine-tuning manifest (task, labels), so
``qingbert predict`` still works on it.  ONNX exports are not copied (they hold the old vocabulary): export the
pruned folder again.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from qingbert.data.corpus import read_sources, read_utf8
from qingbert.data.text import Stats, clean_text
from qingbert.data.vocab import SPECIALS
from qingbert.errors import QingbertError
from qingbert.manifest import (
    FINETUNED_FORMAT,
    MODEL_FORMAT,
    check_out_folder,
    read_manifest,
    replace_folder,
    write_manifest,
)
from qingbert.models import loading
from qingbert.models.loading import quiet_transformers
from qingbert.models.tokenizer import save_tokenizer

FORMAT = MODEL_FORMAT

STAGE = "prune-vocab"
BATCH = 2048  # texts per tokenizer call between two progress-bar updates
VERIFY_TEXTS = 4000  # corpus texts kept to check the pruned tokenizer against the old one
VERIFY_UNK_TEXTS = 2000  # ... plus this many texts with an [UNK] in them (the tricky ones)
PARITY_TEXTS = 16  # corpus texts run through both models before writing
PARITY_MAX_TOKENS = 128
TOLERANCE = 1e-5
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5")
_DROP_FROM_MANIFEST = ("created", "versions", "machine", "command", "export", "elapsed_s")


# ---------------------------------------------------------------------------
# inputs


def read_keep(keep) -> list[str]:
    """The tokens of ``--keep``: a list, a file with one token per line, or a comma-separated list.

    A value that looks like a path (has a slash or ends in ``.txt``) but is no file is an error rather than a list
    of one odd token.  A comma itself can only be kept from a file.
    """
    if keep is None:
        return []
    if isinstance(keep, (str, os.PathLike)):
        s = os.fspath(keep)
        p = Path(s).expanduser()
        if p.is_file():
            items = read_utf8(p, "--keep file").splitlines()
        elif "/" in s or "\\" in s or s.lower().endswith(".txt"):
            raise QingbertError(f"no such --keep file '{s}'",
                                hint="give a file with one token per line, or a comma-separated list of tokens")
        else:
            items = s.split(",")
    else:
        items = list(keep)
    out: list[str] = []
    for t in items:
        if not isinstance(t, str):
            raise QingbertError(f"--keep: not a token: {t!r}")
        t = t.strip()
        if t and t not in out:
            out.append(t)
    return out


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def _model_class(config):
    """The class ``config.architectures`` names (the head the folder was saved with), else ``AutoModel``."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls
    return transformers.AutoModel


def _weight_bytes(folder: Path | None) -> int | None:
    if folder is None:
        return None
    files = {f for pat in WEIGHT_FILES for f in folder.glob(pat) if f.is_file()}
    return sum(f.stat().st_size for f in files) if files else None


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied matrix counts once


# ---------------------------------------------------------------------------
# the tokenizer


def _wordpiece(backend) -> dict:
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "WordPiece":
        raise QingbertError(f"the tokenizer's model is {model.get('type')}, not WordPiece",
                            hint="prune-vocab handles BERT-style WordPiece vocabularies (BERT, RoBERTa-wwm, "
                                 "MacBERT, ELECTRA, MiniRBT)")
    return model


def _specials(tokenizer, config, vocab: dict[str, int]) -> list[int]:
    """Ids that are kept whatever the corpus says: the BERT five, the tokenizer's declared specials and added
    tokens, and every ``*_token_id`` of the model config.  A declared special outside the vocabulary is an error:
    its id would be made up."""
    declared = list(dict.fromkeys(list(tokenizer.all_special_tokens)))
    missing = [t for t in declared if t not in vocab]
    if missing:
        raise QingbertError(f"the tokenizer declares special tokens that are not in its vocabulary: "
                            f"{', '.join(missing)}", hint="fix the tokenizer (tokenizer_config.json / "
                                                          "special_tokens_map.json) before pruning")
    ids = {vocab[t] for t in declared} | {vocab[t] for t in SPECIALS if t in vocab}
    ids |= {vocab[t.content] for t in tokenizer.added_tokens_decoder.values() if t.content in vocab}
    for key, value in config.to_dict().items():
        if key.endswith("_token_id") and isinstance(value, int) and 0 <= value < len(vocab):
            ids.add(value)
    return sorted(ids)


def _tried_pieces(word: str, vocab: dict, prefix: str, max_chars: int) -> list[str]:
    """The pieces the greedy longest-match WordPiece search takes for ``word`` before it fails (or succeeds)."""
    if len(word) > max_chars:
        return []
    pieces, start = [], 0
    while start < len(word):
        end, found = len(word), None
        while start < end:
            sub = word[start:end] if start == 0 else prefix + word[start:end]
            if sub in vocab:
                found = sub
                break
            end -= 1
        if found is None:
            break
        pieces.append(found)
        start = end
    return pieces


def _remap_processor(node, remap):
    """Post-processor JSON with every special-token id remapped (TemplateProcessing, BertProcessing, Sequence)."""
    if isinstance(node, list):
        return [_remap_processor(n, remap) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "ids" and isinstance(v, list) and all(isinstance(i, int) for i in v):
            out[k] = [remap(i) for i in v]
        elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
            out[k] = [v[0], remap(v[1])]
        else:
            out[k] = _remap_processor(v, remap)
    return out


def _pruned_tokenizer(tokenizer, kept: list[int], staging: Path):
    """The tokenizer with only the ``kept`` ids, saved in ``staging`` and loaded back the way transformers loads it.

    The original is saved, its ``tokenizer.json`` gets the smaller vocabulary (added tokens and post-processor ids
    remapped) and everything else -- normaliser, pre-tokenizer, ``tokenizer_config.json`` -- is kept as is.
    """
    from transformers import AutoTokenizer

    new_id = {old: new for new, old in enumerate(kept)}

    def remap(i):
        if i not in new_id:
            raise RuntimeError(f"the tokenizer refers to id {i}, which pruning dropped")  # specials are always kept
        return new_id[i]

    with quiet_transformers():
        tokenizer.save_pretrained(str(staging))
    path = staging / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["model"]["vocab"] = {t: new_id[i] for t, i in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
                              if i in new_id}
    spec["added_tokens"] = [dict(t, id=new_id[t["id"]]) for t in spec.get("added_tokens") or [] if t["id"] in new_id]
    if spec.get("post_processor"):
        spec["post_processor"] = _remap_processor(spec["post_processor"], remap)
    if spec.get("padding") and isinstance(spec["padding"].get("pad_id"), int):
        spec["padding"]["pad_id"] = remap(spec["padding"]["pad_id"])
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    for stale in ("vocab.txt", "added_tokens.json"):  # old ids (save_tokenizer writes the new vocab.txt)
        (staging / stale).unlink(missing_ok=True)
    with quiet_transformers():
        new = AutoTokenizer.from_pretrained(str(staging))
    got = new.get_vocab()
    old = tokenizer.get_vocab()
    want = {t: new_id[i] for t, i in old.items() if i in new_id}
    if got != want:
        raise RuntimeError(f"the pruned tokenizer has {len(got)} tokens, expected {len(want)} in the old order")
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        a = json.loads(tokenizer.backend_tokenizer.to_str()).get(part)
        b = json.loads(new.backend_tokenizer.to_str()).get(part)
        if a != b:
            raise RuntimeError(f"the pruned tokenizer's {part} differs from the original's: {a} vs {b}")
    return new


# ---------------------------------------------------------------------------
# the corpus


class _Count:
    """Token counts over a corpus, read source by source with the model's own (Rust) tokenizer."""

    def __init__(self, backend, vocab_size: int, wordpiece: dict):
        import numpy as np
        from tokenizers import Tokenizer

        self.tk = Tokenizer.from_str(backend.to_str())  # a copy without the caller's padding / truncation
        self.tk.no_padding()
        self.tk.no_truncation()
        self.np = np
        self.counts = np.zeros(vocab_size, dtype=np.int64)
        self.unk_token = wordpiece.get("unk_token", "[UNK]")
        self.unk = self.tk.token_to_id(self.unk_token)
        self.wp_vocab = wordpiece["vocab"]
        self.prefix = wordpiece.get("continuing_subword_prefix", "##")
        self.max_chars = int(wordpiece.get("max_input_chars_per_word", 100))
        self.tried: set[str] = set()  # pieces the WordPiece search tried for [UNK] words
        self._unk_words: set[str] = set()
        self.texts = self.tokens = self.unk_tokens = 0
        self.sample: list[str] = []
        self.unk_sample: list[str] = []

    def add(self, batch: list[tuple[str, str]]) -> None:
        """Count a batch of ``(cleaned, as_read)`` texts.  A token's count in a line is its count in whichever
        form of the line has more of it, so text fed to the model cleaned (as qingbert does) or as read both keep
        their tokens."""
        np = self.np
        clean = [c for c, _ in batch]
        encs = self.tk.encode_batch_fast(clean, add_special_tokens=False)
        ids = [e.ids for e in encs]
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
        self.counts += np.bincount(flat, minlength=len(self.counts))[: len(self.counts)]
        self.texts += len(batch)
        self.tokens += len(flat)
        self.unk_tokens += int((flat == self.unk).sum()) if self.unk is not None else 0
        raw_at = [i for i, (c, r) in enumerate(batch) if r != c]
        raw_ids = self.tk.encode_batch_fast([batch[i][1] for i in raw_at], add_special_tokens=False) if raw_at else []
        for i, e in zip(raw_at, raw_ids):
            extra = Counter(e.ids) - Counter(ids[i])
            for t, n in extra.items():
                self.counts[t] += n
        if self.unk is not None:
            with_unk = [c for c, i in zip(clean, ids) if self.unk in i]
            self._spell_unk(with_unk + [batch[i][1] for i, e in zip(raw_at, raw_ids) if self.unk in e.ids])
            self.unk_sample.extend(with_unk[: max(0, VERIFY_UNK_TEXTS - len(self.unk_sample))])
        for c, r in batch:
            if len(self.sample) >= VERIFY_TEXTS:
                break
            self.sample.extend([c] if r == c else [c, r])

    def _spell_unk(self, texts: list[str]) -> None:
        """Record the pieces the WordPiece search tried for each ``[UNK]`` word of ``texts`` (see the module doc)."""
        if not texts:
            return
        for text, enc in zip(texts, self.tk.encode_batch(texts, add_special_tokens=False)):  # (with offsets)
            for tid, (s, e) in zip(enc.ids, enc.offsets):
                if tid != self.unk:
                    continue
                piece = text[s:e]
                if piece == self.unk_token or piece in self._unk_words:
                    continue
                self._unk_words.add(piece)
                norm = self.tk.normalizer.normalize_str(piece) if self.tk.normalizer else piece
                words = ([w for w, _ in self.tk.pre_tokenizer.pre_tokenize_str(norm)] if self.tk.pre_tokenizer
                         else [norm])
                for w in words:
                    self.tried.update(_tried_pieces(w, self.wp_vocab, self.prefix, self.max_chars))


def _read_corpus(sources: list[str], counter: _Count, text_field: str, progress: bool) -> list[dict]:
    """Tokenize every source; returns per-source counts.  A source with no text is an error naming it."""
    from tqdm.auto import tqdm

    per_source = []
    with tqdm(desc="tokenize", unit="text", unit_scale=True, disable=None if progress else True) as bar:
        for src in sources:
            stats = Stats()
            texts0, tokens0 = counter.texts, counter.tokens
            batch: list[tuple[str, str]] = []
            for text, _ in read_sources([src], stats, text_field):
                raw = text.strip()
                cleaned = clean_text(raw)
                if not cleaned:
                    continue
                batch.append((cleaned, raw))
                if len(batch) >= BATCH:
                    counter.add(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                counter.add(batch)
                bar.update(len(batch))
            n_texts, n_tokens = counter.texts - texts0, counter.tokens - tokens0
            if not n_tokens:
                raise QingbertError(f"corpus '{src}' has no text (0 tokens)", hint=stats.summary())
            per_source.append({"source": src, "texts": n_texts, "tokens": n_tokens, "lines_read": stats.lines_read,
                               "skipped": dict(stats.dropped)})
    return per_source


# ---------------------------------------------------------------------------
# the model


def _prune_model(model, kept: list[int], old_size: int):
    """A copy of ``model`` whose vocabulary-sized tensors hold only the ``kept`` rows.

    Which tensors those are is not guessed from their shapes (a position table can be as long as a vocabulary):
    a model is built from the config with the new ``vocab_size`` and every tensor whose shape changed is indexed
    along the dimensions that shrank -- the input embeddings, the MLM decoder (tied or not) and its bias.
    """
    import torch

    config = copy.deepcopy(model.config)
    config.vocab_size = len(kept)
    remap = {old: new for new, old in enumerate(kept)}
    for key, value in model.config.to_dict().items():
        if key.endswith("_token_id") and isinstance(value, int) and 0 <= value < old_size:
            setattr(config, key, remap[value])  # (kept: _specials keeps every config token id)
    with quiet_transformers():
        new = type(model)(config).to(model.dtype)
    index = torch.tensor(kept, dtype=torch.long)
    old_state, shapes = model.state_dict(), {k: v.shape for k, v in new.state_dict().items()}
    if set(old_state) != set(shapes):
        raise RuntimeError(f"a {type(model).__name__} built with the pruned vocabulary has other weights: "
                           f"{sorted(set(old_state) ^ set(shapes))[:5]}")
    state, changed = {}, []
    for key, value in old_state.items():
        if value.shape != shapes[key]:
            for dim, (a, b) in enumerate(zip(value.shape, shapes[key])):
                if a != b:
                    if (a, b) != (old_size, len(kept)):
                        raise RuntimeError(f"{key}: shape {tuple(value.shape)} -> {tuple(shapes[key])} is not a "
                                           "vocabulary change")
                    value = value.index_select(dim, index.to(value.device))
            changed.append(key)
        state[key] = value
    new.load_state_dict(state, strict=True)
    new.tie_weights()
    new.eval()
    return new, changed


def _parity(old_model, new_model, old_tok, new_tok, texts: list[str], kept: list[int], old_size: int) -> dict:
    """Run both models on corpus texts: hidden states and logits (at the kept columns) must agree."""
    import torch

    if not texts:
        return {"texts": 0}
    a = old_tok(texts, padding=True, truncation=True, max_length=PARITY_MAX_TOKENS, return_tensors="pt")
    b = new_tok(texts, padding=True, truncation=True, max_length=PARITY_MAX_TOKENS, return_tensors="pt")
    mapped = torch.full((old_size,), -1, dtype=torch.long)
    mapped[torch.tensor(kept)] = torch.arange(len(kept))
    if not torch.equal(mapped[a["input_ids"]], b["input_ids"]):
        raise RuntimeError("the pruned tokenizer gives other ids than the old ones mapped (a bug)")
    index = torch.tensor(kept)
    diffs = {}
    with torch.no_grad():
        old_out = old_model(**a, output_hidden_states=True)
        new_out = new_model(**b, output_hidden_states=True)
    # (padding too: [PAD] keeps its embedding row, so padded positions must agree as well)
    if getattr(old_out, "hidden_states", None) is not None:
        diffs["hidden_states"] = max(float((x - y).abs().max()) for x, y in
                                     zip(old_out.hidden_states, new_out.hidden_states))
    for name in ("logits", "start_logits", "end_logits", "prediction_logits"):
        x, y = getattr(old_out, name, None), getattr(new_out, name, None)
        if x is None or y is None:
            continue
        if x.shape[-1] == old_size and y.shape[-1] == len(kept) and old_size != len(kept):
            x = x.index_select(-1, index)
        diffs[name] = float((x - y).abs().max())
    worst = max(diffs.values(), default=0.0)
    if worst > TOLERANCE:
        raise RuntimeError(f"the pruned model's outputs differ from the original's by {worst:.3g} "
                           f"(tolerance {TOLERANCE}): {diffs}")
    return {"texts": len(texts), "max_abs_diff": diffs, "tolerance": TOLERANCE}


def _load(model: str):
    """``(tokenizer, model, local folder or None)``; a folder without a tokenizer is an error, before loading."""
    source, local = loading.resolve_source(model)
    folder = Path(source) if local else None
    if folder is not None:
        if not (folder / "config.json").is_file():
            raise QingbertError(f"{folder}: not a model folder (no config.json)",
                                hint="give a folder written by pretrain, finetune, distill or save_pretrained")
        if not _has_tokenizer(folder):
            raise QingbertError(f"{folder}: no tokenizer in the model folder (no tokenizer.json, "
                                "tokenizer_config.json or vocab.txt)",
                                hint="pruning needs the model's own tokenizer: save it into the folder")
    tokenizer = loading.load_tokenizer(str(folder) if folder is not None else model)
    config = loading.load_config(model)
    return tokenizer, config, folder


# ---------------------------------------------------------------------------
# the stage


def prune_vocab(model: str, corpus: list[str], out, *, keep=None, min_count: int = 1, overwrite: bool = False,
                progress: bool = True, text_field: str = "text") -> dict:
    """Prune ``model``'s vocabulary to the tokens ``corpus`` uses; write the pruned folder to ``out``.

    ``model``: a model folder (masked-LM, classification, token classification ...) or hub id; ``corpus``: sources
    as in ``qingbert prepare`` (files, folders, ``builtin:reviews:dev`` ...); ``keep``: tokens kept whatever the
    corpus says (a list, a file with one per line, or a comma list; unknown ones are reported, not an error);
    ``min_count``: a token is kept when the corpus has it at least this often (1 keeps outputs on the corpus exact).
    Returns the report (also in ``out/manifest.json`` under ``prune``, less ``kept_old_ids``).
    """
    t0 = time.time()
    sources = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus or [])
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise QingbertError("no corpus given", hint="pass --corpus FILE_OR_BUILTIN (repeatable)")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise QingbertError(f"min_count must be a whole number of at least 1, got {min_count!r}")
    out = Path(out).expanduser()

    source, local = loading.resolve_source(model)
    out_policy = {"what": "a model folder (no config.json)", "is_ours": lambda d: (d / "config.json").is_file(),
                  "inputs": {"model folder": Path(source) if local else None}}
    check_out_folder(out, overwrite, **out_policy)  # before the long work; replace_folder checks again
    keep_tokens = read_keep(keep)
    tokenizer, config, folder = _load(model)

    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise QingbertError(f"{model}: the tokenizer is not a fast (tokenizers) one", hint="save it with "
                                                                                          "tokenizer.json")
    wordpiece = _wordpiece(tokenizer.backend_tokenizer)
    vocab = tokenizer.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise QingbertError(f"{model}: the tokenizer's ids are not 0..{len(vocab) - 1}", hint="a broken tokenizer")
    if len(vocab) > config.vocab_size:
        raise QingbertError(f"{model}: the tokenizer has {len(vocab):,} tokens but the model embeds only "
                            f"{config.vocab_size:,}", hint="the tokenizer does not belong to this model")
    specials = _specials(tokenizer, config, vocab)
    user_known = [t for t in keep_tokens if t in vocab]
    user_unknown = [t for t in keep_tokens if t not in vocab]

    counter = _Count(tokenizer.backend_tokenizer, len(vocab), wordpiece)
    per_source = _read_corpus(sources, counter, text_field, progress)

    counts = counter.counts
    used = {int(i) for i in (counts >= min_count).nonzero()[0]}
    tried = {vocab[t] for t in counter.tried if t in vocab}
    keep_ids = used | set(specials) | {vocab[t] for t in user_known} | tried
    kept = sorted(keep_ids)
    old_size = int(config.vocab_size)
    rare = [int(i) for i in ((counts > 0) & (counts < min_count)).nonzero()[0] if int(i) not in keep_ids]
    kept_set = set(kept)

    with quiet_transformers():
        cls = _model_class(config)
        net = loading.load_pretrained(cls, model, config=config)
    net.eval()
    pruned, changed = _prune_model(net, kept, old_size)

    with replace_folder(out, overwrite, **out_policy) as staging:
        with tempfile.TemporaryDirectory(prefix="qingbert-prune-tok-") as tmp:
            new_tok = _pruned_tokenizer(tokenizer, kept, Path(tmp))
            verify = list(dict.fromkeys(counter.sample + counter.unk_sample))
            with quiet_transformers():  # (no "longer than 512 tokens" warnings: these texts are only tokenized)
                checked = _check_tokenizer(tokenizer, new_tok, verify, kept, kept_set)
                parity_texts = _parity_texts(tokenizer, counter.sample, kept_set)
            parity = _parity(net, pruned, tokenizer, new_tok, parity_texts, kept, old_size)

            with quiet_transformers():
                pruned.save_pretrained(str(staging))
                save_tokenizer(new_tok, staging)
        params_before, params_after = _n_params(net), _n_params(pruned)
        user_set = {vocab[t] for t in user_known}
        report = {
            "stage": STAGE,
            "model": str(model),
            "model_class": type(net).__name__,
            "corpus": sources,
            "min_count": min_count,
            "vocab_size": {"before": old_size, "after": len(kept)},
            "tokenizer_size_before": len(vocab),
            "tokens_dropped": old_size - len(kept),
            "specials": [tokenizer.convert_ids_to_tokens(i) for i in specials],
            "kept_by_user": user_known,
            "kept_by_user_only": [t for t in user_known if vocab[t] not in used and vocab[t] not in specials],
            "keep_unknown": user_unknown,
            "kept_for_unk_words": len(tried - used - set(specials) - user_set),
            "dropped_rare": {"tokens": len(rare), "occurrences": int(counts[rare].sum()) if rare else 0},
            "parameters": {"before": params_before, "after": params_after},
            "file_bytes": {"before": _weight_bytes(folder), "after": _weight_bytes(staging)},
            "remapped_weights": changed,
            "corpus_stats": {"texts": counter.texts, "tokens": counter.tokens, "unk_tokens": counter.unk_tokens,
                             "unk_rate": round(counter.unk_tokens / counter.tokens, 6) if counter.tokens else 0.0,
                             "sources": per_source},
            "verified": {"tokenizer_texts": checked, "parity": parity},
            "out": str(out),
        }
        report["elapsed_s"] = round(time.time() - t0, 2)
        base = read_manifest(folder) if folder is not None else None
        manifest = {k: v for k, v in (base or {}).items() if k not in _DROP_FROM_MANIFEST}
        if manifest.get("format") != FINETUNED_FORMAT:
            manifest["format"] = FORMAT
        if "stage" in manifest:
            manifest["source_stage"] = manifest["stage"]
        manifest.update(stage=STAGE, source_model=str(model), prune=report)
        write_manifest(staging, manifest)
    return dict(report, kept_old_ids=kept)


def _parity_texts(tokenizer, texts: list[str], kept_set: set) -> list[str]:
    """The first :data:`PARITY_TEXTS` corpus texts made only of kept tokens (all of them with ``min_count`` 1)."""
    out = []
    for t in texts:
        if all(i in kept_set for i in tokenizer(t)["input_ids"]):
            out.append(t)
            if len(out) == PARITY_TEXTS:
                break
    return out


def _check_tokenizer(old_tok, new_tok, texts: list[str], kept: list[int], kept_set: set) -> int:
    """Every sampled corpus text whose old ids are all kept must get exactly the old ids mapped; returns how many
    texts were checked.  (With ``min_count`` 1 that is every text.)"""
    remap = {old: new for new, old in enumerate(kept)}
    n = 0
    for lo in range(0, len(texts), 512):
        chunk = texts[lo:lo + 512]
        old_ids = old_tok(chunk)["input_ids"]
        new_ids = new_tok(chunk)["input_ids"]
        for text, a, b in zip(chunk, old_ids, new_ids):
            if not all(i in kept_set for i in a):
                continue
            n += 1
            if [remap[i] for i in a] != list(b):
                raise RuntimeError(f"the pruned tokenizer reads {text[:40]!r} differently from the original (a bug)")
    return n


def prune_summary(r: dict) -> str:
    """The lines ``qingbert prune-vocab`` prints."""
    v, p, f, c = r["vocab_size"], r["parameters"], r["file_bytes"], r["corpus_stats"]
    mb = (f"; model file {f['before'] / 1e6:.1f} MB -> {f['after'] / 1e6:.1f} MB" if f["before"] is not None
          else f"; model file {f['after'] / 1e6:.1f} MB")
    lines = [
        f"vocab: {v['before']:,} -> {v['after']:,} tokens ({r['tokens_dropped']:,} dropped; "
        f"{len(r['specials'])} special tokens kept" + (f", {len(r['kept_by_user'])} of yours" if r["kept_by_user"]
                                                        else "") + ")",
        f"parameters: {p['before'] / 1e6:.2f} M -> {p['after'] / 1e6:.2f} M{mb}",
        f"corpus: {c['texts']:,} texts, {c['tokens']:,} tokens; [UNK] {100 * c['unk_rate']:.3f}% of them "
        "(the same after pruning)",
    ]
    if r["keep_unknown"]:
        lines.append(f"not in the vocabulary, so not kept: {', '.join(r['keep_unknown'][:20])}"
                     + (" ..." if len(r["keep_unknown"]) > 20 else ""))
    if r["dropped_rare"]["tokens"]:
        d = r["dropped_rare"]
        lines.append(f"min-count {r['min_count']}: dropped {d['tokens']:,} rare corpus tokens ({d['occurrences']:,} "
                     f"of {c['tokens']:,} corpus tokens now read differently)")
    lines.append(f"wrote {r['out']} (loads with transformers' {r['model_class']}; a text outside the corpus that "
                 "uses a dropped token reads it as [UNK])")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# command line (wired into ``qingbert`` by cli.py: ``add_cli(sub)`` and ``run_cli(args)``)


__all__ = ["prune_vocab", "prune_summary", "read_keep", "FORMAT", "STAGE"]
