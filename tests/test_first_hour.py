"""A newcomer's first hour, end to end through the command line: a tab-separated .dat file, an untimed log and
a log with play counts are imported, trained with the default settings (small sizes) and evaluated; every
misuse ends in a one-line error before any training."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

import recsys.training
from recsys.cli import main
from recsys.config import load_config
from recsys.data.importers import import_csv
from recsys.data.schema import read_dataset
from recsys.validate import check_config, derive_gains

# sizes only: every other setting is the built-in default
SMALL = ["retrieval.two_tower.max_epochs=2", "retrieval.two_tower.dim=16", "retrieval.two_tower.emb_dim=16",
         "retrieval.two_tower.threads=1", "prerank.n_estimators=15", "rank.train.max_epochs=2",
         "eval.bootstrap_samples=20"]


def music(n_users: int = 90, n_items: int = 60, seed: int = 0) -> pd.DataFrame:
    """A listening log with taste groups (so there is something to learn), times and play counts."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        own = rng.choice(np.arange(n_items)[np.arange(n_items) % 3 == u % 3], size=14, replace=False)
        other = rng.choice(n_items, size=4, replace=False)
        rows += [(u + 2, int(i) + 51) for i in np.unique(np.r_[own, other])]
    df = pd.DataFrame(rows, columns=["userID", "artistID"])
    df["plays"] = rng.geometric(0.001, len(df))  # up to thousands of plays
    df["ts"] = 1_600_000_000 + rng.permutation(len(df)) * 600
    return df


SHAPES = {
    # a ratings-style .dat, tab-separated with a header and times
    "dat": ("ratings.dat", lambda df: df.assign(rating=1 + df["plays"] % 5)[["userID", "artistID", "rating", "ts"]],
            "\t", ["--map", "rating=rating", "--map", "timestamp=ts"]),
    # no timestamps at all
    "untimed": ("log.csv", lambda df: df[["userID", "artistID"]], ",", []),
    # play counts, with times
    "counts": ("plays.csv", lambda df: df[["userID", "artistID", "plays", "ts"]], ",",
               ["--map", "labels.plays=count", "--map", "timestamp=ts"]),
}


def imported(tmp_path, shape: str):
    fname, cols, sep, extra = SHAPES[shape]
    src = tmp_path / fname
    cols(music()).to_csv(src, sep=sep, index=False)
    data = tmp_path / f"data-{shape}"
    assert main(["-q", "data", "import", "csv", "--path", str(src), "--out", str(data), "--map", "user=userID",
                 "--map", "item=artistID", *extra]) == 0
    return data


@pytest.mark.parametrize("shape", list(SHAPES))
def test_import_train_and_evaluate_each_shape_with_default_settings(tmp_path, shape, capsys):
    data = imported(tmp_path, shape)
    ds = read_dataset(data)
    assert ds.schema.has_timestamps is (shape != "untimed")
    sets = [a for s in SMALL for a in ("--set", s)]
    capsys.readouterr()
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "b"), *sets]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert {"retrieval", "prerank", "rank"} <= set(manifest["stages"])
    method = json.loads((tmp_path / "b" / "latest" / "manifest.json").read_text())["config"]["split"]["method"]
    assert method == ("random_holdout" if shape == "untimed" else "temporal")  # auto, resolved and recorded
    assert main(["-q", "evaluate", "--data", str(data), "--bundle", str(tmp_path / "b"), "--out",
                 str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {"engine", "retrieval_only", "prerank_only", "random", "popularity", "itemknn", "svd", "ease"} <= set(
        m["systems"])
    assert m["failed"] == {}
    assert m["systems"]["engine"]["ndcg@10"] > m["systems"]["random"]["ndcg@10"]
    if shape == "counts":  # one binary task: the single-task and shared-bottom networks are the same layers
        assert m["identical_systems"] == {"single_task": "shared_bottom"} and "single_task" not in m["systems"]
        assert main(["-q", "evaluate", "--data", str(data), "--bundle", str(tmp_path / "b"), "--out",
                     str(tmp_path / "r2"), "--systems", "engine,retrieval_only,popularity"]) == 0
        m2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())
        assert set(m2["systems"]) == {"engine", "retrieval_only", "popularity"}
        assert m2["systems"]["engine"] == m["systems"]["engine"]
    if shape == "untimed":  # K-fold: one fold is one run; the bundle records it and evaluates on its own fold
        assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "f2"), *sets, "--set",
                     "split.folds=3", "--set", "split.fold=2"]) == 0
        split = json.loads((tmp_path / "f2" / "latest" / "manifest.json").read_text())["config"]["split"]
        assert (split["method"], split["folds"], split["fold"]) == ("random_holdout", 3, 2)
        assert main(["-q", "evaluate", "--data", str(data), "--bundle", str(tmp_path / "f2"), "--out",
                     str(tmp_path / "rf"), "--systems", "engine,popularity"]) == 0
        mf = json.loads((tmp_path / "rf" / "metrics.json").read_text())
        assert mf["systems"]["engine"]["ndcg@10"] != m["systems"]["engine"]["ndcg@10"]  # another test window


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the config was checked")

    monkeypatch.setattr(recsys.training, "train_engine", refuse)


@pytest.mark.parametrize("shape,args,expected", [
    ("untimed", ["--set", "split.method=temporal"], "split.method: 'temporal' needs timestamps, but dataset"),
    ("untimed", ["--set", "split.method=leave_last_n"], "valid protocols: random_holdout"),
    ("untimed", ["--set", "split.folds=1"], "split.folds: 0 (no k-fold) or >= 2, got 1"),
    ("counts", ["--set", "split.folds=5"], "split.folds: k-fold is a random_holdout protocol, and split.method "
                                           "resolves to 'temporal'"),
    ("counts", ["--set", "eval.positive_label=like"], "eval.positive_label: 'like' is not a binary label of"),
    ("counts", ["--set", "rank.examples=impressions"], "rank.examples: 'impressions' needs a dataset with impr"),
    ("counts", ["--set", "eval.baselines=[ease, knn]"], "eval.baselines: unknown baseline(s) ['knn']"),
    ("counts", ["--set", "eval.baseline_params.ease.l2=0"], "eval.baseline_params.ease.l2: must be > 0, got 0"),
    ("counts", ["--set", "split.cutoffs=[1, 2, 3]"], "['train', 'prerank', 'rank'] would be empty: the cut-offs "
                                                      "[1, 2, 3] leave no event in them"),
])
def test_misuse_is_a_one_line_error_before_any_training(tmp_path, capsys, no_training, shape, args, expected):
    data = imported(tmp_path, shape)
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and err.startswith("recsys train: error: ")
    assert not (tmp_path / "b").exists()


def test_constant_timestamps_are_refused_before_training(tmp_path, capsys, no_training):
    src = tmp_path / "log.csv"
    music()[["userID", "artistID"]].assign(ts=1_700_000_000).to_csv(src, index=False)
    assert main(["-q", "data", "import", "csv", "--path", str(src), "--out", str(tmp_path / "d"), "--map",
                 "user=userID", "--map", "item=artistID", "--map", "timestamp=ts"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "events have the same timestamp 1700000000 (constant timestamps)" in err and "\n" not in err


def test_evaluate_names_the_systems_it_can_run(tmp_path, capsys):
    data = imported(tmp_path, "counts")
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "r"), "--systems", "popularity,engine"]) == 2
    err = capsys.readouterr().err
    assert "--systems: unknown system(s) ['engine']; baselines: random, popularity" in err
    assert "engine systems: none without --bundle" in err


def test_gains_missing_from_the_data_are_derived_and_said(tmp_path, caplog):
    src = tmp_path / "log.csv"
    music()[["userID", "artistID", "ts"]].to_csv(src, index=False)
    ds = import_csv(src, user="userID", item="artistID", timestamp="ts")
    cfg = load_config("configs/default.yaml")  # gains {click: 1, like: 1}, rank.exposure: true
    with caplog.at_level(logging.WARNING, logger="recsys.validate"):
        checked = check_config(cfg, ds)
    assert checked.prerank.gains == {"interaction": 1.0} and checked.eval.gains == {"interaction": 1.0}
    assert checked.rank.exposure is False
    assert "prerank.gains: ['click', 'like'] not label(s) of dataset" in caplog.text
    assert "using gains {'interaction': 1.0} derived from its labels" in caplog.text


def test_derived_gains_weigh_a_label_that_only_engagements_have(tmp_path):
    df = pd.DataFrame({"u": [1, 1, 2, 2, 3], "i": [1, 2, 1, 3, 2], "t": [1, 2, 3, 4, 5],
                       "click": [1, 0, 1, 1, 0], "like": [1, 0, 0, 1, 0], "shown_twice": [0, 1, 1, 0, 0]})
    ds = import_csv(_csv(tmp_path, df), user="u", item="i", timestamp="t",
                    labels={"click": "binary", "like": "binary", "shown_twice": "binary"}, positive_label="click")
    # like is 1 only on clicked rows: a stronger engagement; shown_twice is 1 on a row without a click: not one
    assert derive_gains(ds) == {"click": 1.0, "like": 1.0}


def _csv(tmp_path, df):
    df.to_csv(tmp_path / "f.csv", index=False)
    return tmp_path / "f.csv"
