"""Off-policy estimators (offline_eval/ope.py): known truth on simulated logs, interval coverage at the nominal
rate, the planted failure (wrong propensities) found, and the known-answer test on the tiny synthetic world:
engine, no_exposure and popularity each estimated within its interval of the oracle's truth."""

import numpy as np
import pandas as pd
import pytest

from offline_eval import ope

A, L = 12, 3  # items, positions
THETA = np.array([1.0, 0.6, 0.4])  # position effect of the simulated position-based click model


def _world(seed=0):
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.05, 0.5, A)  # item attractiveness
    logits = rng.normal(0, 0.7, (2, A))  # two contexts, each its own logging distribution
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target = np.array([np.argsort(-gamma)[:L], rng.permutation(A)[:L]])  # (2 contexts, L) target rankings
    return gamma, p, target


def _draw(gamma, p, target, s, rng, with_context=False):
    """One log of s sessions: each position an independent draw from the context's p (exact propensities)."""
    ctx = rng.integers(0, 2, s)
    cum = np.cumsum(p, axis=1)
    u = rng.random((s, L))
    logged = np.minimum((u[:, :, None] > cum[ctx][:, None, :]).sum(axis=2), A - 1)
    prop = p[ctx[:, None], logged]
    click = (rng.random((s, L)) < gamma[logged] * THETA).astype(float)
    return (logged, click, prop, target[ctx]) + ((ctx,) if with_context else ())


def _truth(gamma, target):
    pc = gamma[target] * THETA  # (2, L): contexts equally likely
    return {"top_slot": float(pc[:, 0].mean()), "list": float(pc.sum(axis=1).mean())}


def test_estimators_cover_the_truth_at_their_nominal_rate():
    gamma, p, target = _world()
    truth = _truth(gamma, target)
    rng = np.random.default_rng(1)
    reps, hits, errors = 300, {e: 0 for e in ope.ESTIMATORS}, {e: [] for e in ope.ESTIMATORS}
    for r in range(reps):
        est = ope.estimate_all(*_draw(gamma, p, target, 3000, rng), n_items=A, seed=r)
        for e, v in est.items():
            hits[e] += v.covers(truth[ope.TARGETS[e]])
            errors[e].append(v.value - truth[ope.TARGETS[e]])
    for e in ope.ESTIMATORS:
        rate = hits[e] / reps
        assert 0.90 <= rate <= 0.985, (e, rate)  # nominal 0.95; binomial sd over 300 draws is 0.013
        bias = np.mean(errors[e])
        assert abs(bias) < 3 * np.std(errors[e]) / np.sqrt(reps), (e, bias)  # unbiased (SNIPS: to O(1/n))


def test_paired_difference_covers_the_true_difference():
    """Two policies on the same logs: the paired interval of V_a - V_b covers the true difference at about 95%."""
    gamma, p, target = _world()
    other = target[:, ::-1].copy()  # the same items in reverse order: another value (position effect)
    true_diff = _truth(gamma, target)["list"] - _truth(gamma, other)["list"]
    assert abs(true_diff) > 0.01  # a real difference to cover
    rng = np.random.default_rng(3)
    hits, reps = 0, 300
    for _ in range(reps):
        logged, click, prop, tgt, ctx = _draw(gamma, p, target, 3000, rng, with_context=True)
        za = ope.item_position_terms(logged, click, prop, tgt)
        zb = ope.item_position_terms(logged, click, prop, other[ctx])
        d = ope.paired_difference(za, zb)
        hits += d["ci_low"] <= true_diff <= d["ci_high"]
    assert 0.90 <= hits / reps <= 0.985, hits / reps


def test_wrong_propensities_are_caught():
    """The planted failure: logging with propensities taken as uniform (1/A) biases IPS, and its intervals
    stop covering the truth."""
    gamma, p, target = _world()
    truth = _truth(gamma, target)
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(100):
        logged, click, prop, tgt = _draw(gamma, p, target, 3000, rng)
        hits += ope.item_position_ips(logged, click, np.full_like(prop, 1.0 / A), tgt).covers(truth["list"])
    assert hits < 50


def test_known_values_by_hand():
    # two sessions, two positions: the target matches session 0 at both positions, session 1 at position 1
    logged = np.array([[3, 5], [4, 5]])
    click = np.array([[1.0, 0.0], [0.0, 1.0]])
    prop = np.array([[0.5, 0.25], [0.2, 0.5]])
    target = np.array([[3, 5], [3, 5]])
    assert ope.ips(logged, click, prop, target).value == pytest.approx((1 / 0.5 + 0) / 2)
    assert ope.snips(logged, click, prop, target).value == pytest.approx(1.0)  # (2 * 1) / 2
    assert ope.item_position_ips(logged, click, prop, target).value == pytest.approx((2 + 0 + 0 + 1 / 0.5) / 2)
    q = np.array([[0.1, 0.2], [0.3, 0.4]])
    d = ope.item_position_dr(logged, click, prop, target, q, q)
    # sum_k q + w (c - q): session 0: 0.1 + 2 (1 - 0.1) + 0.2 + 4 (0 - 0.2); session 1: 0.3 + 0.4 + 2 (1 - 0.4)
    assert d.value == pytest.approx(((0.1 + 1.8 + 0.2 - 0.8) + (0.3 + 0.4 + 1.2)) / 2)
    # a position not logged in a session (-1) is averaged over the sessions that logged it
    logged2 = np.array([[3, -1], [4, 5]])
    v = ope.item_position_ips(logged2, click, prop, target).value
    assert v == pytest.approx((1 / 0.5 + 0) / 2 + (1 / 0.5) / 1)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="propensity"):
        ope.ips(np.array([[1]]), np.array([[1.0]]), np.array([[0.0]]), np.array([[1]]))
    with pytest.raises(ValueError, match=r"target .* K <= L"):
        ope.ips(np.array([[1]]), np.array([[1.0]]), np.array([[0.5]]), np.array([[1, 2]]))


# ----------------------------------------------------------------------------------------------------------
# the known-answer test on the tiny synthetic world


#: the service tests' fast training settings, with the heavy ranker's exposure head (so no_exposure exists)
OVERRIDES = ["retrieval.two_tower.max_epochs=2", "retrieval.two_tower.dim=16", "retrieval.refit=false",
             "prerank.n_estimators=30", "rank.train.max_epochs=2", "rank.exposure=true",
             "systems=[engine, no_exposure]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny world, a bundle with engine and no_exposure, an exploration log on its test window, the log's
    contexts ranked by engine, no_exposure and popularity."""
    from recsys.bundle import load_bundle
    from recsys.config import Config, from_dict, load_config
    from recsys.data.bandit_log import read_bandit_log, write_bandit_log
    from recsys.data.exploration import ExploreConfig, explore, explore_meta, window_contexts
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import Oracle, synthesize
    from recsys.experiments import ope as O
    from recsys.training import load_systems, train_engine

    root = tmp_path_factory.mktemp("ope")
    data, art = root / "data", root / "art"
    synthesize("tiny", 0, data)
    ds = read_dataset(data)
    train_engine(ds, load_config(None, OVERRIDES), art)
    cfg = from_dict(Config, load_bundle(art).manifest["config"])
    split = split_dataset(ds, cfg.split)
    oracle = Oracle.load(ds.truth_dir)
    ecfg = ExploreConfig(sessions=30_000, slate_size=5, temperature=0.5, epsilon=0.2, seed=0)
    contexts = window_contexts(split["test"])
    out = root / "log"
    write_bandit_log(explore(oracle, contexts, ecfg), explore_meta(ecfg, oracle, "test", len(contexts)), out)
    log = read_bandit_log(out)
    arrays = O.session_arrays(log)
    systems = load_systems(art, ["engine", "no_exposure"])
    assert set(systems) == {"engine", "no_exposure"}
    rankings = O.system_rankings(arrays, ds, cfg, systems, ["popularity"], "test", log.slate_size)
    return log, arrays, rankings, oracle, out, data, art


def test_ope_recovers_the_true_value_of_three_policies(tiny):
    from recsys.experiments import ope as O

    log, arrays, rankings, oracle = tiny[:4]
    assert set(rankings) == {"engine", "no_exposure", "popularity"}
    res = O.run_ope(log, rankings, oracle=oracle, arrays=arrays)
    truths = {}
    for name, p in res["policies"].items():
        truths[name] = p["truth"]["list"]
        for e in ("ip_ips", "ips"):  # the list's and the top slot's primary estimators: inside their 95% CI
            r = p["estimates"][e]
            assert r["covered"], (name, e, r)
        for e in ("ip_dr", "snips", "dr"):  # 15 intervals in all: the others within their 99% interval
            r = p["estimates"][e]
            assert abs(r["error"]) <= 2.576 * r["se"], (name, e, r)
        r = p["estimates"]["ip_ips"]
        assert r["ci_high"] - r["ci_low"] < 0.5 * r["truth"], (name, r)  # informative: the test can fail
    assert len({round(t, 3) for t in truths.values()}) == 3  # three different values to recover
    assert len(res["differences"]) == 3
    for d in res["differences"]:
        assert abs(d["difference"] - d["truth"]) <= 2.576 * d["se"], d
    again = O.run_ope(log, rankings, oracle=oracle, arrays=arrays)
    assert again == res  # deterministic


def test_ope_command_writes_the_report(tiny, tmp_path, capsys):
    from recsys.cli import main

    logdir, data, art = tiny[4:]
    out = tmp_path / "report"
    rc = main(["-q", "experiment", "ope", "--log", str(logdir), "--out", str(out), "--bundle", str(art),
               "--data", str(data), "--systems", "engine,popularity", "--policy", "top-ctr"])
    assert rc == 0
    for f in ("report.md", "results.json", "estimates.png", "report.html"):
        assert (out / f).is_file(), f
    import json

    res = json.loads((out / "results.json").read_text())
    assert set(res["policies"]) == {"top_ctr", "engine", "popularity"}
    assert res["policies"]["engine"]["truth"] is not None
    capsys.readouterr()
    assert main(["-q", "experiment", "ope", "--log", str(logdir), "--out", str(out), "--policy", "top-ctr"]) == 2
    assert "output folder exists" in capsys.readouterr().err


def test_session_arrays_pivot():
    from recsys.data.bandit_log import BanditLog
    from recsys.experiments.ope import session_arrays

    t = pd.DataFrame({"session_id": [7, 7, 9], "timestamp": [5, 5, 6], "user_id": pd.array([1, 1, None], "Int64"),
                      "position": [0, 1, 1], "item_id": [10, 11, 10], "click": [1, 0, 1],
                      "propensity": [0.5, 0.25, 0.5]})
    a = session_arrays(BanditLog(t, {"slate_size": 2, "propensity": "item_position"}))
    assert a.items.tolist() == [[10, 11], [None, 10]]
    assert a.shown.tolist() == [[True, True], [False, True]]
    assert len(a.contexts) == 2 and a.context_of.tolist() == [0, 1]
