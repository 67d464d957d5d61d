"""recsys experiment frontier: flag parsing and grid validation (one-line errors naming the flag), the index's
search mode, and one end-to-end run on the tiny world whose bundle point equals ``recsys evaluate``."""

import json

import numpy as np
import pytest

from recsys.experiments.frontier import EXACT, Point, check_widths, grid_points, parse_ints, parse_widths


def test_parse_flags():
    assert parse_ints("--retrieve-k", "250, 500,1000,500") == (250, 500, 1000)
    assert parse_widths("--search-width", "exact,1,4,EXACT") == (EXACT, 1, 4)
    for text, match in (("", "comma-separated"), ("250,abc", "'abc' is not an integer"), ("0,5", ">= 1")):
        with pytest.raises(ValueError, match=match) as err:
            parse_ints("--prerank-k", text)
        assert str(err.value).startswith("--prerank-k: ") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^--search-width: 'wide' is not an integer"):
        parse_widths("--search-width", "exact,wide")


def test_grid_points_skips_infeasible_and_keeps_the_bundle_point():
    bundle = Point(1000, 100, EXACT, auto=True)
    points, skipped = grid_points((50, 150), (5, 100, 200), (EXACT, 8), k=10, bundle=bundle)
    keys = [p.key for p in points]
    # prerank 5 < k; prerank 100/200 > retrieve 50; prerank 200 > retrieve 150
    assert keys == [(150, 100, "exact"), (150, 100, "8"), (1000, 100, "exact")]
    reasons = {(s["retrieve_k"], s["prerank_k"]): s["reason"] for s in skipped}
    assert reasons[(50, 5)] == "prerank_k 5 < the final k 10"
    assert reasons[(50, 100)] == "prerank_k 100 > retrieve_k 50"
    assert reasons[(150, 200)] == "prerank_k 200 > retrieve_k 150"
    assert len(skipped) == 5 * 2  # five infeasible (retrieve_k, prerank_k) pairs x two widths
    assert points[-1] is bundle  # outside the grid: added
    points, _ = grid_points((1000,), (100,), (EXACT,), k=10, bundle=bundle)
    assert points == [bundle] and points[0].auto  # inside the grid: the grid point runs as the bundle's


def test_check_widths():
    with pytest.raises(ValueError, match="^--search-width: the index \\(Flat\\) has no search width"):
        check_widths((EXACT, 4), None, None, "Flat")
    assert check_widths((EXACT,), None, None, "Flat") == ((EXACT,), [])
    kept, skipped = check_widths((EXACT, 16, 64, 128), "nprobe", 32, "IVF32,Flat")
    assert kept == (EXACT, 16, 64) and [s["width"] for s in skipped] == [128]  # 64 and 128 both probe all 32


def test_index_search_mode_and_width():
    from recsys.retrieval.index import AnnIndex

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    q = rng.normal(size=(50, 8)).astype(np.float32)
    ivf = AnnIndex.build(x, "IVF32,Flat", nprobe=1, seed=0, threads=1)
    assert ivf.search_width() == ("nprobe", 1, 32)
    assert AnnIndex.build(x, "Flat").search_width() == (None, None, None)
    assert ivf.auto_exact(10)  # N = 2000 <= 16384: auto mode is exhaustive
    exact_ids, _ = ivf.search(q, 10)
    ivf.exact = False  # force the IVF structure with one probed cell: recall drops
    one_cell, _ = ivf.search(q, 10)
    assert not np.array_equal(one_cell, exact_ids)
    ivf.set_search_params(nprobe=32)  # every cell: exhaustive again
    np.testing.assert_array_equal(ivf.search(q, 10)[0], exact_ids)
    ivf.exact = None
    np.testing.assert_array_equal(ivf.search(q, 10)[0], exact_ids)


def test_cli_end_to_end_bundle_point_equals_evaluate(serving_bundle, tmp_path, capsys):
    from recsys.cli import main

    data = serving_bundle.parent / "data"
    out = tmp_path / "frontier"
    args = ["experiment", "frontier", "--bundle", str(serving_bundle), "--data", str(data), "--out", str(out),
            "--retrieve-k", "30,60", "--prerank-k", "10,40", "--search-width", "exact,16", "--users", "20",
            "--warmup", "1", "--repeats", "2", "--budget-ms", "1000"]
    assert main(["-q"] + args) == 0
    res = json.loads((out / "results.json").read_text())
    for name in ("report.md", "frontier.png", "report.html"):
        assert (out / name).is_file()
    labels = [p["label"] for p in res["points"]]
    assert "r30/p40/wexact" not in labels  # prerank_k 40 > retrieve_k 30: skipped
    assert any(s["reason"] == "prerank_k 40 > retrieve_k 30" for s in res["skipped"])
    assert len(res["points"]) == 2 * 2 * 2 - 2 + 1  # feasible grid + the bundle's own point (1000/100)
    bundle = next(p for p in res["points"] if p["bundle"])
    assert (bundle["retrieve_k"], bundle["prerank_k"]) == (1000, 100)
    assert res["best_under_budget"] is not None  # a 1 s budget: every point fits
    assert res["timed_requests"] == 2 * 20 and bundle["vs_bundle"]["mean_diff"] == 0.0
    assert sum(p["on_frontier"] for p in res["points"]) >= 1
    # the same users through the plain path: recsys evaluate of the bundle's engine
    ev = tmp_path / "eval"
    assert main(["-q", "evaluate", "--bundle", str(serving_bundle), "--data", str(data), "--out", str(ev),
                 "--systems", "engine", "--set", "eval.max_users=20", "--set", "eval.seed=0"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_users"] == res["users"] == 20
    assert bundle["ndcg@10"] == pytest.approx(metrics["systems"]["engine"]["ndcg@10"], abs=1e-12)
    assert bundle["recall@10"] == pytest.approx(metrics["systems"]["engine"]["recall@10"], abs=1e-12)
    # an existing report folder is refused before any work, with a one-line message naming it
    capsys.readouterr()
    assert main(["-q"] + args) == 2
    assert "output folder exists" in capsys.readouterr().err
    # a Flat-index question on an HNSW bundle is fine; a bad flag is a one-line error naming it
    assert main(["-q"] + args[:-2] + ["--budget-ms", "-1", "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().endswith("--budget-ms: expected a positive number of milliseconds, got -1.0")
