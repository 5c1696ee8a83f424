"""Vocabulary pruning: smaller vocab, same ids (mapped) and same outputs on the corpus, plain-transformers folder."""

import json
import textwrap

import numpy as np
import pytest
import torch

from qingbert.cli.deploy import run_prune_vocab
from qingbert.cli.main import build_parser
from qingbert.data import builtin
from qingbert.data.text import clean_text
from qingbert.deploy.prune import _specials, _tried_pieces, prune_summary, prune_vocab, read_keep
from qingbert.errors import QingbertError

from .conftest import run_without_qingbert

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
# as read (full-width letters, an ideographic space): the tokens of both this form and the cleaned one are kept
RAW_LINES = ["ＡＢＣ手机　很好用！", "质量不错，Ｗｉｆｉ信号稳定"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """A few hundred built-in reviews (dev split) as a .txt file, plus lines that clean-up changes."""
    lines = [t for t, _ in builtin.reviews("dev")[:300]] + RAW_LINES
    path = tmp_path_factory.mktemp("prune-corpus") / "reviews.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _save(model, tokenizer, folder):
    from qingbert.models.tokenizer import save_tokenizer

    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def mlm_dir(tiny_tokenizer_dir, tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    from qingbert.models.loading import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_tokenizer_dir))
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), **TINY))
    return _save(model, tok, tmp_path_factory.mktemp("prune-mlm") / "model")


@pytest.fixture(scope="module")
def pruned(mlm_dir, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune-out") / "pruned"
    return out, prune_vocab(str(mlm_dir), [str(corpus_file)], out, progress=False)


def _texts(corpus_file):
    lines = corpus_file.read_text(encoding="utf-8").splitlines()
    return lines[:24] + RAW_LINES + [clean_text(t) for t in RAW_LINES]


def test_vocab_is_smaller_and_specials_keep_their_place(pruned, mlm_dir):
    from transformers import AutoConfig, AutoTokenizer

    out, r = pruned
    old, new = AutoTokenizer.from_pretrained(str(mlm_dir)), AutoTokenizer.from_pretrained(str(out))
    assert r["vocab_size"]["before"] == len(old) > 5000
    assert r["vocab_size"]["after"] == len(new) == AutoConfig.from_pretrained(str(out)).vocab_size < len(old)
    assert r["tokens_dropped"] == len(old) - len(new)
    for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert t in new.get_vocab()
    assert new.pad_token_id == 0 == AutoConfig.from_pretrained(str(out)).pad_token_id
    assert [new.convert_ids_to_tokens(i) for i in range(5)] == [old.convert_ids_to_tokens(i) for i in range(5)]
    kept = r["kept_old_ids"]
    assert kept == sorted(kept) and len(kept) == len(new)
    assert all(new.convert_ids_to_tokens(n) == old.convert_ids_to_tokens(o) for n, o in enumerate(kept))
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines()[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert r["parameters"]["after"] < r["parameters"]["before"]
    assert r["file_bytes"]["after"] < r["file_bytes"]["before"]
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == "qingbert.model/1" and m["stage"] == "prune-vocab" and m["source_model"] == str(mlm_dir)
    assert m["prune"]["vocab_size"] == r["vocab_size"] and m["prune"]["corpus"] == r["corpus"]
    assert "kept_old_ids" not in m["prune"]
    s = prune_summary(r)
    assert f"{len(old):,} ->" in s and "MB" in s and "[UNK]" in s


def test_ids_and_outputs_on_the_corpus_are_unchanged(pruned, mlm_dir, corpus_file):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, r = pruned
    kept = torch.tensor(r["kept_old_ids"])
    old_tok, new_tok = AutoTokenizer.from_pretrained(str(mlm_dir)), AutoTokenizer.from_pretrained(str(out))
    lines = corpus_file.read_text(encoding="utf-8").splitlines()
    lines += [clean_text(t) for t in RAW_LINES]
    old_map = torch.full((len(old_tok),), -1, dtype=torch.long)
    old_map[kept] = torch.arange(len(kept))
    for a, b in zip(old_tok(lines)["input_ids"], new_tok(lines)["input_ids"]):
        assert old_map[torch.tensor(a)].tolist() == b
    texts = _texts(corpus_file)
    a = old_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    b = new_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    old_m, new_m = AutoModelForMaskedLM.from_pretrained(str(mlm_dir)), AutoModelForMaskedLM.from_pretrained(str(out))
    with torch.no_grad():
        x, y = old_m(**a, output_hidden_states=True), new_m(**b, output_hidden_states=True)
    for hx, hy in zip(x.hidden_states, y.hidden_states):
        torch.testing.assert_close(hx, hy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.logits[..., kept], y.logits, atol=1e-5, rtol=1e-5)
    assert r["verified"]["parity"]["texts"] > 0 and r["verified"]["tokenizer_texts"] > 300
    # the UNK rate is counted on the corpus as qingbert reads it (cleaned)
    clean = [clean_text(t) for t in corpus_file.read_text(encoding="utf-8").splitlines()]
    unk = r["corpus_stats"]["unk_tokens"]
    assert sum(ids.count(new_tok.unk_token_id) for ids in new_tok(clean, add_special_tokens=False)["input_ids"]) == unk
    assert r["corpus_stats"]["tokens"] == sum(len(ids) for ids in old_tok(clean, add_special_tokens=False)["input_ids"])


def test_pruned_folder_loads_without_qingbert(pruned, mlm_dir, corpus_file, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, r = pruned
    texts = _texts(corpus_file)[:6]
    code = textwrap.dedent(f"""
        import json, numpy as np, torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer, BertTokenizer
        texts = json.loads({json.dumps(json.dumps(texts, ensure_ascii=False))})
        tok = AutoTokenizer.from_pretrained({str(out)!r})
        slow_vocab = BertTokenizer(vocab={{l: i for i, l in enumerate(open({str(out / 'vocab.txt')!r},
                                   encoding='utf-8').read().splitlines())}})
        assert slow_vocab(texts)["input_ids"] == tok(texts)["input_ids"]
        m = AutoModelForMaskedLM.from_pretrained({str(out)!r}).eval()
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            np.save({str(tmp_path / 'logits.npy')!r}, m(**enc).logits.numpy())
        print("ok")
    """)
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    old_tok = AutoTokenizer.from_pretrained(str(mlm_dir))
    with torch.no_grad():
        want = AutoModelForMaskedLM.from_pretrained(str(mlm_dir))(**old_tok(texts, padding=True,
                                                                             return_tensors="pt")).logits
    got = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(want[..., r["kept_old_ids"]].numpy(), got, atol=1e-5, rtol=1e-5)


def test_classification_folder_keeps_its_manifest(tiny_tokenizer_dir, corpus_file, tmp_path):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    from qingbert.manifest import write_manifest
    from qingbert.models.loading import load_tokenizer

    torch.manual_seed(1)
    tok = load_tokenizer(str(tiny_tokenizer_dir))
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tok), num_labels=2, **TINY))
    src = _save(model, tok, tmp_path / "clf")
    write_manifest(src, {"format": "qingbert.finetuned/1", "stage": "finetune", "task": "builtin:reviews-sentiment",
                         "task_type": "classification", "labels": ["negative", "positive"]})
    (src / "onnx").mkdir()
    r = prune_vocab(str(src), [str(corpus_file)], tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert r["model_class"] == "BertForSequenceClassification"
    assert r["remapped_weights"] == ["bert.embeddings.word_embeddings.weight"]
    assert not (out / "onnx").exists()
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == "qingbert.finetuned/1" and m["task_type"] == "classification"
    assert m["labels"] == ["negative", "positive"] and m["stage"] == "prune-vocab" and m["source_stage"] == "finetune"
    texts = _texts(corpus_file)
    old_tok, new_tok = AutoTokenizer.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        x = AutoModelForSequenceClassification.from_pretrained(str(src))(
            **old_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
        y = AutoModelForSequenceClassification.from_pretrained(str(out))(
            **new_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    torch.testing.assert_close(x.logits, y.logits, atol=1e-5, rtol=1e-5)


def test_cli_keeps_user_tokens_with_min_count(pruned, mlm_dir, corpus_file, tmp_path, capsys):
    """``qingbert prune-vocab`` (through the command line's parser): --keep file tokens survive even unused, unknown ones are
    reported, --min-count drops rare corpus tokens."""

    from transformers import AutoTokenizer

    out, r = pruned
    old = AutoTokenizer.from_pretrained(str(mlm_dir))
    kept = set(r["kept_old_ids"])
    dropped = [t for t, i in sorted(old.get_vocab().items(), key=lambda kv: kv[1]) if i not in kept]
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text(f"{dropped[0]}\n\n{dropped[1]}\nNOT-A-TOKEN\n", encoding="utf-8")
    args = build_parser().parse_args(["prune-vocab", str(mlm_dir), "--corpus", str(corpus_file), "--out", str(tmp_path / "o"),
                              "--keep", str(keep_file), "--min-count", "3"])
    assert args.run is run_prune_vocab and args.run(args) == 0
    printed = capsys.readouterr().out
    assert f"vocab: {len(old):,} ->" in printed and "NOT-A-TOKEN" in printed and "min-count 3" in printed
    new = AutoTokenizer.from_pretrained(str(tmp_path / "o"))
    assert dropped[0] in new.get_vocab() and dropped[1] in new.get_vocab()
    r2 = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))["prune"]
    assert r2["kept_by_user"] == dropped[:2] == r2["kept_by_user_only"] and r2["keep_unknown"] == ["NOT-A-TOKEN"]
    assert r2["dropped_rare"]["tokens"] > 0 and r2["vocab_size"]["after"] < r["vocab_size"]["after"]
    assert read_keep(f"{dropped[0]}, {dropped[1]},") == dropped[:2] == read_keep(dropped[:2])


def test_unk_words_stay_unk(tmp_path):
    """'xyz' is [UNK] (xy, then no ##z); with xy dropped the greedy search would spell it x ##yz instead."""
    from transformers import BertConfig, BertForMaskedLM

    from qingbert.data.vocab import SPECIALS
    from qingbert.models.loading import load_tokenizer
    from qingbert.models.tokenizer import make_tokenizer

    vocab = {t: i for i, t in enumerate(SPECIALS + ["x", "xy", "a", "##yz", "b", "##y"])}
    assert _tried_pieces("xyz", vocab, "##", 100) == ["xy"]
    torch.manual_seed(0)
    src = _save(BertForMaskedLM(BertConfig(vocab_size=len(vocab), **TINY)), make_tokenizer(vocab), tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("xyz x ayz\n", encoding="utf-8")
    r = prune_vocab(str(src), [str(corpus)], tmp_path / "out", progress=False)
    new = load_tokenizer(str(tmp_path / "out"))
    assert "xy" in new.get_vocab() and "b" not in new.get_vocab() and r["kept_for_unk_words"] == 1
    assert new.convert_ids_to_tokens(new("xyz")["input_ids"]) == ["[CLS]", "[UNK]", "[SEP]"]


def test_bad_input_is_a_clear_error(mlm_dir, corpus_file, tmp_path):
    import shutil

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(QingbertError, match="empty.txt.*no text"):
        prune_vocab(str(mlm_dir), [str(empty)], tmp_path / "o1", progress=False)
    assert not (tmp_path / "o1").exists()
    bare = tmp_path / "bare"
    shutil.copytree(mlm_dir, bare)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (bare / f).unlink(missing_ok=True)
    with pytest.raises(QingbertError, match="no tokenizer"):
        prune_vocab(str(bare), [str(corpus_file)], tmp_path / "o2", progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(QingbertError, match="not empty.*--overwrite"):
        prune_vocab(str(mlm_dir), [str(corpus_file)], busy, progress=False)
    with pytest.raises(QingbertError, match="not a model folder"):
        prune_vocab(str(mlm_dir), [str(corpus_file)], busy, overwrite=True, progress=False)
    assert (busy / "notes.txt").exists()
    with pytest.raises(QingbertError, match="min_count"):
        prune_vocab(str(mlm_dir), [str(corpus_file)], tmp_path / "o3", min_count=0)
    with pytest.raises(QingbertError, match="no such --keep file"):
        prune_vocab(str(mlm_dir), [str(corpus_file)], tmp_path / "o3", keep="missing/keep.txt")
    with pytest.raises(QingbertError, match="no such file"):
        prune_vocab(str(mlm_dir), [str(tmp_path / "nope.txt")], tmp_path / "o3", progress=False)

    class Declares:  # a tokenizer whose declared special token has no id in its vocabulary
        all_special_tokens = ["[PAD]", "[FOO]"]
        added_tokens_decoder = {}

    from transformers import BertConfig

    with pytest.raises(QingbertError, match=r"not in its vocabulary: \[FOO\]"):
        _specials(Declares(), BertConfig(vocab_size=3), {"[PAD]": 0, "a": 1, "b": 2})
