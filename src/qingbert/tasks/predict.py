"""``qingbert predict`` on a task split: a fine-tuned folder labels a task's dev or test split on its fastest
backend and writes the CLUE / CMRC submission file through its head."""

from __future__ import annotations

from pathlib import Path

from qingbert.errors import QingbertError
from qingbert.manifest import FINETUNED_FORMAT, PROMPT_FORMAT, read_manifest
from qingbert.models.backends import open_backend
from qingbert.models.loading import load_tokenizer
from qingbert.tasks import prompt
from qingbert.tasks.finetune import FinetuneConfig, predict_split
from qingbert.tasks.heads import HEADS
from qingbert.tasks.readers import Task, load_task, missing_splits_error


def predict(model: str | Path, task: str, out_file: str | Path | None = None, data_dir: str | None = None,
            split: str = "test", batch_size: int = 64, backend: str | None = None) -> dict:
    """Predict ``split`` of ``task`` with a fine-tuned (or exported) folder; write the CLUE / CMRC submission file.

    ``backend`` (torch, onnx, onnx-int8) defaults to the fastest in the folder (:mod:`qingbert.deploy.inference`).
    Returns ``{"file", "examples", "scores", "backend"}`` (scores only where the split is labelled).
    """
    model = Path(model)
    m = read_manifest(model)
    if m is not None and m.get("format") == PROMPT_FORMAT:  # PET folder: its template and verbaliser label it
        return prompt.predict_task(model, task, out_file, data_dir, split, batch_size)
    if m is None or m.get("format") != FINETUNED_FORMAT:
        raise QingbertError(f"{model}: not a fine-tuned folder (no qingbert fine-tuning manifest)",
                            hint="make one with `qingbert finetune --model M --task T --out DIR`")
    t = task if isinstance(task, Task) else load_task(task, data_dir)
    if t.type != m["task_type"]:
        raise QingbertError(f"{model} was fine-tuned for a {m['task_type']} task ({m['task']}); "
                            f"'{t.name}' is {t.type}")
    if split not in t.splits:
        raise missing_splits_error(t, (split,))
    cfg = FinetuneConfig.from_dict({k: v for k, v in m["config"].items() if k != "train"})
    cfg.train.batch_size = batch_size
    head = HEADS[t.type](t)
    if head.labels and head.labels != m["labels"]:
        if set(head.labels) - set(m["labels"]):
            raise QingbertError(f"task '{t.name}' has labels the model was not trained on: "
                                f"{', '.join(sorted(set(head.labels) - set(m['labels'])))[:200]}")
        head.labels = list(m["labels"])
    if hasattr(head, "types"):
        head.types = [lab[2:] for lab in m["labels"] if lab.startswith("B-")]
    runner = open_backend(model, backend)
    tokenizer = load_tokenizer(str(model))
    if m.get("model_type") == "xlnet":
        tokenizer.padding_side = "left"
    examples = t.splits[split]
    preds, _ = predict_split(runner, head, tokenizer, examples, cfg)
    suffix = ".json" if t.type == "mrc" else ".jsonl"
    out_file = Path(out_file) if out_file else model / f"{t.name}_predict{suffix}"
    head.write_submission(out_file, examples, preds)
    res = {"file": str(out_file), "examples": len(examples), "task": t.name, "split": split, "backend": runner.name}
    labelled = all(head.gold(e) not in (None, []) for e in examples) if t.type != "ner" else split != "test"
    if labelled:
        res["scores"] = head.score(examples, preds)
    return res
