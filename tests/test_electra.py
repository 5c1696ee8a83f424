"""ELECTRA pretraining: replaced-token labels, shared embeddings, the loss, bad shapes, a short run and its
outputs (the discriminator loads without qingbert and fine-tunes)."""

import json
import types

import pytest
import torch
import torch.nn.functional as F

from qingbert.data.prepare import load_prepared
from qingbert.errors import QingbertError
from qingbert.models.loading import load_tokenizer
from qingbert.models.tokenizer import save_tokenizer
from qingbert.pretraining.electra import (
    GENERATOR,
    ElectraConfig,
    ElectraObjective,
    load_electra,
    make_objective,
    replace_tokens,
)
from qingbert.pretraining.mlm import IGNORE
from qingbert.pretraining.pretrain import PretrainConfig
from qingbert.training.loop import TrainConfig, Trainer

from .conftest import run_without_qingbert

# discriminator hidden 32 (E16, so embeddings_project is in play), 1 layer, 2 heads; generator hidden 8
SHAPE = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "embedding_size": 16, "max_position_embeddings": 64}
OPTIONS = {"generator_hidden": 8}


def pcfg(**overrides) -> PretrainConfig:
    train = TrainConfig(batch_size=8, max_steps=3, lr=2e-3, log_every=1, eval_batches=1, progress=False,
                        threads=1, warmup_ratio=0.0, save_every=0, seed=3)
    return PretrainConfig(train=train, overrides={**SHAPE, **overrides}, init="default")


@pytest.fixture(scope="module")
def tok(small_prepared):
    return load_tokenizer(str(small_prepared / "tokenizer"))


def objective(tok, options=None, **overrides):
    obj, col, ev, info = make_objective("electra-small", tok, pcfg(**overrides), options or OPTIONS)
    return obj, col, ev, info


def batch_of(small_prepared, collate, n=6):
    ds = load_prepared(small_prepared)
    rows = ds[:n]
    examples = [{"input_ids": a, "word_ids": w, "index": i} for i, (a, w) in
                enumerate(zip(rows["input_ids"], rows["word_ids"]))]
    return collate(examples)


# ---------------------------------------------------------------------------
# options and shapes


def test_options_are_checked_before_anything_is_built(tok):
    with pytest.raises(QingbertError, match="unknown ELECTRA option 'gen_hidden'.*known:.*generator_hidden"):
        ElectraConfig.from_dict({"gen_hidden": 8})
    with pytest.raises(QingbertError, match="disc_weight"):
        ElectraConfig.from_dict({"disc_weight": -1})
    with pytest.raises(QingbertError, match="wider than its discriminator"):
        objective(tok, {"generator_hidden": 64})
    with pytest.raises(QingbertError, match="not divisible by generator_heads 3"):
        objective(tok, {"generator_hidden": 8, "generator_heads": 3})
    with pytest.raises(QingbertError, match="not divisible by its 3 attention heads"):
        objective(tok, num_attention_heads=3)
    with pytest.raises(QingbertError, match="XLNet"):
        make_objective("xlnet-base", tok, pcfg(), {})


def test_default_generator_shape_follows_electra(tok):
    # Google's get_generator_config: hidden / 4, same depth, max(1, hidden // 64) heads, FFN 4 x hidden
    obj, *_, info = objective(tok, {})
    assert isinstance(obj, ElectraObjective) and obj.name == "electra" and obj.trained_model() is obj.discriminator
    assert info["generator"] == {**info["generator"], "hidden": 8, "layers": 1, "heads": 1, "ffn": 32,
                                 "embedding_size": 16}
    from qingbert.models import zoo
    from qingbert.pretraining.electra import generator_config

    for name, (h, heads, ffn) in {"electra-small": (64, 1, 256), "electra-base": (192, 3, 768)}.items():
        g = generator_config(zoo.build_config(name), ElectraConfig())
        assert (g.hidden_size, g.num_attention_heads, g.intermediate_size, g.num_hidden_layers) == (h, heads, ffn, 12)
        assert g.embedding_size == zoo.get_spec(name).emb_dim


def test_masking_is_mask_or_keep_and_init_falls_back(tok, small_prepared):
    obj, col, ev, info = objective(tok)
    assert (col.cfg.mask_ratio, col.cfg.random_ratio) == (0.85, 0.0) and ev.cfg.mlm_probability == 0.15
    b = batch_of(small_prepared, col, n=64)
    sel = b["labels"] != IGNORE
    got, orig = b["input_ids"][sel], b["labels"][sel]
    assert ((got == tok.mask_token_id) | (got == orig)).all()  # never a random token
    assert 0.7 < float((got == tok.mask_token_id).float().mean()) < 0.97
    # local-attention (pretrain's default init) needs embeddings as wide as the hidden size
    cfg = pcfg()
    cfg.init = "local-attention"
    *_, info = make_objective("electra-small", tok, cfg, OPTIONS)
    assert info["initialisation"]["init"] == "default" and "skipped" in info["initialisation"]
    cfg = pcfg(embedding_size=32)
    cfg.init = "local-attention"
    *_, info = make_objective("electra-small", tok, cfg, OPTIONS)
    assert info["initialisation"]["init"] == "local-attention"


# ---------------------------------------------------------------------------
# replaced-token detection


def test_labels_mark_exactly_the_replaced_positions(tok, small_prepared):
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0], [2, 20, 21, 22, 3, 0, 0]])
    labels = torch.full_like(ids, IGNORE)
    labels[0, 1], labels[0, 3], labels[1, 2], labels[1, 3] = 10, 12, 21, 22
    ids = ids.masked_fill(labels != IGNORE, tok.mask_token_id)
    sampled = torch.tensor([10, 99, 5, 22])  # right, wrong, wrong, right
    fake, replaced = replace_tokens(ids, labels, sampled)
    assert fake[labels != IGNORE].tolist() == [10, 99, 5, 22]
    assert (fake[labels == IGNORE] == ids[labels == IGNORE]).all()
    expected = torch.zeros_like(replaced)
    expected[0, 3] = expected[1, 2] = True  # a sampled token equal to the original is not "replaced"
    assert torch.equal(replaced, expected)

    # the same through the objective, with the generator's sampling forced
    obj, col, _, _ = objective(tok)
    obj.eval()
    b = batch_of(small_prepared, col)
    sel = b["labels"] != IGNORE
    target = b["labels"][sel]
    forced = target.clone()
    forced[::2] = (target[::2] + 1) % len(tok)  # every other masked token wrong, the rest the original
    obj.sample = lambda logits, generator=None: forced
    seen = {}
    hook = obj.discriminator.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    _, m = obj(b)
    hook.remove()
    assert torch.equal(seen["input_ids"][sel], forced)
    assert torch.equal(seen["input_ids"][~sel], b["input_ids"][~sel])
    assert int(m["replaced"]) == (forced != target).sum() == (target.numel() + 1) // 2
    assert m["disc_tokens"] == int(b["attention_mask"].sum())  # padding ignored, specials counted


def test_loss_is_generator_plus_50_times_discriminator(tok, small_prepared):
    obj, col, _, _ = objective(tok)
    obj.eval()  # no dropout: the recomputation sees the same network
    b = batch_of(small_prepared, col)
    sel = b["labels"] != IGNORE
    target = b["labels"][sel]
    forced = torch.where(torch.arange(target.numel()) % 3 == 0, (target + 7) % len(tok), target)
    obj.sample = lambda logits, generator=None: forced
    loss, m = obj(b)
    # direct recomputation with the plain transformers forwards (full vocabulary head everywhere)
    gen_logits = obj.generator(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    gen = F.cross_entropy(gen_logits[sel], target)
    fake = b["input_ids"].clone()
    fake[sel] = forced
    y = torch.zeros_like(fake, dtype=torch.float)
    y[sel] = (forced != target).float()
    d = obj.discriminator(input_ids=fake, attention_mask=b["attention_mask"]).logits
    real = b["attention_mask"] > 0
    disc = F.binary_cross_entropy_with_logits(d[real], y[real])
    assert torch.allclose(loss, gen + 50 * disc, atol=1e-5, rtol=1e-5)
    assert torch.allclose(m["gen_loss"], gen, atol=1e-5) and torch.allclose(m["disc_loss"], disc, atol=1e-6)
    # ElectraForPreTraining's own loss agrees on the discriminator part
    own = obj.discriminator(input_ids=fake, attention_mask=b["attention_mask"], labels=y.long()).loss
    assert torch.allclose(own, disc, atol=1e-6)
    obj.disc_weight = 2.0
    assert torch.allclose(obj(b)[0], gen + 2 * disc, atol=1e-5)


def test_embeddings_are_shared_and_trained_by_both_losses(tok, small_prepared):
    obj, col, _, _ = objective(tok)
    d, g = obj.discriminator.electra.embeddings, obj.generator.electra.embeddings
    assert d is g
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        assert getattr(d, name).weight.data_ptr() == getattr(g, name).weight.data_ptr()
    assert obj.generator.generator_lm_head.weight is d.word_embeddings.weight  # decoder tied
    assert obj.generator.get_input_embeddings() is obj.discriminator.get_input_embeddings()
    assert hasattr(obj.generator.electra, "embeddings_project") and obj.generator.electra.embeddings_project \
        is not obj.discriminator.electra.embeddings_project
    # the objective's parameters count the shared tensors once (the optimizer sees each once)
    n = sum(p.numel() for p in obj.parameters())
    assert n == sum(p.numel() for p in obj.discriminator.parameters()) + \
        sum(p.numel() for p in obj.generator.parameters()) - sum(p.numel() for p in d.parameters())
    b = batch_of(small_prepared, col)
    # each model alone reaches the shared embeddings
    obj.zero_grad()
    gen_only = obj.generator_logits(b, b["labels"] != IGNORE).sum()
    gen_only.backward()
    assert d.word_embeddings.weight.grad.abs().sum() > 0 and d.LayerNorm.weight.grad.abs().sum() > 0
    obj.zero_grad()
    obj.discriminator(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.sum().backward()
    assert d.position_embeddings.weight.grad.abs().sum() > 0
    # one optimizer step moves the one table both models read
    obj.zero_grad()
    before = d.word_embeddings.weight.detach().clone()
    opt = torch.optim.SGD(obj.parameters(), lr=1.0)
    obj(b)[0].backward()
    opt.step()
    assert not torch.equal(before, d.word_embeddings.weight)
    assert torch.equal(obj.generator.electra.embeddings.word_embeddings.weight, d.word_embeddings.weight)
    assert torch.equal(obj.generator.generator_lm_head.weight, obj.discriminator.get_input_embeddings().weight)


# ---------------------------------------------------------------------------
# a short run and what it leaves


def test_train_save_load_without_qingbert_and_finetune(tok, small_prepared, tmp_path):
    from qingbert.models import loading
    from qingbert.tasks.finetune import FinetuneConfig, load_for_task

    cfg = pcfg()
    cfg.train.save_every = 3
    obj, col, ev, info = make_objective("electra-small", tok, cfg, OPTIONS, data_dir=small_prepared)
    train = load_prepared(small_prepared, "train")
    heldout = load_prepared(small_prepared, "eval")
    out = tmp_path / "run"
    trainer = Trainer(obj, train, col, out, cfg.train, eval_data=heldout, eval_collate=ev)
    rng = torch.get_rng_state()
    first = trainer.evaluate()
    assert torch.equal(rng, torch.get_rng_state())  # evaluation samples with its own RNG
    assert trainer.evaluate() == first  # ... and the same every time
    for k in ("masked_accuracy", "loss", "perplexity", "disc_accuracy", "disc_precision", "disc_recall",
              "replaced_fraction", "electra_loss"):
        assert k in first
    history = trainer.run()
    train_log = [h for h in history if h["split"] == "train"]
    assert len(train_log) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in train_log)
    assert "masked_accuracy" in train_log[-1]
    assert 0 <= train_log[-1]["disc_accuracy"] <= 1  # the loop logs the objective's extra accuracies too
    after = history[-1]
    assert after["split"] == "eval" and 0 <= after["disc_accuracy"] <= 1 and after["loss"] > 0
    # the checkpoint (shared tensors in one file) reads back into a fresh pair
    obj2, *_ = make_objective("electra-small", tok, cfg, OPTIONS)
    t2 = Trainer(obj2, train, col, out, cfg.train)
    assert t2.load_checkpoint() is not None
    emb2, emb = obj2.discriminator.get_input_embeddings(), obj.discriminator.get_input_embeddings()
    assert torch.equal(emb2.weight, emb.weight)
    assert obj2.generator.generator_lm_head.weight is obj2.discriminator.get_input_embeddings().weight

    final = trainer.unwrapped_objective().trained_model()
    assert type(final).__name__ == "ElectraForPreTraining"
    final.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tok, out)
    gen_dir = trainer.unwrapped_objective().save_extra(out)
    assert gen_dir == out / GENERATOR and (gen_dir / "vocab.txt").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ElectraForPreTraining"]

    code = f"""
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, ElectraForMaskedLM,
                          ElectraForPreTraining, ElectraModel)
folder = {str(out)!r}
d, info = ElectraForPreTraining.from_pretrained(folder, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info
ElectraModel.from_pretrained(folder)
c = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
assert type(c).__name__ == "ElectraForSequenceClassification"
tok = AutoTokenizer.from_pretrained(folder)
enc = tok(["今天天气很好"], return_tensors="pt")
assert d(**enc).logits.shape == enc["input_ids"].shape
g, ginfo = ElectraForMaskedLM.from_pretrained(folder + "/generator", output_loading_info=True)
assert not ginfo["missing_keys"], ginfo
assert g.config.hidden_size == 8 and g.generator_lm_head.weight.data_ptr() == g.get_input_embeddings().weight.data_ptr()
assert torch.equal(g.get_input_embeddings().weight, d.get_input_embeddings().weight)
print("ok")
"""
    res = run_without_qingbert(code, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]

    # qingbert's fine-tuning and zoo loaders take the discriminator folder
    head = types.SimpleNamespace(auto_class="AutoModelForSequenceClassification", labels=["neg", "pos"])
    net, ftok, how = load_for_task(str(out), head, FinetuneConfig())
    assert type(net).__name__ == "ElectraForSequenceClassification" and how == f"weights from {out}"
    enc = ftok(["质量很好", "太差了"], return_tensors="pt", padding=True)
    ft_loss = net(**enc, labels=torch.tensor([1, 0])).loss
    ft_loss.backward()
    assert torch.isfinite(ft_loss)
    assert type(loading.load_model(str(out), head="base")).__name__ == "ElectraModel"

    # continued pretraining picks up the generator/ subfolder and shares the embeddings again
    disc, gen, how = load_electra(str(out), tok, ElectraConfig())
    assert how["generator_init"] == f"weights from {out / GENERATOR}" and gen.config.hidden_size == 8
    obj3, *_ = make_objective(str(out), tok, PretrainConfig(train=cfg.train), {})
    assert obj3.generator.electra.embeddings is obj3.discriminator.electra.embeddings
    assert torch.equal(obj3.generator.generator_predictions.dense.weight, gen.generator_predictions.dense.weight)
    with pytest.raises(QingbertError, match="does not match generator_hidden 4"):
        make_objective(str(out), tok, PretrainConfig(train=cfg.train), {"generator_hidden": 4})
    with pytest.raises(QingbertError, match="not a discriminator"):
        make_objective(str(gen_dir), tok, PretrainConfig(train=cfg.train), {})


def test_generator_head_runs_only_at_masked_positions_like_bert():
    """mlm.mlm_head finds ELECTRA's two-module generator head, so masked_lm_loss (and general distillation)
    run it at the masked positions only; the loss equals the model's own full-head loss."""
    from transformers import ElectraConfig as HFConfig
    from transformers import ElectraForMaskedLM

    from qingbert.pretraining.mlm import masked_lm_loss, mlm_head

    torch.manual_seed(0)
    m = ElectraForMaskedLM(HFConfig(vocab_size=50, hidden_size=16, embedding_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32)).eval()
    assert mlm_head(m) is not None
    ids = torch.randint(5, 50, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = ids[0, 3], 7
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        loss, metrics = masked_lm_loss(m, batch)
        ref = m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    assert metrics["masked_tokens"] == 2 and torch.allclose(loss, ref, atol=1e-6)
