"""Typed configuration (recsys.config): unknown keys, types, enums, overrides, section checks, YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from recsys.config import (
    Config,
    ConfigError,
    EngineConfig,
    FunnelStage,
    SplitConfig,
    SplitMethod,
    apply_overrides,
    from_dict,
    load_config,
    load_yaml,
    to_dict,
)
from recsys.data.schema import ColumnSpec, Kind, Role


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_round_trip() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert from_dict(Config, to_dict(cfg)) == cfg
    assert from_dict(Config, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg  # via YAML text too


def test_file_and_overrides(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "name: exp\nengine:\n  funnel: [{stage: retrieval, k: 1000}, {stage: rank, k: 5}]\n"
                                   "split:\n  method: leave_last_n\n  n: 2\n")
    cfg = load_config(f, ["seed=7"])
    assert cfg.name == "exp" and cfg.seed == 7
    assert (cfg.engine.k, cfg.engine.cutoff("prerank"), cfg.engine.retrieve_k) == (5, None, 1000)
    assert cfg.engine.sizes == {"retrieval": 1000, "rank": 5}
    assert cfg.split.method is SplitMethod.LEAVE_LAST_N and cfg.split.n == 2


def test_unknown_key_names_dotted_key_and_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["split.windws={a: 0.5, b: 0.5}"])
    msg = str(exc.value)
    assert "'split.windws'" in msg and "allowed keys:" in msg
    assert all(k in msg for k in ("windows", "method", "cutoffs", "kcore"))
    f = write(tmp_path / "c.yaml", "engine:\n  top_k: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: engine: unknown key\(s\) 'engine\.top_k'; allowed keys: .*funnel"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'colour'; allowed keys: .*engine.*split"):
        load_config(write(tmp_path / "top.yaml", "colour: red\n"))


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("engine.funnel=[{stage: retrieval, k: ten}]", r"engine\.funnel\[0\]\.k: expected an integer, got 'ten'"),
        ("engine.funnel=[{stage: retrieval, k: 2.5}]", r"engine\.funnel\[0\]\.k: expected an integer, got 2\.5"),
        ("engine.funnel=[{stage: retrieval, k: true}]", r"engine\.funnel\[0\]\.k: expected an integer, got True"),
        ("engine.exclude_seen=maybe", r"engine\.exclude_seen: expected true or false, got 'maybe'"),
        ("eval.ks=5", r"eval\.ks: expected a list, got 5"),
        ("eval.ks=[1, x]", r"eval\.ks\[1\]: expected an integer, got 'x'"),
        ("split.windows=[0.5, 0.5]", r"split\.windows: expected a mapping"),
        ("split.windows={a: x, b: 0.5}", r"split\.windows\.a: expected a number, got 'x'"),
        ("ray.address=5", r"ray\.address: expected str or NoneType, got 5"),
        ("engine=3", r"engine: expected a mapping of EngineConfig fields"),
    ],
)
def test_wrong_type_names_key_and_expected(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_bad_enum_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"split\.method: 'random' is not allowed; expected one of 'auto', "
                                          r"'temporal', 'leave_last_n', 'random_holdout'"):
        load_config(None, ["split.method=random"])
    with pytest.raises(ConfigError, match=r"eval\.backend: 'spark' is not allowed; expected one of 'local', 'ray'"):
        load_config(None, ["eval.backend=spark"])


def test_overrides_nested_and_typed() -> None:
    cfg = load_config(None, [
        "split.windows={train: 0.8, test: 0.2}",
        "eval.ks=[1, 10]",
        "eval.gains={like: 2, rating: 0.5}",
        "ray.address=null",
        "ray.num_cpus=4",
        "eval.exclude_seen=false",
        "name=a=b",  # only the first '=' splits
        "split.cutoffs=[100]",
    ])
    assert cfg.split.windows == {"train": 0.8, "test": 0.2} and cfg.split.cutoffs == (100,)
    assert cfg.eval.ks == (1, 10) and isinstance(cfg.eval.ks, tuple)
    assert cfg.eval.gains == {"like": 2.0, "rating": 0.5} and isinstance(cfg.eval.gains["like"], float)
    assert cfg.ray.address is None and cfg.ray.num_cpus == 4
    assert cfg.eval.exclude_seen is False and cfg.name == "a=b"


def test_apply_overrides_does_not_mutate_and_rejects_bad_items() -> None:
    raw = {"engine": {"k": 5}}
    out = apply_overrides(raw, ["engine.k=6", "split.n=3"])
    assert raw == {"engine": {"k": 5}} and out == {"engine": {"k": 6}, "split": {"n": 3}}
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        apply_overrides({}, ["engine.k"])
    with pytest.raises(ConfigError, match=r"'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_overrides({}, ["engine.k=[1, 2"])


@pytest.mark.parametrize(
    "funnel",
    ["[{stage: retrieval, k: 1000}, {stage: prerank, k: 100}, {stage: rank, k: 0}]", "[{stage: retrieval, k: 1000}, {stage: prerank, k: 100}, {stage: rank, k: 200}]",
     "[{stage: retrieval, k: 1000}, {stage: prerank, k: 2000}, {stage: rank, k: 10}]", "[{stage: retrieval, k: 50}, {stage: prerank, k: 100}, {stage: rank, k: 10}]"],
)
def test_invalid_engine_sizes(funnel: str) -> None:
    with pytest.raises(ConfigError, match=r"engine.funnel: cut-offs must be >= 1 and non-increasing"):
        load_config(None, [f"engine.funnel={funnel}"])
    with pytest.raises(ConfigError):
        EngineConfig(funnel=(FunnelStage("retrieval", 10), FunnelStage("prerank", 20), FunnelStage("rank", 5)))


@pytest.mark.parametrize(
    "windows, cutoffs, pattern",
    [
        ({"train": 0.7, "test": 0.2}, (), r"fractions must sum to 1, got 0\.900000"),
        ({"train": 0.7, "test": 0.4}, (), r"fractions must sum to 1, got 1\.100000"),
        ({"train": 1.0, "test": 0.0}, (), r"each fraction must be in \(0, 1\)"),
        ({"train": 1.0}, (), r"need at least 2 windows"),
        ({"train": 0.5, "a": 0.25, "test": 0.25}, (10,), r"split\.cutoffs: need len\(windows\) - 1 = 2"),
        ({"train": 0.5, "a": 0.25, "test": 0.25}, (20, 10), r"split\.cutoffs: must be strictly increasing"),
        ({"train": 0.5, "a": 0.25, "test": 0.25}, (10, 10), r"split\.cutoffs: must be strictly increasing"),
    ],
)
def test_split_config_checks(windows: dict, cutoffs: tuple, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        SplitConfig(windows=windows, cutoffs=cutoffs)
    raw = {"split": {"windows": windows, "cutoffs": list(cutoffs)}}
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Config, raw)


def test_split_config_other_checks() -> None:
    with pytest.raises(ConfigError, match="only valid with split.method = temporal"):
        SplitConfig(method=SplitMethod.LEAVE_LAST_N, windows={"a": 0.5, "b": 0.5}, cutoffs=(5,))
    with pytest.raises(ConfigError, match=r"split\.n: must be >= 1"):
        load_config(None, ["split.n=0"])
    with pytest.raises(ConfigError, match=r"split\.kcore: must be >= 0"):
        load_config(None, ["split.kcore=-1"])
    # leave_last_n does not need fractions that sum to 1
    assert SplitConfig(method=SplitMethod.LEAVE_LAST_N, windows={"a": 0.5, "b": 0.1}).n == 1


def test_yaml_duplicate_keys(tmp_path: Path) -> None:
    f = write(tmp_path / "dup.yaml", "seed: 1\nengine:\n  k: 5\n  k: 6\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: duplicate key 'k' at line 4 \(first at line 3\)"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"duplicate key 'seed' at line 2"):
        load_yaml(write(tmp_path / "top.yaml", "seed: 1\nseed: 2\n"))
    assert load_yaml(write(tmp_path / "ok.yaml", "a: {k: 1}\nb: {k: 1}\n")) == {"a": {"k": 1}, "b": {"k": 1}}


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "engine: [1, 2\n"))
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


def test_fixed_length_tuple_field() -> None:
    """Regression: tuple[float, float] fields swapped value and type while converting (zip order)."""
    spec = from_dict(ColumnSpec, {"role": "label", "kind": "graded", "range": [1, 5]})
    assert spec == ColumnSpec(Role.LABEL, Kind.GRADED, (1.0, 5.0))
    with pytest.raises(ConfigError, match=r"range: expected tuple or NoneType"):
        from_dict(ColumnSpec, {"role": "label", "range": [1, 2, 3]})


def test_configs_are_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
