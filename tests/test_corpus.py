"""Reading, cleaning, dedup and the bad-input cases of the corpus stage."""

import gzip
import json
import subprocess
import sys

import pytest

from qingbert.data import builtin, corpus
from qingbert.errors import QingbertError


def read_all(sources, **kw):
    stats = corpus.Stats()
    recs = list(corpus.clean_records(corpus.read_sources(sources, stats), stats, **kw))
    return recs, stats


def test_clean_text_fullwidth_and_controls():
    assert corpus.clean_text("ＡＢＣ１２３！\u3000你好\x00\x07世界\u200b") == "ABC123! 你好世界"
    assert corpus.clean_text("a\t\tb\r\n") == "a b"
    assert corpus.clean_words(["１２月", "\u200b", "江"]) == ["12月", "江"]


def test_split_long_at_sentence_ends():
    text = "今天天气很好。" * 30  # 210 chars
    pieces, hard = corpus.split_long(text, None, 50)
    assert hard == 0 and all(len(p) <= 50 for p, _ in pieces)
    assert all(p.endswith("。") for p, _ in pieces) and "".join(p for p, _ in pieces) == text
    # no sentence end at all: hard cuts, counted, nothing lost
    pieces, hard = corpus.split_long("字" * 120, None, 50)
    assert [len(p) for p, _ in pieces] == [50, 50, 20] and hard == 2


def test_split_long_gold_words_stay_whole():
    words = ["我们", "在", "北京", "。"] * 40
    pieces, hard = corpus.split_long("".join(words), words, 30)
    assert hard == 0
    assert [w for _, ws in pieces for w in ws] == words
    assert all(ws[-1] == "。" and "".join(ws) == t for t, ws in pieces)


def test_formats_and_encodings(tmp_path):
    (tmp_path / "a.txt").write_text("第一行\n第二行\n", encoding="utf-8")
    (tmp_path / "bom.txt").write_bytes("\ufeff带BOM的行\n".encode("utf-8"))
    (tmp_path / "gbk.txt").write_bytes("国标编码的中文\n第二句\n".encode("gb18030"))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "压缩的JSON行"}, ensure_ascii=False) + "\n")
    (tmp_path / "notes.md").write_text("ignored")
    recs, stats = read_all([str(tmp_path)])
    texts = sorted(t for t, _, _ in recs)
    assert texts == sorted(["第一行", "第二行", "带BOM的行", "国标编码的中文", "第二句", "压缩的JSON行"])
    enc = {f["path"].rsplit("/", 1)[-1]: f["encoding"] for f in stats.files}
    assert enc == {"a.txt": "utf-8", "bom.txt": "utf-8-sig", "gbk.txt": "gb18030", "c.jsonl.gz": "utf-8"}
    assert any("notes.md" in f["path"] for f in stats.skipped_files)


def test_bad_lines_counted_with_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(
        b'{"text": "\xe5\xa5\xbd\xe7\x9a\x84"}\n'  # ok
        b'{"text": broken\n'  # bad JSON
        b'{"content": "x"}\n'  # missing field
        b'{"text": 5}\n'  # not a string
        b'\xff\xfe\xfa\n'  # undecodable in UTF-8 and GB18030
        b'\n'
    )
    recs, stats = read_all([str(f)])
    assert [t for t, _, _ in recs] == ["好的"]
    d = stats.dropped
    assert d["bad_json"] == 1 and d["missing_text_field"] == 2 and d["undecodable"] == 1 and d["empty"] == 1
    ex = "\n".join(stats.examples)
    assert f"{f}:2" in ex and f"{f}:3" in ex and f"{f}:5" in ex
    assert stats.lines_read == 6
    # every line is accounted for: kept + dropped = read
    assert stats.records_kept + sum(d.values()) == stats.lines_read


def test_binary_file_skipped_and_reported(tmp_path):
    (tmp_path / "ok.txt").write_text("正常的文本\n", encoding="utf-8")
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    recs, stats = read_all([str(tmp_path)])
    assert [t for t, _, _ in recs] == ["正常的文本"]
    assert stats.skipped_files and "binary" in stats.skipped_files[0]["reason"]
    assert "blob.txt" in stats.skipped_files[0]["path"]


def test_huge_line_is_split_not_lost(tmp_path):
    text = ("这是一个很长的句子，里面有很多字。" * 6000)[:100_000]
    (tmp_path / "big.txt").write_text(text + "\n", encoding="utf-8")
    recs, stats = read_all([str(tmp_path / "big.txt")], max_chars=510)
    assert all(len(t) <= 510 for t, _, _ in recs)
    assert sum(len(t) for t, _, _ in recs) == len(text)
    assert stats.long_lines == 1 and stats.pieces_from_long_lines == len(recs) > 190


def test_dedup_and_counts(tmp_path):
    (tmp_path / "d.txt").write_text("重复\n重复\nＡ重复\nA重复\n短\n", encoding="utf-8")
    recs, stats = read_all([str(tmp_path / "d.txt")], min_chars=2)
    assert [t for t, _, _ in recs] == ["重复", "A重复"]  # full-width folds into half-width before dedup
    assert stats.dropped["duplicate"] == 2 and stats.dropped["too_short"] == 1
    recs, _ = read_all([str(tmp_path / "d.txt")], dedup=False, min_chars=2)
    assert len(recs) == 4


def test_missing_and_unsupported_sources(tmp_path):
    with pytest.raises(QingbertError, match="no such file"):
        read_all([str(tmp_path / "nope.txt")])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(QingbertError, match="unsupported file type"):
        read_all([str(tmp_path / "x.csv")])
    with pytest.raises(QingbertError, match="did you mean 'builtin:reviews'"):
        read_all(["builtin:review"])


def test_builtin_splits_dedup_and_leak_nothing():
    counts = builtin.dedup_counts("reviews")
    assert counts["lines"] == 35124 and counts["duplicate"] > 15000  # about half are duplicates
    splits = {s: builtin.reviews(s) for s in builtin.SPLITS}
    texts = {s: [t for t, _ in v] for s, v in splits.items()}
    for s in builtin.SPLITS:
        assert len(texts[s]) == len(set(texts[s]))
    assert not set(texts["train"]) & set(texts["dev"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["dev"]) & set(texts["test"])
    total = sum(map(len, texts.values()))
    assert total == counts["lines"] - counts["duplicate"] - counts["empty"] - counts["conflicting_label"]
    assert 0.77 < len(texts["train"]) / total < 0.83
    assert {lab for _, lab in splits["dev"]} == {"positive", "negative"}
    pd = {s: {"".join(w) for w, _ in builtin.peoples_daily(s)} for s in builtin.SPLITS}
    assert not pd["train"] & pd["dev"] and not pd["train"] & pd["test"] and not pd["dev"] & pd["test"]
    assert sum(map(len, pd.values())) == 19484 - builtin.dedup_counts("peoples-daily")["duplicate"]


def test_builtin_splits_are_deterministic_across_processes():
    code = ("from qingbert.data import builtin; import hashlib;"
            "print(hashlib.md5(repr(builtin.reviews('test')).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outs) == 1 and len(next(iter(outs))) == 33
