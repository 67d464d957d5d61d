"""Split protocols against the timestamps: random per-user holdout, ``auto``, and the refusals (temporal
protocols on an untimed log, constant or concentrated timestamps, too few events per user) with their cause."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.configlib import ConfigError, SplitBasis, SplitConfig, SplitMethod
from recsys.data.schema import Dataset, DatasetError, col, make_schema, validate
from recsys.data.split import random_holdout_windows, split_dataset

WINDOWS = {"train": 0.7, "prerank": 0.1, "rank": 0.1, "test": 0.1}


def log(users, items, ts, timed: bool = True) -> Dataset:
    inter = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.asarray(ts, dtype=np.int64),
                          "click": np.ones(len(users), dtype=np.int8), "rid": np.arange(len(users))})
    schema = make_schema("log", {"user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp"),
                                 "click": col("label", "binary"), "rid": col("context", "numeric")},
                         positive_label="click", has_timestamps=timed)
    return validate(Dataset(schema=schema, interactions=inter))


def untimed(n_users: int = 50, per_user: int = 20, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    return log(users, rng.integers(0, 40, len(users)), np.arange(len(users)), timed=False)


def test_random_holdout_gives_each_window_its_fraction_of_every_user():
    ds = untimed()
    split = split_dataset(ds, SplitConfig(method=SplitMethod.RANDOM_HOLDOUT, windows=WINDOWS))
    rids = np.concatenate([w["rid"].to_numpy() for w in split.windows.values()])
    assert sorted(rids) == list(range(len(ds.interactions)))  # a partition
    for name, frac in WINDOWS.items():
        per_user = split[name]["user_id"].value_counts().reindex(range(50), fill_value=0)
        # 20 events per user: floor or ceil of 20 * fraction, never further
        assert per_user.between(np.floor(20 * frac), np.ceil(20 * frac)).all(), name
    assert split.stats()["method"] == "random_holdout" and split.stats()["leak_free"] is False
    again = split_dataset(ds, SplitConfig(method=SplitMethod.RANDOM_HOLDOUT, windows=WINDOWS))
    assert split["test"]["rid"].tolist() == again["test"]["rid"].tolist()  # seeded
    other = split_dataset(ds, SplitConfig(method=SplitMethod.RANDOM_HOLDOUT, windows=WINDOWS, seed=1))
    assert split["test"]["rid"].tolist() != other["test"]["rid"].tolist()


def test_k_fold_test_windows_partition_every_user_and_the_rest_keep_their_fractions():
    """split.folds = 5: the five test windows (fold 0 .. 4, one seed) are disjoint and cover every event; each
    takes floor or ceil of 1/5 of each user's events; the other windows share the remaining 16 of a user's 20
    events by their fractions 0.7 : 0.1 : 0.1 (floor or ceil, up to the rounding of the renormalised cut)."""
    ds = untimed()
    tests = []
    for fold in range(5):
        split = split_dataset(ds, SplitConfig(method=SplitMethod.RANDOM_HOLDOUT, windows=WINDOWS, folds=5, fold=fold))
        rids = np.concatenate([w["rid"].to_numpy() for w in split.windows.values()])
        assert sorted(rids) == list(range(len(ds.interactions)))
        per_user = split["test"]["user_id"].value_counts().reindex(range(50), fill_value=0)
        assert (per_user == 4).all()  # 20 events / 5 folds
        for name, frac in (("train", 0.7 / 0.9), ("prerank", 0.1 / 0.9), ("rank", 0.1 / 0.9)):
            got = split[name]["user_id"].value_counts().reindex(range(50), fill_value=0)
            assert got.between(np.floor(16 * frac) - 1, np.ceil(16 * frac) + 1).all(), (fold, name)
        assert split.stats()["folds"] == 5 and split.stats()["fold"] == fold
        tests.append(set(split["test"]["rid"]))
    assert sum(len(t) for t in tests) == len(ds.interactions) and len(set().union(*tests)) == len(ds.interactions)


@pytest.mark.parametrize("sets, message", [
    ({"folds": 1}, r"split\.folds: 0 \(no k-fold\) or >= 2, got 1"),
    ({"folds": 5, "fold": 5}, r"split\.fold: must be in 0 \.\. split\.folds - 1 = 4, got 5"),
    ({"fold": 2}, r"split\.fold: 2 needs split\.folds >= 2"),
    ({"folds": 3, "method": SplitMethod.TEMPORAL}, r"split\.folds: k-fold is a random_holdout protocol, not 'temporal'"),
])
def test_k_fold_settings_are_checked(sets, message):
    with pytest.raises(ConfigError, match=message):
        SplitConfig(windows=WINDOWS, **sets)


def test_k_fold_on_a_timed_log_with_auto_is_refused():
    """auto resolves to temporal on a timed log: k-fold is then a config error naming the fix."""
    ds = log(np.repeat(np.arange(10), 10), np.arange(100) % 7, np.arange(100) * 60)
    with pytest.raises(ConfigError, match=r"split\.folds: .* resolves to 'temporal' .*split\.method=random_holdout"):
        split_dataset(ds, SplitConfig(windows=WINDOWS, folds=5))


def test_random_holdout_matches_the_fractions_in_expectation_for_small_users():
    users = np.repeat(np.arange(4000), 3)  # 3 events per user, 4 windows: each window by its fraction
    win = random_holdout_windows(users, list(WINDOWS.values()), seed=3)
    share = np.bincount(win, minlength=4) / len(win)
    np.testing.assert_allclose(share, list(WINDOWS.values()), atol=0.01)


def test_auto_is_temporal_with_timestamps_and_random_holdout_without():
    timed = log(np.arange(100) % 10, np.arange(100) % 7, 1_000 + np.arange(100))
    assert split_dataset(timed, SplitConfig(windows=WINDOWS)).config.method is SplitMethod.TEMPORAL
    assert split_dataset(untimed(), SplitConfig(windows=WINDOWS)).config.method is SplitMethod.RANDOM_HOLDOUT


@pytest.mark.parametrize("method", [SplitMethod.TEMPORAL, SplitMethod.LEAVE_LAST_N])
def test_temporal_protocols_are_refused_on_an_untimed_log(method):
    with pytest.raises(ConfigError, match=rf"split\.method: '{method.value}' needs timestamps, but dataset 'log' "
                                          r"has none .* valid protocols: random_holdout "
                                          r"\(--set split\.method=random_holdout\), and its k-fold form "
                                          r"\(--set split\.folds=K --set split\.fold=I\)"):
        split_dataset(untimed(), SplitConfig(method=method, windows=WINDOWS))


def test_constant_timestamps_are_refused_naming_the_cause():
    ds = log(np.arange(200) % 20, np.arange(200) % 9, np.full(200, 1_700_000_000))
    with pytest.raises(DatasetError, match=r"window\(s\) \['train', 'prerank', 'rank'\] would be empty: all 200 "
                                           r"events have the same timestamp 1700000000 \(constant timestamps\)"):
        split_dataset(ds, SplitConfig(method=SplitMethod.TEMPORAL, windows=WINDOWS))


def test_concentrated_timestamps_and_outliers_are_refused_naming_the_cause():
    ts = np.r_[np.full(190, 1_700_000_000), 1_700_000_000 + np.arange(1, 11)]  # 95% share one second
    ds = log(np.arange(200) % 20, np.arange(200) % 9, ts)
    with pytest.raises(DatasetError, match=r"\['train', 'prerank', 'rank'\] would be empty: 95\.0% of the 200 "
                                           r"events share the timestamp 1700000000 .* use --set "
                                           r"split\.method=random_holdout"):
        split_dataset(ds, SplitConfig(method=SplitMethod.TEMPORAL, basis=SplitBasis.EVENTS, windows=WINDOWS))
    ts = np.r_[0, 1_700_000_000 + np.arange(199)]  # one event in 1970 stretches the span
    ds = log(np.arange(200) % 20, np.arange(200) % 9, ts)
    with pytest.raises(DatasetError, match=r"use --set split\.basis=events"):
        split_dataset(ds, SplitConfig(method=SplitMethod.TEMPORAL, windows=WINDOWS))


def test_leave_last_n_with_too_few_events_per_user_is_refused():
    ds = log(np.arange(60) % 20, np.arange(60) % 9, np.arange(60))  # 3 events per user
    with pytest.raises(DatasetError, match=r"window\(s\) \['train'\] would be empty: the 20 users have at most 3 "
                                           r"events each .* lower split\.n"):
        split_dataset(ds, SplitConfig(method=SplitMethod.LEAVE_LAST_N, n=1, windows=WINDOWS))
