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
