"""Batches for the training loop and for inference: padding rows to tensors, the model inputs of a batch,
in-memory rows, and running a model over a dataset in length-sorted batches."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def pad_rows(rows: list[dict], pad_id: int, side: str = "right", token_labels: str | None = None) -> dict:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` (where the rows have them) padded to the longest
    row, plus the per-token column ``token_labels`` padded with -100; all as tensors."""
    n, length = len(rows), max(len(r["input_ids"]) for r in rows)
    cols = {"input_ids": pad_id, "attention_mask": 0}
    if "token_type_ids" in rows[0]:
        cols["token_type_ids"] = 0
    if token_labels:
        cols[token_labels] = -100
    out = {k: np.full((n, length), v, dtype=np.int64) for k, v in cols.items()}
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        sl = slice(0, k) if side == "right" else slice(length - k, length)
        out["attention_mask"][i, sl] = 1
        for key in cols:
            if key != "attention_mask":
                out[key][i, sl] = r[key]
    return {k: torch.from_numpy(v) for k, v in out.items()}


class PadCollator:
    """Pads tokenized examples to the longest in the batch (on the tokenizer's padding side)."""

    def __init__(self, pad_id: int, side: str = "right"):
        self.pad_id, self.side = pad_id, side

    def __call__(self, examples: list[dict]) -> dict:
        batch = pad_rows(examples, self.pad_id, self.side)
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return batch


class Rows:
    """Columns in memory with the two reads :func:`run_model` makes (``rows["col"]``, ``rows[[i, j]]``): for
    inference on a few texts, where building a ``datasets.Dataset`` per call would cost more than the model."""

    def __init__(self, columns: dict):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        return {k: [v[i] for i in key] for k, v in self.columns.items()}


def module_forward(model, names) -> "Callable[[dict], dict]":
    """``inputs (numpy) -> {name: numpy array}`` for a transformers model (on its device, no grad)."""
    device = next(model.parameters()).device
    model.eval()

    @torch.no_grad()
    def forward(inputs: dict) -> dict:
        res = model(**{k: torch.as_tensor(v).to(device) for k, v in inputs.items()})
        return {n: getattr(res, n).float().cpu().numpy() for n in names}

    return forward


def run_model(model, ds, collate, names, batch_size: int = 64, token_level: bool = False) -> dict:
    """Forward ``ds`` in batches: per row, each output in ``names`` (token-level ones cut to the row's tokens).

    ``model`` is a transformers model or a backend of :mod:`qingbert.deploy.inference` (a callable from numpy inputs to
    numpy outputs).  Rows are batched by length (less padding), and returned in their original order."""
    forward = module_forward(model, names) if isinstance(model, torch.nn.Module) else model
    out: dict = {n: [None] * len(ds) for n in names}
    order = np.argsort([len(x) for x in ds["input_ids"]], kind="stable")
    for lo in range(0, len(ds), batch_size):
        idx = order[lo:lo + batch_size]
        rows = ds[[int(i) for i in idx]]
        examples = [dict(zip(rows, vals)) for vals in zip(*rows.values())]
        batch = collate(examples)
        res = forward({k: v.numpy() for k, v in model_inputs(batch).items()})
        mask = batch["attention_mask"].numpy().astype(bool)
        for n in names:
            x = np.asarray(res[n], dtype=np.float32)
            for j, i in enumerate(idx):
                out[n][i] = x[j][mask[j]] if token_level else x[j]
    return out
