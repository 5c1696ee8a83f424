import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A vocab built from the built-in corpus (all splits), shared by the tests."""
    from qingbert.data.vocab import build_vocab

    out = tmp_path_factory.mktemp("vocab")
    build_vocab(["builtin:peoples-daily:all", "builtin:reviews:all"], out, size=9000, heldout=0.01)
    return out


def run_without_qingbert(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process where importing qingbert is impossible."""
    guard = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'qingbert' or name.startswith('qingbert.'):\n"
        "            raise ImportError('qingbert is blocked in this test')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", guard + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory):
    """A small prepared corpus (reviews dev split, 64-token sequences) for training tests."""
    from qingbert.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(["builtin:reviews:dev", "builtin:peoples-daily:dev"], out, max_seq_len=64, vocab_size=3000,
            eval_fraction=0.05, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model(small_prepared, tmp_path_factory):
    """A tiny randomly initialised BERT masked-LM folder (hidden 64, 1 layer) with the small corpus's vocab."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from qingbert.models.loading import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    folder = tmp_path_factory.mktemp("tiny") / "model"
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def cli_env() -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_cli(*args, cwd=None, timeout=None) -> subprocess.CompletedProcess:
    """``qingbert ARGS...`` run in this process (``qingbert.cli.main``), as a ``CompletedProcess``: the same exit
    status, stdout and stderr as the command, without paying a fresh interpreter's torch import per call.
    (``timeout`` is accepted for the callers' signature; the demo and the multi-process tests still start real
    processes.)"""
    import contextlib
    import io

    from qingbert.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                (contextlib.chdir(cwd) if cwd else contextlib.nullcontext()):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["qingbert", *map(str, args)], code, out.getvalue(), err.getvalue())
