"""Tests for qingbert.models.zoo: registry, analytic parameter counts, building and loading."""

from __future__ import annotations

import json
import time

import pytest
import torch

from qingbert.errors import QingbertError
from qingbert.models import loading, zoo

MINIRBT_TABLE = ["roberta-wwm-ext", "rbt6", "rbt3", "rbt4-h312", "minirbt-h256", "minirbt-h288"]

# A repo id that cannot be in anybody's cache and does not exist on the hub, so
# the "fails with QingbertError" tests hold with or without a network.
MISSING_REPO = "qingbert-tests/no-such-model-7f3a"


def _unique_numel(params) -> int:
    seen = {}
    for p in params:
        seen[id(p)] = p
    return sum(p.numel() for p in seen.values())


def _embedding_numel(model, model_type: str) -> int:
    if model_type == "xlnet":
        return model.word_embedding.weight.numel() + model.mask_emb.numel()
    return _unique_numel(model.embeddings.parameters())


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

def test_zoo_has_the_expected_entries():
    expected = {
        "bert-wwm", "bert-wwm-ext", "roberta-wwm-ext", "roberta-wwm-ext-large", "rbt3", "rbtl3",
        "rbt4-h312", "rbt6", "minirbt-h256", "minirbt-h288", "bert-base-chinese", "macbert-base",
        "macbert-large", "electra-small", "electra-base", "xlnet-base", "roberta-tiny-clue",
        "roberta-tiny-pair", "roberta-3l768-clue", "roberta-3l312-clue", "roberta-large-clue",
        "roberta-large-pair",
    }
    assert set(zoo.ZOO) == expected
    for key, spec in zoo.ZOO.items():
        assert spec.name == key == key.lower()
        assert spec.hidden % spec.heads == 0
        expected_vocab = {"HFL": 21128, "Google": 21128, "CLUE": 8021}[spec.publisher]
        if spec.model_type == "xlnet":
            expected_vocab = 32000
        assert spec.vocab_size == expected_vocab, key
    assert zoo.ZOO["rbt6"].hub_id is None
    assert zoo.ZOO["electra-small"].embedding_size == 128


@pytest.mark.parametrize(
    "query, expected",
    [
        ("RoBERTa-wwm-ext", "roberta-wwm-ext"),
        ("chinese-roberta-wwm-ext", "roberta-wwm-ext"),
        ("hfl/chinese-roberta-wwm-ext", "roberta-wwm-ext"),
        ("  MiniRBT-H256 ", "minirbt-h256"),
        ("hfl/chinese-electra-180g-small-discriminator", "electra-small"),
        ("clue/roberta_chinese_3L312_clue_tiny", "roberta-3l312-clue"),
        ("google-bert/bert-base-chinese", "bert-base-chinese"),
        ("RBT3", "rbt3"),
    ],
)
def test_get_spec_aliases(query, expected):
    assert zoo.get_spec(query).name == expected


def test_get_spec_passes_specs_through():
    spec = zoo.ZOO["rbt3"]
    assert zoo.get_spec(spec) is spec


def test_get_spec_unknown_has_did_you_mean_hint():
    with pytest.raises(QingbertError) as info:
        zoo.get_spec("minirbt-h265")
    err = info.value
    assert err.message == "unknown model 'minirbt-h265'"
    assert "did you mean 'minirbt-h256'?" in err.hint
    assert "qingbert zoo" in err.hint


def test_get_spec_unknown_without_close_match():
    with pytest.raises(QingbertError) as info:
        zoo.get_spec("zzzzzzzzzzzz")
    assert "did you mean" not in (info.value.hint or "")


# --------------------------------------------------------------------------
# parameter counts
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", MINIRBT_TABLE)
def test_minirbt_table_figures_within_one_percent(name):
    spec = zoo.ZOO[name]
    total, non_emb = zoo.count_parameters(spec)
    assert spec.published_total is not None and spec.published_non_embedding is not None
    assert total / 1e6 == pytest.approx(spec.published_total, rel=0.01)
    assert non_emb / 1e6 == pytest.approx(spec.published_non_embedding, rel=0.01)


def test_rbt4_h312_needs_ffn_1200():
    # With the usual 4*hidden FFN (1248) the published 4.7M non-embedding figure is missed.
    spec = zoo.ZOO["rbt4-h312"]
    import dataclasses

    wrong = dataclasses.replace(spec, ffn=4 * spec.hidden)
    _, non_emb = zoo.count_parameters(wrong)
    assert abs(non_emb / 1e6 - spec.published_non_embedding) / spec.published_non_embedding > 0.01


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_analytic_count_matches_transformers(name):
    from transformers import AutoModel

    spec = zoo.ZOO[name]
    config = zoo.build_config(spec)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    total = _unique_numel(model.parameters())
    non_emb = total - _embedding_numel(model, spec.model_type)
    assert zoo.count_parameters(spec) == (total, non_emb)


@pytest.mark.parametrize("name", ["minirbt-h256", "electra-small", "xlnet-base"])
def test_analytic_count_with_other_vocab(name):
    from transformers import AutoModel

    config = zoo.build_config(name, vocab_size=777)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    total = _unique_numel(model.parameters())
    assert zoo.count_parameters(name, vocab_size=777)[0] == total
    # non-embedding part does not depend on the vocabulary
    assert zoo.count_parameters(name, vocab_size=777)[1] == zoo.count_parameters(name)[1]


def test_zoo_records_are_json_and_consistent():
    records = zoo.zoo_records()
    assert [r["name"] for r in records] == list(zoo.ZOO)
    json.dumps(records)  # JSON-able
    by_name = {r["name"]: r for r in records}
    rbt3 = by_name["rbt3"]
    total, non_emb = zoo.count_parameters("rbt3")
    assert rbt3["total_params"] == total and rbt3["non_embedding_params"] == non_emb
    assert rbt3["total_diff_pct"] == pytest.approx((total / 1e6 - 38.5) / 38.5 * 100, abs=0.01)
    assert by_name["roberta-tiny-clue"]["total_diff_pct"] is None
    assert by_name["rbtl3"]["non_embedding_diff_pct"] is None
    # the 110M figure is reported honestly, not fudged
    assert by_name["bert-wwm"]["total_diff_pct"] < -5
    assert "cannot be reconciled" in by_name["bert-wwm"]["note"]
    for r in records:
        for field in ("hub_id", "aliases", "published_source", "note", "embedding_size"):
            assert field in r


def test_zoo_table_is_markdown():
    table = zoo.zoo_table()
    lines = table.splitlines()
    assert len(lines) == 2 + len(zoo.ZOO)
    ncols = lines[0].count("|")
    assert all(line.count("|") - line.count("\\|") == ncols for line in lines)
    assert "Δ%" in lines[0]
    row = next(line for line in lines if line.startswith("| minirbt-h256 |"))
    assert "10.4 / 4.8" in row and "hfl/minirbt-h256" in row


# --------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------

def test_build_config_types_and_overrides():
    from transformers import BertConfig, ElectraConfig, XLNetConfig

    c = zoo.build_config("rbt4-h312")
    assert isinstance(c, BertConfig)
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (4, 312, 1200, 12)
    e = zoo.build_config("electra-small")
    assert isinstance(e, ElectraConfig) and e.embedding_size == 128 and e.hidden_size == 256
    x = zoo.build_config("xlnet-base", vocab_size=1000, n_layer=2)
    assert isinstance(x, XLNetConfig) and x.vocab_size == 1000 and x.n_layer == 2 and x.d_model == 768
    assert zoo.build_config("rbt3", num_hidden_layers=1).num_hidden_layers == 1


def test_build_model_custom_vocab_forward():
    torch.manual_seed(0)
    model = zoo.build_model("minirbt-h256", vocab_size=500)
    assert model.get_input_embeddings().weight.shape == (500, 256)
    model.eval()
    ids = torch.randint(0, 500, (2, 7))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape == (2, 7, 500)
    assert torch.isfinite(out.logits).all()


def test_build_model_base_head_counts_match():
    model = zoo.build_model("minirbt-h256", vocab_size=500, head="base")
    assert type(model).__name__ == "BertModel"
    assert _unique_numel(model.parameters()) == zoo.count_parameters("minirbt-h256", vocab_size=500)[0]


def test_build_model_electra_and_xlnet_small_forward():
    electra = zoo.build_model("electra-small", vocab_size=300, num_hidden_layers=2)
    assert electra.get_input_embeddings().weight.shape == (300, 128)
    xlnet = zoo.build_model("xlnet-base", vocab_size=300, n_layer=1, d_model=64, n_head=4, d_inner=128)
    assert type(xlnet).__name__ == "XLNetLMHeadModel"
    ids = torch.randint(0, 300, (1, 5))
    with torch.no_grad():
        assert electra(input_ids=ids).logits.shape == (1, 5, 300)
        assert xlnet(input_ids=ids).logits.shape == (1, 5, 300)


def test_build_model_bad_head():
    with pytest.raises(QingbertError):
        zoo.build_model("minirbt-h256", vocab_size=100, head="seq2seq")


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------

def _save_tiny(tmp_path):
    from transformers import BertTokenizerFast

    model = zoo.build_model("minirbt-h256", vocab_size=20, num_hidden_layers=1)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "国", "人"]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    return model, folder


def test_load_model_and_tokenizer_from_local_folder(tmp_path):
    model, folder = _save_tiny(tmp_path)
    loaded = loading.load_model(str(folder))
    assert type(loaded).__name__ == "BertForMaskedLM"
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    base = loading.load_model(folder, head="base")
    assert type(base).__name__ == "BertModel"
    tok = loading.load_tokenizer(str(folder))
    assert tok("中国人")["input_ids"] == [2, 5, 6, 7, 3]


def test_load_model_missing_folder(tmp_path):
    with pytest.raises(QingbertError, match="no such model folder"):
        loading.load_model(str(tmp_path / "nope"))


def test_load_model_broken_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(QingbertError, match="cannot load from folder"):
        loading.load_model(str(tmp_path))


def test_load_model_without_public_weights():
    with pytest.raises(QingbertError) as info:
        loading.load_model("rbt6")
    assert "no public weights" in info.value.message
    assert "build_model" in info.value.hint


def test_load_model_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(QingbertError) as info:
        loading.load_model("rbt3", cache_dir=str(tmp_path))  # empty cache: nothing to fall back on
    assert time.monotonic() - start < 10
    assert "'hfl/rbt3'" in info.value.message
    assert "hf download hfl/rbt3" in info.value.hint
    assert "\n" not in str(info.value)


def test_load_tokenizer_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QingbertError, match="hfl/minirbt-h256"):
        loading.load_tokenizer("minirbt-h256", cache_dir=str(tmp_path))


def test_load_model_real_hub_path_gives_qingbert_error(monkeypatch, tmp_path):
    # No HF_HUB_OFFLINE: the real loading path, against an endpoint on loopback
    # where nothing listens (tests never send traffic off this machine).
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(QingbertError) as info:
        loading.load_model(MISSING_REPO, cache_dir=str(tmp_path))
    assert time.monotonic() - start < 30
    assert MISSING_REPO in info.value.message
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "exc",
    [
        OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore"),
        ConnectionError("Connection refused"),
        OSError("qingbert-tests/x is not a local folder and is not a valid model identifier"),
    ],
)
def test_hub_errors_are_translated(monkeypatch, exc):
    # Pretend the network is up so the loader itself runs, and make it fail.
    import transformers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: True)

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", boom)
    with pytest.raises(QingbertError) as info:
        loading.load_model("qingbert-tests/x")
    assert "qingbert-tests/x" in info.value.message
    assert "\n" not in str(info.value)


def test_hub_library_errors_are_translated(monkeypatch):
    import transformers
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: True)
    for exc in (LocalEntryNotFoundError("not cached"), OfflineModeIsEnabled("offline")):
        def boom(*args, _exc=exc, **kwargs):
            raise _exc

        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
        with pytest.raises(QingbertError, match="hfl/rbt3"):
            loading.load_tokenizer("hfl/rbt3")


def test_probe_reports_unreachable_endpoint(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    # Port 9 on localhost (discard) is essentially never listening.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert loading._hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 5
