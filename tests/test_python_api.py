"""The Python API (recsys.api) and the README's examples: the quickstart runs as written, the README shows it
verbatim, and the README's import mapping is a valid mapping."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys import api
from recsys.configlib import ConfigError
from recsys.data.importers import load_mapping
from recsys.data.schema import DatasetError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(section: str, lang: str) -> str:
    """The first ``lang`` code block of the README section titled ``section``."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{lang}\n(.*?)```", body, re.S)
    assert match, f"no {lang} block in the README section {section!r}"
    return match.group(1)


def test_the_readme_shows_the_quickstart_verbatim():
    assert readme_block("Python API", "python") == (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")


def test_the_quickstart_runs_as_written(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "qs")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"user_id\s+rank\s+item_id\s+score", out)  # engine.rank's DataFrame
    for name in ("popularity", "itemknn", "engine", "colistened"):
        assert re.search(rf"^{name}\s+ndcg@10 0\.\d{{4}}  recall@100 0\.\d{{4}}$", out, re.M), name
    assert (tmp_path / "qs" / "report" / "metrics.json").is_file()
    assert (tmp_path / "qs" / "bundle" / "latest" / "manifest.json").is_file()


def test_the_readme_import_mapping_is_a_valid_mapping(tmp_path):
    (tmp_path / "m.yaml").write_text(readme_block("Importing data", "yaml"))
    m = load_mapping(tmp_path / "m.yaml")
    assert (m.user, m.item, m.timestamp, m.labels) == ("userID", "artistID", "ts", {"weight": "count"})


def test_dataset_from_a_frame_names_what_is_wrong():
    df = pd.DataFrame({"u": [1, 2], "i": ["a", "b"], "plays": [3, -1]})
    with pytest.raises(DatasetError, match=r"DataFrame 'dataframe': row 1 \(0-based\), column 'plays': a count must "
                                           r"be an integer >= 0, got -1"):
        api.dataset(df, user="u", item="i", labels={"plays": "count"})
    with pytest.raises(DatasetError, match=r"the mapping \(user\) names column 'user', which does not exist"):
        api.dataset(df, user="user", item="i")
    with pytest.raises(ConfigError, match=r"users_file/items_file: not for a DataFrame"):
        api.dataset(df, user="u", item="i", users_file="users.csv", user_features={"age": "numeric"})
    ds = api.dataset(df.assign(plays=[3, 1]), user="u", item="i", labels={"plays": "count"})
    assert ds.schema.has_timestamps is False and ds.interactions["item_id"].tolist() == ["a", "b"]


def test_evaluate_refuses_an_object_that_cannot_rank(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"u": rng.integers(0, 30, 400), "i": rng.integers(0, 20, 400), "t": np.arange(400)})
    with pytest.raises(TypeError, match=r"ranker 'mine': object has no rank\(requests, k\) method"):
        api.evaluate(df, {"mine": object()}, tmp_path / "r", baselines=[], user="u", item="i", timestamp="t")
