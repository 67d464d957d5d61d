"""The bandit-log folder format (recsys/data/bandit_log.py): round trip, id dtypes, one-line errors naming the
file and column; and the exploration log of the synthetic world (recsys/data/exploration.py): exact
propensities, determinism, the dataset left untouched."""

import numpy as np
import pandas as pd
import pytest
import yaml

from recsys.data.bandit_log import BanditLogError, read_bandit_log, validate_log, write_bandit_log

META = {"slate_size": 2, "propensity": "item_position"}


def _table(**cols):
    t = pd.DataFrame({"session_id": [1, 1, 0], "timestamp": [20, 20, 10], "user_id": [5, 5, 6],
                      "position": [1, 0, 0], "item_id": [11, 10, 12], "click": [0, 1, 0],
                      "propensity": [0.25, 0.5, 0.1]})
    return t.assign(**cols)


def test_round_trip_sorted_and_typed(tmp_path):
    write_bandit_log(_table(hour=[3, 3, 4], device=["mobile", "mobile", "desktop"]), META, tmp_path / "log")
    log = read_bandit_log(tmp_path / "log")
    t = log.table
    assert t[["session_id", "position"]].values.tolist() == [[0, 0], [1, 0], [1, 1]]
    assert t["item_id"].tolist() == [12, 10, 11] and str(t["item_id"].dtype) == "int64"
    assert str(t["user_id"].dtype) == "Int64"
    assert list(t.columns) == ["session_id", "timestamp", "user_id", "position", "item_id", "click", "propensity",
                               "hour", "device"]
    assert log.n_sessions == 2 and log.slate_size == 2 and log.meta["format_version"] == 1


@pytest.mark.parametrize("user_id, dtype, values", [
    ([None, None, None], "Int64", [None, None, None]),  # anonymous (Open Bandit): nullable integers, not float
    ([5.0, np.nan, 6.0], "Int64", [5, None, 6]),
    (["a", None, "b"], "string", ["a", None, "b"]),
])
def test_nullable_user_ids_keep_their_dtype(tmp_path, user_id, dtype, values):
    write_bandit_log(_table(user_id=user_id), META, tmp_path / "log")
    t = read_bandit_log(tmp_path / "log").table
    assert str(t["user_id"].dtype) == dtype
    out = [None if pd.isna(v) else v for v in t["user_id"]]
    expect = [values[2], values[1], values[0]]  # sorted by (session, position): rows 2, 1, 0
    assert out == expect


@pytest.mark.parametrize("edit, match", [
    (dict(propensity=[0.5, 0.0, 0.1]), r"column 'propensity': expected a probability in \(0, 1\], got 0.0 at row"),
    (dict(propensity=[0.5, 1.5, 0.1]), r"column 'propensity': expected a probability"),
    (dict(click=[0, 2, 0]), r"column 'click': expected 0 or 1"),
    (dict(position=[2, 0, 0]), r"column 'position': expected 0..1 \(slate_size 2\), got 2"),
    (dict(position=[0, 0, 0]), r"columns 'session_id', 'position': session 1 shows position 0 twice"),
    (dict(timestamp=[20, 21, 10]), r"column 'timestamp': expected one timestamp per session"),
    (dict(item_id=[1, None, 2]), r"column 'item_id': null at row 1"),
    (dict(user_id=[1.5, 2.0, 3.0]), r"column 'user_id': expected integer or string ids"),
])
def test_bad_table_is_one_line_naming_file_and_column(tmp_path, edit, match):
    with pytest.raises(BanditLogError, match=match) as info:
        write_bandit_log(_table(**edit), META, tmp_path / "log")
    assert str(info.value).startswith(str(tmp_path / "log" / "log.parquet")) and "\n" not in str(info.value)
    assert not (tmp_path / "log").exists()  # nothing half-written


def test_bad_folder_and_yaml(tmp_path):
    with pytest.raises(BanditLogError, match=r"log\.yaml: not found"):
        read_bandit_log(tmp_path)
    write_bandit_log(_table(), META, tmp_path / "log")
    with pytest.raises(BanditLogError, match=r"missing column\(s\) \['propensity'\]"):
        validate_log(_table().drop(columns="propensity"), META)
    with pytest.raises(BanditLogError, match=r"log\.yaml: slate_size: expected an integer >= 1"):
        validate_log(_table(), {"slate_size": 0, "propensity": "item_position"})
    y = tmp_path / "log" / "log.yaml"
    meta = yaml.safe_load(y.read_text())
    y.write_text(yaml.safe_dump({**meta, "format_version": 9}))
    with pytest.raises(BanditLogError, match=r"log\.yaml: format_version: expected 1, got 9"):
        read_bandit_log(tmp_path / "log")
    with pytest.raises(FileExistsError):
        write_bandit_log(_table(), META, tmp_path / "log")


# ----------------------------------------------------------------------------------------------------------
# the exploration log


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from recsys.data.schema import read_dataset
    from recsys.data.synthetic import Oracle, synthesize

    d = tmp_path_factory.mktemp("world") / "data"
    synthesize("tiny", 0, d)
    ds = read_dataset(d)
    return ds, Oracle.load(ds.truth_dir)


def test_exploration_propensities_are_exact(world):
    from recsys.data.exploration import ExploreConfig, explore, logging_probabilities, window_contexts

    ds, oracle = world
    window = ds.interactions[ds.interactions["timestamp"] >= ds.interactions["timestamp"].quantile(0.9)]
    ctx = window_contexts(window)
    cfg = ExploreConfig(sessions=4 * len(ctx), slate_size=3, temperature=0.5, epsilon=0.2, seed=3)
    t = explore(oracle, ctx, cfg)
    assert len(t) == cfg.sessions * 3
    p = logging_probabilities(oracle, ctx["user_id"].to_numpy(), ctx["timestamp"].to_numpy(), cfg)
    assert np.allclose(p.sum(axis=1), 1.0)
    created = oracle.created_at[None, :] <= ctx["timestamp"].to_numpy()[:, None]
    assert (p[created] >= cfg.epsilon / created.sum(axis=1).max() - 1e-15).all() and (p[~created] == 0).all()
    # the recorded propensity is p(item | the session's context), the same at every position
    row = pd.Index(ctx["user_id"]).get_indexer(t["user_id"])
    assert np.allclose(t["propensity"], p[row, oracle.item_index(t["item_id"].to_numpy())])
    # the empirical frequency of the most likely item of one context matches its propensity
    many = explore(oracle, ctx.iloc[:1], ExploreConfig(sessions=20_000, slate_size=2, temperature=0.5, epsilon=0.2, seed=1))
    top = int(np.argmax(p[0]))
    freq = (many["item_id"].to_numpy() == oracle.item_ids[top]).mean()
    assert abs(freq - p[0, top]) < 4 * np.sqrt(p[0, top] * (1 - p[0, top]) / len(many))
    assert explore(oracle, ctx, cfg).equals(t)  # deterministic
    assert not explore(oracle, ctx, ExploreConfig(sessions=cfg.sessions, slate_size=3, temperature=0.5,
                                                  epsilon=0.2, seed=4)).equals(t)


def test_explore_command(world, tmp_path, capsys):
    from recsys.cli import main

    ds, _ = world
    before = pd.read_parquet(ds.path / "interactions.parquet")
    out = tmp_path / "log"
    assert main(["-q", "data", "explore", "--data", str(ds.path), "--out", str(out), "--sessions", "500",
                 "--slate-size", "4", "--set", "split.method=temporal"]) == 0
    log = read_bandit_log(out)
    assert log.n_sessions == 500 and log.slate_size == 4 and log.meta["window"] == "test"
    assert log.meta["propensity"] == "item_position" and log.meta["explore"]["temperature"] == 0.25
    assert pd.read_parquet(ds.path / "interactions.parquet").equals(before)
    assert main(["-q", "data", "explore", "--data", str(ds.path), "--out", str(tmp_path / "x"), "--window",
                 "nope"]) == 2
    assert "--window: 'nope' is not a window of the split" in capsys.readouterr().err
