"""Prompt-based (PET-style) few-shot fine-tuning: a task as a cloze the pretrained MLM head already answers.

A *template* turns an example into a sentence with one ``[MASK]`` (``"{text}。总之很[MASK]。"``, or
``"{text_a}？[MASK]，{text_b}"`` for a sentence pair) and a *verbaliser* names one word per label
(``{"1": "好", "0": "差"}``).  The score of a label is the MLM logit of its word at the mask, and training
is cross-entropy over those label logits only (PET, Schick & Schütze 2021).  No new head is initialised, so
the pretrained MLM head's knowledge of Chinese is the classifier's starting point: that is what makes 32
labelled examples worth training on, and what makes a zero-shot score (no training at all) a baseline.

Training runs in the one loop of :mod:`qingbert.training.loop` (:class:`PromptObjective`), and dev is scored with the
same metric as :func:`qingbert.tasks.finetune.finetune` (accuracy, macro-F1), so prompt and head fine-tuning compare
directly.  The output folder is the masked-LM model (it loads with plain transformers'
``AutoModelForMaskedLM``) plus ``manifest.json`` holding the template, verbaliser and label token ids that
:func:`prompt_predict` needs.

Everything a user can get wrong is refused before any training: a template without ``[MASK]`` or without its
text placeholder, a verbaliser word that is not exactly one known token (one ``[MASK]`` scores one token;
multi-token words are refused rather than approximated), verbaliser labels that are not the task's labels, a
model whose MLM head is missing (a fine-tuned or ``AutoModel`` folder), and NER / MRC tasks.  Texts longer
than ``max_len`` are truncated, never the template: the ``[MASK]`` is always in the input.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qingbert.data.corpus import read_utf8
from qingbert.data.text import clean_text
from qingbert.errors import QingbertError, closest
from qingbert.manifest import PROMPT_FORMAT, atomic_write_text, read_manifest, write_manifest
from qingbert.models import loading, zoo
from qingbert.models.loading import load_tokenizer
from qingbert.models.tokenizer import save_tokenizer
from qingbert.pretraining.mlm import mlm_head
from qingbert.tasks.classification import ClassificationHead, ClassificationObjective
from qingbert.tasks.finetune import format_scores, load_for_task
from qingbert.tasks.readers import Task, TextExample, label_str, load_task
from qingbert.training.batching import Rows, model_inputs, pad_rows
from qingbert.training.loop import TrainConfig, Trainer, fill_config, seed_everything

FORMAT = PROMPT_FORMAT
MASK = "[MASK]"
FIELDS = ("text", "text_a", "text_b")
TASK_TYPES = ("classification", "pair")


@dataclass
class PromptConfig:
    # PET trains a fixed number of steps whatever the (few-shot) training set's size: 250 steps of 16.  Giving
    # `epochs` (and no `max_steps`) switches to epochs; `epochs: 0` alone is zero-shot (no training at all).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, batch_size=16, max_steps=250,
                                                                   epochs=1.0, save_every=0))
    max_len: int = 128  # tokens per prompt ([CLS] + template + text + [SEP]); only the text is ever cut
    train_examples: int = 0  # 0 = the whole train split; else a sample stratified by label, drawn with the seed
    tokenizer: str | None = None  # for random:<zoo name> (a folder or hub id with the vocabulary)
    overrides: dict = field(default_factory=dict)  # config overrides for random:<zoo name> shapes

    @classmethod
    def from_dict(cls, d: dict | None, base: "PromptConfig | None" = None) -> "PromptConfig":
        """Flat or nested (``train:``) dict -> config; unknown keys are an error.

        ``max_train_examples`` (the name :class:`~qingbert.tasks.finetune.FinetuneConfig` uses) means
        ``train_examples``, so one recipe serves both kinds of fine-tuning."""
        d = dict(d or {})
        if "max_train_examples" in d:
            value = d.pop("max_train_examples")
            d.setdefault("train_examples", value)
        cfg = fill_config(base or cls(), d, "prompt fine-tuning")
        nested = d.get("train") if isinstance(d.get("train"), dict) else {}
        if ("epochs" in d or "epochs" in nested) and "max_steps" not in d and "max_steps" not in nested:
            cfg.train.max_steps = 0  # epochs asked for: PET's fixed step count would silently override them
        return cfg

    @property
    def zero_shot(self) -> bool:
        return not self.train.max_steps and not self.train.epochs


# ---------------------------------------------------------------------------
# templates


_PIECES = re.compile(r"(\[MASK\]|\{\w*\})")


@dataclass(frozen=True)
class Template:
    """A parsed template: ``pieces`` is a tuple of ``("literal", str)``, ``("field", "text_a" | "text_b")`` and
    one ``("mask", "[MASK]")``; ``{text}`` is stored as ``text_a`` (a single text is the first text)."""

    source: str
    pieces: tuple

    @property
    def fields(self) -> list:
        return [v for k, v in self.pieces if k == "field"]

    @property
    def pair(self) -> bool:
        return "text_b" in self.fields

    @property
    def task_type(self) -> str:
        return "pair" if self.pair else "classification"

    def render(self, text: str, text_b: str | None = None) -> str:
        """The prompt as a string (``[MASK]`` in place), untruncated: what a person reads, and what the
        tokenizer turns into the same tokens as :func:`encode_prompts` for Chinese text."""
        values = {"text_a": text, "text_b": text_b or ""}
        return "".join(values[v] if k == "field" else v for k, v in self.pieces)


def parse_template(template: str, task_type: str | None = None) -> Template:
    """Check and parse a template; ``task_type`` (classification / pair) checks its placeholders fit the task.

    Exactly one ``[MASK]`` (one token per label word); ``{text}`` (or ``{text_a}``) once, and for a pair task
    ``{text_b}`` once as well; no other ``{...}`` placeholder."""
    example = '"{text}。总之很[MASK]。" or "[MASK]满意。{text}"'
    if not isinstance(template, str) or not template.strip():
        raise QingbertError("the prompt template is empty", hint=f"e.g. {example}")
    n_mask = template.count(MASK)
    if n_mask == 0:
        raise QingbertError(f"the prompt template has no {MASK}: {template!r}",
                            hint=f"put {MASK} where the label word goes, e.g. {example}")
    if n_mask > 1:
        raise QingbertError(f"the prompt template has {n_mask} {MASK}s: {template!r}",
                            hint=f"use one {MASK}: each label's word is scored as one token at one mask")
    pieces, seen = [], []
    for part in _PIECES.split(template):
        if not part:
            continue
        if part == MASK:
            pieces.append(("mask", MASK))
        elif part.startswith("{") and part.endswith("}") and _PIECES.fullmatch(part):
            name = part[1:-1]
            if name not in FIELDS:
                guess = closest(name, FIELDS) if name else None
                raise QingbertError(f"the prompt template has an unknown placeholder {part}",
                                    hint=(f"did you mean {{{guess}}}? " if guess else "")
                                    + "use {text} for a single text, {text_a} and {text_b} for a pair")
            name = "text_a" if name == "text" else name
            if name in seen:
                raise QingbertError(f"the prompt template has {part} twice",
                                    hint="each text goes in once (truncation would not know which copy to cut)")
            seen.append(name)
            pieces.append(("field", name))
        else:
            pieces.append(("literal", part))
    if "text_a" not in seen:
        raise QingbertError(f"the prompt template has no text placeholder: {template!r}",
                            hint="put {text} (pair tasks: {text_a} and {text_b}) where the example goes, "
                                 f"e.g. {example}")
    tpl = Template(template, tuple(pieces))
    if task_type is not None:
        if task_type not in TASK_TYPES:
            raise QingbertError(f"prompts apply to classification and pair tasks, not {task_type}")
        if task_type == "pair" and not tpl.pair:
            raise QingbertError(f"a pair task needs {{text_a}} and {{text_b}} in the template: {template!r}",
                                hint='e.g. "{text_a}？[MASK]，{text_b}"')
        if task_type == "classification" and tpl.pair:
            raise QingbertError(f"a single-text task has no {{text_b}}: {template!r}",
                                hint="use {text} (or {text_a}) only")
    return tpl


# ---------------------------------------------------------------------------
# verbalisers


def _pairs_from_string(s: str) -> list:
    items = []
    for item in re.split(r"[,，;；\n]", s):
        item = item.strip()
        if not item:
            continue
        m = re.match(r"^(.*?)\s*[:：=]\s*(.*)$", item)
        if m is None:
            raise QingbertError(f"verbaliser item {item!r} is not LABEL:WORD", hint='e.g. "1:好,0:差"')
        items.append((m.group(1), m.group(2)))
    return items


def parse_verbalizer(spec) -> dict:
    """``{label: word}`` from a dict, a ``"1:好,0:差"`` string (``,``/``，``/``;`` between items, ``:``/``：``/``=``
    inside), a JSON object string, or a JSON / YAML file of that mapping.  Labels become strings (YAML's
    ``1: 好`` means label ``"1"``); one word per label."""
    import yaml

    if isinstance(spec, Mapping):
        items, where = list(spec.items()), "verbaliser"
    elif isinstance(spec, (str, Path)):
        s = str(spec).strip()
        path = Path(s).expanduser()
        is_file = False
        try:
            is_file = path.is_file()
        except OSError:  # a long "1:好,..." string is not a path
            pass
        if is_file or path.suffix.lower() in (".json", ".yaml", ".yml"):
            if not is_file:
                raise QingbertError(f"verbaliser file {path} not found")
            where = str(path)

            try:
                data = yaml.safe_load(read_utf8(path))
            except yaml.YAMLError:
                raise QingbertError(f"{path}: not valid JSON or YAML") from None
            if not isinstance(data, dict):
                raise QingbertError(f"{path}: a verbaliser file must be a mapping of label: word",
                                    hint='e.g. {"1": "好", "0": "差"}')
            items = list(data.items())
        elif s.startswith("{"):
            where = "verbaliser"
            try:
                data = json.loads(s)
            except json.JSONDecodeError as e:
                raise QingbertError(f"verbaliser is not valid JSON ({e.msg})") from None
            if not isinstance(data, dict):
                raise QingbertError("a verbaliser must map labels to words", hint='e.g. {"1": "好", "0": "差"}')
            items = list(data.items())
        else:
            items, where = _pairs_from_string(s), "verbaliser"
    else:
        raise QingbertError(f"a verbaliser is a dict, a 'LABEL:WORD,...' string or a file, not "
                            f"{type(spec).__name__}")
    out: dict = {}
    for k, v in items:
        label = label_str(k)
        if isinstance(v, (list, tuple, dict)):
            raise QingbertError(f"{where}: label '{label}' has {len(v)} words", hint="give one word per label")
        word = "" if v is None else str(v).strip()
        if not label or not word:
            raise QingbertError(f"{where}: empty label or word in {k!r}: {v!r}", hint='e.g. "1:好,0:差"')
        if label in out:
            raise QingbertError(f"{where}: label '{label}' is given twice")
        out[label] = word
    if len(out) < 2:
        raise QingbertError(f"{where}: a verbaliser needs at least two labels (got {len(out)})",
                            hint='e.g. "1:好,0:差"')
    return out


def match_labels(verbalizer: dict, labels: list, label_names: dict | None = None, task: str = "the task") -> list:
    """The verbaliser's words in the order of ``labels``; every label needs a word and every word a label.

    A key may also be a label's name (TNEWS' ``news_story`` for label ``100``)."""
    by_name = {str(desc): lab for lab, desc in (label_names or {}).items()}
    words, extra = {}, []
    for key, word in verbalizer.items():
        lab = key if key in labels else by_name.get(key)
        if lab is None:
            extra.append(key)
            continue
        if lab in words:
            raise QingbertError(f"verbaliser names label '{lab}' twice (once as '{key}')")
        words[lab] = word
    missing = [lab for lab in labels if lab not in words]
    if extra or missing:
        parts = ([f"missing {', '.join(repr(x) for x in missing)}"] if missing else []) + \
                ([f"not labels of {task}: {', '.join(repr(x) for x in extra)}"] if extra else [])
        guess = closest(extra[0], labels) if extra else None
        raise QingbertError(f"verbaliser labels do not match {task}'s labels ({'; '.join(parts)})",
                            hint=(f"did you mean '{guess}' for '{extra[0]}'? " if guess else "")
                            + f"{task} labels: {', '.join(labels[:30])}")
    return [words[lab] for lab in labels]


def verbalizer_token_ids(tokenizer, words: list, labels: list) -> list:
    """One vocabulary id per label word; a word that is several tokens, ``[UNK]``, a special token or another
    label's token is refused, saying what the vocabulary made of it."""
    specials = set(tokenizer.all_special_ids)
    ids, owner = [], {}
    for lab, word in zip(labels, words):
        got = tokenizer(clean_text(word), add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(got)
        if len(got) != 1:
            raise QingbertError(
                f"verbaliser word '{word}' (label '{lab}') is {len(got)} tokens in this vocabulary: "
                f"{' '.join(pieces) or '(nothing)'}",
                hint=f"the template has one {MASK}, so each label word must be a single token: "
                     "pick one character or a word the vocabulary holds whole")
        if got[0] == tokenizer.unk_token_id:
            raise QingbertError(f"verbaliser word '{word}' (label '{lab}') becomes {tokenizer.unk_token} in this "
                                "vocabulary", hint="pick a word the model's vocabulary has")
        if got[0] in specials:
            raise QingbertError(f"verbaliser word '{word}' (label '{lab}') is the special token {pieces[0]}")
        if got[0] in owner:
            raise QingbertError(f"labels '{owner[got[0]]}' and '{lab}' have the same word token {pieces[0]}",
                                hint="give every label its own word")
        owner[got[0]] = lab
        ids.append(int(got[0]))
    return ids


# ---------------------------------------------------------------------------
# encoding


def _fit(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Kept lengths of two texts sharing ``budget`` tokens: the shorter is kept whole when it fits in half,
    else both get half (``longest_first`` truncation, in closed form)."""
    if la + lb <= budget:
        return la, lb
    half = budget // 2
    if la <= half:
        return la, budget - la
    if lb <= budget - half:
        return budget - lb, lb
    return half, budget - half


def encode_prompts(examples, tokenizer, template: Template, label2id: dict, max_len: int):
    """Examples -> :class:`~qingbert.tasks.finetune.Rows` of ``input_ids``, ``token_type_ids``, ``mask_pos``, ``label``
    (-100 when unlabelled), plus a report (examples, truncated_to_max_len, template_tokens, text_budget).

    Template pieces and texts are tokenized apart and joined, so a long text is cut to the budget the template
    leaves and the ``[MASK]`` is always in the input.  A ``[MASK]`` written inside a text becomes ``[UNK]``
    (counted): the only mask the model sees is the template's."""
    if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise QingbertError("this tokenizer has no [MASK] / [CLS] / [SEP] token",
                            hint="prompts need a BERT-style masked-LM vocabulary")
    literal = {}
    for i, (kind, value) in enumerate(template.pieces):
        if kind == "literal":
            literal[i] = tokenizer(clean_text(value), add_special_tokens=False)["input_ids"]
    fixed = 2 + 1 + sum(len(v) for v in literal.values())  # [CLS] [SEP], the mask, the template's words
    n_fields = len(template.fields)
    budget = max_len - fixed
    if budget < n_fields:
        raise QingbertError(f"the template takes {fixed} of max_len {max_len} tokens, leaving no room for the text",
                            hint="raise max_len or shorten the template")
    if template.pair and any(e.text_b is None for e in examples):
        raise QingbertError("the template has {text_b} but the examples have no second text",
                            hint="use {text} for a single-text task")

    def tok(texts):
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    a_ids = tok([clean_text(e.text) for e in examples])
    b_ids = tok([clean_text(e.text_b) for e in examples]) if template.pair else [[] for _ in examples]
    cls, sep, mask, unk = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, \
        tokenizer.unk_token_id
    input_ids, positions, truncated, masks_in_text = [], [], 0, 0
    for a, b in zip(a_ids, b_ids):
        masks_in_text += a.count(mask) + b.count(mask)
        if mask in a or mask in b:
            a = [unk if x == mask else x for x in a]
            b = [unk if x == mask else x for x in b]
        if template.pair:
            la, lb = _fit(len(a), len(b), budget)
        else:
            la, lb = min(len(a), budget), 0
        truncated += la < len(a) or lb < len(b)
        values = {"text_a": a[:la], "text_b": b[:lb]}
        ids, pos = [cls], -1
        for i, (kind, value) in enumerate(template.pieces):
            if kind == "literal":
                ids.extend(literal[i])
            elif kind == "field":
                ids.extend(values[value])
            else:
                pos = len(ids)
                ids.append(mask)
        ids.append(sep)
        input_ids.append(ids)
        positions.append(pos)
    columns = {"input_ids": input_ids, "token_type_ids": [[0] * len(x) for x in input_ids], "mask_pos": positions,
               "label": [label2id[e.label] if e.label is not None else -100 for e in examples]}
    report = {"examples": len(examples), "truncated_to_max_len": int(truncated), "template_tokens": fixed - 2,
              "text_budget": budget}
    if masks_in_text:
        report["mask_tokens_in_text"] = int(masks_in_text)
    return Rows(columns), report


class PromptCollator:
    """Pads prompts to the longest in the batch; ``labels`` and ``mask_pos`` (the mask's column after padding)."""

    def __init__(self, pad_id: int | None, side: str = "right"):
        self.pad_id, self.side = pad_id if pad_id is not None else 0, side

    def __call__(self, examples: list[dict]) -> dict:
        batch = pad_rows(examples, self.pad_id, self.side)
        length = batch["input_ids"].shape[1]
        shift = [length - len(e["input_ids"]) if self.side == "left" else 0 for e in examples]
        batch["mask_pos"] = torch.tensor([e["mask_pos"] + s for e, s in zip(examples, shift)], dtype=torch.long)
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return batch


# ---------------------------------------------------------------------------
# the objective


class PromptObjective(torch.nn.Module):
    """PET: cross-entropy over the verbaliser words' MLM logits at the mask; ``forward(batch) -> (loss, metrics)``.

    The vocabulary head runs at the one mask position only (as :func:`qingbert.pretraining.mlm.masked_lm_loss` runs it
    at the masked positions): the rest of the sequence never needs its 21,128-way projection."""

    name = "prompt"
    accuracy_name = "accuracy"

    def __init__(self, model, label_token_ids: list):
        super().__init__()
        self.model = model
        self.register_buffer("label_token_ids", torch.tensor(list(label_token_ids), dtype=torch.long),
                             persistent=False)

    def label_logits(self, batch: dict) -> torch.Tensor:
        """``(batch, labels)``: each label word's MLM logit at the batch's mask positions."""
        inputs = model_inputs(batch)
        pos = batch["mask_pos"]
        rows = torch.arange(pos.numel(), device=pos.device)
        head = mlm_head(self.model)
        base = getattr(self.model, getattr(self.model, "base_model_prefix", ""), None)
        if head is None or base is None:  # a layout mlm_head does not know: the full forward
            logits = self.model(**inputs).logits[rows, pos]
        else:
            logits = head(base(**inputs).last_hidden_state[rows, pos])
        return logits[:, self.label_token_ids.to(logits.device)].float()

    def _run(self, batch):
        logits = self.label_logits(batch)
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels)
        correct = (logits.argmax(-1) == labels).sum()
        return loss, correct

    def forward(self, batch):
        loss, correct = self._run(batch)
        return loss, {"correct": correct, "count": batch["labels"].numel()}

    def evaluate_batch(self, batch) -> dict:
        loss, correct = self._run(batch)
        n = batch["labels"].numel()
        return {"loss_sum": float(loss) * n, "count": n, "correct": int(correct)}

    @staticmethod
    def summarize(totals: dict) -> dict:
        """Accuracy and mean loss of the summed evaluation batches, as fine-tuning reports them."""
        return ClassificationObjective.summarize(totals)

    def trained_model(self):
        return self.model


@torch.no_grad()
def label_scores(objective: PromptObjective, rows, collate, batch_size: int = 64) -> np.ndarray:
    """``(examples, labels)`` label logits for encoded prompts, batched by length, in the rows' order."""
    device = next(objective.parameters()).device
    was_training = objective.training
    objective.eval()
    out = np.zeros((len(rows), len(objective.label_token_ids)), dtype=np.float32)
    order = np.argsort([len(x) for x in rows["input_ids"]], kind="stable")
    for lo in range(0, len(rows), batch_size):
        idx = [int(i) for i in order[lo:lo + batch_size]]
        part = rows[idx]
        batch = collate([dict(zip(part, vals)) for vals in zip(*part.values())])
        batch = {k: v.to(device) for k, v in batch.items()}
        out[idx] = objective.label_logits(batch).cpu().numpy()
    objective.train(was_training)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------
# models


def prompt_tokenizer(model: str, tokenizer: str | None = None):
    """The vocabulary the prompts are tokenized with: ``tokenizer``, else the model's own."""
    src = model[len("random:"):] if model.startswith("random:") else model
    if tokenizer:
        return load_tokenizer(tokenizer)
    if model.startswith("random:") and not Path(src).expanduser().is_dir():
        raise QingbertError(f"'{model}' needs a vocabulary", hint="give `tokenizer` (--tokenizer FOLDER)")
    local = Path(src).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise QingbertError(f"{src}: not a model folder (no config.json)")
    return load_tokenizer(src)


def _no_masked_lm(model: str, model_type: str) -> QingbertError:
    return QingbertError(f"{model}: a {model_type} model has no masked-LM head in transformers",
                         hint="prompts are filled by an MLM head: use a BERT-style model (BERT, RoBERTa-wwm, "
                              "ALBERT, ERNIE, MacBERT, an ELECTRA generator)")


def load_prompt_model(model: str, cfg: PromptConfig | None = None):
    """``(masked-LM model, how it was initialised)`` with its pretrained MLM head, for a folder / hub id / zoo
    name (its hub weights) / ``random:<folder or zoo name>``.

    A checkpoint without MLM-head weights (a fine-tuned classifier, an ``AutoModel`` folder, an ELECTRA
    discriminator) is refused: transformers would fill the head with random numbers, and a prompt scored by a
    random head knows nothing of the label words."""
    from transformers import AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    cfg = cfg or PromptConfig()
    if model.startswith("random:"):
        from types import SimpleNamespace

        src = model[len("random:"):]
        if not Path(src).expanduser().is_dir() and zoo.get_spec(src).model_type == "xlnet":
            raise _no_masked_lm(model, "xlnet")
        try:
            net, _, init = load_for_task(model, SimpleNamespace(auto_class="AutoModelForMaskedLM", labels=[]), cfg)
        except ValueError as e:  # an architecture without a masked-LM class
            raise QingbertError(f"{model}: no masked-LM head for this architecture ({str(e).splitlines()[0]})") \
                from None
        return net, init
    local = Path(model).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise QingbertError(f"{model}: not a model folder (no config.json)")
    config = loading.load_config(model)
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise _no_masked_lm(model, config.model_type)
    net, info = loading.load_pretrained(AutoModelForMaskedLM, model, config=config, output_loading_info=True)
    prefix = getattr(net, "base_model_prefix", "")
    missing = sorted(k for k in info.get("missing_keys", ()) if not (prefix and k.startswith(prefix + ".")))
    if missing:
        raise QingbertError(f"{model} has no trained MLM head ({len(missing)} head tensors missing, e.g. "
                            f"{missing[0]})",
                            hint="prompts are scored by the pretrained MLM head: use the pretrained model, not a "
                                 "fine-tuned or AutoModel folder")
    return net, f"weights from {model}"


def _check_vocab(net, tokenizer, label_ids: list, model: str) -> None:
    n = net.get_input_embeddings().num_embeddings
    if n < len(tokenizer) or max(label_ids) >= getattr(net.config, "vocab_size", n):
        raise QingbertError(f"model {model} has {n} token embeddings but its tokenizer has {len(tokenizer)} tokens",
                            hint="give the model's own vocabulary (tokenizer)")


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------
# the stages


def sample_examples(examples: list, n: int, seed: int, labels: list | None = None) -> list:
    """``n`` examples stratified by label (each label's share of the split, at least one each where ``n``
    allows), drawn with ``seed``; in the split's order.  ``n`` 0 (or at least the split) keeps all."""
    if not n or n >= len(examples):
        return list(examples)
    groups: dict = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.label, []).append(i)
    order = [lab for lab in (labels or []) if lab in groups] + sorted((k for k in groups if k not in (labels or [])),
                                                                      key=str)
    sizes = np.array([len(groups[lab]) for lab in order])
    quota = n * sizes / sizes.sum()
    take = np.minimum(np.floor(quota).astype(int), sizes)
    if n >= len(order):
        take = np.maximum(take, 1)
    while take.sum() < n:  # largest remainders first
        room = np.where(take < sizes, quota - take, -np.inf)
        take[int(np.argmax(room))] += 1
    while take.sum() > n:  # (only after the at-least-one rule) from the largest groups
        take[int(np.argmax(np.where(take > 1, take, -1)))] -= 1
    rng = np.random.default_rng(seed)
    chosen = []
    for lab, k in zip(order, take):
        chosen.extend(rng.permutation(groups[lab])[:k].tolist())
    return [examples[i] for i in sorted(chosen)]


def _prepare(model: str, task, data_dir, template: str, verbalizer, cfg: PromptConfig, splits: tuple):
    """Every check before training: template, verbaliser, task and its labels, vocabulary, model."""
    tpl = parse_template(template)
    verb = parse_verbalizer(verbalizer)
    t = task if isinstance(task, Task) else load_task(task, data_dir)
    if t.type not in TASK_TYPES:
        raise QingbertError(f"task '{t.name}' is a {t.type} task; prompts score one label word per example, so "
                            "they apply to classification and pair tasks only",
                            hint="fine-tune it with `qingbert finetune` (no --prompt)")
    tpl = parse_template(template, t.type)
    absent = [s for s in splits if s not in t.splits or not t.splits[s]]
    if absent:
        raise QingbertError(f"task '{t.name}' has no (or an empty) {' / '.join(absent)} split",
                            hint=t.summary().replace("\n", "; "))
    words = match_labels(verb, list(t.labels), t.label_names, f"task '{t.name}'")
    tokenizer = prompt_tokenizer(model, cfg.tokenizer)
    label_ids = verbalizer_token_ids(tokenizer, words, list(t.labels))
    return t, tpl, dict(zip(t.labels, words)), tokenizer, label_ids


def _predictions(examples, labels, probs, path: Path) -> None:
    lines = []
    for e, p in zip(examples, probs):
        rec = {"id": e.id, "label": labels[int(np.argmax(p))], "gold": e.label,
               "probs": {lab: round(float(x), 5) for lab, x in zip(labels, p)}}
        lines.append(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(path, "".join(lines))


def _score(t, examples, probs) -> dict:
    head = ClassificationHead(t)
    return head.score(examples, [head.labels[int(np.argmax(p))] for p in probs])


def prompt_finetune(model: str, task, out: str | Path, data_dir: str | None = None, *, template: str, verbalizer,
                    config: PromptConfig | dict | None = None, train_examples: int = 0, **overrides) -> dict:
    """PET-style fine-tuning of ``model``'s MLM head on ``task`` with ``template`` and ``verbalizer``; dev scored.

    ``train_examples`` (e.g. 32) samples the train split, stratified by label and reproducible with the seed;
    ``overrides`` are config options (``max_steps=100, lr=1e-4, ...``).  ``epochs=0`` (no ``max_steps``) is
    zero-shot: nothing is trained and the folder holds the pretrained model with its dev scores.

    Writes ``out``: the masked-LM model and tokenizer (plain transformers loads them), ``manifest.json``
    (format, stage "prompt-finetune", template, verbaliser, label token ids, dev scores),
    ``dev_metrics.json`` and ``predictions-dev.jsonl``; returns the manifest (plus ``out``)."""
    t0 = time.time()
    cfg = config if isinstance(config, PromptConfig) else PromptConfig.from_dict(config)
    if overrides:
        cfg = PromptConfig.from_dict(overrides, cfg)
    if train_examples:
        cfg.train_examples = int(train_examples)
    out = Path(out)
    zero_shot = cfg.zero_shot
    t, tpl, verb, tokenizer, label_ids = _prepare(model, task, data_dir, template, verbalizer, cfg,
                                                  ("dev",) if zero_shot else ("train", "dev"))
    labels = list(t.labels)
    label2id = {lab: i for i, lab in enumerate(labels)}
    train_ex = [] if zero_shot else sample_examples(t.splits["train"], cfg.train_examples, cfg.train.seed, labels)
    dev_ex = t.splits["dev"]
    seed_everything(cfg.train.seed)
    net, init = load_prompt_model(model, cfg)
    _check_vocab(net, tokenizer, label_ids, model)
    collate = PromptCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))
    dev_rows, dev_report = encode_prompts(dev_ex, tokenizer, tpl, label2id, cfg.max_len)
    encode = {"dev": dev_report}
    objective = PromptObjective(net, label_ids)
    if zero_shot:
        from accelerate import PartialState

        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        is_main, steps, world, final = PartialState().is_main_process, 0, 1, objective.to(_device())
        trainer = None
    else:
        train_rows, encode["train"] = encode_prompts(train_ex, tokenizer, tpl, label2id, cfg.max_len)
        trainer = Trainer(objective, train_rows, collate, out, cfg.train,
                          eval_data=dev_rows if cfg.train.eval_every else None,
                          fingerprint={"stage": "prompt", "model": str(model), "template": template})
        trainer.run()
        is_main, steps, world = trainer.acc.is_main_process, trainer.state["step"], trainer.world
        final = trainer.unwrapped_objective()
    result = {"out": str(out), "steps": steps, "labels": labels, "encode": encode}
    if is_main:
        probs = softmax(label_scores(final, dev_rows, collate, batch_size=max(32, cfg.train.batch_size)))
        dev = _score(t, dev_ex, probs)
        net = final.trained_model()
        net.save_pretrained(str(out), safe_serialization=True)
        save_tokenizer(tokenizer, out)
        _predictions(dev_ex, labels, probs, out / "predictions-dev.jsonl")
        manifest = {"format": FORMAT, "stage": "prompt-finetune", "zero_shot": zero_shot, "model": model,
                    "init": init, "task": t.name, "task_type": t.type, "template": tpl.source, "verbalizer": verb,
                    "labels": labels, "label_token_ids": label_ids,
                    "label_tokens": tokenizer.convert_ids_to_tokens(label_ids), "label_names": t.label_names,
                    "model_type": net.config.model_type, "auto_class": "AutoModelForMaskedLM",
                    "examples": {s: len(v) for s, v in t.splits.items()}, "train_examples": len(train_ex),
                    "train_sample": (f"{len(train_ex)} of {len(t.splits['train'])}, stratified by label, seed "
                                     f"{cfg.train.seed}") if train_ex and cfg.train_examples else "all",
                    "skipped": dict(t.skipped), "skip_examples": t.skip_examples[:10], "fixed": dict(t.fixed),
                    "encode": encode, "config": {**asdict(cfg), "train": asdict(cfg.train)}, "steps": steps,
                    "processes": world, "dev": dev, "elapsed_s": round(time.time() - t0, 2)}
        write_manifest(out, manifest)
        atomic_write_text(out / "dev_metrics.json", json.dumps(dev, indent=2, ensure_ascii=False) + "\n")
        result = {**manifest, "out": str(out)}
    if trainer is not None:
        trainer.acc.wait_for_everyone()
    result["elapsed_s"] = round(time.time() - t0, 2)
    return result


def _probabilities(net, tok, label_ids, rows, batch_size: int) -> np.ndarray:
    """Label probabilities (softmax over the verbaliser words at the mask) of encoded prompt ``rows``."""
    objective = PromptObjective(net, label_ids).to(_device())
    collate = PromptCollator(tok.pad_token_id, getattr(tok, "padding_side", "right"))
    return softmax(label_scores(objective, rows, collate, batch_size))


def evaluate_prompt(model: str, task, template: str, verbalizer, data_dir: str | None = None, *,
                    split: str = "dev", max_len: int = 128, batch_size: int = 64,
                    tokenizer: str | None = None) -> dict:
    """Zero-shot: score ``split`` of ``task`` with a pretrained MLM (no training, nothing written).

    The baseline a prompt should be judged against first: how much of the task the pretrained model already
    reads from the template.  Returns ``{"split", "scores" (as finetune's dev scores), "encode", "labels",
    "label_tokens"}``."""
    cfg = PromptConfig(max_len=max_len, tokenizer=tokenizer)
    t, tpl, verb, tok, label_ids = _prepare(model, task, data_dir, template, verbalizer, cfg, (split,))
    labels = list(t.labels)
    examples = t.splits[split]
    if any(e.label is None for e in examples):
        raise QingbertError(f"the {split} split of task '{t.name}' is not labelled", hint="score dev instead")
    net, _ = load_prompt_model(model, cfg)
    _check_vocab(net, tok, label_ids, model)
    rows, report = encode_prompts(examples, tok, tpl, {lab: i for i, lab in enumerate(labels)}, max_len)
    probs = _probabilities(net, tok, label_ids, rows, batch_size)
    return {"split": split, "scores": _score(t, examples, probs), "encode": report, "labels": labels,
            "verbalizer": verb, "label_tokens": tok.convert_ids_to_tokens(label_ids)}


def prompt_predict(folder_or_model: str | Path, texts, template: str | None = None, verbalizer=None, *,
                   max_len: int | None = None, batch_size: int = 64, tokenizer: str | None = None) -> list:
    """``[(label, {label: probability})]`` for ``texts`` (strings; ``(text_a, text_b)`` pairs for a pair template).

    ``template`` / ``verbalizer`` / ``max_len`` default to those a :func:`prompt_finetune` folder was trained
    with; a plain pretrained MLM needs them given (zero-shot prediction).  Labels are in the verbaliser's order."""
    model = str(folder_or_model)
    m = read_manifest(model) if Path(model).expanduser().is_dir() else None
    m = m if m and m.get("format") == FORMAT else None
    if template is None or verbalizer is None:
        if m is None:
            raise QingbertError(f"{model}: not a prompt fine-tuned folder, so give the template and verbaliser",
                                hint='e.g. template="{text}。总之很[MASK]。", verbalizer="1:好,0:差"')
        template = m["template"] if template is None else template
        verbalizer = m["verbalizer"] if verbalizer is None else verbalizer
    max_len = max_len or (m["config"].get("max_len", 128) if m else 128)
    tpl = parse_template(template)
    verb = parse_verbalizer(verbalizer)
    labels = list(verb)
    if isinstance(texts, str):
        texts = [texts]
    examples = []
    for i, x in enumerate(texts):
        if isinstance(x, str):
            examples.append(TextExample(i, x))
        elif isinstance(x, (list, tuple)) and len(x) == 2:
            examples.append(TextExample(i, str(x[0]), str(x[1])))
        else:
            raise QingbertError(f"text {i} is neither a string nor a (text_a, text_b) pair")
    pairs = {e.text_b is not None for e in examples}
    if pairs and pairs != {tpl.pair}:
        raise QingbertError("a pair template needs (text_a, text_b) pairs" if tpl.pair else
                            "this template has one {text}: give strings, not pairs")
    cfg = PromptConfig(max_len=max_len, tokenizer=tokenizer)
    tok = prompt_tokenizer(model, tokenizer)
    label_ids = verbalizer_token_ids(tok, [verb[lab] for lab in labels], labels)
    net, _ = load_prompt_model(model, cfg)
    _check_vocab(net, tok, label_ids, model)
    if not examples:
        return []
    rows, _ = encode_prompts(examples, tok, tpl, {}, max_len)
    probs = _probabilities(net, tok, label_ids, rows, batch_size)
    return [(labels[int(np.argmax(p))], {lab: float(x) for lab, x in zip(labels, p)}) for p in probs]


def predict_task(folder: str | Path, task, out_file: str | Path | None = None, data_dir: str | None = None,
                 split: str = "test", batch_size: int = 64) -> dict:
    """``qingbert predict`` for a :func:`prompt_finetune` folder: label ``split`` of ``task`` through the template
    and verbaliser it was trained with and write the CLUE submission file (``{"id", "label"}`` per line).

    Returns ``{"file", "examples", "task", "split", "backend", "scores" (where the split is labelled)}``, as
    :func:`qingbert.tasks.finetune.predict` does."""
    folder = Path(folder)
    m = read_manifest(folder)
    if m is None or m.get("format") != FORMAT:
        raise QingbertError(f"{folder}: not a prompt fine-tuned folder (no {FORMAT} manifest)")
    cfg = PromptConfig(max_len=m["config"].get("max_len", 128))  # the folder holds its own tokenizer
    t, tpl, _, tok, label_ids = _prepare(str(folder), task, data_dir, m["template"], m["verbalizer"], cfg, (split,))
    net, _ = load_prompt_model(str(folder), cfg)
    _check_vocab(net, tok, label_ids, str(folder))
    examples = t.splits[split]
    rows, report = encode_prompts(examples, tok, tpl, {lab: i for i, lab in enumerate(t.labels)}, cfg.max_len)
    probs = _probabilities(net, tok, label_ids, rows, batch_size)
    head = ClassificationHead(t)
    preds = [head.labels[int(np.argmax(p))] for p in probs]
    out_file = Path(out_file) if out_file else folder / f"{t.name}_predict.jsonl"
    head.write_submission(out_file, examples, preds)
    res = {"file": str(out_file), "examples": len(examples), "task": t.name, "split": split, "backend": "torch",
           "encode": report}
    if examples and all(e.label is not None for e in examples):
        res["scores"] = head.score(examples, preds)
    return res


def format_prompt_scores(r: dict) -> str:
    """One line for the console from :func:`prompt_finetune`'s or :func:`evaluate_prompt`'s result: the
    scores, and how many texts were cut to ``max_len`` (the template never is)."""
    if "dev" in r:
        scores, reports = r["dev"], r.get("encode") or {}
    else:
        scores, reports = r["scores"], {r.get("split", "dev"): r.get("encode") or {}}
    line = format_scores(scores)
    cut = {s: v.get("truncated_to_max_len", 0) for s, v in reports.items() if v.get("truncated_to_max_len")}
    if cut:
        line += "; texts cut to max_len: " + ", ".join(f"{s} {n}" for s, n in cut.items())
    return line


__all__ = ["FORMAT", "PromptCollator", "PromptConfig", "PromptObjective", "Template", "encode_prompts",
           "evaluate_prompt", "format_prompt_scores", "label_scores", "load_prompt_model", "match_labels",
           "parse_template", "parse_verbalizer", "predict_task", "prompt_finetune", "prompt_predict", "sample_examples",
           "verbalizer_token_ids"]
