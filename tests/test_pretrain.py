"""Pretraining: masking statistics, the masked-position head, resume after kill -9, 2 processes, outputs."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM

from qingbert.data.prepare import load_prepared
from qingbert.errors import QingbertError
from qingbert.models.loading import load_tokenizer
from qingbert.pretraining.mlm import IGNORE, MaskingConfig, WWMCollator, masked_lm_loss, tokenizer_info
from qingbert.pretraining.pretrain import pretrain
from qingbert.training.loop import list_checkpoints

from .conftest import cli_env, run_cli, run_without_qingbert

TINY = {"overrides": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128,
                      "num_attention_heads": 2}, "batch_size": 8, "lr": 1e-3, "log_every": 2,
        "eval_batches": 2, "progress": False, "threads": 1, "warmup_ratio": 0.0}


def collate_all(prepared, n=512, epoch=0, seed=0, cfg=None):
    ds = load_prepared(prepared)
    tok = load_tokenizer(str(prepared / "tokenizer"))
    col = WWMCollator(tokenizer_info(tok), cfg or MaskingConfig(), seed=seed)
    col.epoch = epoch
    rows = ds[:n]
    examples = [{"input_ids": a, "word_ids": w, "index": i} for i, (a, w) in
                enumerate(zip(rows["input_ids"], rows["word_ids"]))]
    return col(examples), examples, tok


def test_masking_statistics(small_prepared):
    batch, examples, tok = collate_all(small_prepared)
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    special = set(tok.all_special_ids) - {tok.unk_token_id}  # [UNK] stands for real characters
    eligible = masked = n_mask = n_keep = n_rand = 0
    for i, e in enumerate(examples):
        wid = np.asarray(e["word_ids"])
        orig = np.asarray(e["input_ids"])
        lab = labels[i, :len(wid)]
        sel = lab != IGNORE
        assert (labels[i, len(wid):] == IGNORE).all(), "padding is never a target"
        assert not sel[wid < 0].any(), "special tokens are never masked"
        assert not np.isin(orig[sel], list(special)).any()
        for w in np.unique(wid[sel]):  # whole words: all tokens of a chosen word are targets
            assert sel[wid == w].all()
        eligible += int((wid >= 0).sum())
        masked += int(sel.sum())
        got = ids[i, :len(wid)][sel]
        n_mask += int((got == tok.mask_token_id).sum())
        n_keep += int((got == orig[sel]).sum())
        n_rand += int(((got != orig[sel]) & (got != tok.mask_token_id)).sum())
        assert (lab[sel] == orig[sel]).all()
    assert abs(masked / eligible - 0.15) < 0.01
    assert abs(n_mask / masked - 0.8) < 0.02
    assert abs(n_rand / masked - 0.1) < 0.02
    assert abs(n_keep / masked - 0.1) < 0.02


def test_masking_is_dynamic_and_reproducible(small_prepared):
    a, _, _ = collate_all(small_prepared, n=64, epoch=0)
    b, _, _ = collate_all(small_prepared, n=64, epoch=0)
    c, _, _ = collate_all(small_prepared, n=64, epoch=1)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["labels"], c["labels"])


def test_ngram_masking_keeps_whole_words(small_prepared):
    cfg = MaskingConfig(max_ngram=3)
    batch, examples, _ = collate_all(small_prepared, n=256, cfg=cfg)
    labels = batch["labels"].numpy()
    eligible = masked = 0
    for i, e in enumerate(examples):
        wid = np.asarray(e["word_ids"])
        sel = labels[i, :len(wid)] != IGNORE
        for w in np.unique(wid[sel]):
            assert sel[wid == w].all()
        eligible += int((wid >= 0).sum())
        masked += int(sel.sum())
    assert abs(masked / eligible - 0.15) < 0.015


def test_masked_position_head_equals_full_head(small_prepared):
    torch.manual_seed(0)
    batch, _, tok = collate_all(small_prepared, n=16)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=128)).eval()
    with torch.no_grad():
        ours, metrics = masked_lm_loss(model, batch)
        full = model(**batch).loss
    assert torch.allclose(ours, full, atol=1e-5)
    assert metrics["masked_tokens"] == int((batch["labels"] != IGNORE).sum())


def cli(*args, **kw):
    """The command in this process (conftest.run_cli): same status and output, no interpreter start-up."""
    return run_cli(*args, **kw)


def write_recipe(path, **extra):
    import yaml

    path.write_text(yaml.safe_dump({**TINY, **extra}))
    return str(path)


def test_kill_and_resume_reproduces_uninterrupted_run(small_prepared, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", max_steps=14, save_every=2, keep_last=2, seed=7)
    common = ["pretrain", "--model", "minirbt-h256", "--data", str(small_prepared), "--config", recipe]
    ref = cli(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "qingbert", *common, "--out", str(out)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = int(np.random.default_rng().integers(2, 6)) * 2  # a random checkpointed step in 4..10
    deadline = time.time() + 300
    while time.time() < deadline:
        ck = list_checkpoints(out)
        if ck and int(ck[0].name.split("-")[1]) >= target:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = int(list_checkpoints(out)[0].name.split("-")[1])
    assert steps_done < 14, "the run finished before it could be killed"
    res = cli(*common, "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout
    a = load_file(str(tmp_path / "ref" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    m = json.loads((out / "manifest.json").read_text())
    assert m["steps"] == 14


def test_two_processes_with_accelerate(small_prepared, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", max_steps=16, save_every=0, batch_size=4, lr=3e-3)
    out = tmp_path / "ddp"
    # accelerate's multi-process launcher (torchrun underneath); without GPUs qingbert runs it on CPU + gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "qingbert", "pretrain", "--model", "minirbt-h256", "--data", str(small_prepared),
           "--config", recipe, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 16
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in log if x["split"] == "train"]
    assert len(train) == 8 and train[-1] < train[0]


@pytest.fixture(scope="module")
def trained(small_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "model"
    m = pretrain("minirbt-h256", small_prepared, out, {**TINY, "max_steps": 30, "save_every": 10, "lr": 3e-3})
    return out, m


def test_pretraining_learns_and_writes_manifest(trained):
    out, m = trained
    assert m["format"] == "qingbert.model/1" and m["steps"] == 30
    assert m["eval_after"]["masked_accuracy"] > m["eval_before"]["masked_accuracy"] + 0.02
    assert m["eval_after"]["perplexity"] < m["eval_before"]["perplexity"]
    assert (out / "tensorboard").is_dir() and (out / "vocab.txt").exists()
    assert len(list_checkpoints(out)) == 2  # keep_last


def test_output_loads_without_qingbert(trained, tmp_path):
    out, _ = trained
    code = f"""
from transformers import AutoModel, BertForMaskedLM, BertTokenizer, BertTokenizerFast, pipeline
path = {str(out)!r}
m = BertForMaskedLM.from_pretrained(path)
AutoModel.from_pretrained(path)
for cls in (BertTokenizer, BertTokenizerFast):
    t = cls.from_pretrained(path)
    assert len(t) == m.config.vocab_size, (len(t), m.config.vocab_size)
fill = pipeline("fill-mask", model=path, tokenizer=path)
res = fill("今天[MASK]气很好")
assert len(res) == 5 and all("token_str" in r for r in res)
print("ok")
"""
    r = run_without_qingbert(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_fill_mask_cli(trained):
    out, _ = trained
    r = cli("fill-mask", str(out), "今天[MASK]气很好", "--top-k", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("(0.") == 3


def test_bad_inputs(small_prepared, trained, tmp_path):
    with pytest.raises(QingbertError, match="not a prepared corpus"):
        pretrain("minirbt-h256", tmp_path, tmp_path / "o", TINY)
    with pytest.raises(QingbertError, match="did you mean 'minirbt-h256'"):
        pretrain("minirbt-h265", small_prepared, tmp_path / "o", TINY)
    with pytest.raises(QingbertError, match="unknown pretraining option"):
        pretrain("minirbt-h256", small_prepared, tmp_path / "o", {"batchsize": 3})
    # a model whose vocabulary is not the data's
    other = tmp_path / "other"
    from qingbert.data.prepare import prepare

    prepare(["builtin:reviews:test"], tmp_path / "d2", vocab_size=2000, progress=False)
    model_dir, _ = trained
    with pytest.raises(QingbertError, match="different vocabulary"):
        pretrain(str(model_dir), tmp_path / "d2", other, TINY)


def test_corrupt_checkpoint_falls_back_to_previous(small_prepared, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain("minirbt-h256", small_prepared, out, {**TINY, "max_steps": 6, "save_every": 2, "keep_last": 3})
    newest, older = list_checkpoints(out)[:2]
    (newest / "model.safetensors").write_bytes(b"not a safetensors file")
    m = pretrain("minirbt-h256", small_prepared, out, {**TINY, "max_steps": 8, "save_every": 2, "keep_last": 3,
                                                          "resume": True})
    text = capsys.readouterr().out
    assert f"checkpoint {newest} is unusable" in text and f"resuming from {older}" in text
    assert m["steps"] == 8


def test_full_disk_keeps_previous_checkpoint(small_prepared, tmp_path, monkeypatch):
    import errno

    import safetensors.torch as st

    out = tmp_path / "run"
    pretrain("minirbt-h256", small_prepared, out, {**TINY, "max_steps": 2, "save_every": 2})
    good = list_checkpoints(out)[0]
    real = st.save_model

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_model", full)
    with pytest.raises(QingbertError, match=f"No space left on device.*{good.name} is intact"):
        pretrain("minirbt-h256", small_prepared, out, {**TINY, "max_steps": 4, "save_every": 2, "resume": True})
    monkeypatch.setattr(st, "save_model", real)
    assert list_checkpoints(out)[0] == good
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())
    m = pretrain("minirbt-h256", small_prepared, out, {**TINY, "max_steps": 4, "save_every": 2, "resume": True})
    assert m["steps"] == 4


def test_untrained_head_is_detected_and_initialised(small_prepared, tmp_path, capsys):
    from transformers import BertModel

    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    base = BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=128))
    folder = tmp_path / "headless"
    base.save_pretrained(folder)
    tok.save_pretrained(folder)
    m = pretrain(str(folder), small_prepared, tmp_path / "o", {**TINY, "max_steps": 2, "overrides": {}})
    assert "has no trained MLM head" in capsys.readouterr().out
    assert m["init"]["head_initialised"] is True


def test_model_folder_without_tokenizer_files_is_accepted(small_prepared, tmp_path):
    tok = load_tokenizer(str(small_prepared / "tokenizer"))
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=128))
    model.save_pretrained(tmp_path / "weights_only")
    m = pretrain(str(tmp_path / "weights_only"), small_prepared, tmp_path / "o", {**TINY, "max_steps": 2})
    assert m["steps"] == 2 and m["init"]["head_initialised"] is False


def test_document_mask_keeps_packed_texts_apart():
    from qingbert.pretraining.mlm import attention_of, document_attention

    # [CLS] a a [SEP] b [SEP] [PAD]
    wid = np.array([[-1, 0, 1, -1, 2, -1, -1]])
    att = np.array([[1, 1, 1, 1, 1, 1, 0]])
    keep = (document_attention(wid, att)[0, 0] == 0).int().numpy()
    assert (keep[:4, :4] == 1).all() and (keep[:4, 4:] == 0).all()  # [CLS] belongs to the first text
    assert (keep[4:6, 4:6] == 1).all() and (keep[4:6, :4] == 0).all() and keep[6, 6] == 1 and keep[:6, 6].sum() == 0
    torch.manual_seed(0)
    m = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32)).eval()
    ids = torch.tensor([[2, 10, 11, 3, 12, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": torch.from_numpy(att), "document_attention": document_attention(wid, att)}
    for impl in ("sdpa", "eager"):
        m.set_attn_implementation(impl)
        with torch.no_grad():
            packed = m.bert(input_ids=ids, attention_mask=attention_of(batch)).last_hidden_state
            alone = m.bert(input_ids=ids[:, :4]).last_hidden_state
            mixed = m.bert(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
        assert torch.allclose(packed[0, :4], alone[0], atol=1e-5), impl  # the first text sees only itself
        assert not torch.allclose(mixed[0, :4], alone[0], atol=1e-3)


def test_document_mask_in_the_collator_and_pretraining(small_prepared, tmp_path):
    batch, _, _ = collate_all(small_prepared, n=8, cfg=MaskingConfig(document_mask=True))
    assert batch["document_attention"].shape == (8, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    m = pretrain("minirbt-h256", small_prepared, tmp_path / "doc", dict(TINY, max_steps=4, document_mask=True,
                                                                          save_every=0))
    assert m["recipe"]["masking"]["document_mask"] and m["steps"] == 4
    assert m["init"]["initialisation"]["init"] == "local-attention" and m["eval_masking"] == 0.15


def test_cli_electra_objective_writes_discriminator_and_generator(small_prepared, tmp_path):
    """`pretrain --objective electra` through the command line: the manifest names the objective, the folder is
    an ELECTRA discriminator with its generator beside it, and an unknown objective is refused first."""
    import yaml

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "overrides": {"num_hidden_layers": 1, "hidden_size": 32,
                                                            "intermediate_size": 64, "num_attention_heads": 2,
                                                            "embedding_size": 32}}))
    out = tmp_path / "electra"
    r = cli("pretrain", "--model", "electra-small", "--data", str(small_prepared), "--out", str(out),
            "--config", str(recipe), "--objective", "electra", "--generator-hidden", "16", "--max-steps", "3",
            "--save-every", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replaced-token detection" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["objective"] == "electra" and m["recipe"]["electra"] == {"generator_hidden": 16}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ElectraForPreTraining"]
    assert json.loads((out / "generator" / "config.json").read_text())["hidden_size"] == 16
    with pytest.raises(QingbertError, match="unknown objective 'bert'.*available: wwm, macbert, electra"):
        pretrain("minirbt-h256", small_prepared, tmp_path / "o", {**TINY, "objective": "bert"})


def test_cli_macbert_objective_with_similar_words(small_prepared, tmp_path):
    """`similar-words` then `pretrain --objective macbert --similar-words DIR --sop`: the manifest records the
    objective and its masking counts, and the model loads as a plain masked LM; without a table it is refused."""
    sim = tmp_path / "sim"
    r = cli("similar-words", str(small_prepared), "--out", str(sim), "--dim", "16", "--epochs", "1", "--workers", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    recipe = write_recipe(tmp_path / "tiny.yaml")
    out = tmp_path / "macbert"
    r = cli("pretrain", "--model", "minirbt-h256", "--data", str(small_prepared), "--out", str(out), "--config",
            str(recipe), "--objective", "macbert", "--similar-words", str(sim), "--sop", "--max-steps", "3",
            "--save-every", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["objective"] == "macbert" and m["recipe"]["macbert"] == {"similar_words": str(sim), "sop": True}
    assert m["init"]["collator_stats"]["similar"] > 0
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(str(out)).config.vocab_size > 1000
    r = cli("pretrain", "--model", "minirbt-h256", "--data", str(small_prepared), "--out", str(tmp_path / "x"),
            "--config", str(recipe), "--objective", "macbert")
    assert r.returncode == 2 and "similar-words" in r.stderr and not (tmp_path / "x").exists()
