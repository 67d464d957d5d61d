"""``recsys experiment bias-variance``: its pieces (request bootstrap, Platt scaling, truth given the log) and
the command end to end on the tiny synthetic world (the session's serving bundle), where the truth is known."""

import json

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.experiments.bias_variance import BiasVarianceConfig, pair_truth, platt, platt_fit, take_requests
from recsys.rank.stage import RankRows
from recsys.types import Ragged, Requests


def test_platt_fit_recovers_a_planted_logistic_link():
    rng = np.random.default_rng(0)
    s = rng.normal(3.0, 2.0, 200_000)  # an arbitrary score scale
    y = (rng.random(len(s)) < platt(s, 0.8, -4.0)).astype(np.int8)
    a, b = platt_fit(s, y)
    assert a == pytest.approx(0.8, abs=0.02) and b == pytest.approx(-4.0, abs=0.08)
    a, b = platt_fit(np.r_[np.zeros(5), np.ones(5)], np.r_[np.zeros(5), np.ones(5)])  # separable: still finite
    assert np.isfinite([a, b]).all() and 0.5 < platt(1.0, a, b) < 1.0
    with pytest.raises(ValueError, match="constant"):
        platt_fit(s[:10], np.zeros(10))


def _rows(lens):
    g = len(lens)
    req = np.repeat(np.arange(g), lens)
    r = len(req)
    requests = Requests(np.arange(g), np.zeros(g), Ragged(np.zeros(g + 1, np.int64), np.zeros(0, np.int64)),
                        user_ids=np.array([f"u{i}" for i in range(g)], dtype=object))
    X = np.arange(r, dtype=np.float32)[:, None]
    return RankRows(requests, requests.user_ids, [], req, np.arange(r), 100 + np.arange(r), X,
                    (np.arange(r) % 2)[:, None].astype(np.int8), np.ones(r, bool), np.ones(r, bool),
                    np.arange(r, dtype=np.float64)[:, None] / 10, ["x"], ["click"])


def test_take_requests_keeps_each_request_whole_with_repeats():
    rows = _rows([2, 3, 1])  # rows 0-1, 2-4, 5
    out = take_requests(rows, np.array([1, 1, 2]))
    assert list(out.user_ids) == ["u1", "u1", "u2"]
    assert out.req.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert out.X[:, 0].tolist() == [2, 3, 4, 2, 3, 4, 5]
    assert out.item.tolist() == [102, 103, 104, 102, 103, 104, 105]
    assert out.truth[:, 0].tolist() == pytest.approx([0.2, 0.3, 0.4, 0.2, 0.3, 0.4, 0.5])
    assert len(out.requests) == 3 and out.blocks == []


class _Items:
    def encode(self, ids):
        return np.asarray([int(i[1:]) for i in ids])


class _Catalog:
    user_col, item_col, n_items, items = "user_id", "item_id", 10, _Items()


def test_pair_truth_combines_the_impressions_of_a_pair_and_is_zero_when_never_shown():
    win = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["i1", "i1", "i2"], "p_click": [0.5, 0.2, 0.3]})
    p = pair_truth(win, _Catalog(), "p_click", np.array(["a", "a", "b", "c"]), np.array([1, 2, 2, 1]))
    assert p == pytest.approx([1 - 0.5 * 0.8, 0.0, 0.3, 0.0])


def test_config_is_checked():
    with pytest.raises(ValueError, match="--stage"):
        BiasVarianceConfig(("heavy",))
    with pytest.raises(ValueError, match="--resamples"):
        BiasVarianceConfig(("rank",), resamples=1)


def test_cli_on_the_tiny_world_terms_sum_to_the_measured_mse(serving_bundle, tmp_path, capsys):
    data = serving_bundle.parent / "data"
    out = tmp_path / "bv"
    args = ["experiment", "bias-variance", "--data", str(data), "--bundle", str(serving_bundle), "--stage",
            "prerank,rank", "--resamples", "2", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [s["stage"] for s in res["stages"]] == ["prerank", "rank"]
    for s in res["stages"]:
        t = s["terms"]
        assert t["M"] == 2 and t["n"] > 100
        assert t["sum_exact"] == pytest.approx(t["mse"], rel=1e-12)  # the known answer: an exact identity
        assert t["mse_of_mean"] + t["variance"] == pytest.approx(t["mse"], rel=1e-12)
        assert t["variance"] > 0 and t["bias2"] > 0
        assert t["noise_expected"] == pytest.approx(t["noise_realised"], rel=0.2)  # the synthetic truth is known
        assert abs(t["gap_expected"]) < 0.1 * t["mse"]
        assert sum(b["n"] for b in s["by_popularity"]) == t["n"]
        assert len(s["refits"]) == 2 and s["refits"][0]["seed"] != s["refits"][1]["seed"]
    md = (out / "report.md").read_text()
    assert "](terms.png)" in md and "](popularity_rank.png)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    # deterministic: the same command gives the same numbers
    assert main(args[:-1] + [str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [s["terms"] for s in again["stages"]] == [s["terms"] for s in res["stages"]]
    # an existing report folder is refused before any work
    capsys.readouterr()
    assert main(args) != 0
    assert "exists" in capsys.readouterr().err
