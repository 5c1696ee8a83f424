"""Character-level BIO NER: windows, labels, decoding back to character offsets, exact in-loop entity F1."""

import json

import numpy as np
import pytest
import torch

from qingbert.errors import QingbertError
from qingbert.finetune import NERHead, finetune, run_model
from qingbert.ner import NERCollator, NERObjective, bio_labels, decode_ner, encode_ner, score_ner
from qingbert.tasks import SpanExample, load_task
from qingbert.vocab import load_tokenizer

from .conftest import run_without_qingbert

TAGS = bio_labels(["LOC", "PER"])


def _ex(i, text, *ents):
    spans = []
    for word, typ in ents:
        s = text.index(word)
        spans.append((s, s + len(word), typ))
    return SpanExample(i, text, spans)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def examples():
    long = "，".join(["今天的天气很好"] * 12) + "，张三去了北京。"  # ~100 chars: several 30-char windows
    cut = "一" * 27 + "欧阳修文" + "好"  # 欧阳修文 starts at 27: a 30-char window cuts it (no punctuation)
    return [
        _ex(0, "李明住在上海市。", ("李明", "PER"), ("上海市", "LOC")),
        _ex(1, "ＡＢ公司的王芳去了Ｎｅｗ Ｙｏｒｋ。", ("王芳", "PER"), ("Ｎｅｗ Ｙｏｒｋ", "LOC")),
        _ex(2, long, ("张三", "PER"), ("北京", "LOC")),
        _ex(3, cut, ("欧阳修文", "PER")),
        _ex(4, "没有实体的句子"),
    ]


def _oracle_logits(ds):
    out = []
    for labels in ds["labels"]:
        x = np.zeros((len(labels), len(TAGS)), dtype=np.float32)
        for i, lab in enumerate(labels):
            x[i, lab if lab >= 0 else 0] = 5.0
        out.append(x)
    return out


def test_windows_labels_and_round_trip(tok, examples):
    ds, report = encode_ner(examples, tok, TAGS, max_len=32)
    assert all(len(ids) <= 32 for ids in ds["input_ids"])
    assert report["long_examples_split"] == 2 and report["entities_cut_by_window"] == 1
    # windows partition each text: every character is labelled exactly once (spaces give no token)
    for ei, ex in enumerate(examples):
        chars = sorted(c for row, e in zip(ds["char_index"], ds["example"]) if e == ei for c in row if c >= 0)
        assert chars == [i for i, ch in enumerate(ex.text) if ch not in " 　"]
    # the long text is cut right after punctuation
    starts = [o for o, e in zip(ds["offset"], ds["example"]) if e == 2]
    assert all(examples[2].text[s - 1] == "，" for s in starts[1:])
    spans = decode_ner(_oracle_logits(ds), ds, examples, TAGS)
    for ex, pred in zip(examples, spans):
        # the cut entity cannot come back whole: its two halves are wrong predictions, the entity a miss
        expected = set(ex.entities) if ex.id != 3 else {(27, 30, "PER"), (30, 31, "PER")}
        assert pred == expected, (ex.text, pred)
    assert examples[1].text[slice(*sorted(spans[1])[1][:2])] == "Ｎｅｗ Ｙｏｒｋ"
    s = score_ner(examples, spans)
    assert s["precision"] == pytest.approx(100 * 6 / 8) and s["recall"] == pytest.approx(100 * 6 / 7)
    assert s["metric"] == "f1" and s["per_type"]["LOC"]["f1"] == 100


def test_in_loop_counts_equal_example_level_scores(tok, examples):
    ds, _ = encode_ner(examples, tok, TAGS, max_len=32)
    torch.manual_seed(0)
    from transformers import BertConfig, BertForTokenClassification

    model = BertForTokenClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=64,
                                                  num_labels=len(TAGS))).eval()
    with torch.no_grad():  # a random model tags a few entities by chance; make it a bit more likely
        model.classifier.bias[1:] += 1.5
    obj = NERObjective(model, TAGS)
    coll = NERCollator(tok.pad_token_id)
    totals: dict = {}
    with torch.no_grad():
        for lo in range(0, len(ds), 3):
            rows = ds[lo:lo + 3]
            out = obj.evaluate_batch(coll([dict(zip(rows, v)) for v in zip(*rows.values())]))
            assert set(out) == {"loss_sum", "tokens", "correct", "tp", "predicted", "gold"}
            for k, v in out.items():
                totals[k] = totals.get(k, 0) + v
    in_loop = obj.summarize(totals)
    logits = run_model(model, ds, coll, ("logits",), token_level=True)["logits"]
    s = score_ner(examples, decode_ner(logits, ds, examples, TAGS))
    assert totals["predicted"] > 0
    assert 100 * in_loop["f1"] == pytest.approx(s["f1"]) and 100 * in_loop["recall"] == pytest.approx(s["recall"])


def test_unknown_entity_type_is_an_error(tok):
    with pytest.raises(QingbertError, match="entity type 'ORG'"):
        encode_ner([SpanExample(7, "新华社报道", [(0, 3, "ORG")])], tok, TAGS, max_len=16)


def test_overlapping_entities_are_counted_not_lost(tok):
    ex = SpanExample(0, "北京大学很好", [(0, 2, "LOC"), (0, 4, "LOC")])
    _, report = encode_ner([ex], tok, TAGS, max_len=16)
    assert report["overlapping_or_invalid_entities"] == 1


def test_finetune_peoples_daily_ner_learns_and_loads_without_qingbert(tiny_model, tmp_path):
    out = tmp_path / "ner"
    r = finetune(str(tiny_model), "builtin:peoples-daily-ner", out, max_len=64,
                 config={"max_steps": 150, "batch_size": 32, "lr": 3e-3, "save_every": 0, "progress": False,
                         "threads": 1, "max_train_examples": 3000})
    dev = r["dev"]
    assert dev["examples"] == len(load_task("builtin:peoples-daily-ner").splits["dev"])
    assert set(dev["per_type"]) == {"LOC", "ORG", "PER"}
    assert dev["f1"] > 5, dev  # measured 11 after these 150 steps; an untrained tagger scores ~0
    m = json.loads((out / "manifest.json").read_text())
    assert m["labels"] == NERHead(load_task("builtin:peoples-daily-ner")).labels
    first = json.loads((out / "predictions-dev.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "label", "gold"}
    code = f"""
from transformers import AutoModelForTokenClassification
m = AutoModelForTokenClassification.from_pretrained({str(out)!r})
assert m.config.id2label[0] == "O" and "B-PER" in m.config.label2id
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
