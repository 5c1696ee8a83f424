"""Local-attention initialisation: heads look at their offsets, the model stays plain BERT, and it learns
neighbour-dependent masked tokens sooner than the default init."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, ElectraConfig, ElectraForMaskedLM

from qingbert.errors import QingbertError
from qingbert.models.inits import apply_init, local_attention_init
from qingbert.pretraining.mlm import IGNORE, masked_lm_loss


def bert(hidden=256, heads=4, layers=2, vocab=500, seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, intermediate_size=4 * hidden,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def first_layer_attention(model, ids):
    model.set_attn_implementation("eager")
    model.eval()
    with torch.no_grad():
        return model.bert(input_ids=ids, output_attentions=True).attentions[0][0]  # heads x q x k


@pytest.mark.parametrize("hidden,heads", [(256, 4), (128, 4), (256, 8)])
def test_heads_attend_to_their_offsets(hidden, heads):
    m = bert(hidden, heads)
    rec = local_attention_init(m, offsets=(-1, 1, -2, 2))
    assert rec["offsets"] == [-1, 1, -2, 2] and rec["position_block"] == hidden // heads
    ids = torch.randint(5, 500, (1, 100), generator=torch.Generator().manual_seed(1))
    att = first_layer_attention(m, ids)
    for h, off in enumerate((-1, 1, -2, 2)):
        for i in range(10, 90, 7):
            row = att[h, i]
            assert int(row.argmax()) == i + off, (h, i, row.topk(3))
            assert float(row[i + off]) > 0.5
    # heads beyond the offsets keep their random init (near-uniform attention)
    if heads > 4:
        assert float(att[4:, 10:90].max()) < 0.2


def test_model_stays_plain_bert(tmp_path):
    m = bert(128, 4)
    local_attention_init(m)
    m.save_pretrained(tmp_path)
    again = BertForMaskedLM.from_pretrained(tmp_path)
    ids = torch.randint(5, 500, (2, 40), generator=torch.Generator().manual_seed(2))
    m.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(m(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)
    table = again.bert.embeddings.position_embeddings.weight.detach()
    block = 128 // 4
    # the position code: each sine/cosine pair has constant norm along positions; tokens are zero on the block
    pair_norm = table[:, 0:block:2] ** 2 + table[:, 1:block:2] ** 2
    assert torch.allclose(pair_norm, pair_norm[0].expand_as(pair_norm), atol=1e-6)
    assert float(again.bert.embeddings.word_embeddings.weight.detach()[:, :block].abs().max()) == 0.0
    assert float(again.bert.embeddings.word_embeddings.weight.detach()[:, block:].abs().max()) > 0.0


def test_bad_models_and_options():
    with pytest.raises(QingbertError, match="as wide as the hidden size"):
        local_attention_init(ElectraForMaskedLM(ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=64,
                                                              num_hidden_layers=1, num_attention_heads=2,
                                                              intermediate_size=64)))
    with pytest.raises(QingbertError, match="at least 4 dimensions"):
        local_attention_init(bert(hidden=16, heads=8))
    with pytest.raises(QingbertError, match="layer 5 does not exist"):
        local_attention_init(bert(64, 2), layer=5)
    with pytest.raises(QingbertError, match="non-zero"):
        local_attention_init(bert(64, 2), offsets=(0, 1))
    with pytest.raises(QingbertError, match="unknown initialisation"):
        apply_init(bert(64, 2), "xavier")
    assert apply_init(bert(64, 2), "default") == {"init": "default"}
    # ELECTRA with embeddings as wide as the hidden size qualifies
    e = ElectraForMaskedLM(ElectraConfig(vocab_size=100, embedding_size=64, hidden_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64))
    assert local_attention_init(e, offsets=(-1, 1))["offsets"] == [-1, 1]


def chain_batch(rng, succ, n=32, length=48, vocab=60):
    """Sequences where every token is succ[previous token]; 15 % of positions masked ([MASK] = 4)."""
    start = rng.integers(5, vocab, size=n)
    ids = np.zeros((n, length), dtype=np.int64)
    ids[:, 0] = start
    for t in range(1, length):
        ids[:, t] = succ[ids[:, t - 1]]
    labels = np.full_like(ids, IGNORE)
    sel = rng.random(ids.shape) < 0.15
    labels[sel] = ids[sel]
    inp = ids.copy()
    inp[sel] = 4
    return {"input_ids": torch.from_numpy(inp), "attention_mask": torch.ones_like(torch.from_numpy(inp)),
            "labels": torch.from_numpy(labels)}


def masked_accuracy_after(init: str, steps=80, seed=0):
    vocab = 60
    rng = np.random.default_rng(seed)
    succ = np.arange(vocab)
    succ[5:] = 5 + rng.permutation(vocab - 5)  # a random bijection on the ordinary tokens
    m = bert(hidden=64, heads=4, layers=1, vocab=vocab, seed=seed)
    m.config.max_position_embeddings = 512
    apply_init(m, init)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    m.train()
    for _ in range(steps):
        loss, _ = masked_lm_loss(m, chain_batch(rng, succ))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        _, met = masked_lm_loss(m, chain_batch(np.random.default_rng(99), succ, n=128))
    return int(met["correct"]) / met["masked_tokens"]


def test_learns_a_neighbour_task_sooner_than_default_init():
    torch.set_num_threads(1)
    local = masked_accuracy_after("local-attention")
    default = masked_accuracy_after("default")
    # each masked token is determined by its left (or right) neighbour: only attention to it can solve the task
    assert local > 0.8, local
    assert local > default + 0.3, (local, default)
