"""The canonical dataset folder (recsys.data.schema): round trip, validation errors, atomic writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.schema import (
    DATASET_YAML,
    Dataset,
    DatasetError,
    Kind,
    Role,
    col,
    make_schema,
    read_dataset,
    read_schema,
    validate,
    write_dataset,
)
from recsys.io import OutputExistsError


def tiny(**replace: pd.DataFrame) -> Dataset:
    """4 interactions (unsorted), 3 users, 3 items, 2 links; ``replace`` swaps in other tables."""
    schema = make_schema(
        "tiny",
        {
            "user_id": col("user_id"),
            "item_id": col("item_id"),
            "timestamp": col("timestamp"),
            "click": col("label", "binary"),
            "rating": col("label", "graded", (1.0, 5.0)),
            "device": col("context", "categorical"),
        },
        positive_label="click",
        users={"user_id": col("user_id"), "age": col("numeric", "numeric")},
        items={"item_id": col("item_id"), "category": col("categorical", "categorical")},
        item_links={"src": col("src"), "dst": col("dst")},
        description="a tiny test dataset",
    )
    tables = {
        "interactions": pd.DataFrame(
            {
                "user_id": [1, 2, 1, 3],
                "item_id": ["a", "b", "c", "a"],
                "timestamp": np.array([30, 10, 20, 10], dtype=np.int64),
                "click": np.array([1, 0, 1, 1], dtype=np.int8),
                "rating": [5.0, 1.0, 3.5, 4.0],
                "device": ["ios", "web", "ios", "web"],
            }
        ),
        "users": pd.DataFrame({"user_id": [1, 2, 3], "age": [20.0, np.nan, 41.0]}),
        "items": pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["x", "y", "x"]}),
        "item_links": pd.DataFrame({"src": ["a", "b"], "dst": ["b", "c"]}),
    }
    tables.update(replace)
    return Dataset(schema=schema, **tables)


def with_interactions(**cols) -> Dataset:
    inter = tiny().interactions.copy()
    for name, values in cols.items():
        if values is None:
            inter = inter.drop(columns=name)
        else:
            inter[name] = values
    return tiny(interactions=inter)


def test_round_trip(tmp_path: Path) -> None:
    ds = tiny()
    write_dataset(ds, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [DATASET_YAML, "interactions.parquet", "users.parquet", "items.parquet", "item_links.parquet"]
    )
    back = read_dataset(tmp_path / "out")
    assert back.schema == ds.schema
    for name in ("interactions", "users", "items", "item_links"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(ds, name), check_dtype=True)
    assert back.path == tmp_path / "out"
    assert back.schema.tables["interactions"].columns["rating"].range == (1.0, 5.0)
    assert back.schema.context_columns == ["device"] and back.schema.labels == ["click", "rating"]


def test_validate_sorts_by_time_stably() -> None:
    ds = validate(tiny())
    assert ds.interactions["timestamp"].tolist() == [10, 10, 20, 30]
    assert ds.interactions["user_id"].tolist() == [2, 3, 1, 1]  # ties keep their order


def test_read_subset_of_tables(tmp_path: Path) -> None:
    write_dataset(tiny(), tmp_path / "out")
    ds = read_dataset(tmp_path / "out", tables=("items",))
    assert ds.items is not None and ds.users is None and ds.item_links is None
    assert len(ds.interactions) == 4


@pytest.mark.parametrize(
    "cols, pattern",
    [
        ({"rating": None}, r"interactions\.parquet: missing column\(s\) \['rating'\]"),
        ({"extra": [1, 2, 3, 4]}, r"column\(s\) \['extra'\] are not declared"),
        ({"user_id": [1.0, np.nan, 2.0, 3.0]}, r"column 'user_id' has a missing id at row 1"),
        ({"item_id": ["a", None, "c", "a"]}, r"column 'item_id' has a missing id at row 1"),
        ({"click": [1, 0, 2, 1]}, r"binary label 'click' must be 0 or 1, got 2\.0 at row 2"),
        ({"rating": [5.0, 1.0, 6.0, 4.0]}, r"label 'rating' must lie in \[1\.0, 5\.0\], got 6\.0 at row 2"),
        ({"rating": [5.0, np.nan, 1.0, 4.0]}, r"label column 'rating' is missing at row 1"),
        ({"timestamp": [1.5, 2.0, 3.0, 4.0]}, r"column 'timestamp' must hold int64 Unix seconds, found dtype float64"),
        # regression: a nullable Int64 timestamp with <NA> raised a bare ValueError without the file
        ({"timestamp": pd.array([1, None, 3, 4], dtype="Int64")}, r"column 'timestamp' has a missing timestamp at row 1"),
        ({"click": ["y", "n", "y", "y"]}, r"label column 'click' must be numeric"),
    ],
)
def test_interaction_errors(cols: dict, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        validate(with_interactions(**cols))


def test_empty_table() -> None:
    with pytest.raises(DatasetError, match=r"tiny/items\.parquet: table is empty"):
        validate(tiny(items=tiny().items.iloc[:0]))


def test_duplicate_user_ids() -> None:
    users = pd.DataFrame({"user_id": [1, 2, 1], "age": [1.0, 2.0, 3.0]})
    with pytest.raises(DatasetError, match=r"users\.parquet: duplicate user_id 1 at row 2"):
        validate(tiny(users=users))


def test_links_to_unknown_items() -> None:
    links = pd.DataFrame({"src": ["a", "b"], "dst": ["b", "zzz"]})
    with pytest.raises(DatasetError, match=r"item_links\.parquet: column 'dst' refers to unknown item 'zzz' at row 1"):
        validate(tiny(item_links=links))


def test_declared_table_missing() -> None:
    ds = tiny()
    ds.users = None
    with pytest.raises(DatasetError, match=r"table 'users' is declared in dataset\.yaml but missing"):
        validate(ds)


def test_duplicate_keys_in_dataset_yaml(tmp_path: Path) -> None:
    write_dataset(tiny(), tmp_path / "out")
    yml = tmp_path / "out" / DATASET_YAML
    text = yml.read_text()
    assert text.startswith("name: tiny\n")
    yml.write_text("name: tiny\nname: again\n" + text[len("name: tiny\n"):])
    with pytest.raises(DatasetError, match=r"dataset\.yaml.*duplicate key 'name' at line 2 \(first at line 1\)"):
        read_dataset(tmp_path / "out")


def test_schema_errors(tmp_path: Path) -> None:
    base = {"user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp")}
    with pytest.raises(DatasetError, match=r"positive_label 'rating' must be a binary label"):
        make_schema("s", {**base, "rating": col("label", "graded")}, positive_label="rating")
    with pytest.raises(DatasetError, match=r"positive_label 'click' is not a label column"):
        make_schema("s", base, positive_label="click")
    with pytest.raises(DatasetError, match=r"needs exactly one column with role 'timestamp'"):
        make_schema("s", {"user_id": col("user_id"), "item_id": col("item_id"), "c": col("label", "binary")}, "c")
    with pytest.raises(DatasetError, match=r"tables\.users\.columns\.c: labels belong to interactions"):
        make_schema("s", {**base, "c": col("label", "binary")}, "c", users={"user_id": col("user_id"), "c": col("label", "binary")})
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / DATASET_YAML).write_text("name: x\nformat_version: 99\ntables: {}\npositive_label: c\n")
    with pytest.raises(DatasetError, match="format_version 99 is not supported"):
        read_schema(tmp_path / "d")
    (tmp_path / "d" / DATASET_YAML).write_text("name: x\ntables: {}\npositive_label: c\ncolour: red\n")
    with pytest.raises(DatasetError, match=r"unknown key\(s\) 'colour'"):
        read_schema(tmp_path / "d")


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a dataset folder"):
        read_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"dataset\.yaml: not found"):
        read_dataset(tmp_path / "empty")
    write_dataset(tiny(), tmp_path / "out")
    (tmp_path / "out" / "users.parquet").unlink()
    with pytest.raises(DatasetError, match=r"users\.parquet: table 'users' declared in dataset\.yaml but the file is missing"):
        read_dataset(tmp_path / "out")
    (tmp_path / "out" / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=r"items\.parquet: cannot read as Parquet"):
        read_dataset(tmp_path / "out", tables=("items",))


def test_output_exists_needs_overwrite(tmp_path: Path) -> None:
    write_dataset(tiny(), tmp_path / "out")
    with pytest.raises(OutputExistsError, match="output folder exists"):
        write_dataset(tiny(), tmp_path / "out")
    smaller = tiny(items=tiny().items.assign(category=["q", "q", "q"]))
    write_dataset(smaller, tmp_path / "out", overwrite=True)
    assert read_dataset(tmp_path / "out").items["category"].tolist() == ["q", "q", "q"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or trash folder left


def test_failed_validation_writes_nothing(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    with pytest.raises(DatasetError):
        write_dataset(with_interactions(click=[1, 0, 7, 1]), parent / "out")
    assert not (parent / "out").exists()
    assert not parent.exists() or list(parent.iterdir()) == []


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    """Validation passes but Parquet cannot store a column mixing ints and strings: no output, no temp."""
    (tmp_path / "keep.txt").write_text("x")
    bad = tiny(items=pd.DataFrame({"item_id": ["a", "b", "c"], "category": pd.Series([1, "y", 2.5], dtype=object)}))
    with pytest.raises(Exception):
        write_dataset(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_make_schema_kinds() -> None:
    ds = tiny()
    spec = ds.schema.tables["interactions"]
    assert spec.names(Role.LABEL) == ["click", "rating"]
    assert spec.columns["click"].kind is Kind.BINARY
    assert dataclasses.replace(ds.schema, name="other") != ds.schema
