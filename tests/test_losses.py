"""Tests for qingbert.distillation.losses: every loss against a direct formula, schedules, projections.

The reference values are computed independently with explicit Python loops over numpy arrays (float64),
never by calling the function under test.  Padding positions are filled with garbage (nan, inf, huge
numbers) to show that masking keeps them out of both the value and the gradient.
"""

import math

import numpy as np
import pytest
import torch

from qingbert.distillation.losses import (
    FEATURE_OF,
    LOSSES,
    Schedule,
    attention_kl,
    attention_mse,
    get_loss,
    hard_ce,
    hidden_cos,
    hidden_mse,
    kd_ce,
    kd_mse,
    make_projection,
    pkd,
)
from qingbert.errors import QingbertError

B, L, C, D = 2, 5, 4, 6
# batch 0 has 3 real tokens, batch 1 has all 5
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def rand_att(b, h, n, seed=0):
    """Random attention probabilities (rows sum to 1 over the key axis)."""
    return torch.softmax(rand(b, h, n, n, seed=seed) * 2, dim=-1)


def garbage(x, mask, value=float("nan")):
    """A copy of ``x`` with ``value`` wherever the (B, L) ``mask`` is false (positions axis = dim 1)."""
    y = x.clone()
    y[~mask] = value
    return y


def garbage_att(att, mask, value=float("nan")):
    """A copy of attention (B, H, L, L) with ``value`` in every pair touching a padded token."""
    y = att.clone()
    pairs = mask[:, :, None] & mask[:, None, :]
    y[~pairs[:, None].expand_as(y)] = value
    return y


def np_softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


def positions(mask, shape):
    """The (batch, position) pairs selected by ``mask`` for an array of ``shape``."""
    return [(i, j) for i in range(shape[0]) for j in range(shape[1]) if mask is None or bool(mask[i, j])]


# ---------------------------------------------------------------- direct formulas

def ref_kd_ce(s, t, temp, mask=None, t2=True):
    s, t = s.detach().numpy(), t.detach().numpy()
    vals = []
    for i, j in positions(mask, s.shape):
        p = np_softmax(t[i, j] / temp)
        q = np_softmax(s[i, j] / temp)
        vals.append(-sum(p[c] * math.log(q[c]) for c in range(C)))
    return (np.mean(vals) if vals else 0.0) * (temp ** 2 if t2 else 1.0)


def ref_kd_mse(s, t, temp, mask=None):
    s, t = s.detach().numpy(), t.detach().numpy()
    errs = [(s[i, j, c] / temp - t[i, j, c] / temp) ** 2 for i, j in positions(mask, s.shape) for c in range(C)]
    return np.mean(errs) if errs else 0.0


def ref_hidden_mse(s, t, mask=None):
    s, t = s.detach().numpy(), t.detach().numpy()
    errs = [(s[i, j, k] - t[i, j, k]) ** 2 for i, j in positions(mask, s.shape) for k in range(s.shape[-1])]
    return np.mean(errs) if errs else 0.0


def ref_hidden_cos(s, t, mask=None):
    s, t = s.detach().numpy(), t.detach().numpy()
    vals = []
    for i, j in positions(mask, s.shape):
        a, b = s[i, j], t[i, j]
        vals.append(1 - float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b))))
    return np.mean(vals) if vals else 0.0


def head_mean(att):
    a = att.detach().numpy()
    return a.mean(axis=1, keepdims=True) if a.shape[1] > 1 else a


def ref_attention_mse(s, t, mask=None):
    s, t = s.detach().numpy(), t.detach().numpy()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(axis=1, keepdims=True), t.mean(axis=1, keepdims=True)
    errs = []
    for b in range(s.shape[0]):
        for h in range(s.shape[1]):
            for q in range(s.shape[2]):
                for k in range(s.shape[3]):
                    if mask is None or (mask[b, q] and mask[b, k]):
                        errs.append((s[b, h, q, k] - t[b, h, q, k]) ** 2)
    return np.mean(errs) if errs else 0.0


def ref_attention_kl(s, t, mask=None, eps=1e-12):
    s, t = s.detach().numpy(), t.detach().numpy()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(axis=1, keepdims=True), t.mean(axis=1, keepdims=True)
    rows = []
    for b in range(s.shape[0]):
        for h in range(s.shape[1]):
            for q in range(s.shape[2]):
                if mask is not None and not mask[b, q]:
                    continue
                keys = [k for k in range(s.shape[3]) if mask is None or mask[b, k]]
                rows.append(sum(t[b, h, q, k] * (math.log(t[b, h, q, k] + eps) - math.log(s[b, h, q, k] + eps))
                                for k in keys))
    return np.mean(rows) if rows else 0.0


def ref_pkd(s, t):
    s, t = s.detach().numpy(), t.detach().numpy()
    vals = []
    for i in range(s.shape[0]):
        a = s[i] / math.sqrt(float(s[i] @ s[i]))
        b = t[i] / math.sqrt(float(t[i] @ t[i]))
        vals.append(sum((a[k] - b[k]) ** 2 for k in range(len(a))))
    return np.mean(vals)


# ---------------------------------------------------------------- kd_ce

@pytest.mark.parametrize("temp", [1.0, 2.0, 4.5])
def test_kd_ce_matches_formula_with_t2(temp):
    s, t = rand(B, L, C, seed=1), rand(B, L, C, seed=2)
    assert kd_ce(s, t, temp).item() == pytest.approx(ref_kd_ce(s, t, temp), rel=1e-10)
    assert kd_ce(s, t, temp, t2=False).item() == pytest.approx(ref_kd_ce(s, t, temp, t2=False), rel=1e-10)


def test_kd_ce_t2_false_is_t2_true_over_t_squared():
    s, t = rand(B, L, C, seed=3), rand(B, L, C, seed=4)
    for temp in (1.0, 3.0, 0.5):
        with_t2 = kd_ce(s, t, temp, t2=True).item()
        assert kd_ce(s, t, temp, t2=False).item() == pytest.approx(with_t2 / temp ** 2, rel=1e-12)
    # at T = 1 the factor is 1
    assert kd_ce(s, t, 1.0, t2=False).item() == pytest.approx(kd_ce(s, t, 1.0).item(), rel=1e-12)


def test_kd_ce_of_identical_logits_is_teacher_entropy():
    # -sum p log p for uniform logits over C classes is log C (T^2 = 1)
    z = torch.zeros(3, C, dtype=torch.float64)
    assert kd_ce(z, z).item() == pytest.approx(math.log(C))


def test_kd_ce_masked_ignores_garbage():
    s, t = rand(B, L, C, seed=5), rand(B, L, C, seed=6)
    expected = ref_kd_ce(s, t, 2.0, MASK)
    s_bad = garbage(s, MASK).requires_grad_()
    t_bad = garbage(t, MASK, float("inf"))
    loss = kd_ce(s_bad, t_bad, 2.0, mask=MASK)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(s_bad.grad).all()
    assert (s_bad.grad[~MASK] == 0).all() and s_bad.grad[MASK].abs().sum() > 0
    # a 0/1 integer mask means the same
    assert kd_ce(s, t, 2.0, mask=MASK.long()).item() == pytest.approx(expected, rel=1e-10)


def test_kd_ce_works_on_2d_logits_and_half_inputs():
    s, t = rand(3, C, seed=7), rand(3, C, seed=8)
    ref = np.mean([-(np_softmax(t[i].numpy()) * np.log(np_softmax(s[i].numpy()))).sum() for i in range(3)])
    assert kd_ce(s, t).item() == pytest.approx(ref, rel=1e-10)
    half = kd_ce(s.half(), t.half(), 2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ref_kd_ce(s[None].expand(B, 3, C), t[None].expand(B, 3, C), 2.0), rel=1e-2)


def test_kd_ce_rejects_bad_temperature_and_shapes():
    s = rand(B, L, C)
    with pytest.raises(QingbertError, match="temperature"):
        kd_ce(s, s, 0.0)
    with pytest.raises(ValueError, match="shape"):
        kd_ce(s, rand(B, L, C + 1))
    with pytest.raises(ValueError, match="mask"):
        kd_ce(s, s, mask=MASK[:, :3])


# ---------------------------------------------------------------- kd_mse / hard_ce

@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_kd_mse_matches_formula(temp):
    s, t = rand(B, L, C, seed=9), rand(B, L, C, seed=10)
    assert kd_mse(s, t, temp).item() == pytest.approx(ref_kd_mse(s, t, temp), rel=1e-10)
    expected = ref_kd_mse(s, t, temp, MASK)
    got = kd_mse(garbage(s, MASK), garbage(t, MASK, 1e30), temp, mask=MASK)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_hard_ce_matches_formula_and_skips_ignored():
    logits = rand(B, L, C, seed=11)
    labels = torch.tensor([[0, 3, 1, -100, -100], [2, 2, -100, 0, 1]])
    lg = logits.numpy()
    vals = [-math.log(np_softmax(lg[i, j])[labels[i, j]]) for i in range(B) for j in range(L) if labels[i, j] != -100]
    assert hard_ce(logits, labels).item() == pytest.approx(np.mean(vals), rel=1e-10)
    # a custom ignore index
    labels7 = torch.where(labels == -100, torch.tensor(7), labels)
    assert hard_ce(logits, labels7, ignore_index=7).item() == pytest.approx(np.mean(vals), rel=1e-10)
    # 2-D classification logits
    lab = torch.tensor([1, 0])
    ref = np.mean([-math.log(np_softmax(lg[i, 0])[lab[i]]) for i in range(B)])
    assert hard_ce(logits[:, 0], lab).item() == pytest.approx(ref, rel=1e-10)


def test_hard_ce_all_ignored_is_zero_with_grad():
    logits = rand(B, L, C, seed=12).requires_grad_()
    loss = hard_ce(logits, torch.full((B, L), -100))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------- hidden states / PKD

def test_hidden_mse_and_cos_match_formula():
    s, t = rand(B, L, D, seed=13), rand(B, L, D, seed=14)
    assert hidden_mse(s, t).item() == pytest.approx(ref_hidden_mse(s, t), rel=1e-10)
    assert hidden_cos(s, t).item() == pytest.approx(ref_hidden_cos(s, t), rel=1e-10)
    s_bad, t_bad = garbage(s, MASK), garbage(t, MASK, -float("inf"))
    assert hidden_mse(s_bad, t_bad, MASK).item() == pytest.approx(ref_hidden_mse(s, t, MASK), rel=1e-10)
    assert hidden_cos(s_bad, t_bad, MASK).item() == pytest.approx(ref_hidden_cos(s, t, MASK), rel=1e-10)


def test_hidden_cos_is_zero_for_parallel_vectors():
    s = rand(B, L, D, seed=15)
    assert hidden_cos(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-12)
    assert hidden_cos(s, -s).item() == pytest.approx(2.0)


def test_hidden_mse_wrong_width_asks_for_projection():
    with pytest.raises(ValueError, match="project"):
        hidden_mse(rand(B, L, 4), rand(B, L, D))


def test_pkd_matches_formula():
    s, t = rand(B + 1, D, seed=16), rand(B + 1, D, seed=17)
    assert pkd(s, t).item() == pytest.approx(ref_pkd(s, t), rel=1e-10)
    # scale-invariant: only the directions matter
    assert pkd(5.0 * s, 0.1 * t).item() == pytest.approx(ref_pkd(s, t), rel=1e-10)


# ---------------------------------------------------------------- attention

def test_attention_mse_matches_formula_same_heads():
    s, t = rand_att(B, 2, L, seed=18), rand_att(B, 2, L, seed=19)
    assert attention_mse(s, t).item() == pytest.approx(ref_attention_mse(s, t), rel=1e-10)
    expected = ref_attention_mse(s, t, MASK)
    assert attention_mse(garbage_att(s, MASK), garbage_att(t, MASK, 5.0), MASK).item() == pytest.approx(
        expected, rel=1e-10)


def test_attention_mse_head_averages_when_head_counts_differ():
    s, t = rand_att(B, 2, L, seed=20), rand_att(B, 4, L, seed=21)
    s_avg, t_avg = torch.from_numpy(head_mean(s)), torch.from_numpy(head_mean(t))
    expected = ref_attention_mse(s_avg, t_avg, MASK)
    assert attention_mse(s, t, MASK).item() == pytest.approx(expected, rel=1e-10)
    assert attention_mse(garbage_att(s, MASK), garbage_att(t, MASK), MASK).item() == pytest.approx(
        expected, rel=1e-10)
    assert attention_mse(s, t).item() == pytest.approx(ref_attention_mse(s_avg, t_avg), rel=1e-10)


def test_attention_kl_matches_formula():
    s, t = rand_att(B, 3, L, seed=22), rand_att(B, 3, L, seed=23)
    assert attention_kl(s, t).item() == pytest.approx(ref_attention_kl(s, t), rel=1e-10)
    expected = ref_attention_kl(s, t, MASK)
    assert attention_kl(garbage_att(s, MASK), garbage_att(t, MASK, -1.0), MASK).item() == pytest.approx(
        expected, rel=1e-10)
    # KL of a distribution with itself is 0; KL is not symmetric
    assert attention_kl(t, t, MASK).item() == pytest.approx(0.0, abs=1e-12)
    assert attention_kl(s, t).item() != pytest.approx(attention_kl(t, s).item())


def test_attention_kl_head_averages_when_head_counts_differ():
    s, t = rand_att(B, 1, L, seed=24), rand_att(B, 3, L, seed=25)
    t_avg = torch.from_numpy(head_mean(t))
    assert attention_kl(s, t, MASK).item() == pytest.approx(ref_attention_kl(s, t_avg, MASK), rel=1e-10)


def test_attention_rejects_wrong_rank_or_length():
    with pytest.raises(ValueError, match="attention"):
        attention_mse(rand(B, L, L), rand(B, L, L))
    with pytest.raises(ValueError):
        attention_kl(rand_att(B, 2, L), rand_att(B, 2, L + 1))


# ---------------------------------------------------------------- all-masked, gradients, teacher frozen

def _cases():
    """(name, make args from student/teacher tensors, mask shape) for each loss taking a mask."""
    return {
        "kd_ce": ((B, L, C), (B, L, C), lambda s, t, m: kd_ce(s, t, 2.0, mask=m)),
        "kd_mse": ((B, L, C), (B, L, C), lambda s, t, m: kd_mse(s, t, 2.0, mask=m)),
        "hidden_mse": ((B, L, D), (B, L, D), lambda s, t, m: hidden_mse(s, t, m)),
        "hidden_cos": ((B, L, D), (B, L, D), lambda s, t, m: hidden_cos(s, t, m)),
        "attention_mse": ((B, 2, L, L), (B, 4, L, L), lambda s, t, m: attention_mse(s, t, m)),
        "attention_kl": ((B, 2, L, L), (B, 2, L, L), lambda s, t, m: attention_kl(s, t, m)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_all_masked_gives_zero_without_nan(name):
    s_shape, t_shape, fn = _cases()[name]
    s = torch.rand(*s_shape, dtype=torch.float64).requires_grad_()
    t = torch.rand(*t_shape, dtype=torch.float64)
    loss = fn(s, t, torch.zeros(B, L, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("name", list(_cases()) + ["pkd", "hard_ce"])
def test_gradient_reaches_student_not_teacher(name):
    if name == "pkd":
        s_shape, t_shape, fn = (B, D), (B, D), lambda s, t, m: pkd(s, t)
    elif name == "hard_ce":
        s_shape, t_shape, fn = (B, L, C), (B, L), lambda s, t, m: hard_ce(s, t.long())
    else:
        s_shape, t_shape, fn = _cases()[name]
    s = torch.rand(*s_shape, dtype=torch.float64).requires_grad_()
    if name == "hard_ce":
        t = torch.randint(0, C, t_shape)
    else:
        t = torch.rand(*t_shape, dtype=torch.float64).requires_grad_()
    loss = fn(s, t, MASK)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    if t.is_floating_point():
        assert t.grad is None


# ---------------------------------------------------------------- projections

@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_projection_inside_hidden_mse_gets_gradient_and_changes(optim):
    torch.manual_seed(0)
    proj = make_projection("linear", 4, D)
    student = torch.randn(B, L, 4)
    teacher = torch.randn(B, L, D)
    before = proj.weight.detach().clone()
    opt = (torch.optim.SGD(proj.parameters(), lr=0.1) if optim == "sgd"
           else torch.optim.AdamW(proj.parameters(), lr=0.01))
    loss = hidden_mse(proj(student), teacher, MASK)
    loss.backward()
    assert proj.weight.grad.abs().sum() > 0 and proj.bias.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(proj.weight.detach(), before)
    assert hidden_mse(proj(student), teacher, MASK).item() < loss.item()


def test_projection_kinds():
    assert isinstance(make_projection(None, D, D), torch.nn.Identity)
    lin = make_projection("linear", 4, D)
    assert isinstance(lin, torch.nn.Linear) and (lin.in_features, lin.out_features) == (4, D)
    for kind, act in (("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh)):
        m = make_projection(kind, 4, D)
        assert isinstance(m[0], torch.nn.Linear) and isinstance(m[1], act)
        assert m(torch.randn(3, 4)).shape == (3, D)
    x = torch.randn(3, 4)
    assert (make_projection("relu", 4, D)(x) >= 0).all()
    # a projection that changes nothing is still trainable when asked for
    assert len(list(make_projection("linear", D, D).parameters())) == 2


def test_projection_errors():
    with pytest.raises(QingbertError, match="student width 4 != teacher width 6: give the match a projection"):
        make_projection(None, 4, 6)
    with pytest.raises(QingbertError, match="unknown projection") as e:
        make_projection("gelu", 4, 6)
    assert "linear" in e.value.hint
    with pytest.raises(QingbertError):
        make_projection("linear", 0, 6)


# ---------------------------------------------------------------- schedules

def test_schedule_values():
    cases = [
        (2.0, (2.0, 2.0, 2.0)),
        (3, (3.0, 3.0, 3.0)),
        ({"kind": "constant", "value": 4.0}, (4.0, 4.0, 4.0)),
        ({"kind": "linear", "start": 8.0, "end": 2.0}, (8.0, 5.0, 2.0)),
        ({"kind": "cosine", "start": 1.0, "end": 0.0}, (1.0, 0.5, 0.0)),
        ({"kind": "linear_decay", "start": 0.8}, (0.8, 0.4, 0.0)),
        ({"kind": "linear_growth", "value": 0.8}, (0.0, 0.4, 0.8)),
    ]
    for spec, (v0, v_half, v1) in cases:
        sch = Schedule.parse(spec)
        assert sch(0) == pytest.approx(v0) and sch(0.5) == pytest.approx(v_half) and sch(1) == pytest.approx(v1)
        # progress is clamped
        assert sch(-1) == pytest.approx(v0) and sch(7) == pytest.approx(v1)
    # cosine: 1 - (1 - cos(pi/4)) / 2 at a quarter of the way
    assert Schedule.parse({"kind": "cosine", "start": 1.0, "end": 0.0})(0.25) == pytest.approx(
        (1 + math.cos(math.pi / 4)) / 2)


def test_schedule_is_constant_and_round_trips():
    assert Schedule.parse(2.0).is_constant
    assert not Schedule.parse({"kind": "linear", "start": 1, "end": 0}).is_constant
    for spec in (2.0, {"kind": "linear", "start": 4, "end": 1}, {"kind": "cosine", "start": 0, "end": 1},
                 {"kind": "linear_decay", "start": 0.5}, {"kind": "linear_growth", "start": 0.5}):
        sch = Schedule.parse(spec)
        d = sch.to_dict()
        assert Schedule.parse(d) == sch
        assert all(isinstance(v, (str, float)) for v in d.values())
    assert Schedule.parse(Schedule.parse(1.5)) == Schedule.parse(1.5)


@pytest.mark.parametrize("spec, words", [
    ("fast", "number or a mapping"),
    ("linear_decay", "needs a value"),
    (True, "number or a mapping"),
    (None, "number or a mapping"),
    ({"kind": "exponential", "start": 1}, "unknown schedule kind"),
    ({"kind": "linear", "start": 1}, "needs an 'end'"),
    ({"kind": "cosine", "end": 1}, "needs a 'start'"),
    ({"kind": "linear", "start": "a", "end": 1}, "start must be a finite number"),
    ({"kind": "linear", "start": 1, "end": float("nan")}, "end must be a finite number"),
    ({"kind": "linear_decay", "start": 1, "end": 0.5}, "takes no 'end'"),
    ({"kind": "linear", "start": 1, "end": 0, "steps": 3}, "unknown schedule key 'steps'"),
    ({"kind": "constant", "start": 1, "end": 2}, "one value"),
    ({"kind": "constant", "start": 1, "value": 1}, "not both"),
])
def test_schedule_parse_errors(spec, words):
    with pytest.raises(QingbertError, match=words):
        Schedule.parse(spec)


# ---------------------------------------------------------------- registry

def test_registry_and_get_loss():
    assert set(LOSSES) == {"kd_ce", "kd_mse", "hard_ce", "hidden_mse", "hidden_cos", "attention_mse",
                           "attention_kl", "pkd"}
    assert get_loss("kd_ce") is kd_ce and get_loss("pkd") is pkd
    assert FEATURE_OF == {"hidden_mse": "hidden", "hidden_cos": "hidden", "pkd": "hidden",
                          "attention_mse": "attention", "attention_kl": "attention"}
    with pytest.raises(QingbertError, match="unknown loss 'kd_kl'") as e:
        get_loss("kd_kl")
    assert e.value.hint.startswith("available: ") and "attention_kl" in e.value.hint
