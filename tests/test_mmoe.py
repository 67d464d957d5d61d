"""Tests of the multi-task heavy ranker (recsys/rank): MMoE / shared-bottom / single-task cores, target
attention pooling, RankerNet, the ESMM loss, and the training loop (early stopping, determinism), plus a
planted two-task world where MMoE must beat shared-bottom when the tasks conflict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from offline_eval.calibration import auc, downsample_negatives, logloss, recalibrate
from recsys.configlib import ConfigError
from recsys.rank import (
    ARCHITECTURES,
    MLP,
    Gate,
    MMoE,
    RankerNet,
    SharedBottom,
    TargetAttentionPooling,
    TrainConfig,
    build_multitask,
    fit_multitask,
    multitask_loss,
    predict,
    ranker_input_dim,
    task_logloss,
    task_probabilities,
    validate_esmm_parent,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------
# Cores
# --------------------------------------------------------------------------------------------------------


def test_gates_are_per_task_and_sum_to_one():
    torch.manual_seed(0)
    model = build_multitask("mmoe", in_dim=6, n_tasks=3, n_experts=4, expert_dims=(8,), tower_dims=(5,))
    assert isinstance(model, MMoE)
    assert len(model.gates) == 3 and len({id(g) for g in model.gates}) == 3
    weights = [g.linear.weight for g in model.gates]
    for a in range(3):
        for b in range(a + 1, 3):
            assert weights[a].data_ptr() != weights[b].data_ptr()
            assert not torch.allclose(weights[a], weights[b])
    x = torch.randn(32, 6)
    logits, gates = model(x, return_gates=True)
    assert logits.shape == (32, 3) and gates.shape == (32, 3, 4)
    assert torch.all(gates >= 0)
    torch.testing.assert_close(gates.sum(-1), torch.ones(32, 3))
    # different tasks mix the experts differently for the same example
    assert (gates[:, 0] - gates[:, 1]).abs().max() > 1e-3
    torch.testing.assert_close(model.last_gates, gates.detach())
    torch.testing.assert_close(model(x), logits)


def test_mmoe_matches_slow_reference():
    """Per example and task: logit_t = tower_t(sum_e g_t(x)[e] * expert_e(x)) (Ma et al. 2018, eq. 4-5)."""
    torch.manual_seed(1)
    model = build_multitask("mmoe", in_dim=5, n_tasks=2, n_experts=3, expert_dims=(7,), tower_dims=(4,))
    x = torch.randn(6, 5)
    fast = model(x)
    for b in range(6):
        xb = x[b : b + 1]
        for t in range(2):
            g = torch.softmax(model.gates[t].linear.weight @ xb[0], dim=0)
            mixed = sum(g[e] * model.experts[e](xb)[0] for e in range(3))
            ref = model.towers[t](mixed.unsqueeze(0))[0, 0]
            torch.testing.assert_close(fast[b, t], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_shapes_all_architectures(arch):
    torch.manual_seed(0)
    model = build_multitask(
        arch, in_dim=7, n_tasks=3, n_experts=2, expert_dims=(6, 5), tower_dims=(4,), dropout=0.1
    )
    x = torch.randn(11, 7)
    assert model(x).shape == (11, 3)
    logits, gates = model(x, return_gates=True)
    assert logits.shape == (11, 3)
    assert (gates is not None) == (arch == "mmoe")
    assert model.in_dim == 7


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        build_multitask("ple", in_dim=4, n_tasks=2)
    for name in ARCHITECTURES:
        assert name in str(e.value)


def test_mmoe_rejects_inconsistent_parts():
    experts = nn.ModuleList(MLP((4, 3), final_activation=True) for _ in range(2))
    towers = nn.ModuleList(MLP((3, 1)) for _ in range(2))
    with pytest.raises(ValueError, match="one gate per tower"):
        MMoE(experts, nn.ModuleList([Gate(4, 2)]), towers)
    with pytest.raises(ValueError, match="mixes 3 experts"):
        MMoE(experts, nn.ModuleList([Gate(4, 3), Gate(4, 3)]), towers)
    g = Gate(4, 2)
    with pytest.raises(ValueError, match="same gate"):
        MMoE(experts, nn.ModuleList([g, g]), towers)
    with pytest.raises(ValueError, match="dims"):
        MLP((4,))


def test_shared_bottom_towers_share_the_bottom():
    bottom = MLP((3, 4), final_activation=True)
    towers = nn.ModuleList(MLP((4, 1)) for _ in range(2))
    sb = SharedBottom(bottom, towers)
    x = torch.randn(5, 3)
    z = bottom(x)
    torch.testing.assert_close(sb(x), torch.cat([towers[0](z), towers[1](z)], 1))


# --------------------------------------------------------------------------------------------------------
# Target attention
# --------------------------------------------------------------------------------------------------------


def _reference_pool(h, m, c, scale):
    """Slow reference for mode 'dot': softmax of <h_l, c>/sqrt(D) over the real positions of each row."""
    out = torch.zeros(h.shape[0], h.shape[2])
    for b in range(h.shape[0]):
        idx = torch.nonzero(m[b]).flatten()
        if len(idx) == 0:
            continue
        s = torch.stack([h[b, l] @ c[b] * scale for l in idx])
        a = torch.softmax(s, 0)
        out[b] = sum(a[i] * h[b, l] for i, l in enumerate(idx))
    return out


@pytest.mark.parametrize("mode", ["dot", "din"])
def test_target_attention_ignores_masked_positions(mode):
    torch.manual_seed(0)
    pool = TargetAttentionPooling(8, mode=mode)
    if mode == "din":  # make the MLP part non-trivial, so masking is tested through it too
        nn.init.normal_(pool.mlp.net[-1].weight)
    h = torch.randn(4, 5, 8)
    m = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    c = torch.randn(4, 8)
    out, w = pool(h, m, c, return_weights=True)
    assert out.shape == (4, 8)
    assert torch.all(w[~m] == 0)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert torch.all(out[2] == 0)  # all-masked row -> zeros
    h2 = h.clone()
    h2[~m] = torch.randn(int((~m).sum()), 8) * 100
    torch.testing.assert_close(pool(h2, m, c), out)
    # gradients stay finite for an all-masked row
    hg = h.clone().requires_grad_(True)
    pool(hg, m, c).sum().backward()
    assert torch.isfinite(hg.grad).all() and torch.all(hg.grad[~m] == 0)
    if mode == "dot":
        torch.testing.assert_close(out, _reference_pool(h, m, c, 1 / math.sqrt(8)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["dot", "din"])
def test_target_attention_weights_similar_item_more(mode):
    torch.manual_seed(0)
    D = 16
    pool = TargetAttentionPooling(D, mode=mode)
    c = torch.randn(8, D)
    other = torch.randn(8, 3, D)
    similar = c + 0.1 * torch.randn(8, D)
    h = torch.cat([other[:, :1], similar.unsqueeze(1), other[:, 1:]], dim=1)  # similar item at position 1
    _, w = pool(h, torch.ones(8, 4, dtype=torch.bool), c, return_weights=True)
    assert torch.all(w.argmax(1) == 1)
    assert torch.all(w[:, 1] > 0.5)


def test_target_attention_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="mode"):
        TargetAttentionPooling(4, mode="transformer")
    with pytest.raises(ValueError, match="expected hist"):
        TargetAttentionPooling(4)(torch.randn(2, 3, 4), torch.ones(2, 2, dtype=torch.bool), torch.randn(2, 4))


# --------------------------------------------------------------------------------------------------------
# RankerNet
# --------------------------------------------------------------------------------------------------------

N_USERS, N_ITEMS, N_CATS, PAD = 20, 30, 5, 30  # item table has N_ITEMS + 1 rows; PAD is the padding / OOV row


def _ranker(arch="mmoe", n_tasks=2, dropout=0.0, seed=0, pool=True):
    torch.manual_seed(seed)
    emb = {
        "user": nn.Embedding(N_USERS, 4),
        "item": nn.Embedding(N_ITEMS + 1, 6, padding_idx=PAD),
        "category": nn.Embedding(N_CATS, 3),
    }
    hp = TargetAttentionPooling(6) if pool else None
    in_dim = ranker_input_dim(emb, n_dense=2, with_history=pool)
    core = build_multitask(arch, in_dim, n_tasks, n_experts=3, expert_dims=(8,), tower_dims=(4,), dropout=dropout)
    return RankerNet(emb, 2, hp, core)


def _ranker_inputs(R, seed=0, L=5):
    g = torch.Generator().manual_seed(seed)
    item = torch.randint(0, N_ITEMS, (R,), generator=g)
    users = torch.randint(0, N_USERS, (R,), generator=g)
    cat = torch.stack([users, torch.randint(0, N_CATS, (R,), generator=g)], 1)
    hist = torch.randint(0, N_ITEMS, (R, L), generator=g)
    lengths = torch.randint(0, L + 1, (R,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    hist[~mask] = PAD
    dense = torch.randn(R, 2, generator=g)
    return {"cat": cat, "dense": dense, "hist": hist, "hist_mask": mask, "item_idx": item}


def test_ranker_net_shapes_and_shared_item_table():
    net = _ranker(n_tasks=3)
    assert net.in_dim == 4 + 6 + 3 + 6 + 2
    inp = _ranker_inputs(9)
    out = net(**inp)
    assert out.shape == (9, 3)
    assert net.item_embedding is net.field_embeddings["item"]
    assert net.cat_fields == ["user", "category"]
    # the history reads the same table as the candidate: a history-only item changes the output through it
    row = 0
    inp["hist_mask"][row] = torch.tensor([True, False, False, False, False])
    hist_item = int((set(range(N_ITEMS)) - {int(inp["item_idx"][row])}).pop())
    inp["hist"][row, 0] = hist_item
    before = net(**inp)
    with torch.no_grad():
        net.item_embedding.weight[hist_item] += 1.0
    after = net(**inp)
    assert not torch.allclose(before[row], after[row])
    # gradient reaches the history rows of the shared table
    net.zero_grad()
    net(**inp).sum().backward()
    assert net.item_embedding.weight.grad[hist_item].abs().sum() > 0
    logits, gates = net(**inp, return_gates=True)
    assert gates.shape == (9, 3, 3)


def test_ranker_net_without_history_and_size_checks():
    net = _ranker(pool=False, arch="shared_bottom")
    inp = _ranker_inputs(4)
    assert net(inp["cat"], inp["dense"], None, None, inp["item_idx"]).shape == (4, 2)
    emb = {"user": nn.Embedding(3, 4), "item": nn.Embedding(5, 6)}
    with pytest.raises(ValueError, match="ranker_input_dim"):
        RankerNet(emb, 1, None, build_multitask("mmoe", 99, 2))
    with pytest.raises(ValueError, match="no item table"):
        RankerNet({"user": nn.Embedding(3, 4)}, 0, None, build_multitask("mmoe", 4, 2))
    net = _ranker()
    with pytest.raises(ValueError, match="cat must be"):
        net(inp["cat"][:, :1], inp["dense"], inp["hist"], inp["hist_mask"], inp["item_idx"])


# --------------------------------------------------------------------------------------------------------
# ESMM and the loss
# --------------------------------------------------------------------------------------------------------


def test_esmm_child_probability_never_exceeds_parent():
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(500, 3) * 5, torch.tensor([[60.0, 60.0, 60.0], [-60.0, 60.0, -60.0]])])
    p = task_probabilities(logits, [None, 0, 1])  # click -> like -> share
    assert torch.all(p[:, 1] <= p[:, 0]) and torch.all(p[:, 2] <= p[:, 1])
    torch.testing.assert_close(p[:, 0], torch.sigmoid(logits[:, 0]))
    torch.testing.assert_close(p[:, 1], torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1]))
    torch.testing.assert_close(p[:, 2], p[:, 1] * torch.sigmoid(logits[:, 2]))
    assert torch.all(p[-1] == torch.tensor([0.0, 0.0, 0.0])) or float(p[-1].max()) < 1e-25


def test_esmm_loss_matches_hand_computation():
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 1.5], [1.1, -0.4]], dtype=torch.float64)
    y = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 1]], dtype=torch.float64)
    tw = [1.0, 2.5]
    sw = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    def bce(p, t):
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))
    click, like = [], []
    for (l0, l1), (y0, y1) in zip(logits.tolist(), y.tolist()):
        p_click = sig(l0)
        p_like = p_click * sig(l1)  # entire space: p(click) * p(like | click)
        click.append(bce(p_click, y0))
        like.append(bce(p_like, y1))
    w = sw.tolist()
    expected = tw[0] * np.dot(w, click) / sum(w) + tw[1] * np.dot(w, like) / sum(w)
    got = multitask_loss(logits, y, tw, [None, 0], sample_weight=sw)
    assert abs(float(got) - expected) < 1e-12
    unweighted = np.mean(click) + np.mean(like)
    assert abs(float(multitask_loss(logits, y, None, [None, 0])) - unweighted) < 1e-12


def test_independent_tasks_loss_is_bce_with_logits_and_weights_act_like_duplication():
    torch.manual_seed(0)
    logits = torch.randn(7, 2, dtype=torch.float64)
    y = (torch.rand(7, 2) < 0.5).double()
    ref = sum(F.binary_cross_entropy_with_logits(logits[:, t], y[:, t]) for t in range(2))
    torch.testing.assert_close(multitask_loss(logits, y), ref)
    reps = torch.tensor([1, 3, 1, 2, 1, 1, 4])
    dup = multitask_loss(logits.repeat_interleave(reps, 0), y.repeat_interleave(reps, 0), None, [None, 0])
    torch.testing.assert_close(multitask_loss(logits, y, None, [None, 0], sample_weight=reps.double()), dup)


def test_esmm_loss_is_finite_for_saturated_logits():
    logits = torch.tensor([[80.0, 80.0], [-80.0, 80.0], [80.0, -80.0], [-80.0, -80.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    loss = multitask_loss(logits, y, None, [None, 0])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert float(loss.detach()) > 50  # confidently wrong rows are penalised (log clamped at -100 like BCELoss)


def test_validate_esmm_parent_errors():
    assert validate_esmm_parent(None, 2) == [None, None]
    cases = [([None], "one entry per task"), ([None, 2], "index"), ([1, 0], "cycle"), ([0, None], "index")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            validate_esmm_parent(bad, 2)
    with pytest.raises(ValueError, match="shape"):
        multitask_loss(torch.zeros(3, 2), torch.zeros(3, 1))


# --------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------


def _ranker_world(R, seed):
    """Labels from a hidden rule on the inputs: one item in three is attractive (click), like (entire space:
    clicked and liked) from the first dense feature."""
    inp = _ranker_inputs(R, seed)
    g = np.random.default_rng(seed)
    p_click = np.where(inp["item_idx"].numpy() % 3 == 0, 0.7, 0.15)
    click = g.random(R) < p_click
    like = click & (g.random(R) < 1 / (1 + np.exp(-2 * inp["dense"][:, 0].numpy())))
    return inp, torch.tensor(np.stack([click, like], 1), dtype=torch.float32)


def test_train_config_validation():
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig(task_weights=(1.0, -1.0))


def test_fit_restores_best_epoch_and_is_deterministic():
    tr, ytr = _ranker_world(1200, seed=0)
    va, yva = _ranker_world(600, seed=1)
    cfg = TrainConfig(lr=0.02, batch_size=64, max_epochs=8, patience=2, seed=3)
    preds, hists = [], []
    for _ in range(2):
        net = _ranker(dropout=0.2, seed=5)
        hist = fit_multitask(net, tr, ytr, va, yva, cfg, esmm_parent=[None, 0])
        preds.append(predict(net, va, batch_size=97, esmm_parent=[None, 0]))
        hists.append(hist)
    np.testing.assert_array_equal(preds[0], preds[1])
    assert hists[0].valid_logloss == hists[1].valid_logloss
    h = hists[0]
    assert len(h.train_loss) == len(h.valid_logloss) == h.epochs and 1 <= h.best_epoch <= h.epochs
    assert h.best_valid_logloss == min(h.valid_logloss)
    # the restored weights are those of the best epoch
    ll = task_logloss(preds[0], yva.numpy())
    assert abs(ll.mean() - h.best_valid_logloss) < 1e-6
    assert preds[0].shape == (600, 2) and np.all(preds[0][:, 1] <= preds[0][:, 0])
    # it learned the planted click rule (AUC checked with offline_eval's independent implementation)
    assert auc(yva[:, 0].numpy(), preds[0][:, 0]) > 0.7
    # a different shuffling seed gives a different model
    net = _ranker(dropout=0.2, seed=5)
    fit_multitask(net, tr, ytr, va, yva, TrainConfig(lr=0.02, batch_size=64, max_epochs=8, patience=2, seed=4),
                  esmm_parent=[None, 0])
    assert not np.array_equal(predict(net, va, esmm_parent=[None, 0]), preds[0])


def test_fit_input_errors():
    tr, ytr = _ranker_world(50, seed=0)
    net = _ranker()
    cfg = TrainConfig(max_epochs=1)
    bad = dict(tr, dense=tr["dense"][:10])
    with pytest.raises(ValueError, match="same number of rows"):
        fit_multitask(net, bad, ytr, tr, ytr, cfg)
    with pytest.raises(ConfigError, match="task_weights"):
        fit_multitask(net, tr, ytr, tr, ytr, TrainConfig(task_weights=(1.0,)))


def test_downsampling_then_recalibration_restores_base_rate():
    """Train on negatives kept at rate w, then q = p / (p + (1-p)/w) (offline_eval.calibration) must bring
    the mean prediction back to the full-distribution base rate (He et al., ADKDD 2014)."""
    rng = np.random.default_rng(0)
    R, d, w = 30000, 4, 0.1
    x = rng.normal(size=(R, d)).astype(np.float32)
    p_true = 1 / (1 + np.exp(-(x @ np.array([1.0, -0.5, 0.0, 0.5]) - 3.5)))
    y = (rng.random(R) < p_true).astype(np.float32)
    tr, te = slice(0, 20000), slice(20000, None)
    keep = downsample_negatives(y[tr], w, seed=1)
    xk, yk = torch.tensor(x[tr][keep]), torch.tensor(y[tr][keep]).unsqueeze(1)
    n_val = len(yk) // 4
    torch.manual_seed(0)
    model = build_multitask("single_task", d, 1, expert_dims=(8,), tower_dims=(4,))
    fit_multitask(model, {"x": xk[n_val:]}, yk[n_val:], {"x": xk[:n_val]}, yk[:n_val],
                  TrainConfig(lr=0.03, batch_size=128, max_epochs=30, patience=3))
    p = predict(model, {"x": torch.tensor(x[te])})[:, 0]
    q = recalibrate(p, w)
    base = y[te].mean()
    assert p.mean() > 3 * base  # downsampled model over-predicts
    assert abs(q.mean() / base - 1) < 0.15  # measured: 1.012
    assert logloss(y[te], q) < logloss(y[te], p)
    assert logloss(y[te], q) < 1.05 * logloss(y[te], p_true[te])  # near the oracle (measured 0.1710 vs 0.1690)


# --------------------------------------------------------------------------------------------------------
# Planted two-task world: MMoE vs shared-bottom under task conflict
# --------------------------------------------------------------------------------------------------------


def _two_task_world(seed: int, rho: float, n: int, d: int = 8, k: int = 2, noise: float = 0.1):
    """Ma et al. (KDD 2018, section 3.2) style synthetic tasks with controllable relatedness ``rho``.

    As in the paper, task 1 reads directions ``U1`` and task 2 reads ``W2 = rho * U1 + sqrt(1 - rho^2) * U2``
    (``U1 ⟂ U2``; here k = 2 orthonormal directions per task, x ~ N(0, I_d)). The per-direction function is
    ``|s|`` instead of the paper's ``s + sum_i sin(alpha_i s + beta_i)``: it is not monotone (a linear score
    cannot solve it) and needs exactly 2 ReLU units per direction, so a bottom of width 2k can serve both
    tasks only when rho = 1. Label: ``1[sum_j |w_j . x| + eps > median]``, eps ~ N(0, noise^2). With rho = 0
    the two regression targets are uncorrelated; with rho = 1 the tasks are identical up to noise.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, 2 * k)))
    u1, u2 = q[:, :k], q[:, k:]
    w2 = rho * u1 + math.sqrt(1 - rho**2) * u2
    x = rng.normal(size=(n, d))
    ys = []
    for w in (u1, w2):
        target = np.abs(x @ w).sum(1) + rng.normal(0, noise, n)
        ys.append(target > np.median(target))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(np.stack(ys, 1), dtype=torch.float32)


def _planted_auc(arch: str, seed: int, rho: float) -> np.ndarray:
    n_tr, n_va, n_te = 3000, 1000, 3000
    x, y = _two_task_world(seed, rho, n_tr + n_va + n_te)
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
    torch.manual_seed(seed)
    # narrow bottom: shared-bottom has 4 units (= what one task needs); MMoE has 4 experts of 4 units
    model = build_multitask(arch, x.shape[1], 2, n_experts=4, expert_dims=(4,), tower_dims=(8,))
    cfg = TrainConfig(lr=0.01, batch_size=128, max_epochs=30, patience=4, seed=seed)
    fit_multitask(model, {"x": x[tr]}, y[tr], {"x": x[va]}, y[va], cfg)
    p = predict(model, {"x": x[te]})
    return np.array([auc(y[te, t].numpy(), p[:, t]) for t in range(2)])


@pytest.mark.slow
def test_planted_world_mmoe_beats_shared_bottom_when_tasks_conflict():
    """Measured (torch 2.13 CPU, seeds 0-2): conflicting world (rho = 0) MMoE mean-task AUC 0.992 vs
    shared-bottom 0.829 (gap 0.163; the worse task 0.990 vs 0.722, gap 0.268); shared-bottom sacrifices one
    of the two tasks. Control (rho = 1): gap 0.0005. Asserted with wide margins: gap >= 0.05 on the worse
    task and on the task mean under conflict, and the control gap at most half of it (so the win comes from
    the conflict, not only from MMoE's larger width)."""
    seeds = (0, 1, 2)
    conflict = {a: np.stack([_planted_auc(a, s, rho=0.0) for s in seeds]) for a in ("mmoe", "shared_bottom")}
    control = {a: np.stack([_planted_auc(a, s, rho=1.0) for s in seeds]) for a in ("mmoe", "shared_bottom")}
    gap_mean = conflict["mmoe"].mean(1).mean() - conflict["shared_bottom"].mean(1).mean()
    gap_worst = conflict["mmoe"].min(1).mean() - conflict["shared_bottom"].min(1).mean()
    gap_control = control["mmoe"].mean(1).mean() - control["shared_bottom"].mean(1).mean()
    assert gap_worst >= 0.05, (gap_worst, conflict)
    assert gap_mean >= 0.05, (gap_mean, conflict)
    assert gap_control <= gap_mean / 2, (gap_control, gap_mean, control)
    assert conflict["mmoe"].min() > 0.95  # MMoE solves both conflicting tasks


def test_config_architecture_names_match_the_model_registry():
    """recsys.rank.config validates `rank.arch` without importing torch; its list must stay the registry's."""
    from recsys.rank.config import ARCHITECTURE_NAMES
    from recsys.rank.mmoe import ARCHITECTURES

    assert set(ARCHITECTURE_NAMES) == set(ARCHITECTURES)


def test_intercept_offsets_restore_the_label_level_parents_first():
    from scipy.special import expit

    from recsys.rank.trainer import intercept_offsets, task_logloss

    rng = np.random.default_rng(0)
    R = 200_000
    L = rng.normal(-2.0, 1.0, size=(R, 3))
    # true logits are shifted by (+0.7, -0.4, 0): the heads' levels are off, their orders are right
    y0 = rng.random(R) < expit(L[:, 0] + 0.7)
    y1 = y0 & (rng.random(R) < expit(L[:, 1] - 0.4))  # ESMM child of task 0
    y2 = rng.random(R) < expit(L[:, 2])
    Y = np.stack([y0, y1, y2], axis=1).astype(float)
    d = intercept_offsets(L, Y, [None, 0, None])
    np.testing.assert_allclose(d, [0.7, -0.4, 0.0], atol=0.03)
    # the corrected entire-space means match the label means
    p0 = expit(L[:, 0] + d[0])
    assert abs((p0 * expit(L[:, 1] + d[1])).sum() / Y[:, 1].sum() - 1) < 1e-6
    assert task_logloss(np.stack([p0], 1), Y[:, :1])[0] < task_logloss(expit(L[:, :1]), Y[:, :1])[0]
    # weights: rows of weight 0 do not count; a head without positives gets 0
    W = np.ones_like(Y)
    W[: R // 2, 2] = 0.0
    Y2 = Y.copy()
    Y2[R // 2:, 2] = 0.0
    assert intercept_offsets(L, Y2, [None, 0, None], W)[2] == 0.0
