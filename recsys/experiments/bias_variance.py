"""Bias-variance decomposition of a funnel stage's pointwise predictions by bootstrap refits.

Shapes: M refits, G training requests (query groups, one per user), n test rows.

**What is resampled.** The stage's own training rows, exactly as training builds them (its window, the upstream
engine that serves it, the point-in-time features as of the window's start; :mod:`recsys.training`), are built
once. Each refit ``m`` draws G requests *with replacement* from the G training requests (a bootstrap of whole
requests, so a lambdarank query group, or the rows of one user, stay whole; Efron & Tibshirani 1993, ch. 6) with
``np.random.default_rng([seed, m])``, and hands the resample to the stage's own fitting procedure with its
config: the user-level holdout for early stopping (copies of one user stay on one side of it), negative
downsampling, the model. With ``model_seed: vary`` (default) refit ``m`` also gets the stage seeds + m (its
holdout, downsampling mask, initial weights, batch order), so the variance is what a retrain on fresh data of
the same size gives, training randomness included; ``fixed`` keeps the config's seeds (variance of the data
alone, up to the holdout, which the resampled users change anyway).

**Test rows**: the stage's rows at the test window, built the same way with the same upstream (its feature
contexts as of the test window, as the bundle serves it), *not selected on their labels*: the pre-ranker's
candidates of every user with an event there (:func:`recsys.prerank.stage.build_ranking_data` with
``all_users``; its training rows keep only users with a positive, as the stage does), the heavy ranker's rows
of :func:`recsys.rank.stage.build_rank_rows` (with the exposure head: the shown rows, where its task
probabilities are defined). ``max_test_users`` samples the users (seeded).

**Predictions as probabilities.** The squared loss of :mod:`offline_eval.bias_variance` is on a probability of
the binary label:

* heavy ranker: the served task probability ``p_<task>`` (default the first task), i.e. after the recalibration
  that undoes negative downsampling, ``q = p / (r + (1 - r) / w)`` (:func:`recsys.rank.stage.recalibrate_multitask`)
  and the intercept calibration, on full-distribution (not downsampled) test rows;
* pre-ranker: its lambdarank score is a ranking score on an arbitrary scale, so each refit gets a Platt
  calibration ``sigmoid(a s + b)`` of its score to the label ``gain > 0`` (Platt 1999, "Probabilistic outputs for
  support vector machines..."), fitted by Newton's method on *that refit's own* early-stopping holdout users
  (rows its trees did not fit; its training rows when there is no holdout). The decomposed function is then the
  whole refit procedure "trees + calibration", a monotone map of the served score, so the variance also counts
  the calibration's: a 2-parameter fit on ~10^5 rows, small beside the trees'. (A pointwise binary objective
  would decompose another model than the one served.)

**Truth.** On a dataset with a truth column ``p_<label>`` (the synthetic world's Oracle) the true probability of
a test row's label is known *given the logged impressions*: ``1 - prod_k (1 - p_k)`` over the pair's impressions
in the test window, 0 for a candidate that was never shown (it cannot be engaged). The noise term is then the
irreducible Bernoulli noise given everything the world drew, and bias^2 includes what no model of the stage's
features can know (e.g. which candidates the logging policy would show, the position). Without truth (real
data) only ``bias^2 + noise`` together and the variance are reported.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from offline_eval.bias_variance import decompose, per_instance, terms_by_bins
from recsys.io import atomic_output_dir, write_json

logger = logging.getLogger(__name__)

STAGES = ("prerank", "rank")
MODEL_SEEDS = ("vary", "fixed")


@dataclasses.dataclass(frozen=True)
class BiasVarianceConfig:
    """stages: funnel stages to decompose (``prerank``, ``rank``); resamples: M >= 2 bootstrap refits; seed: the
    bootstrap seed; model_seed: ``vary`` (stage seeds + m) or ``fixed``; task: the heavy ranker's task (None: its
    first); max_test_users: 0 all, else a seeded sample of the test window's users; n_bins: popularity bins."""

    stages: tuple[str, ...] = ("prerank",)
    resamples: int = 5
    seed: int = 0
    model_seed: str = "vary"
    task: str | None = None
    max_test_users: int = 0
    n_bins: int = 10

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"--stage: expected one or more of {list(STAGES)} (comma-separated), got "
                             f"{list(self.stages)}")
        if self.resamples < 2:
            raise ValueError(f"--resamples: must be >= 2 (the variance needs two refits), got {self.resamples}")
        if self.model_seed not in MODEL_SEEDS:
            raise ValueError(f"--model-seed: expected one of {list(MODEL_SEEDS)}, got {self.model_seed!r}")
        if self.max_test_users < 0:
            raise ValueError(f"--max-test-users: must be >= 0, got {self.max_test_users}")
        if self.n_bins < 1:
            raise ValueError(f"n_bins: must be >= 1, got {self.n_bins}")


def bootstrap_requests(n: int, seed: int, m: int) -> np.ndarray:
    """(n,) sorted request indices drawn with replacement by ``default_rng([seed, m])`` (refit ``m``)."""
    return np.sort(np.random.default_rng([seed, m]).integers(0, n, n))


# ------------------------------------------------------------------------------------------------------------
# Probability of a pre-ranker score (Platt scaling)
# ------------------------------------------------------------------------------------------------------------


def platt_fit(score: np.ndarray, y: np.ndarray, iters: int = 100, l2: float = 1e-3) -> tuple[float, float]:
    """(a, b) of Platt scaling ``P(y = 1 | s) = sigmoid(a s + b)`` fitted to ``y (n,)`` 0/1 on scores ``s (n,)``:
    cross-entropy against Platt's smoothed targets ``(N+ + 1) / (N+ + 2)`` for a positive and ``1 / (N- + 2)`` for
    a negative (so separable rows still give finite, not infinitely steep, fits), Newton's method on the
    standardised score with a small ridge ``l2`` (Platt 1999, "Probabilistic outputs for support vector machines
    and comparisons to regularized likelihood methods", section 2.2). Raises ValueError on a constant label."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("platt_fit: the label is constant on the calibration rows (need positives and negatives)")
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    mu, sd = s.mean(), s.std() or 1.0
    X = np.c_[(s - mu) / sd, np.ones(len(s))]
    w = np.array([0.0, np.log(t.mean() / (1 - t.mean()))])
    def loss(w):  # cross-entropy against the targets + ridge, computed without overflow
        z = X @ w
        return float((np.logaddexp(0.0, z) - t * z).sum() + 0.5 * l2 * w @ w)

    cur = loss(w)
    for _ in range(iters):  # Newton's method with step halving (the loss is convex)
        q = np.exp(-np.logaddexp(0.0, -(X @ w)))
        g = X.T @ (q - t) + l2 * w
        H = (X * (q * (1 - q))[:, None]).T @ X + l2 * np.eye(2)
        step = np.linalg.solve(H, g)
        for _ in range(30):
            new = loss(w - step)
            if new <= cur:
                break
            step = step / 2
        w, done, cur = w - step, cur - new < 1e-12 * max(abs(cur), 1.0), new
        if done or np.abs(step).max() < 1e-10:
            break
    return float(w[0] / sd), float(w[1] - w[0] * mu / sd)


def platt(score: np.ndarray, a: float, b: float) -> np.ndarray:
    """(n,) ``sigmoid(a s + b)`` (computed without overflow)."""
    z = a * np.asarray(score, dtype=np.float64) + b
    return np.exp(-np.logaddexp(0.0, -z))


# ------------------------------------------------------------------------------------------------------------
# Truth
# ------------------------------------------------------------------------------------------------------------


def pair_truth(window_df: pd.DataFrame, catalog, truth_col: str, user_ids: np.ndarray,
               items: np.ndarray) -> np.ndarray:
    """(n,) probability that user ``user_ids[i]`` (external id) engaged item ``items[i]`` (catalogue index) in
    the window given its logged impressions: ``1 - prod_k (1 - p_k)`` over the pair's rows of ``window_df``
    (``p_k`` = ``truth_col``), 0 for a pair never shown (exact for independent impressions)."""
    n_items = catalog.n_items
    users = pd.Index(pd.unique(np.asarray(user_ids)))
    r = users.get_indexer(window_df[catalog.user_col].to_numpy())
    i = catalog.items.encode(window_df[catalog.item_col].to_numpy())
    ok = (r >= 0) & (i < n_items)
    p = np.clip(window_df[truth_col].to_numpy(dtype=np.float64)[ok], 0.0, 1.0 - 1e-12)
    keys = r[ok].astype(np.int64) * (n_items + 1) + i[ok]
    s = pd.Series(np.log1p(-p)).groupby(keys).sum()
    q = users.get_indexer(np.asarray(user_ids)).astype(np.int64) * (n_items + 1) + np.asarray(items, np.int64)
    return -np.expm1(s.reindex(q).fillna(0.0).to_numpy())


def truth_column(ds, label: str, window_df: pd.DataFrame, implied: tuple[str, ...] = ()) -> str | None:
    """``p_<label>`` when the dataset declares it as a truth column and every label in ``implied`` is positive
    only where ``label`` is (so ``gain > 0`` is ``label > 0``); else None."""
    from recsys.data.schema import Role

    cols = ds.schema.tables["interactions"].columns
    name = f"p_{label}"
    if name not in cols or cols[name].role is not Role.TRUTH or name not in window_df.columns:
        return None
    pos = window_df[label].to_numpy() > 0
    if any(((window_df[o].to_numpy() > 0) & ~pos).any() for o in implied if o != label):
        return None
    return name


def item_popularity(catalog, past_df: pd.DataFrame, label: str) -> np.ndarray:
    """(N,) engagements (``label > 0``) of each catalogue item in ``past_df`` (the events before the test
    window)."""
    pos = past_df[past_df[label].to_numpy() > 0]
    i = catalog.items.encode(pos[catalog.item_col].to_numpy())
    i = i[i < catalog.n_items]
    return np.bincount(i, minlength=catalog.n_items).astype(np.float64)


# ------------------------------------------------------------------------------------------------------------
# The stages' upstreams
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    """Everything the refits share: dataset, config (seeded), split, windows, catalogue, the candidate stage and
    the bundle's engine (or None), and how the candidate stage was obtained."""

    ds: object
    cfg: object
    split: object
    windows: dict
    catalog: object
    retrieval: object
    engine: object | None
    trained_on: list
    _contexts: dict = dataclasses.field(default_factory=dict)  # window -> ContextsAt
    _fitted: dict = dataclasses.field(default_factory=dict)  # funnel index -> upstream scoring stage

    def contexts(self, window: str):
        """The point-in-time feature contexts of ``window`` (:func:`recsys.training.lookback_events`)."""
        from recsys.training import ContextsAt, lookback_events
        from recsys.windows import RETRIEVAL

        if window not in self._contexts:
            self._contexts[window] = ContextsAt(self.ds, self.catalog, lookback_events(
                self.split, window, self.windows[RETRIEVAL], self.catalog.time_col))
        return self._contexts[window]

    def funnel_index(self, stage_type: str) -> int:
        types = [t for _, t, _ in self.cfg.engine.stages]
        if stage_type not in types[1:]:
            raise ValueError(f"--stage {stage_type}: the config's funnel (engine.funnel) has no {stage_type!r} "
                             f"stage; funnel: {[n for n, _, _ in self.cfg.engine.stages]}")
        return types.index(stage_type)

    def upstream(self, index: int, window: str):
        """The engine serving funnel stage ``index`` at ``window``: the candidate stage and the scoring stages
        before it (the bundle's, or pre-rankers trained here on their own windows), with ``window``'s features."""
        from recsys.engine import Engine

        funnel = self.cfg.engine.stages
        stages = [(self.contexts(window).stage(self._scoring(j)), funnel[j][2]) for j in range(1, index)]
        return Engine(self.retrieval, stages, funnel[0][2], catalog=self.catalog, memo={})

    def _scoring(self, j: int):
        name, type_name, k = self.cfg.engine.stages[j]
        if j in self._fitted:
            return self._fitted[j]
        if self.engine is not None:
            stage = next((s for s, _ in self.engine.stages if s.name == name), None)
            if stage is None:
                raise ValueError(f"the bundle's engine has no stage {name!r}; stages: {self.engine.stage_names}")
        elif type_name == "prerank":
            from recsys.prerank.stage import PrerankStage
            from recsys.stages.base import FitContext

            w = self.windows[name]
            logger.info("training the upstream pre-ranker %r on window %r", name, w)
            stage = PrerankStage(self.cfg.prerank).fit(FitContext(
                self.ds, self.catalog, self.split, w, self.split.before(w), upstream=self.upstream(j, w),
                features=self.contexts(w).get, seed=self.cfg.seed, k=k))
            stage.name = name
        else:
            raise ValueError(f"upstream stage {name!r} ({type_name}): without --bundle only pre-rankers are "
                             "trained here; pass --bundle")
        self._fitted[j] = stage
        return stage


def setting(ds, cfg, bundle=None, source: str = "", stages: tuple[str, ...] = ("prerank",)) -> Setting:
    """The shared :class:`Setting`; the candidate stage must not have seen the earliest decomposed stage's
    window (:func:`recsys.experiments.feature_selection.candidate_stage`)."""
    from recsys.data.split import split_dataset
    from recsys.experiments.feature_selection import candidate_stage
    from recsys.training import seeded
    from recsys.validate import check_config
    from recsys.windows import stage_windows, train_windows

    cfg = check_config(seeded(cfg), ds)
    split = split_dataset(ds, cfg.split)
    windows = stage_windows(split, cfg.engine)
    cuts = train_windows(split, cfg.engine)
    names = {t: n for n, t, _ in cfg.engine.stages}
    for s in stages:
        if s in names and len(cuts.get(names[s], [])) > 1:
            logger.warning("stage %r lists several cut points %s; the rows of its last window only are resampled",
                           names[s], cuts[names[s]])
    first = min((windows[names[s]] for s in stages if s in names), key=split.names.index, default=windows["test"])
    retrieval, catalog, trained_on, engine = candidate_stage(ds, cfg, split, windows, first, bundle, source)
    return Setting(ds, cfg, split, windows, catalog, retrieval, engine, trained_on)


# ------------------------------------------------------------------------------------------------------------
# Refits
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageRun:
    """One stage's refits: predictions (M, n), labels, truth (or None), per-row item, timings and notes."""

    stage: str
    target: str
    predictions: np.ndarray
    y: np.ndarray
    truth: np.ndarray | None
    items: np.ndarray
    window: str
    test_window: str
    train_requests: int
    train_rows: int
    test_users: int
    seconds: dict
    refits: list[dict]
    notes: list[str]


def _test_users_cfg(cfg, max_test_users: int):
    return dataclasses.replace(cfg, max_train_users=max_test_users)


def run_prerank(st: Setting, bv: BiasVarianceConfig) -> StageRun:
    """M bootstrap refits of the pre-ranker (see the module docstring)."""
    from recsys.prerank.stage import build_ranking_data, split_groups, train_booster

    t0 = time.perf_counter()
    i = st.funnel_index("prerank")
    name, _, k = st.cfg.engine.stages[i]
    pcfg = st.cfg.prerank
    w, wt = st.windows[name], st.windows["test"]
    # every user of the window (the stage drops the groups without a positive after its holdout split, so the
    # bootstrap resamples the window's users and each refit drops them as the stage does)
    train = build_ranking_data(st.ds, st.catalog, st.upstream(i, w), st.contexts(w).get(pcfg), st.split[w],
                               st.split.before(w), pcfg, all_users=True)
    test_cfg = _test_users_cfg(pcfg, bv.max_test_users)
    test = build_ranking_data(st.ds, st.catalog, st.upstream(i, wt), st.contexts(wt).get(pcfg), st.split[wt],
                              st.split.before(wt), test_cfg, names=train.names, all_users=True)
    seconds = {"rows": time.perf_counter() - t0}
    label = st.ds.schema.positive_label
    gains = list(pcfg.gains) or [label]
    notes = [f"target: P(gain > 0) (engaged with any of {gains}) = Platt calibration of each refit's lambdarank "
             "score on its own early-stopping holdout users (all their rows, also of users without a positive)"]
    yt = (test.y > 0).astype(np.int8)
    at = pcfg.objective_at or k or pcfg.eval_at
    has_pos = np.bincount(np.repeat(np.arange(len(train.group)), train.group), weights=train.y > 0,
                          minlength=len(train.group)) > 0
    preds, refits = [], []
    G = len(train.group)
    for m in range(bv.resamples):
        t1 = time.perf_counter()
        seed = pcfg.seed + (m if bv.model_seed == "vary" else 0)
        idx = bootstrap_requests(G, bv.seed, m)
        users, inverse = np.unique(train.user_ids[idx], return_inverse=True)
        _, va_users = split_groups(len(users), pcfg.valid_fraction, seed)
        is_valid = np.isin(inverse, va_users)
        pos = has_pos[idx]
        tr = train.take_groups(idx[~is_valid & pos])
        va = train.take_groups(idx[is_valid & pos], drop_extra=True)
        booster, info = train_booster(tr, va, pcfg, seed=seed, at=at)
        cal = train.take_groups(idx[is_valid], drop_extra=True) if is_valid.any() else tr
        if not (cal.y > 0).any():
            cal = tr
        a, b = platt_fit(booster.predict(cal.X, num_threads=pcfg.num_threads), cal.y > 0)
        preds.append(platt(booster.predict(test.X, num_threads=pcfg.num_threads), a, b))
        refits.append({"refit": m, "seed": seed, "distinct_users": int(len(users)), "train_requests":
                       int(len(tr.group)), "valid_requests": int(len(va.group)), "calibration_rows": int(len(cal.y)),
                       "best_iteration": info["best_iteration"], "platt_a": a, "platt_b": b,
                       "seconds": time.perf_counter() - t1})
        logger.info("pre-ranker refit %d/%d: %s", m + 1, bv.resamples, refits[-1])
    seconds["refits"] = sum(r["seconds"] for r in refits)
    col = truth_column(st.ds, label, st.split[wt], tuple(gains))
    truth = None
    if col is not None:
        truth = pair_truth(st.split[wt], st.catalog, col, np.repeat(test.user_ids, test.group), test.item)
        notes.append(f"truth: {col!r}, P(engaged in the test window | its logged impressions); 0 for a "
                     "candidate never shown")
    return StageRun("prerank", f"P({' or '.join(gains)})", np.stack(preds), yt,
                    truth, test.item, w, wt, int(has_pos.sum()), int(train.group[has_pos].sum()), int(len(test.group)),
                    seconds, refits, notes)


def take_requests(rows, idx: np.ndarray):
    """The heavy ranker's rows of requests ``idx (G',)`` (repeats allowed), request ``j`` of the result being
    ``idx[j]``; the result has no candidate blocks (``stage_scores`` and ``source_scores`` need them)."""
    order = np.argsort(rows.req, kind="stable")
    counts = np.bincount(rows.req, minlength=len(rows.requests))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    lens = counts[idx]
    sel = order[np.repeat(starts[idx], lens) + (np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens))]
    return dataclasses.replace(
        rows, requests=rows.requests.take(idx), user_ids=rows.user_ids[idx], blocks=[],
        req=np.repeat(np.arange(len(idx), dtype=np.int64), lens), col=rows.col[sel], item=rows.item[sel],
        X=rows.X[sel], labels=rows.labels[sel], shown=rows.shown[sel], funnel=rows.funnel[sel],
        truth=None if rows.truth is None else rows.truth[sel])


def run_rank(st: Setting, bv: BiasVarianceConfig) -> StageRun:
    """M bootstrap refits of the heavy ranker (see the module docstring)."""
    from recsys.rank.stage import RankStage, build_rank_rows, row_spec

    t0 = time.perf_counter()
    i = st.funnel_index("rank")
    name = st.cfg.engine.stages[i][0]
    rcfg = st.cfg.rank
    w, wt = st.windows[name], st.windows["test"]
    up_w, ctx_w = st.upstream(i, w), st.contexts(w).get(rcfg)
    tasks, names, row_cfg = row_spec(st.ds, ctx_w, up_w, rcfg)
    task = bv.task or tasks[0]
    if task not in tasks:
        raise ValueError(f"--task: {task!r} is not a task of the heavy ranker; tasks: {tasks}")
    train = build_rank_rows(st.ds, st.catalog, up_w, ctx_w, st.split[w], st.split.before(w), row_cfg, tasks, names)
    test = build_rank_rows(st.ds, st.catalog, st.upstream(i, wt), st.contexts(wt).get(rcfg), st.split[wt],
                           st.split.before(wt), row_cfg, tasks, names, max_users=bv.max_test_users)
    seconds = {"rows": time.perf_counter() - t0}
    j = tasks.index(task)
    defined = test.shown if rcfg.exposure else np.ones(len(test), dtype=bool)
    notes = [f"target: the served probability p_{task} (recalibrated for negative downsampling w = "
             f"{rcfg.downsample_w}, intercepts calibrated)" + (" on the shown rows (the exposure head makes it "
                                                                "conditional on being shown)" if rcfg.exposure else "")]
    preds, refits = [], []
    G = len(train.requests)
    for m in range(bv.resamples):
        t1 = time.perf_counter()
        off = m if bv.model_seed == "vary" else 0
        cfg_m = dataclasses.replace(rcfg, seed=rcfg.seed + off,
                                    train=dataclasses.replace(rcfg.train, seed=rcfg.train.seed + off))
        idx = bootstrap_requests(G, bv.seed, m)
        stage = RankStage(cfg_m).fit_rows(st.ds, st.catalog, take_requests(train, idx), ctx_w, cfg_m, st.split[w])
        if task not in stage.tasks:
            raise ValueError(f"refit {m}: task {task!r} was skipped (constant label in the resample)")
        q, _ = stage.predict_rows(test)
        preds.append(q[defined, stage.tasks.index(task)])
        vm = stage.valid_metrics
        refits.append({"refit": m, "seed": cfg_m.seed, "distinct_requests": int(len(np.unique(idx))),
                       "epochs": vm.get("epochs"), "best_epoch": vm.get("best_epoch"),
                       "valid_auc": (vm.get("valid", {}).get(task) or {}).get("auc"),
                       "seconds": time.perf_counter() - t1})
        logger.info("heavy-ranker refit %d/%d: %s", m + 1, bv.resamples, refits[-1])
    seconds["refits"] = sum(r["seconds"] for r in refits)
    truth = None
    if test.truth is not None and np.isfinite(test.truth[defined, j]).all():
        truth = test.truth[defined, j]
        notes.append(f"truth: 'p_{task}' of the test window's impressions, 1 - prod(1 - p) over the pair's "
                     "impressions")
    elif test.truth is not None:
        notes.append("truth: unknown on some rows (candidates never shown); bias^2 and noise reported together")
    return StageRun("rank", f"P({task})", np.stack(preds), test.labels[defined, j].astype(np.int8), truth,
                    test.item[defined], w, wt, G, int(len(train)), int(len(test.requests)), seconds, refits, notes)


RUNNERS = {"prerank": run_prerank, "rank": run_rank}


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def summarize(run: StageRun, popularity: np.ndarray, n_bins: int) -> dict:
    """The terms of one stage, overall and by item-popularity bin, and the per-instance variance quantiles."""
    terms = decompose(run.predictions, run.y, run.truth)
    bins = terms_by_bins(run.predictions, run.y, run.truth, popularity[run.items], n_bins)
    return {"stage": run.stage, "target": run.target, "window": run.window, "test_window": run.test_window,
            "train_requests": run.train_requests, "train_rows": run.train_rows, "test_users": run.test_users,
            "terms": terms, "by_popularity": bins, "seconds": run.seconds, "refits": run.refits, "notes": run.notes}


def _range(b: dict) -> str:
    return f"{b['key_min']:.0f}" if b["key_min"] == b["key_max"] else f"{b['key_min']:.0f}-{b['key_max']:.0f}"


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.6f}"


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Bias-variance decomposition (bootstrap refits)", "",
             f"Data `{meta['data']}`; {meta['resamples']} bootstrap refits per stage (whole requests resampled with "
             f"replacement, seed {meta['seed']}; model seeds: {meta['model_seed']}); candidate stage trained on "
             f"{meta['retrieval_trained_on']} ({'the bundle ' + meta['bundle'] if meta['bundle'] else 'trained here'}"
             "). Squared loss of a probability against the 0/1 label (Brier); terms are means over the test rows.",
             "", "**Identities** (exact): MSE = (bias² + noise) + variance, and with the truth "
             "MSE = bias² + variance + realised noise + cross term; the expected-noise sum "
             "bias² + variance + mean p(1-p) differs from the MSE only by the test labels' sampling error.", ""]
    for r in results:
        t = r["terms"]
        truth = "bias2" in t
        lines += [f"## {r['stage']}: {r['target']}", "",
                  f"Trained on window `{r['window']}` ({r['train_requests']} requests, {r['train_rows']} rows); tested "
                  f"on window `{r['test_window']}` ({r['test_users']} users, {t['n']} rows, label rate "
                  f"{t['label_rate']:.4f}, mean prediction {t['mean_prediction']:.4f}). Wall time: rows "
                  f"{r['seconds']['rows']:.0f} s, {t['M']} refits {r['seconds']['refits']:.0f} s.", ""]
        lines += [f"- {n}" for n in r["notes"]] + [""]
        lines += ["| term | value | share of MSE |", "|---|---:|---:|"]
        mse = t["mse"]
        share = lambda v: f"{100 * v / mse:.1f}%" if mse > 0 else "-"  # noqa: E731
        lines.append(f"| measured MSE (mean over refits and rows) | {_f(mse)} | 100% |")
        if truth:
            rows = [("bias²", t["bias2"]), ("variance", t["variance"]), ("noise (realised, (y - p)²)",
                    t["noise_realised"]), ("cross term 2(y - p)(p - f̄)", t["cross"]),
                    ("**sum** (= MSE)", t["sum_exact"]), ("noise (expected, p(1 - p))", t["noise_expected"]),
                    ("bias² + variance + expected noise", t["sum_expected"]),
                    ("bias² debiased for finite M", t["bias2_debiased"]),
                    ("variance × M/(M-1) (unbiased)", t["variance_unbiased"])]
        else:
            rows = [("bias² + noise (no truth: not separable)", t["mse_of_mean"]), ("variance", t["variance"]),
                    ("**sum** (= MSE)", t["mse_of_mean"] + t["variance"]),
                    ("variance × M/(M-1) (unbiased)", t["variance_unbiased"])]
        lines += [f"| {a} | {_f(v)} | {share(v)} |" for a, v in rows]
        lines += ["", f"Per-instance variance: median {_f(t['variance_q50'])}, 90% {_f(t['variance_q90'])}, "
                      f"99% {_f(t['variance_q99'])}.", ""]
        lines += ["By the item's engagements before the test window (quantile bins):", "",
                  "| bin | engagements | rows | MSE | " + ("bias² | noise (exp.) | " if truth else "bias² + noise | ")
                  + "variance |", "|---:|---|---:|---:|" + ("---:|---:|" if truth else "---:|") + "---:|"]
        for b in r["by_popularity"]:
            mid = f"{_f(b['bias2'])} | {_f(b['noise_expected'])}" if truth else _f(b["mse_of_mean"])
            lines.append(f"| {b['bin']} | {_range(b)} | {b['n']} | {_f(b['mse'])} | {mid} | "
                         f"{_f(b['variance'])} |")
        lines += ["", f"![bias-variance terms by item popularity ({r['stage']})](popularity_{r['stage']}.png)", ""]
    lines += ["![bias-variance terms per stage](terms.png)", ""]
    return "\n".join(lines)


def _plots(results: list[dict], tmp: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.8 * len(results)))
    colors = {"bias²": "tab:red", "bias² + noise": "tab:purple", "variance": "tab:blue", "noise": "tab:gray"}
    for y, r in enumerate(results):
        t = r["terms"]
        parts = ([("bias²", t["bias2"]), ("variance", t["variance"]), ("noise", t["noise_expected"])]
                 if "bias2" in t else [("bias² + noise", t["mse_of_mean"]), ("variance", t["variance"])])
        total, left = sum(v for _, v in parts), 0.0
        for label, v in parts:  # shares of the sum (= the MSE up to the test labels' sampling error)
            share = 100.0 * v / total if total > 0 else 0.0
            ax.barh(y, share, left=left, color=colors[label],
                    label=label if label not in ax.get_legend_handles_labels()[1] else None)
            if share >= 4:
                ax.text(left + share / 2, y, f"{share:.1f}%", ha="center", va="center", fontsize=7, color="white")
            left += share
        ax.text(101, y, f"MSE {t['mse']:.4g}", va="center", fontsize=8)
    ax.set_yticks(range(len(results)), [f"{r['stage']}: {r['target']}" for r in results], fontsize=8)
    ax.set_xlim(0, 125)
    ax.set_xlabel("share of the MSE (%)")
    ax.set_title("Bias-variance decomposition (mean over the test rows)", pad=24)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.45, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(tmp / "terms.png", dpi=100)
    plt.close(fig)
    for r in results:
        bins = r["by_popularity"]
        truth = "bias2" in r["terms"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        x = np.arange(len(bins))
        if truth:
            ax.plot(x, [b["bias2"] for b in bins], "o-", color="tab:red", label="bias²")
            ax.plot(x, [b["noise_expected"] for b in bins], "o-", color="tab:gray", label="noise p(1-p)")
        else:
            ax.plot(x, [b["mse_of_mean"] for b in bins], "o-", color="tab:purple", label="bias² + noise")
        ax.plot(x, [b["variance"] for b in bins], "o-", color="tab:blue", label="variance")
        ax.set_xticks(x, [_range(b) for b in bins], fontsize=7, rotation=45)
        ax.set_xlabel("item engagements before the test window (quantile bins)")
        ax.set_yscale("log")
        ax.set_title(f"{r['stage']}: terms by item popularity")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp / f"popularity_{r['stage']}.png", dpi=100)
        plt.close(fig)


def run_bias_variance(ds, cfg, bv: BiasVarianceConfig, out: str | Path, bundle=None, source: str = "",
                      overwrite: bool = False) -> dict:
    """Decompose every stage of ``bv.stages`` and write ``report.md``, ``results.json``, ``terms.png``,
    ``popularity_<stage>.png`` and ``report.html`` into ``out`` (atomically). Returns the results."""
    from offline_eval.html_report import write_html

    t0 = time.perf_counter()
    st = setting(ds, cfg, bundle, source, bv.stages)
    label = st.ds.schema.positive_label
    popularity = item_popularity(st.catalog, st.split.before(st.windows["test"]), label)
    results = [summarize(RUNNERS[s](st, bv), popularity, bv.n_bins) for s in bv.stages]
    meta = {"data": str(ds.path) if ds.path is not None else None, "bundle": source or None,
            "resamples": bv.resamples, "seed": bv.seed, "model_seed": bv.model_seed,
            "max_test_users": bv.max_test_users, "retrieval_trained_on": st.trained_on, "windows": st.windows,
            "seconds_total": None}
    meta["seconds_total"] = time.perf_counter() - t0
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "report.md").write_text(markdown(results, meta), encoding="utf-8")
        _plots(results, tmp)
        write_json(tmp / "results.json", {**meta, "stages": results})
        write_html(tmp)
    logger.info("wrote the bias-variance report to %s", out)
    return {**meta, "stages": results}


__all__ = ["BiasVarianceConfig", "STAGES", "StageRun", "bootstrap_requests", "item_popularity", "markdown",
           "pair_truth", "platt", "platt_fit", "run_bias_variance", "run_prerank", "run_rank", "setting",
           "summarize", "take_requests", "truth_column"]
