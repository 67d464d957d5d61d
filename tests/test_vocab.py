"""External id <-> index (recsys.data.vocab): round trip, OOV, int and string ids, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.vocab import Vocab


@pytest.mark.parametrize(
    "ids",
    [
        np.array([30, 10, 30, 20, 10], dtype=np.int64),
        np.array([7, 3, 7], dtype=np.int32),
        ["b", "a", "b", "0042", "42"],
        pd.Series(["x", "y", "x"], dtype="str"),
    ],
    ids=["int64", "int32", "str-list", "str-series"],
)
def test_encode_decode_round_trip(ids) -> None:
    v = Vocab(ids)
    uniq = list(dict.fromkeys(list(ids)))  # first-appearance order
    assert len(v) == len(uniq) and v.oov == len(uniq) and v.size == len(uniq) + 1
    assert list(v.ids) == uniq
    idx = v.encode(ids)
    assert idx.dtype == np.int64 and idx.shape == (len(ids),)
    assert list(idx) == [uniq.index(x) for x in ids]
    assert list(v.decode(idx)) == list(ids)


def test_unseen_ids_map_to_oov() -> None:
    v = Vocab([5, 6, 7])
    assert v.encode([7, 8, 5, -1]).tolist() == [2, 3, 0, 3]
    assert v.encode(["5"]).tolist() == [3]  # a string is not the integer id
    s = Vocab(["0042", "a"])
    assert s.encode(["42", "0042", None]).tolist() == [2, 0, 2]  # leading zeros matter
    assert 5 in v and 8 not in v and "a" in s
    assert v.encode([]).tolist() == []


def test_decode_out_of_range_is_an_error() -> None:
    v = Vocab(["a", "b"])
    with pytest.raises(IndexError, match=r"out of range \[0, 2\)"):
        v.decode([0, v.oov])
    with pytest.raises(IndexError):
        v.decode([-1])


def test_missing_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="missing value"):
        Vocab([1.0, np.nan])
    with pytest.raises(ValueError, match="missing value"):
        Vocab(["a", None])


def test_from_values_union_in_first_appearance_order() -> None:
    v = Vocab.from_values(np.array([3, 1]), pd.Series([1, 2]), None, [])
    assert list(v.ids) == [3, 1, 2]
    assert len(Vocab.from_values()) == 0


@pytest.mark.parametrize("ids", [np.array([9, 2, 5]), ["u-1", "u-2", "007"]], ids=["int", "str"])
def test_save_load(tmp_path: Path, ids) -> None:
    v = Vocab(ids)
    v.save(tmp_path / "v.parquet")
    w = Vocab.load(tmp_path / "v.parquet")
    assert w == v and list(w.ids) == list(v.ids)
    assert w.encode(ids).tolist() == v.encode(ids).tolist()
    pd.DataFrame({"id": [1], "other": [2]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: a vocabulary file has exactly one column 'id'"):
        Vocab.load(tmp_path / "bad.parquet")


def test_equality() -> None:
    assert Vocab([1, 2]) == Vocab([1, 2, 1])
    assert Vocab([1, 2]) != Vocab([2, 1])
    assert Vocab(["a"]) != Vocab([1])
