"""The task heads by task type.  A head owns everything task-specific: ``encode`` (examples -> rows),
``collator``, ``objective`` (the loss the one loop trains), ``decode`` (model outputs -> predictions), ``score``
(the official metric), ``record`` / ``gold`` (prediction files) and ``write_submission`` (CLUE / CMRC files)."""

from __future__ import annotations

from qingbert.tasks.classification import ClassificationHead
from qingbert.tasks.mrc import MRCHead
from qingbert.tasks.ner import NERHead

HEADS = {"classification": ClassificationHead, "pair": ClassificationHead, "ner": NERHead, "mrc": MRCHead}
