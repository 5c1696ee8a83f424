"""MacBERT: n-gram similar-word masking statistics, the similar-word table, SOP, and training through the loop."""

import json

import numpy as np
import pytest
import torch

from qingbert.errors import QingbertError
from qingbert.pretraining.macbert import (
    FORMAT,
    MacBERTCollator,
    MacBERTConfig,
    SimilarWords,
    build_similar_words,
    load_similar_words,
    macbert_mask,
    make_objective,
    pretraining_loss,
    sop_example,
    to_pretraining_model,
)
from qingbert.pretraining.mlm import IGNORE, WWMCollator

TINY = {"overrides": {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
        "batch_size": 8, "max_steps": 2, "lr": 1e-3, "log_every": 1, "eval_batches": 1, "save_every": 0,
        "progress": False, "threads": 1, "warmup_ratio": 0.0}
CLS, SEP, PAD, MASK = 2, 3, 0, 4
INFO = {"pad_id": PAD, "mask_id": MASK, "special_ids": [0, 1, 2, 3, 4], "vocab_size": 5000}
SHIFT = 2000  # synthetic words use ids 100..999, their similar words the same ids + SHIFT


def synthetic_sequence(rng, n_texts=3, words_per_text=60):
    """``[CLS] text [SEP] text [SEP] ...`` of words of 1-3 tokens (ids 100..999), with its word ids."""
    ids, wid, w = [CLS], [-1], 0
    for _ in range(n_texts):
        for _ in range(words_per_text):
            n = int(rng.integers(1, 4))
            ids += rng.integers(100, 1000, size=n).tolist()
            wid += [w] * n
            w += 1
        ids.append(SEP)
        wid.append(-1)
    return np.array(ids), np.array(wid)


def synthetic_table(sequences, coverage=1.0):
    """Two same-length candidates (the word's ids + SHIFT, + 2 * SHIFT) for ``coverage`` of the words."""
    table = {}
    for ids, wid in sequences:
        for w in np.unique(wid[wid >= 0]):
            word = tuple(int(x) for x in ids[wid == w])
            if (hash(word) % 1000) / 1000 < coverage:
                table[word] = [tuple(x + SHIFT for x in word), tuple(x + 2 * SHIFT for x in word)]
    return SimilarWords.from_dict(table)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    seqs = [synthetic_sequence(rng) for _ in range(300)]
    return seqs, synthetic_table(seqs)


@pytest.fixture(scope="module")
def similar_dir(small_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("similar") / "table"
    report = build_similar_words(small_prepared, out, dim=16, min_count=3, top_k=5, epochs=2, max_sequences=1000,
                                 workers=1)
    return out, report


def test_masking_statistics(synthetic):
    seqs, table = synthetic
    pool = np.arange(5, 5000)
    cfg = MacBERTConfig()
    ngrams, kinds, chosen_tokens, real_tokens = np.zeros(4), {"similar": 0, "random": 0, "kept": 0}, 0, 0
    for i, (ids, wid) in enumerate(seqs):
        out, labels, counts = macbert_mask(ids, wid, np.random.default_rng([1, 0, i]), cfg, table, pool)
        sel = labels != IGNORE
        assert len(out) == len(ids), "replacements keep the sequence length"
        assert not sel[wid < 0].any() and (out[wid < 0] == ids[wid < 0]).all(), "specials are never chosen"
        assert (labels[sel] == ids[sel]).all(), "labels are the original ids at every chosen position"
        assert (out[~sel] == ids[~sel]).all(), "nothing else changes"
        assert not (out == MASK).any(), "MacBERT never shows [MASK]"
        for g in counts["ngrams"]:
            ngrams[g - 1] += 1
        for w in np.unique(wid[sel]):
            pos = wid == w
            assert sel[pos].all(), "whole words"
            word, got = tuple(ids[pos].tolist()), tuple(out[pos].tolist())
            if got == word:
                kinds["kept"] += 1
            elif got in [tuple(c.tolist()) for c in table.candidates(word)]:
                kinds["similar"] += 1
            else:
                kinds["random"] += 1
        assert counts["similar"] + counts["random"] + counts["kept"] + counts["fallback"] == len(np.unique(wid[sel]))
        assert counts["fallback"] == 0
        chosen_tokens += int(sel.sum())
        real_tokens += int((wid >= 0).sum())
    share = ngrams / ngrams.sum()
    assert np.abs(share - [0.4, 0.3, 0.2, 0.1]).max() < 0.025, share
    assert abs(chosen_tokens / real_tokens - 0.15) < 0.005
    n = sum(kinds.values())
    assert abs(kinds["similar"] / n - 0.8) < 0.015
    assert abs(kinds["random"] / n - 0.1) < 0.015
    assert abs(kinds["kept"] / n - 0.1) < 0.015


def test_fallback_is_counted_and_keeps_alignment(synthetic):
    seqs, _ = synthetic
    half = synthetic_table(seqs, coverage=0.5)
    col = MacBERTCollator(INFO, half, MacBERTConfig(), seed=3)
    examples = [{"input_ids": ids, "word_ids": wid, "index": i} for i, (ids, wid) in enumerate(seqs[:100])]
    batch = col(examples)
    st = col.stats
    meant = st["similar"] + st["similar_fallback"]
    assert abs(meant / st["words_chosen"] - 0.8) < 0.03
    assert 0.3 < st["similar_fallback"] / meant < 0.7, "about half the words have no candidate"
    assert batch["similar_fallbacks"] == st["similar_fallback"]
    assert sum(st["ngrams"]) > 0 and st["tokens_chosen"] == int((batch["labels"] != IGNORE).sum())
    # with no candidates at all every similar word falls back to random tokens of its own length
    empty = SimilarWords.from_dict({})
    ids, wid = seqs[0]
    out, labels, c = macbert_mask(ids, wid, np.random.default_rng(0), MacBERTConfig(similar_ratio=1.0,
                                                                                    random_ratio=0.0), empty,
                                  np.arange(5, 5000))
    assert c["similar"] == 0 and c["fallback"] == len(np.unique(wid[labels != IGNORE]))
    assert len(out) == len(ids) and (out[labels == IGNORE] == ids[labels == IGNORE]).all()


def test_masking_is_a_function_of_seed_epoch_index(synthetic):
    seqs, table = synthetic
    examples = [{"input_ids": ids, "word_ids": wid, "index": i} for i, (ids, wid) in enumerate(seqs[:16])]

    def collate(exs, epoch=0, seed=0, sop=True):
        col = MacBERTCollator(INFO, table, MacBERTConfig(sop=sop), seed=seed)
        col.epoch = epoch
        return col(exs)

    a, b = collate(examples), collate(examples)
    for k in ("input_ids", "labels", "token_type_ids", "sop_labels"):
        assert torch.equal(a[k], b[k])
    rev = collate(examples[::-1])  # another batch composition: the same masks per example
    assert torch.equal(rev["input_ids"].flip(0), a["input_ids"]) and torch.equal(rev["labels"].flip(0), a["labels"])
    assert not torch.equal(collate(examples, epoch=1)["labels"], a["labels"])
    assert not torch.equal(collate(examples, seed=1)["labels"], a["labels"])
    # SOP draws from its own stream: turning it off leaves the masks of unswapped sequences as they were
    plain = collate(examples, sop=False)
    in_order = a["sop_labels"] == 0
    assert in_order.any() and torch.equal(plain["labels"][in_order], a["labels"][in_order])


def test_sop_on_a_hand_made_sequence():
    #           [CLS] a  a  [SEP] b  b  b  [SEP] c  [SEP]
    ids = np.array([CLS, 10, 11, SEP, 20, 21, 22, SEP, 30, SEP])
    wid = np.array([-1, 0, 0, -1, 1, 2, 2, -1, 3, -1])
    labels = np.where(wid >= 0, ids, IGNORE)
    seen = set()
    for seed in range(64):
        out, w, lab, types, label = sop_example(ids, wid, labels, np.random.default_rng(seed))
        assert sorted(out.tolist()) == sorted(ids.tolist()) and out[0] == CLS and out[-1] == SEP
        assert ((lab == out) | (lab == IGNORE)).all() and (lab[w < 0] == IGNORE).all(), "labels move with tokens"
        first = int(np.flatnonzero(types)[0])  # first token of the second segment
        assert (types[:first] == 0).all() and (types[first:] == 1).all() and out[first - 1] == SEP
        if label == 0:
            assert (out == ids).all() and first in (4, 8)
            seen.add(("in order", first))
        else:
            assert label == 1
            if first == 7:  # A = [CLS] a [SEP], B = b [SEP] c [SEP]
                assert out.tolist() == [CLS, 20, 21, 22, SEP, 30, SEP, 10, 11, SEP]
                assert types.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
            else:  # A = [CLS] a [SEP] b [SEP], B = c [SEP]
                assert first == 3 and out.tolist() == [CLS, 30, SEP, 10, 11, SEP, 20, 21, 22, SEP]
            seen.add(("swapped", first))
    assert seen == {("in order", 4), ("in order", 8), ("swapped", 7), ("swapped", 3)}
    one = np.array([CLS, 10, 11, SEP])
    out, _, _, types, label = sop_example(one, np.array([-1, 0, 0, -1]), np.full(4, IGNORE),
                                          np.random.default_rng(0))
    assert label == IGNORE and (out == one).all() and not types.any()


def test_collator_counts_single_text_sequences(synthetic):
    seqs, table = synthetic
    rng = np.random.default_rng(5)
    examples = [{"input_ids": ids, "word_ids": wid, "index": i}
                for i, (ids, wid) in enumerate([synthetic_sequence(rng, n_texts=1, words_per_text=20)] * 3
                                               + seqs[:5])]
    col = MacBERTCollator(INFO, table, MacBERTConfig(sop=True))
    batch = col(examples)
    assert (batch["sop_labels"][:3] == IGNORE).all() and (batch["sop_labels"][3:] != IGNORE).all()
    assert col.stats["sop_single_text"] == 3 and col.stats["sop_swapped"] + col.stats["sop_in_order"] == 5
    assert not batch["token_type_ids"][:3].any() and batch["token_type_ids"].shape == batch["input_ids"].shape


def test_build_similar_words_same_length_and_loads(similar_dir, small_prepared):
    from qingbert.models.loading import load_tokenizer

    out, report = similar_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == FORMAT == report["format"] and (out / "table.npz").exists()
    assert report["words_with_candidates"] > 100
    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    table = load_similar_words(out, tok)
    assert len(table) == report["words_stored"]
    checked = 0
    for length, words in table.words.items():
        for w in words[:50]:
            cands = table.candidates(w)
            assert cands.shape[1] == len(w) == length, "candidates have the word's token count"
            assert not (cands == w).all(axis=1).any(), "a word is not its own candidate"
            assert not (cands == tok.unk_token_id).any()
            checked += len(cands)
    assert checked > 0
    with np.load(out / "table.npz", allow_pickle=False) as z:  # plain arrays: loads without pickle
        assert all(z[k].dtype != object for k in z.files)


def test_load_errors(similar_dir, tmp_path):
    from qingbert.models.tokenizer import make_tokenizer

    out, _ = similar_dir
    other = make_tokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "的", "了"])})
    with pytest.raises(QingbertError, match="another vocabulary"):
        load_similar_words(out, other)
    with pytest.raises(QingbertError, match="no such similar-word folder") as e:
        load_similar_words(tmp_path / "missing")
    assert "qingbert similar-words" in e.value.hint
    (tmp_path / "junk").mkdir()
    with pytest.raises(QingbertError, match="not a similar-word table"):
        load_similar_words(tmp_path / "junk")


def _cfg(**kw):
    from qingbert.pretraining.pretrain import PretrainConfig

    return PretrainConfig.from_dict({**TINY, **kw})


def test_bad_options_fail_before_training(small_prepared, similar_dir, tmp_path):
    from qingbert.pretraining.pretrain import open_data

    _, _, tok, _ = open_data(small_prepared)
    cfg = _cfg()
    with pytest.raises(QingbertError, match="similar-word table") as e:
        make_objective("minirbt-h256", tok, cfg, {"sop": True}, small_prepared)
    assert f"qingbert similar-words {small_prepared} --out DIR" in e.value.hint
    with pytest.raises(QingbertError, match="does not exist") as e:
        make_objective("minirbt-h256", tok, cfg, {"similar_words": str(tmp_path / "nope")}, small_prepared)
    assert "qingbert similar-words" in e.value.hint
    with pytest.raises(QingbertError, match="unknown macbert option.*similarwords"):
        make_objective("minirbt-h256", tok, cfg, {"similarwords": "x"}, small_prepared)
    path = str(similar_dir[0])
    for bad in ({"ngram_probs": [0.5, 0.6]}, {"similar_ratio": 0.95}, {"sop": "yes"}):
        with pytest.raises(QingbertError):
            make_objective("minirbt-h256", tok, cfg, {"similar_words": path, **bad}, small_prepared)
    with pytest.raises(QingbertError, match="document_mask"):
        make_objective("minirbt-h256", tok, _cfg(document_mask=True), {"similar_words": path, "sop": True},
                       small_prepared)


@pytest.mark.parametrize("sop", [False, True])
def test_training_steps_and_saved_model_loads(small_prepared, similar_dir, tmp_path, sop):
    from transformers import AutoModelForMaskedLM

    from qingbert.pretraining.pretrain import open_data, train_and_save
    from qingbert.training.loop import Trainer

    train_ds, eval_ds, tok, _ = open_data(small_prepared)
    cfg = _cfg(train_dropout=0.0)
    objective, collate, eval_collate, info = make_objective("minirbt-h256", tok, cfg,
                                                            {"similar_words": str(similar_dir[0]), "sop": sop},
                                                            small_prepared)
    plain = eval_collate.base if sop else eval_collate
    assert type(plain) is WWMCollator and plain.cfg.mlm_probability == 0.15
    assert info["macbert"]["sop"] is sop and info["config_updates"]
    trainer = Trainer(objective, train_ds, collate, tmp_path, cfg.train, eval_data=eval_ds, eval_collate=eval_collate)
    before, after, history, final = train_and_save(trainer, tok, tmp_path, False,
                                                   config_updates=info["config_updates"])
    losses = [h["loss"] for h in history if h["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and np.isfinite(after["loss"])
    last = [h for h in history if h["split"] == "train"][-1]
    assert ("sop_accuracy" in last) is sop and 0 <= last.get("sop_accuracy", 0) <= 1
    assert ("sop_accuracy" in after) is sop and 0 <= after.get("sop_accuracy", 0) <= 1  # held out, too
    if sop:  # the held-out draw is the same every evaluation, and both orders occur
        examples = [{**eval_ds[i], "index": i} for i in range(min(16, len(eval_ds)))]
        a, b = eval_collate(examples), eval_collate(examples)
        assert torch.equal(a["sop_labels"], b["sop_labels"]) and torch.equal(a["input_ids"], b["input_ids"])
        assert {0, 1} <= set(a["sop_labels"].tolist())
        swapped = int(torch.nonzero(a["sop_labels"] == 1)[0])
        assert a["token_type_ids"][swapped].max() == 1 and a["token_type_ids"][swapped, 0] == 0
    assert info["collator_stats"]["sequences"] >= 16 and info["collator_stats"]["words_chosen"] > 0
    loss, metrics = objective(collate([{**train_ds[i], "index": i} for i in range(8)]))
    assert torch.isfinite(loss) and ("sop_accuracy" in metrics) is sop
    assert type(final).__name__ == ("BertForPreTraining" if sop else "BertForMaskedLM")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "BertForMaskedLM"
    final.eval()
    x = torch.tensor([train_ds[0]["input_ids"]])
    with torch.no_grad():
        ours = final(input_ids=x)
        ours = ours.prediction_logits if sop else ours.logits
        assert torch.allclose(loaded(input_ids=x).logits, ours, atol=1e-5)


def test_sop_loss_with_single_text_batch_and_head_transfer():
    from transformers import BertConfig, BertForMaskedLM, ElectraConfig, ElectraForMaskedLM

    torch.manual_seed(0)
    net = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)).eval()
    model, info = to_pretraining_model(net)
    model.eval()
    x = torch.randint(5, 50, (2, 6))
    assert info["sop_head"] == "random"
    assert torch.equal(model(input_ids=x).prediction_logits, net(input_ids=x).logits)
    labels = torch.full((2, 6), IGNORE)
    labels[:, 2] = x[:, 2]
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels,
             "token_type_ids": torch.zeros_like(x), "sop_labels": torch.tensor([IGNORE, IGNORE])}
    loss, m = pretraining_loss(model, batch)
    assert torch.isfinite(loss) and m["sop_count"] == 0
    loss.backward()
    assert model.cls.seq_relationship.weight.grad is not None
    electra = ElectraForMaskedLM(ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=16,
                                               num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(QingbertError, match="BERT-layout"):
        to_pretraining_model(electra)


def test_cli_builds_and_refuses_to_overwrite(small_prepared, tmp_path, capsys):
    from qingbert.cli.main import build_parser

    parser = build_parser()
    argv = ["similar-words", str(small_prepared), "--out", str(tmp_path / "t"), "--dim", "8", "--min-count", "2",
            "--top-k", "3", "--epochs", "1", "--max-sequences", "300", "--workers", "1"]
    args = parser.parse_args(argv)
    assert args.run(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_similar_words(tmp_path / "t").manifest["settings"]["top_k"] == 3
    with pytest.raises(QingbertError, match="not empty"):
        args.run(args)
    args = parser.parse_args(argv + ["--overwrite"])
    assert args.run(args) == 0
