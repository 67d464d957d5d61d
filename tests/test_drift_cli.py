"""``recsys experiment drift`` end to end on the tiny synthetic world with a planted drift: every event of
the test window is moved to hour 3, so the requests' context feature ``ctx.hour`` separates the windows and
must come out first, with an AUC > 0.7; the report folder; one-line errors before any training."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from recsys.cli import main

FAST = ["--set", "retrieval.two_tower.max_epochs=1", "--folds", "3", "--permutations", "1", "--bootstrap", "100",
        "--rows-per-request", "20"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import synthesize

    tmp = tmp_path_factory.mktemp("drift")
    synthesize("tiny", 0, tmp / "data")
    split = split_dataset(read_dataset(tmp / "data"), load_config(None, []).split)
    t_test = int(split[split.names[-1]]["timestamp"].min())
    path = tmp / "data" / "interactions.parquet"
    df = pd.read_parquet(path)
    assert (df["hour"] == 3).mean() < 0.1  # the old window's hours are spread over the day
    df.loc[df["timestamp"] >= t_test, "hour"] = 3
    df.to_parquet(path)
    out = tmp / "report"
    assert main(["--quiet", "experiment", "drift", "--data", str(tmp / "data"), "--out", str(out), *FAST]) == 0
    return tmp, out


def test_planted_context_drift_found(planted):
    _, out = planted
    res = json.loads((out / "results.json").read_text())
    assert res["old"] == "prerank" and res["new"] == "test" and res["retrieval_trained_on"] == ["train"]
    assert res["auc"] > 0.7 and res["auc_ci95"][0] > max(res["null_auc"])
    top = res["features"][0]
    assert top["feature"] == "ctx.hour"
    assert top["ks"] > 0.6  # the new window's requests are all at hour 3
    assert res["verdict"].endswith("beyond its permutation null")
    assert res["rows"]["old"] <= 20 * res["requests"]["old"]
    md = (out / "report.md").read_text()
    assert "| 1 | `ctx.hour` |" in md and f"**{res['auc']:.3f}**" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 2
    assert {p.name for p in out.iterdir()} == {"report.md", "report.html", "results.json", "importance.png",
                                               "distributions.png"}


def test_drop_and_errors(planted, capsys):
    tmp, out = planted
    data = str(tmp / "data")
    assert main(["--quiet", "experiment", "drift", "--data", data, "--out", str(out), *FAST]) == 2
    assert "exists" in capsys.readouterr().err
    for extra, msg in ((["--old", "train"], "--old: 'train' is not after the retrieval stage's training window"),
                       (["--old", "nope"], "--old: unknown window 'nope'"),
                       (["--old", "rank", "--new", "prerank"], "--new: 'prerank' must come after --old 'rank'"),
                       (["--new", "later"], "--new: unknown window 'later'")):
        assert main(["--quiet", "experiment", "drift", "--data", data, "--out", str(tmp / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp / "x").exists()
    # without the planted feature the drift is gone (the tiny world's windows are otherwise alike)
    shutil.rmtree(tmp / "x", ignore_errors=True)
    assert main(["--quiet", "experiment", "drift", "--data", data, "--out", str(tmp / "x"), "--drop", "ctx.hour",
                 *FAST]) == 0
    res = json.loads((tmp / "x" / "results.json").read_text())
    assert res["dropped"] == ["ctx.hour"] and "ctx.hour" not in [f["feature"] for f in res["features"]]
    assert res["auc"] < 0.65
