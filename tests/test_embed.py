"""Sentence embeddings: pooling, truncation, whitening, SimCSE, STS evaluation, the sentence-transformers layout."""

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from qingbert.cli.main import build_parser
from qingbert.data.text import clean_text
from qingbert.embeddings.encoder import SentenceEncoder, TruncationWarning
from qingbert.embeddings.simcse import cosent_loss, info_nce, train_simcse
from qingbert.embeddings.st_format import folder_settings
from qingbert.embeddings.sts import evaluate_sts
from qingbert.embeddings.whitening import fit_whitening, whiten_model
from qingbert.errors import QingbertError

from .conftest import run_without_qingbert

TEXTS = ["今天天气很好。", "这本书写得很精彩，值得一看！", "北京是中华人民共和国的首都，也是一座历史悠久的城市。"]


@pytest.fixture(scope="module")
def sentences():
    """Real Chinese sentences: built-in reviews and People's Daily (dev splits), short ones."""
    from qingbert.data.builtin import peoples_daily, reviews

    revs = [t for t, _ in reviews("dev") if 6 <= len(t) <= 40][:120]
    news = ["".join(w) for w, _ in peoples_daily("dev")]
    news = [t for t in news if 6 <= len(t) <= 40][:80]
    return revs + news


@pytest.fixture(scope="module")
def tok_dir(sentences, tmp_path_factory):
    """A character vocabulary over the test sentences (fast to build)."""
    from qingbert.data.vocab import SPECIALS
    from qingbert.models.tokenizer import make_tokenizer, save_tokenizer

    chars = sorted({c.lower() for t in sentences + TEXTS for c in t if not c.isspace()})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [c for c in chars if c not in SPECIALS])}
    return save_tokenizer(make_tokenizer(vocab), tmp_path_factory.mktemp("embed-vocab"))


def _tiny(tok_dir, folder, cls, layers=2, seed=0):
    from transformers import BertConfig

    from qingbert.models.loading import load_tokenizer
    from qingbert.models.tokenizer import save_tokenizer

    tok = load_tokenizer(str(tok_dir))
    torch.manual_seed(seed)
    cls(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    save_tokenizer(tok, folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tok_dir, tmp_path_factory):
    """A tiny BertModel (with its pooler), 2 layers, hidden 32."""
    from transformers import BertModel

    return _tiny(tok_dir, tmp_path_factory.mktemp("embed") / "bert", BertModel)


@pytest.fixture(scope="module")
def mlm_dir(tok_dir, tmp_path_factory):
    """A tiny BertForMaskedLM (no pooler), as pretraining writes them."""
    from transformers import BertForMaskedLM

    return _tiny(tok_dir, tmp_path_factory.mktemp("embed") / "mlm", BertForMaskedLM, seed=1)


@pytest.fixture(scope="module")
def hf(bert_dir):
    """The reference: the transformers model run on one text at a time (no padding at all)."""
    from transformers import BertModel

    from qingbert.models.loading import load_tokenizer

    model = BertModel.from_pretrained(str(bert_dir)).eval()
    tok = load_tokenizer(str(bert_dir))

    def run(text, text_b=None):  # the encoder cleans texts as the training corpus was cleaned
        enc = tok(clean_text(text), None if text_b is None else clean_text(text_b), return_tensors="pt")
        with torch.no_grad():
            res = model(**enc, output_hidden_states=True)
        return res, enc
    return run


def _ref(hf, pooling, layer=-1):
    out = []
    for t in TEXTS:
        res, _ = hf(t)
        hs = [h[0] for h in res.hidden_states]
        h = hs[layer]
        out.append({"mean": h.mean(0), "cls": h[0], "max": h.max(0).values,
                    "first-last-avg": (hs[1].mean(0) + hs[-1].mean(0)) / 2,
                    "pooler": res.pooler_output[0]}[pooling].numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling,layer", [("mean", -1), ("cls", -1), ("max", -1), ("first-last-avg", -1),
                                           ("mean", -2), ("cls", -3), ("pooler", -1)])
def test_pooling_matches_hand_computed(bert_dir, hf, pooling, layer):
    enc = SentenceEncoder(bert_dir, pooling=pooling, pooling_layer=layer)
    got = enc.encode(TEXTS, batch_size=8)  # one batch: the short texts are padded
    assert got.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, _ref(hf, pooling, layer), atol=1e-5)


def test_bert_as_service_names(bert_dir, hf):
    mean, mx, cls = _ref(hf, "mean"), _ref(hf, "max"), _ref(hf, "cls")
    for name, want in (("REDUCE_MEAN", mean), ("last-avg", mean), ("REDUCE_MAX", mx), ("CLS_TOKEN", cls),
                       ("REDUCE_MEAN_MAX", np.concatenate([mean, mx], 1))):
        np.testing.assert_allclose(SentenceEncoder(bert_dir, pooling=name).encode(TEXTS), want, atol=1e-5)
    tokens = SentenceEncoder(bert_dir, pooling="NONE").encode(TEXTS)
    assert isinstance(tokens, list) and len(tokens) == 3
    for t, got in zip(TEXTS, tokens):
        res, enc = hf(t)
        assert got.shape == (enc["input_ids"].shape[1], 32)  # [CLS] + characters + [SEP]
        np.testing.assert_allclose(got, res.last_hidden_state[0].numpy(), atol=1e-5)


def test_shapes_pairs_and_bad_input(bert_dir, hf):
    enc = SentenceEncoder(bert_dir)
    one = enc.encode(TEXTS[0])
    assert one.shape == (32,) and one.dtype == np.float32
    assert enc.encode([]).shape == (0, 32)
    t = enc.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 32)
    unit = enc.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    # a pair is encoded as a pair: token_type_ids 1 on the second text
    pair = enc.encode("今天天气很好 ||| 这本书很精彩")
    res, e = hf("今天天气很好", "这本书很精彩")
    assert e["token_type_ids"].sum() > 0
    np.testing.assert_allclose(pair, res.last_hidden_state[0].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(pair, enc.encode("今天天气很好这本书很精彩"), atol=1e-3)
    with pytest.raises(QingbertError, match="input 1"):
        enc.encode(["好", 3])
    with pytest.raises(QingbertError, match="unknown pooling 'avg-mean'"):
        SentenceEncoder(bert_dir, pooling="avg-mean")
    with pytest.raises(QingbertError, match="torch backend"):
        SentenceEncoder(bert_dir, pooling="first-last-avg", backend="onnx")
    with pytest.raises(QingbertError, match="pooling_layer"):
        SentenceEncoder(bert_dir, pooling_layer=-9)


def test_memory_stays_flat_over_calls(bert_dir):
    import gc

    enc = SentenceEncoder(bert_dir)
    for _ in range(3):  # warm-up (lazy imports, tokenizer caches)
        enc.encode(TEXTS)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(20):
        enc.encode(TEXTS)
    gc.collect()
    assert len(gc.get_objects()) - before < 20  # nothing kept per call


def test_truncation_is_counted_and_warned(bert_dir):
    enc = SentenceEncoder(bert_dir, max_len=8)
    texts = ["一二三四五六", "一二三四五六七八九十", "今天天气很好，我们去公园散步。", "好"]  # 8, 12, 17, 3 tokens
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        enc.encode(texts)
    got = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(got) == 1 and "2 of 4 texts" in str(got[0].message)
    assert enc.last_truncated == 2
    enc.encode(texts[:1])
    assert enc.last_truncated == 0
    with pytest.raises(QingbertError, match="longer than max_len=8"):
        enc.encode(texts, truncation="raise")


def test_whitening_gives_identity_covariance(bert_dir, sentences):
    x = SentenceEncoder(bert_dir).encode(sentences).astype(np.float64)
    kernel, bias = fit_whitening(x)
    assert kernel.shape == (32, 31)  # LayerNorm outputs lie on a hyperplane: one direction has no variance
    y = (x + bias) @ kernel
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(31), atol=1e-6)
    with pytest.raises(QingbertError, match="span only 31 dimensions"):
        fit_whitening(x, n_components=32)
    k8, b8 = fit_whitening(x, n_components=8)
    np.testing.assert_allclose(np.abs(k8), np.abs(kernel[:, :8]), atol=1e-8)  # SVD signs may flip
    np.testing.assert_allclose(np.cov((x + b8) @ k8, rowvar=False), np.eye(8), atol=1e-6)
    with pytest.raises(QingbertError, match="larger than the vectors' dimension 32"):
        fit_whitening(x, n_components=33)
    with pytest.raises(QingbertError, match="at least 33 vectors, got 10"):
        fit_whitening(x[:10])


def test_info_nce_and_cosent_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    loss, correct = info_nce(a, b, temperature=0.5)
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(c / 0.5) / (math.exp(c / 0.5) + math.exp(0.0)))
    row1 = -math.log(math.exp(1 / 0.5) / (math.exp(c / 0.5) + math.exp(1 / 0.5)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6) and int(correct) == 2
    # cosines 1/sqrt(2) (label 0) and 1 (label 1): one ordered pair, correctly ranked
    got = cosent_loss(a, b, torch.tensor([0.0, 1.0]), scale=20)
    assert got.item() == pytest.approx(math.log(1 + math.exp(20 * (c - 1))), rel=1e-4)  # float32 cosines
    got = cosent_loss(a, b, torch.tensor([1.0, 0.0]), scale=20)  # ranked the wrong way round
    assert got.item() == pytest.approx(math.log(1 + math.exp(20 * (1 - c))), rel=1e-4)


SIMCSE = {"batch_size": 16, "max_steps": 16, "lr": 1e-3, "warmup_ratio": 0.0, "log_every": 1, "progress": False,
          "save_every": 0, "max_len": 48}


@pytest.fixture(scope="module")
def simcse_dir(mlm_dir, sentences, tmp_path_factory):
    out = tmp_path_factory.mktemp("simcse") / "unsup"
    r = train_simcse(mlm_dir, out, texts=sentences[:64], config=SIMCSE)
    return out, r


def test_unsup_simcse_loss_falls(simcse_dir):
    out, r = simcse_dir
    assert r["steps"] == 16 and len(r["losses"]) == 16
    assert np.mean(r["losses"][-4:]) < np.mean(r["losses"][:4]) - 0.3
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["objective"] == "unsup-simcse" and m["temperature"] == 0.05 and m["steps"] == 16
    assert m["final_loss"] == pytest.approx(r["losses"][-1])
    for f in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "vocab.txt", "config.json",
              "model.safetensors", "config_sentence_transformers.json"):
        assert (out / f).exists(), f
    assert folder_settings(out).pooling == "mean" and folder_settings(out).max_len == 128  # the model's limit


def test_supervised_cosent_on_pairs(mlm_dir, sentences, tmp_path):
    pairs = [(s, s[: len(s) // 2 + 1], 1.0) for s in sentences[:24]] + \
            [(s, t, 0.0) for s, t in zip(sentences[24:48], sentences[100:124])]
    cfg = dict(SIMCSE, max_steps=6, sup_loss="both")
    r = train_simcse(mlm_dir, tmp_path / "sup", pairs=pairs, config=cfg)
    assert r["objective"] == "sup-both" and r["steps"] == 6 and all(math.isfinite(x) for x in r["losses"])
    assert SentenceEncoder(tmp_path / "sup").encode(TEXTS).shape == (3, 32)
    with pytest.raises(QingbertError, match="not both"):
        train_simcse(mlm_dir, tmp_path / "x", texts=sentences, pairs=pairs)
    with pytest.raises(QingbertError, match="pair 1: score 'high' is not a number"):
        train_simcse(mlm_dir, tmp_path / "x", pairs=[("a", "b", 1), ("a", "c", "high")])


@pytest.fixture(scope="module")
def whitened_dir(mlm_dir, sentences, tmp_path_factory):
    d = tmp_path_factory.mktemp("white")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(sentences[:60] + ["", "  "] + sentences[60:150] + [""]) + "\n", encoding="utf-8")
    r = whiten_model(mlm_dir, corpus, d / "model", n_components=16)
    return d / "model", r


def test_whiten_corpus_stored_with_the_model(whitened_dir, mlm_dir, sentences, tmp_path):
    out, r = whitened_dir
    assert r["sentences"] == 150 and r["empty"] == 3 and r["n_components"] == 16 and r["sentence_transformers"]
    raw = SentenceEncoder(mlm_dir).encode(sentences[:150]).astype(np.float64)
    kernel, bias = fit_whitening(raw, 16)
    white = SentenceEncoder(out).encode(sentences[:150])
    assert white.shape == (150, 16)
    want = (raw + bias) @ kernel
    want *= np.sign((want * white).sum(0))  # an SVD may flip a direction's sign
    np.testing.assert_allclose(white, want, atol=2e-3)
    np.testing.assert_allclose(np.cov(white.astype(np.float64), rowvar=False), np.eye(16), atol=1e-2)
    few = tmp_path / "few.txt"
    few.write_text("一句话\n\n两句话\n", encoding="utf-8")
    with pytest.raises(QingbertError, match="2 usable lines \\(1 empty\\).*at least 17"):
        whiten_model(mlm_dir, few, tmp_path / "w", n_components=16)
    with pytest.raises(QingbertError, match="larger than the vectors' dimension"):
        whiten_model(mlm_dir, few, tmp_path / "w", n_components=64)
    with pytest.raises(QingbertError, match="fitted on mean pooling"):
        SentenceEncoder(out, pooling="cls")


def test_non_st_pooling_is_refused_clearly(bert_dir, tmp_path):
    r = SentenceEncoder(bert_dir, pooling="first-last-avg").save(tmp_path / "fla")
    assert not r["sentence_transformers"] and "no sentence-transformers equivalent" in r["note"]
    assert not (tmp_path / "fla" / "modules.json").exists()
    back = SentenceEncoder(tmp_path / "fla")
    assert back.pooling == "first-last-avg"
    np.testing.assert_allclose(back.encode(TEXTS), SentenceEncoder(bert_dir, pooling="first-last-avg").encode(TEXTS),
                               atol=1e-6)


ST_CODE = r"""
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
texts = json.load(open("texts.json", encoding="utf-8"))
for name in ("simcse", "white"):
    m = SentenceTransformer(name, device="cpu")
    np.save(name + ".npy", m.encode(texts, batch_size=7))
# a folder written by sentence-transformers itself, for qingbert to read back
t = Transformer("bert", max_seq_length=64)
st = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), "cls"), Normalize()], device="cpu")
st.save("st_cls")
np.save("st_cls.npy", st.encode(texts, batch_size=7))
print("ok")
"""


def test_folders_load_in_sentence_transformers_without_qingbert(simcse_dir, whitened_dir, bert_dir, sentences,
                                                                tmp_path):
    texts = sentences[:40] + TEXTS
    assert any(clean_text(t) != t for t in texts)  # full-width characters: what cleaning changes
    shutil.copytree(simcse_dir[0], tmp_path / "simcse")
    shutil.copytree(whitened_dir[0], tmp_path / "white")
    shutil.copytree(bert_dir, tmp_path / "bert")
    # sentence-transformers tokenizes what it is given: hand it the texts cleaned, as qingbert cleans them
    (tmp_path / "texts.json").write_text(json.dumps([clean_text(t) for t in texts], ensure_ascii=False),
                                         encoding="utf-8")
    p = run_without_qingbert(ST_CODE, tmp_path)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-3000:]
    ours = SentenceEncoder(simcse_dir[0]).encode(texts)
    np.testing.assert_allclose(np.load(tmp_path / "simcse.npy"), ours, atol=1e-5)
    ours_w = SentenceEncoder(whitened_dir[0]).encode(texts)
    np.testing.assert_allclose(np.load(tmp_path / "white.npy"), ours_w, atol=2e-5)  # values up to ~4
    back = SentenceEncoder(tmp_path / "st_cls")  # sentence-transformers' own layout, read by qingbert
    assert back.pooling == "cls" and back.normalize and back.max_len == 64
    np.testing.assert_allclose(back.encode(texts), np.load(tmp_path / "st_cls.npy"), atol=1e-5)
    raw = SentenceEncoder(simcse_dir[0], clean=False)  # texts as given, as sentence-transformers takes them
    np.testing.assert_allclose(raw.encode([clean_text(t) for t in texts]), ours, atol=1e-5)
    assert not np.allclose(raw.encode(texts), ours, atol=1e-5)


def test_onnx_backend_for_last_layer_pooling(bert_dir, tmp_path):
    from qingbert.models.onnx import export_onnx

    d = tmp_path / "bert"
    shutil.copytree(bert_dir, d)
    export_onnx(d, d / "onnx" / "model.onnx", "AutoModel", ())
    for pooling in ("mean", "REDUCE_MEAN_MAX"):
        enc = SentenceEncoder(d, pooling=pooling)
        assert enc.backend == "onnx"  # the fastest present is the default
        np.testing.assert_allclose(enc.encode(TEXTS), SentenceEncoder(d, pooling=pooling, backend="torch")
                                   .encode(TEXTS), atol=1e-4)
    assert SentenceEncoder(d, pooling_layer=-2).backend == "torch"  # other layers: torch with hidden states


def _lcqmc(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev.tsv").write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    return folder


def test_spearman_on_lcqmc_file(bert_dir, sentences, tmp_path):
    rows = [(s, s, 1) for s in sentences[:6]] + [(s, t, 0) for s, t in zip(sentences[6:16], sentences[120:130])]
    data = _lcqmc(tmp_path / "lcqmc", rows)
    enc = SentenceEncoder(bert_dir)
    r = evaluate_sts(enc, task="lcqmc", data_dir=data, split="dev")
    a = enc.encode([x[0] for x in rows], normalize_embeddings=True)
    b = enc.encode([x[1] for x in rows], normalize_embeddings=True)
    want = spearmanr((a * b).sum(1), [x[2] for x in rows]).statistic
    assert r["pairs"] == 16 and r["metric"] == "spearman"
    assert r["spearman"] == pytest.approx(100 * want, abs=1e-6) and r["spearman"] > 0  # identical pairs: cos 1
    scores = [(x[0], x[1], float(c)) for x, c in zip(rows[6:], (a * b).sum(1)[6:])]  # distinct cosines
    assert evaluate_sts(enc, pairs=scores)["spearman"] == pytest.approx(100.0)
    bad = _lcqmc(tmp_path / "bad", [("好", "好", 1), ("坏", "好", "x")])
    with pytest.raises(QingbertError, match="label 'x' is not a number"):
        evaluate_sts(enc, task="lcqmc", data_dir=bad)


def run_verb(args):
    return args.run(args)


def test_cli_verbs(bert_dir, sentences, tmp_path, capsys):
    parser = build_parser()
    out = tmp_path / "v.npy"
    args = parser.parse_args(["encode", "--model", str(bert_dir), "--text", TEXTS[0], "--text", "今天 ||| 明天",
                              "--out", str(out), "--pooling", "cls"])
    assert args.run(args) == 0
    np.testing.assert_allclose(np.load(out), SentenceEncoder(bert_dir, pooling="cls")
                               .encode([TEXTS[0], "今天 ||| 明天"]), atol=1e-6)
    data = _lcqmc(tmp_path / "lcqmc", [(s, s, 1) for s in sentences[:4]] +
                  [(s, t, 0) for s, t in zip(sentences[4:8], sentences[120:124])])
    assert run_verb(parser.parse_args(["eval-sts", "--model", str(bert_dir), "--task", "lcqmc", "--data",
                                      str(data)])) == 0
    assert "lcqmc dev: Spearman" in capsys.readouterr().out
    corpus = tmp_path / "c.txt"
    corpus.write_text("一\n二\n", encoding="utf-8")
    with pytest.raises(QingbertError, match="2 usable lines"):
        run_verb(parser.parse_args(["whiten", "--model", str(bert_dir), "--corpus", str(corpus), "--out",
                                   str(tmp_path / "w")]))
    with pytest.raises(QingbertError, match="too small"):
        run_verb(parser.parse_args(["encode", "--model", str(bert_dir), "--text", "x", "--max-len", "2"]))
