"""Importers of real rating logs into the canonical dataset (:mod:`recsys.data.schema`).

Formats (``FORMATS``; ``import_dataset(fmt, path, **options)``):

``movielens-100k``
    Folder with ``u.data`` (tab-separated ``user item rating timestamp``), optional ``u.item`` (``|``-separated,
    latin-1: ``id|title|release date|video release date|IMDb URL|19 genre flags``) and optional ``u.user``
    (``id|age|gender|occupation|zip``).
``movielens-latest``
    Folder with ``ratings.csv`` (``userId,movieId,rating,timestamp`` with a header; ml-latest, ml-20m/25m/32m) or
    ML-1M/10M style ``ratings.dat`` (``user::movie::rating::timestamp``); optional ``movies.csv`` /
    ``movies.dat`` (``movieId,title,genres``, genres ``|``-separated, CSV quoting in the ``.csv``) and, ML-1M
    only, optional ``users.dat`` (``user::gender::age::occupation::zip``).
``movietweetings``
    Folder with ``ratings.dat`` (``user_id::movie_id::rating::timestamp``, ratings 0..10) and optional
    ``movies.dat`` (``movie_id::title (year)::genre|genre``, genres may be empty). ``users.dat`` only maps users
    to Twitter ids and is not read.
``csv`` / ``parquet``
    One file (a Parquet folder also works) and an :class:`ImportMapping` naming the user, item and timestamp
    columns, the labels and the user/item/context feature columns (see :func:`import_generic`).

Canonical output: ``interactions`` (``user_id``, ``item_id``, ``timestamp`` int64 Unix seconds, labels, context),
``users`` (``user_id`` + features) and ``items`` (``item_id`` + features) where the source has them.

Label rules (explicit ratings):

* ``rating``: the rating as given, a graded label with the range of the format (MovieLens-100k ``[1, 5]``,
  MovieLens latest/1M/10M ``[0.5, 5]``, MovieTweetings ``[0, 10]``; generic: ``rating_range`` or the observed
  range). A rating outside the declared range is an error.
* ``interaction``: 1 for every rated item: a binary label and the dataset's ``positive_label`` (a rating is an
  engagement, whatever its value).
* ``like``: ``rating >= like_threshold`` (binary); default 4 of 5 for MovieLens, 8 of 10 for MovieTweetings;
  generic: only when ``like_threshold`` is given.

Duplicate (user, item) rows are kept: each is a separate event. External ids are kept as they are: a column of
plain integers (no sign other than ``-``, no leading zeros, so ``str(int(x)) == x``) becomes int64, anything
else stays a string (MovieTweetings movie ids such as ``"0133093"`` are IMDb ids and stay strings). The
decision is taken once over every file holding the same kind of id, so interactions and the items table always
agree. Items rated but missing from the items file get a placeholder row (logged).

Timestamps: numbers are Unix seconds or milliseconds (``auto``: a magnitude below 1e11 is seconds, below 1e14
milliseconds, since 1e11 s is the year 5138 and 1e11 ms is 1973), strings are ISO-8601 (naive times are UTC);
fractions of a second are floored; a string column that is mostly numbers is read as numbers (the others are
then errors), otherwise as ISO-8601. ``timestamp_unit`` (``auto``, ``s``, ``ms``, ``iso``) forces one reading.

Text files may use LF or CRLF, may start with a UTF-8 byte-order mark, and are read as UTF-8 falling back to
latin-1 (``encoding="auto"``). Every input error raises :class:`~recsys.data.schema.DatasetError` naming the
file, the column and the line (text files, 1-based physical line, the header is line 1) or row (Parquet,
0-based). Parsing is vectorized (pyarrow CSV reader, pandas); only the error path rescans a file line by line
to name the line.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import inspect
import io
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsys.configlib import ConfigError, from_dict, load_yaml
from recsys.data.schema import Dataset, DatasetError, col, make_schema, validate

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "ImportMapping",
    "TimestampUnit",
    "import_dataset",
    "import_generic",
    "import_movielens_100k",
    "import_movielens_latest",
    "import_movietweetings",
    "import_csv",
    "import_frame",
    "import_parquet",
    "load_mapping",
]

NO_CATEGORY = "(none)"  # category of an item without any genre
UNKNOWN = "(unknown)"  # categorical value of a placeholder row (an id rated but absent from the side file)


class TimestampUnit(str, enum.Enum):
    AUTO = "auto"  # numbers: seconds or milliseconds by magnitude; strings: ISO-8601
    SECONDS = "s"
    MILLISECONDS = "ms"
    ISO = "iso"  # ISO-8601 strings (naive = UTC)


# --------------------------------------------------------------------------------------------------------
# Reading text and Parquet files into string columns
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TextFormat:
    sep: str  # one character, or "::"
    quoted: bool  # CSV quoting with '"'
    header: bool
    encoding: str = "auto"  # "auto": UTF-8 (BOM skipped), falling back to latin-1


class _ColonTranslator(io.RawIOBase):
    """A binary stream that reads ``raw`` with every ``::`` replaced by ``\\x1f`` (one-byte delimiter).

    Runs of ``:`` at a chunk end are carried over, so the result is the same as replacing in the whole file.
    """

    def __init__(self, raw: io.BufferedIOBase, chunk: int = 1 << 20) -> None:
        self._raw, self._chunk, self._carry, self._buf = raw, chunk, b"", b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            data = self._raw.read(self._chunk)
            if not data:
                if not self._carry:
                    return 0
                self._buf, self._carry = self._carry.replace(b"::", b"\x1f"), b""
                break
            data = self._carry + data
            keep = len(data) - len(data.rstrip(b":"))
            data, self._carry = (data[: len(data) - keep], data[len(data) - keep :]) if keep else (data, b"")
            self._buf = data.replace(b"::", b"\x1f")
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Table:
    """The rows of one file as a DataFrame, with what is needed to name a row's line in an error."""

    def __init__(self, path: Path, df: pd.DataFrame, fmt: _TextFormat | None, encoding: str | None) -> None:
        self.path, self.df, self.fmt, self.encoding = path, df, fmt, encoding

    def where(self, row: int) -> str:
        if self.fmt is None:
            return f"row {row} (0-based)"
        line = _line_of_row(self.path, self.fmt, self.encoding or "utf-8", row)
        return f"line {line}" if line is not None else f"data row {row} (0-based)"

    def error(self, column: str, row: int, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}: {self.where(row)}, column {column!r}: {problem}")

    def require(self, columns: dict[str, str]) -> None:
        """``columns``: what -> column name; a missing one is an error listing the columns present."""
        present = list(self.df.columns)
        for what, name in columns.items():
            if name not in self.df.columns:
                raise DatasetError(
                    f"{self.path}: {what} column {name!r} does not exist; columns present: {present}"
                )


def _python_encoding(encoding: str) -> str:
    e = encoding.lower().replace("_", "-")
    return "utf-8-sig" if e in ("utf-8", "utf8") else encoding


def _iter_records(path: Path, fmt: _TextFormat, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of every non-empty record, header included; the slow path for errors."""
    with open(path, encoding=_python_encoding(encoding), newline="", errors="replace") as fh:
        if fmt.sep == "::":
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if line:
                    yield lineno, line.split("::")
            return
        reader = csv.reader(
            fh, delimiter=fmt.sep, quotechar='"', quoting=csv.QUOTE_MINIMAL if fmt.quoted else csv.QUOTE_NONE
        )
        prev = 0
        for rec in reader:
            start, prev = prev + 1, reader.line_num
            if rec:
                yield start, rec


def _line_of_row(path: Path, fmt: _TextFormat, encoding: str, row: int) -> int | None:
    """1-based line of data row ``row`` (0-based, header excluded), or None if the file has fewer rows."""
    records = _iter_records(path, fmt, encoding)
    if fmt.header:
        next(records, None)
    for i, (lineno, _) in enumerate(records):
        if i == row:
            return lineno
    return None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if path.is_dir():
        raise DatasetError(f"{path}: expected a file, found a folder")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")


def _read_text(path: Path, fmt: _TextFormat, names: list[str] | None = None) -> _Table:
    """Read a delimited text file into string columns (the converters strip whitespace around values).

    ``names`` gives the fields of a header-less file; with a header the names come from it. A line with another
    number of fields than the header (or ``names``) is an error naming the line.
    """
    _check_file(path)
    encodings = ["utf-8", "latin-1"] if fmt.encoding == "auto" else [fmt.encoding]
    for i, enc in enumerate(encodings):
        try:
            table = _read_text_as(path, fmt, enc, names)
        except UnicodeError:
            if i + 1 < len(encodings):
                logger.warning("%s: not valid UTF-8; reading it as %s", path, encodings[i + 1])
                continue
            raise DatasetError(f"{path}: cannot decode the file as {enc}; pass the right encoding") from None
        return table
    raise AssertionError("unreachable")


def _read_text_as(path: Path, fmt: _TextFormat, encoding: str, names: list[str] | None) -> _Table:
    skip = 0
    if fmt.header:
        with open(path, encoding=_python_encoding(encoding), newline="") as fh:  # strict: latin-1 falls back
            first = _iter_header(fh, fmt)
        if first is None:
            raise DatasetError(f"{path}: file is empty (no header line)")
        skip, header = first
        names = [h.strip() for h in header]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DatasetError(f"{path}: line {skip}: duplicate column name(s) {dup} in the header")
    assert names is not None, "a header-less format needs names"
    bad_row: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad_row.append(row)
        return "error"

    read_opts = pa_csv.ReadOptions(
        column_names=names, skip_rows=skip, encoding="utf8" if encoding == "utf-8" else encoding
    )
    parse_opts = pa_csv.ParseOptions(
        delimiter="\x1f" if fmt.sep == "::" else fmt.sep,
        quote_char='"' if fmt.quoted else False,
        double_quote=True,
        newlines_in_values=fmt.quoted,
        ignore_empty_lines=True,
        invalid_row_handler=on_invalid,
    )
    conv_opts = pa_csv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    source: Any = path
    if fmt.sep == "::":
        source = io.BufferedReader(_ColonTranslator(open(path, "rb")))
    try:
        table = pa_csv.read_csv(source, read_options=read_opts, parse_options=parse_opts, convert_options=conv_opts)
    except pa.ArrowInvalid as exc:
        msg = str(exc)
        if "UTF8" in msg or "decode" in msg.lower():
            raise UnicodeError(msg) from None
        if bad_row or "Expected" in msg:
            raise _field_count_error(path, fmt, encoding, len(names)) from None
        raise DatasetError(f"{path}: cannot parse as {_describe(fmt)}: {msg}") from None
    finally:
        if source is not path:
            source.close()
    df = table.to_pandas()
    if len(df) == 0:
        raise DatasetError(f"{path}: no data rows" + (" (only a header)" if fmt.header else " (file is blank)"))
    return _Table(path, df, fmt, encoding)


def _iter_header(fh: io.TextIOBase, fmt: _TextFormat) -> tuple[int, list[str]] | None:
    if fmt.sep == "::":
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line:
                return lineno, line.split("::")
        return None
    reader = csv.reader(fh, delimiter=fmt.sep, quoting=csv.QUOTE_MINIMAL if fmt.quoted else csv.QUOTE_NONE)
    for rec in reader:
        if rec:
            return reader.line_num, rec
    return None


def _describe(fmt: _TextFormat) -> str:
    return f"{fmt.sep!r}-separated text" + (" with a header" if fmt.header else "")


def _field_count_error(path: Path, fmt: _TextFormat, encoding: str, expected: int) -> DatasetError:
    records = _iter_records(path, fmt, encoding)
    if fmt.header:
        next(records, None)
    for lineno, fields in records:
        if len(fields) != expected:
            text = fmt.sep.join(fields)
            text = text if len(text) <= 120 else text[:117] + "..."
            return DatasetError(
                f"{path}: line {lineno}: expected {expected} fields separated by {fmt.sep!r}, "
                f"found {len(fields)}: {text!r}"
            )
    return DatasetError(f"{path}: a line has a number of fields other than {expected} (separator {fmt.sep!r})")


def _read_parquet(path: Path) -> _Table:
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path}: cannot read as Parquet: {exc}") from None
    if len(df) == 0:
        raise DatasetError(f"{path}: no data rows")
    return _Table(path, df.reset_index(drop=True), None, None)


# --------------------------------------------------------------------------------------------------------
# Column converters (vectorized; the first bad row is named)
# --------------------------------------------------------------------------------------------------------

_INT_ID = r"0|-?[1-9][0-9]{0,17}"  # ids whose text survives str(int(text)): no '+', no leading zeros, no '-0'


def _py(value: Any) -> Any:
    """A numpy scalar as the Python value (messages read ``5``, not ``np.int64(5)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _is_text(s: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(s.dtype) or s.dtype == object


def _stripped(s: pd.Series) -> pd.Series:
    return s.astype("str").str.strip() if _is_text(s) else s


def _arrow_text(s: pd.Series) -> pa.Array | None:
    """The whitespace-trimmed Arrow strings of a text column without missing values, else None."""
    if not _is_text(s):
        return None
    try:
        arr = pa.array(s.astype("str"), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if arr.null_count:
        return None
    return pc.utf8_trim_whitespace(arr)


def _arrow_cast(arr: pa.Array | None, to: pa.DataType) -> np.ndarray | None:
    """Fast path: Arrow's C++ parse of the whole column; None if any value does not parse (slow path names it)."""
    if arr is None:
        return None
    try:
        return pc.cast(arr, to).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _ids(parts: list[tuple[_Table, str]], what: str) -> list[pd.Series]:
    """Convert the id columns ``parts`` (table, column) of one kind of id, jointly, to int64 or strings."""
    kinds, values = [], []
    for table, name in parts:
        s = table.df[name]
        if _is_text(s):
            arr = _arrow_text(s)  # None when a value is missing
            if arr is None or pc.any(pc.equal(pc.utf8_length(arr), 0)).as_py():
                st = _stripped(s)
                r = int(np.flatnonzero((st.isna() | (st == "")).to_numpy())[0])
                raise table.error(name, r, f"missing {what} id (empty field)")
            is_int = bool(pc.all(pc.match_substring_regex(arr, f"^(?:{_INT_ID})$")).as_py())
            kinds.append("int" if is_int else "str")
            values.append(_arrow_cast(arr, pa.int64()) if is_int else arr)
        elif pd.api.types.is_bool_dtype(s.dtype):
            raise DatasetError(f"{table.path}: column {name!r}: {what} ids must be integers or strings, not bool")
        elif pd.api.types.is_numeric_dtype(s.dtype):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(v) | (v != np.floor(v))
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                problem = "missing" if np.isnan(v[r]) else f"not an integer: {float(v[r])!r}"
                raise table.error(name, r, f"{what} id {problem}")
            kinds.append("int")
            values.append(s.to_numpy(dtype=np.int64))
        else:
            raise DatasetError(
                f"{table.path}: column {name!r}: {what} ids must be integers or strings, found {s.dtype}"
            )
    if all(k == "int" for k in kinds):
        return [pd.Series(np.asarray(v, dtype=np.int64)) for v in values]
    # int columns as their decimal text: the same text a string column of those ids would hold
    return [pd.Series(v.astype(str) if isinstance(v, np.ndarray) else v.to_pandas(), dtype="str") for v in values]


def _numbers(table: _Table, name: str, what: str = "value", allow_missing: bool = False) -> np.ndarray:
    """(N,) float64; empty/unparsable values are errors (or NaN with ``allow_missing``)."""
    s = table.df[name]
    if _is_text(s):
        fast = _arrow_cast(_arrow_text(s), pa.float64())
        if fast is not None and not np.isnan(fast).any():
            return fast
        s = _stripped(s)
        empty = (s.isna() | (s == "")).to_numpy()
        v = pd.to_numeric(s.where(~empty, None), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(v) & ~empty
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise table.error(name, r, f"{what} {s.iloc[r]!r} is not a number")
    elif pd.api.types.is_numeric_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        empty = np.isnan(v)
    else:
        raise DatasetError(f"{table.path}: column {name!r}: expected numbers, found dtype {s.dtype}")
    if not allow_missing and empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise table.error(name, r, f"missing {what}")
    return v


def _check_range(table: _Table, name: str, v: np.ndarray, lo: float, hi: float, what: str) -> None:
    bad = (v < lo) | (v > hi)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise table.error(name, r, f"{what} {v[r]:g} is outside the declared range [{lo:g}, {hi:g}]")


_SECONDS_BELOW = 1e11  # |t| < 1e11: seconds (1e11 s is the year 5138)
_MILLIS_BELOW = 1e14  # 1e11 <= |t| < 1e14: milliseconds (1e11 ms is 1973-03-03; 1e14 ms is the year 5138)
_EPOCH = pd.Timestamp(0, tz="UTC")


def _timestamps(table: _Table, name: str, unit: TimestampUnit) -> np.ndarray:
    """(N,) int64 Unix seconds from numbers (s or ms) or ISO-8601 strings; see the module docstring."""
    s = table.df[name]
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if s.isna().any():
            raise table.error(name, int(np.flatnonzero(s.isna().to_numpy())[0]), "missing timestamp")
        dt = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        return ((dt - _EPOCH) // pd.Timedelta(1, "s")).to_numpy(dtype=np.int64)
    if _is_text(s) and unit is not TimestampUnit.ISO:  # fast path: every value is an integer (or a number)
        arr = _arrow_text(s)
        fast = _arrow_cast(arr, pa.int64())
        if fast is None:
            fast = _arrow_cast(arr, pa.float64())
            fast = None if fast is None or not np.isfinite(fast).all() else fast
        if fast is not None:
            s = pd.Series(fast)
    if _is_text(s):
        s = _stripped(s)
        empty = (s.isna() | (s == "")).to_numpy()
        if empty.any():
            raise table.error(name, int(np.flatnonzero(empty)[0]), "missing timestamp")
        num = pd.to_numeric(s, errors="coerce")
        numeric = unit in (TimestampUnit.SECONDS, TimestampUnit.MILLISECONDS) or (
            unit is TimestampUnit.AUTO and float(num.notna().mean()) >= 0.5  # mostly numbers: the rest are errors
        )
        if not numeric:
            dt = pd.to_datetime(s, format="ISO8601", utc=True, errors="coerce")
            bad = dt.isna().to_numpy()
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise table.error(
                    name, r, f"unparsable timestamp {s.iloc[r]!r}; expected ISO-8601 (e.g. 2020-01-31T12:00:00Z)"
                    + (" or Unix seconds/milliseconds" if unit is TimestampUnit.AUTO else "")
                )
            return ((dt - _EPOCH) // pd.Timedelta(1, "s")).to_numpy(dtype=np.int64)
        bad = num.isna().to_numpy()
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            expected = {TimestampUnit.SECONDS: "Unix seconds", TimestampUnit.MILLISECONDS: "Unix milliseconds"}.get(
                unit, "a Unix time in seconds or milliseconds, like the other rows"
            )
            raise table.error(name, r, f"unparsable timestamp {s.iloc[r]!r}; expected a number ({expected})")
        v = num
    elif pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        if unit is TimestampUnit.ISO:
            raise DatasetError(f"{table.path}: column {name!r}: timestamp_unit 'iso' but the column holds numbers")
        bad = s.isna().to_numpy()
        if bad.any():
            raise table.error(name, int(np.flatnonzero(bad)[0]), "missing timestamp")
        v = s
    else:
        raise DatasetError(f"{table.path}: column {name!r}: cannot read timestamps from dtype {s.dtype}")
    if pd.api.types.is_integer_dtype(v.dtype):
        ints = v.to_numpy(dtype=np.int64)
        mag = float(np.abs(ints).max())
    else:
        f = v.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(f)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise table.error(name, r, f"unparsable timestamp {float(f[r])!r}")
        ints, mag = None, float(np.abs(f).max())
    if unit is TimestampUnit.AUTO:
        if mag >= _MILLIS_BELOW:
            raise DatasetError(
                f"{table.path}: column {name!r}: timestamps up to {mag:.0f} look like micro- or nanoseconds; "
                "expected Unix seconds or milliseconds (set timestamp_unit)"
            )
        unit = TimestampUnit.SECONDS if mag < _SECONDS_BELOW else TimestampUnit.MILLISECONDS
    div = 1000 if unit is TimestampUnit.MILLISECONDS else 1
    if ints is not None:
        return np.floor_divide(ints, div)
    return np.floor(v.to_numpy(dtype=np.float64) / div).astype(np.int64)


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _binary(table: _Table, name: str) -> np.ndarray:
    """(N,) int8 0/1 from numbers 0/1, booleans or the words true/false/yes/no."""
    s = table.df[name]
    if pd.api.types.is_bool_dtype(s.dtype):
        if s.isna().any():
            raise table.error(name, int(np.flatnonzero(s.isna().to_numpy())[0]), "missing binary label")
        return s.to_numpy(dtype=np.int8)
    if _is_text(s):
        low = _stripped(s).str.lower()
        num = pd.to_numeric(low, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        is_true = low.isin(_TRUE).to_numpy() | (num == 1)
        bad = ~(is_true | low.isin(_FALSE).to_numpy() | (num == 0))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise table.error(name, r, f"binary label must be 0/1 or true/false, got {s.iloc[r]!r}")
        return is_true.astype(np.int8)
    v = _numbers(table, name, "binary label")
    bad = (v != 0) & (v != 1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise table.error(name, r, f"binary label must be 0 or 1, got {v[r]:g}")
    return v.astype(np.int8)


def _text(table: _Table, name: str, fill: str = "") -> pd.Series:
    s = _stripped(table.df[name]).astype("str")
    return s.fillna(fill).reset_index(drop=True)


def _check_unique(table: _Table, name: str, ids: pd.Series, what: str) -> None:
    dup = ids.duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[r]).to_numpy())[0])
        raise table.error(name, r, f"duplicate {what} id {_py(ids.iloc[r])!r} (first at {table.where(first)})")


# --------------------------------------------------------------------------------------------------------
# Building the canonical tables
# --------------------------------------------------------------------------------------------------------

_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


def _title_year(titles: pd.Series) -> np.ndarray:
    """(N,) float64 year from a trailing ``(1995)`` / ``(2006-2007)`` in a title; NaN when there is none."""
    return pd.to_numeric(titles.str.extract(_YEAR.pattern, expand=False), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )


def _genres_frame(genres: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``|``-joined genres (``(no genres listed)`` -> empty) and the first genre as category."""
    g = genres.fillna("").astype("str").str.strip()
    g = g.mask(g.str.lower().isin(["(no genres listed)", "(no genre)", "unknown"]), "")
    first = g.str.split("|", n=1).str[0].str.strip()
    category = first.mask(first == "", NO_CATEGORY).astype("str")
    return g.reset_index(drop=True), category.reset_index(drop=True)


def _items_frame(ids: pd.Series, titles: pd.Series, genres: pd.Series, year: np.ndarray | None = None) -> pd.DataFrame:
    g, category = _genres_frame(genres)
    titles = titles.reset_index(drop=True)
    y = _title_year(titles) if year is None else year
    return pd.DataFrame({"item_id": ids, "title": titles, "genres": g, "category": category, "year": y})


ITEM_COLUMNS = {
    "item_id": col("item_id"),
    "title": col("text", description="title as in the source"),
    "genres": col("text", description="'|'-joined genres; empty when none"),
    "category": col("categorical", "categorical", description=f"first genre; {NO_CATEGORY!r} when none"),
    "year": col("numeric", "numeric", description="release year from the title; NaN when absent"),
}


def _cover(
    df: pd.DataFrame, id_col: str, needed: pd.Series, fill: dict[str, Any], what: str, where: Path
) -> pd.DataFrame:
    """Append placeholder rows (``fill``) for ids in ``needed`` that ``df`` lacks; logged."""
    missing = pd.Index(needed.unique()).difference(pd.Index(df[id_col]))
    if len(missing) == 0:
        return df
    logger.warning("%s: %d %s id(s) rated but absent; adding placeholder rows", where, len(missing), what)
    extra = pd.DataFrame({id_col: missing.to_numpy()})
    for c in df.columns:
        if c != id_col:
            extra[c] = fill[c]
    extra = extra.astype({id_col: df[id_col].dtype})
    return pd.concat([df, extra], ignore_index=True)


def _rating_labels(rating: np.ndarray, like_threshold: float | None, rng: tuple[float, float]):
    """Label columns and their specs for explicit ratings (see the module docstring)."""
    cols = {"rating": rating.astype(np.float32), "interaction": np.ones(len(rating), dtype=np.int8)}
    specs = {
        "rating": col("label", "graded", rng, "explicit rating"),
        "interaction": col("label", "binary", description="1 for every rated item"),
    }
    if like_threshold is not None:
        cols["like"] = (rating >= like_threshold).astype(np.int8)
        specs["like"] = col("label", "binary", description=f"rating >= {like_threshold:g}")
    return cols, specs


_BASE_INTERACTIONS = {"user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp")}


def _finish(ds: Dataset) -> Dataset:
    validate(ds)
    inter = ds.interactions
    logger.info(
        "imported %s: %d interactions, %d users, %d items",
        ds.schema.name, len(inter), inter["user_id"].nunique(), inter["item_id"].nunique(),
    )
    return ds


def _unit(value: TimestampUnit | str) -> TimestampUnit:
    try:
        return TimestampUnit(value)
    except ValueError:
        allowed = ", ".join(repr(u.value) for u in TimestampUnit)
        raise ValueError(f"timestamp_unit: {value!r} is not allowed; expected one of {allowed}") from None


def _folder(path: Path, fmt: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: folder not found (format {fmt!r} reads a folder of files)")
    if not path.is_dir():
        raise DatasetError(f"{path}: expected a folder for format {fmt!r}, found a file")
    return path


# --------------------------------------------------------------------------------------------------------
# Explicit-rating formats (MovieLens, MovieTweetings)
# --------------------------------------------------------------------------------------------------------

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]
AGE_BUCKETS = [(0, "under18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"), (56, "56+")]

USER_COLUMNS = {
    "user_id": col("user_id"),
    "age_bucket": col("categorical", "categorical", description="MovieLens-1M age group"),
    "gender": col("categorical", "categorical"),
    "occupation": col("categorical", "categorical"),
}
_ITEM_FILL = {"title": "", "genres": "", "category": NO_CATEGORY, "year": np.nan}
_RATINGS = ["user", "item", "rating", "timestamp"]
_TAB = _TextFormat("\t", quoted=False, header=False)
_PIPE = _TextFormat("|", quoted=False, header=False)
_DAT = _TextFormat("::", quoted=False, header=False)
_CSV = _TextFormat(",", quoted=True, header=True)


def _age_bucket(age: np.ndarray) -> pd.Series:
    """(N,) MovieLens-1M age groups (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+) of ages in years."""
    edges = np.array([a for a, _ in AGE_BUCKETS[1:]], dtype=np.float64)
    labels = np.array([n for _, n in AGE_BUCKETS], dtype=object)
    return pd.Series(labels[np.searchsorted(edges, age, side="right")], dtype="str")


def _optional(path: Path, fmt: _TextFormat, names: list[str] | None = None) -> _Table | None:
    return _read_text(path, fmt, names) if path.exists() else None


def _with(table: _Table | None, column: str) -> list[tuple[_Table, str]]:
    return [(table, column)] if table is not None else []


def _explicit_ratings(
    data: _Table, cols: tuple[str, str, str, str], uid: pd.Series, iid: pd.Series, unit: TimestampUnit,
    rng: tuple[float, float], like_threshold: float | None,
) -> tuple[pd.DataFrame, dict]:
    """Interactions and their column specs from a ratings table; ``cols`` = (user, item, rating, time)."""
    rating = _numbers(data, cols[2], "rating")
    _check_range(data, cols[2], rating, rng[0], rng[1], "rating")
    labels, specs = _rating_labels(rating, like_threshold, rng)
    ts = _timestamps(data, cols[3], unit)
    return pd.DataFrame({"user_id": uid, "item_id": iid, "timestamp": ts, **labels}), {**_BASE_INTERACTIONS, **specs}


def _movies(table: _Table, id_col: str, ids: pd.Series, title_col: str, genres: pd.Series, rated: pd.Series,
            year: np.ndarray | None = None) -> pd.DataFrame:
    _check_unique(table, id_col, ids, "item")
    items = _items_frame(ids, _text(table, title_col), genres, year)
    return _cover(items, "item_id", rated, _ITEM_FILL, "item", table.path)


def _users(
    table: _Table, id_col: str, ids: pd.Series, features: dict[str, pd.Series], rated: pd.Series
) -> pd.DataFrame:
    _check_unique(table, id_col, ids, "user")
    users = pd.DataFrame({"user_id": ids, **{k: v.reset_index(drop=True) for k, v in features.items()}})
    return _cover(users, "user_id", rated, dict.fromkeys(features, UNKNOWN), "user", table.path)


def _rating_dataset(fmt: str, path: Path, name: str | None, inter: pd.DataFrame, specs: dict,
                    users: pd.DataFrame | None = None, items: pd.DataFrame | None = None) -> Dataset:
    schema = make_schema(
        name or path.name, specs, positive_label="interaction",
        users=USER_COLUMNS if users is not None else None, items=ITEM_COLUMNS if items is not None else None,
        source=f"{fmt}: {path.name}",
    )
    return _finish(Dataset(schema=schema, interactions=inter, users=users, items=items))


def import_movielens_100k(
    path: Path, *, like_threshold: float = 4.0, timestamp_unit: str = "auto", name: str | None = None
) -> Dataset:
    """MovieLens 100k folder (``u.data``, optional ``u.item`` and ``u.user``) -> Dataset (ratings 1..5)."""
    path, unit = _folder(path, "movielens-100k"), _unit(timestamp_unit)
    data = _read_text(path / "u.data", _TAB, _RATINGS)
    item_names = ["item", "title", "release", "video_release", "url", *[f"g{i}" for i in range(19)]]
    item_t = _optional(path / "u.item", dataclasses.replace(_PIPE, encoding="latin-1"), item_names)
    user_t = _optional(path / "u.user", _PIPE, ["user", "age", "gender", "occupation", "zip"])
    uids = _ids([(data, "user"), *_with(user_t, "user")], "user")
    iids = _ids([(data, "item"), *_with(item_t, "item")], "item")
    inter, specs = _explicit_ratings(data, tuple(_RATINGS), uids[0], iids[0], unit, (1.0, 5.0), like_threshold)
    items = users = None
    if item_t is not None:
        flags = np.stack([_numbers(item_t, f"g{i}", "genre flag") for i in range(19)], axis=1) > 0  # (I, 19)
        flags[:, 0] = False  # the "unknown" flag means: no genre
        genre_names = np.array(ML100K_GENRES, dtype=object)
        genres = pd.Series(["|".join(genre_names[row]) for row in flags], dtype="str")  # I <= a few thousand
        year = _title_year(_text(item_t, "title"))
        released = pd.to_numeric(_text(item_t, "release").str[-4:], errors="coerce")  # "01-Jan-1995"
        year = np.where(np.isnan(year), released.to_numpy(dtype=np.float64, na_value=np.nan), year)
        items = _movies(item_t, "item", iids[1], "title", genres, inter["item_id"], year)
    if user_t is not None:
        features = {
            "age_bucket": _age_bucket(_numbers(user_t, "age", "age")),
            "gender": _text(user_t, "gender"),
            "occupation": _text(user_t, "occupation"),
        }
        users = _users(user_t, "user", uids[1], features, inter["user_id"])
    return _rating_dataset("movielens-100k", path, name, inter, specs, users, items)


def import_movielens_latest(
    path: Path, *, like_threshold: float = 4.0, timestamp_unit: str = "auto", name: str | None = None
) -> Dataset:
    """MovieLens folder with ``ratings.csv`` or ``ratings.dat`` (+ movies, ML-1M users) -> Dataset (0.5..5)."""
    path, unit = _folder(path, "movielens-latest"), _unit(timestamp_unit)
    if (path / "ratings.csv").exists():
        data = _read_text(path / "ratings.csv", _CSV)
        cols = ("userId", "movieId", "rating", "timestamp")
        data.require(dict(zip(_RATINGS, cols)))
    elif (path / "ratings.dat").exists():
        data, cols = _read_text(path / "ratings.dat", _DAT, _RATINGS), tuple(_RATINGS)
    else:
        raise DatasetError(f"{path / 'ratings.csv'}: file not found (nor ratings.dat) for format 'movielens-latest'")
    if (path / "movies.csv").exists():
        movie_t, mcols = _read_text(path / "movies.csv", _CSV), ("movieId", "title", "genres")
        movie_t.require(dict(zip(("item", "title", "genres"), mcols)))
    else:
        mcols = ("item", "title", "genres")
        movie_t = _optional(path / "movies.dat", _DAT, list(mcols))
    user_t = None
    if cols[0] == "user":  # ML-1M: users.dat (gender, age group, occupation code)
        user_t = _optional(path / "users.dat", _DAT, ["user", "gender", "age", "occupation", "zip"])
    uids = _ids([(data, cols[0]), *_with(user_t, "user")], "user")
    iids = _ids([(data, cols[1]), *_with(movie_t, mcols[0])], "item")
    inter, specs = _explicit_ratings(data, cols, uids[0], iids[0], unit, (0.5, 5.0), like_threshold)
    items = users = None
    if movie_t is not None:
        items = _movies(movie_t, mcols[0], iids[1], mcols[1], _text(movie_t, mcols[2]), inter["item_id"])
    if user_t is not None:
        occ = _numbers(user_t, "occupation", "occupation code")
        occ_names = np.array(ML1M_OCCUPATIONS + [UNKNOWN], dtype=object)
        occ_idx = np.where((occ >= 0) & (occ < len(ML1M_OCCUPATIONS)), occ, len(ML1M_OCCUPATIONS)).astype(np.int64)
        features = {
            "age_bucket": _age_bucket(_numbers(user_t, "age", "age")),
            "gender": _text(user_t, "gender"),
            "occupation": pd.Series(occ_names[occ_idx], dtype="str"),
        }
        users = _users(user_t, "user", uids[1], features, inter["user_id"])
    return _rating_dataset("movielens-latest", path, name, inter, specs, users, items)


def import_movietweetings(
    path: Path, *, like_threshold: float = 8.0, timestamp_unit: str = "auto", name: str | None = None
) -> Dataset:
    """MovieTweetings folder (``ratings.dat``, optional ``movies.dat``) -> Dataset (ratings 0..10)."""
    path, unit = _folder(path, "movietweetings"), _unit(timestamp_unit)
    data = _read_text(path / "ratings.dat", _DAT, _RATINGS)
    movie_t = _optional(path / "movies.dat", _DAT, ["item", "title", "genres"])
    uids = _ids([(data, "user")], "user")
    iids = _ids([(data, "item"), *_with(movie_t, "item")], "item")
    inter, specs = _explicit_ratings(data, tuple(_RATINGS), uids[0], iids[0], unit, (0.0, 10.0), like_threshold)
    items = None
    if movie_t is not None:
        items = _movies(movie_t, "item", iids[1], "title", _text(movie_t, "genres"), inter["item_id"])
    return _rating_dataset("movietweetings", path, name, inter, specs, items=items)


# --------------------------------------------------------------------------------------------------------
# Generic CSV / Parquet with a column mapping
# --------------------------------------------------------------------------------------------------------

_LABEL_KINDS = ("binary", "graded", "count")
_SEP_NAMES = {"\\t": "\t", "tab": "\t"}  # ways to spell a tab on a command line (--map sep='\t')
_SNIFF = (",", "\t", ";", "|", "::")  # separators tried when the mapping gives none, in order of preference
UNTIMED = "none"  # ImportMapping.timestamp of a log without times
_FEATURE_KINDS = ("categorical", "numeric", "text")
_CONTEXT_KINDS = ("categorical", "numeric")
_CANONICAL = ("user_id", "item_id", "timestamp")


@dataclasses.dataclass(frozen=True)
class ImportMapping:
    """How the columns of a generic CSV/Parquet log map to the canonical dataset.

    Load it from YAML with :func:`load_mapping` (or ``recsys.config.from_dict(ImportMapping, data)``).

    ``user``, ``item``: source column names. ``timestamp``: the time column (default: the column named
    ``timestamp`` when there is one; without it, or with ``none``, the log is *untimed*: the dataset records
    ``has_timestamps: false``, ``timestamp`` holds each row's position in the file, an order and not a time,
    and only the ``random_holdout`` split applies). ``labels``: source column -> ``binary`` | ``graded`` |
    ``count`` (integers >= 0 counting events, such as plays; baselines log-scale them, see
    ``eval.baseline_params.svd.counts``), kept under the source name. ``rating``: an explicit rating column,
    which yields ``rating`` (graded; ``rating_range`` is the declared range, checked, default the observed
    range), ``interaction`` (= 1) and, when ``like_threshold`` is set, ``like`` (= rating >= threshold). Without
    ``rating`` nor ``labels`` every row is an engagement: ``interaction`` = 1. ``positive_label`` (default
    ``interaction`` when it exists, else the first binary label) must be binary; when it has zeros, those rows
    are impressions (shown, not engaged) and the dataset says ``has_impressions``.
    ``user_features`` / ``item_features``: column -> ``categorical`` | ``numeric`` | ``text``, read from
    ``users_file`` / ``items_file`` (paths relative to the log's folder, same format, keyed by the ``user`` /
    ``item`` column) or, without them, from the log itself (each user's/item's value on its latest row).
    ``context``: column -> ``categorical`` | ``numeric``, request-time columns kept on the interactions.
    ``sep``: text separator: one character, ``\\t`` (or ``tab``) or ``::``; default ``\\t`` for ``.tsv``/``.tab``
    files, else detected from the first lines among ``,``, tab, ``;``, ``|`` and ``::`` (the choice is logged).
    ``encoding``: ``auto`` = UTF-8 falling back to latin-1.
    """

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = None
    timestamp_unit: TimestampUnit = TimestampUnit.AUTO
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    rating: str | None = None
    rating_range: tuple[float, float] | None = None
    like_threshold: float | None = None
    positive_label: str | None = None
    user_features: dict[str, str] = dataclasses.field(default_factory=dict)
    item_features: dict[str, str] = dataclasses.field(default_factory=dict)
    context: dict[str, str] = dataclasses.field(default_factory=dict)
    users_file: str | None = None
    items_file: str | None = None
    sep: str | None = None
    encoding: str = "auto"
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp_unit", _config_unit(self.timestamp_unit))
        for key, allowed in (("labels", _LABEL_KINDS), ("user_features", _FEATURE_KINDS),
                             ("item_features", _FEATURE_KINDS), ("context", _CONTEXT_KINDS)):
            for cname, kind in getattr(self, key).items():
                if kind not in allowed:
                    raise ConfigError(
                        f"{key}.{cname}: kind {kind!r} is not allowed; expected one of {', '.join(map(repr, allowed))}"
                    )
        for key in ("user", "item"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: a column name is required")
        if self.timestamp is not None and not self.timestamp:
            raise ConfigError("timestamp: a column name, or 'none' for a log without times")
        if self.sep is not None:
            object.__setattr__(self, "sep", _SEP_NAMES.get(self.sep.lower(), self.sep))
        if self.rating_range is not None and not self.rating_range[0] < self.rating_range[1]:
            raise ConfigError(f"rating_range: need low < high, got {list(self.rating_range)}")
        if self.rating is None and (self.rating_range is not None or self.like_threshold is not None):
            raise ConfigError("rating_range/like_threshold: only valid with a rating column (key 'rating')")
        if self.sep is not None and len(self.sep) != 1 and self.sep != "::":
            raise ConfigError(f"sep: expected one character, '\\t' (or 'tab') or '::', got {self.sep!r}")
        outputs = self.label_names()
        if self.rating is not None and self.rating in self.labels:
            raise ConfigError(f"labels.{self.rating}: the column is already the rating column")
        clash = [n for n in outputs if n in _CANONICAL or list(outputs).count(n) > 1]
        clash += [c for c in self.context if c in _CANONICAL or c in outputs]
        if clash:
            raise ConfigError(f"labels/context: output name(s) {sorted(set(clash))} clash with other columns")
        for what in ("user", "item"):
            features, file = getattr(self, f"{what}_features"), getattr(self, f"{what}s_file")
            if file is not None and not features:
                raise ConfigError(f"{what}s_file: given, but {what}_features is empty (nothing to read from it)")
            bad = [c for c in features if c in (f"{what}_id", getattr(self, what))]
            if bad:
                raise ConfigError(f"{what}_features.{bad[0]}: a feature cannot be the {what} id column")
        if self.positive_label is not None:
            binaries = [n for n, k in outputs.items() if k == "binary"]
            if self.positive_label not in binaries:
                raise ConfigError(
                    f"positive_label: {self.positive_label!r} is not a binary label; binary labels: {binaries}"
                )

    def label_names(self) -> dict[str, str]:
        """Output label name -> kind, in output order."""
        out: dict[str, str] = {}
        if self.rating is not None:
            out.update({"rating": "graded", "interaction": "binary"})
            if self.like_threshold is not None:
                out["like"] = "binary"
        out.update(self.labels)
        if "binary" not in out.values():  # no engagement label given: every row is one
            if "interaction" in out:
                raise ConfigError("labels.interaction: a graded label cannot take the name of the implicit label")
            out["interaction"] = "binary"
        return out


def _config_unit(value: Any) -> TimestampUnit:
    try:
        return _unit(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_mapping(path: str | Path) -> ImportMapping:
    """Read an :class:`ImportMapping` from YAML (duplicate and unknown keys are errors naming the file)."""
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an import mapping must be a mapping of keys, got {type(raw).__name__}")
    try:
        return from_dict(ImportMapping, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_generic(path: Path, fmt: str, mapping: ImportMapping) -> _Table:
    if fmt == "parquet":
        return _read_parquet(path)
    sep = mapping.sep or ("\t" if path.suffix.lower() in (".tsv", ".tab") else None)
    if sep is None:
        _check_file(path)
        sep = sniff_separator(path)
        logger.info("%s: fields separated by %r (detected from the first lines; set sep to choose another)",
                    path, sep)
    return _read_text(path, _TextFormat(sep, sep != "::", True, mapping.encoding))


def sniff_separator(path: Path, n_lines: int = 20, n_bytes: int = 1 << 16) -> str:
    """The separator of a delimited text file with a header: the first of :data:`_SNIFF` that splits each of the
    first ``n_lines`` non-empty lines into the same number (>= 2) of fields (CSV quoting respected); failing
    that, the one giving the header the most fields; ``,`` when none splits it."""
    with open(path, "rb") as fh:
        head = fh.read(n_bytes)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = text.splitlines()
    if len(head) == n_bytes and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    lines = [ln for ln in lines if ln.strip()][:n_lines]
    if not lines:
        return ","

    def fields(sep: str) -> list[int]:
        if sep == "::":
            return [len(ln.split("::")) for ln in lines]
        return [len(rec) for rec in csv.reader(lines, delimiter=sep, quotechar='"')]

    counts = {sep: fields(sep) for sep in _SNIFF}
    for sep, n in counts.items():
        if n[0] >= 2 and len(set(n)) == 1:
            return sep
    best = max(_SNIFF, key=lambda sep: counts[sep][0])  # max keeps the first of equals: the preference order
    return best if counts[best][0] >= 2 else ","


def _feature_column(table: _Table, name: str, kind: str) -> np.ndarray:
    """(N,) values of a feature column: numeric -> float64 (NaN allowed), text -> stripped strings."""
    if kind == "numeric":
        return _numbers(table, name, "numeric feature", allow_missing=True)
    s = table.df[name]
    if kind == "text" or _is_text(s):
        return _text(table, name, fill="").to_numpy()
    return s.to_numpy()


def _read_side(log: _Table, fmt: str, mapping: ImportMapping, file: str, key: str, what: str) -> _Table:
    """The users/items file named by the mapping (relative to the log's folder), checked for its columns."""
    p = Path(file)
    side = _read_generic(p if p.is_absolute() else log.path.parent / p, fmt, mapping)
    features = mapping.user_features if what == "user" else mapping.item_features
    for mkey, cname in {what: key, **{f"{what}_features.{c}": c for c in features}}.items():
        if cname not in side.df.columns:
            raise DatasetError(
                f"{side.path}: the mapping ({mkey}) names column {cname!r}, which does not exist; "
                f"columns present: {list(side.df.columns)}"
            )
    return side


def _side_frame(
    side: _Table, key: str, ids: pd.Series, features: dict[str, str], what: str, needed: pd.Series
) -> pd.DataFrame:
    """Users/items table from its own file; ids rated but absent get placeholder rows."""
    _check_unique(side, key, ids, what)
    frame = pd.DataFrame({f"{what}_id": ids})
    for c, kind in features.items():
        frame[c] = _feature_column(side, c, kind)
    fill = {c: (np.nan if k == "numeric" else UNKNOWN if k == "categorical" else "") for c, k in features.items()}
    return _cover(frame, f"{what}_id", needed, fill, what, side.path)


def _log_frame(log: _Table, ids: pd.Series, ts: np.ndarray, features: dict[str, str], what: str) -> pd.DataFrame:
    """Users/items table from the log: each id's feature values on its latest row (a change is logged)."""
    order = np.argsort(ts, kind="stable")
    frame = pd.DataFrame({f"{what}_id": ids.to_numpy()[order]})
    for c, kind in features.items():
        frame[c] = _feature_column(log, c, kind)[order]
    varying = frame.groupby(f"{what}_id", sort=False)[list(features)].nunique(dropna=False).gt(1).any(axis=1)
    if varying.any():
        logger.warning(
            "%s: %d %s(s) have more than one value of %s; keeping each one's latest",
            log.path, int(varying.sum()), what, list(features),
        )
    return frame.drop_duplicates(f"{what}_id", keep="last").reset_index(drop=True)


def _feature_specs(features: dict[str, str], what: str) -> dict:
    return {f"{what}_id": col(f"{what}_id"), **{c: col(k, None if k == "text" else k) for c, k in features.items()}}


def import_generic(path: Path, fmt: str, mapping: ImportMapping) -> Dataset:
    """Import a generic ``csv`` or ``parquet`` interaction log with a column ``mapping`` (see ImportMapping)."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"import_generic: format must be 'csv' or 'parquet', got {fmt!r}")
    if not isinstance(mapping, ImportMapping):
        raise TypeError(f"import_generic: mapping must be an ImportMapping, got {type(mapping).__name__}")
    path = Path(path)
    log = _read_generic(path, fmt, mapping)
    return _import_log(log, fmt, mapping, mapping.name or (path.stem if path.is_file() else path.name), path.name)


def import_frame(frame: pd.DataFrame, *, mapping: ImportMapping | None = None, **fields: Any) -> Dataset:
    """A pandas DataFrame of interactions -> Dataset, with ``mapping`` or the :class:`ImportMapping` fields as
    keywords, checked as a file would be (errors name the column and the 0-based row). ``users_file`` /
    ``items_file`` do not apply: user and item features come from the frame itself."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"import_frame: expected a pandas DataFrame, got {type(frame).__name__}")
    mapping = _mapping(mapping, fields)
    if mapping.users_file or mapping.items_file:
        raise ConfigError("users_file/items_file: not for a DataFrame (features are read from the frame itself)")
    if len(frame) == 0:
        raise DatasetError("DataFrame: no rows")
    name = mapping.name or "dataframe"
    log = _Table(Path(f"DataFrame {name!r}"), frame.reset_index(drop=True), None, None)
    return _import_log(log, "dataframe", mapping, name, "DataFrame")


def _import_log(log: _Table, fmt: str, mapping: ImportMapping, name: str, source: str) -> Dataset:
    """The canonical dataset of a read log (see :func:`import_generic`)."""
    tcol = _time_column(log, mapping)
    needed = {"user": mapping.user, "item": mapping.item}
    if tcol is not None:
        needed["timestamp"] = tcol
    if mapping.rating:
        needed["rating"] = mapping.rating
    needed.update({f"labels.{c}": c for c in mapping.labels})
    needed.update({f"context.{c}": c for c in mapping.context})
    if mapping.users_file is None:
        needed.update({f"user_features.{c}": c for c in mapping.user_features})
    if mapping.items_file is None:
        needed.update({f"item_features.{c}": c for c in mapping.item_features})
    for key, cname in needed.items():
        if cname not in log.df.columns:
            raise DatasetError(
                f"{log.path}: the mapping ({key}) names column {cname!r}, which does not exist; "
                f"columns present: {list(log.df.columns)}"
            )
    if tcol is not None:
        ts = _timestamps(log, tcol, mapping.timestamp_unit)
    else:  # untimed: the row order stands in for time (histories stay in file order); no split may use it as time
        ts = np.arange(len(log.df), dtype=np.int64)
    # side files are read before the ids are converted, so int-or-string is decided over every file
    users_t = _read_side(log, fmt, mapping, mapping.users_file, mapping.user, "user") if mapping.users_file else None
    items_t = _read_side(log, fmt, mapping, mapping.items_file, mapping.item, "item") if mapping.items_file else None
    uids = _ids([(log, mapping.user)] + ([(users_t, mapping.user)] if users_t else []), "user")
    iids = _ids([(log, mapping.item)] + ([(items_t, mapping.item)] if items_t else []), "item")
    inter: dict[str, Any] = {"user_id": uids[0], "item_id": iids[0], "timestamp": ts}
    specs = dict(_BASE_INTERACTIONS)
    if tcol is None:
        specs["timestamp"] = col("timestamp", description=f"row position in {source} (the log has no times)")
    if mapping.rating is not None:
        rating = _numbers(log, mapping.rating, "rating")
        if mapping.rating_range is not None:
            rng = (float(mapping.rating_range[0]), float(mapping.rating_range[1]))
            _check_range(log, mapping.rating, rating, rng[0], rng[1], "rating")
        else:
            rng = (float(rating.min()), float(rating.max()))
        cols, lspecs = _rating_labels(rating, mapping.like_threshold, rng)
        inter.update(cols)
        specs.update(lspecs)
    for cname, kind in mapping.labels.items():
        if kind == "binary":
            inter[cname] = _binary(log, cname)
        elif kind == "count":
            inter[cname] = _counts(log, cname)
        else:
            inter[cname] = _numbers(log, cname, "graded label").astype(np.float32)
            _hint_counts(log, cname, inter[cname])
        specs[cname] = col("label", kind)
    label_kinds = mapping.label_names()
    if "interaction" in label_kinds and "interaction" not in inter:  # neither rating nor labels: implicit log
        inter["interaction"] = np.ones(len(ts), dtype=np.int8)
        specs["interaction"] = col("label", "binary", description="1 for every row")
    binaries = [n for n, k in label_kinds.items() if k == "binary"]
    positive = mapping.positive_label or ("interaction" if "interaction" in binaries else binaries[0])
    for cname, kind in mapping.context.items():
        inter[cname] = _feature_column(log, cname, kind)
        specs[cname] = col("context", kind)
    interactions = pd.DataFrame(inter)
    users = items = None
    if mapping.user_features:
        users = (_side_frame(users_t, mapping.user, uids[1], mapping.user_features, "user", interactions["user_id"])
                 if users_t else _log_frame(log, uids[0], ts, mapping.user_features, "user"))
    if mapping.item_features:
        items = (_side_frame(items_t, mapping.item, iids[1], mapping.item_features, "item", interactions["item_id"])
                 if items_t else _log_frame(log, iids[0], ts, mapping.item_features, "item"))
    schema = make_schema(
        name,
        specs,
        positive_label=positive,
        users=_feature_specs(mapping.user_features, "user") if users is not None else None,
        items=_feature_specs(mapping.item_features, "item") if items is not None else None,
        has_impressions=bool((interactions[positive] == 0).any()),
        source=f"{fmt}: {source}",
        has_timestamps=tcol is not None,
    )
    return _finish(Dataset(schema=schema, interactions=interactions, users=users, items=items))


def _time_column(log: _Table, mapping: ImportMapping) -> str | None:
    """The log's time column, or None for an untimed log (see :class:`ImportMapping`; the choice is logged)."""
    if mapping.timestamp is None:
        if "timestamp" in log.df.columns:
            return "timestamp"
        logger.warning(
            "%s: no 'timestamp' column (columns: %s): importing an untimed log; the rows keep their file order "
            "and only the random_holdout split applies (name the time column with timestamp=COLUMN)",
            log.path, list(log.df.columns),
        )
        return None
    if mapping.timestamp.lower() == UNTIMED:
        logger.info("%s: timestamp 'none': importing an untimed log (only the random_holdout split applies)", log.path)
        return None
    return mapping.timestamp


def _counts(table: _Table, name: str) -> np.ndarray:
    """(N,) int64 event counts (integers >= 0) of a ``count`` label; anything else is an error naming the row."""
    v = _numbers(table, name, "count")
    bad = (v < 0) | (v != np.floor(v))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise table.error(name, r, f"a count must be an integer >= 0, got {v[r]:g}")
    return v.astype(np.int64)


COUNT_HINT_MAX = 1000  # a graded label of integers >= 0 reaching this is probably a count


def _hint_counts(table: _Table, name: str, v: np.ndarray) -> None:
    if len(v) and v.min() >= 0 and v.max() >= COUNT_HINT_MAX and np.all(v == np.floor(v)):
        logger.warning(
            "%s: graded label %r holds integers from %g to %g: if they count events (plays, views), declare its "
            "kind 'count' (labels.%s: count) so that baselines log-scale them instead of reading them as ratings",
            table.path, name, float(v.min()), float(v.max()), name,
        )


def import_csv(path: Path, *, mapping: ImportMapping | None = None, **fields: Any) -> Dataset:
    """Generic CSV: ``mapping`` or the :class:`ImportMapping` fields as keywords (checked like YAML)."""
    return import_generic(path, "csv", _mapping(mapping, fields))


def import_parquet(path: Path, *, mapping: ImportMapping | None = None, **fields: Any) -> Dataset:
    """Generic Parquet: ``mapping`` or the :class:`ImportMapping` fields as keywords (checked like YAML)."""
    return import_generic(path, "parquet", _mapping(mapping, fields))


def _mapping(mapping: ImportMapping | None, fields: dict[str, Any]) -> ImportMapping:
    if mapping is not None and fields:
        raise TypeError(f"pass either mapping= or mapping fields, not both (got {sorted(fields)})")
    if mapping is not None:
        return mapping
    def plain(v: Any) -> Any:  # keyword values as YAML would give them
        return v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v

    data = {k: plain(v) for k, v in fields.items()}
    return from_dict(ImportMapping, data)


FORMATS: dict[str, Callable[..., Dataset]] = {
    "movielens-100k": import_movielens_100k,
    "movielens-latest": import_movielens_latest,
    "movietweetings": import_movietweetings,
    "csv": import_csv,
    "parquet": import_parquet,
}


def import_dataset(fmt: str, path: Path, **options: Any) -> Dataset:
    """Import ``path`` in format ``fmt`` (a key of :data:`FORMATS`); unknown formats/options are errors."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; supported formats: {', '.join(FORMATS)}")
    fn = FORMATS[fmt]
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"format {fmt!r}: unknown option(s) {unknown}; allowed options: {allowed}")
    return fn(Path(path), **options)
