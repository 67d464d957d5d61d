"""Importers (recsys.data.importers) and dataset statistics (recsys.data.stats) on tiny fixture files."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.configlib import ConfigError, from_dict
from recsys.data import importers as imp
from recsys.data.importers import FORMATS, ImportMapping, import_dataset, import_generic, load_mapping
from recsys.data.schema import DatasetError, Kind, Role, read_dataset, write_dataset
from recsys.data.stats import dataset_stats, format_stats, gini, top_share


def write(path: Path, text: str, newline: str = "\n", encoding: str = "utf-8", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", newline).encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------

ML_LATEST_RATINGS = """userId,movieId,rating,timestamp
1,10,4.0,964982703
1,20,2.5,964982224
2,10,5.0,964983815
2,30,0.5,964982931
2,10,3.0,964990000
"""
ML_LATEST_MOVIES = """movieId,title,genres
10,"American President, The (1995)",Comedy|Drama|Romance
20,"Say ""Hello"" (2001)",(no genres listed)
30,Babylon 5,Sci-Fi
40,Death Note: Desu nôto (2006–2007),Animation
"""


@pytest.fixture(params=["\n", "\r\n"], ids=["LF", "CRLF"])
def ml_latest(tmp_path: Path, request) -> Path:
    d = tmp_path / "ml-latest-tiny"
    write(d / "ratings.csv", ML_LATEST_RATINGS, request.param, bom=True)
    write(d / "movies.csv", ML_LATEST_MOVIES, request.param)
    return d


def ml100k(tmp_path: Path, newline: str = "\n") -> Path:
    d = tmp_path / "ml-100k"
    write(d / "u.data", "1\t10\t3\t881250949\n2\t10\t5\t891717742\n1\t20\t4\t878887116\n", newline)
    flags_a = "|".join(["0", "0", "0", "1", "1"] + ["0"] * 14)  # Animation, Children's
    flags_b = "|".join(["1"] + ["0"] * 18)  # unknown
    write(
        d / "u.item",
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags_a}\n20|Café Noir|01-Jan-1999||http://y|{flags_b}\n",
        newline,
        encoding="latin-1",
    )
    write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n", newline)
    return d


def movietweetings(tmp_path: Path, newline: str = "\n") -> Path:
    d = tmp_path / "mt"
    write(
        d / "ratings.dat",
        "1::0114709::8::1365029107\n1::1853728::10::1366576639\n2::0114709::0::1364690142\n3::0002844::7::1364690100\n",
        newline,
    )
    write(
        d / "movies.dat",
        "0002844::Fantômas - À l'ombre de la guillotine (1913)::Crime|Drama\n"
        "0114709::Toy Story (1995)::\n1853728::Django Unchained (2012)::Western\n",
        newline,
    )
    write(d / "users.dat", "1::177651718\n2::123\n3::456\n", newline)
    return d


# --------------------------------------------------------------------------------------------------------
# Named formats
# --------------------------------------------------------------------------------------------------------


def test_movielens_latest_csv(ml_latest: Path) -> None:
    ds = import_dataset("movielens-latest", ml_latest)
    it = ds.interactions
    assert list(it.columns) == ["user_id", "item_id", "timestamp", "rating", "interaction", "like"]
    assert len(it) == 5  # the duplicate (2, 10) rating is a separate event
    assert it["timestamp"].is_monotonic_increasing and it["timestamp"].dtype == np.int64
    assert it["user_id"].dtype == np.int64 and it["item_id"].dtype == np.int64
    by_ts = it.set_index("timestamp")
    assert by_ts.loc[964982931, "rating"] == 0.5 and by_ts.loc[964982931, "like"] == 0
    assert by_ts.loc[964982703, "like"] == 1 and by_ts.loc[964990000, "like"] == 0  # 3.0 < 4
    assert it["interaction"].eq(1).all()
    assert ds.schema.positive_label == "interaction"
    col = ds.schema.tables["interactions"].columns
    assert col["rating"].kind is Kind.GRADED and col["rating"].range == (0.5, 5.0)
    items = ds.items.set_index("item_id")
    assert len(items) == 4  # the catalogue keeps unrated movie 40
    assert items.loc[10, "title"] == "American President, The (1995)"
    assert items.loc[20, "title"] == 'Say "Hello" (2001)'
    assert items.loc[10, "genres"] == "Comedy|Drama|Romance" and items.loc[10, "category"] == "Comedy"
    assert items.loc[20, "genres"] == "" and items.loc[20, "category"] == imp.NO_CATEGORY
    assert items.loc[10, "year"] == 1995 and items.loc[40, "year"] == 2006 and np.isnan(items.loc[30, "year"])
    assert ds.schema.tables["items"].columns["title"].role is Role.TEXT


def test_like_threshold_option(ml_latest: Path) -> None:
    ds = import_dataset("movielens-latest", ml_latest, like_threshold=3.0)
    assert ds.interactions.set_index("timestamp").loc[964990000, "like"] == 1


def test_movielens_1m_dat(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(d / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Señor (1996)::Animation|Children's\n",
          encoding="latin-1")
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = import_dataset("movielens-latest", d)
    assert len(ds.interactions) == 3
    items = ds.items.set_index("item_id")
    assert items.loc[661, "title"] == "Señor (1996)" and items.loc[661, "category"] == "Animation"
    users = ds.users.set_index("user_id")
    assert users.loc[1, "gender"] == "F" and users.loc[1, "age_bucket"] == "under18"
    assert users.loc[1, "occupation"] == "K-12 student" and users.loc[2, "occupation"] == "self-employed"
    assert users.loc[2, "age_bucket"] == "56+"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_movielens_100k(tmp_path: Path, newline: str) -> None:
    ds = import_dataset("movielens-100k", ml100k(tmp_path, newline))
    it = ds.interactions
    assert len(it) == 3 and it["rating"].tolist() == [4.0, 3.0, 5.0]  # sorted by time
    assert ds.schema.tables["interactions"].columns["rating"].range == (1.0, 5.0)
    assert it["like"].tolist() == [1, 0, 1]
    items = ds.items.set_index("item_id")
    assert items.loc[10, "genres"] == "Animation|Children's" and items.loc[10, "category"] == "Animation"
    assert items.loc[20, "title"] == "Café Noir" and items.loc[20, "category"] == imp.NO_CATEGORY
    assert items.loc[20, "year"] == 1999  # no year in the title: the release date's
    users = ds.users.set_index("user_id")
    assert users.loc[1, "age_bucket"] == "18-24" and users.loc[2, "age_bucket"] == "50-55"
    assert users.loc[2, "gender"] == "F" and users.loc[1, "occupation"] == "technician"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_movietweetings_keeps_string_ids(tmp_path: Path, newline: str) -> None:
    ds = import_dataset("movietweetings", movietweetings(tmp_path, newline))
    it = ds.interactions
    assert len(it) == 4 and it["user_id"].dtype == np.int64
    assert set(it["item_id"]) == {"0114709", "1853728", "0002844"}  # IMDb ids keep their leading zeros
    assert ds.schema.tables["interactions"].columns["rating"].range == (0.0, 10.0)
    assert dict(zip(it["rating"], it["like"])) == {8.0: 1, 10.0: 1, 0.0: 0, 7.0: 0}
    items = ds.items.set_index("item_id")
    assert set(items.index) == {"0114709", "1853728", "0002844"}
    assert items.loc["0114709", "genres"] == "" and items.loc["0114709", "category"] == imp.NO_CATEGORY
    assert items.loc["0002844", "title"].startswith("Fantômas") and items.loc["0002844", "year"] == 1913
    assert ds.users is None


def test_rated_item_missing_from_movies_gets_placeholder(tmp_path: Path) -> None:
    d = movietweetings(tmp_path)
    write(d / "movies.dat", "0114709::Toy Story (1995)::Animation\n")
    ds = import_dataset("movietweetings", d)
    items = ds.items.set_index("item_id")
    assert set(items.index) == {"0114709", "1853728", "0002844"}
    assert items.loc["1853728", "category"] == imp.NO_CATEGORY and np.isnan(items.loc["1853728", "year"])


def test_imported_dataset_round_trips(tmp_path: Path) -> None:
    ds = import_dataset("movietweetings", movietweetings(tmp_path))
    write_dataset(ds, tmp_path / "out")
    back = read_dataset(tmp_path / "out")
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    pd.testing.assert_frame_equal(back.items, ds.items)
    assert back.schema == ds.schema


def test_int_ids_with_leading_zeros_in_one_file_make_all_strings(tmp_path: Path) -> None:
    """Ids are typed over every file: ratings alone look like ints, movies.dat has '0042' -> all strings."""
    d = tmp_path / "mt"
    write(d / "ratings.dat", "1::42::8::1365029107\n")
    write(d / "movies.dat", "0042::A (2000)::Drama\n42::B (2001)::Drama\n")
    ds = import_dataset("movietweetings", d)
    assert ds.interactions["item_id"].tolist() == ["42"]
    assert sorted(ds.items["item_id"]) == ["0042", "42"]


def test_colon_translator_across_chunk_boundaries() -> None:
    data = b"1::2::3\n::a:::b::::c\n" * 7 + b"x::"
    for chunk in (1, 2, 3, 5, 64):
        got = io.BufferedReader(imp._ColonTranslator(io.BytesIO(data), chunk=chunk)).read()
        assert got == data.replace(b"::", b"\x1f"), chunk


# --------------------------------------------------------------------------------------------------------
# Generic CSV / Parquet
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_generic_csv_string_ids_iso_timestamps(tmp_path: Path, newline: str) -> None:
    f = write(
        tmp_path / "log.csv",
        "uid,sku,when,clicked,dwell,device\n"
        "u-1,A7,2020-01-01T00:00:10Z,1,3.5,ios\n"
        "u-2,B1,2020-01-01 00:00:05,no,0.0,web\n"
        "u-1,B1,2020-01-01T02:00:00+02:00,true,1.0,ios\n",
        newline,
        bom=True,
    )
    m = ImportMapping(user="uid", item="sku", timestamp="when", labels={"clicked": "binary", "dwell": "graded"},
                      context={"device": "categorical"})
    ds = import_generic(f, "csv", m)
    it = ds.interactions
    # +02:00 is 00:00:00 UTC, the earliest
    assert it["timestamp"].tolist() == [1577836800, 1577836805, 1577836810]
    assert it["user_id"].tolist() == ["u-1", "u-2", "u-1"] and it["item_id"].tolist() == ["B1", "B1", "A7"]
    assert it["clicked"].tolist() == [1, 0, 1]
    assert ds.schema.positive_label == "clicked" and ds.schema.has_impressions
    assert ds.schema.context_columns == ["device"]
    assert ds.schema.tables["interactions"].columns["dwell"].kind is Kind.GRADED


def test_generic_seconds_and_milliseconds_agree(tmp_path: Path) -> None:
    secs = [964982703, 964982224, 1700000000]
    a = write(tmp_path / "s.csv", "user_id,item_id,timestamp\n" + "".join(f"{i},{i},{t}\n" for i, t in enumerate(secs)))
    b = write(tmp_path / "ms.csv", "user_id,item_id,timestamp\n" + "".join(f"{i},{i},{t * 1000 + 999}\n" for i, t in enumerate(secs)))
    c = write(tmp_path / "f.csv", "user_id,item_id,timestamp\n" + "".join(f"{i},{i},{t}.75\n" for i, t in enumerate(secs)))
    got = [import_dataset("csv", p).interactions["timestamp"].tolist() for p in (a, b, c)]
    assert got[0] == got[1] == got[2] == sorted(secs)
    # explicit unit overrides the magnitude rule: the seconds file read as ms lands in 1970
    ms = import_dataset("csv", a, timestamp_unit="ms").interactions["timestamp"]
    assert ms.tolist() == sorted(t // 1000 for t in secs)


def test_generic_rating_implicit_and_features(tmp_path: Path) -> None:
    f = write(
        tmp_path / "log.tsv",
        "user\titem\tts\tstars\tage\tprice\n"
        "7\t100\t10\t5\t30\t9.5\n"
        "8\t100\t20\t2\t41\t9.5\n"
        "7\t200\t30\t4\t31\t\n",
    )
    m = from_dict(ImportMapping, {
        "user": "user", "item": "item", "timestamp": "ts", "rating": "stars", "rating_range": [1, 5],
        "like_threshold": 4, "user_features": {"age": "numeric"}, "item_features": {"price": "numeric"},
    })
    ds = import_generic(f, "csv", m)
    assert ds.schema.labels == ["rating", "interaction", "like"]
    assert ds.interactions["like"].tolist() == [1, 0, 1]
    users = ds.users.set_index("user_id")
    assert users.loc[7, "age"] == 31 and users.loc[8, "age"] == 41  # the latest row's value
    items = ds.items.set_index("item_id")
    assert items.loc[100, "price"] == 9.5 and np.isnan(items.loc[200, "price"])


def test_generic_implicit_log_and_side_file(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", "item_id,brand\nA,acme\nB,zeta\n")
    f = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,A,5\n2,C,6\n")
    ds = import_dataset("csv", f, item_features={"brand": "categorical"}, items_file="items.csv")
    assert ds.schema.labels == ["interaction"] and ds.interactions["interaction"].eq(1).all()
    items = ds.items.set_index("item_id")
    assert items.loc["A", "brand"] == "acme" and items.loc["C", "brand"] == imp.UNKNOWN  # placeholder
    assert not ds.schema.has_impressions


def test_generic_parquet(tmp_path: Path) -> None:
    f = tmp_path / "log.parquet"
    pd.DataFrame({
        "u": ["a", "b", "a"],
        "i": [3, 1, 2],
        "t": pd.to_datetime(["2021-01-01 00:00:02", "2021-01-01 00:00:01", "2021-01-01 00:00:03"]),
        "r": [1.0, 2.0, 3.0],
    }).to_parquet(f)
    ds = import_dataset("parquet", f, user="u", item="i", timestamp="t", rating="r")
    it = ds.interactions
    assert it["item_id"].tolist() == [1, 3, 2] and it["item_id"].dtype == np.int64
    assert it["timestamp"].tolist() == [1609459201, 1609459202, 1609459203]
    assert ds.schema.tables["interactions"].columns["rating"].range == (1.0, 3.0)  # observed


def test_generic_parquet_side_file_and_mapping_object(tmp_path: Path) -> None:
    pd.DataFrame({"user": [1, 2, 1], "item": ["x", "y", "y"], "ts": [3, 2, 1], "click": [True, False, True]}).to_parquet(
        tmp_path / "log.parquet"
    )
    pd.DataFrame({"user": [1, 2, 3], "country": ["fr", "de", "it"], "age": [30, 40, 50]}).to_parquet(tmp_path / "u.parquet")
    m = ImportMapping(user="user", item="item", timestamp="ts", labels={"click": "binary"},
                      user_features={"country": "categorical", "age": "numeric"}, users_file="u.parquet")
    ds = import_dataset("parquet", tmp_path / "log.parquet", mapping=m)
    assert ds.interactions["click"].tolist() == [1, 0, 1] and ds.schema.has_impressions
    assert ds.users["user_id"].tolist() == [1, 2, 3] and ds.users["country"].tolist() == ["fr", "de", "it"]
    assert ds.schema.tables["users"].columns["age"].role is Role.NUMERIC
    with pytest.raises(TypeError, match="either mapping= or mapping fields"):
        import_dataset("parquet", tmp_path / "log.parquet", mapping=m, user="user")
    dup = tmp_path / "dup.parquet"
    pd.DataFrame({"user": [1, 1], "country": ["fr", "de"], "age": [1, 2]}).to_parquet(dup)
    with pytest.raises(DatasetError, match=r"dup\.parquet: row 1 \(0-based\), column 'user': duplicate user id 1"):
        import_generic(tmp_path / "log.parquet", "parquet", dataclasses.replace(m, users_file="dup.parquet"))


def test_load_mapping_yaml(tmp_path: Path) -> None:
    good = write(tmp_path / "m.yaml", "user: uid\nitem: iid\ntimestamp_unit: ms\nlabels: {click: binary}\n")
    m = load_mapping(good)
    assert m.user == "uid" and m.timestamp_unit is imp.TimestampUnit.MILLISECONDS and m.labels == {"click": "binary"}
    with pytest.raises(ConfigError, match=r"unknown key.*'usr'.*allowed keys:.*user"):
        load_mapping(write(tmp_path / "typo.yaml", "usr: uid\n"))
    with pytest.raises(ConfigError, match="duplicate key 'user'"):
        load_mapping(write(tmp_path / "dup.yaml", "user: a\nuser: b\n"))
    with pytest.raises(ConfigError, match=r"labels\.click: kind 'bool'.*'binary', 'graded'"):
        load_mapping(write(tmp_path / "kind.yaml", "labels: {click: bool}\n"))
    with pytest.raises(ConfigError, match=r"timestamp_unit.*'auto', 's', 'ms', 'iso'"):
        load_mapping(write(tmp_path / "unit.yaml", "timestamp_unit: hours\n"))


def test_import_dataset_rejects_unknown_format_and_option(ml_latest: Path) -> None:
    with pytest.raises(ValueError, match="supported formats: " + re.escape(", ".join(FORMATS))):
        import_dataset("movielens-1b", ml_latest)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['like_treshold'\].*like_threshold"):
        import_dataset("movielens-latest", ml_latest, like_treshold=3)
    with pytest.raises(ConfigError, match="unknown key"):
        import_dataset("csv", ml_latest / "ratings.csv", usr="userId")


# --------------------------------------------------------------------------------------------------------
# Malformed input: the message names the file, the line/row and the column
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_wrong_field_count_names_line(tmp_path: Path, newline: str) -> None:
    d = movietweetings(tmp_path)
    write(d / "ratings.dat", "1::0114709::8::1365029107\n\n2::0114709::8::1365029107::extra\n", newline)
    with pytest.raises(DatasetError, match=r"ratings\.dat: line 3: expected 4 fields separated by '::', found 5"):
        import_dataset("movietweetings", d)
    write(d / "ratings.dat", "1::0114709::8::1365029107\n2::0114709::8\n", newline)
    with pytest.raises(DatasetError, match=r"ratings\.dat: line 2: expected 4 fields.*found 3"):
        import_dataset("movietweetings", d)


def test_wrong_field_count_csv_with_quotes(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    write(d / "ratings.csv", ML_LATEST_RATINGS)
    write(d / "movies.csv", 'movieId,title,genres\n10,"A, B (1995)",Drama\n20,C (1990),Drama,Extra\n')
    with pytest.raises(DatasetError, match=r"movies\.csv: line 3: expected 3 fields separated by ',', found 4"):
        import_dataset("movielens-latest", d)


def test_unparsable_timestamp_names_line_and_value(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,4.0,yesterday\n", "\r\n")
    with pytest.raises(DatasetError, match=r"ratings\.csv: line 3, column 'timestamp': unparsable timestamp 'yesterday'"):
        import_dataset("movielens-latest", d)
    f = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,2020-01-01\n1,3,2020-13-45\n")
    with pytest.raises(DatasetError, match=r"log\.csv: line 3, column 'timestamp': unparsable timestamp '2020-13-45'"):
        import_dataset("csv", f)
    with pytest.raises(DatasetError, match=r"line 2, column 'timestamp': unparsable timestamp '2020-01-01'; expected a number"):
        import_dataset("csv", f, timestamp_unit="s")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    d = movietweetings(tmp_path)
    write(d / "ratings.dat", "")
    with pytest.raises(DatasetError, match=r"ratings\.dat: file is empty"):
        import_dataset("movietweetings", d)
    (d / "ratings.dat").unlink()
    with pytest.raises(DatasetError, match=r"ratings\.dat: file not found"):
        import_dataset("movietweetings", d)
    with pytest.raises(DatasetError, match="folder not found"):
        import_dataset("movietweetings", tmp_path / "nowhere")
    f = write(tmp_path / "header_only.csv", "user_id,item_id,timestamp\r\n")
    with pytest.raises(DatasetError, match=r"header_only\.csv: no data rows"):
        import_dataset("csv", f)
    with pytest.raises(DatasetError, match=r"blank\.csv: file is empty"):
        import_dataset("csv", write(tmp_path / "blank.csv", "\n\n"))


def test_rating_out_of_range_names_line(tmp_path: Path) -> None:
    d = movietweetings(tmp_path)
    write(d / "ratings.dat", "1::0114709::8::1365029107\n2::0114709::11::1365029108\n")
    with pytest.raises(DatasetError, match=r"ratings\.dat: line 2, column 'rating': rating 11 is outside .*\[0, 10\]"):
        import_dataset("movietweetings", d)
    d = ml100k(tmp_path)
    write(d / "u.data", "1\t10\t3\t881250949\n1\t20\t0\t881250950\n")
    with pytest.raises(DatasetError, match=r"u\.data: line 2, column 'rating': rating 0 is outside .*\[1, 5\]"):
        import_dataset("movielens-100k", d)


def test_missing_or_bad_id_names_line(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n\n1,,4.0,964982704\n")
    with pytest.raises(DatasetError, match=r"ratings\.csv: line 4, column 'movieId': missing item id"):
        import_dataset("movielens-latest", d)
    f = tmp_path / "nan.parquet"
    pd.DataFrame({"user_id": [1.0, np.nan], "item_id": [1, 2], "timestamp": [5, 6]}).to_parquet(f)
    with pytest.raises(DatasetError, match=r"nan\.parquet: row 1 \(0-based\), column 'user_id': user id missing"):
        import_dataset("parquet", f)


def test_non_numeric_rating_and_binary_label(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,four,964982703\n")
    with pytest.raises(DatasetError, match=r"line 2, column 'rating': rating 'four' is not a number"):
        import_dataset("movielens-latest", d)
    f = write(tmp_path / "log.csv", "user_id,item_id,timestamp,click\n1,2,3,1\n1,2,4,2\n")
    with pytest.raises(DatasetError, match=r"log\.csv: line 3, column 'click': binary label must be 0/1"):
        import_dataset("csv", f, labels={"click": "binary"})


def test_unknown_mapping_column_lists_existing(tmp_path: Path) -> None:
    f = write(tmp_path / "log.csv", "uid,iid,ts\n1,2,3\n")
    with pytest.raises(DatasetError, match=r"log\.csv: the mapping \(user\) names column 'user_id'.*columns present: \['uid', 'iid', 'ts'\]"):
        import_dataset("csv", f)
    with pytest.raises(DatasetError, match=r"\(labels\.click\) names column 'click'"):
        import_dataset("csv", f, user="uid", item="iid", timestamp="ts", labels={"click": "binary"})
    d = tmp_path / "ml"
    write(d / "ratings.csv", "user,movieId,rating,timestamp\n1,10,4.0,964982703\n")
    with pytest.raises(DatasetError, match=r"ratings\.csv: user column 'userId' does not exist; columns present: \['user'"):
        import_dataset("movielens-latest", d)


def test_duplicate_movie_id_names_both_lines(tmp_path: Path) -> None:
    d = movietweetings(tmp_path)
    write(d / "movies.dat", "0114709::A (1995)::Drama\n1853728::B (2012)::Drama\n0114709::C (1995)::Drama\n")
    with pytest.raises(DatasetError, match=r"movies\.dat: line 3, column 'item': duplicate item id '0114709' \(first at line 1\)"):
        import_dataset("movietweetings", d)


def test_latin1_fallback(tmp_path: Path) -> None:
    d = tmp_path / "mt"
    write(d / "ratings.dat", "1::5::8::1365029107\n")
    write(d / "movies.dat", "5::Amélie (2001)::Comedy\n", encoding="latin-1")
    assert import_dataset("movietweetings", d).items["title"].tolist() == ["Amélie (2001)"]


def test_microsecond_timestamps_need_explicit_unit(tmp_path: Path) -> None:
    f = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,1700000000000000\n")
    with pytest.raises(DatasetError, match=r"log\.csv: column 'timestamp': .*micro- or nanoseconds"):
        import_dataset("csv", f)


# --------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------


def gini_reference(x: np.ndarray) -> float:
    """Mean absolute difference form: sum_i sum_j |x_i - x_j| / (2 n^2 mean)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


def test_gini_matches_reference() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 301):
        x = rng.integers(0, 100, size=n).astype(float)
        x[0] += 1  # never all zero
        assert gini(x) == pytest.approx(gini_reference(x), abs=1e-12)
    assert gini(np.full(10, 3.0)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 12.0])) == pytest.approx(0.75)  # (n - 1) / n for one holder


def test_top_share() -> None:
    counts = np.arange(1, 201, dtype=float)  # 200 items; top 1% = 2 items (200, 199); top 10% = 20 items
    assert top_share(counts, 0.01) == pytest.approx((200 + 199) / counts.sum())
    assert top_share(counts, 0.10) == pytest.approx(sum(range(181, 201)) / counts.sum())
    assert top_share(np.array([5.0]), 0.01) == 1.0


def test_dataset_stats_hand_example(ml_latest: Path) -> None:
    ds = import_dataset("movielens-latest", ml_latest)
    s = dataset_stats(ds)
    assert s["interactions"] == 5 and s["users"] == 2 and s["items"] == 3 and s["catalogue_items"] == 4
    assert s["tables"] == {"interactions": 5, "items": 4}
    assert s["duplicate_pairs"] == 1 and s["density"] == pytest.approx(4 / 6)
    assert s["per_user"] == {"mean": 2.5, "median": 2.5, "min": 2, "max": 3}
    assert s["per_item"]["max"] == 3  # item 10: three ratings
    assert s["labels"]["like"]["mean"] == pytest.approx(2 / 5)
    assert s["labels"]["rating"]["histogram"] == {
        "type": "exact", "values": [0.5, 2.5, 3.0, 4.0, 5.0], "counts": [1, 1, 1, 1, 1]
    }
    assert s["time"]["min"] == "2000-07-30T18:37:04Z" and s["time"]["days"] == pytest.approx((964990000 - 964982224) / 86400)
    assert s["popularity"]["gini"] == pytest.approx(gini_reference(np.array([3.0, 1.0, 1.0])))
    assert s["popularity"]["top1pct_share"] == pytest.approx(3 / 5)
    text = format_stats(s)
    assert "| interactions | 5 |" in text and "Gini" in text and "- `rating` (graded)" in text
