"""The Open Bandit Dataset importer (recsys/data/obd.py) on a fixture written in the dataset's CSV format, and
the known-answer test a user with the real files runs: a policy's CTR estimated from the random-policy log."""

import json

import numpy as np
import pandas as pd
import pytest

from recsys.data.bandit_log import BanditLogError, read_bandit_log
from recsys.data.obd import import_obd, read_obd_csv

N_ITEMS = 10
THETA = np.array([1.0, 0.7, 0.5])  # click-through by position (left, centre, right)


def _gamma():
    return np.linspace(0.02, 0.20, N_ITEMS)[np.random.default_rng(5).permutation(N_ITEMS)]


def write_obd(folder, n_slates=20_000, seed=0):
    """random/all/all.csv and item_context.csv as the Open Bandit Dataset lays them out: an unnamed index column,
    a timestamp string, item_id, 1-based position, click, propensity_score (uniform random policy: 1 / n_items at
    every position), hashed user features, user-item affinities. Each slate shows 3 distinct items."""
    rng = np.random.default_rng(seed)
    gamma = _gamma()
    items = np.argsort(rng.random((n_slates, N_ITEMS)), axis=1)[:, :3]  # uniform random slates, no repeats
    pos = np.broadcast_to(np.arange(3), items.shape)
    click = (rng.random(items.shape) < gamma[items] * THETA).astype(int)
    t0 = pd.Timestamp("2019-11-24", tz="UTC")
    ts = t0 + pd.to_timedelta(np.sort(rng.integers(0, 7 * 86400 * 10**6, n_slates)), unit="us")
    df = pd.DataFrame({
        "timestamp": np.repeat(ts.astype(str).to_numpy(), 3),
        "item_id": items.ravel(),
        "position": pos.ravel() + 1,
        "click": click.ravel(),
        "propensity_score": np.full(items.size, 1.0 / N_ITEMS),
    })
    for j in range(4):
        df[f"user_feature_{j}"] = [f"{h:032x}" for h in rng.integers(0, 2**62, len(df))]
    for i in range(N_ITEMS):
        df[f"user-item_affinity_{i}"] = rng.integers(0, 3, len(df))
    d = folder / "random" / "all"
    d.mkdir(parents=True)
    df.to_csv(d / "all.csv")  # the index becomes the unnamed first column, as in the real files
    ic = pd.DataFrame({"item_id": np.arange(N_ITEMS), "item_feature_0": rng.normal(size=N_ITEMS),
                       **{f"item_feature_{j}": [f"{h:016x}" for h in rng.integers(0, 2**62, N_ITEMS)]
                          for j in (1, 2, 3)}})
    ic.to_csv(d / "item_context.csv")
    return d / "all.csv", gamma


def test_import_maps_rows_to_sessions(tmp_path):
    csv, _ = write_obd(tmp_path, n_slates=200)
    log = import_obd(csv, tmp_path / "log", csv.parent / "item_context.csv")
    back = read_bandit_log(tmp_path / "log")
    t = back.table
    assert back.slate_size == 3 and back.meta["n_items"] == N_ITEMS and back.meta["propensity"] == "item_position"
    assert len(t) == 600 and back.n_sessions == 600  # one session per CSV row
    assert sorted(t["position"].unique()) == [0, 1, 2]  # 1-based in the CSV, 0-based in the log
    assert str(t["user_id"].dtype) == "Int64" and t["user_id"].isna().all()  # nullable ids stay integers
    assert np.allclose(t["propensity"], 1 / N_ITEMS)
    assert (np.diff(t["timestamp"].to_numpy()) >= 0).all() and t["timestamp"].iloc[0] >= 1574553600
    assert log.meta["name"] == "obd-random-all"


def test_random_log_estimates_a_policys_ctr(tmp_path):
    """Known answer: the fixed ranking of the 3 most attractive items and the learned top-ctr policy, each
    estimated from the uniform-random log within its interval of the true expected clicks."""
    from recsys.cli import main

    csv, gamma = write_obd(tmp_path)
    assert main(["-q", "data", "import-obd", "--csv", str(csv), "--out", str(tmp_path / "log")]) == 0
    best = np.argsort(-gamma)[:3]
    (tmp_path / "policy.txt").write_text("# best first\n" + "\n".join(map(str, best)) + "\n")
    out = tmp_path / "report"
    assert main(["-q", "experiment", "ope", "--log", str(tmp_path / "log"), "--out", str(out), "--policy", "top-ctr",
                 "--policy-file", str(tmp_path / "policy.txt")]) == 0
    res = json.loads((out / "results.json").read_text())
    learned = np.array(res["run"]["top_ctr"]["items"])
    for name, items in (("policy_file", best), ("top_ctr", learned)):
        est = res["policies"][name]["estimates"]
        truth_list = float((gamma[items] * THETA).sum())
        truth_top = float(gamma[items[0]] * THETA[0])
        for e in ("ip_ips", "ip_dr"):
            assert est[e]["ci_low"] <= truth_list <= est[e]["ci_high"], (name, e, est[e], truth_list)
        for e in ("ips", "snips", "dr"):
            assert est[e]["ci_low"] <= truth_top <= est[e]["ci_high"], (name, e, est[e], truth_top)
        assert est["ip_ips"]["ci_high"] - est["ip_ips"]["ci_low"] < 0.25 * truth_list  # informative
    # the random policy's own CTR per position is far below the best items': the estimate sees the difference
    random_value = float((gamma.mean() * THETA).sum())
    assert res["policies"]["policy_file"]["estimates"]["ip_ips"]["ci_low"] > random_value
    assert (out / "report.html").is_file() and (out / "estimates.png").is_file()


@pytest.mark.parametrize("edit, match", [
    (lambda df: df.drop(columns=["propensity_score"]), r"all\.csv: missing column\(s\) \['propensity_score'\]"),
    (lambda df: df.assign(position=df["position"] - 1), r"all\.csv: column 'position': expected 1-based"),
    (lambda df: df.assign(propensity_score=0.0), r"all\.csv: column 'propensity_score': expected a probability"),
    (lambda df: df.assign(item_id="x"), r"all\.csv: column 'item_id': expected integers"),
    (lambda df: df.assign(timestamp="not a time"), r"all\.csv: column 'timestamp': not a date-time"),
])
def test_bad_csv_is_one_line_naming_file_and_column(tmp_path, edit, match):
    csv, _ = write_obd(tmp_path, n_slates=20)
    df = pd.read_csv(csv, index_col=0)
    edit(df).to_csv(csv)
    with pytest.raises(ValueError, match=match) as info:
        read_obd_csv(csv)
    assert "\n" not in str(info.value)


def test_item_outside_item_context_is_refused(tmp_path):
    csv, _ = write_obd(tmp_path, n_slates=20)
    ic = pd.read_csv(csv.parent / "item_context.csv", index_col=0)
    ic[ic["item_id"] != 0].to_csv(csv.parent / "item_context.csv")
    with pytest.raises(ValueError, match=r"all\.csv: column 'item_id': item 0 is not in .*item_context\.csv"):
        read_obd_csv(csv, csv.parent / "item_context.csv")


def test_bad_log_folder_is_refused(tmp_path):
    with pytest.raises(BanditLogError, match=r"log\.yaml: not found"):
        read_bandit_log(tmp_path)
