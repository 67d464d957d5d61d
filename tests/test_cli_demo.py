"""`recsys demo` end to end on the tiny world: everything lands under --out and the report has the engine,
the baselines, the oracle and the heavy ranker's calibration; with --full also every ablation."""

import json

from recsys.cli import main

TINY = ["--preset", "tiny", "--set", "retrieval.two_tower.max_epochs=2", "--set", "retrieval.two_tower.threads=1",
        "--set", "rank.train.max_epochs=2", "--set", "eval.bootstrap_samples=50"]


def test_the_quick_demo_trains_no_ablation_model_and_prints_the_engine(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| engine |" in printed and "funnel (engine)" in printed and "calibration of the heavy ranker" in printed
    assert "make demo-full" in printed
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert set(m["systems"]) == {"engine", "retrieval_only", "oracle", "random", "popularity",
                                 "itemknn", "svd", "ease"}
    bundle = out / "artifacts" / "demo" / "latest"
    assert {p.name for p in bundle.iterdir() if p.is_dir()} == {"catalog", "retrieval", "prerank", "rank"}


def test_demo_runs_the_whole_funnel_on_the_tiny_world(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["--quiet", "demo", "--full", "--out", str(out), "--preset", "tiny",
                 "--set", "retrieval.two_tower.max_epochs=2", "--set", "retrieval.two_tower.threads=1",
                 "--set", "rank.train.max_epochs=2", "--set",
                 "systems=[retrieval_only, prerank_only, no_prerank, no_graph_features, prerank_only_no_graph, no_exposure]",
                 "--set", "eval.bootstrap_samples=50"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| engine |" in printed and "funnel (engine)" in printed and "calibration" in printed
    assert "engine as a fraction of the oracle: ndcg@10 " in printed and "true_ndcg@10 " in printed
    assert sorted(p.name for p in out.iterdir()) == ["artifacts", "data", "report"]
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert {"engine", "retrieval_only", "no_prerank", "prerank_only", "no_graph_features", "oracle",
            "popularity", "itemknn", "svd", "ease", "random"} <= set(m["systems"])
    assert m["systems"]["oracle"]["true_ndcg@10"] == 1.0
    assert {"click", "like", "exposure"} <= set(m["calibration"])  # configs/default.yaml: rank.exposure
    assert "no_exposure" in m["systems"]
    # the same network on the same candidates: one calibration report serves both systems
    assert m["calibration_by_system"]["no_exposure"] == m["calibration_by_system"]["engine"]
    bundle = (out / "artifacts" / "demo" / "latest")
    # the heavy rankers of the no_prerank / no_graph_features systems were trained on their own upstream
    assert {"rank@no_prerank", "rank@no_graph_features", "prerank@no_graph_features"} <= {
        p.name for p in bundle.iterdir()}
    assert not any(p.name.endswith("@prerank_only_no_graph") for p in bundle.iterdir())  # shared, trained once
    # the pre-ranker alone with and without its graph features, compared with each other
    assert "prerank_only_no_graph" in m["systems"]
    pair = [c for c in m["comparisons"] if (c["a"], c["b"]) == ("prerank_only", "prerank_only_no_graph")]
    assert {c["metric"] for c in pair} == {"ndcg@10", "true_ndcg@10"}
    assert set(m["funnel"]["engine"]) >= {"retrieval", "prerank", "rank"}
    assert (out / "report" / "reliability.png").is_file()
