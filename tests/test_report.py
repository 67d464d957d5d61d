"""The evaluation report folder, its metrics.json contract, TREC export (checked with pytrec_eval), the
bootstrap CIs and the ``recsys evaluate`` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from offline_eval.evaluator import HEADLINE, run_evaluation
from offline_eval.report import bootstrap_ci, render_markdown, run_scores
from recsys.config import Config, EvalConfig, SplitConfig
from recsys.data.schema import Dataset, col, make_schema, write_dataset
from recsys.io import OutputExistsError
from recsys.types import Requests, Results, top_k

GAINS = {"click": 1.0, "like": 1.0}


class Staged:
    """A deterministic two-stage system (top 60 by s1, then top k of those by s2) reporting its stage."""

    name = "staged"

    def __init__(self, n_items: int) -> None:
        rng = np.random.default_rng(5)
        self.s1, self.s2 = rng.random(n_items), rng.random(n_items)

    def rank(self, requests: Requests, k: int) -> Results:
        b = len(requests)
        cand, _ = top_k(np.tile(self.s1, (b, 1)), 60, requests.exclude)
        s2 = np.full((b, len(self.s1)), -np.inf)
        rows = np.repeat(np.arange(b), cand.shape[1])
        ok = cand.ravel() >= 0
        s2[rows[ok], cand.ravel()[ok]] = self.s2[cand.ravel()[ok]]
        items, scores = top_k(s2, k)
        return Results(items=items, scores=scores, stages={"retrieve": cand})


CALIBRATION = {"click": {"ece": 0.012, "logloss": 0.31, "bins": [[0.1, 0.09]]}}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    synthetic = pytest.importorskip("recsys.data.synthetic")
    pytest.importorskip("offline_eval.baselines")
    pytest.importorskip("offline_eval.significance")
    root = tmp_path_factory.mktemp("report")
    ds = synthetic.synthesize("tiny", 0, root / "data")
    cfg = Config(eval=EvalConfig(gains=GAINS, bootstrap_samples=200, shards=2))
    out = root / "report"
    n_items = len(ds.items)
    metrics = run_evaluation(
        ds, cfg, out, systems={"staged": Staged(n_items)}, baselines=["random", "popularity"], export_run=True,
        extra={"calibration": CALIBRATION},
    )
    return ds, cfg, out, metrics


def test_report_files_and_metrics_json_contract(tiny_report):
    ds, cfg, out, metrics = tiny_report
    for f in ("metrics.json", "report.md", "report.html", "metric_at_k.png", "ci.png", "funnel.png", "qrels.trec",
              "run.trec", "runs/staged.trec"):
        assert (out / f).is_file(), f
    for f in ("metric_at_k.png", "ci.png", "funnel.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    assert not (out / "reliability.png").exists()  # no reliability bins given
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["systems"] == metrics["systems"]  # floats round-trip exactly through JSON
    for key in ("dataset", "split", "n_users", "systems", "segments", "funnel", "comparisons", "calibration",
                "ci95", "beyond_accuracy", "timings"):
        assert key in on_disk, key
    assert set(on_disk["dataset"]) >= {"name", "path", "counts"} and on_disk["split"] == "test"
    assert set(on_disk["systems"]) == {"random", "popularity", "staged", "oracle"}
    for name, m in on_disk["systems"].items():
        assert set(HEADLINE) <= set(m), name
        for h in HEADLINE:
            lo, hi = on_disk["ci95"][name][h]
            assert lo <= m[h] + 1e-12 and m[h] <= hi + 1e-12
    assert on_disk["funnel"]["staged"]["retrieve"]["C"] == 60
    assert 0 < on_disk["funnel"]["staged"]["retrieve"]["recall@60"] <= 1
    assert "random" not in on_disk["funnel"]  # no stages reported
    assert on_disk["calibration"] == CALIBRATION
    assert set(on_disk["segments"]["oracle"]) == {"warm_users", "cold_users", "head_items", "tail_items"}
    # comparisons: every system against the best baseline (by ndcg@10)
    best = max(["random", "popularity"], key=lambda n: on_disk["systems"][n]["ndcg@10"])
    pairs = {(c["a"], c["b"]) for c in on_disk["comparisons"]}
    assert pairs == {(n, best) for n in on_disk["systems"] if n != best}
    for c in on_disk["comparisons"]:
        assert c["mean_diff"] == pytest.approx(c["mean_a"] - c["mean_b"], abs=1e-9)
        assert c["ci_low"] <= c["mean_diff"] <= c["ci_high"]
    # the oracle is the ceiling on the synthetic world
    assert on_disk["systems"]["oracle"]["ndcg@10"] > on_disk["systems"]["random"]["ndcg@10"]


def test_report_markdown_has_the_tables(tiny_report):
    _, _, out, metrics = tiny_report
    md = (out / "report.md").read_text()
    assert "| system | ndcg@10 | mrr@10 | map@10 | recall@10 | recall@100 |" in md
    assert "## Funnel" in md and "| staged | retrieve | 60 |" in md
    assert "## Calibration" in md and "| click | 0.0120 | 0.3100 |" in md
    assert "## Comparisons" in md and "## Segments" in md
    # each figure inside the section it illustrates; no left-over "Plots" section
    sections = {s.split("\n")[0]: s for s in md.split("\n## ")}
    assert "](ci.png)" in sections["Systems"] and "](metric_at_k.png)" in sections["All metrics by cut-off"]
    assert "](funnel.png)" in sections["Funnel"] and "Plots" not in sections
    plots = ["ci.png", "metric_at_k.png", "funnel.png"]
    assert render_markdown(json.loads((out / "metrics.json").read_text()), plots) == md
    page = (out / "report.html").read_text()
    assert page.count('<img') == 3 and page.count('src="data:image/png;base64,') == 3


def test_exported_trec_files_parse_and_agree_with_pytrec_eval(tiny_report):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from offline_eval.trec import read_qrels, read_run

    _, _, out, metrics = tiny_report
    qrels = read_qrels(out / "qrels.trec")
    assert len(qrels) == metrics["n_users"]
    assert metrics["exports"]["run_system"] in metrics["systems"]
    for name, fname in metrics["exports"]["runs"].items():
        run = read_run(out / fname)
        ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
        res = ev.evaluate(run)
        # trec_eval leaves out judged queries absent from the run; they score 0 in our means
        ndcg = sum(r["ndcg_cut_10"] for r in res.values()) / len(qrels)
        rec = sum(r["recall_100"] for r in res.values()) / len(qrels)
        assert ndcg == pytest.approx(metrics["systems"][name]["ndcg@10"], abs=1e-9), name
        assert rec == pytest.approx(metrics["systems"][name]["recall@100"], abs=1e-9), name


def test_existing_output_is_refused_unless_overwrite(tiny_report, tmp_path):
    ds, cfg, out, _ = tiny_report
    before = (out / "metrics.json").read_text()
    with pytest.raises(OutputExistsError):
        run_evaluation(ds, cfg, out, baselines=["popularity"])
    assert (out / "metrics.json").read_text() == before
    small = Config(eval=EvalConfig(gains=GAINS, bootstrap_samples=10, max_users=5))
    target = tmp_path / "r"
    target.mkdir()
    m = run_evaluation(ds, small, target, baselines=["popularity"], overwrite=True)
    assert m["n_users"] == 5 and json.loads((target / "metrics.json").read_text())["n_users"] == 5
    assert not (target / "qrels.trec").exists()
    # a baseline (no stages) and the oracle, no calibration: the report renders without a reliability diagram
    assert set(m["funnel"]) == {"oracle"} and not m["calibration"]
    assert {p.name for p in target.glob("*.png")} == {"ci.png", "metric_at_k.png", "funnel.png"}
    assert "## Plots" not in (target / "report.md").read_text()
    assert (target / "report.html").read_text().count("<img") == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_bootstrap_ci_matches_normal_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(1, 2000))
    (lo, hi), = bootstrap_ci(x, n_samples=2000, seed=1)
    se = x.std() / np.sqrt(x.shape[1])
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)
    const = bootstrap_ci(np.full((2, 50), 0.3), n_samples=100)
    np.testing.assert_allclose(const, 0.3)
    assert np.isnan(bootstrap_ci(np.zeros((1, 0)))).all()


def test_run_scores_keep_the_system_order_for_trec_eval():
    ranked = np.array([[3, 1, 2], [0, 4, -1], [5, 6, 7]])
    scores = np.array([[0.9, 0.5, 0.1], [0.7, 0.7, np.nan], [1.0, np.nan, 0.2]])
    out = run_scores(ranked, scores)
    np.testing.assert_array_equal(out[0], scores[0])  # strictly decreasing: kept
    np.testing.assert_array_equal(out[1, :2], [3.0, 2.0])  # a tie: rank-derived
    np.testing.assert_array_equal(out[2], [3.0, 2.0, 1.0])  # NaN at a real item: rank-derived


def test_run_scores_survive_trec_eval_float32_rounding(tmp_path):
    """Scores strictly decreasing in float64 but equal in float32 (trec_eval reads floats) would let trec_eval
    reorder the items by document id: such a row gets rank-derived scores, and trec_eval sees the system's order."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from offline_eval import trec

    ranked = np.array([[1, 2], [1, 2]])  # doc "i1" then "i2"; "i2" > "i1" as strings
    scores = np.array([[0.5 + 1e-12, 0.5], [0.75, 0.5]])
    out = run_scores(ranked, scores)
    np.testing.assert_array_equal(out[1], scores[1])
    trec.write_run(tmp_path / "r", ["q0", "q1"], np.array([["i1", "i2"]] * 2, dtype=object), out)
    rr = pytrec_eval.RelevanceEvaluator({"q0": {"i1": 1}, "q1": {"i1": 1}}, {"recip_rank"}).evaluate(
        trec.read_run(tmp_path / "r"))
    assert rr["q0"]["recip_rank"] == rr["q1"]["recip_rank"] == 1.0  # i1 stays first


# ----------------------------------------------------------------------------------------------------------
# the command


def _toy_folder(path):
    rows = [("u1", "a", 10, 1, 0), ("u2", "a", 20, 1, 0), ("u2", "b", 30, 1, 0), ("u3", "c", 40, 1, 1),
            ("u1", "b", 110, 1, 1), ("u2", "c", 120, 1, 0), ("u3", "a", 130, 1, 0), ("u4", "a", 140, 1, 0)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click", "like"])
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    schema = make_schema(
        "toy-cli",
        interactions={"user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp"),
                      "click": col("label", "binary"), "like": col("label", "binary")},
        positive_label="click",
    )
    write_dataset(Dataset(schema, inter), path)


def test_evaluate_command_prints_the_table(tmp_path, capsys):
    pytest.importorskip("offline_eval.baselines")
    from recsys.cli import main

    _toy_folder(tmp_path / "data")
    args = ["evaluate", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "rep"), "--systems", "popularity",
            "--set", "split.windows={train: 0.5, test: 0.5}", "--set", "split.cutoffs=[100]",
            "--set", "eval.bootstrap_samples=20", "--export-run"]
    assert main(["-q", *args]) == 0
    text = capsys.readouterr().out
    assert "ndcg@10" in text and "recall@100" in text and "popularity" in text
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    # test users: u1 (b), u2 (c), u3 (a), u4 (a; cold); popularity before test: a (2), b, c (1 each)
    assert m["n_users"] == 4 and m["users"]["warm_users"] == 3
    # popularity ranks a, b, c (ties: lower index); u1 excl. a,... -> each gets its item at rank 1 or 2
    assert 0 < m["systems"]["popularity"]["ndcg@10"] <= 1
    assert m["systems"]["popularity"]["recall@10"] == pytest.approx(1.0)
    assert (tmp_path / "rep" / "run.trec").is_file()
    # no funnel (a baseline, no oracle) and no calibration: those figures are left out, the page still renders
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["ci.png", "metric_at_k.png"]
    assert "No system reported stage candidates." in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "report.html").read_text().count("<img") == 2
    # a second run without --overwrite is a one-line user error (exit code 2), the report is kept
    assert main(["-q", *args]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _metrics(**sections):
    m = {"dataset": {"name": "toy", "path": None, "counts": {"interactions": 1, "users": 1, "items": 1}},
         "split": "test", "n_users": 3, "systems": {"a": {"ndcg@10": 0.2}, "b": {"ndcg@10": 0.1}}}
    return {**m, **sections}


def test_figures_skip_missing_sections(tmp_path):
    from offline_eval.figures import ci_metrics, plot_cis, plot_funnel

    assert not plot_funnel(_metrics(), tmp_path / "f.png") and not (tmp_path / "f.png").exists()
    assert not plot_funnel(_metrics(funnel={"a": {}}), tmp_path / "f.png")
    assert not plot_cis(_metrics(), tmp_path / "c.png") and not (tmp_path / "c.png").exists()
    nan = float("nan")
    assert not plot_cis(_metrics(ci95={"a": {"ndcg@10": [nan, nan]}}), tmp_path / "c.png")
    # one system with a CI is enough; a metric no system has a CI for gets no panel
    m = _metrics(ci95={"a": {"ndcg@10": [0.1, 0.3], "recall@100": [nan, 0.5]}})
    assert ci_metrics(m) == ["ndcg@10"]
    assert plot_cis(m, tmp_path / "c.png") and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_funnel(_metrics(funnel={"a": {"retrieve": {"C": 60, "recall": 0.5}}}), tmp_path / "f.png")


def test_figures_are_placed_in_their_sections_or_under_plots():
    m = _metrics(ci95={}, funnel={})
    md = render_markdown(m, ["ci.png", "reliability.png", "extra.png"])
    head, plots = md.split("## Plots")
    assert "](ci.png)" in head.split("## Funnel")[0]
    # no calibration section to hold the reliability diagram: it goes to "Plots" with the unknown figure
    assert "](reliability.png)" in plots and "![extra.png](extra.png)" in plots
    md = render_markdown({**m, "calibration": {"click": {"ece": 0.01}}}, ["reliability.png"])
    assert "## Plots" not in md and "](reliability.png)" in md.split("## Calibration")[1]
