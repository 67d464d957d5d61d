"""Off-policy evaluation of ranking policies on a logged-bandit folder (:mod:`recsys.data.bandit_log`).

Shapes: S sessions of the log, L its slate size, C distinct request contexts (user, time, hour, device).

**Target policies.** Each evaluated policy is a deterministic ranking per session, truncated to the log's L
positions:

* systems of a bundle and baselines (``--bundle --data --systems engine,no_exposure,popularity``): every
  distinct context of the log becomes one request built as the offline evaluator builds it
  (:meth:`recsys.data.catalog.Catalog.requests` with the user's engagements before the log's window as the
  history and the exclusions, the catalogue of the users seen before the window, the session's hour and device
  as context), ranked once by ``system.rank(requests, L)``: the ranking the evaluator and the service would show;
* a context-free policy for logs without a model (``--policy top-ctr``: the L items with the highest click
  rate in the first ``train_fraction`` of the log by time, best first, evaluated on the rest; or
  ``--policy-file FILE``: item ids best first, one per line, evaluated on the whole log).

**Estimators** (:mod:`offline_eval.ope`): top-slot IPS, SNIPS and DR; the item-position IPS and DR estimators
of the expected clicks on the L positions; each with its normal (delta-method for SNIPS) 95% interval and
effective sample size.

**Truth** (synthetic worlds, when the dataset has ``truth/``): the oracle's click probability of each target
item at its position in each logged session's context (time, hour, device), averaged over the sessions: the
top slot's ``mean_s P(click | pi_0(x_s) at 0)`` and the list's ``mean_s sum_k P(click | pi_k(x_s) at k)``, the
exact values the estimators estimate on these sessions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from offline_eval.ope import ESTIMATORS, TARGETS, Estimate, estimate_all, item_position_terms, paired_difference
from recsys.data.bandit_log import BanditLog
from recsys.io import atomic_output_dir, write_json

logger = logging.getLogger(__name__)

CONTEXT_COLUMNS = ("user_id", "timestamp", "hour", "device")
ESTIMATOR_NAMES = {"ips": "IPS (top slot)", "snips": "SNIPS (top slot)", "dr": "DR (top slot)",
                   "ip_ips": "item-position IPS (list)", "ip_dr": "item-position DR (list)"}


@dataclasses.dataclass
class SessionArrays:
    """The log as dense per-session arrays: ``items`` (S, L) object item ids (None: position not logged),
    ``click`` (S, L), ``propensity`` (S, L) (1.0 where not logged), ``contexts`` (C, ...) the distinct
    request contexts, ``context_of`` (S,) each session's row in ``contexts``, ``timestamps`` (S,)."""

    session_ids: np.ndarray
    items: np.ndarray
    shown: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    timestamps: np.ndarray
    contexts: pd.DataFrame
    context_of: np.ndarray

    def take(self, rows: np.ndarray) -> "SessionArrays":
        rows = np.asarray(rows)
        keep, inverse = np.unique(self.context_of[rows], return_inverse=True)
        return SessionArrays(self.session_ids[rows], self.items[rows], self.shown[rows], self.click[rows],
                             self.propensity[rows], self.timestamps[rows],
                             self.contexts.iloc[keep].reset_index(drop=True), inverse.reshape(-1))


def session_arrays(log: BanditLog) -> SessionArrays:
    """Pivot the (session, position) rows of ``log`` into :class:`SessionArrays`."""
    t = log.table
    sid, srow = np.unique(t["session_id"].to_numpy(), return_inverse=True)
    s, l = len(sid), log.slate_size
    pos = t["position"].to_numpy()
    items = np.full((s, l), None, dtype=object)
    items[srow, pos] = t["item_id"].to_numpy()
    shown = np.zeros((s, l), bool)
    shown[srow, pos] = True
    click = np.zeros((s, l))
    click[srow, pos] = t["click"].to_numpy()
    prop = np.ones((s, l))
    prop[srow, pos] = t["propensity"].to_numpy()
    first = t.drop_duplicates("session_id", keep="first")  # sorted by session, position: aligned with sid
    cols = [c for c in CONTEXT_COLUMNS if c in first.columns]
    ctx = first[cols].reset_index(drop=True)
    codes = np.zeros(len(ctx), np.int64)
    for c in cols:  # combine the columns' codes, re-factorized after each so the key never overflows
        col_codes, uniq = pd.factorize(ctx[c], use_na_sentinel=False)
        codes = pd.factorize(codes * (len(uniq) + 1) + col_codes)[0].astype(np.int64)
    contexts = ctx.iloc[np.unique(codes, return_index=True)[1]].reset_index(drop=True)
    return SessionArrays(sid, items, shown, click, prop, first["timestamp"].to_numpy(np.int64), contexts,
                         codes.astype(np.int64))


# ----------------------------------------------------------------------------------------------------------
# target policies


def system_rankings(arrays: SessionArrays, ds, cfg, systems: Mapping[str, Any], baselines: list[str],
                    window: str, k: int) -> dict[str, np.ndarray]:
    """{policy: (C, k) object item ids (None: no item)} for every distinct context, ranked by each engine system
    and fitted baseline exactly as the evaluator ranks a test request (see the module docstring)."""
    from recsys.data.catalog import Catalog, positives
    from recsys.data.split import split_dataset

    split = split_dataset(ds, cfg.split)
    if window not in split.names:
        raise ValueError(f"log.yaml: window: {window!r} is not a window of the split ({split.names})")
    before = split.before(window)
    catalog = Catalog.from_dataset(ds, train=before)
    ctx = arrays.contexts
    if "user_id" not in ctx.columns or ctx["user_id"].isna().any():
        raise ValueError("log.parquet: column 'user_id': ranking with a bundle needs a user id in every session")
    lo, hi = int(split[window][catalog.time_col].min()), int(split[window][catalog.time_col].max())
    ts = ctx["timestamp"].to_numpy(np.int64)
    if ts.min() < lo or ts.max() > hi:
        raise ValueError(f"log.parquet: column 'timestamp': sessions from {ts.min()} to {ts.max()} fall outside "
                         f"the {window!r} window [{lo}, {hi}] of the bundle's split")
    user_ids = ctx["user_id"].to_numpy().astype(np.asarray(ds.interactions[catalog.user_col]).dtype)
    context = {c: ctx[c].to_numpy() for c in ds.schema.context_columns if c in ctx.columns}
    past = positives(before, cfg.eval.positive_label or ds.schema.positive_label)
    requests = catalog.requests(user_ids, ts, past, exclude_seen=cfg.eval.exclude_seen, context=context)
    rankers = dict(systems)
    if baselines:
        from offline_eval.baselines import make_baseline

        for name in baselines:
            rankers[name] = make_baseline(name, seed=cfg.seed, **cfg.eval.baseline_params.of(name)).fit(
                before, catalog, ds.schema)
    out = {}
    for name, ranker in rankers.items():
        t0 = time.perf_counter()
        parts = [ranker.rank(r, k).items[:, :k] for r in requests.shards(4096)]
        idx = np.concatenate(parts).astype(np.int64)
        ids = np.full(idx.shape, None, dtype=object)
        ok = idx >= 0
        ids[ok] = catalog.items.decode(idx[ok])
        out[name] = ids
        logger.info("ranked %d contexts with %s in %.1f s", len(idx), name, time.perf_counter() - t0)
    return out


def top_ctr_policy(arrays: SessionArrays, k: int) -> np.ndarray:
    """(k,) object item ids: the k items with the highest click rate over ``arrays`` (ties: more impressions,
    then the smaller id), best first; fewer when fewer items were shown."""
    it = arrays.items[arrays.shown]
    c = arrays.click[arrays.shown]
    df = pd.DataFrame({"item": it, "click": c}).groupby("item", sort=True)["click"].agg(["mean", "size"])
    df = df.reset_index().sort_values(["mean", "size", "item"], ascending=[False, False, True], kind="stable")
    return df["item"].to_numpy()[:k]


def read_policy_file(path: str | Path, k: int, item_dtype) -> np.ndarray:
    """(<= k,) item ids from a text file, best first, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: --policy-file not found")
    lines = [ln.split("#")[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    ids = [x for x in lines if x]
    if not ids:
        raise ValueError(f"{path}: --policy-file lists no item id")
    if np.dtype(item_dtype).kind in "iu":
        bad = [x for x in ids if not x.lstrip("-").isdigit()]
        if bad:
            raise ValueError(f"{path}: line with item id {bad[0]!r}: expected an integer id like the log's item_id")
        return np.array([int(x) for x in ids[:k]], dtype=object)
    return np.array(ids[:k], dtype=object)


# ----------------------------------------------------------------------------------------------------------
# truth and estimates


def oracle_truth(oracle, arrays: SessionArrays, ranking: np.ndarray) -> np.ndarray:
    """(C, k) the oracle's P(click) of each context's target item at each position (0 where no item)."""
    ctx = arrays.contexts
    c, k = ranking.shape
    ok = np.array([x is not None for x in ranking.ravel()]).reshape(c, k)
    out = np.zeros((c, k))
    rows, cols = np.nonzero(ok)
    if len(rows):
        hour = ctx["hour"].to_numpy()[rows] if "hour" in ctx.columns else None
        device = ctx["device"].to_numpy()[rows] if "device" in ctx.columns else None
        out[rows, cols] = oracle.p_click(ctx["user_id"].to_numpy()[rows], ranking[rows, cols].astype(np.int64),
                                         ctx["timestamp"].to_numpy(np.int64)[rows], position=cols, hour=hour,
                                         device=device)
    return out


def _encode(arrays: SessionArrays, ranking: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(logged (S, L) codes, target (S, k) codes, number of codes) of the log and one policy's ranking."""
    s, l = arrays.items.shape
    target = ranking[arrays.context_of] if ranking.ndim == 2 else np.broadcast_to(ranking, (s, len(ranking)))
    target = target[:, :l]
    vocab = pd.Index(pd.unique(np.concatenate([arrays.items[arrays.shown],
                                               np.array([x for x in target.ravel() if x is not None], object)])))
    logged = np.full((s, l), -1, np.int64)
    logged[arrays.shown] = vocab.get_indexer(arrays.items[arrays.shown])
    tcodes = np.full(target.shape, -1, np.int64)
    has = np.array([x is not None for x in target.ravel()]).reshape(target.shape)
    tcodes[has] = vocab.get_indexer(target[has])
    return logged, tcodes, len(vocab)


def estimate_policy(arrays: SessionArrays, ranking: np.ndarray, ranked_list: bool = True,
                    seed: int = 0) -> dict[str, Estimate]:
    """Every estimator for one policy: ``ranking`` (C, k) per context or (k,) the same list for every session."""
    logged, target, n = _encode(arrays, ranking)
    return estimate_all(logged, arrays.click, arrays.propensity, target, n, seed=seed, ranked_list=ranked_list)


def differences(arrays: SessionArrays, rankings: Mapping[str, np.ndarray]) -> list[dict]:
    """Paired item-position IPS differences ``V_a - V_b`` with 95% intervals for every pair of policies (in the
    order given), on the same sessions."""
    z = {}
    for name, ranking in rankings.items():
        logged, target, _ = _encode(arrays, ranking)
        z[name] = item_position_terms(logged, arrays.click, arrays.propensity, target)
    names = list(z)
    return [{"a": a, "b": b, "estimator": "ip_ips", **paired_difference(z[a], z[b])}
            for i, a in enumerate(names) for b in names[i + 1:]]


def run_ope(log: BanditLog, rankings: Mapping[str, np.ndarray], oracle=None, arrays: SessionArrays | None = None,
            seed: int = 0) -> dict:
    """Estimates (and oracle truths, when ``oracle`` is given) of every policy: the ``results.json`` content
    without the run's description. ``rankings``: {policy: (C, k) per context of ``arrays`` or (k,) fixed}."""
    arrays = arrays if arrays is not None else session_arrays(log)
    ranked_list = log.meta.get("propensity") == "item_position"
    policies = {}
    for name, ranking in rankings.items():
        est = estimate_policy(arrays, ranking, ranked_list, seed)
        truth = None
        if oracle is not None:
            r = ranking if ranking.ndim == 2 else np.broadcast_to(ranking, (len(arrays.contexts), len(ranking)))
            pc = oracle_truth(oracle, arrays, np.asarray(r, dtype=object)[:, : log.slate_size])
            per_session = pc[arrays.context_of]
            truth = {"top_slot": float(per_session[:, 0].mean()), "list": float(per_session.sum(axis=1).mean())}
        rows = {}
        for e, v in est.items():
            row = v.to_dict()
            if truth is not None:
                row["truth"] = truth[TARGETS[e]]
                row["covered"] = v.covers(truth[TARGETS[e]])
                row["error"] = v.value - truth[TARGETS[e]]
            rows[e] = row
        policies[name] = {"estimates": rows, "truth": truth}
    diffs = differences(arrays, rankings) if ranked_list else []
    for d in diffs:
        if oracle is not None:
            d["truth"] = policies[d["a"]]["truth"]["list"] - policies[d["b"]]["truth"]["list"]
            d["covered"] = bool(d["ci_low"] <= d["truth"] <= d["ci_high"])
    s = len(arrays.session_ids)
    return {"policies": policies, "differences": diffs,
            "log": {"sessions": s, "rows": int(arrays.shown.sum()), "slate_size": log.slate_size,
                    "contexts": int(len(arrays.contexts)), "ctr": float(arrays.click[arrays.shown].mean()),
                    **{k: log.meta.get(k) for k in ("name", "propensity", "policy", "source", "window")}},
            "estimators": [e for e in ESTIMATORS if any(e in p["estimates"] for p in policies.values())]}


# ----------------------------------------------------------------------------------------------------------
# report


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def format_report(res: dict) -> str:
    """report.md: the log, then one table per quantity (top slot, list) of every policy x estimator."""
    lg = res["log"]
    lines = [f"# Off-policy evaluation: {lg.get('name') or 'log'}", "",
             f"Log: {lg['sessions']:,} sessions, {lg['rows']:,} impressions, slate size {lg['slate_size']}, "
             f"{lg['contexts']:,} distinct contexts, CTR {lg['ctr']:.4f}; propensities: {lg.get('propensity')}.",
             f"Logging policy: {lg.get('policy') or 'not described'}.", f"Source: {lg.get('source') or '-'}.", "",
             "Estimates with 95% intervals (normal over sessions; SNIPS by the delta method). ESS: effective "
             "sample size of the importance weights, (sum w)^2 / sum w^2; matches: logged impressions where the "
             "target policy's item was shown at its position.", ""]
    has_truth = any(p["truth"] is not None for p in res["policies"].values())
    for target, title in (("top_slot", "Top slot: P(click) of the first item"),
                          ("list", f"Ranked list: expected clicks on the top {lg['slate_size']} positions")):
        ests = [e for e in res["estimators"] if TARGETS[e] == target]
        if not ests:
            continue
        lines += [f"## {title}", ""]
        head = "| policy | estimator | estimate | 95% CI | ESS | matches |"
        sep = "|---|---|---:|---|---:|---:|"
        if has_truth:
            head += " truth | error | CI covers truth |"
            sep += "---:|---:|---|"
        lines += [head, sep]
        for name, p in res["policies"].items():
            for e in ests:
                r = p["estimates"][e]
                row = (f"| {name} | {ESTIMATOR_NAMES[e]} | {_fmt(r['value'])} | [{_fmt(r['ci_low'])}, "
                       f"{_fmt(r['ci_high'])}] | {r['ess']:,.0f} | {r['matches']:,} |")
                if has_truth:
                    row += f" {_fmt(r.get('truth'))} | {_fmt(r.get('error'), 4)} | {'yes' if r.get('covered') else 'no'} |"
                lines.append(row)
        lines.append("")
    if res.get("differences"):
        lines += ["## Paired differences (item-position IPS, expected clicks on the list)", "",
                  "Both policies are estimated on the same sessions, so the interval of the difference is the paired "
                  "one (normal over sessions of the difference of their per-session terms).", ""]
        head, sep = "| a | b | a - b | 95% CI |", "|---|---|---:|---|"
        if has_truth:
            head, sep = head + " truth | CI covers truth |", sep + "---:|---|"
        lines += [head, sep]
        for d in res["differences"]:
            row = f"| {d['a']} | {d['b']} | {d['difference']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |"
            if has_truth:
                row += f" {d['truth']:+.4f} | {'yes' if d['covered'] else 'no'} |"
            lines.append(row)
        lines.append("")
    if res.get("ranking"):
        lines += ["## Which policy is better", "", res["ranking"], ""]
    lines += ["![Estimates with 95% intervals; the truth as a black mark](estimates.png)", ""]
    lines += ["References: Horvitz & Thompson 1952 (IPS); Swaminathan & Joachims 2015 (SNIPS); Dudík, Langford & "
              "Li 2011 (DR); Li et al. 2018, Offline evaluation of ranking policies with click models "
              "(item-position estimator).", ""]
    return "\n".join(lines)


def compare_text(res: dict, a: str, b: str, estimator: str = "ip_ips") -> str | None:
    """One sentence: which of policies ``a`` and ``b`` has the higher estimate, whether the intervals separate,
    and (with truth) how close each estimate is to it."""
    p = res["policies"]
    if a not in p or b not in p or estimator not in p[a]["estimates"]:
        return None
    ea, eb = p[a]["estimates"][estimator], p[b]["estimates"][estimator]
    hi, lo = (a, b) if ea["value"] >= eb["value"] else (b, a)
    sep = p[hi]["estimates"][estimator]["ci_low"] > p[lo]["estimates"][estimator]["ci_high"]
    text = (f"By {ESTIMATOR_NAMES[estimator]}, {hi} has the higher estimated value "
            f"({_fmt(p[hi]['estimates'][estimator]['value'])} against {_fmt(p[lo]['estimates'][estimator]['value'])}"
            f"; the 95% intervals {'do not overlap' if sep else 'overlap'}")
    pair = [d for d in res.get("differences", []) if {d["a"], d["b"]} == {hi, lo} and d["estimator"] == estimator]
    if pair:
        d = pair[0]
        sign = 1 if d["a"] == hi else -1
        lo_d, hi_d = sorted((sign * d["ci_low"], sign * d["ci_high"]))
        text += (f"; paired difference {hi} - {lo} {sign * d['difference']:+.4f}, 95% CI [{lo_d:+.4f}, {hi_d:+.4f}]"
                 f"{', excludes 0' if lo_d > 0 else ', includes 0'}")
    text += ")."
    if p[a]["truth"] is not None:
        parts = [f"{n}: estimate {_fmt(p[n]['estimates'][estimator]['value'])}, truth "
                 f"{_fmt(p[n]['estimates'][estimator]['truth'])} (error "
                 f"{100 * p[n]['estimates'][estimator]['error'] / max(p[n]['estimates'][estimator]['truth'], 1e-12):+.1f}%"
                 f", {'inside' if p[n]['estimates'][estimator]['covered'] else 'outside'} the interval)"
                 for n in (a, b)]
        text += " " + "; ".join(parts) + "."
    return text


def plot_estimates(res: dict, path: Path) -> None:
    """estimates.png: per quantity, each policy x estimator as a point with its interval, the truth as a mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in ("top_slot", "list") if any(TARGETS[e] == t for e in res["estimators"])]
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.2), squeeze=False)
    names = list(res["policies"])
    for ax, target in zip(axes[0], targets):
        ests = [e for e in res["estimators"] if TARGETS[e] == target]
        width = 0.8 / max(len(ests), 1)
        for j, e in enumerate(ests):
            x = np.arange(len(names)) + (j - (len(ests) - 1) / 2) * width
            v = np.array([res["policies"][n]["estimates"][e]["value"] for n in names])
            lo = np.array([res["policies"][n]["estimates"][e]["ci_low"] for n in names])
            hi = np.array([res["policies"][n]["estimates"][e]["ci_high"] for n in names])
            ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="o", capsize=3, label=ESTIMATOR_NAMES[e])
        for i, n in enumerate(names):
            t = res["policies"][n]["truth"]
            if t is not None:
                ax.hlines(t[target], i - 0.45, i + 0.45, colors="black", linewidth=2,
                          label="truth (oracle)" if i == 0 else None)
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_title("top slot: P(click)" if target == "top_slot" else "list: expected clicks")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res: dict, out: str | Path, overwrite: bool = False) -> None:
    """The report folder: report.md, results.json, estimates.png, report.html (written last)."""
    from offline_eval.html_report import write_html

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        plot_estimates(res, tmp / "estimates.png")
        (tmp / "report.md").write_text(format_report(res), encoding="utf-8")
        write_json(tmp / "results.json", res)
        write_html(tmp)


__all__ = ["SessionArrays", "compare_text", "estimate_policy", "format_report", "oracle_truth", "read_policy_file",
           "run_ope", "session_arrays", "system_rankings", "top_ctr_policy", "write_report"]
