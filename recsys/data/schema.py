"""The canonical dataset folder: Parquet tables plus ``dataset.yaml`` naming each column's role.

Layout::

    DIR/
      dataset.yaml            # name, positive label, tables -> file + columns -> role
      interactions.parquet    # user_id, item_id, timestamp (int64 Unix seconds), label columns, ...
      users.parquet           # optional: user_id + user features
      items.parquet           # optional: item_id + item features (category, created_at, price, ...)
      item_links.parquet      # optional: src, dst (explicit item -> item links)
      truth/                  # optional: ground truth of a synthetic world (see recsys.data.synthetic)

``dataset.yaml``::

    name: movielens-latest-small
    format_version: 1
    positive_label: interaction      # the label that makes an interaction an engagement (relevant item)
    has_impressions: false           # true: rows with positive_label == 0 are shown-but-not-engaged
    has_timestamps: true             # false: an untimed log; ``timestamp`` is then the row's position in the
                                     # source file (an order, not a time) and only random_holdout splits apply
                                     # (written only when false)
    tables:
      interactions:
        file: interactions.parquet
        columns:
          user_id: {role: user_id}
          item_id: {role: item_id}
          timestamp: {role: timestamp}
          rating: {role: label, kind: graded, range: [0.5, 5.0]}
          interaction: {role: label, kind: binary}
          like: {role: label, kind: binary}

External ids are kept as they are (integers or strings); :mod:`recsys.data.vocab` maps them to contiguous
indices. Every reader check raises :class:`DatasetError` naming the file, the column and, where it helps,
the row.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from recsys.configlib import ConfigError, from_dict, load_yaml, to_dict
from recsys.io import atomic_output_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATASET_YAML = "dataset.yaml"


class DatasetError(ValueError):
    """The dataset folder or one of its tables is invalid; the message names the file and column."""


class Role(str, enum.Enum):
    USER_ID = "user_id"
    ITEM_ID = "item_id"
    TIMESTAMP = "timestamp"  # int64 Unix seconds
    LABEL = "label"  # an engagement or rating; kind binary or graded
    CATEGORICAL = "categorical"  # a categorical feature (of a user or an item)
    NUMERIC = "numeric"  # a numeric feature
    CONTEXT = "context"  # a request-time context value (hour, device); kind categorical or numeric
    POSITION = "position"  # slate position of an impression (0-based)
    SESSION = "session"  # groups the impressions of one slate/session; not a model feature
    TRUTH = "truth"  # ground truth of a synthetic world (true probabilities); never a model input
    TEXT = "text"  # free text (titles); not a model input
    SRC = "src"  # item link source (item_links table)
    DST = "dst"  # item link destination


class Kind(str, enum.Enum):
    BINARY = "binary"
    GRADED = "graded"
    COUNT = "count"  # a label that counts events (plays, views): integers >= 0, heavy-tailed, not a rating
    CATEGORICAL = "categorical"
    NUMERIC = "numeric"


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    role: Role
    kind: Kind | None = None
    range: tuple[float, float] | None = None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class TableSpec:
    file: str
    columns: dict[str, ColumnSpec]

    def names(self, role: Role) -> list[str]:
        return [n for n, c in self.columns.items() if c.role is role]


@dataclasses.dataclass(frozen=True)
class DatasetSchema:
    name: str
    tables: dict[str, TableSpec]
    positive_label: str
    format_version: int = FORMAT_VERSION
    has_impressions: bool = False
    has_timestamps: bool = True
    description: str = ""
    source: str = ""

    @property
    def labels(self) -> list[str]:
        return self.tables["interactions"].names(Role.LABEL)

    @property
    def context_columns(self) -> list[str]:
        return self.tables["interactions"].names(Role.CONTEXT)


LABEL_KINDS = (Kind.BINARY, Kind.GRADED, Kind.COUNT)

KNOWN_TABLES = {
    "interactions": ("interactions.parquet", (Role.USER_ID, Role.ITEM_ID, Role.TIMESTAMP)),
    "users": ("users.parquet", (Role.USER_ID,)),
    "items": ("items.parquet", (Role.ITEM_ID,)),
    "item_links": ("item_links.parquet", (Role.SRC, Role.DST)),
}


@dataclasses.dataclass
class Dataset:
    """A validated canonical dataset in memory. ``interactions`` is sorted by timestamp (stable)."""

    schema: DatasetSchema
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    item_links: pd.DataFrame | None = None
    path: Path | None = None

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"interactions": self.interactions}
        for name in ("users", "items", "item_links"):
            df = getattr(self, name)
            if df is not None:
                out[name] = df
        return out

    @property
    def truth_dir(self) -> Path | None:
        if self.path is None:
            return None
        p = self.path / "truth"
        return p if p.is_dir() else None


# --------------------------------------------------------------------------------------------------------
# Schema parsing
# --------------------------------------------------------------------------------------------------------


def parse_schema(raw: Any, where: str) -> DatasetSchema:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected a mapping at the top level")
    try:
        schema = from_dict(DatasetSchema, raw)
    except ConfigError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if schema.format_version != FORMAT_VERSION:
        raise DatasetError(
            f"{where}: format_version {schema.format_version} is not supported (this reader: {FORMAT_VERSION})"
        )
    if "interactions" not in schema.tables:
        raise DatasetError(f"{where}: tables: 'interactions' is required")
    for tname, table in schema.tables.items():
        if tname not in KNOWN_TABLES:
            raise DatasetError(f"{where}: tables: unknown table {tname!r}; allowed: {', '.join(KNOWN_TABLES)}")
        for role in KNOWN_TABLES[tname][1]:
            found = table.names(role)
            if len(found) != 1:
                raise DatasetError(
                    f"{where}: tables.{tname}: needs exactly one column with role {role.value!r}, found {found}"
                )
        for cname, col in table.columns.items():
            if col.role is Role.LABEL and col.kind not in LABEL_KINDS:
                raise DatasetError(
                    f"{where}: tables.{tname}.columns.{cname}: a label needs kind binary, graded or count"
                )
            if col.role is Role.LABEL and tname != "interactions":
                raise DatasetError(f"{where}: tables.{tname}.columns.{cname}: labels belong to interactions")
    labels = schema.labels
    if schema.positive_label not in labels:
        raise DatasetError(
            f"{where}: positive_label {schema.positive_label!r} is not a label column of interactions; "
            f"labels: {labels}"
        )
    if schema.tables["interactions"].columns[schema.positive_label].kind is not Kind.BINARY:
        raise DatasetError(f"{where}: positive_label {schema.positive_label!r} must be a binary label")
    return schema


def read_schema(path: str | Path) -> DatasetSchema:
    path = Path(path)
    yml = path / DATASET_YAML
    if not yml.is_file():
        raise DatasetError(f"{yml}: not found; a dataset folder needs {DATASET_YAML} (see recsys.data.schema)")
    try:
        raw = load_yaml(yml)
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None
    return parse_schema(raw, str(yml))


def schema_to_yaml(schema: DatasetSchema) -> str:
    data = to_dict(schema)
    for table in data["tables"].values():
        for col in table["columns"].values():
            for k in ("kind", "range", "description"):
                if col.get(k) in (None, ""):
                    col.pop(k, None)
    for k in ("description", "source"):
        if not data.get(k):
            data.pop(k)
    if data.get("has_timestamps") is True:  # the usual case: datasets written before the key read the same
        data.pop("has_timestamps")
    return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _py(value: Any) -> Any:
    """A numpy scalar as the Python value, so messages read ``1``, not ``np.int64(1)`` (numpy >= 2 repr)."""
    return value.item() if isinstance(value, np.generic) else value


def validate_table(df: pd.DataFrame, spec: TableSpec, where: str) -> pd.DataFrame:
    """Check one table against its spec; returns it with canonical dtypes (timestamps int64)."""
    declared = list(spec.columns)
    missing = [c for c in declared if c not in df.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; columns present: {list(df.columns)}")
    extra = [c for c in df.columns if c not in spec.columns]
    if extra:
        raise DatasetError(f"{where}: column(s) {extra} are not declared in {DATASET_YAML}; declared: {declared}")
    if len(df) == 0:
        raise DatasetError(f"{where}: table is empty")
    df = df[declared]
    for name, col in spec.columns.items():
        s = df[name]
        if col.role in (Role.USER_ID, Role.ITEM_ID, Role.SRC, Role.DST):
            bad = s.isna().to_numpy()
            if bad.any():
                raise DatasetError(f"{where}: column {name!r} has a missing id at row {_first_bad_row(bad)}")
        elif col.role is Role.TIMESTAMP:
            if not pd.api.types.is_integer_dtype(s.dtype):
                raise DatasetError(
                    f"{where}: column {name!r} must hold int64 Unix seconds, found dtype {s.dtype}"
                )
            bad = s.isna().to_numpy()  # a nullable Int64 column may hold <NA>
            if bad.any():
                raise DatasetError(f"{where}: column {name!r} has a missing timestamp at row {_first_bad_row(bad)}")
            df[name] = s.astype(np.int64)
        elif col.role is Role.LABEL:
            if not (pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)):
                raise DatasetError(f"{where}: label column {name!r} must be numeric, found dtype {s.dtype}")
            v = s.to_numpy(dtype=np.float64)
            bad = np.isnan(v)
            if bad.any():
                raise DatasetError(f"{where}: label column {name!r} is missing at row {_first_bad_row(bad)}")
            if col.kind is Kind.COUNT:
                bad = (v < 0) | (v != np.floor(v))
                if bad.any():
                    r = _first_bad_row(bad)
                    raise DatasetError(
                        f"{where}: count label {name!r} must hold integers >= 0, got {float(v[r])!r} at row {r}"
                    )
            if col.kind is Kind.BINARY:
                bad = (v != 0) & (v != 1)
                if bad.any():
                    r = _first_bad_row(bad)
                    raise DatasetError(
                        f"{where}: binary label {name!r} must be 0 or 1, got {float(v[r])!r} at row {r}"
                    )
            if col.range is not None:
                lo, hi = col.range
                bad = (v < lo) | (v > hi)
                if bad.any():
                    r = _first_bad_row(bad)
                    raise DatasetError(
                        f"{where}: label {name!r} must lie in [{lo}, {hi}], got {float(v[r])!r} at row {r}"
                    )
    return df


def validate(ds: Dataset) -> Dataset:
    """Validate every table of ``ds`` and the references between them; returns ``ds`` with canonical dtypes."""
    base = str(ds.path) if ds.path else ds.schema.name
    for tname, spec in ds.schema.tables.items():
        df = getattr(ds, tname)
        where = f"{base}/{spec.file}"
        if df is None:
            raise DatasetError(f"{where}: table {tname!r} is declared in {DATASET_YAML} but missing")
        df = validate_table(df, spec, where)
        setattr(ds, tname, df)
    for tname, role in (("users", Role.USER_ID), ("items", Role.ITEM_ID)):
        df = getattr(ds, tname)
        if df is not None:
            col = ds.schema.tables[tname].names(role)[0]
            dup = df[col].duplicated().to_numpy()
            if dup.any():
                r = _first_bad_row(dup)
                raise DatasetError(
                    f"{base}/{ds.schema.tables[tname].file}: duplicate {col} {_py(df[col].iloc[r])!r} at row {r}"
                )
    if ds.item_links is not None and ds.items is not None:
        spec = ds.schema.tables["item_links"]
        known = pd.Index(ds.items[ds.schema.tables["items"].names(Role.ITEM_ID)[0]])
        for role in (Role.SRC, Role.DST):
            col = spec.names(role)[0]
            bad = ~ds.item_links[col].isin(known).to_numpy()
            if bad.any():
                r = _first_bad_row(bad)
                raise DatasetError(
                    f"{base}/{spec.file}: column {col!r} refers to unknown item {_py(ds.item_links[col].iloc[r])!r} "
                    f"at row {r}"
                )
    inter = ds.interactions
    ts = inter[ds.schema.tables["interactions"].names(Role.TIMESTAMP)[0]].to_numpy()
    if len(ts) > 1 and (np.diff(ts) < 0).any():  # keep rows in time order (stable: ties keep file order)
        ds.interactions = inter.iloc[np.argsort(ts, kind="stable")].reset_index(drop=True)
    return ds


# --------------------------------------------------------------------------------------------------------
# Read / write
# --------------------------------------------------------------------------------------------------------


def read_dataset(path: str | Path, tables: tuple[str, ...] | None = None) -> Dataset:
    """Read and validate the dataset folder at ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a dataset folder (it does not exist or is not a folder)")
    schema = read_schema(path)
    frames: dict[str, pd.DataFrame] = {}
    for tname, spec in schema.tables.items():
        if tables is not None and tname not in tables and tname != "interactions":
            continue
        f = path / spec.file
        if not f.is_file():
            raise DatasetError(f"{f}: table {tname!r} declared in {DATASET_YAML} but the file is missing")
        try:
            frames[tname] = pd.read_parquet(f)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DatasetError(f"{f}: cannot read as Parquet: {exc}") from None
    ds = Dataset(schema=schema, path=path, **frames)
    if tables is not None:
        ds.schema = dataclasses.replace(schema, tables={k: v for k, v in schema.tables.items() if k in frames})
    validate(ds)
    ds.schema = schema
    logger.info("read dataset %s: %d interactions", path, len(ds.interactions))
    return ds


def write_dataset(ds: Dataset, out: str | Path, overwrite: bool = False, extra_dirs: dict[str, Path] | None = None):
    """Validate ``ds`` and write it atomically to ``out`` (refused if ``out`` exists unless ``overwrite``).

    ``extra_dirs`` maps sub-folder names (e.g. ``truth``) to folders already written elsewhere; they are moved
    into the output before the final rename.
    """
    validate(ds)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for tname, spec in ds.schema.tables.items():
            getattr(ds, tname).to_parquet(tmp / spec.file, index=False)
        (tmp / DATASET_YAML).write_text(schema_to_yaml(ds.schema), encoding="utf-8")
        for name, src in (extra_dirs or {}).items():
            Path(src).rename(tmp / name)
    ds.path = Path(out)
    return ds


def make_schema(
    name: str,
    interactions: dict[str, ColumnSpec],
    positive_label: str,
    users: dict[str, ColumnSpec] | None = None,
    items: dict[str, ColumnSpec] | None = None,
    item_links: dict[str, ColumnSpec] | None = None,
    has_impressions: bool = False,
    description: str = "",
    source: str = "",
    has_timestamps: bool = True,
) -> DatasetSchema:
    """Convenience constructor used by importers and the synthetic world; validates like a read schema."""
    tables = {"interactions": TableSpec("interactions.parquet", interactions)}
    for tname, cols in (("users", users), ("items", items), ("item_links", item_links)):
        if cols is not None:
            tables[tname] = TableSpec(KNOWN_TABLES[tname][0], cols)
    schema = DatasetSchema(
        name=name,
        tables=tables,
        positive_label=positive_label,
        has_impressions=has_impressions,
        has_timestamps=has_timestamps,
        description=description,
        source=source,
    )
    return parse_schema(to_dict(schema), f"schema {name!r}")


def col(role: str, kind: str | None = None, range: tuple[float, float] | None = None, description: str = ""):
    """Short-hand for a :class:`ColumnSpec`: ``col("label", "binary")``."""
    return ColumnSpec(Role(role), Kind(kind) if kind else None, range, description)
