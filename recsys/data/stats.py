"""Descriptive statistics of a canonical dataset, for the CLI (``recsys data stats``) and reports.

:func:`dataset_stats` returns plain JSON-able data; :func:`format_stats` renders it as a Markdown block.
All counts are over the interactions table; U = distinct users, I = distinct items, N = rows.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd

from recsys.data.schema import Dataset, Kind, Role

__all__ = ["dataset_stats", "format_stats", "gini", "top_share"]

MAX_EXACT_HISTOGRAM = 50  # graded labels with at most this many distinct values get an exact histogram
HISTOGRAM_BINS = 10


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (I,): 0 = all equal, -> 1 = all mass on one item.

    With counts sorted ascending x_(1) <= ... <= x_(n):
    ``G = 2 * sum_i i * x_(i) / (n * sum_i x_i) - (n + 1) / n``, which equals the mean absolute difference
    ``sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))`` (Gini 1912; see Damgaard & Weiner, Ecology 81(4), 2000).
    Returns 0.0 for an empty or all-zero input.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), float(x.sum()) if len(x) else 0.0
    if n == 0 or total == 0.0:
        return 0.0
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(i, x) / (n * total) - (n + 1.0) / n)


def top_share(counts: np.ndarray, fraction: float) -> float:
    """Share of the total held by the ``ceil(fraction * I)`` largest of ``counts`` (I,) (at least one)."""
    x = np.asarray(counts, dtype=np.float64)
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    k = max(1, math.ceil(fraction * len(x)))
    top = np.partition(x, len(x) - k)[len(x) - k :]
    return float(top.sum() / x.sum())


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _histogram(v: np.ndarray) -> dict:
    """Exact value counts (few distinct values) or ``HISTOGRAM_BINS`` equal-width bins."""
    values, counts = np.unique(v, return_counts=True)
    if len(values) <= MAX_EXACT_HISTOGRAM:
        return {"type": "exact", "values": [float(x) for x in values], "counts": [int(c) for c in counts]}
    counts, edges = np.histogram(v, bins=HISTOGRAM_BINS)
    return {"type": "bins", "edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _per(counts: np.ndarray) -> dict:
    if len(counts) == 0:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {
        "mean": float(counts.mean()),
        "median": float(np.median(counts)),
        "min": int(counts.min()),
        "max": int(counts.max()),
    }


def dataset_stats(ds: Dataset) -> dict:
    """Sizes, label rates, rating histograms, time span, activity and popularity skew of ``ds``.

    Keys: ``name``, ``tables`` (rows per table), ``interactions`` (N), ``users`` / ``items`` (U, I distinct in
    interactions), ``catalogue_users`` / ``catalogue_items`` (rows of the users/items tables, if any),
    ``positive_label``, ``labels`` (per label: kind, mean, and for graded labels a histogram), ``time``
    (ISO min/max and span in days), ``per_user`` / ``per_item`` (mean/median/min/max interactions),
    ``popularity`` (Gini of item interaction counts, share of interactions of the top 1% and 10% items),
    ``density`` (distinct (user, item) pairs / (U * I)) and ``duplicate_pairs`` (rows repeating a pair).
    """
    spec = ds.schema.tables["interactions"]
    ucol, icol = spec.names(Role.USER_ID)[0], spec.names(Role.ITEM_ID)[0]
    tcol = spec.names(Role.TIMESTAMP)[0]
    inter = ds.interactions
    n = len(inter)
    ucodes, uniq_u = pd.factorize(inter[ucol])
    icodes, uniq_i = pd.factorize(inter[icol])
    n_users, n_items = len(uniq_u), len(uniq_i)
    per_user = np.bincount(ucodes, minlength=n_users)
    per_item = np.bincount(icodes, minlength=n_items)
    pairs = int(len(np.unique(ucodes.astype(np.int64) * max(n_items, 1) + icodes))) if n else 0
    labels: dict[str, dict] = {}
    for name in ds.schema.labels:
        cspec = spec.columns[name]
        v = inter[name].to_numpy(dtype=np.float64)
        entry: dict = {"kind": cspec.kind.value if cspec.kind else None, "mean": float(v.mean()) if n else 0.0}
        if cspec.kind is Kind.GRADED:
            entry["range"] = list(cspec.range) if cspec.range else None
            entry["histogram"] = _histogram(v) if n else None
        labels[name] = entry
    ts = inter[tcol].to_numpy()
    time = {}
    if n:
        t0, t1 = int(ts.min()), int(ts.max())
        time = {"min": _iso(t0), "max": _iso(t1), "days": (t1 - t0) / 86400.0}
    out = {
        "name": ds.schema.name,
        "tables": {t: int(len(df)) for t, df in ds.tables.items()},
        "interactions": n,
        "users": n_users,
        "items": n_items,
        "positive_label": ds.schema.positive_label,
        "has_impressions": ds.schema.has_impressions,
        "labels": labels,
        "time": time,
        "per_user": _per(per_user),
        "per_item": _per(per_item),
        "popularity": {
            "gini": gini(per_item),
            "top1pct_share": top_share(per_item, 0.01),
            "top10pct_share": top_share(per_item, 0.10),
        },
        "density": pairs / (n_users * n_items) if n else 0.0,
        "duplicate_pairs": n - pairs,
    }
    if ds.users is not None:
        out["catalogue_users"] = int(len(ds.users))
    if ds.items is not None:
        out["catalogue_items"] = int(len(ds.items))
    return out


def _fmt_hist(h: dict) -> str:
    if h["type"] == "exact":
        return ", ".join(f"{v:g}: {c}" for v, c in zip(h["values"], h["counts"]))
    e = h["edges"]
    return ", ".join(f"[{e[i]:.3g}, {e[i + 1]:.3g}): {c}" for i, c in enumerate(h["counts"]))


def format_stats(stats: dict) -> str:
    """A readable Markdown block of :func:`dataset_stats` output."""
    s = stats
    lines = [f"## Dataset {s['name']}", ""]
    lines.append("| | |")
    lines.append("|---|---|")
    lines.append("| tables | " + ", ".join(f"{t}: {r:,}" for t, r in s["tables"].items()) + " |")
    lines.append(f"| interactions | {s['interactions']:,} |")
    users = f"{s['users']:,}" + (f" (users table: {s['catalogue_users']:,})" if "catalogue_users" in s else "")
    items = f"{s['items']:,}" + (f" (items table: {s['catalogue_items']:,})" if "catalogue_items" in s else "")
    lines.append(f"| users | {users} |")
    lines.append(f"| items | {items} |")
    lines.append(f"| density | {s['density']:.4%} (duplicate (user, item) rows: {s['duplicate_pairs']:,}) |")
    if s["time"]:
        t = s["time"]
        lines.append(f"| time span | {t['min']} .. {t['max']} ({t['days']:.1f} days) |")
    for key, what in (("per_user", "per user"), ("per_item", "per item")):
        p = s[key]
        lines.append(
            f"| interactions {what} | mean {p['mean']:.2f}, median {p['median']:g}, min {p['min']}, max {p['max']} |"
        )
    pop = s["popularity"]
    lines.append(
        f"| popularity | Gini {pop['gini']:.3f}; top 1% items: {pop['top1pct_share']:.1%} of interactions; "
        f"top 10%: {pop['top10pct_share']:.1%} |"
    )
    lines.append("")
    impressions = ", with impressions" if s["has_impressions"] else ""
    lines.append(f"Labels (positive label: `{s['positive_label']}`{impressions}):")
    lines.append("")
    for name, lab in s["labels"].items():
        line = f"- `{name}` ({lab['kind']}): mean {lab['mean']:.4f}"
        if lab.get("range"):
            line += f", range [{lab['range'][0]:g}, {lab['range'][1]:g}]"
        lines.append(line)
        if lab.get("histogram"):
            lines.append(f"  - histogram: {_fmt_hist(lab['histogram'])}")
    return "\n".join(lines) + "\n"
