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
