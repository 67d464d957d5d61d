"""The bundle: a versioned, checksummed model folder.

Layout::

    artifacts/NAME/
      latest -> 20261129T190102Z-3f2a1c0b        # symlink, replaced atomically
      20261129T190102Z-3f2a1c0b/
        manifest.json      # format version, creation time, resolved config, data fingerprint,
                           # sha256 and size of every other file, validation metrics, stages
        catalog/users.parquet, catalog/items.parquet
        retrieval/...      # each stage's artifacts: safetensors, FAISS index, .npy, LightGBM text model
        prerank/...
        rank/...

Writing is atomic: the version folder is written under a temporary name, fsynced and renamed; then the
``latest`` symlink is replaced with ``os.replace``. Loading verifies the manifest's format version and
every file's size and sha256 *before* any artifact is parsed, and refuses a corrupt, partial or
incompatible bundle with an error naming the file. No artifact format can run code on load (no pickle).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Callable

from recsys.io import atomic_output_dir, sha256_file

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 2  # 2: the manifest records the funnel and each system's stages
MANIFEST = "manifest.json"
LATEST = "latest"


class BundleError(ValueError):
    """The bundle is missing, corrupt, partial or incompatible; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle version folder and its manifest."""

    path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def stages(self) -> list[str]:
        return list(self.manifest.get("stages", []))

    def stage_dir(self, name: str) -> Path:
        if name not in self.stages:
            raise BundleError(f"{self.path}: bundle has no stage {name!r}; stages: {self.stages}")
        return self.path / name


def data_fingerprint(dataset_dir: str | Path) -> dict:
    """sha256 over the dataset folder's table files and dataset.yaml (names and contents), plus sizes."""
    dataset_dir = Path(dataset_dir)
    h = hashlib.sha256()
    files = {}
    for p in sorted(dataset_dir.iterdir()):
        if p.is_file() and (p.suffix == ".parquet" or p.name == "dataset.yaml"):
            digest = sha256_file(p)
            h.update(p.name.encode() + b"\0" + digest.encode() + b"\0")
            files[p.name] = {"sha256": digest, "size": p.stat().st_size}
    return {"sha256": h.hexdigest(), "files": files, "path": str(dataset_dir)}


def write_bundle(
    out: str | Path,
    writers: dict[str, Callable[[Path], Any]],
    config: dict,
    data: dict,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Bundle:
    """Write a new version under ``out`` and point ``out/latest`` at it.

    ``writers`` maps a sub-folder name (``catalog``, ``retrieval``, ...) to a function writing that part into
    the folder it is given. ``config`` is the resolved config (plain data), ``data`` the training data
    fingerprint, ``metrics`` the validation metrics. Returns the verified :class:`Bundle`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    tag = hashlib.sha256(json.dumps([config, data.get("sha256"), now.isoformat()], default=str).encode())
    version = f"{now:%Y%m%dT%H%M%S}Z-{tag.hexdigest()[:8]}"
    with atomic_output_dir(out / version) as tmp:
        for name, write in writers.items():
            (tmp / name).mkdir(parents=True, exist_ok=True)
            write(tmp / name)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[p.relative_to(tmp).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "version": version,
            "created_at": now.isoformat(),
            "stages": [n for n in writers if n != "catalog"],
            "config": config,
            "data": data,
            "metrics": metrics or {},
            "files": files,
            "environment": _environment(),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    _point_latest(out, version)
    logger.info("wrote bundle %s", out / version)
    return load_bundle(out / version)


def _point_latest(out: Path, version: str) -> None:
    tmp_link = out / f".{LATEST}.tmp-{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(version, tmp_link)
    os.replace(tmp_link, out / LATEST)


def resolve_version(path: str | Path) -> Path:
    """A version folder (holding manifest.json) or a bundle parent (then its ``latest`` version)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    latest = path / LATEST
    if latest.exists():
        target = latest.resolve()
        if not (target / MANIFEST).is_file():
            raise BundleError(f"{target / MANIFEST}: missing; the bundle version is partial or corrupt")
        return target
    if not path.exists():
        raise BundleError(f"{path}: no such bundle folder")
    raise BundleError(f"{path}: neither a bundle version (no {MANIFEST}) nor a bundle folder (no {LATEST} link)")


def load_bundle(path: str | Path) -> Bundle:
    """Resolve and verify a bundle: format version, then every file's size and sha256, before any parsing."""
    vdir = resolve_version(path)
    mpath = vdir / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or "files" not in manifest or "format_version" not in manifest:
        raise BundleError(f"{mpath}: not a bundle manifest (needs format_version and files)")
    if manifest["format_version"] != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format_version {manifest['format_version']} is incompatible with this engine "
            f"(expects {BUNDLE_FORMAT_VERSION})"
        )
    files = manifest["files"]
    for rel, meta in files.items():
        p = vdir / rel
        if not p.is_file():
            raise BundleError(f"{p}: listed in {MANIFEST} but missing (partial bundle)")
        size = p.stat().st_size
        if size != meta["size"]:
            raise BundleError(f"{p}: size {size} != {meta['size']} recorded in {MANIFEST} (corrupt or modified)")
        if sha256_file(p) != meta["sha256"]:
            raise BundleError(f"{p}: sha256 does not match {MANIFEST} (corrupt or modified)")
    listed = set(files) | {MANIFEST}
    for p in vdir.rglob("*"):
        if p.is_file() and p.relative_to(vdir).as_posix() not in listed:
            raise BundleError(f"{p}: file not listed in {MANIFEST} (the bundle was modified)")
    return Bundle(path=vdir, manifest=manifest)


def check_trained_on(bundle: Bundle, split: Any, data_dir: str | Path) -> None:
    """Refuse to use ``bundle`` on another split or another dataset than the ones it was trained on.

    On other windows the evaluated (test) rows can be rows the stages trained on. ``split`` (a
    :class:`~recsys.configlib.SplitConfig`) must equal the manifest's ``config.split`` (keys an older manifest
    lacks take their defaults), and the fingerprint of the dataset folder ``data_dir``
    (:func:`data_fingerprint`) must equal the manifest's ``data.sha256``. A refusal is an error, not a warning:
    nothing evaluated across a split change can be trusted, and the user's fix is cheap (use the bundle's own
    config, or the dataset folder it was trained on). A bundle trained from an in-memory dataset records no
    fingerprint: that check is skipped with a warning.

    Raises BundleError naming the differing split keys or dataset files.
    """
    from recsys.configlib import ConfigError, SplitConfig, from_dict, to_dict

    try:
        trained = to_dict(from_dict(SplitConfig, bundle.manifest["config"]["split"], "split"))
    except (KeyError, TypeError, ConfigError) as exc:
        raise BundleError(f"{bundle.path / MANIFEST}: no readable config.split ({exc})") from None
    given = to_dict(split)
    diff = [f"split.{k}: {json.dumps(given.get(k))} here, {json.dumps(trained.get(k))} in the bundle"
            for k in sorted(set(trained) | set(given))
            if json.dumps(trained.get(k)) != json.dumps(given.get(k))]  # json: window order counts
    if diff:
        raise BundleError(f"{bundle.path}: trained on another split ({'; '.join(diff)}); use the bundle's own "
                          "split, or its test rows may be training rows")
    want = (bundle.manifest.get("data") or {}).get("sha256")
    if want is None:
        logger.warning("%s records no dataset fingerprint; cannot check that %s is the data it was trained on",
                       bundle.path, data_dir)
        return
    have = data_fingerprint(data_dir)
    if have["sha256"] != want:
        theirs = bundle.manifest["data"].get("files", {})
        files = sorted(n for n in set(theirs) | set(have["files"]) if theirs.get(n) != have["files"].get(n))
        raise BundleError(f"{bundle.path}: trained on another dataset than {data_dir} (differing files: "
                          f"{', '.join(files) or 'none listed'}); use the dataset folder it was trained on")


def _environment() -> dict:
    import numpy
    import pandas

    env = {"python": platform.python_version(), "numpy": numpy.__version__, "pandas": pandas.__version__}
    for mod in ("torch", "faiss", "lightgbm"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # optional at bundle-writing time
            pass
    return env
