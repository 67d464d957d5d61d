"""Generic imports of logs of other shapes: separators detected (and ``\\t`` spelled on a command line), logs
without timestamps, count labels; each misuse a one-line error naming the file, column or key."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import yaml

from recsys.cli import main
from recsys.configlib import ConfigError
from recsys.data.importers import ImportMapping, import_csv, sniff_separator
from recsys.data.schema import DatasetError, Kind, read_dataset

LASTFM = "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t352698\n3\t60\t3\n4\t52\t1\n"


def import_lastfm(tmp_path, caplog, kind: str, name: str = "user_artists.dat"):
    """The music log's shape (tab-separated, header, no times, play counts) imported with weight as ``kind``."""
    f = tmp_path / name
    f.write_text(LASTFM)
    with caplog.at_level(logging.INFO, logger="recsys.data.importers"):
        return import_csv(f, user="userID", item="artistID", labels={"weight": kind})


def test_a_tab_separated_dat_file_is_detected_and_said(tmp_path, caplog):
    ds = import_lastfm(tmp_path, caplog, "count")
    assert "fields separated by '\\t' (detected" in caplog.text
    assert ds.interactions["weight"].tolist() == [13883, 11690, 352698, 3, 1]
    assert ds.schema.tables["interactions"].columns["weight"].kind is Kind.COUNT


@pytest.mark.parametrize("text,sep", [
    ("u,i,t\n1,2,3\n", ","), ("u;i;t\n1;2;3\n", ";"), ("u|i|t\n1|2|3\n", "|"), ("u::i::t\n1::2::3\n", "::"),
    ('u,title,t\n1,"a; b; c",3\n2,"d",4\n', ","),  # separators inside quotes do not count
])
def test_sniff_separator(tmp_path, text, sep):
    f = tmp_path / "log.txt"
    f.write_text(text)
    assert sniff_separator(f) == sep


def test_sep_backslash_t_on_the_command_line_means_a_tab(tmp_path):
    f = tmp_path / "log.csv"  # a .csv that holds tabs: the separator is given
    f.write_text(LASTFM)
    out = tmp_path / "lfm"
    assert main(["-q", "data", "import", "csv", "--path", str(f), "--out", str(out), "--map", "sep=\\t",
                 "--map", "user=userID", "--map", "item=artistID", "--map", "labels.weight=count"]) == 0
    assert len(read_dataset(out).interactions) == 5
    assert ImportMapping(sep="tab").sep == "\t"
    with pytest.raises(ConfigError, match=r"sep: expected one character, '\\t' \(or 'tab'\) or '::', got '--'"):
        ImportMapping(sep="--")


def test_an_untimed_log_is_imported_in_file_order_and_says_so(tmp_path, caplog):
    f = tmp_path / "plays.dat"
    f.write_text(LASTFM)
    with caplog.at_level(logging.WARNING, logger="recsys.data.importers"):
        assert main(["-q", "data", "import", "csv", "--path", str(f), "--out", str(tmp_path / "d"),
                     "--map", "user=userID", "--map", "item=artistID", "--map", "labels.weight=count"]) == 0
    assert "no 'timestamp' column" in caplog.text and "only the random_holdout split applies" in caplog.text
    meta = yaml.safe_load((tmp_path / "d" / "dataset.yaml").read_text())
    assert meta["has_timestamps"] is False
    ds = read_dataset(tmp_path / "d")
    assert ds.schema.has_timestamps is False
    assert ds.interactions["timestamp"].tolist() == [0, 1, 2, 3, 4]  # the file order
    assert ds.schema.positive_label == "interaction" and (ds.interactions["interaction"] == 1).all()


def test_timestamp_none_ignores_a_time_column_and_a_named_missing_column_is_an_error(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("user,item,timestamp\n1,2,100\n1,3,90\n")
    ds = import_csv(f, user="user", item="item", timestamp="none")
    assert ds.schema.has_timestamps is False and ds.interactions["item_id"].tolist() == [2, 3]
    assert import_csv(f, user="user", item="item").schema.has_timestamps is True  # the default column
    assert "has_timestamps" not in yaml.safe_load(_schema_yaml(tmp_path, f))  # written only when false
    with pytest.raises(DatasetError, match=r"log\.csv: the mapping \(timestamp\) names column 'ts', which does not "
                                           r"exist; columns present: \['user', 'item', 'timestamp'\]"):
        import_csv(f, user="user", item="item", timestamp="ts")


def _schema_yaml(tmp_path, f) -> str:
    from recsys.data.schema import write_dataset

    write_dataset(import_csv(f, user="user", item="item"), tmp_path / "timed")
    return (tmp_path / "timed" / "dataset.yaml").read_text()


@pytest.mark.parametrize("value,problem", [("-2", "got -2"), ("1.5", "got 1.5")])
def test_a_count_must_be_a_non_negative_integer(tmp_path, value, problem):
    f = tmp_path / "log.tsv"
    f.write_text(f"u\ti\tplays\n1\t2\t4\n1\t3\t{value}\n")
    with pytest.raises(DatasetError, match=rf"log\.tsv: line 3, column 'plays': a count must be an integer >= 0, "
                                           rf"{problem}"):
        import_csv(f, user="u", item="i", labels={"plays": "count"})


def test_a_graded_label_that_looks_like_counts_gets_a_hint(tmp_path, caplog):
    ds = import_lastfm(tmp_path, caplog, "graded", "log.tsv")
    assert "declare its kind 'count' (labels.weight: count)" in caplog.text
    assert ds.schema.tables["interactions"].columns["weight"].kind is Kind.GRADED
    assert np.isclose(ds.interactions["weight"].max(), 352698)
