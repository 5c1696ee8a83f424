"""Bad input on the command line, table-driven: every case exits with status 2, prints one ``qingbert`` error line
(or argparse's line for a flag) naming the flag, file or folder at fault, and no traceback.

Classes (issue #17): out-of-range numbers, damaged files (truncated weights or shards, manifests and configs that
are not JSON), output paths that cannot be written, recipes that cannot be used, and a bug (one line, exit 1,
``--debug`` for the traceback)."""

import shutil
from pathlib import Path

import pytest

from .conftest import run_cli

# -- numbers, checked when the arguments are parsed ---------------------------------------------------------------

NUMBER_CASES = [
    ("finetune", ["--model", "M", "--task", "tnews", "--out", "O", "--batch-size", "0"], "--batch-size"),
    ("distill", ["--teacher", "T", "--student", "S", "--data", "D", "--out", "O", "--batch-size", "0"], "--batch-size"),
    ("predict", ["--model", "M", "--text", "好", "--batch-size", "0"], "--batch-size"),
    ("pretrain", ["--model", "M", "--data", "D", "--out", "O", "--mlm-probability", "1.5"], "--mlm-probability"),
    ("pretrain", ["--model", "M", "--data", "D", "--out", "O", "--lr", "0"], "--lr"),
    ("pretrain", ["--model", "M", "--data", "D", "--out", "O", "--grad-accum", "x"], "--grad-accum"),
    ("fill-mask", ["M", "今天[MASK]", "--top-k", "-1"], "--top-k"),
    ("serve", ["M", "--port", "99999"], "--port"),
    ("serve", ["M", "--max-batch", "0"], "--max-batch"),
    ("finetune", ["--model", "M", "--task", "tnews", "--out", "O", "--max-steps", "-1"], "--max-steps"),
    ("finetune", ["--model", "M", "--task", "tnews", "--out", "O", "--warmup-ratio", "1"], "--warmup-ratio"),
    ("prepare", ["S", "--out", "O", "--eval-fraction", "1.5"], "--eval-fraction"),
    ("index", ["query", "--index", "I", "--text", "好", "--k", "0"], "--k"),
    ("encode", ["--model", "M", "--text", "好", "--batch-size", "0"], "--batch-size"),
    ("speed", ["--repeats", "0"], "--repeats"),
    ("bench", ["--models", "M", "--tasks", "T", "--out", "O", "--batch-size", "0"], "--batch-size"),
    ("export", ["M", "--out", "O", "--max-dev-examples", "0"], "--max-dev-examples"),
    ("distill", ["--teacher", "T", "--student", "S", "--data", "D", "--out", "O", "--temperature", "0"],
     "--temperature"),
    ("vocab", ["S", "--out", "O", "--size", "-5"], "--size"),
    ("similar-words", ["D", "--out", "O", "--dim", "0"], "--dim"),
    ("finetune", ["--model", "M", "--task", "tnews", "--out", "O", "--max-len", "1"], "--max-len"),
    ("prepare", ["S", "--out", "O", "--max-seq-len", "4"], "--max-seq-len"),
    ("simcse", ["--model", "M", "--corpus", "C", "--out", "O", "--max-len", "2"], "--max-len"),
]


@pytest.mark.parametrize("verb,args,flag", NUMBER_CASES, ids=[f"{v}{a[-2]}" for v, a, _ in NUMBER_CASES])
def test_out_of_range_numbers_are_refused_when_parsed(verb, args, flag):
    r = run_cli(verb, *args)
    assert r.returncode == 2, r.stderr
    assert f"argument {flag}" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- damaged files ------------------------------------------------------------------------------------------------


@pytest.fixture()
def truncated_model(tiny_model, tmp_path):
    folder = tmp_path / "broken-model"
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.fixture()
def bad_config_model(tiny_model, tmp_path):
    folder = tmp_path / "bad-config"
    shutil.copytree(tiny_model, folder)
    (folder / "config.json").write_text('{"model_type": "bert", ', encoding="utf-8")
    return folder


DAMAGED_WEIGHTS = [
    ("fill-mask", lambda m, t: [m, "今天[MASK]气很好"]),
    ("export", lambda m, t: [m, "--out", t / "exported"]),
    ("encode", lambda m, t: ["--model", m, "--text", "今天天气很好"]),
    ("predict", lambda m, t: ["--model", m, "--text", "今天天气很好"]),
    ("prune-vocab", lambda m, t: [m, "--corpus", "builtin:reviews:dev", "--out", t / "pruned"]),
    ("finetune", lambda m, t: ["--model", m, "--task", "builtin:reviews-sentiment", "--out", t / "ft", "--max-steps",
                               "1", "--max-train-examples", "16"]),
]


@pytest.mark.parametrize("verb,args", DAMAGED_WEIGHTS, ids=[v for v, _ in DAMAGED_WEIGHTS])
def test_truncated_weights_are_named(verb, args, truncated_model, tmp_path):
    r = run_cli(verb, *args(truncated_model, tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(truncated_model / "model.safetensors") in r.stderr and "truncated or corrupt" in r.stderr, r.stderr


BAD_CONFIG = [
    ("export", lambda m, t: [m, "--out", t / "exported"]),
    ("predict", lambda m, t: ["--model", m, "--text", "今天天气很好"]),
    ("encode", lambda m, t: ["--model", m, "--text", "今天天气很好"]),
]


@pytest.mark.parametrize("verb,args", BAD_CONFIG, ids=[v for v, _ in BAD_CONFIG])
def test_a_config_that_is_not_json_is_named(verb, args, bad_config_model, tmp_path):
    r = run_cli(verb, *args(bad_config_model, tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(bad_config_model / "config.json") in r.stderr, r.stderr


@pytest.fixture()
def damaged_data(small_prepared, tmp_path):
    def make(kind: str) -> Path:
        folder = tmp_path / f"data-{kind}"
        shutil.copytree(small_prepared, folder)
        if kind == "manifest":
            (folder / "manifest.json").write_text("{not json", encoding="utf-8")
        else:
            shard = sorted(folder.rglob("*.arrow"))[0]
            shard.write_bytes(shard.read_bytes()[:100])
        return folder
    return make


@pytest.mark.parametrize("kind,named", [("manifest", "manifest.json"), ("shard", ".arrow")])
@pytest.mark.parametrize("verb", ["pretrain", "distill"])
def test_damaged_prepared_folders_are_named(verb, kind, named, damaged_data, tiny_model, tmp_path):
    data = damaged_data(kind)
    args = (["--model", tiny_model] if verb == "pretrain" else ["--teacher", tiny_model, "--student", tiny_model])
    r = run_cli(verb, *args, "--data", data, "--out", tmp_path / "out", "--max-steps", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(data) in r.stderr and named in r.stderr, r.stderr


# -- output paths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb,args", [
    ("prepare", lambda o: ["builtin:reviews:dev", "--out", o]),
    ("vocab", lambda o: ["builtin:reviews:dev", "--out", o]),
    ("export", lambda o: ["MODEL", "--out", o]),
    ("encode", lambda o: ["--model", "MODEL", "--text", "好", "--out", o / "v.npy"]),
], ids=["prepare", "vocab", "export", "encode"])
def test_an_output_path_that_is_a_file_is_refused(verb, args, tiny_model, tmp_path):
    out = tmp_path / "a-file"
    out.write_text("keep me\n", encoding="utf-8")
    argv = [str(tiny_model) if a == "MODEL" else a for a in args(out)]
    r = run_cli(verb, *argv)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(out) in r.stderr, r.stderr
    assert out.read_text(encoding="utf-8") == "keep me\n"  # untouched


# -- recipes ------------------------------------------------------------------------------------------------------


def test_a_recipe_number_out_of_range_names_the_option(small_prepared, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("batch_size: 0\nmax_steps: 1\n", encoding="utf-8")
    r = run_cli("pretrain", "--model", "minirbt-h256", "--data", small_prepared, "--out", tmp_path / "o", "--config",
                recipe, "--layers", "1")
    assert r.returncode == 2 and "batch_size must be" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_recipe_that_is_not_yaml_names_the_file_and_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1e-3\nepochs: [1, 2\n", encoding="utf-8")
    r = run_cli("finetune", "--model", "M", "--task", "tnews", "--out", tmp_path / "o", "--config", recipe)
    assert r.returncode == 2 and f"{recipe}:" in r.stderr and "not valid YAML" in r.stderr, r.stderr


# -- a bug ----------------------------------------------------------------------------------------------------------


def test_a_bug_is_one_line_and_debug_shows_the_traceback(monkeypatch):
    from qingbert.cli import data

    def broken(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr(data.zoo, "zoo_table", broken)
    r = run_cli("zoo")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unexpected KeyError" in r.stderr and "--debug" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(KeyError):
        run_cli("zoo", "--debug")


# -- a user's folders are never replaced or deleted ------------------------------------------------------------------


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def user_folders(tiny_model, tmp_path):
    """A model inside a user's project folder next to an unrelated folder of theirs."""
    project = tmp_path / "project"
    model = project / "model"
    shutil.copytree(tiny_model, model)
    notes = project / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("买菜\n", encoding="utf-8")
    (project / "corpus.txt").write_text("今天天气很好\n明天下雨\n我们去公园\n", encoding="utf-8")
    return project, model, notes


FOLDER_CASES = [
    ("export", lambda p, m, n: [m, "--out", n], "not empty"),
    ("export", lambda p, m, n: [m, "--out", n, "--overwrite"], "refusing to overwrite"),
    ("export", lambda p, m, n: [m, "--out", p, "--overwrite"], "holds the model folder"),
    ("export", lambda p, m, n: [m, "--out", m], "inside the model folder"),
    ("export", lambda p, m, n: [m, "--out", m / "onnx-export"], "inside the model folder"),
    ("vocab", lambda p, m, n: ["builtin:reviews:dev", "--out", m], "not empty"),
    ("vocab", lambda p, m, n: ["builtin:reviews:dev", "--out", m, "--overwrite"], "refusing to overwrite"),
    ("prune-vocab", lambda p, m, n: [m, "--corpus", "builtin:reviews:dev", "--out", n], "not empty"),
    ("prune-vocab", lambda p, m, n: [m, "--corpus", "builtin:reviews:dev", "--out", p, "--overwrite"],
     "holds the model folder"),
    ("prepare", lambda p, m, n: ["builtin:reviews:dev", "--out", n], "not empty"),
    ("prepare", lambda p, m, n: ["builtin:reviews:dev", "--out", n, "--overwrite"], "refusing to overwrite"),
    ("prepare", lambda p, m, n: [n / "todo.txt", "--out", n, "--overwrite"], "holds the source"),
    ("whiten", lambda p, m, n: ["--model", m, "--corpus", p / "corpus.txt", "--out", n, "--overwrite"],
     "refusing to overwrite"),
    ("whiten", lambda p, m, n: ["--model", m, "--corpus", n / "todo.txt", "--out", n, "--overwrite"],
     "holds the corpus"),
    ("whiten", lambda p, m, n: ["--model", m, "--corpus", n / "todo.txt", "--out", p], "holds the model folder"),
    ("index", lambda p, m, n: ["build", "--model", m, "--corpus", n / "todo.txt", "--out", n, "--overwrite"],
     "holds the corpus"),
    ("index", lambda p, m, n: ["build", "--model", m, "--corpus", n / "todo.txt", "--out", m / "idx"],
     "inside the model folder"),
    ("finetune", lambda p, m, n: ["--model", m, "--task", "builtin:reviews-sentiment", "--out", n, "--max-steps", "1"],
     "not a training run's folder"),
    ("finetune", lambda p, m, n: ["--model", m, "--task", "builtin:reviews-sentiment", "--out", p, "--max-steps", "1"],
     "holds the model folder"),
    ("simcse", lambda p, m, n: ["--model", m, "--corpus", p / "corpus.txt", "--out", n, "--max-steps", "1"],
     "not a training run's folder"),
    ("encode", lambda p, m, n: ["--model", m, "--text", "好", "--out", n / "todo.txt"], "file exists"),
    ("encode", lambda p, m, n: ["--model", m, "--input", n / "todo.txt", "--out", n / "todo.txt", "--overwrite"],
     "is the --input file"),
    ("encode", lambda p, m, n: ["--model", m, "--text", "好", "--out", n], "is a folder"),
]


@pytest.mark.parametrize("verb,args,why", FOLDER_CASES,
                         ids=[f"{v}-{i}" for i, (v, _, _) in enumerate(FOLDER_CASES)])
def test_folders_qingbert_did_not_make_are_left_alone(verb, args, why, user_folders):
    project, model, notes = user_folders
    before = _snapshot(project)
    r = run_cli(verb, *args(project, model, notes))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert why in r.stderr, r.stderr
    assert _snapshot(project) == before  # every file as it was, byte for byte


def test_export_overwrite_replaces_only_an_earlier_export(user_folders, tmp_path):
    project, model, _ = user_folders
    out = tmp_path / "exported"
    assert run_cli("export", model, "--out", out, "--int8").returncode == 0
    first = _snapshot(out)
    r = run_cli("export", model, "--out", out, "--int8")
    assert r.returncode == 2 and "not empty" in r.stderr and _snapshot(out) == first
    assert run_cli("export", model, "--out", out, "--onnx", "--overwrite").returncode == 0
    assert (out / "onnx" / "model.onnx").is_file() and not (out / "onnx" / "model.int8.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no staging folder left


# -- what a command says and where: one output per input, notes on stderr, honest refusals --------------------------


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input") / "classifier"
    r = run_cli("finetune", "--model", tiny_model, "--task", "builtin:reviews-sentiment", "--out", out,
                "--max-steps", "2", "--max-train-examples", "16", "--max-len", "32", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    return out


def _json_lines(text: str) -> list:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_input_gives_one_record_per_line_in_order(classifier, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(("这家店很好吃\n\n   \r\n太难吃了，再也不来" + "很" * 80 + "\n").encode("utf-8"))
    r = run_cli("predict", "--model", classifier, "--input", src)
    assert r.returncode == 0, r.stderr
    rows = _json_lines(r.stdout)
    assert [x["line"] for x in rows] == [1, 2, 3, 4]  # blank lines keep their place
    assert "label" in rows[0] and "label" in rows[3]
    assert rows[1]["error"] == rows[2]["error"] == "empty text"
    assert "2 of 4 inputs have no prediction" in r.stderr and "were cut there" in r.stderr  # notes: stderr only
    out = tmp_path / "pred.jsonl"
    assert run_cli("predict", "--model", classifier, "--input", src, "--out", out).returncode == 0
    assert [x["line"] for x in _json_lines(out.read_text("utf-8"))] == [1, 2, 3, 4]
    r = run_cli("predict", "--model", classifier, "--input", src, "--out", out)
    assert r.returncode == 2 and "file exists" in r.stderr


def test_encode_input_gives_one_row_per_line_and_notes_on_stderr(tiny_model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes("今天天气很好\n\n明天下雨\n".encode("gb18030"))
    r = run_cli("encode", "--model", tiny_model, "--input", src)
    assert r.returncode == 0, r.stderr
    rows = _json_lines(r.stdout)  # stdout is data only
    assert [x["line"] for x in rows] == [1, 2, 3] and all(len(x["embedding"]) == len(rows[0]["embedding"])
                                                          for x in rows)
    assert "1 of 3" in r.stderr and "empty" in r.stderr, r.stderr


def test_fill_mask_refuses_a_folder_without_a_trained_mlm_head(classifier):
    r = run_cli("fill-mask", classifier, "今天天[MASK]很好")
    assert r.returncode == 2 and "no trained masked-LM head" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("verb", ["encode", "predict"])
def test_a_lone_surrogate_on_the_command_line_is_repaired(verb, classifier):
    r = run_cli(verb, "--model", classifier, "--text", "好\ud800吃")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len(_json_lines(r.stdout)) == 1


def _tnews_line(label: str, text: str) -> str:
    import json

    return json.dumps({"label": label, "label_desc": "news_" + label, "sentence": text, "keywords": ""},
                      ensure_ascii=False)


TASK_FILE_CASES = [
    # (what, files, extra args, words the message must hold)
    ("missing dev", {"train.json": [_tnews_line("100", "股市大涨")]}, [], ["dev", "dev.json", "train.json"]),
    ("empty train", {"train.json": [], "dev.json": [_tnews_line("100", "股市大涨")]}, [], ["train.json", "empty"]),
    ("undecodable", {"train.json": None, "dev.json": [_tnews_line("100", "股市大涨")]}, [], ["train.json"]),
    ("train file", {"train.json": [_tnews_line("100", "股市大涨")], "dev.json": [_tnews_line("100", "股市")]},
     ["--train-file", "train.3k.json"], ["train.3k.json", "dev.json"]),
]


@pytest.mark.parametrize("what,files,extra,words", TASK_FILE_CASES, ids=[c[0] for c in TASK_FILE_CASES])
def test_task_files_that_cannot_be_used_are_named(what, files, extra, words, tiny_model, tmp_path):
    data = tmp_path / "tnews"
    data.mkdir()
    for name, lines in files.items():
        (data / name).write_bytes(b"\xff\xfe\x00\x81" * 8 if lines is None else "\n".join(lines).encode("utf-8"))
    r = run_cli("finetune", "--model", tiny_model, "--task", "tnews", "--data", data, "--out", tmp_path / "o",
                "--max-steps", "1", *extra)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unknown_labels_are_dropped_and_counted_not_trained_on(tiny_model, tmp_path):
    data = tmp_path / "tnews"
    data.mkdir()
    good = [_tnews_line("100" if i % 2 else "101", t) for i, t in enumerate(["股市大涨", "球队夺冠", "新车上市", "电影热映"])]
    (data / "train.json").write_text("\n".join(good + [_tnews_line("-", "不知道")]), encoding="utf-8")
    (data / "dev.json").write_text("\n".join(good), encoding="utf-8")
    r = run_cli("finetune", "--model", tiny_model, "--task", "tnews", "--data", data, "--out", tmp_path / "o",
                "--max-steps", "1", "--max-len", "16", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "label_dash 1" in r.stdout, r.stdout
    import json

    m = json.loads((tmp_path / "o" / "manifest.json").read_text("utf-8"))
    assert "-" not in m["labels"]
