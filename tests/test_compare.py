"""compare's statistics (offline_eval.compare) on repeated synthetic draws with a planted difference, and the
`recsys experiment compare` command on the tiny world.

The synthetic design is the crossed model of the module docstring: d[s, u] = delta + a_u + b_s + e_su with
skewed (shifted exponential) user effects, as per-user ranking metrics are skewed. Tolerances are binomial:
with n draws a rate r is checked to within 3.3 sd, sd = sqrt(r (1 - r) / n)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from offline_eval.compare import (
    bootstrap_means,
    holm,
    mde,
    mean_se,
    paired_diff,
    two_level_bootstrap,
)

N_DRAWS = 400
ALPHA = 0.05


def _draw(rng, s, b, delta, sa=0.1, sb=0.0, se=0.05):
    a = sa * (rng.exponential(1.0, b) - 1.0)
    return delta + a[None, :] + rng.normal(0.0, sb, s)[:, None] + rng.normal(0.0, se, (s, b))


def _tol(rate: float, n: int = N_DRAWS) -> float:
    return 3.3 * math.sqrt(rate * (1 - rate) / n)


def _t_interval(d):
    m = mean_se(d)
    half = stats.t.ppf(1 - ALPHA / 2, m.df) * m.se
    return m.mean - half, m.mean + half, m


@pytest.mark.parametrize("s, b, sb", [(1, 300, 0.0), (3, 300, 0.003), (5, 200, 0.005), (4, 150, 0.0)])
def test_t_interval_covers_a_planted_difference_at_the_nominal_rate(s, b, sb):
    rng = np.random.default_rng(s * 1000 + b)
    delta = 0.02
    hits = 0
    for _ in range(N_DRAWS):
        lo, hi, _ = _t_interval(_draw(rng, s, b, delta, sb=sb))
        hits += lo <= delta <= hi
    assert abs(hits / N_DRAWS - (1 - ALPHA)) <= _tol(1 - ALPHA), hits / N_DRAWS


def test_compare_systems_intervals_cover_a_planted_difference_between_two_systems():
    """The command's own path: per-user values of a reference and a system (3 seeds each, per-user difficulty
    shared by both, independent seed effects per system), planted +0.02; Holm-adjusted tests of 2 metrics."""
    from offline_eval.compare import compare_systems

    rng = np.random.default_rng(13)
    s, b, delta = 3, 250, 0.02
    hits = 0
    for _ in range(N_DRAWS):
        users = rng.exponential(0.2, b)
        ref = [{"m": users + rng.normal(0, 0.003) + rng.normal(0, 0.05, b)} for _ in range(s)]
        sys_ = [{"m": users + delta + rng.normal(0, 0.003) + rng.normal(0, 0.05, b)} for _ in range(s)]
        for r, x in zip(ref, sys_):
            r["n"], x["n"] = r["m"], x["m"]
        p = compare_systems({"ref": ref, "sys": sys_}, "ref", ["m", "n"], n_samples=0)["paired"]["sys"]
        hits += p["m"]["ci_low"] <= delta <= p["m"]["ci_high"]
        assert p["m"]["p_holm"] == pytest.approx(min(1.0, 2 * p["m"]["p_value"]))  # two equal tests
    assert abs(hits / N_DRAWS - (1 - ALPHA)) <= _tol(1 - ALPHA), hits / N_DRAWS


def test_paired_diff_interval_is_the_t_interval_and_its_p_value_agrees_with_it():
    rng = np.random.default_rng(3)
    d = _draw(rng, 3, 200, 0.01, sb=0.004)
    r = paired_diff(d, n_samples=200)
    lo, hi, m = _t_interval(d)
    assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(hi) and r["df"] == m.df
    assert (r["p_value"] < ALPHA) == (r["ci_low"] > 0 or r["ci_high"] < 0)
    assert r["per_seed"] == pytest.approx(d.mean(axis=1).tolist()) and r["n_seeds"] == 3 and r["n_users"] == 200


def test_one_seed_is_the_paired_t_test_over_users():
    from offline_eval.significance import paired_t_test

    rng = np.random.default_rng(4)
    a, b = rng.random(120), rng.random(120)
    r = paired_diff((a - b)[None, :], n_samples=0)
    t = paired_t_test(a, b)
    assert r["p_value"] == pytest.approx(t["p_value"]) and r["ci_low"] == pytest.approx(t["ci_low"])
    assert r["df"] == 119 and "boot_low" not in r


def test_variance_components_are_recovered():
    rng = np.random.default_rng(5)
    d = _draw(rng, 40, 2000, 0.0, sa=0.1, sb=0.02, se=0.05)
    c = mean_se(d).components
    assert c["user"] == pytest.approx(0.01, rel=0.15)  # sa^2 (exponential: variance 1)
    assert c["seed"] == pytest.approx(0.0004, rel=0.6)  # sb^2 from 40 seeds
    assert c["interaction"] == pytest.approx(0.0025, rel=0.05)


def test_the_null_rejects_at_alpha():
    rng = np.random.default_rng(6)
    rejects = sum(paired_diff(_draw(rng, 3, 200, 0.0, sb=0.002), n_samples=0)["p_value"] < ALPHA
                  for _ in range(N_DRAWS))
    assert abs(rejects / N_DRAWS - ALPHA) <= _tol(ALPHA), rejects / N_DRAWS


@pytest.mark.parametrize("s, b", [(1, 300), (4, 200)])
def test_power_at_the_minimum_detectable_effect_is_the_nominal_power(s, b):
    sa, se = 0.1, 0.05
    true_se = math.sqrt(sa ** 2 / b + se ** 2 / (s * b))  # no seed effect: Var = sa2 / B + se2 / (S B)
    effect = mde(true_se, df=b - 1)
    rng = np.random.default_rng(7 + s)
    found = sum(paired_diff(_draw(rng, s, b, effect, sa=sa, se=se), n_samples=0)["p_value"] < ALPHA
                for _ in range(N_DRAWS))
    assert abs(found / N_DRAWS - 0.8) <= _tol(0.8), found / N_DRAWS
    # and the MDE each draw reports is the planted one on average
    rng = np.random.default_rng(8)
    reported = [paired_diff(_draw(rng, s, b, 0.0, sa=sa, se=se), n_samples=0)["mde"] for _ in range(50)]
    assert np.mean(reported) == pytest.approx(effect, rel=0.05)


def test_mde_is_2_8_standard_errors_for_large_samples():
    assert mde(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert mde(0.01, df=5) > mde(0.01)  # t quantiles widen it with few degrees of freedom
    with pytest.raises(ValueError, match="power"):
        mde(1.0, power=1.0)


def test_two_level_bootstrap_covers_with_one_seed():
    rng = np.random.default_rng(9)
    delta, hits, n = 0.02, 0, 200
    for i in range(n):
        lo, hi = two_level_bootstrap(_draw(rng, 1, 300, delta), n_samples=400, seed=i)
        hits += lo <= delta <= hi
    assert abs(hits / n - 0.95) <= _tol(0.95, n), hits / n


def test_bootstrap_means_match_a_slow_reference_and_are_deterministic():
    rng = np.random.default_rng(10)
    d = rng.random((3, 7))
    fast = bootstrap_means(d, 50, seed=1, chunk=8)
    assert np.array_equal(fast, bootstrap_means(d, 50, seed=1, chunk=8))
    # the reference: draw the same (rows, cols) indices chunk by chunk and take the block's mean
    ref_rng = np.random.default_rng(1)
    ref = []
    for start in range(0, 50, 8):
        n = min(8, 50 - start)
        rows, cols = ref_rng.integers(0, 3, (n, 3)), ref_rng.integers(0, 7, (n, 7))
        ref += [d[np.ix_(rows[k], cols[k])].mean() for k in range(n)]
    assert fast == pytest.approx(ref, abs=1e-12)


def test_holm_matches_hand_computed_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06, 0.04 -> running max
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm(np.array([[0.001], [0.2]])).shape == (2, 1)
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_holm_controls_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(11)
    m, n = 6, 2000
    p = rng.random((n, m))  # independent null p-values
    any_raw = np.mean((p < ALPHA).any(axis=1))
    any_holm = np.mean((np.apply_along_axis(holm, 1, p) <= ALPHA).any(axis=1))
    assert any_raw > 0.2  # 1 - 0.95^6 = 0.265 without a correction
    assert any_holm <= ALPHA + _tol(ALPHA, n)


def test_bad_design_is_refused():
    with pytest.raises(ValueError, match="users"):
        paired_diff(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        paired_diff(np.array([[0.0, np.nan, 1.0]]))


def test_compare_systems_pairs_over_seeds_and_broadcasts_a_one_replicate_system():
    from offline_eval.compare import compare_systems

    rng = np.random.default_rng(12)
    b = 200
    users = rng.random(b)
    ref = [{"m": users + rng.normal(0, 0.01, b)} for _ in range(3)]
    better = [{"m": r["m"] + 0.05 + 0.001 * s} for s, r in enumerate(ref)]  # +0.05 on every user and seed
    flat = [{"m": users}]  # one replicate (a baseline)
    warm = np.arange(b) < 150
    res = compare_systems({"ref": ref, "better": better, "flat": flat}, "ref", ["m"],
                          segments={"warm": (warm, {"m": "m"}), "none": (np.zeros(b, bool), {"m": "m"})},
                          n_samples=100)
    assert res["n_seeds"] == 3 and res["systems"]["flat"]["m"]["replicates"] == 1
    p = res["paired"]["better"]["m"]
    assert p["diff"] == pytest.approx(0.051) and p["ci_low"] < 0.051 < p["ci_high"] and p["significant"]
    assert p["per_seed"] == pytest.approx([0.05, 0.051, 0.052])
    q = res["paired"]["flat"]["m"]
    assert q["n_seeds"] == 3 and q["p_holm"] >= q["p_value"]
    seg = res["segments"]["warm"]
    assert seg["n_users"] == 150 and seg["paired"]["better"]["m"]["n_users"] == 150
    assert seg["paired"]["better"]["m"]["mean"] - seg["paired"]["better"]["m"]["reference_mean"] == pytest.approx(
        seg["paired"]["better"]["m"]["diff"])
    assert res["segments"]["none"] == {"n_users": 0, "paired": {}}
    with pytest.raises(ValueError, match="replicates"):
        compare_systems({"ref": ref, "two": better[:2]}, "ref", ["m"])


# ----------------------------------------------------------------------------------------------------------
# the command on the tiny world (the session's serving bundle, seed 0, and one more bundle trained with seed 1)


@pytest.fixture(scope="module")
def seed1_bundle(serving_bundle, tmp_path_factory):
    import torch
    from serving_support import TRAIN_OVERRIDES

    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.training import train_engine

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("seed1") / "art"
    train_engine(read_dataset(serving_bundle.parent / "data"), load_config(None, [*TRAIN_OVERRIDES, "seed=1"]), out)
    return out


def test_compare_command_on_two_seeds_of_the_tiny_world(serving_bundle, seed1_bundle, tmp_path):
    from offline_eval.evaluator import EvalData, evaluate
    from recsys.bundle import load_bundle
    from recsys.cli import main
    from recsys.config import Config, from_dict
    from recsys.data.catalog import Catalog
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.training import load_engine

    data = serving_bundle.parent / "data"
    out = tmp_path / "cmp"
    args = ["-q", "experiment", "compare", "--data", str(data), "--out", str(out), "--bundle", str(serving_bundle),
            "--bundle", str(seed1_bundle), "--systems", "engine,popularity", "--bootstrap-samples", "100"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["reference"] == "engine" and res["n_seeds"] == 2
    assert res["metrics"] == ["ndcg@10", "recall@10", "recall@100", "true_ndcg@10"]  # a synthetic world
    eng = res["systems"]["engine"]["ndcg@10"]
    assert eng["replicates"] == 2 and eng["per_seed"][0] != eng["per_seed"][1]
    # the seed-0 replicate is what the evaluator gives that bundle's engine on the same users
    cfg = from_dict(Config, load_bundle(serving_bundle).manifest["config"])
    ds = read_dataset(data)
    split = split_dataset(ds, cfg.split)
    ev = evaluate(load_engine(serving_bundle), EvalData.from_split(
        split, cfg.eval, Catalog.from_dataset(ds, train=split.before("test"))), cfg.eval)
    assert eng["per_seed"][0] == pytest.approx(ev.means["ndcg@10"], abs=1e-12)
    pop = res["paired"]["popularity"]["ndcg@10"]
    assert pop["diff"] == pytest.approx(res["systems"]["popularity"]["ndcg@10"]["mean"] - eng["mean"], abs=1e-12)
    assert pop["n_seeds"] == 2 and pop["ci_low"] <= pop["diff"] <= pop["ci_high"] and pop["p_holm"] >= pop["p_value"]
    assert set(res["segments"]) == {"warm_users", "cold_users", "head_items", "tail_items"}
    assert set(res["segments"]["head_items"]["paired"]["popularity"]) == {"recall@10", "recall@100"}
    text = (out / "report.md").read_text()
    assert "## ndcg@10" in text and "![paired differences" in text and "| warm_users |" in text
    assert (out / "forest.png").stat().st_size > 1000 and (out / "segments.png").stat().st_size > 1000
    assert "data:image/png;base64" in (out / "report.html").read_text()

    # two bundles' engines by name; the output folder exists: refused unless --overwrite
    args2 = ["-q", "experiment", "compare", "--data", str(data), "--out", str(out), "--systems", "none",
             "--system", f"seed0={serving_bundle}", "--system", f"seed1={seed1_bundle}:engine",
             "--metrics", "ndcg@10", "--bootstrap-samples", "0", "--reference", "seed0"]
    assert main(args2) == 2
    assert main([*args2, "--overwrite"]) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["n_seeds"] == 1 and set(res2["systems"]) == {"seed0", "seed1"}
    assert res2["systems"]["seed1"]["ndcg@10"]["mean"] == pytest.approx(eng["per_seed"][1], abs=1e-12)


def test_compare_refuses_bad_replicates_and_another_dataset(serving_bundle, tmp_path, capsys):
    from recsys.cli import main
    from recsys.data.synthetic import synthesize

    data = serving_bundle.parent / "data"
    base = ["-q", "experiment", "compare", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*base, "--bundle", str(serving_bundle), "--bundle", str(serving_bundle)]) == 2
    assert "seed replicates need different seeds" in capsys.readouterr().err
    assert main([*base, "--bundle", str(serving_bundle), "--systems", "engine,nope"]) == 2
    assert "no system 'nope'" in capsys.readouterr().err
    assert main([*base, "--bundle", str(serving_bundle), "--metrics", "ndcg@7"]) == 2
    assert "--metrics" in capsys.readouterr().err
    synthesize("tiny", 1, tmp_path / "other")
    assert main(["-q", "experiment", "compare", "--data", str(tmp_path / "other"), "--out", str(tmp_path / "o"),
                 "--bundle", str(serving_bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on another dataset" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_replicates_may_differ_only_in_seeds_and_trained_ablations():
    from types import SimpleNamespace

    from recsys.commands.compare import check_replicates, parse_system

    def bundle(seed, lr=0.1, systems=()):
        return SimpleNamespace(manifest={"config": {"seed": seed, "systems": list(systems), "split": {"seed": 0},
                                                    "rank": {"seed": seed, "lr": lr}}})

    paths = ["a", "b"]
    check_replicates([bundle(0), bundle(1, systems=["prerank_only"])], paths)  # accepted
    with pytest.raises(ValueError, match=r"not a seed replicate of a \(configs differ in \['rank'\]\)"):
        check_replicates([bundle(0), bundle(1, lr=0.2)], paths)
    with pytest.raises(ValueError, match="different seeds"):
        check_replicates([bundle(3), bundle(3)], paths)
    other = SimpleNamespace(manifest={"config": {"seed": 1, "split": {"seed": 1}}})
    with pytest.raises(ValueError, match=r"differ in \['rank', 'split'"):
        check_replicates([bundle(0), other], paths)
    assert parse_system("x=/r/b:no_exposure") == ("x", Path("/r/b"), "no_exposure")
    assert parse_system("x=/r/b") == ("x", Path("/r/b"), "engine")
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_system("/r/b")
