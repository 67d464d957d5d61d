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
    with pytest.raises(BundleError, match=r"split\.method: \"auto\" here.*split\.n: 1 here"):
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


# --------------------------------------------------------------------------------------------------------
# Containment: nothing outside the version folder is read, hashed or parsed
# --------------------------------------------------------------------------------------------------------


def _remanifest(vdir, files: dict[str, bytes | None] | None = None) -> None:
    """Rewrite the manifest's file list as a tamperer would (the manifest is not signed): ``files`` maps an
    entry to the bytes it should hash to (None: drop the entry); other entries are kept."""
    import hashlib

    m = json.loads((vdir / "manifest.json").read_text())
    for rel, data in (files or {}).items():
        if data is None:
            m["files"].pop(rel, None)
        else:
            m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (vdir / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("entry", ["../../secret.txt", "retrieval/../../../secret.txt", "ABS", "./catalog/items.txt",
                                   "retrieval//weights.bin", "retrieval\\weights.bin"])
def test_manifest_entries_outside_the_version_folder_are_refused(tmp_path, entry):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside")
    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    entry = str(secret) if entry == "ABS" else entry
    _remanifest(b.path, {entry: b"outside"})
    with pytest.raises(BundleError, match=r"manifest entry .* (absolute|'\.\.'|not a relative)"):
        load_bundle(b.path)


def test_symlinks_inside_the_bundle_are_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"weights")  # the same bytes as the real artifact: the checksum alone would pass
    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    target = b.path / "retrieval" / "weights.bin"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BundleError, match=r"weights.bin: is a symlink"):
        load_bundle(b.path)
    # a symlinked folder, and a symlinked manifest
    target.unlink()
    target.write_bytes(b"weights")
    load_bundle(b.path)
    (tmp_path / "elsewhere").mkdir()
    os.rename(b.path / "catalog", tmp_path / "elsewhere" / "catalog")
    (b.path / "catalog").symlink_to(tmp_path / "elsewhere" / "catalog")
    with pytest.raises(BundleError, match=r"catalog: is a symlink"):
        load_bundle(b.path)


def test_a_symlink_swapped_in_after_the_tree_check_is_not_followed(tmp_path, monkeypatch):
    import recsys.bundle as bundle_mod

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"weights")
    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    real_check = bundle_mod._check_tree

    def check_then_swap(vdir, listed):  # the attacker wins the race right after the check
        real_check(vdir, listed)
        (vdir / "retrieval" / "weights.bin").unlink()
        (vdir / "retrieval" / "weights.bin").symlink_to(outside)

    monkeypatch.setattr(bundle_mod, "_check_tree", check_then_swap)
    with pytest.raises(BundleError, match=r"weights.bin: is or passes through a symlink"):
        load_bundle(b.path)


def test_stages_parse_the_verified_private_copy(tmp_path):
    import gc

    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    loaded = load_bundle(b.path)
    copy = loaded.stage_dir("retrieval")
    assert copy != b.path / "retrieval" and (copy / "weights.bin").read_bytes() == b"weights"
    assert loaded.stage_dir("catalog").joinpath("items.txt").read_text() == "a\nb\n"
    # the bundle changes after verification: what the stages parse is still the verified bytes
    (b.path / "retrieval" / "weights.bin").write_bytes(b"evil!!!")
    assert (copy / "weights.bin").read_bytes() == b"weights"
    assert oct(copy.parent.stat().st_mode & 0o777) == "0o700"
    del loaded
    gc.collect()
    assert not copy.exists()  # the copy lives as long as the Bundle


def test_latest_must_stay_inside_and_a_dangling_latest_is_named(tmp_path):
    art = tmp_path / "art"
    b = write_bundle(art, _writers(), config={}, data={})
    other = write_bundle(tmp_path / "other", _writers(), config={}, data={})
    (art / "latest").unlink()
    (art / "latest").symlink_to(other.path)  # absolute, outside the bundle folder
    with pytest.raises(BundleError, match=r"latest: points to .*must name a version folder inside"):
        resolve_version(art)
    (art / "latest").unlink()
    (art / "latest").symlink_to(f"../other/{other.version}")
    with pytest.raises(BundleError, match=r"latest: points to"):
        load_bundle(art)
    (art / "latest").unlink()
    (art / "latest").symlink_to("20990101T000000Z-gone")
    with pytest.raises(BundleError, match=r"latest: dangling link to '20990101T000000Z-gone'"):
        load_bundle(art)
    (art / "latest").unlink()
    (art / "latest").symlink_to(b.version)
    assert load_bundle(art).version == b.version


def test_check_name_refuses_path_like_source_names():
    from recsys.bundle import check_name

    assert check_name("item_graph-2.v1", "sources.json") == "item_graph-2.v1"
    for bad in ("../x", "..", ".", "/etc", "a/b", "", ".hidden", None, 3):
        with pytest.raises(BundleError, match="sources.json: .* is not a plain name"):
            check_name(bad, "sources.json")


# --------------------------------------------------------------------------------------------------------
# Leftovers of killed runs
# --------------------------------------------------------------------------------------------------------

_WRITER = """
import sys, time
from recsys.io import atomic_output_dir
with atomic_output_dir(sys.argv[1]) as tmp:
    (tmp / "half.bin").write_bytes(b"x")
    print(tmp, flush=True)
    time.sleep(120)
"""


def _backdate(p, seconds: float = 3600) -> None:
    t = os.lstat(p).st_mtime - seconds
    os.utime(p, (t, t), follow_symlinks=False)


def test_stale_temp_folders_are_removed_and_live_ones_kept(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    art = tmp_path / "art"
    art.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    live = subprocess.Popen([sys.executable, "-c", _WRITER, str(art / "20990101T000000Z-live")],
                            stdout=subprocess.PIPE, text=True, env=env)
    killed = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "report")],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        live_tmp, killed_tmp = Path(live.stdout.readline().strip()), Path(killed.stdout.readline().strip())
        assert live_tmp.name.startswith(".20990101T000000Z-live.tmp-") and killed_tmp.name.startswith(".report.tmp-")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        fresh = art / ".20990102T000000Z-fresh.tmp-abc"  # a killed run's folder, but too recent to be sure
        fresh.mkdir()
        (art / ".latest.tmp-999999").symlink_to("nowhere")
        for p in (live_tmp, killed_tmp, art / ".latest.tmp-999999"):
            _backdate(p)
        b = write_bundle(art, _writers(), config={}, data={})
        assert live_tmp.is_dir() and (live_tmp / "half.bin").is_file()  # locked by a live writer: kept
        assert fresh.is_dir()  # unlocked but recent: kept
        assert not (art / ".latest.tmp-999999").is_symlink()
        assert killed_tmp.is_dir()  # another output's leftovers: left for that output's next run
        with atomic_output_dir_of(tmp_path / "report") as tmp:
            (tmp / "index.html").write_text("ok")
        assert not killed_tmp.exists() and (tmp_path / "report" / "index.html").is_file()
        assert load_bundle(art).version == b.version
    finally:
        for p in (live, killed):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            p.stdout.close()
    write_bundle(art, _writers(b"v3"), config={"v": 3}, data={})  # the live writer is gone: its folder goes
    assert not live_tmp.exists() and fresh.is_dir()


def atomic_output_dir_of(out):
    from recsys.io import atomic_output_dir

    return atomic_output_dir(out)


def test_stale_private_copies_are_removed(tmp_path):
    import tempfile
    from pathlib import Path

    from recsys.bundle import PRIVATE_PREFIX

    b = write_bundle(tmp_path / "art", _writers(), config={}, data={})
    left = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))  # a killed process's copy: unlocked
    (left / "x").write_bytes(b"x")
    _backdate(left)
    alive = load_bundle(b.path)  # holds its own copy's lock
    _backdate(alive.root)
    load_bundle(b.path)
    assert not left.exists() and alive.root.is_dir()
