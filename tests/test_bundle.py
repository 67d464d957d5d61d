"""Bundle: atomic write, latest pointer, verification before parsing, refusal of tampered bundles."""

import json
import os

import pytest

from recsys.bundle import BundleError, data_fingerprint, load_bundle, resolve_version, write_bundle


def _writers(payload: bytes = b"weights"):
    def write_stage(d):
        (d / "weights.bin").write_bytes(payload)
        (d / "meta.json").write_text(json.dumps({"dim": 4}))

    def write_catalog(d):
        (d / "items.txt").write_text("a\nb\n")

    return {"catalog": write_catalog, "retrieval": write_stage}


def test_round_trip_and_latest(tmp_path):
    b1 = write_bundle(tmp_path / "art", _writers(), config={"seed": 1}, data={"sha256": "x"}, metrics={"r": 0.5})
    assert (b1.path / "manifest.json").is_file()
    assert b1.stages == ["retrieval"]
    assert set(b1.manifest["files"]) == {"catalog/items.txt", "retrieval/weights.bin", "retrieval/meta.json"}
    assert resolve_version(tmp_path / "art") == b1.path
    b2 = write_bundle(tmp_path / "art", _writers(b"v2"), config={"seed": 2}, data={"sha256": "y"})
    assert b2.version != b1.version
    assert load_bundle(tmp_path / "art").version == b2.version  # parent -> latest
    assert load_bundle(b1.path).version == b1.version  # a version folder directly
    assert b2.stage_dir("retrieval").is_dir()
    with pytest.raises(BundleError, match="no stage 'rank'"):
        b2.stage_dir("rank")


def test_tampered_file_is_refused(tmp_path):
    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    (b.path / "retrieval" / "weights.bin").write_bytes(b"weightz")  # same size, different content
    with pytest.raises(BundleError, match=r"weights.bin: sha256 does not match"):
        load_bundle(b.path)


def test_missing_extra_and_resized_files_are_refused(tmp_path):
    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    (b.path / "retrieval" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.bin: file not listed"):
        load_bundle(b.path)
    (b.path / "retrieval" / "extra.bin").unlink()
    (b.path / "retrieval" / "weights.bin").write_bytes(b"longer weights")
    with pytest.raises(BundleError, match="weights.bin: size"):
        load_bundle(b.path)
    (b.path / "retrieval" / "weights.bin").unlink()
    with pytest.raises(BundleError, match="weights.bin: listed in manifest.json but missing"):
        load_bundle(b.path)


def test_incompatible_format_version_is_refused(tmp_path):
    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    m = json.loads((b.path / "manifest.json").read_text())
    m["format_version"] = 999
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 999 is incompatible"):
        load_bundle(b.path)


def test_failed_write_leaves_nothing(tmp_path):
    def boom(d):
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path / "art", {"retrieval": boom}, config={}, data={})
    assert [p.name for p in (tmp_path / "art").iterdir()] == []
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "art")


def test_data_fingerprint_changes_with_content(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "dataset.yaml").write_text("name: x\n")
    (d / "interactions.parquet").write_bytes(b"1")
    f1 = data_fingerprint(d)
    (d / "interactions.parquet").write_bytes(b"2")
    f2 = data_fingerprint(d)
    assert f1["sha256"] != f2["sha256"] and set(f1["files"]) == {"dataset.yaml", "interactions.parquet"}
    assert os.path.basename(f1["path"]) == "ds"


def _fake_dataset(d, payload=b"rows"):
    d.mkdir()
    (d / "dataset.yaml").write_text("name: x\n")
    (d / "interactions.parquet").write_bytes(payload)
    return d


LL10 = {"method": "leave_last_n", "windows": {"train": 0.7, "prerank": 0.1, "rank": 0.1, "test": 0.1}, "n": 10}


def test_check_trained_on_refuses_another_split_or_dataset(tmp_path, caplog):
    from recsys.bundle import check_trained_on
    from recsys.configlib import SplitConfig, from_dict, to_dict

    d = _fake_dataset(tmp_path / "ds")
    split = from_dict(SplitConfig, LL10)
    old_manifest_split = {k: v for k, v in to_dict(split).items() if k != "tie_seed"}  # a key added later
    b = write_bundle(tmp_path / "art", _writers(), config={"split": old_manifest_split}, data=data_fingerprint(d))
    check_trained_on(b, split, d)
    check_trained_on(b, split, _fake_dataset(tmp_path / "copy"))  # same contents elsewhere: the same data
    with pytest.raises(BundleError, match=r"another split \(split\.n: 2 here, 10 in the bundle\)"):
        check_trained_on(b, from_dict(SplitConfig, {**LL10, "n": 2}), d)
    with pytest.raises(BundleError, match=r"split\.method: \"temporal\" here.*split\.n: 1 here"):
        check_trained_on(b, SplitConfig(), d)
    reordered = {**LL10, "windows": {"train": 0.7, "rank": 0.1, "prerank": 0.1, "test": 0.1}}
    with pytest.raises(BundleError, match=r"split\.windows"):
        check_trained_on(b, from_dict(SplitConfig, reordered), d)
    (d / "interactions.parquet").write_bytes(b"other rows")
    with pytest.raises(BundleError, match=r"another dataset than .*ds \(differing files: interactions\.parquet\)"):
        check_trained_on(b, split, d)
    unknown = write_bundle(tmp_path / "art2", _writers(), config={"split": LL10}, data={"sha256": None})
    check_trained_on(unknown, split, d)  # trained from memory: nothing to compare, a warning
    assert "records no dataset fingerprint" in caplog.text


def test_evaluate_refuses_a_config_whose_split_is_not_the_bundles(tmp_path, capsys):
    from recsys.cli import main

    d = _fake_dataset(tmp_path / "ds")
    write_bundle(tmp_path / "art", _writers(), config={"split": LL10}, data=data_fingerprint(d))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split:\n  method: temporal\n")
    args = ["evaluate", "--data", str(d), "--bundle", str(tmp_path / "art"), "--config", str(cfg),
            "--out", str(tmp_path / "rep")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on another split" in err and "split.method" in err and "split.n" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "rep").exists()
    assert main(args[:-4] + ["--set", "split.n=3", "--out", str(tmp_path / "rep")]) == 2  # --set on the bundle's own
    assert "split.n: 3 here, 10 in the bundle" in capsys.readouterr().err
