"""Random-bar feature selection: a planted useless feature is flagged, a planted useful one kept; the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.experiments.feature_selection import default_shuffle, markdown, random_bar, write_report
from recsys.features import FeatureKind
from recsys.io import OutputExistsError
from recsys.prerank.stage import PrerankConfig, RankingData

CFG = PrerankConfig(num_threads=1, n_estimators=40, min_data_in_leaf=10, num_leaves=7, learning_rate=0.1,
                    early_stopping_rounds=10, valid_fraction=0.25)


def planted_data(seed: int = 0, groups: int = 160, per_group: int = 20) -> RankingData:
    """Query groups where relevance depends on ``useful`` only (plus label noise); ``useless`` is pure noise
    and ``weak_copy`` a noisy copy of useful (also informative)."""
    rng = np.random.default_rng(seed)
    r = groups * per_group
    useful = rng.standard_normal(r)
    useless = rng.standard_normal(r)
    weak = useful + 2.0 * rng.standard_normal(r)
    y = (useful + 0.3 * rng.standard_normal(r) > 1.0).astype(np.int32)
    x = np.stack([useful, useless, weak], axis=1).astype(np.float32)
    group = np.full(groups, per_group, dtype=np.int64)
    g_of_row = np.repeat(np.arange(groups), per_group)
    has_pos = np.bincount(g_of_row, weights=y, minlength=groups) > 0
    data = RankingData(x, y, group, np.arange(groups), np.tile(np.arange(per_group), groups), np.zeros(r, bool),
                       ["useful", "useless", "weak_copy"], [FeatureKind.NUMERIC] * 3, [0.0, 1.0])
    return data.take_groups(np.flatnonzero(has_pos))


@pytest.fixture(scope="module")
def result():
    return random_bar(planted_data(), CFG, seeds=(0, 1, 2))


def test_flags_useless_and_keeps_useful(result):
    assert "useful" in result.keep
    assert "useless" in result.drop
    assert result.names[:3] == ["useful", "useless", "weak_copy"]
    assert {"random_gaussian", "random_uniform"} <= set(result.names)
    assert any(n.startswith("random_shuffled_") for n in result.names)
    np.testing.assert_allclose(result.share.sum(axis=1), 1.0)  # gain shares per seed
    j = result.names.index
    assert result.mean[j("useful")] > 0.5
    assert result.beats[j("useful")] == 3 and result.beats[j("useless")] < 3
    assert result.mean[j("useless")] <= result.bar


def test_report_files(result, tmp_path):
    out = write_report(result, tmp_path / "fs", extra={"note": "test", "rows_window": "prerank"})
    md = (out / "report.md").read_text()
    row = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| ") and "`" in line}
    assert "keep" in row["`useful`"] and "drop?" in row["`useless`"]
    assert "*random_gaussian*" in md and f"{result.bar:.4f}" in md
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert res["keep"] == result.keep and res["drop_candidates"] == result.drop and res["note"] == "test"
    assert [r["feature"] for r in res["features"]][0] == "useful"
    with pytest.raises(OutputExistsError):
        write_report(result, tmp_path / "fs")
    assert markdown(result, extra={"rows_window": "prerank"}) == md and "- rows: window: `prerank`" in md
    assert "![" in md and "](importance.png)" in md
    page = (out / "report.html").read_text()
    assert page.count('<img') == 1 and 'src="data:image/png;base64,' in page and "<td>keep</td>" in page


def test_default_shuffle_picks_a_continuous_feature():
    data = planted_data()
    assert default_shuffle(data) in (["useful"], ["useless"], ["weak_copy"])
    binary = data.with_columns(np.zeros((len(data.y), 1)), ["flag"], [FeatureKind.NUMERIC])
    assert default_shuffle(binary) != ["flag"]


def test_bad_inputs():
    data = planted_data(groups=40)
    with pytest.raises(ValueError, match="reserved prefix"):
        random_bar(data.with_columns(np.zeros((len(data.y), 1)), ["random_x"], [FeatureKind.NUMERIC]), CFG)
    with pytest.raises(ValueError, match="unknown feature"):
        random_bar(data, CFG, shuffle=["nope"])
    with pytest.raises(ValueError, match="at least one seed"):
        random_bar(data, CFG, seeds=())


def test_cli_feature_selection_on_tiny_world(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from recsys.cli import main
    from recsys.config import Config
    from recsys.data.synthetic import synthesize

    synthesize("tiny", 0, tmp_path / "tiny")
    sets = []
    if hasattr(Config(), "prerank"):
        sets += ["prerank.num_threads=1", "engine.funnel=[{stage: retrieval, k: 50}, {stage: prerank, k: 20}, {stage: rank, k: 10}]", "prerank.n_estimators=30"]
    if hasattr(Config(), "retrieval"):
        sets += ["retrieval.two_tower.max_epochs=2", "retrieval.two_tower.threads=1", "retrieval.index_factory=Flat"]
    args = ["-q", "experiment", "feature-selection", "--data", str(tmp_path / "tiny"), "--out", str(tmp_path / "fs"),
            "--seeds", "2"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    res = json.loads((tmp_path / "fs" / "results.json").read_text())
    assert res["seeds"] == [0, 1] and res["windows"]["prerank"] == "prerank"
    assert set(res["keep"]) | set(res["drop_candidates"]) == {r["feature"] for r in res["features"] if not r["random"]}
    for f in ("report.md", "importance.png", "report.html"):
        assert (tmp_path / "fs" / f).is_file(), f
    assert "- rows: window: `prerank`" in (tmp_path / "fs" / "report.md").read_text()
    assert main(args) == 2  # the output exists: refused without --overwrite


def _tiny_bundle(tmp_path, name: str, refit: bool, sets: list[str]):
    """A bundle holding a catalogue and a two-tower, trained as recsys.training does: on the first window, or
    (``retrieval.refit``) again on every window before the test window."""
    from recsys.bundle import data_fingerprint, write_bundle
    from recsys.config import load_config, to_dict
    from recsys.data.catalog import Catalog
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.retrieval.stage import RetrievalStage
    from recsys.stages.base import FitContext
    from recsys.training import save_catalog, stage_windows

    cfg = load_config(None, sets + [f"retrieval.refit={str(refit).lower()}"])
    ds = read_dataset(tmp_path / "tiny")
    split = split_dataset(ds, cfg.split)
    w = stage_windows(split)
    history = split.before(w["test"]) if refit else split[w["retrieval"]]
    catalog = Catalog.from_dataset(ds, train=history)
    retrieval = RetrievalStage(cfg.retrieval).fit(FitContext(
        ds, catalog, split, w["retrieval"], history.iloc[:0], train=history,
        valid=None if refit else split[w["retrieval_valid"]]))
    metrics = {"retrieval": {"refit": {"users": catalog.n_users}} if refit else {}}
    writers = {"catalog": lambda d: save_catalog(catalog, d), "retrieval": retrieval.save}
    data = {**data_fingerprint(tmp_path / "tiny"), "windows": w}
    stages = [{"name": "retrieval", "type": "retrieval", "k": cfg.engine.retrieve_k, "folder": "retrieval"}]
    return write_bundle(tmp_path / name, writers, config=to_dict(cfg), data=data, metrics=metrics,
                        extra={"funnel": stages, "systems": {"engine": {"stages": stages}}})


def test_cli_feature_selection_rows_come_after_the_bundles_two_tower(tmp_path, capsys):
    """With --bundle, the pre-ranker's rows (and the ann_score / ann_rank features in them) must come from a
    window the bundle's two-tower never trained on: a two-tower refit on the pre-ranker's window is refused
    (it used to be accepted, and scored rows whose labels it had learnt), one trained on the first window is
    used and recorded."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from recsys.cli import main
    from recsys.data.synthetic import synthesize

    synthesize("tiny", 0, tmp_path / "tiny")
    sets = ["prerank.num_threads=1", "engine.funnel=[{stage: retrieval, k: 50}, {stage: prerank, k: 20}]",
            "prerank.n_estimators=30",
            "retrieval.two_tower.max_epochs=2", "retrieval.two_tower.threads=1", "retrieval.index_factory=Flat"]
    base = ["-q", "experiment", "feature-selection", "--data", str(tmp_path / "tiny"), "--seeds", "1"]
    _tiny_bundle(tmp_path, "refit", True, sets)
    assert main(base + ["--bundle", str(tmp_path / "refit"), "--out", str(tmp_path / "fs_refit")]) == 2
    err = capsys.readouterr().err
    assert "['train', 'prerank', 'rank']" in err and "'prerank'" in err and "retrieval.refit=false" in err
    assert not (tmp_path / "fs_refit").exists()

    _tiny_bundle(tmp_path, "first", False, sets)
    assert main(base + ["--bundle", str(tmp_path / "first"), "--out", str(tmp_path / "fs")]) == 0
    res = json.loads((tmp_path / "fs" / "results.json").read_text())
    names = ["train", "prerank", "rank", "test"]
    assert res["rows_window"] == "prerank" and res["retrieval_trained_on"] == ["train"]
    assert all(names.index(w) < names.index(res["rows_window"]) for w in res["retrieval_trained_on"])
