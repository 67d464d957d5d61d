"""A logged-bandit-feedback folder: shown slates with the logging policy's propensities, for off-policy evaluation.

Layout::

    DIR/
      log.yaml        # format_version, name, slate_size, propensity, policy, source, n_items
      log.parquet     # one row per shown (session, position)

``log.parquet`` columns (dtypes are checked on read):

    session_id   int64     one request / slate; its rows are its positions
    timestamp    int64     Unix seconds of the request (the same on every row of a session)
    user_id      Int64 | string (nullable)  the user, in the dataset's ids (null: anonymous, e.g. Open Bandit)
    position     int64     0-based slot in the slate, unique within a session, in [0, slate_size)
    item_id      int64 | string          the shown item, in the dataset's ids (never null)
    click        int64     1 clicked, 0 not
    propensity   float64   P(the logging policy shows this item at this position | the request), in (0, 1]
    (optional) hour int64 0-23, device string: context columns, passed through

``propensity`` is the *item-position marginal* of the logging policy (``propensity: item_position`` in
log.yaml): what the position-based (item-position IPS) estimator needs, and for position 0 the top slot's
action propensity that IPS, SNIPS and DR need. A log whose propensities are only valid for position 0 says
``propensity: top_slot`` and only the top-slot estimators accept it.

Id dtypes: ``user_id`` is held as pandas' nullable ``Int64`` (integer ids, or none at all) or ``string``, never
float (a null would otherwise turn integer ids into floats); ``item_id`` as ``int64`` or ``string``. Both are
normalized on write and on read (integral floats become integers; anything else is an error).

Every reader check raises :class:`BanditLogError` naming the file and column (and the first bad row).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from recsys.io import atomic_output_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOG_YAML = "log.yaml"
LOG_PARQUET = "log.parquet"
PROPENSITY_KINDS = ("item_position", "top_slot")
COLUMNS = ("session_id", "timestamp", "user_id", "position", "item_id", "click", "propensity")
OPTIONAL = ("hour", "device")


class BanditLogError(ValueError):
    """The bandit-log folder or its table is invalid; the message names the file and column."""


@dataclasses.dataclass(frozen=True)
class BanditLog:
    """A validated bandit log: ``table`` sorted by (session_id, position); ``meta`` the parsed log.yaml.

    meta keys: format_version, name, slate_size (L), propensity (one of PROPENSITY_KINDS), policy (free text:
    how the logging policy chose), source (where the log came from), n_items (the logging policy's action
    set size, or None)."""

    table: pd.DataFrame
    meta: dict[str, Any]

    @property
    def slate_size(self) -> int:
        return int(self.meta["slate_size"])

    @property
    def n_sessions(self) -> int:
        return int(self.table["session_id"].nunique())


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _ids(col: pd.Series, name: str, where: str, nullable: bool) -> pd.Series:
    """``col`` as Int64 (nullable) / int64 or string (see the module docstring)."""
    null = col.isna().to_numpy()
    if null.any() and not nullable:
        raise BanditLogError(f"{where}: column {name!r}: null at row {_first_bad(null)}")
    if pd.api.types.is_integer_dtype(col) or null.all():
        return col.astype("Int64" if nullable else "int64")
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy()[~null]
        if (v != np.round(v)).any():
            raise BanditLogError(f"{where}: column {name!r}: expected integer or string ids, got {v[v != np.round(v)][0]}")
        return col.astype("Int64" if nullable else "int64")
    if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype):
        vals = col[~null]
        if len(vals) and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in vals):
            return col.astype("Int64" if nullable else "int64")
        return col.astype("string")
    raise BanditLogError(f"{where}: column {name!r}: expected integer or string ids, got {col.dtype}")


def validate_log(table: pd.DataFrame, meta: dict[str, Any], where: str = LOG_PARQUET) -> pd.DataFrame:
    """Check ``table`` against the format (see the module docstring); returns it sorted by session, position,
    with the id columns in their dtypes."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BanditLogError(f"{where}: missing column(s) {missing}; expected {list(COLUMNS)}")
    table = table.assign(user_id=_ids(table["user_id"], "user_id", where, nullable=True),
                         item_id=_ids(table["item_id"], "item_id", where, nullable=False))
    slate = meta.get("slate_size")
    if not isinstance(slate, int) or slate < 1:
        raise BanditLogError(f"{LOG_YAML}: slate_size: expected an integer >= 1, got {slate!r}")
    if meta.get("propensity") not in PROPENSITY_KINDS:
        raise BanditLogError(f"{LOG_YAML}: propensity: expected one of {list(PROPENSITY_KINDS)}, "
                             f"got {meta.get('propensity')!r}")
    for c in ("session_id", "timestamp", "position", "click"):
        if not pd.api.types.is_integer_dtype(table[c]):
            raise BanditLogError(f"{where}: column {c!r}: expected integers, got {table[c].dtype}")
    click = table["click"].to_numpy()
    if ((click != 0) & (click != 1)).any():
        raise BanditLogError(f"{where}: column 'click': expected 0 or 1, row {_first_bad((click != 0) & (click != 1))}")
    pos = table["position"].to_numpy()
    bad = (pos < 0) | (pos >= slate)
    if bad.any():
        raise BanditLogError(f"{where}: column 'position': expected 0..{slate - 1} (slate_size {slate}), "
                             f"got {pos[_first_bad(bad)]} at row {_first_bad(bad)}")
    if not pd.api.types.is_float_dtype(table["propensity"]):
        raise BanditLogError(f"{where}: column 'propensity': expected floats, got {table['propensity'].dtype}")
    p = table["propensity"].to_numpy()
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        raise BanditLogError(f"{where}: column 'propensity': expected a probability in (0, 1], "
                             f"got {p[_first_bad(bad)]} at row {_first_bad(bad)}")
    out = table.sort_values(["session_id", "position"], kind="stable").reset_index(drop=True)
    dup = out.duplicated(["session_id", "position"]).to_numpy()
    if dup.any():
        raise BanditLogError(f"{where}: columns 'session_id', 'position': session "
                             f"{out['session_id'].iloc[_first_bad(dup)]} shows position "
                             f"{out['position'].iloc[_first_bad(dup)]} twice")
    ts = out.groupby("session_id", sort=False)["timestamp"].nunique().to_numpy()
    if (ts > 1).any():
        raise BanditLogError(f"{where}: column 'timestamp': expected one timestamp per session")
    return out


def write_bandit_log(table: pd.DataFrame, meta: dict[str, Any], out: str | Path, overwrite: bool = False) -> BanditLog:
    """Validate and write the folder ``out`` atomically (a failed write leaves nothing)."""
    meta = {"format_version": FORMAT_VERSION, "name": "log", "policy": "", "source": "", "n_items": None, **meta}
    table = validate_log(table, meta, where=f"{out}/{LOG_PARQUET}")
    keep = [c for c in (*COLUMNS, *OPTIONAL) if c in table.columns]
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        table[keep].to_parquet(tmp / LOG_PARQUET, index=False)
        (tmp / LOG_YAML).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    logger.info("wrote bandit log %s: %d rows, %d sessions", out, len(table), table["session_id"].nunique())
    return BanditLog(table[keep], meta)


def read_bandit_log(path: str | Path) -> BanditLog:
    """Read and validate a bandit-log folder (see the module docstring)."""
    path = Path(path)
    y, pq = path / LOG_YAML, path / LOG_PARQUET
    for f in (y, pq):
        if not f.is_file():
            raise BanditLogError(f"{f}: not found; a bandit-log folder holds {LOG_YAML} and {LOG_PARQUET}")
    try:
        meta = yaml.safe_load(y.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BanditLogError(f"{y}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise BanditLogError(f"{y}: expected a mapping")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BanditLogError(f"{y}: format_version: expected {FORMAT_VERSION}, got {meta.get('format_version')!r}")
    table = pd.read_parquet(pq)
    return BanditLog(validate_log(table, meta, where=str(pq)), meta)


__all__ = ["BanditLog", "BanditLogError", "read_bandit_log", "write_bandit_log", "validate_log", "COLUMNS"]
