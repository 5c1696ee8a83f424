"""Fine-tuning (classification): runs in the one loop, beats the majority class, loads without qingbert."""

import json
from collections import Counter

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from qingbert import builtin
from qingbert.errors import QingbertError
from qingbert.finetune import finetune
from qingbert.vocab import load_tokenizer

from .conftest import run_without_qingbert


@pytest.fixture(scope="module")
def tiny_model(small_prepared, tmp_path_factory):
    torch.manual_seed(0)
    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    folder = tmp_path_factory.mktemp("tiny") / "model"
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_sentiment_finetune_beats_majority_and_loads_without_qingbert(tiny_model, tmp_path):
    out = tmp_path / "ft"
    r = finetune(str(tiny_model), "builtin:reviews-sentiment", out, max_len=64,
                 config={"max_steps": 120, "batch_size": 32, "lr": 2e-3, "save_every": 0, "log_every": 20,
                         "progress": False, "threads": 1})
    dev = builtin.reviews("dev")
    majority = Counter(lab for _, lab in dev).most_common(1)[0][1] / len(dev)
    assert r["dev"]["examples"] == len(dev)
    assert r["dev"]["accuracy"] > majority + 0.05, (r["dev"], majority)
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"] == ["negative", "positive"] and m["task_type"] == "classification"
    code = f"""
from transformers import AutoModelForSequenceClassification, BertTokenizer
m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})
assert m.config.id2label == {{0: "negative", 1: "positive"}}, m.config.id2label
t = BertTokenizer.from_pretrained({str(out)!r})
logits = m(**t(["质量很好，非常满意"], return_tensors="pt")).logits
assert logits.shape == (1, 2)
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_finetune_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(QingbertError, match="did you mean"):
        finetune(str(tiny_model), "builtin:reviews-sentimnt", tmp_path / "o")
    with pytest.raises(QingbertError, match="not implemented yet"):
        finetune(str(tiny_model), "builtin:peoples-daily-ner", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QingbertError):
        finetune(str(tmp_path / "empty"), "builtin:reviews-sentiment", tmp_path / "o")
