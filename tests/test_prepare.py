"""End to end: `prepare` and `vocab` folders, their manifests, loading without qingbert, the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qingbert.data import builtin
from qingbert.data.prepare import load_prepared, prepare
from qingbert.errors import QingbertError

from .conftest import cli_env, run_cli, run_without_qingbert


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A few thousand real texts as files: reviews (.txt) and People's Daily (.jsonl), with duplicates."""
    d = tmp_path_factory.mktemp("src")
    reviews = [t for t, _ in builtin.reviews("train")[:1500]]
    (d / "reviews.txt").write_text("\n".join(reviews + reviews[:100]) + "\n", encoding="utf-8")
    pd = ["".join(w) for w, _ in builtin.peoples_daily("train")[:1500]]
    with open(d / "pd.jsonl", "w", encoding="utf-8") as fh:
        for t in pd:
            fh.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return d, len(reviews) + len(pd)


@pytest.fixture(scope="module")
def prepared(small_corpus, tmp_path_factory):
    d, _ = small_corpus
    out = tmp_path_factory.mktemp("prep") / "out"
    m = prepare([str(d)], out, vocab_size=3000, max_seq_len=128, eval_fraction=0.05, workers=2,
                chunk_chars=50_000, progress=False)
    return out, m


def test_manifest_accounts_for_every_line(prepared, small_corpus):
    out, m = prepared
    _, n_unique = small_corpus
    c = m["corpus"]
    assert c["lines_read"] == n_unique + 100
    assert c["dropped"]["duplicate"] == 100
    assert c["dedup_rate"] == pytest.approx(100 / (n_unique + 100), abs=1e-6)
    assert m["splits"]["train"]["texts"] + m["splits"]["eval"]["texts"] == c["records_kept"]
    assert m["tokenizer"]["built"] and m["tokenizer"]["vocab_size"] <= 3000
    assert m["chars_per_s"] > 0 and set(m["timings"]) == {"read_clean_dedup_s", "vocab_s",
                                                          "segment_tokenize_pack_s"}
    assert json.loads((out / "manifest.json").read_text())["format"] == "qingbert.prepared/1"
    assert not (out / ".work").exists()


def test_shards_are_aligned_and_split_without_leaks(prepared):
    out, m = prepared
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(out / "tokenizer"))
    texts = {}
    for split in ("train", "eval"):
        ds = load_prepared(out, split)
        assert len(ds) == m["splits"][split]["sequences"]
        seen = set()
        for row in ds:
            ids, wid = np.array(row["input_ids"]), np.array(row["word_ids"])
            assert len(ids) == len(wid) <= 128
            special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
            assert (wid == -1).tolist() == special.tolist()
            assert tok.pad_token_id not in ids and tok.mask_token_id not in ids
            # texts between two [SEP]s are whole (fill-packing may cut the first and the last one of a
            # sequence at a word start); each whole text becomes one string for the leak check
            cuts = np.flatnonzero(ids == tok.sep_token_id)
            for a, b in zip(cuts[:-2], cuts[1:-1]):
                seen.add(tok.decode(ids[a + 1:b].tolist()).replace(" ", ""))
        texts[split] = seen
    assert texts["eval"] and not texts["train"] & texts["eval"]


def test_gold_segmentation_and_f1(tmp_path):
    m = prepare(["builtin:peoples-daily:dev"], tmp_path / "gold", segmenter="gold", vocab_size=3000,
                workers=1, progress=False)
    assert m["segmentation_vs_gold"] is None  # gold vs gold is not measured
    m2 = prepare(["builtin:peoples-daily:dev"], tmp_path / "rj", tokenizer=str(tmp_path / "gold" / "tokenizer"),
                 workers=1, progress=False)
    f1 = m2["segmentation_vs_gold"]["word_f1"]
    assert 0.7 < f1 < 0.95  # rjieba follows a different segmentation standard than PKU's
    assert f1 < m2["segmentation_vs_gold"]["boundary_f1"] < 1.0  # a boundary is easier to hit than a word
    # same text either way (WordPiece may cut a Latin/digit run differently); word grouping differs
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(tmp_path / "gold" / "tokenizer"))
    a, b = load_prepared(tmp_path / "gold"), load_prepared(tmp_path / "rj")

    def text(ds):
        return "".join(tok.decode(ids, skip_special_tokens=True) for ids in ds["input_ids"]).replace(" ", "")

    assert text(a) == text(b)
    assert len(text(a)) > 100_000
    assert a["word_ids"] != b["word_ids"]


def test_output_does_not_depend_on_worker_count(small_corpus, prepared, tmp_path):
    d, _ = small_corpus
    out, _ = prepared
    m1 = prepare([str(d)], tmp_path / "w1", tokenizer=str(out / "tokenizer"), max_seq_len=128,
                 eval_fraction=0.05, workers=1, chunk_chars=50_000, progress=False)
    assert m1["splits"]["train"]["sequences"] == load_prepared(out).num_rows
    assert load_prepared(tmp_path / "w1")["input_ids"] == load_prepared(out)["input_ids"]


def test_prepared_and_vocab_folders_load_without_qingbert(prepared, tiny_tokenizer_dir, tmp_path):
    out, m = prepared
    only_vocab = tmp_path / "only_vocab"
    only_vocab.mkdir()
    (only_vocab / "vocab.txt").write_bytes((tiny_tokenizer_dir / "vocab.txt").read_bytes())
    code = f"""
import glob
from datasets import load_dataset
from transformers import AutoTokenizer, BertTokenizer, BertTokenizerFast
ds = load_dataset("arrow", data_files={{"train": sorted(glob.glob({str(out)!r} + "/train-*.arrow"))}})["train"]
assert ds.num_rows == {m["splits"]["train"]["sequences"]}, ds.num_rows
assert ds.column_names == ["input_ids", "word_ids"]
for cls in (AutoTokenizer, BertTokenizer, BertTokenizerFast):
    for folder in ({str(tiny_tokenizer_dir)!r}, {str(out / "tokenizer")!r}):
        t = cls.from_pretrained(folder)
        assert t.tokenize("我爱北京天安门") == list("我爱北京天安门"), t.tokenize("我爱北京天安门")
        assert t.convert_tokens_to_ids("[MASK]") == 4
t = BertTokenizer.from_pretrained({str(only_vocab)!r})  # an old-style folder: vocab.txt alone
assert len(t) == len(BertTokenizer.from_pretrained({str(tiny_tokenizer_dir)!r})), len(t)
print("ok")
"""
    r = run_without_qingbert(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_vocab_report(tiny_tokenizer_dir):
    m = json.loads((tiny_tokenizer_dir / "manifest.json").read_text())
    assert m["heldout_unk_rate"] < 0.001 and m["heldout_tokens"] > 10_000
    vocab = (tiny_tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab)) == m["vocab_size"]
    multi_cjk = [t for t in vocab if len(t.lstrip("#")) > 1 and all("\u4e00" <= ch <= "\u9fff" for ch in t)]
    assert not multi_cjk, "Chinese characters must be single tokens"
    assert m["cjk_single_chars"] > 4000 and m["wordpiece_continuations"] > 50


def test_empty_corpus_and_bad_options(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n\u200b\n", encoding="utf-8")
    with pytest.raises(QingbertError, match="no text left"):
        prepare([str(tmp_path / "empty.txt")], tmp_path / "o1", progress=False)
    assert not (tmp_path / "o1").exists()
    with pytest.raises(QingbertError, match="unknown segmenter"):
        prepare(["builtin:reviews:dev"], tmp_path / "o2", segmenter="jeiba", progress=False)
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "keep.txt").write_text("user data")
    with pytest.raises(QingbertError, match="not empty"):
        prepare(["builtin:reviews:dev"], tmp_path / "o3", progress=False)
    with pytest.raises(QingbertError, match="not a prepared corpus"):
        prepare(["builtin:reviews:dev"], tmp_path / "o3", overwrite=True, progress=False)
    assert (tmp_path / "o3" / "keep.txt").exists()
    with pytest.raises(QingbertError, match="not a prepared corpus"):
        load_prepared(tmp_path / "o3")


def cli(*args, **kw):
    """The command in this process (conftest.run_cli): same status and output, no interpreter start-up."""
    return run_cli(*args, **kw)


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02" * 100)
    cases = [
        ("prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")),
        ("prepare", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "o")),
        ("prepare", "builtin:peoples-daly", "--out", str(tmp_path / "o")),
        ("vocab", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "v")),
    ]
    for args in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        err = [line for line in r.stderr.splitlines() if line.startswith("qingbert: error")]
        assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    r = cli("prepare", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "o"))
    assert "bin.txt" in r.stderr and "binary" in r.stderr


def test_cli_help_for_every_verb(capsys):
    from qingbert.cli.main import COMMANDS, build_parser, main

    verbs = [a for a in build_parser()._subparsers._group_actions[0].choices]  # noqa: SLF001 - every verb
    assert verbs == ["run", "report", "demo", "zoo", "prepare", "vocab", "pretrain", "fill-mask", "finetune", "predict",
                     "export", "speed", "distill", "bench", "encode", "whiten", "simcse", "eval-sts", "index", "serve",
                     "prune-vocab", "similar-words"]
    assert set(COMMANDS) == set(verbs)  # every verb registered the same way, none left out of the order
    for verb in verbs:
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0 and "usage: qingbert " + verb in capsys.readouterr().out
    # building the command line imports no torch: `qingbert --help` and every verb's start stay quick
    r = subprocess.run([sys.executable, "-c", "import sys; from qingbert.cli.main import build_parser; build_parser(); "
                        "print(sorted(m for m in ('torch', 'transformers', 'gensim') if m in sys.modules))"],
                       capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]


def test_cli_prepare_with_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text("max_seq_len: 64\neval_fraction: 0.2\nvocab_size: 2000\n")
    r = cli("prepare", "builtin:reviews:dev", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "r.yaml"),
            "--max-seq-len", "96")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["config"]["max_seq_len"] == 96  # the flag beats the recipe
    assert m["config"]["eval_fraction"] == 0.2 and m["config"]["vocab_size"] == 2000
    (tmp_path / "bad.yaml").write_text("max_seq_lenn: 64\n")
    r = cli("prepare", "builtin:reviews:dev", "--out", str(tmp_path / "o2"), "--config", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2 and "max_seq_lenn" in r.stderr


def test_cli_zoo_json():
    r = cli("zoo", "--json")
    recs = json.loads(r.stdout)
    h256 = next(x for x in recs if x["name"] == "minirbt-h256")
    assert h256["layers"] == 6 and h256["hidden"] == 256


def test_vocab_training_is_deterministic():
    """Same corpus, same vocabulary (tokenizers' trainer alone varies between runs: tokenizers#1794)."""
    from qingbert.data.vocab import train_vocab

    texts = [t for t, _ in builtin.reviews("train")]
    first = train_vocab(texts, 6000)
    assert all(train_vocab(texts, 6000) == first for _ in range(3))
    assert "##s" in first and "[MASK]" in first
    # more distinct characters than the alphabet limit (90 % of the size): ties at the cut are broken the same way
    small = train_vocab(texts, 2000)
    assert len({ch for ch in small if len(ch) == 1}) < len({ch for t in texts for ch in t})
    assert all(train_vocab(texts, 2000) == small for _ in range(3))
