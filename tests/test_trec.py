"""TREC qrels/run I/O, trec_eval ordering and query-set conventions, and `recsys metrics` end to end vs
pytrec_eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from offline_eval import metrics as M
from offline_eval import trec
from recsys.commands.metrics import evaluate_files

pytrec_eval = pytest.importorskip("pytrec_eval")


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def cli_main(monkeypatch):
    """recsys.cli.main with only this command registered (other command modules are not under test here)."""
    from recsys import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["recsys.commands.metrics"])
    return cli.main


def test_metrics_command_is_wired():
    from recsys import cli

    assert "recsys.commands.metrics" in cli.COMMAND_MODULES


# ------------------------------------------------------------------------------------------------------------
# reading and writing


def test_read_qrels_and_run(tmp_path):
    q = _write(tmp_path / "q.txt", "q1 0 d1 2\n\nq1 0 d2 0\nq2\t0\td1  -1\n")
    r = _write(tmp_path / "r.txt", "q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 -1e3 tag\nq3 Q0 x 1 inf t\n")
    assert trec.read_qrels(q) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": -1}}
    assert trec.read_run(r) == {"q1": {"d1": 0.5, "d2": -1000.0}, "q3": {"x": float("inf")}}


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("q1 0 d1 1\nq1 0 d2\n", 2, "expected 4 fields"),
        ("q1 0 d1 1\n\nq1 0 d2 1 x\n", 3, "expected 4 fields"),
        ("q1 0 d1 high\n", 1, "not an integer"),
        ("q1 0 d1 1.5\n", 1, "not an integer"),
        ("q1 0 d1 1\nq2 0 d1 1\nq1 0 d1 0\n", 3, "duplicate"),
    ],
)
def test_malformed_qrels(tmp_path, text, line, match):
    path = _write(tmp_path / "bad.qrels", text)
    with pytest.raises(ValueError, match=match) as e:
        trec.read_qrels(path)
    assert f"bad.qrels:{line}:" in str(e.value)


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("q1 Q0 d1 1 0.5\n", 1, "expected 6 fields"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 abc t\n", 2, "not a number"),
        ("q1 Q0 d1 1 nan t\n", 1, "NaN"),
        ("q1 Q0 d1 first 0.5 t\n", 1, "rank"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4 t\nq1 Q0 d1 3 0.3 t\n", 3, "duplicate document 'd1'"),
    ],
)
def test_malformed_run(tmp_path, text, line, match):
    path = _write(tmp_path / "bad.run", text)
    with pytest.raises(ValueError, match=match) as e:
        trec.read_run(path)
    assert f"bad.run:{line}:" in str(e.value)


def test_binary_file_names_the_line(tmp_path):
    path = tmp_path / "bin.run"
    path.write_bytes(b"q1 Q0 d1 1 0.5 t\n\xff\xfe 0\n")
    with pytest.raises(ValueError, match="bin.run:2: not valid UTF-8"):
        trec.read_run(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        trec.read_run(tmp_path / "nope")


def test_write_read_round_trip(tmp_path):
    ranked = np.array([["a", "b", None], ["c", "", "d"]], dtype=object)
    scores = np.array([[0.1 + 0.2, 1e-300, 0.0], [3.0, 0.0, -2.5]])
    trec.write_run(tmp_path / "r", ["q1", "q2"], ranked, scores, tag="mine")
    lines = (tmp_path / "r").read_text().splitlines()
    assert lines[0] == f"q1 Q0 a 1 {0.1 + 0.2!r} mine" and lines[2] == "q2 Q0 c 1 3.0 mine"
    assert lines[3] == "q2 Q0 d 2 -2.5 mine"  # the padding slot does not use up a rank
    assert trec.read_run(tmp_path / "r") == {"q1": {"a": 0.1 + 0.2, "b": 1e-300}, "q2": {"c": 3.0, "d": -2.5}}
    trec.write_run(tmp_path / "r2", ["q1"], np.array([[7, -1]]), np.array([[1.0, 0.0]]))
    assert trec.read_run(tmp_path / "r2") == {"q1": {"7": 1.0}}

    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"d": 3}}
    trec.write_qrels(tmp_path / "q", qrels)
    assert trec.read_qrels(tmp_path / "q") == qrels


def test_write_errors(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        trec.write_run(tmp_path / "r", ["q 1"], [["a"]], [[1.0]])
    with pytest.raises(ValueError, match="one row per query"):
        trec.write_run(tmp_path / "r", ["q1", "q2"], [["a"]], [[1.0]])
    with pytest.raises(ValueError, match="NaN"):
        trec.write_run(tmp_path / "r", ["q1"], [["a"]], [[float("nan")]])
    with pytest.raises(ValueError, match="integer"):
        trec.write_qrels(tmp_path / "q", {"q1": {"a": 0.5}})
    assert not (tmp_path / "r").exists() and not (tmp_path / "q").exists()


# ------------------------------------------------------------------------------------------------------------
# trec_eval conventions


def test_tie_order_is_docid_string_descending():
    assert trec.rank_order({"d1": 1.0, "d10": 1.0, "d9": 1.0, "d2": 1.0, "z": 0.5, "a": 2.0}) == [
        "a", "d9", "d2", "d10", "d1", "z",
    ]
    qrels = {"q": {"d1": 1, "d10": 1, "d9": 0, "d2": 2}}
    run = {"q": {"d1": 1.0, "d10": 1.0, "d9": 1.0, "d2": 1.0}}
    arrays = trec.to_arrays(qrels, run)
    assert [arrays.doc_ids[i] for i in arrays.ranked[0]] == ["d9", "d2", "d10", "d1"]
    ours = M.compute(arrays.ranked, arrays.qrels, ["mrr@4", "precision@1", "ndcg@2"])
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "P.1", "ndcg_cut.2"}).evaluate(run)["q"]
    assert ours["mrr@4"][0] == ref["recip_rank"] == 0.5
    assert ours["precision@1"][0] == ref["P_1"] == 0.0
    assert ours["ndcg@2"][0] == pytest.approx(ref["ndcg_cut_2"], abs=1e-12)


def test_query_sets_follow_trec_eval():
    qrels = {"both": {"a": 1}, "norel": {"a": 0}, "qrels_only": {"a": 1}}
    run = {"both": {"a": 1.0}, "norel": {"a": 1.0}, "run_only": {"a": 1.0}}
    arrays = trec.to_arrays(qrels, run)
    assert arrays.query_ids == ("both", "norel")
    assert (arrays.n_run_only, arrays.n_qrels_only) == (1, 1)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"P.1"}).evaluate(run)
    assert set(ref) == {"both", "norel"}
    np.testing.assert_allclose(M.compute(arrays.ranked, arrays.qrels, ["precision@1"])["precision@1"], [1.0, 0.0])


def test_negative_relevance_is_nonrelevant_like_pytrec_eval():
    qrels = {"q": {"a": -1, "b": 2, "c": 1}}
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    arrays = trec.to_arrays(qrels, run)
    ours = M.compute(arrays.ranked, arrays.qrels, ["ndcg@3", "map@3", "precision@3"])
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.3", "map_cut.3", "P.3"}).evaluate(run)["q"]
    assert ours["ndcg@3"][0] == pytest.approx(ref["ndcg_cut_3"], abs=1e-12)
    assert ours["map@3"][0] == pytest.approx(ref["map_cut_3"], abs=1e-12)
    assert ours["precision@3"][0] == pytest.approx(ref["P_3"], abs=1e-12)


def test_depth_cuts_after_ordering():
    arrays = trec.to_arrays({"q": {"a": 1}}, {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}, depth=2)
    assert [arrays.doc_ids[i] for i in arrays.ranked[0]] == ["b", "c"]


# ------------------------------------------------------------------------------------------------------------
# recsys metrics, end to end


def _random_files(tmp_path, n_queries=300, seed=11):
    rng = np.random.default_rng(seed)
    q_lines, r_lines, qrels, run = [], [], {}, {}
    for i in range(n_queries):
        qid = f"q{i}"
        docs = [f"doc{j}" for j in rng.permutation(60)]
        if rng.random() < 0.95:  # ~5% of run queries have no judgements
            for d in docs[: rng.integers(1, 12)]:
                rel = int(rng.integers(-1, 4))
                qrels.setdefault(qid, {})[d] = rel
                q_lines.append(f"{qid} 0 {d} {rel}")
        if rng.random() < 0.95:  # ~5% of judged queries are not in the run
            tied = rng.random() < 0.3
            for rank, d in enumerate(rng.choice(docs, size=rng.integers(1, 40), replace=False), start=1):
                score = float(rng.integers(0, 3)) if tied else float(rng.normal())
                run.setdefault(qid, {})[d] = score
                r_lines.append(f"{qid} Q0 {d} {rank} {score!r} test")
    rng.shuffle(q_lines), rng.shuffle(r_lines)  # order in the files must not matter
    qp = _write(tmp_path / "qrels.txt", "\n".join(q_lines) + "\n")
    rp = _write(tmp_path / "run.txt", "\n".join(r_lines) + "\n")
    return qp, rp, qrels, run


def test_cli_matches_pytrec_eval(tmp_path, cli_main, capsys):
    qp, rp, qrels, run = _random_files(tmp_path)
    names = ["ndcg@10", "map@100", "recall@20", "precision@5", "hit@3", "mrr@10", "ndcg@1000"]
    out = tmp_path / "m.json"
    assert cli_main(["-q", "metrics", "--qrels", str(qp), "--run", str(rp), "--metrics", ",".join(names),
                     "--per-query", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())

    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10,1000", "map_cut.100", "recall.20", "P.5", "success.3"})
    ref = ev.evaluate(run)
    cut = {q: {d: run[q][d] for d in trec.rank_order(run[q])[:10]} for q in run}
    ref_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    mapping = {"ndcg@10": "ndcg_cut_10", "map@100": "map_cut_100", "recall@20": "recall_20", "P@5": "P_5",
               "precision@5": "P_5", "hit@3": "success_3", "ndcg@1000": "ndcg_cut_1000"}
    assert set(doc["per_query"]) == set(ref)
    assert doc["n_queries"] == len(ref) and 200 < len(ref) < 300
    assert doc["n_run_queries_without_qrels"] > 0 and doc["n_qrels_queries_without_run"] > 0
    for name in names:
        theirs = {q: (ref_rr[q]["recip_rank"] if name == "mrr@10" else ref[q][mapping[name]]) for q in ref}
        for q, v in theirs.items():
            assert abs(doc["per_query"][q][name] - v) <= 1e-9, (name, q)
        assert abs(doc["metrics"][name] - np.mean(list(theirs.values()))) <= 1e-9, name


def test_every_metric_follows_trec_eval_on_float32_ties(tmp_path):
    """trec_eval stores scores as float32: scores distinct in float64 but equal in float32 are tied and ordered
    by document id. Runs full of such near-ties (and exact ties, at several magnitudes, with numeric ids),
    scored by `recsys metrics` and by pytrec_eval on the very file contents; mrr@10 is checked without
    re-implementing the order: RR@10 = RR when the first relevant document is within the top 10, else 0."""
    rng = np.random.default_rng(5)
    qrels, run, r_lines, q_lines = {}, {}, [], []
    for i in range(400):
        qid = f"u{i}"
        docs = [str(d) for d in rng.choice(3000, size=40, replace=False)]
        qrels[qid] = {d: int(rng.integers(1, 3)) for d in rng.choice(docs, size=rng.integers(1, 6), replace=False)}
        scale = 10.0 ** rng.integers(-3, 4)
        base = scale * rng.integers(0, 5, size=len(docs)).astype(np.float64)
        # relative nudges below float32's resolution (2**-24 ~ 6e-8): tied for trec_eval, ordered in float64
        nudge = base * rng.choice([0.0, 1e-12, -3e-10, 2e-9], size=len(docs))
        run[qid] = {d: float(b + e) for d, b, e in zip(docs, base, nudge)}
        r_lines += [f"{qid} Q0 {d} {r} {v!r} t" for r, (d, v) in enumerate(run[qid].items(), start=1)]
        q_lines += [f"{qid} 0 {d} {rel}" for d, rel in qrels[qid].items()]
    qp = _write(tmp_path / "q", "\n".join(q_lines) + "\n")
    rp = _write(tmp_path / "r", "\n".join(r_lines) + "\n")
    assert trec.read_run(rp) == run
    names = ["ndcg@10", "mrr@10", "mrr@40", "map@100", "precision@5", "recall@20"]
    doc = evaluate_files(str(qp), str(rp), names, per_query=True)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank", "map_cut.100", "P.5",
                                                 "recall.20"}).evaluate(run)
    want = {"ndcg@10": "ndcg_cut_10", "mrr@40": "recip_rank", "map@100": "map_cut_100", "precision@5": "P_5",
            "recall@20": "recall_20"}
    for q in run:
        got = doc["per_query"][q]
        for name, theirs in want.items():
            assert got[name] == pytest.approx(ref[q][theirs], abs=1e-12), (name, q)
        rr = ref[q]["recip_rank"]
        assert got["mrr@10"] == pytest.approx(rr if rr >= 0.1 - 1e-12 else 0.0, abs=1e-12), q
    assert trec.rank_order({"a": 0.5, "b": 0.5 + 1e-12, "c": 0.5 + 1e-6}) == ["c", "b", "a"]


def test_cli_stdout_and_errors(tmp_path, cli_main, capsys):
    qp = _write(tmp_path / "q", "q1 0 a 1\nq1 0 b 2\n")
    rp = _write(tmp_path / "r", "q1 Q0 a 1 1.0 t\nq1 Q0 b 2 1.0 t\n")
    assert cli_main(["-q", "metrics", "--qrels", str(qp), "--run", str(rp), "--metrics", "mrr@1,precision@2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # tie: "b" > "a" as strings, so b (rel 2) is ranked first
    assert doc == {"metrics": {"mrr@1": 1.0, "precision@2": 1.0}, "n_queries": 1,
                   "n_run_queries_without_qrels": 0, "n_qrels_queries_without_run": 0}

    assert cli_main(["metrics", "--qrels", str(qp), "--run", str(rp), "--metrics", "ndcg@10,bleu@4"]) == 2
    err = capsys.readouterr().err
    assert "bleu@4" in err and all(f"{m}@k" in err for m in M.METRICS)
    assert cli_main(["metrics", "--qrels", str(qp), "--run", str(rp), "--metrics", "ndcg@0"]) == 2
    assert ">= 1" in capsys.readouterr().err
    bad = _write(tmp_path / "bad", "q1 Q0 a 1 1.0\n")
    assert cli_main(["metrics", "--qrels", str(qp), "--run", str(bad)]) == 2
    assert "bad:1:" in capsys.readouterr().err
