"""Semantic search index: build, reload, query by vector and by text, factories, errors, CLI."""

import json
import sys

import numpy as np
import pytest

from qingbert.cli.main import build_parser
from qingbert.data.builtin import reviews
from qingbert.data.corpus import read_corpus
from qingbert.deploy.index import build_index, embed, load_index
from qingbert.errors import QingbertError

from .conftest import run_cli

N = 50


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """50 built-in review sentences with three empty lines (two inside, one at the end)."""
    texts = [t.strip() for t, _ in reviews("dev")[:N]]
    assert len(set(texts)) == N
    lines = texts[:10] + ["", "   "] + texts[10:] + [""]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, texts


@pytest.fixture(scope="module")
def model(tiny_model):
    from qingbert.deploy.inference import load

    return load(tiny_model)


@pytest.fixture(scope="module")
def flat(tiny_model, corpus, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "flat"
    record = build_index(tiny_model, corpus[0], out, model=model, progress=False)
    return out, record


def _stored_vectors(index) -> np.ndarray:
    return np.stack([index.index.reconstruct(i) for i in range(len(index))])


def test_flat_vector_queries_find_themselves(flat, model):
    out, _ = flat
    index = load_index(out, encoder=model)
    vectors = _stored_vectors(index)
    hits = index.search(vectors, k=3)
    assert [h[0]["id"] for h in hits] == list(range(N))
    assert all(abs(h[0]["score"] - 1.0) < 1e-4 for h in hits)
    assert all(len(h) == 3 and h[0]["score"] >= h[1]["score"] >= h[2]["score"] for h in hits)
    # the stored vectors are the model's normalised vectors
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_flat_text_query_returns_the_same_text(flat, corpus):
    out, _ = flat
    texts = corpus[1]
    index = load_index(out)  # no encoder given: the manifest's model is loaded
    hits = index.search([texts[3], texts[42]], k=5)
    assert [h[0]["text"] for h in hits] == [texts[3], texts[42]]
    assert [h[0]["id"] for h in hits] == [3, 42]
    assert hits[0][0]["score"] > 0.999
    assert len(hits[0]) == 5 and all(set(x) == {"id", "text", "score"} for x in hits[0])
    assert index.search(texts[7], k=1)[0][0]["id"] == 7  # one string is one query


def test_manifest_counts_skipped_lines_and_texts_map_to_lines(flat, corpus):
    out, record = flat
    path, texts = corpus
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == "qingbert.index/1" and m["factory"] == "Flat"
    assert m["count"] == N and m["dim"] == 64 and m["lines"] == N + 3
    assert m["skipped"] == {"empty_lines": 3, "first_empty_lines": [11, 12, N + 3]}
    assert m["seconds"]["total"] > 0 and record["count"] == N
    assert (out / "index.faiss").stat().st_size > 0
    corpus_lines = path.read_text(encoding="utf-8").split("\n")
    recs = [json.loads(x) for x in (out / "texts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in recs] == list(range(N)) and [r["text"] for r in recs] == texts
    assert all(corpus_lines[r["line"] - 1] == r["text"] for r in recs)


def test_reload_gives_the_same_answers(flat, model, corpus):
    out, _ = flat
    q = embed(model, [corpus[1][5], "这本书写得很好"])
    a = load_index(out, encoder=model).search(q, k=4)
    b = load_index(out, encoder=model).search(q, k=4)
    assert a == b and a[0][0]["id"] == 5


@pytest.mark.parametrize("factory", ["HNSW32", "IVF2,Flat"])
def test_other_factories(factory, tiny_model, corpus, model, tmp_path):
    out = tmp_path / "index"
    record = build_index(tiny_model, corpus[0], out, factory=factory, model=model, progress=False)
    assert record["factory"] == factory and record["count"] == N
    index = load_index(out, encoder=model)
    hits = index.search(_stored_vectors(index), k=1) if factory == "HNSW32" else None
    if hits is not None:
        assert [h[0]["id"] for h in hits] == list(range(N))
    text_hits = index.search([corpus[1][0], corpus[1][33]], k=3)
    assert [h[0]["id"] for h in text_hits] == [0, 33]


def test_ivf_with_too_few_vectors_is_a_clear_error(tiny_model, corpus, model, tmp_path):
    out = tmp_path / "ivf"
    with pytest.raises(QingbertError, match=r"100 IVF lists but the corpus has only 50 vectors") as e:
        build_index(tiny_model, corpus[0], out, factory="IVF100,Flat", model=model, progress=False)
    assert "IVF1,Flat" in str(e.value)  # the hint says what fits
    assert not out.exists()


def test_bad_corpus_factory_and_out(tiny_model, corpus, model, flat, tmp_path):
    with pytest.raises(QingbertError, match="no such corpus file .*missing.txt"):
        build_index(tiny_model, tmp_path / "missing.txt", tmp_path / "x", model=model)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(QingbertError, match="empty.txt' is empty"):
        build_index(tiny_model, empty, tmp_path / "x", model=model)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(QingbertError, match=r"has no text \(3 empty lines\)"):
        read_corpus(blank)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("好".encode("gbk") + b"\n")
    with pytest.raises(QingbertError, match="not UTF-8"):
        read_corpus(latin)
    with pytest.raises(QingbertError, match="invalid faiss factory string 'Nope'"):
        build_index(tiny_model, corpus[0], tmp_path / "y", factory="Nope", model=model, progress=False)
    with pytest.raises(QingbertError, match="folder exists and is not empty"):
        build_index(tiny_model, corpus[0], flat[0], model=model, progress=False)
    with pytest.raises(QingbertError, match="not an index folder"):
        load_index(tmp_path)
    with pytest.raises(QingbertError, match="64-dimensional"):
        load_index(flat[0], encoder=model).search(np.ones((1, 8), dtype=np.float32))


def test_cli_build_and_query(tiny_model, corpus, tmp_path, capsys):
    parser = build_parser()
    out = tmp_path / "cli-index"
    args = parser.parse_args(["index", "build", "--model", str(tiny_model), "--corpus", str(corpus[0]),
                              "--out", str(out), "--factory", "HNSW32"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "50 texts" in printed and "3 empty lines skipped" in printed
    query = corpus[1][12]
    args = parser.parse_args(["index", "query", "--index", str(out), "--text", query, "--text", corpus[1][1],
                              "--k", "2"])
    assert args.run(args) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and rows[0]["query"] == query and rows[0]["rank"] == 1
    assert rows[0]["text"] == query and rows[0]["id"] == 12 and rows[2]["id"] == 1


def test_jsonl_corpus_keeps_fields_and_names_bad_lines(tiny_model, corpus, model, tmp_path):
    texts = corpus[1][:6]
    rows = [json.dumps({"doc": f"d{i}", "body": t, "stars": i}, ensure_ascii=False) for i, t in enumerate(texts)]
    rows.insert(2, json.dumps({"doc": "empty", "body": "  "}))
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(rows) + "\n\n", encoding="utf-8")
    r = build_index(tiny_model, path, tmp_path / "ix", model=model, progress=False, text_field="body")
    assert r["count"] == 6 and r["skipped"]["empty_lines"] == 2 and r["skipped"]["first_empty_lines"] == [3, 8]
    assert r["text_field"] == "body"
    [[hit, *_]] = load_index(tmp_path / "ix", encoder=model).search([texts[4]], k=2)
    assert hit["text"] == texts[4] and hit["fields"] == {"doc": "d4", "stars": 4}
    bad = tmp_path / "bad.jsonl"
    for content, message in (('{"text": "好"}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
                             ('["好"]\n', r"bad.jsonl:1: a JSON list, not an object"),
                             ('{"text": "好"}\n{"title": "x"}\n', r"bad.jsonl:2: no 'text' field \(fields: title\)"),
                             ('{"text": 3}\n', r"bad.jsonl:1: 'text' is a int, not a string")):
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(QingbertError, match=message):
            build_index(tiny_model, bad, tmp_path / "never", model=model, progress=False)
    assert not (tmp_path / "never").exists()


def test_full_width_text_is_cleaned_like_the_training_text(model):
    """A vocabulary built from cleaned text has no full-width comma: encoding cleans first (no [UNK] for '，')."""
    full, half = "质量很好，物流也快！ＯＫ", "质量很好,物流也快!OK"
    np.testing.assert_allclose(embed(model, [full]), embed(model, [half]), atol=1e-6)
    enc = model.sentence_encoder("mean")
    enc.encode([full, half])
    assert enc.last_lengths[0] == enc.last_lengths[1] == len(model.tokenizer(half)["input_ids"])


def test_index_without_faiss_says_which_extra_to_install(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    r = run_cli("index", "build", "--model", str(tiny_model), "--corpus", str(corpus[0]), "--out", str(tmp_path / "i"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "needs the 'faiss' package" in r.stderr and "pip install 'qingbert[search]'" in r.stderr
