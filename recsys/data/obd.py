"""Import the Open Bandit Dataset's public CSV files into a bandit-log folder (:mod:`recsys.data.bandit_log`).

The Open Bandit Dataset (Saito, Aihara, Matsutani & Narita 2021, "Open Bandit Dataset and Pipeline: Towards
Realistic and Reproducible Off-Policy Evaluation", NeurIPS Datasets and Benchmarks; ZOZOTOWN fashion
recommendations) ships ``{behavior_policy}/{campaign}/{campaign}.csv`` (behavior_policy ``random`` or ``bts``,
campaign ``all``, ``men``, ``women``) and ``item_context.csv`` beside it. Each CSV row is one impression:

    (unnamed first column)  the row index (pandas' index, as the ``obp`` loader reads it: ``index_col=0``)
    timestamp               time of the impression, e.g. ``2019-11-24 00:00:17.418051+00:00`` (or Unix seconds)
    item_id                 the item shown, 0..n_items-1 (80 items in "all", 34 in "men", 46 in "women")
    position                1, 2 or 3: left, centre, right slot of the recommendation widget (1-based)
    click                   1 clicked, 0 not
    propensity_score        the behaviour policy's probability of showing that item at that position
                            (uniform random: 1 / n_items for every row)
    user_feature_0..3       hashed user features (strings); user-item_affinity_<i>: past clicks on item i

``item_context.csv``: (index column), ``item_id``, ``item_feature_0`` (numeric), ``item_feature_1..3`` (hashed).

**Mapping.** Rows are sorted by time (stable, as ``obp`` does); each row becomes its own session (the CSV has
no slate identifier: the three positions of a widget are separate rows) with ``position = CSV position - 1``
(0-based) and ``slate_size`` the largest CSV position; ``user_id`` is null (the dataset has no user ids; the
column keeps the nullable integer dtype ``Int64``); ``propensity = propensity_score``, an item-position
marginal (``propensity: item_position``), so both the top-slot estimators (on position-0 rows) and the
item-position estimator apply. The list estimator then averages each position over the sessions that logged
it. ``n_items`` is the number of rows of ``item_context.csv`` (else the largest item_id + 1). The user and item
features are checked for presence only: the context-free policies of ``recsys experiment ope`` do not use them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.bandit_log import BanditLog, write_bandit_log

logger = logging.getLogger(__name__)

REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


def _timestamps(col: pd.Series, where: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(np.int64)
    try:
        t = pd.to_datetime(col, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: column 'timestamp': not a date-time ({str(exc).splitlines()[0]})") from None
    if t.isna().any():
        raise ValueError(f"{where}: column 'timestamp': empty at data row {int(np.flatnonzero(t.isna())[0]) + 1}")
    return ((t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)  # any datetime unit


def _integers(df: pd.DataFrame, c: str, where: str) -> np.ndarray:
    col = df[c]
    if not pd.api.types.is_integer_dtype(col):
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() | (num != np.round(num))
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{where}: column {c!r}: expected integers, got {col.iloc[r]!r} at data row {r + 1}")
        col = num
    return col.to_numpy().astype(np.int64)


def read_obd_csv(csv: str | Path, item_context: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Read an Open Bandit CSV (and optionally its ``item_context.csv``) -> (bandit-log table, log.yaml meta)."""
    csv = Path(csv)
    if not csv.is_file():
        raise ValueError(f"{csv}: not found; expected an Open Bandit CSV such as random/all/all.csv")
    try:
        df = pd.read_csv(csv)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{csv}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{csv}: missing column(s) {missing}; an Open Bandit CSV has {list(REQUIRED)} and "
                         "user_feature_* columns")
    if not any(c.startswith("user_feature") for c in df.columns):
        logger.warning("%s: no user_feature_* column (the Open Bandit CSV has user_feature_0..3)", csv)
    if len(df) == 0:
        raise ValueError(f"{csv}: no rows")
    ts = _timestamps(df["timestamp"], str(csv))
    order = np.argsort(ts, kind="stable")
    df, ts = df.iloc[order].reset_index(drop=True), ts[order]
    pos = _integers(df, "position", str(csv))
    if (pos < 1).any():
        r = int(np.flatnonzero(pos < 1)[0])
        raise ValueError(f"{csv}: column 'position': expected 1-based positions (1, 2, 3), got {pos[r]} "
                         f"(data row {order[r] + 1})")
    prop = pd.to_numeric(df["propensity_score"], errors="coerce").to_numpy(np.float64)
    bad = ~((prop > 0) & (prop <= 1))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{csv}: column 'propensity_score': expected a probability in (0, 1], got "
                         f"{df['propensity_score'].iloc[r]!r} (data row {order[r] + 1})")
    items = _integers(df, "item_id", str(csv))
    n_items = int(items.max()) + 1
    if item_context is not None:
        ic_path = Path(item_context)
        if not ic_path.is_file():
            raise ValueError(f"{ic_path}: --item-context not found")
        ic = pd.read_csv(ic_path)
        if "item_id" not in ic.columns:
            raise ValueError(f"{ic_path}: missing column 'item_id'; item_context.csv has item_id and "
                             "item_feature_0..3")
        known = set(_integers(ic, "item_id", str(ic_path)).tolist())
        unknown = sorted(set(items.tolist()) - known)
        if unknown:
            raise ValueError(f"{csv}: column 'item_id': item {unknown[0]} is not in {ic_path}")
        n_items = len(known)
    table = pd.DataFrame({
        "session_id": np.arange(len(df), dtype=np.int64),
        "timestamp": ts,
        "user_id": pd.array([pd.NA] * len(df), dtype="Int64"),
        "position": pos - 1,
        "item_id": items,
        "click": _integers(df, "click", str(csv)),
        "propensity": prop,
    })
    policy = csv.parent.parent.name if csv.parent.parent.name in ("random", "bts") else "unknown"
    meta = {"name": f"obd-{policy}-{csv.stem}", "slate_size": int(pos.max()), "propensity": "item_position",
            "policy": f"Open Bandit Dataset behaviour policy {policy!r}",
            "source": f"Open Bandit Dataset CSV {csv.name} (one session per row)", "n_items": n_items}
    return table, meta


def import_obd(csv: str | Path, out: str | Path, item_context: str | Path | None = None,
               overwrite: bool = False) -> BanditLog:
    """Read an Open Bandit CSV (:func:`read_obd_csv`) and write the bandit-log folder ``out``."""
    table, meta = read_obd_csv(csv, item_context)
    return write_bandit_log(table, meta, out, overwrite=overwrite)


__all__ = ["import_obd", "read_obd_csv"]
