"""Evaluation orchestration of the engine's systems: calibration reports of every heavy ranker on the test
window, and the retrieval index's recall against exact search. (Which systems exist and how each is built is
:mod:`recsys.systems`; loading them from a bundle is :func:`recsys.training.load_systems`.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from offline_eval.calibration import calibration_report, expected_calibration_error, logloss
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset
from recsys.data.split import Split
from recsys.engine import Engine
from recsys.features import FeatureContext
from recsys.training import stage_windows




def calibration_reports(systems: dict[str, Engine], ds: Dataset, split: Split) -> tuple[dict, dict]:
    """Probability quality of each system's heavy ranker (a stage with ``predict_rows``: the heavy ranker) on the held-out
    window's full (not downsampled) distribution (its logged impressions, or its engagements on rating data),
    with the candidates that system's own upstream hands it.

    Returns ``({system: {task: report}}, {"system/task": reliability bins})``; a report holds logloss_raw
    (before recalibration), logloss, ne, auc, calibration (sum p / sum y), ece and, on synthetic data, the mean
    absolute error against the true probabilities (see :func:`heavy_ranker_calibration`).
    """
    windows = stage_windows(split)
    reports: dict = {}
    bins: dict = {}
    done: dict = {}  # systems sharing the heavy ranker's network and upstream (e.g. no_exposure) share the report
    for name, engine in systems.items():
        idx = [i for i, (s, _) in enumerate(engine.stages) if callable(getattr(s, "predict_rows", None))]
        if not idx:
            continue
        i = idx[-1]
        stage = engine.stages[i][0]
        upstream = engine.upstream_of(i)
        key = (id(getattr(stage, "net", stage)), upstream.retrieve_k,
               tuple((id(s), k) for s, k in upstream.stages), id(engine.retrieval))
        if key not in done:
            done[key] = heavy_ranker_calibration(stage, ds, engine.catalog, upstream, None, split[windows["test"]],
                                                 split.before(windows["test"]))
        rep = done[key]
        reports[name] = {t: {k: v for k, v in r.items() if k != "reliability"} for t, r in rep.items()}
        for task, r in rep.items():
            if "reliability" in r:
                bins[f"{name}/{task}"] = r["reliability"]
    return reports, bins


def heavy_ranker_calibration(
    stage,
    ds: Dataset,
    catalog: Catalog,
    upstream,
    ctx: FeatureContext | None,
    window_df: pd.DataFrame,
    past_df: pd.DataFrame,
    n_bins: int = 10,
) -> dict[str, dict]:
    """Probability quality per task on the full (not downsampled) distribution of a window.

    Rows: :func:`build_rank_rows` for every user of the window, restricted to the logged impressions on a
    dataset with impressions (the pairs shown in the window), else the pre-ranked candidates. Per task:
    :func:`offline_eval.calibration.calibration_report` of the recalibrated probabilities (``logloss``,
    ``ne``, ``auc``, ``calibration`` = sum q / sum y, ``ece``, ``base_rate``, ``n``), plus ``logloss_raw`` and
    ``calibration_raw`` (the heads' probabilities before recalibration), ``w``, ``mean_p``, the reliability table
    (``reliability``: lists ``lower, upper, count, mean_p, mean_y``; :func:`reliability_tables`), and with
    truth columns (synthetic worlds) ``mae_truth`` / ``mae_truth_raw``: mean ``|q - truth|`` /
    ``|p_raw - truth|`` and ``mean_truth`` over the rows with a truth value. ``ctx`` None: the stage's
    own feature context (the one scoring uses).
    """
    from recsys.rank.stage import Examples, build_rank_rows
    from recsys.rank.value import EXPOSURE

    stage._check_fitted()
    if ctx is None:
        ctx = stage.ctx
    on = Examples.IMPRESSIONS if ds.schema.has_impressions else Examples.FUNNEL
    if stage.exposure_index is not None:
        on = Examples.BOTH
    rows = build_rank_rows(ds, catalog, upstream, ctx, window_df, past_df,
                           dataclasses.replace(stage.cfg, examples=on), stage.tasks, stage.enc.names, max_users=0)
    sel = np.flatnonzero(rows.shown) if on is not Examples.FUNNEL else np.arange(len(rows))
    if len(sel) == 0:
        raise ValueError("heavy_ranker_calibration: the window has no row to evaluate")
    q_all, p_all = stage.predict_rows(rows)
    q, p = q_all[sel], p_all[sel]
    out: dict[str, dict] = {}
    if stage.exposure_index is not None:  # P(shown) on the funnel candidates (what the engine ranks)
        fr = np.flatnonzero(rows.funnel)
        y, qe = rows.shown[fr].astype(np.int8), np.clip(q_all[fr, len(stage.tasks)], 0.0, 1.0)
        if 0 < y.sum() < len(y):
            rep = calibration_report(y, qe, None, n_bins)
            pe = p_all[fr, stage.exposure_index]
            rep.update(logloss_raw=logloss(y, np.clip(pe, 0.0, 1.0)), calibration_raw=float(pe.sum() / y.sum()),
                       w=stage.w, mean_p=float(qe.mean()))
            _, table = expected_calibration_error(y, qe, n_bins=n_bins)
            rep["reliability"] = {k: np.asarray(v).tolist() for k, v in table.items()}
            out[EXPOSURE] = rep
    for j, t in enumerate(stage.tasks):
        y = rows.labels[sel, j]
        rep = calibration_report(y, np.clip(q[:, j], 0.0, 1.0), None, n_bins)
        rep["logloss_raw"] = logloss(y, np.clip(p[:, j], 0.0, 1.0))
        rep["calibration_raw"] = float(p[:, j].sum() / y.sum()) if y.sum() > 0 else None
        rep["w"] = stage.w
        rep["mean_p"] = float(q[:, j].mean())
        _, table = expected_calibration_error(y, np.clip(q[:, j], 0.0, 1.0), n_bins=n_bins)
        rep["reliability"] = {k: np.asarray(v).tolist() for k, v in table.items()}
        if rows.truth is not None:
            tr = rows.truth[sel, j]
            ok = np.isfinite(tr)
            if ok.any():
                rep["mae_truth"] = float(np.abs(q[ok, j] - tr[ok]).mean())
                rep["mae_truth_raw"] = float(np.abs(p[ok, j] - tr[ok]).mean())
                rep["mean_truth"] = float(tr[ok].mean())
        out[t] = rep
    return {**{t: out[t] for t in stage.tasks}, **({EXPOSURE: out[EXPOSURE]} if EXPOSURE in out else {})}


def index_recall(engine: Engine, requests, ks: tuple[int, ...] = (100, 1000)) -> dict:
    """The retrieval index's recall@k against exact inner-product search, on the users of ``requests``:
    the ANN structure is forced (``exact=False``) even where serving would fall back to exhaustive search on
    a small catalogue (``exact_fallback_in_serving``). Cold requests (no user vector) are skipped."""
    retrieval = engine.retrieval
    req = engine.encode(requests)
    warm = np.flatnonzero(~retrieval.is_cold(req))
    if not len(warm):
        return {}
    q = retrieval.user_vectors(req.take(warm))
    index = retrieval.index
    out = {"factory": index.factory, "n_items": index.ntotal, "queries": int(len(warm)),
           "exact_fallback_in_serving": bool(index.ntotal <= 16384)}
    for k in ks:
        if k <= index.ntotal:
            out[f"recall@{k}_vs_exact"] = index.recall_vs_exact(q, k)
    return out


__all__ = ["calibration_reports", "heavy_ranker_calibration", "index_recall"]
