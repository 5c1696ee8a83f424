"""``qingbert demo``: the pipeline on the built-in Chinese data, as a recipe (``qingbert run builtin:demo``).

The recipes live in :mod:`qingbert.pipeline.recipes` (``demo.yaml``, ``demo-full.yaml``); the names below are the
longer chain's recipes as Python values, for the benchmarks that rerun parts of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qingbert.pipeline.recipe import load_recipe
from qingbert.pipeline.runner import run_recipe


def demo(out: str | Path = "demo-output", full: bool = False, **options) -> dict:
    """Run ``builtin:demo`` (``full``: ``builtin:demo-full``) into ``out``; returns the run record."""
    return run_recipe("builtin:demo-full" if full else "builtin:demo", out, **options)


_FULL = load_recipe("builtin:demo-full").stages
SOURCES = list(_FULL["corpus"].inputs["sources"])
SEQ_LEN = _FULL["corpus"].options["max_seq_len"]
TEACHER = _FULL["teacher"].inputs["model"]
TEACHER_RECIPE = dict(_FULL["teacher"].options)
FINETUNE_TASKS = [_FULL["teacher-sentiment"].inputs["task"], _FULL["teacher-ner"].inputs["task"]]
FINETUNE_RECIPE = dict(_FULL["teacher-sentiment"].options)
STUDENT = _FULL["student"].inputs["student"]
STUDENT_SHAPE = dict(_FULL["student"].options["overrides"])
GENERAL_DISTILL_RECIPE = {k: v for k, v in _FULL["student"].options.items() if k != "overrides"}
TASK_DISTILL_RECIPE = {k: _FULL["student-sentiment"].options[k] for k in ("temperature", "hard_weight")}


def _latency_ms(model_dir: Path, batch: int = 32, seq: int = 128, repeats: int = 5) -> float:
    """Median forward time of the encoder on a batch x seq block of token ids (torch eager, this machine)."""
    import torch
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(model_dir))
    m.eval()
    ids = torch.randint(5, m.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        m(input_ids=ids)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            m(input_ids=ids)
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))
