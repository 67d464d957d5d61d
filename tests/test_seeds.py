"""Evidence across seeds (recsys.experiments.seeds): the two-level bootstrap covers a planted difference and
widens with seed variance; `holds` needs every seed to agree; the command trains and evaluates N replicates."""

from __future__ import annotations

import json

import numpy as np

from recsys.experiments.seeds import summarize, two_level_bootstrap


def test_two_level_bootstrap_covers_a_planted_difference_and_sees_seed_variance():
    rng = np.random.default_rng(0)
    users = rng.normal(0.0, 0.05, 400)
    tight = 0.01 + users[None, :] + rng.normal(0, 0.001, (3, 400))  # seeds agree
    lo, hi = two_level_bootstrap(tight, 500)
    assert lo < 0.01 < hi and lo > 0
    seedy = tight + np.array([[-0.03], [0.0], [0.06]])  # same mean shift by users, seeds disagree
    lo2, hi2 = two_level_bootstrap(seedy, 500)
    assert hi2 - lo2 > 3 * (hi - lo)  # the seed-to-seed spread widens the interval
    one = two_level_bootstrap(tight[:1], 500)  # one seed: the paired bootstrap over users
    assert one[0] < 0.01 < one[1]


def test_summarize_holds_only_when_every_seed_agrees():
    b = 300
    rng = np.random.default_rng(1)
    base = rng.random(b)
    per_seed = []
    for s, shift in enumerate([0.05, 0.04, 0.06]):
        per_seed.append({"engine": {"ndcg@10": base + shift}, "better": {"ndcg@10": base + shift + 0.02},
                         "flaky": {"ndcg@10": base + shift + (0.03 if s == 1 else -0.03)}})
    out = summarize(per_seed, metrics=("ndcg@10",), n_samples=300)
    assert out["systems"]["engine"]["ndcg@10"]["per_seed"] == [float(np.mean(base + x)) for x in (0.05, 0.04, 0.06)]
    better = out["paired"]["better"]["ndcg@10"]
    assert better["diff"] == -0.02 or abs(better["diff"] + 0.02) < 1e-12
    assert better["holds"] and better["ci_high"] < 0
    flaky = out["paired"]["flaky"]["ndcg@10"]
    assert not flaky["holds"] and sorted(np.sign(flaky["per_seed"])) == [-1.0, 1.0, 1.0]


def test_seeds_command_on_the_tiny_world(tmp_path):
    import torch

    torch.set_num_threads(1)
    from recsys.cli import main
    from recsys.data.synthetic import synthesize

    synthesize("tiny", 0, tmp_path / "tiny")
    sets = ["retrieval.two_tower.max_epochs=2", "retrieval.two_tower.threads=1", "retrieval.index_factory=Flat",
            "rank.train.max_epochs=2", "prerank.n_estimators=30", "systems=[retrieval_only]",
            "eval.bootstrap_samples=20", "split.validation=true"]
    args = ["-q", "experiment", "seeds", "--data", str(tmp_path / "tiny"), "--out", str(tmp_path / "s"),
            "--seeds", "2", "--baselines", "popularity"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    res = json.loads((tmp_path / "s" / "seeds.json").read_text())
    assert res["seeds"] == [0, 1] and res["validation"] is True
    assert set(res["systems"]) == {"engine", "retrieval_only", "popularity", "oracle"}
    eng = res["systems"]["engine"]["ndcg@10"]["per_seed"]
    assert eng[0] != eng[1]  # the seed reaches the stages: two different replicates
    assert res["systems"]["popularity"]["ndcg@10"]["std"] == 0.0  # a seed-free baseline does not move
    assert set(res["paired"]) == {"retrieval_only", "popularity", "oracle"}
    md = (tmp_path / "s" / "report.md").read_text()
    assert md.startswith("# 2 seeds") and md.count("\n# ") == 0  # one title, a section per metric
    assert "## ndcg@10" in md and "](seeds.png)" in md and "](paired.png)" in md
    assert "[seed1/report.html](seed1/report.html)" in md and (tmp_path / "s" / "seed1" / "report.html").is_file()
    assert json.loads((tmp_path / "s" / "results.json").read_text()) == res
    page = (tmp_path / "s" / "report.html").read_text()
    assert page.count("<img") == 2 and page.count('src="data:image/png;base64,') == 2
    assert (tmp_path / "s" / "bundles" / "seed1" / "latest").exists()


def test_report_without_paired_systems(tmp_path):
    """No engine among the systems: no paired section or figure, the report still renders."""
    from recsys.experiments.seeds import write_folder

    per_seed = [{"a": {"ndcg@10": np.array([0.1, 0.3])}, "b": {"ndcg@10": np.array([0.2, 0.2 + s])}}
                for s in (0.0, 0.1)]
    result = {"seeds": [0, 1], "n_users": 2, "config": "x", "validation": False,
              **summarize(per_seed, metrics=("ndcg@10",), n_samples=50)}
    assert result["paired"] == {} and result["systems"]["b"]["ndcg@10"]["per_seed"] == [0.2, 0.25]
    write_folder(tmp_path, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md", "seeds.png"]
    md = (tmp_path / "report.md").read_text()
    assert "| b | 0.2250 (0.0354) | 0.2000, 0.2500 | - | - |" in md and "## recall@100" not in md
