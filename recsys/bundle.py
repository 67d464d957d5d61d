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

Writing is atomic: the version folder is written under a temporary name (locked while it is written), fsynced
and renamed; then the ``latest`` symlink is replaced with ``os.replace``. Temporary folders left by killed runs
are removed by the next write once they are stale (:func:`recsys.io.remove_stale`: old and unlocked).

Loading verifies the manifest's format version and every file's size and sha256 *before* any artifact is
parsed, and refuses a corrupt, partial or incompatible bundle with an error naming the file. No artifact
format can run code on load (no pickle).

Containment: a bundle cannot make the loader read outside its version folder. ``latest`` must name a version
folder directly inside the bundle folder; a manifest entry must be a relative path without ``..`` (nor
``.``, empty parts, backslashes or NUL); no entry, folder or unlisted file of the version folder may be a
symlink (or anything but a regular file or folder). Every file is opened relative to the version folder's
descriptor with ``O_NOFOLLOW`` at every level, so a symlink swapped in after the check is refused, not
followed. Each file is read once: the bytes are hashed while they are copied into a private folder
(``recsys-bundle-*`` in the system temporary folder, mode 0700), and the stages parse that copy
(:meth:`Bundle.stage_dir`), so what is parsed is exactly what was verified even if the bundle changes while
it loads. The copy is removed when the :class:`Bundle` is garbage-collected (or at exit); copies left by a
killed process are removed by the next load once stale.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import stat
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable

from recsys.io import atomic_output_dir, locked_tempdir, remove_stale, sha256_file

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 2  # 2: the manifest records the funnel and each system's stages
MANIFEST = "manifest.json"
LATEST = "latest"
PRIVATE_PREFIX = "recsys-bundle-"
_CHUNK = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")  # @: a system's own stage folder, e.g. rank@no_prerank


class BundleError(ValueError):
    """The bundle is missing, corrupt, partial or incompatible; the message names the file."""


class _PrivateCopy:
    """A locked private folder holding the verified bytes of a bundle; removed when garbage-collected."""

    def __init__(self) -> None:
        self.root, fd = locked_tempdir(PRIVATE_PREFIX)
        self._finalizer = weakref.finalize(self, _remove_copy, self.root, fd)

    def remove(self) -> None:
        self._finalizer()


def _remove_copy(root: Path, fd: int) -> None:
    shutil.rmtree(root, ignore_errors=True)
    os.close(fd)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle version folder (``path``) and its manifest.

    ``root`` holds the verified copy of the files that the stages parse (see the module docstring); it lives
    as long as this object.
    """

    path: Path
    manifest: dict
    root: Path | None = None
    _copy: _PrivateCopy | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def stages(self) -> list[str]:
        return list(self.manifest.get("stages", []))

    def stage_dir(self, name: str) -> Path:
        """The verified copy of a stage's folder (or of ``catalog``), to parse from."""
        if name not in self.stages and name != "catalog":
            raise BundleError(f"{self.path}: bundle has no stage {name!r}; stages: {self.stages}")
        return (self.root or self.path) / name


def check_name(name: Any, where: str) -> str:
    """``name`` if it is a plain file or folder name (letters, digits, ``_ . - @``; not starting with ``.`` or
    ``-``), so joining it to a folder stays inside that folder; else :class:`BundleError` naming ``where``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BundleError(f"{where}: {name!r} is not a plain name (letters, digits, _ . - @; no path separators "
                          "or '..'): refusing a path that could reach outside the bundle")
    return name


def check_entry(rel: Any, where: str) -> tuple[str, ...]:
    """The parts of a manifest entry, refused (:class:`BundleError` naming ``where``) unless it is a relative
    POSIX path inside the version folder: not absolute, no ``..``, ``.`` or empty part, no backslash or NUL."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise BundleError(f"{where}: manifest entry {rel!r} is not a relative path")
    if rel.startswith("/"):
        raise BundleError(f"{where}: manifest entry {rel!r} is an absolute path (entries must stay inside the "
                          "version folder)")
    parts = tuple(rel.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"{where}: manifest entry {rel!r} has a '..', '.' or empty part (entries must stay "
                          "inside the version folder)")
    return parts


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
    remove_stale(out, (".*.tmp-*", ".*.old-*"))  # versions (and `latest` links) of runs killed mid-write
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
    """A version folder (holding manifest.json) or a bundle parent (then its ``latest`` version, which must be
    a folder directly inside the parent: a ``latest`` pointing elsewhere is refused)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    latest = path / LATEST
    if latest.is_symlink():
        target = os.readlink(latest)
        if not latest.exists():
            raise BundleError(f"{latest}: dangling link to {target!r}, which does not exist (the version it named "
                              "was removed or never written)")
        if os.path.isabs(target) or "/" in target.rstrip("/") or target in (".", ".."):
            raise BundleError(f"{latest}: points to {target!r}; it must name a version folder inside {path}")
    if latest.exists():
        target = latest.resolve()
        if target.parent != path.resolve():
            raise BundleError(f"{latest}: resolves to {target}, outside {path}; it must name a version folder "
                              "inside the bundle folder")
        if not (target / MANIFEST).is_file():
            raise BundleError(f"{target / MANIFEST}: missing; the bundle version is partial or corrupt")
        return target
    if not path.exists():
        raise BundleError(f"{path}: no such bundle folder")
    raise BundleError(f"{path}: neither a bundle version (no {MANIFEST}) nor a bundle folder (no {LATEST} link)")


def _open_inside(vdir_fd: int, parts: tuple[str, ...], where: Path) -> int:
    """Open ``parts`` below the folder ``vdir_fd`` without following any symlink; the regular file's fd."""
    fd = vdir_fd
    try:
        for i, part in enumerate(parts):
            flags = os.O_RDONLY | os.O_NOFOLLOW | (0 if i == len(parts) - 1 else os.O_DIRECTORY)
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise BundleError(f"{where}: listed in {MANIFEST} but missing (partial bundle)") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise BundleError(f"{where}: is or passes through a symlink; bundles may not contain symlinks "
                                      "(they could point outside the bundle)") from None
                raise BundleError(f"{where}: cannot open: {exc}") from None
            if fd != vdir_fd:
                os.close(fd)
            fd = nxt
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{where}: not a regular file")
    except BaseException:
        if fd != vdir_fd:
            os.close(fd)
        raise
    return fd


def _copy_verified(fd: int, meta: Any, where: Path, dest: Path) -> None:
    """Read an open file once, writing the bytes to ``dest`` (a new private file) and hashing them; refuse a
    size or sha256 other than the manifest's ``meta``."""
    if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) or not isinstance(meta.get("sha256"), str):
        raise BundleError(f"{where}: its {MANIFEST} entry needs an integer size and a sha256 string")
    size = os.fstat(fd).st_size
    if size != meta["size"]:
        raise BundleError(f"{where}: size {size} != {meta['size']} recorded in {MANIFEST} (corrupt or modified)")
    h = hashlib.sha256()
    n = 0
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while chunk := os.read(fd, _CHUNK):
            n += len(chunk)
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    finally:
        os.close(out)
    if n != meta["size"] or h.hexdigest() != meta["sha256"]:
        raise BundleError(f"{where}: sha256 does not match {MANIFEST} (corrupt or modified)")


def _check_tree(vdir: Path, listed: set[str]) -> None:
    """Refuse symlinks, special files and files not in the manifest anywhere in the version folder."""
    for dirpath, dirnames, filenames in os.walk(vdir, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{p}: is a symlink; bundles may not contain symlinks (they could point outside "
                                  "the bundle)")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{p}: not a regular file")
            if p.relative_to(vdir).as_posix() not in listed:
                raise BundleError(f"{p}: file not listed in {MANIFEST} (the bundle was modified)")


def load_bundle(path: str | Path) -> Bundle:
    """Resolve and verify a bundle (see the module docstring): containment, format version, then every file's
    size and sha256 while it is copied into the private folder the stages parse, before any parsing."""
    vdir = resolve_version(path)
    mpath = vdir / MANIFEST
    remove_stale(Path(tempfile.gettempdir()), (f"{PRIVATE_PREFIX}*",))
    try:
        vdir_fd = os.open(vdir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BundleError(f"{vdir}: cannot open the bundle version folder: {exc}") from None
    copy = None
    try:
        try:
            mfd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=vdir_fd)
        except OSError as exc:
            raise BundleError(f"{mpath}: unreadable manifest ({exc}; a symlinked manifest is refused)") from None
        try:
            raw = b"".join(iter(lambda: os.read(mfd, _CHUNK), b""))
        finally:
            os.close(mfd)
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{mpath}: unreadable manifest: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
                or "format_version" not in manifest:
            raise BundleError(f"{mpath}: not a bundle manifest (needs format_version and files)")
        if manifest["format_version"] != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{mpath}: bundle format_version {manifest['format_version']} is incompatible with this engine "
                f"(expects {BUNDLE_FORMAT_VERSION})"
            )
        files = manifest["files"]
        entries = {rel: check_entry(rel, str(mpath)) for rel in files}
        for rel, parts in entries.items():
            if parts == (MANIFEST,):
                raise BundleError(f"{mpath}: lists itself")
        _check_tree(vdir, set(files) | {MANIFEST})
        copy = _PrivateCopy()
        for rel, parts in entries.items():
            where = vdir.joinpath(*parts)
            dest = copy.root.joinpath(*parts)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = _open_inside(vdir_fd, parts, where)
            try:
                _copy_verified(fd, files[rel], where, dest)
            finally:
                os.close(fd)
    except BaseException:
        if copy is not None:
            copy.remove()
        raise
    finally:
        os.close(vdir_fd)
    return Bundle(path=vdir, manifest=manifest, root=copy.root, _copy=copy)


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
