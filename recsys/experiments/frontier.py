"""The latency-quality frontier of a trained engine's serving-time knobs (``recsys experiment frontier``).

Grid: ``retrieve_k`` (candidates retrieved) x ``prerank_k`` (the pre-ranker's cut-off) x the ANN search width
(``nprobe`` IVF cells visited, or the HNSW beam ``efSearch``; ``exact`` = exhaustive inner-product search over
the same item vectors, the width's ceiling). The final k (items shown) is the bundle's last cut-off. A point is
feasible when ``k <= prerank_k <= retrieve_k``; infeasible ones are skipped and listed.

Nothing is retrained: every stage keeps the weights it learnt at the bundle's cut-offs, so a point away from
the bundle's own configuration is a serving-time what-if (a pre-ranker trained on 1000 retrieved candidates
scoring 250 of them, a heavy ranker trained on 100 pre-ranked ones scoring 25).

Per point, on the same B sampled test users (``EvalData`` with ``eval.max_users = B``, ``eval.seed``: the users
``recsys evaluate --set eval.max_users=B --set eval.seed=S`` evaluates):

* quality through the evaluator (:func:`offline_eval.evaluator.evaluate`): ndcg@10, recall@10 and the funnel's
  recall per stage (retrieval recall@retrieve_k, pre-ranker recall@prerank_k), the engine ranking its final k
  (the evaluator would otherwise ask for 100 items and lift every cut-off below 100 to 100);
* latency: ``Engine.rank`` of one user's request at a time on one thread (torch, BLAS/OpenMP through
  threadpoolctl, FAISS), after a warm-up, timed with ``time.perf_counter``; p50 / p95 / p99 / mean over the
  B requests (``numpy.percentile``, linear interpolation). The points are timed interleaved: for each user,
  every point in an order shuffled per user (seeded), so load changes on a shared machine hit every point
  alike instead of one point's whole run. The time of encoding an HTTP request into a ``Requests`` batch is
  not included (the prepared request is timed, as ``benchmarks/bench_funnel.py`` does).

The search width: the bundle's index as served uses its stored width, except that auto mode
(:meth:`recsys.retrieval.index.AnnIndex.auto_exact`) searches exhaustively when N <= 16384 or k >= N / 8, which
on small catalogues means always. A grid point with an integer width forces the index structure
(``AnnIndex.exact = False``) at that width; ``exact`` forces exhaustive search. The bundle's own point runs in
auto mode, exactly as served, and is labelled with the width auto mode resolves to for its retrieve_k. FAISS
HNSW raises a beam narrower than the requested k to k (the ANN source asks for k plus the request's longest
exclusion list), so efSearch values below that have no effect. ``index`` (a factory string) replaces the
bundle's index by one built here over the bundle's own item vectors (e.g. ``IVF64,Flat`` to sweep nprobe on a
bundle with an HNSW or Flat index); the two-tower is unchanged.

The Pareto frontier is taken on (p99 latency, ndcg@10) and the best point under the budget is the highest
ndcg@10 with p99 <= budget (:mod:`offline_eval.frontier`), compared with the bundle's point by a paired
bootstrap over the users (:func:`offline_eval.evaluator.compare`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offline_eval.evaluator import EvalData, SystemEval, compare, evaluate
from offline_eval.frontier import best_under_budget, frontier_order, pareto_mask, percentile_ci
from recsys.engine import Engine
from recsys.io import atomic_output_dir, write_json
from recsys.types import Requests, Results

logger = logging.getLogger(__name__)

EXACT = "exact"
QUALITY = "ndcg@10"
#: default search widths per index kind (besides ``exact``)
DEFAULT_WIDTHS = {"nprobe": (1, 4, 16, 64), "efSearch": (128, 512, 2048)}
DEFAULT_RETRIEVE_KS = (250, 500, 1000)
DEFAULT_PRERANK_KS = (25, 50, 100)


# ------------------------------------------------------------------------------------------------------------
# Grid
# ------------------------------------------------------------------------------------------------------------


def parse_ints(flag: str, text: str) -> tuple[int, ...]:
    """``"250,500,1000"`` -> (250, 500, 1000): distinct positive integers; a one-line error naming ``flag``."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise ValueError(f"{flag}: expected a comma-separated list of positive integers, got {text!r}")
    out = []
    for t in parts:
        try:
            v = int(t)
        except ValueError:
            raise ValueError(f"{flag}: {t!r} is not an integer (expected e.g. 250,500,1000)") from None
        if v < 1:
            raise ValueError(f"{flag}: values must be >= 1, got {v}")
        out.append(v)
    return tuple(dict.fromkeys(out))


def parse_widths(flag: str, text: str) -> tuple[str | int, ...]:
    """``"exact,1,4,16"`` -> ("exact", 1, 4, 16): ``exact`` and positive integers; one-line errors naming ``flag``."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise ValueError(f"{flag}: expected a comma-separated list of 'exact' and positive integers, got {text!r}")
    out: list[str | int] = []
    for t in parts:
        if t.lower() == EXACT:
            out.append(EXACT)
            continue
        out.extend(parse_ints(flag, t))
    return tuple(dict.fromkeys(out))


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration: retrieve_k, the pre-ranker's cut-off (None: no pre-ranker), the search width
    (``exact`` or an integer nprobe / efSearch), and ``auto``: run the index in its auto mode (the bundle's
    point, as served) instead of forcing ``width``."""

    retrieve_k: int
    prerank_k: int | None
    width: str | int
    auto: bool = False

    @property
    def key(self) -> tuple:
        return (self.retrieve_k, self.prerank_k, str(self.width))

    @property
    def label(self) -> str:
        pk = "-" if self.prerank_k is None else self.prerank_k
        return f"r{self.retrieve_k}/p{pk}/w{self.width}"


def grid_points(retrieve_ks: Sequence[int], prerank_ks: Sequence[int | None], widths: Sequence[str | int], k: int,
                bundle: Point) -> tuple[list[Point], list[dict]]:
    """The feasible points of the grid (``k <= prerank_k <= retrieve_k``; ``retrieve_k >= k`` without a
    pre-ranker) and the skipped ones with the reason. ``bundle`` (the bundle's own point, in auto mode)
    replaces the grid point with its key, or is added after the grid."""
    points: list[Point] = []
    skipped: list[dict] = []
    for rk in retrieve_ks:
        for pk in prerank_ks:
            why = None
            if pk is not None and pk > rk:
                why = f"prerank_k {pk} > retrieve_k {rk}"
            elif pk is not None and pk < k:
                why = f"prerank_k {pk} < the final k {k}"
            elif rk < k:
                why = f"retrieve_k {rk} < the final k {k}"
            for w in widths:
                if why is not None:
                    skipped.append({"retrieve_k": rk, "prerank_k": pk, "width": w, "reason": why})
                    continue
                p = Point(rk, pk, w)
                points.append(bundle if p.key == bundle.key else p)
    if all(p.key != bundle.key for p in points):
        points.append(bundle)
    return points, skipped


def default_widths(param: str | None) -> tuple[str | int, ...]:
    return (EXACT,) + DEFAULT_WIDTHS.get(param or "", ())


def check_widths(widths: Sequence[str | int], param: str | None, largest: int | None, factory: str,
                 flag: str = "--search-width") -> tuple[tuple[str | int, ...], list[dict]]:
    """Widths valid for the index: a Flat index (``param`` None) has no width (only ``exact``); IVF nprobe
    values above nlist are all nlist, so only the first is kept (the others returned as skipped)."""
    numeric = [w for w in widths if w != EXACT]
    if param is None and numeric:
        raise ValueError(f"{flag}: the index ({factory}) has no search width; use 'exact' only, or rebuild the "
                         "index with --index IVF64,Flat or --index HNSW32")
    kept: list[str | int] = []
    skipped: list[dict] = []
    seen: set = set()
    for w in widths:
        eff = w if (w == EXACT or largest is None) else min(int(w), largest)
        if eff in seen:
            skipped.append({"width": w, "reason": f"{param} {w} is {param} {eff} (nlist {largest})"})
            continue
        seen.add(eff)
        kept.append(w)
    return tuple(kept), skipped


# ------------------------------------------------------------------------------------------------------------
# Engines per point
# ------------------------------------------------------------------------------------------------------------


def prerank_stage(engine: Engine) -> str | None:
    """The name of the engine's pre-ranker: the scoring stage named ``prerank``, else the first of two or more
    scoring stages; None when there is no stage before the last."""
    names = engine.stage_names
    if "prerank" in names and names.index("prerank") < len(names) - 1:
        return "prerank"
    return names[0] if len(names) >= 2 else None


def point_engine(engine: Engine, point: Point, prerank: str | None) -> Engine:
    """``engine`` with the point's cut-offs (same stage objects, nothing refitted)."""
    stages = [(s, point.prerank_k if (s.name == prerank and point.prerank_k is not None) else c)
              for s, c in engine.stages]
    return dataclasses.replace(engine, retrieve_k=point.retrieve_k, stages=stages, name=point.label)


@dataclasses.dataclass
class IndexSetting:
    """Puts the retrieval index in a point's search mode; ``stored`` is the width the bundle's index carries
    (restored for auto mode and at the end)."""

    index: Any
    param: str | None
    stored: int | None

    def apply(self, point: Point) -> None:
        if point.auto:
            self.index.exact = None
            self._width(self.stored)
        elif point.width == EXACT:
            self.index.exact = True
        else:
            self.index.exact = False
            self._width(int(point.width))

    def restore(self) -> None:
        self.index.exact = None
        self._width(self.stored)

    def _width(self, w: int | None) -> None:
        if w is None or self.param is None:
            return
        if self.param == "nprobe":
            self.index.set_search_params(nprobe=w)
        else:
            self.index.set_search_params(ef_search=w)


@dataclasses.dataclass
class AtK:
    """A Ranker that ranks with ``engine`` at its final ``k`` whatever k the caller asks for (fewer items are
    padded by the evaluator), so cut-offs below the evaluator's largest k stay what the point says."""

    engine: Engine
    k: int
    setting: IndexSetting
    point: Point
    name: str = "engine"

    def rank(self, requests: Requests, k: int) -> Results:
        self.setting.apply(self.point)
        return self.engine.rank(requests, min(int(k), self.k))


# ------------------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_thread():
    """torch, BLAS/OpenMP (threadpoolctl) and FAISS limited to one thread; restored on exit."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads = torch.get_num_threads()
    faiss_threads = faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def time_points(engines: Sequence[Engine], points: Sequence[Point], setting: IndexSetting, requests: Requests,
                k: int, warmup: int, seed: int, repeats: int = 1) -> tuple[np.ndarray, list[dict[str, list[float]]]]:
    """(P, R * B) milliseconds of ``engines[p].rank`` on request b alone (R = ``repeats`` passes over the B
    requests), and per point {stage: [ms, ...]}.

    One thread; every point first ranks the first ``warmup`` requests untimed; then for each request b the
    points run in an order shuffled per request (``seed``)."""
    n_p, b = len(engines), len(requests)
    singles = [requests.take(np.array([i])) for i in range(b)] * int(repeats)
    ms = np.zeros((n_p, len(singles)), dtype=np.float64)
    stages: list[dict[str, list[float]]] = [{} for _ in range(n_p)]
    rng = np.random.default_rng(seed)
    with one_thread():
        for p in range(n_p):
            setting.apply(points[p])
            for one in singles[:warmup]:
                engines[p].rank(one, k)
        for i, one in enumerate(singles):
            for p in rng.permutation(n_p):
                setting.apply(points[p])
                timings: dict[str, float] = {}
                t0 = time.perf_counter()
                engines[p].rank(one, k, timings=timings)
                ms[p, i] = (time.perf_counter() - t0) * 1000.0
                for name, v in timings.items():
                    stages[p].setdefault(name, []).append(v)
        setting.restore()
    return ms, stages


@dataclasses.dataclass
class FrontierResult:
    points: list[Point]
    rows: list[dict]
    evals: list[SystemEval]
    latency_ms: np.ndarray  # (P, B)
    skipped: list[dict]
    budget_ms: float
    bundle_index: int
    best_index: int | None
    on_frontier: np.ndarray
    frontier: np.ndarray
    best_vs_bundle: dict | None
    info: dict


def run_frontier(engine: Engine, data: EvalData, eval_cfg, points: list[Point], setting: IndexSetting, k: int,
                 budget_ms: float, warmup: int = 10, seed: int = 0, skipped: list[dict] | None = None,
                 info: dict | None = None, repeats: int = 1) -> FrontierResult:
    """Measure every point (quality through the evaluator on ``data``, single-request latency on the same
    users' requests, ``repeats`` passes) and find the frontier and the best point under ``budget_ms`` (see the
    module docstring). ``eval_cfg`` is the bundle's EvalConfig; its ks / metrics are set here (ndcg and recall
    at 10 and k). Each point also gets a 95% percentile-bootstrap interval of its p99 over its timed requests
    and the paired-bootstrap difference of its ndcg@10 to the bundle's point over the users."""
    prerank = prerank_stage(engine)
    engines = [point_engine(engine, p, prerank) for p in points]
    ecfg = dataclasses.replace(eval_cfg, ks=tuple(sorted({10, k})), metrics=("ndcg", "recall"), backend="local")
    evals = []
    t0 = time.perf_counter()
    for p, eng in zip(points, engines):
        evals.append(evaluate(AtK(eng, k, setting, p, name=p.label), data, ecfg, backend="local"))
    setting.restore()
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ms, stage_ms = time_points(engines, points, setting, data.requests, k, warmup, seed, repeats)
    latency_s = time.perf_counter() - t0

    bundle_i = next(i for i, p in enumerate(points) if p.auto)
    rows = []
    for i, (p, ev) in enumerate(zip(points, evals)):
        lat = latency_summary(ms[i])
        lat["p99_ci_ms"] = list(percentile_ci(ms[i], 99, seed=seed))
        d = compare(ev, evals[bundle_i], QUALITY, seed=seed)
        lat["vs_bundle"] = {key: d[key] for key in ("mean_diff", "ci_low", "ci_high", "p_value")}
        funnel = {s: v["recall"] for s, v in ev.funnel.items() if s != "final"}
        rows.append({
            "label": p.label, "retrieve_k": p.retrieve_k, "prerank_k": p.prerank_k, "width": p.width,
            "search": "auto" if p.auto else ("exhaustive" if p.width == EXACT else "index"),
            "bundle": p.auto, QUALITY: ev.means[QUALITY], f"recall@{k}": ev.means[f"recall@{k}"],
            "recall@10": ev.means["recall@10"], "funnel_recall": funnel, **lat,
            "stage_p50_ms": {s: float(np.percentile(v, 50)) for s, v in stage_ms[i].items()},
        })
    p99 = np.array([r["p99_ms"] for r in rows])
    q = np.array([r[QUALITY] for r in rows])
    mask = pareto_mask(p99, q)
    for r, m in zip(rows, mask):
        r["on_frontier"] = bool(m)
    best = best_under_budget(p99, q, budget_ms)
    vs = None if best is None or best == bundle_i else rows[best]["vs_bundle"]
    info = {**(info or {}), "eval_seconds": eval_s, "latency_seconds": latency_s, "users": data.n_users,
            "warmup": warmup, "repeats": int(repeats), "timed_requests": int(ms.shape[1]), "k": k,
            "prerank_stage": prerank}
    return FrontierResult(points, rows, evals, ms, list(skipped or []), budget_ms, bundle_i, best, mask,
                          frontier_order(p99, q), vs, info)


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(res: FrontierResult) -> str:
    info, k = res.info, res.info["k"]
    bundle = res.rows[res.bundle_index]
    param = info.get("width_param") or "none (Flat)"
    lines = [
        "# Latency-quality frontier", "",
        f"Bundle `{info.get('bundle')}` on `{info.get('data')}`: {info['users']} test users (seed "
        f"{info.get('seed')}), the same users for every point. Index: {info.get('index')} over "
        f"{info.get('n_items')} items (search width: {param}; {info.get('index_note', '')}).", "",
        f"**The stages were trained at the bundle's cut-offs** (retrieve_k {bundle['retrieve_k']}, prerank_k "
        f"{bundle['prerank_k']}, k {k}); every other point is a serving-time what-if with the same weights.", "",
        f"Quality: {QUALITY} and recall@{k} through the evaluator, the engine ranking its final k = {k}. Latency: "
        f"`Engine.rank` of one request at a time on one thread after {info['warmup']} warm-up requests per "
        f"point, points interleaved per user in a seeded random order; p50 / p95 / p99 over the "
        f"{info['timed_requests']} timed requests ({info['repeats']} pass(es) over the users). Latencies are measurements on this machine ({info.get('machine')}), not "
        "properties of the configuration: on a shared machine, read them as relative.", "",
        "## Grid", "",
        f"| retrieve_k | prerank_k | width | {QUALITY} | vs bundle [95% CI] | recall@{k} | retrieval recall | "
        "prerank recall | p50 ms | p95 ms | p99 ms [95% CI] | frontier |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    order = sorted(range(len(res.rows)), key=lambda i: (res.rows[i]["retrieve_k"], res.rows[i]["prerank_k"] or 0,
                                                        str(res.rows[i]["width"])))
    stage = info.get("prerank_stage")
    for i in order:
        r = res.rows[i]
        width = f"{r['width']} (bundle, as served)" if r["bundle"] else str(r["width"])
        tag = " **best**" if i == res.best_index else ""
        v, (lo, hi) = r["vs_bundle"], r["p99_ci_ms"]
        vs = "-" if r["bundle"] else f"{v['mean_diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]"
        lines.append(
            f"| {r['retrieve_k']} | {_fmt(r['prerank_k'])} | {width} | {r[QUALITY]:.4f} | {vs} | "
            f"{r[f'recall@{k}']:.4f} | {_fmt(r['funnel_recall'].get('retrieval'))} | "
            f"{_fmt(r['funnel_recall'].get(stage))} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} [{lo:.1f}, {hi:.1f}] | {'yes' if r['on_frontier'] else ''}{tag} |")
    lines += ["", f"vs bundle: the difference in {QUALITY} to the bundle's point, paired over the users, with its 95% "
              "bootstrap interval. p99 [95% CI]: percentile-bootstrap interval over the timed requests. A frontier "
              "whose neighbours' intervals overlap is ordered by noise as much as by the configuration.", "",
              "Retrieval / prerank recall: the share of a user's relevant items among the candidates that stage "
              "passes on (the ceiling it leaves to the stages after it).", "", "![latency-quality frontier]"
              "(frontier.png)", "", "## Frontier and budget", ""]
    fr = [res.rows[i] for i in res.frontier]
    lines.append("Pareto frontier on (p99 latency, " + QUALITY + "), by latency: " + "; ".join(
        f"{r['label']} ({r['p99_ms']:.2f} ms, {r[QUALITY]:.4f})" for r in fr) + ". Each frontier point is the "
        "best configuration for every p99 budget from its own p99 up to the next frontier point's.")
    lines.append("")
    if res.best_index is None:
        fastest = min(res.rows, key=lambda r: r["p99_ms"])
        lines.append(f"**No point has p99 <= {res.budget_ms:g} ms** (the fastest: {fastest['label']} at "
                     f"{fastest['p99_ms']:.2f} ms).")
    else:
        b = res.rows[res.best_index]
        lines.append(f"**Best under a p99 budget of {res.budget_ms:g} ms: retrieve_k {b['retrieve_k']}, prerank_k "
                     f"{_fmt(b['prerank_k'])}, width {b['width']}**: {QUALITY} {b[QUALITY]:.4f}, p50 "
                     f"{b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms.")
        if res.best_index == res.bundle_index:
            lines.append("That is the bundle's own configuration.")
        elif res.best_vs_bundle is not None:
            c = res.best_vs_bundle
            lines.append(f"Against the bundle's configuration ({bundle[QUALITY]:.4f} at p99 {bundle['p99_ms']:.2f} "
                         f"ms): difference {c['mean_diff']:+.4f}, 95% paired-bootstrap CI over the users "
                         f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] (p = {c['p_value']:.3f}).")
    lines.append("")
    if res.skipped:
        lines += ["## Skipped", ""] + [f"- retrieve_k {s.get('retrieve_k', '*')}, prerank_k {s.get('prerank_k', '*')},"
                                       f" width {s.get('width', '*')}: {s['reason']}" for s in res.skipped] + [""]
    lines += ["## Notes", "",
              "- The bundle's point runs the index in its auto mode, exactly as served; other points force the "
              "index structure at their width, or exhaustive search (`exact`).",
              "- HNSW: FAISS raises a beam narrower than the requested k to k (k + the request's longest exclusion "
              "list), so efSearch values below that change nothing.",
              "- Quality is measured on batches (the evaluator's shards), latency on single requests. With an "
              "HNSW index the beam follows the batch's longest exclusion list, so a batch can search slightly "
              "wider than the timed single request; with IVF and exact search the candidates are the same.",
              f"- Wall time: quality {info['eval_seconds']:.1f} s, latency {info['latency_seconds']:.1f} s, total "
              f"{info.get('wall_seconds', float('nan')):.1f} s.", ""]
    return "\n".join(lines)


def plot(res: FrontierResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res.rows
    p99 = np.array([r["p99_ms"] for r in rows])
    p50 = np.array([r["p50_ms"] for r in rows])
    q = np.array([r[QUALITY] for r in rows])
    widths = list(dict.fromkeys(str(r["width"]) for r in rows))
    cmap = plt.get_cmap("viridis", max(len(widths), 2))
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for j, w in enumerate(widths):
        sel = np.array([str(r["width"]) == w for r in rows])
        ax.scatter(p99[sel], q[sel], color=cmap(j), s=30, label=f"width {w}", zorder=3)
    ax.scatter(p50, q, color="lightgray", s=10, zorder=2, label="same points at p50")
    fr = res.frontier
    ax.step(p99[fr], q[fr], where="post", color="tab:red", linewidth=1.5, zorder=4, label="Pareto frontier (p99)")
    b = res.bundle_index
    ax.scatter([p99[b]], [q[b]], marker="*", s=260, facecolor="none", edgecolor="black", linewidth=1.4, zorder=5,
               label="bundle's config (as served)")
    if res.best_index is not None:
        i = res.best_index
        ax.scatter([p99[i]], [q[i]], marker="o", s=200, facecolor="none", edgecolor="tab:red", linewidth=1.8,
                   zorder=5, label=f"best under {res.budget_ms:g} ms")
        ax.annotate(rows[i]["label"], (p99[i], q[i]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.axvline(res.budget_ms, color="tab:red", linestyle="--", linewidth=1, label=f"budget {res.budget_ms:g} ms")
    ax.set_xlabel("latency per request, p99 (ms, one thread)")
    ax.set_ylabel(f"{QUALITY} ({res.info['users']} users)")
    ax.set_title("Latency-quality frontier (retrieve_k x prerank_k x search width)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_json(res: FrontierResult) -> dict:
    best = None if res.best_index is None else res.rows[res.best_index]
    return {
        "quality_metric": QUALITY, "latency_metric": "p99_ms", "budget_ms": res.budget_ms,
        "points": res.rows, "skipped": res.skipped,
        "bundle_point": res.rows[res.bundle_index]["label"],
        "best_under_budget": None if best is None else best["label"],
        "best": best, "best_vs_bundle": res.best_vs_bundle,
        "frontier": [res.rows[i]["label"] for i in res.frontier],
        "user_ids": res.evals[0].user_ids.tolist(),
        **res.info,
    }


def write_report(res: FrontierResult, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``report.md``, ``frontier.png``, ``results.json`` and ``report.html`` (last) into ``out``."""
    from offline_eval.html_report import write_html

    out = Path(out)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        plot(res, tmp / "frontier.png")
        (tmp / "report.md").write_text(markdown(res), encoding="utf-8")
        write_json(tmp / "results.json", to_json(res))
        write_html(tmp, title="Latency-quality frontier")
    logger.info("wrote the frontier report to %s", out)
    return out


def machine_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, load average {load:.2f} at the start"


__all__ = ["AtK", "EXACT", "FrontierResult", "IndexSetting", "Point", "check_widths", "default_widths",
           "grid_points", "markdown", "parse_ints", "parse_widths", "plot", "point_engine", "prerank_stage",
           "run_frontier", "time_points", "to_json", "write_report"]
